/* Memory read bandwidth, STREAM-style: every thread of a kern_pool sums its contiguous slice of
 * a buffer as 64-bit words, and the time of the whole pass gives bytes/s. Read-only, because a
 * decode step only reads its weights; the sum is returned so the compiler keeps the loads.
 * `tokd bench` uses it for the floor of a decode step: (weight + KV bytes) / bandwidth. For a
 * DRAM figure the buffer must be much larger than the last-level cache. */
#include "common/tk_time.h"
#include "kernels/kern.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const uint64_t *w;
    size_t n_words;
    atomic_uint_fast64_t sum;
    uint8_t fill; /* kern_membw_touch: byte to write */
} membw_job;

/* GCC/clang vector extension: one 64-byte line per vector. The loop is cloned per ISA
 * (target_clones: AVX-512, AVX2, baseline, picked by the loader at start-up) because the load
 * width matters even when memory is the bottleneck: with 64-byte loads a core keeps more
 * lines in flight, and on the dev machine 16-byte loads reach only ~2/3 of the bandwidth the
 * AVX-512 matmul kernels get, which would put kernels "above the floor". */
typedef uint64_t membw_v8 __attribute__((vector_size(64)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang_analyzer__)
#define MEMBW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MEMBW_CLONES
#endif

/* Sum of w[lo, hi), two independent vector accumulators (one add chain would bound a core
 * below its load rate in cache). */
MEMBW_CLONES static uint64_t sum_words(const uint64_t *w, size_t lo, size_t hi) {
    membw_v8 a0 = {0}, a1 = {0}, v;
    size_t i = lo;
    for (; i + 16 <= hi; i += 16) {
        memcpy(&v, w + i, 64), a0 += v;
        memcpy(&v, w + i + 8, 64), a1 += v;
    }
    a0 += a1;
    uint64_t s = 0;
    for (int k = 0; k < 8; k++) s += a0[k];
    for (; i < hi; i++) s += w[i];
    return s;
}

static void read_worker(void *ctx, int ith, int nth) {
    membw_job *j = ctx;
    /* slices in 64-byte lines so that no line is shared between threads */
    size_t n_lines = j->n_words / 8, lo = n_lines * (size_t)ith / (size_t)nth * 8,
           hi = n_lines * (size_t)(ith + 1) / (size_t)nth * 8;
    if (ith == nth - 1) hi = j->n_words;
    atomic_fetch_add(&j->sum, sum_words(j->w, lo, hi));
}

uint64_t kern_membw_read(kern_pool *p, const void *buf, size_t bytes) {
    membw_job j = {buf, bytes / 8, 0, 0};
    if (p) kern_pool_run(p, read_worker, &j);
    else read_worker(&j, 0, 1);
    return atomic_load(&j.sum);
}

static void touch_worker(void *ctx, int ith, int nth) {
    membw_job *j = ctx;
    size_t n = j->n_words * 8, lo = n * (size_t)ith / (size_t)nth, hi = n * (size_t)(ith + 1) / (size_t)nth;
    memset((uint8_t *)j->w + lo, j->fill, hi - lo);
}

void kern_membw_touch(kern_pool *p, void *buf, size_t bytes, uint8_t value) {
    membw_job j = {buf, bytes / 8, 0, value};
    if (p) kern_pool_run(p, touch_worker, &j);
    else touch_worker(&j, 0, 1);
    memset((uint8_t *)buf + bytes / 8 * 8, value, bytes % 8);
}

/* Keeps the sums observable so the compiler cannot drop the reads. */
volatile uint64_t kern__membw_sink;

double kern_membw_measure(kern_pool *p, const void *buf, size_t bytes, int runs) {
    enum { MAX_RUNS = 64 };
    double gbs[MAX_RUNS];
    if (!buf || bytes < 8 || runs <= 0) return 0;
    if (runs > MAX_RUNS) runs = MAX_RUNS;
    kern__membw_sink += kern_membw_read(p, buf, bytes); /* warm-up: wakes the pool, maps TLB entries */
    for (int r = 0; r < runs; r++) {
        double t0 = tk_now_s();
        kern__membw_sink += kern_membw_read(p, buf, bytes);
        double dt = tk_now_s() - t0;
        gbs[r] = dt > 0 ? (double)(bytes / 8 * 8) / dt * 1e-9 : 0;
    }
    qsort(gbs, (size_t)runs, sizeof gbs[0], tk_cmp_double);
    return gbs[runs / 2];
}
