/* tk_time: the monotonic clock in seconds, and a qsort comparator for medians of timings. */
#ifndef TK_TIME_H
#define TK_TIME_H

#include <time.h>

static inline double tk_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int tk_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif
