/* kern_bench: best-of-N timings of kern_matmul on SmolLM2-135M shapes (not part of the library
 * or the tests; build by hand):
 *   cc -std=c11 -O2 -D_GNU_SOURCE -I. kernels/bench/kern_bench.c build/libtokd.a -lm -pthread
 * Prints GB/s (weight bytes streamed per call) and GFLOP/s (2*n_in*n_out*n_tok per call).
 * TOKD_ISA picks the kernel level as in the daemon. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kern.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rs = 1;
static float frand(void) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    int quant = argc > 2 ? atoi(argv[2]) : 0;
    kern_init();
    static const struct { uint32_t type; size_t n_in, n_out; } shapes[] = {
        {KERN_TYPE_Q4_1, 576, 576}, {KERN_TYPE_Q4_1, 576, 1536}, {KERN_TYPE_Q4_1, 1536, 576},
        {KERN_TYPE_Q8_0, 576, 49152}};
    static const size_t toks[] = {1, 64};
    static const int threads[] = {1, 2};
    float *X = malloc(1536 * 64 * sizeof(float)), *Y = malloc(49152 * 64 * sizeof(float));
    float *row = malloc(1536 * sizeof(float));
    void *scratch = malloc(kern_matmul_scratch_bytes(1536, 64));
    for (size_t i = 0; i < 1536 * 64; i++) X[i] = frand();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t rb = kern_row_bytes(shapes[s].type, shapes[s].n_in), n_out = shapes[s].n_out;
        uint8_t *W = malloc(rb * n_out);
        for (size_t o = 0; o < n_out; o++) {
            for (size_t i = 0; i < shapes[s].n_in; i++) row[i] = frand();
            kern_quantize_row_ref(shapes[s].type, row, W + o * rb, shapes[s].n_in);
        }
        for (size_t ti = 0; ti < 2; ti++)
            for (size_t th = 0; th < 2; th++) {
                kern_pool *p = kern_pool_new(threads[th]);
                size_t nt = toks[ti];
                double best = 1e9;
                int inner = nt == 1 ? 20 : 2;
                for (int r = 0; r < reps; r++) {
                    double t0 = now();
                    for (int k = 0; k < inner; k++)
                        kern_matmul(p, shapes[s].type, W, X, Y, shapes[s].n_in, n_out, nt, quant ? scratch : NULL);
                    double dt = (now() - t0) / inner;
                    best = dt < best ? dt : best;
                }
                printf("%-5s %5zux%-6zu tok %2zu thr %d: %8.1f us %7.2f GB/s %7.2f GFLOP/s\n",
                       kern_type_name(shapes[s].type), shapes[s].n_in, n_out, nt, threads[th], best * 1e6,
                       rb * n_out / best * 1e-9, 2.0 * shapes[s].n_in * n_out * nt / best * 1e-9);
                kern_pool_destroy(p);
            }
        free(W);
    }
    free(X), free(Y), free(row), free(scratch);
    return 0;
}
