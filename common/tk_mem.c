/* tk_mem: allocation wrapper with failure injection for tests (see tk_mem.h). */
#include "common/tk_mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static long fail_countdown = -1;

static int should_fail(void) {
    if (fail_countdown < 0) return 0;
    if (fail_countdown == 0) return 1;
    fail_countdown--;
    return 0;
}

void tk_mem_fail_after(long n) { fail_countdown = n; }

void *tk_malloc(size_t n) {
    if (should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *tk_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    if (should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *tk_realloc(void *p, size_t n) {
    if (should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void tk_free(void *p) { free(p); }

char *tk_strndup(const char *s, size_t n) {
    char *d = tk_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}
