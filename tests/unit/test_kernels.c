/* Kernel op tests: every op against a straightforward reference written here in double
 * precision, on random inputs at several shapes (odd sizes included); the max error is printed.
 * Quantised formats have their own suite (test_quant.c). */
#include <check.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h" /* kern__set_isa: run every ISA level */
#include "kernels/kern.h"

static uint64_t rs = 12345;
static float frand(void) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static const char *const isa_name[] = {"scalar", "avx2", "avx512"};

/* One matmul case at one ISA level: against kern_matmul_ref (bitwise for quantised
 * activations, whose integer block sums are exact; relative error otherwise), and each token's
 * row bitwise equal to that token alone, on 1 and 2 threads. Returns the max relative error. */
/* Weights of random bytes (every bit pattern a K-quant block can hold: Q6_K scales of -128, 6-bit
 * scales and mins of 63, all-ones quants) with sane f16 super-scales, and X of +-1 (activations
 * of +-127): the extremes of the integer sums. K-quants only. */
static void fill_raw_k(uint32_t t, uint8_t *W, size_t n_rows, size_t rb, float *X, size_t nx) {
    const size_t bb = kern_type_block_bytes(t);
    for (size_t i = 0; i < n_rows * rb; i++) W[i] = (uint8_t)(frand() * 128 + 128);
    for (size_t b = 0; b < n_rows * rb / bb; b++) {
        uint16_t d = kern_f32_to_f16(0.01f + 0.01f * frand()), m = kern_f32_to_f16(0.02f + 0.01f * frand());
        if (t == KERN_TYPE_Q6_K) {
            memcpy(W + b * bb + 208, &d, 2);
        } else {
            memcpy(W + b * bb, &d, 2);
            memcpy(W + b * bb + 2, &m, 2);
        }
    }
    for (size_t i = 0; i < nx; i++) X[i] = frand() < 0 ? -1.0f : 1.0f;
}

static double check_matmul_w(kern_pool *pool1, kern_pool *pool2, uint32_t t, size_t n_in, size_t n_out,
                             size_t n_tok, bool qa, bool raw) {
    size_t rb = kern_row_bytes(t, n_in);
    uint8_t *W = malloc(rb * n_out), *scratch = malloc(kern_matmul_scratch_bytes(n_in, n_tok));
    float *row = malloc(n_in * sizeof(float)), *X = malloc(n_in * n_tok * sizeof(float));
    float *Y = malloc(n_out * n_tok * sizeof(float)), *Yr = malloc(n_out * n_tok * sizeof(float));
    float *Y1 = malloc(n_out * sizeof(float));
    if (raw) {
        fill_raw_k(t, W, n_out, rb, X, n_in * n_tok);
    } else {
        for (size_t o = 0; o < n_out; o++) {
            for (size_t i = 0; i < n_in; i++) row[i] = frand();
            ck_assert_int_eq(kern_quantize_row_ref(t, row, W + o * rb, n_in), 0);
        }
        for (size_t i = 0; i < n_in * n_tok; i++) X[i] = frand();
    }
    kern_matmul(pool2, t, W, X, Y, n_in, n_out, n_tok, qa ? scratch : NULL);
    kern_matmul_ref(t, W, X, Yr, n_in, n_out, n_tok, qa);
    double max_rel = 0;
    for (size_t i = 0; i < n_out * n_tok; i++) {
        double rel = fabs(Y[i] - Yr[i]) / (fabs(Yr[i]) + 1.0);
        max_rel = rel > max_rel ? rel : max_rel;
    }
    if (qa && kern_act_type(t) != KERN_TYPE_F32) /* integer block dots: same float steps */
        ck_assert_msg(memcmp(Y, Yr, n_out * n_tok * sizeof(float)) == 0, "%s %s n_in %zu n_tok %zu: not bitwise",
                      isa_name[kern__isa()], kern_type_name(t), n_in, n_tok);
    /* a row's result does not depend on n_tok or on the thread split */
    for (size_t tk = 0; tk < n_tok; tk++) {
        kern_matmul(tk % 2 ? pool1 : pool2, t, W, X + tk * n_in, Y1, n_in, n_out, 1, qa ? scratch : NULL);
        ck_assert_msg(memcmp(Y1, Y + tk * n_out, n_out * sizeof(float)) == 0, "%s %s n_in %zu: token %zu of %zu differs",
                      isa_name[kern__isa()], kern_type_name(t), n_in, tk, n_tok);
    }
    kern_matmul(pool1, t, W, X, Yr, n_in, n_out, n_tok, qa ? scratch : NULL);
    ck_assert_mem_eq(Y, Yr, n_out * n_tok * sizeof(float));
    free(scratch), free(W), free(row), free(X), free(Y), free(Yr), free(Y1);
    return max_rel;
}

static double check_matmul(kern_pool *pool1, kern_pool *pool2, uint32_t t, size_t n_in, size_t n_out, size_t n_tok,
                           bool qa) {
    return check_matmul_w(pool1, pool2, t, n_in, n_out, n_tok, qa, false);
}

START_TEST(test_matmul_matches_reference) {
    static const uint32_t types[] = {KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_BF16, KERN_TYPE_Q8_0,
                                     KERN_TYPE_Q4_0, KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
    static const size_t blocks[] = {1, 3, 9}; /* n_in in blocks (plain types: 33 odd elements each) */
    static const size_t outs[] = {1, 7, 13};
    kern_init();
    kern_pool *pool1 = kern_pool_new(1), *pool2 = kern_pool_new(2);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            uint32_t t = types[ti];
            size_t be = kern_type_block_elems(t) == 1 ? 33 : kern_type_block_elems(t);
            double max_rel[2] = {0, 0};
            for (size_t bi = 0; bi < 3; bi++)
                for (size_t n_tok = 1; n_tok <= 17; n_tok++)
                    for (int qa = 0; qa < 2; qa++) {
                        double e = check_matmul(pool1, pool2, t, be * blocks[bi], outs[(n_tok + bi) % 3], n_tok, qa);
                        max_rel[qa] = e > max_rel[qa] ? e : max_rel[qa];
                    }
            /* larger rows and a 64-token prefill */
            double e = check_matmul(pool1, pool2, t, be * 24, 9, 64, false);
            max_rel[0] = e > max_rel[0] ? e : max_rel[0];
            printf("matmul %-6s %-5s max rel err vs reference: f32 act %.2e, quantised act %.2e\n", isa_name[isa],
                   kern_type_name(t), max_rel[0], max_rel[1]);
            /* tolerance per dtype: K-quant rows here are up to 6144 long, their scales larger */
            double tol = be == 256 ? 1e-4 : be == 32 ? 2e-5 : 1e-5;
            ck_assert_msg(max_rel[0] < tol && max_rel[1] < tol, "%s: %g %g", kern_type_name(t), max_rel[0], max_rel[1]);
        }
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(pool1);
    kern_pool_destroy(pool2);
}
END_TEST

/* Decode (n_tok 1) row tiles: 8 rows (AVX2) and 16 (AVX-512) with prefetch of the next tile,
 * whole tiles and tails of every length at odd block counts, both arithmetics, every ISA level,
 * each split between 1 and 2 threads: check_matmul's checks (bitwise reference for quantised
 * activations, bitwise independent of n_tok and the split). */
START_TEST(test_matmul_gemv_tiles) {
    static const uint32_t types[] = {KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q6_K,
                                     KERN_TYPE_F16, KERN_TYPE_BF16};
    static const size_t outs[] = {16, 17, 31, 40, 53, 64 + 15};
    static const size_t blocks[] = {1, 2, 3, 5, 7, 13}; /* block groups of the scale loads: 2 and 4, and tails */
    kern_init();
    kern_pool *pool1 = kern_pool_new(1), *pool2 = kern_pool_new(2);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            uint32_t t = types[ti];
            size_t be = kern_type_block_elems(t) == 1 ? 32 : kern_type_block_elems(t);
            double max_rel = 0;
            for (size_t oi = 0; oi < 6; oi++)
                for (int qa = 0; qa < 2; qa++) {
                    size_t nb = blocks[(oi + (size_t)qa) % 6] + (be == 256 ? 0 : oi); /* 1 .. 18 */
                    double e = check_matmul(pool1, pool2, t, be * nb, outs[oi], 1 + (oi % 3 == 2), qa);
                    max_rel = e > max_rel ? e : max_rel;
                }
            printf("gemv tiles %-6s %-5s max rel err %.2e\n", isa_name[isa], kern_type_name(t), max_rel);
            ck_assert_msg(max_rel < (be == 256 ? 1e-4 : 2e-5), "%s: %g", kern_type_name(t), max_rel);
        }
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(pool1);
    kern_pool_destroy(pool2);
}
END_TEST

/* Quantised-activation GEMM (n_tok > 1) tiles: 8 (AVX2) or 16 (AVX-512) rows x 4 or 8 tokens,
 * whole and partial tiles of rows and tokens (n_tok 2..17 and 64, odd row counts, row tails of
 * every kind), every ISA level: check_matmul's checks, i.e. bitwise the reference, each token
 * bitwise its n_tok == 1 (GEMV) result, and the same on 1 and 2 threads. */
START_TEST(test_matmul_gemm_act_tiles) {
    static const uint32_t types[] = {KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K,
                                     KERN_TYPE_Q6_K};
    static const size_t outs[] = {7, 17, 33, 53, 64 + 15};
    static const size_t blocks[] = {1, 2, 3, 5, 13, 18};
    static const size_t kblocks[] = {1, 2, 3, 5, 11, 2}; /* K-quants: n_in 256 .. 2816 */
    kern_init();
    kern_pool *pool1 = kern_pool_new(1), *pool2 = kern_pool_new(2);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            uint32_t t = types[ti];
            const bool k = kern_type_block_elems(t) == KERN_QK_K;
            for (size_t n_tok = 2; n_tok <= 18; n_tok++) {
                size_t nt = n_tok == 18 ? 64 : n_tok;
                if (k) /* and every other case with weights of random bytes (the integer extremes) */
                    check_matmul_w(pool1, pool2, t, 256 * kblocks[n_tok % 6], outs[n_tok % 5], nt, true, n_tok % 2);
                else
                    check_matmul(pool1, pool2, t, 32 * blocks[n_tok % 6], outs[n_tok % 5], nt, true);
            }
        }
        printf("gemm act tiles %-6s ok\n", isa_name[isa]);
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(pool1);
    kern_pool_destroy(pool2);
}
END_TEST

/* Packed weights (kern_pack): every row unpacks to the plain row; kern_matmul of the packed
 * matrix is bitwise the plain matrix's at every ISA level (AVX-512 runs its packed kernels, the
 * others unpack row by row), for 1..17 and 64 tokens, both arithmetics, 1 and 2 threads, and
 * inside kern_matmul_multi beside a plain matrix. */
START_TEST(test_matmul_packed) {
    static const uint32_t types[] = {KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1};
    static const size_t outs[] = {16, 48, 80};
    static const size_t blocks[] = {1, 3, 4, 5, 7, 18};
    kern_init();
    kern_pool *pool1 = kern_pool_new(1), *pool2 = kern_pool_new(2);
    ck_assert(!kern_pack_supported(KERN_TYPE_Q4_K, 256, 16) && !kern_pack_supported(KERN_TYPE_Q4_0, 64, 17));
    ck_assert_int_eq(kern_pack(NULL, KERN_TYPE_Q4_0, NULL, NULL, 64, 17), -1);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t ti = 0; ti < 3; ti++)
            for (size_t ci = 0; ci < 18; ci++) {
                const uint32_t t = types[ti];
                const size_t n_out = outs[ci % 3], n_in = 32 * blocks[ci % 6], n_tok = ci == 17 ? 64 : 1 + ci, rb = kern_row_bytes(t, n_in);
                uint8_t *W = malloc(rb * n_out), *P = malloc(rb * n_out), *row = malloc(rb);
                uint8_t *scratch = malloc(kern_matmul_scratch_bytes(n_in, n_tok));
                float *x = malloc(n_in * n_tok * sizeof(float)), *Y = malloc(2 * n_out * n_tok * sizeof(float));
                float *Yp = malloc(2 * n_out * n_tok * sizeof(float));
                for (size_t o = 0; o < n_out; o++) {
                    for (size_t i = 0; i < n_in; i++) x[i] = frand();
                    ck_assert_int_eq(kern_quantize_row_ref(t, x, W + o * rb, n_in), 0);
                }
                for (size_t i = 0; i < n_in * n_tok; i++) x[i] = frand();
                ck_assert_int_eq(kern_pack(ci % 2 ? pool2 : NULL, t, W, P, n_in, n_out), 0);
                for (size_t o = 0; o < n_out; o++) {
                    kern_unpack_row(t, P, n_in, o, row);
                    ck_assert_mem_eq(row, W + o * rb, rb);
                }
                for (int qa = 0; qa < 2; qa++) {
                    kern_matmul(pool2, t, W, x, Y, n_in, n_out, n_tok, qa ? scratch : NULL);
                    kern_matmul(pool2, t | KERN_PACKED, P, x, Yp, n_in, n_out, n_tok, qa ? scratch : NULL);
                    ck_assert_msg(memcmp(Y, Yp, n_out * n_tok * sizeof(float)) == 0, "%s %s n_in %zu n_out %zu n_tok %zu qa %d",
                                  isa_name[isa], kern_type_name(t), n_in, n_out, n_tok, qa);
                    kern_matmul(pool1, t | KERN_PACKED, P, x, Yp, n_in, n_out, n_tok, qa ? scratch : NULL);
                    ck_assert_mem_eq(Y, Yp, n_out * n_tok * sizeof(float));
                    /* packed and plain side by side in one job */
                    const kern_matmul_out mo[2] = {{t | KERN_PACKED, P, Yp, n_out}, {t, W, Yp + n_out * n_tok, n_out}};
                    kern_matmul_multi(pool2, mo, 2, x, n_in, n_tok, qa ? scratch : NULL);
                    ck_assert_mem_eq(Y, Yp, n_out * n_tok * sizeof(float));
                    ck_assert_mem_eq(Y, Yp + n_out * n_tok, n_out * n_tok * sizeof(float));
                }
                free(W), free(P), free(row), free(scratch), free(x), free(Y), free(Yp);
            }
        /* one token over many rows: threads take row chunks dynamically (kern__mm.next) */
        for (size_t ti = 0; ti < 3; ti++) {
            const uint32_t t = types[ti];
            const size_t n_out = 16 * 37, n_in = 96, rb = kern_row_bytes(t, n_in);
            uint8_t *W = malloc(rb * n_out), *P = malloc(rb * n_out), *scratch = malloc(kern_matmul_scratch_bytes(n_in, 1));
            float x[96], *Y = malloc(n_out * sizeof(float)), *Yp = malloc(n_out * sizeof(float));
            for (size_t o = 0; o < n_out; o++) {
                for (size_t i = 0; i < n_in; i++) x[i] = frand();
                ck_assert_int_eq(kern_quantize_row_ref(t, x, W + o * rb, n_in), 0);
            }
            for (size_t i = 0; i < n_in; i++) x[i] = frand();
            ck_assert_int_eq(kern_pack(pool2, t, W, P, n_in, n_out), 0);
            kern_matmul(pool1, t, W, x, Y, n_in, n_out, 1, scratch);
            for (int rep = 0; rep < 20; rep++) {
                memset(Yp, 0, n_out * sizeof(float));
                kern_matmul(pool2, t | KERN_PACKED, P, x, Yp, n_in, n_out, 1, scratch);
                ck_assert_mem_eq(Y, Yp, n_out * sizeof(float));
            }
            free(W), free(P), free(scratch), free(Y), free(Yp);
        }
        printf("packed matmul %-6s ok (packed kernels: %s)\n", isa_name[isa],
               kern_pack_supported(KERN_TYPE_Q4_0, 64, 16) ? "yes" : "no, rows unpacked");
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(pool1);
    kern_pool_destroy(pool2);
}
END_TEST

/* kern_matmul_multi equals one kern_matmul per output, bitwise, in both arithmetics, including
 * mixed weight types (one activation format, and two: Q4_1 wants Q8_1). */
START_TEST(test_matmul_multi) {
    static const uint32_t sets[4][3] = {{KERN_TYPE_Q8_0, KERN_TYPE_Q8_0, KERN_TYPE_Q8_0},
                                        {KERN_TYPE_Q4_0, KERN_TYPE_Q8_0, KERN_TYPE_Q6_K},
                                        {KERN_TYPE_Q4_1, KERN_TYPE_Q4_1, KERN_TYPE_Q8_0},
                                        {KERN_TYPE_Q4_K, KERN_TYPE_Q6_K, KERN_TYPE_Q5_K}}; /* one Q8_K job */
    static const size_t n_outs[3] = {37, 16, 9};
    const size_t n_in = 256 * 3;
    kern_init();
    kern_pool *pool = kern_pool_new(2);
    float *X = malloc(n_in * 5 * sizeof(float)), row[256 * 3];
    uint8_t *scratch = malloc(kern_matmul_scratch_bytes(n_in, 5));
    for (size_t i = 0; i < n_in * 5; i++) X[i] = frand();
    for (int si = 0; si < 4; si++)
        for (size_t n_tok = 1; n_tok <= 5; n_tok += 4)
            for (int qa = 0; qa < 2; qa++) {
                uint8_t *W[3];
                float *Y[3], *Yr[3];
                kern_matmul_out o[3];
                for (int k = 0; k < 3; k++) {
                    size_t rb = kern_row_bytes(sets[si][k], n_in);
                    W[k] = malloc(rb * n_outs[k]);
                    Y[k] = malloc(n_outs[k] * n_tok * sizeof(float));
                    Yr[k] = malloc(n_outs[k] * n_tok * sizeof(float));
                    for (size_t r = 0; r < n_outs[k]; r++) {
                        for (size_t i = 0; i < n_in; i++) row[i] = frand();
                        ck_assert_int_eq(kern_quantize_row_ref(sets[si][k], row, W[k] + r * rb, n_in), 0);
                    }
                    o[k] = (kern_matmul_out){sets[si][k], W[k], Y[k], n_outs[k]};
                }
                kern_matmul_multi(pool, o, 3, X, n_in, n_tok, qa ? scratch : NULL);
                for (int k = 0; k < 3; k++) {
                    kern_matmul(NULL, sets[si][k], W[k], X, Yr[k], n_in, n_outs[k], n_tok, qa ? scratch : NULL);
                    ck_assert_msg(memcmp(Y[k], Yr[k], n_outs[k] * n_tok * sizeof(float)) == 0, "set %d op %d n_tok %zu qa %d",
                                  si, k, n_tok, qa);
                    free(W[k]), free(Y[k]), free(Yr[k]);
                }
            }
    free(X), free(scratch);
    kern_pool_destroy(pool);
}
END_TEST

/* The SIMD activation quantisers equal kern_quantize_act_row bitwise: random blocks, an
 * all-zero block, one-hot blocks, and exact .5 ties of x*127/amax. */
START_TEST(test_quantize_act_every_isa) {
    enum { NB = 7, N = NB * 32 };
    float x[N];
    uint8_t a[NB * 36], b[NB * 36];
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (int rep = 0; rep < 50; rep++) {
            for (int i = 0; i < N; i++) x[i] = frand() * (rep + 1);
            for (int i = 32; i < 64; i++) x[i] = 0;                   /* block 1: zeros */
            for (int i = 64; i < 96; i++) x[i] = i == 70 ? -3 : 0;    /* block 2: one-hot */
            for (int i = 96; i < 128; i++) x[i] = (float)(i % 9) * 0.5f; /* block 3: ties */
            x[96] = 127.0f;
            for (int act = 0; act < 2; act++) {
                uint32_t at = act ? KERN_ACT_Q8_1 : KERN_TYPE_Q8_0;
                kern_quantize_act_row(at, x, a, N);
                kern__cur->quant_act(at, x, b, N);
                ck_assert_msg(memcmp(a, b, kern_act_row_bytes(at, N)) == 0, "%s act %u rep %d", isa_name[isa], at, rep);
            }
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* Q8_K: the SIMD quantisers equal kern_quantize_act_row bitwise, and the reference keeps ggml's
 * facts: the first value of largest magnitude maps to -127, d = 1/iscale, bsums = sums of 16. */
START_TEST(test_quantize_act_q8k_every_isa) {
    enum { NB = 6, N = NB * 256 };
    static float x[N];
    static uint8_t a[NB * 292], b[NB * 292];
    kern_init();
    ck_assert_uint_eq(kern_act_row_bytes(KERN_ACT_Q8_K, N), NB * 292);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (int rep = 0; rep < 40; rep++) {
            for (int i = 0; i < N; i++) x[i] = frand() * (rep + 1);
            for (int i = 256; i < 512; i++) x[i] = 0;                             /* block 1: zeros */
            for (int i = 512; i < 768; i++) x[i] = i == 700 ? 3.0f : 0;           /* block 2: one-hot */
            for (int i = 768; i < 1024; i++) x[i] = (float)(i % 9 - 4) * 0.5f;   /* block 3: ties of x*127/max */
            x[768 + rep % 7] = rep % 2 ? 127.0f : -127.0f;
            x[1024 + 3] = -5.0f, x[1024 + 200] = 5.0f;                            /* block 4: +-max, the first wins */
            if (rep % 3 == 0) x[1024 + 7 * rep % 256] = -0.0f;
            kern_quantize_act_row(KERN_ACT_Q8_K, x, a, N);
            kern__cur->quant_act(KERN_ACT_Q8_K, x, b, N);
            ck_assert_msg(memcmp(a, b, NB * 292) == 0, "%s rep %d", isa_name[isa], rep);
            for (int blk = 0; blk < NB; blk++) {
                const uint8_t *p = a + blk * 292;
                float d;
                int16_t bs[16];
                memcpy(&d, p, 4), memcpy(bs, p + 260, 32);
                const int8_t *q = (const int8_t *)(p + 4);
                int first = -1;
                for (int i = 0; i < 256; i++)
                    if (first < 0 || fabsf(x[blk * 256 + i]) > fabsf(x[blk * 256 + first])) first = i;
                if (x[blk * 256 + first] == 0) {
                    ck_assert(d == 0);
                } else {
                    ck_assert_int_eq(q[first], -127);
                    ck_assert(d == 1.0f / (-127.0f / x[blk * 256 + first]));
                }
                for (int k = 0; k < 16; k++) {
                    int sum = 0;
                    for (int i = 0; i < 16; i++) sum += q[16 * k + i];
                    ck_assert_int_eq(bs[k], sum);
                }
            }
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* The K-quant reference dot (exact integer sums, then float steps per super-block) against a
 * double-precision dot of the dequantised weights and the dequantised activations (d * q), for
 * quantiser-made rows and rows of random bytes; the error is relative to sum |w x|. */
START_TEST(test_act_k_ref_vs_double) {
    static const uint32_t types[] = {KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
    static const size_t ns[] = {256, 512, 2816};
    enum { NMAX = 2816 };
    static float x[NMAX], w[NMAX], xr[NMAX];
    static uint8_t row[NMAX], xq[NMAX / 256 * 292];
    for (size_t ti = 0; ti < 3; ti++) {
        const uint32_t t = types[ti];
        double max_err = 0;
        for (int rep = 0; rep < 30; rep++) {
            const size_t n = ns[rep % 3];
            if (rep % 2) {
                fill_raw_k(t, row, 1, kern_row_bytes(t, n), x, n);
                for (size_t i = 0; i < n; i++) x[i] *= 1.0f + 0.5f * frand();
            } else {
                for (size_t i = 0; i < n; i++) w[i] = frand(), x[i] = frand() * 3;
                ck_assert_int_eq(kern_quantize_row_ref(t, w, row, n), 0);
            }
            kern_dequant_row_ref(t, row, w, n);
            kern_quantize_act_row(KERN_ACT_Q8_K, x, xq, n);
            for (size_t b = 0; b < n / 256; b++) { /* the activations as the integers say: d * q */
                float d;
                memcpy(&d, xq + b * 292, 4);
                for (int i = 0; i < 256; i++) xr[b * 256 + i] = d * (float)(int8_t)xq[b * 292 + 4 + i];
            }
            double exact = 0, mag = 0;
            for (size_t i = 0; i < n; i++) exact += (double)w[i] * xr[i], mag += fabs((double)w[i] * xr[i]);
            const double err = fabs(kern_vec_dot_act(t, row, xq, n) - exact) / (mag + 1e-30);
            max_err = err > max_err ? err : max_err;
        }
        printf("act %s reference vs double dot: max err %.2e of sum |w x|\n", kern_type_name(t), max_err);
        ck_assert_msg(max_err < 1e-5, "%s: %g", kern_type_name(t), max_err);
    }
}
END_TEST

/* K-quant rows against Q8_K activations at every ISA level: n_in of 1 .. 11 super-blocks, odd row
 * counts, 1 .. 33 tokens, quantiser-made and random-byte weights: check_matmul's checks (bitwise
 * the reference, each token bitwise alone, the same on 1 and 2 threads). */
START_TEST(test_matmul_act_k_shapes) {
    static const uint32_t types[] = {KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
    /* n_in: 1 .. 11 super-blocks (the AVX-512 decode takes them in groups of 4: every tail) */
    static const size_t ns[] = {256, 512, 768, 1024, 2048, 2816}, outs[] = {1, 7, 16, 33, 49};
    static const size_t toks[] = {1, 1, 2, 5, 17, 33, 1};
    kern_init();
    kern_pool *pool1 = kern_pool_new(1), *pool2 = kern_pool_new(2);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t ti = 0; ti < 3; ti++)
            for (size_t c = 0; c < 30; c++)
                check_matmul_w(pool1, pool2, types[ti], ns[c % 6], outs[c % 5], toks[c % 7], true, c % 2);
        printf("act K-quant shapes %-6s ok\n", isa_name[isa]);
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(pool1);
    kern_pool_destroy(pool2);
}
END_TEST

/* Quantised activations stay close to the exact f32 product (the llama.cpp-style arithmetic). */
START_TEST(test_matmul_quant_act_drift) {
    static const uint32_t types[] = {KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K,
                                     KERN_TYPE_Q6_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        size_t n_in = 768, n_out = 13, n_tok = 5, rb = kern_row_bytes(t, n_in);
        uint8_t *W = malloc(rb * n_out), *scratch = malloc(kern_matmul_scratch_bytes(n_in, n_tok));
        float row[768], *X = malloc(n_in * n_tok * sizeof(float)), Y[13 * 5];
        for (size_t o = 0; o < n_out; o++) {
            for (size_t i = 0; i < n_in; i++) row[i] = frand();
            ck_assert_int_eq(kern_quantize_row_ref(t, row, W + o * rb, n_in), 0);
        }
        for (size_t i = 0; i < n_in * n_tok; i++) X[i] = frand();
        kern_matmul(NULL, t, W, X, Y, n_in, n_out, n_tok, scratch);
        double max_exact = 0;
        for (size_t tk = 0; tk < n_tok; tk++)
            for (size_t o = 0; o < n_out; o++) {
                double ex = kern_dot_ref(t, W + o * rb, X + tk * n_in, n_in);
                double e = fabs(Y[tk * n_out + o] - ex) / (sqrt((double)n_in) * 0.5);
                max_exact = e > max_exact ? e : max_exact;
            }
        ck_assert_msg(max_exact < 2e-2, "%s: quantised activations drift %g from the f32 product", kern_type_name(t), max_exact);
        free(W), free(scratch), free(X);
    }
}
END_TEST

/* RMSNorm, SwiGLU and add at every ISA level, odd lengths (vector tails), max error printed. */
START_TEST(test_elementwise_every_isa) {
    enum { N = 1031 };
    static float x[N], w[N], y[N], out[N];
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        double e_norm = 0, e_glu = 0;
        for (size_t n = 1; n <= N; n += 17 + n / 2) {
            for (size_t i = 0; i < n; i++) x[i] = frand() * 3, w[i] = frand(), y[i] = frand() * 12;
            kern_rmsnorm(out, x, w, n, 1e-5f);
            double ss = 0;
            for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
            for (size_t i = 0; i < n; i++) e_norm = fmax(e_norm, fabs(out[i] - x[i] / sqrt(ss / n + 1e-5) * w[i]));
            kern_swiglu(out, y, w, n); /* gate in [-12, 12] */
            for (size_t i = 0; i < n; i++) {
                double ref = y[i] / (1 + exp(-(double)y[i])) * w[i];
                e_glu = fmax(e_glu, fabs(out[i] - ref) / (fabs(ref) + 1e-3));
            }
            memcpy(out, x, n * sizeof(float));
            kern_add(out, w, n);
            for (size_t i = 0; i < n; i++) ck_assert_float_eq(out[i], x[i] + w[i]);
        }
        printf("%-6s rmsnorm max abs err %.2e, swiglu max rel err %.2e\n", isa_name[isa], e_norm, e_glu);
        ck_assert_msg(e_norm < 1e-5 && e_glu < 1e-5, "%g %g", e_norm, e_glu);
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* kern_kv_store's f32 -> f16 at every ISA level, bitwise against kern_f32_to_f16: random
 * exponents across the f16 subnormal, normal and overflow ranges, exact ties, zeros, inf, and
 * the edges around 65504; odd row lengths exercise the vector tails. NaN only has to stay NaN. */
START_TEST(test_kv_store_f16_every_isa) {
    enum { N = 263 };
    static float k[N], v[N];
    static uint16_t K[N], V[N];
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65536.0f, 6.1035156e-05f, 5.9604645e-08f,
                           2.9802322e-08f, 2.9802326e-08f, 1e-30f, INFINITY, -INFINITY, NAN};
    kern_init();
    const int32_t table[1] = {0};
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t n = 1; n <= N; n += 29) {
            for (size_t i = 0; i < n; i++) {
                uint32_t r = (uint32_t)(frand() * 8388608.0f) & 0x7fffff, e = 96 + (uint32_t)((frand() + 1) * 26) % 52;
                uint32_t sign = frand() < 0 ? 0x80000000u : 0;
                if (i % 5 == 1) r = (r & ~0x1fffu) | 0x1000u; /* a tie between two f16 neighbours */
                k[i] = bits_f32(sign | e << 23 | r);
                v[i] = i % 3 ? frand() * 100 : edges[i % (sizeof edges / sizeof edges[0])];
            }
            kern_kv_store(K, V, KERN_TYPE_F16, 1, 1, n, table, 0, k, v);
            for (size_t i = 0; i < n; i++) {
                ck_assert_msg(K[i] == kern_f32_to_f16(k[i]), "%s n %zu: %a -> %04x, scalar %04x", isa_name[isa], n,
                              (double)k[i], K[i], kern_f32_to_f16(k[i]));
                if (isnan(v[i])) ck_assert((V[i] & 0x7c00) == 0x7c00 && (V[i] & 0x3ff));
                else ck_assert_msg(V[i] == kern_f32_to_f16(v[i]), "%s: %a -> %04x", isa_name[isa], (double)v[i], V[i]);
            }
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* The F16 cache layout of kern.h: K dimension-major in its block (value d of kv head h of slot s
 * at ((block * n_kv_head + h) * head_dim + d) * block_size + s), V slot-major rows; every
 * position of scattered blocks, block sizes 16 and 5, at every ISA level. */
START_TEST(test_kv_store_f16_layout) {
    enum { NKV = 2, HD = 20, NB = 3, ROW = NKV * HD }; /* values under 2048: distinct in f16 */
    const int32_t table[NB] = {2, 0, 1};
    static float k[ROW], v[ROW];
    static uint16_t K[NB * 16 * ROW], V[NB * 16 * ROW];
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (size_t bs = 5; bs <= 16; bs += 11) {
            memset(K, 0xff, sizeof K), memset(V, 0xff, sizeof V);
            for (size_t p = 0; p < NB * bs; p++) {
                for (size_t e = 0; e < ROW; e++) k[e] = (float)(p * ROW + e), v[e] = -(float)(p * ROW + e);
                kern_kv_store(K, V, KERN_TYPE_F16, bs, NKV, HD, table, (int32_t)p, k, v);
            }
            for (size_t p = 0; p < NB * bs; p++)
                for (size_t h = 0; h < NKV; h++)
                    for (size_t d = 0; d < HD; d++) {
                        const size_t b = (size_t)table[p / bs], s = p % bs, e = h * HD + d;
                        const uint16_t kk = K[((b * NKV + h) * HD + d) * bs + s], vv = V[(b * bs + s) * ROW + e];
                        ck_assert_msg(kk == kern_f32_to_f16((float)(p * ROW + e)), "%s bs %zu K pos %zu head %zu value %zu",
                                      isa_name[isa], bs, p, h, d);
                        ck_assert_msg(vv == kern_f32_to_f16(-(float)(p * ROW + e)), "%s bs %zu V pos %zu head %zu value %zu",
                                      isa_name[isa], bs, p, h, d);
                    }
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* kern_fma_peak at every ISA level: a finite, positive figure (tokd bench's f32 ceiling) */
START_TEST(test_fma_peak_every_isa) {
    kern_init();
    kern_pool *p = kern_pool_new(2);
    ck_assert_ptr_nonnull(p);
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        const double gf = kern_fma_peak(p, 0.01);
        ck_assert_msg(isfinite(gf) && gf > 0, "%s: %g GFLOP/s", isa_name[isa], gf);
        printf("%-6s f32 FMA peak %.1f GFLOP/s (2 threads)\n", isa_name[isa], gf);
    }
    kern__set_isa(kern__isa_best());
    kern_pool_destroy(p);
}
END_TEST

START_TEST(test_rmsnorm_rope_swiglu_softmax) {
    float x[67], w[67], out[67];
    for (int i = 0; i < 67; i++) x[i] = frand() * 3, w[i] = frand();
    kern_rmsnorm(out, x, w, 67, 1e-5f);
    double ss = 0;
    for (int i = 0; i < 67; i++) ss += (double)x[i] * x[i];
    for (int i = 0; i < 67; i++) ck_assert_double_eq_tol(out[i], x[i] / sqrt(ss / 67 + 1e-5) * w[i], 1e-5);
    /* rope: both styles rotate pairs by pos * base^(-2i/n_rot); norms of pairs are kept */
    for (int neox = 0; neox < 2; neox++) {
        float h[24], h0[24];
        for (int i = 0; i < 24; i++) h[i] = h0[i] = frand();
        kern_rope(h, 24, 16, 37, 10000.0f, neox);
        for (int i = 0; i < 8; i++) {
            int a = neox ? i : 2 * i, b = neox ? i + 8 : 2 * i + 1;
            double th = 37.0 * pow(10000.0, -2.0 * i / 16.0);
            ck_assert_double_eq_tol(h[a], h0[a] * cos(th) - h0[b] * sin(th), 2e-4);
            ck_assert_double_eq_tol(h[b], h0[a] * sin(th) + h0[b] * cos(th), 2e-4);
        }
        for (int i = 16; i < 24; i++) ck_assert_float_eq(h[i], h0[i]); /* beyond n_rot untouched */
    }
    float g[33], u[33], s[33];
    for (int i = 0; i < 33; i++) g[i] = frand() * 6, u[i] = frand();
    kern_swiglu(s, g, u, 33);
    for (int i = 0; i < 33; i++) ck_assert_double_eq_tol(s[i], g[i] / (1 + exp(-g[i])) * u[i], 1e-6);
    float sm[101];
    double ref[101], sum = 0, mx = -1e9;
    for (int i = 0; i < 101; i++) sm[i] = frand() * 20, mx = sm[i] > mx ? sm[i] : mx;
    for (int i = 0; i < 101; i++) sum += ref[i] = exp(sm[i] - mx);
    kern_softmax(sm, 101);
    for (int i = 0; i < 101; i++) ck_assert_double_eq_tol(sm[i], ref[i] / sum, 1e-6);
}
END_TEST

/* One paged-attention case at the current ISA level: a sequence with n_ctx0 - 1 cached
 * positions and n_tok new tokens, K/V in scattered blocks of bs slots. The run of all
 * (token, head) items must match a dense double-precision reference (f16 KV: inputs rounded
 * like the kernel; weights rounded to f16 before meeting V; Q8_0 KV: the dequantised cache and
 * q quantised to Q8_0 and back), and every item must be bitwise the same computed alone (kern_attn_paged, one head)
 * and inside split ranges of the run, as the engine's threads cut it. Returns the max abs error;
 * *rel_ref (Q8_0 only, else 0): the max abs difference from the scalar reference kernel
 * (kernels/cpu/ops.c, attn_tile_scalar) over the largest magnitude of its output. */
static double check_attn(uint32_t type, size_t NH, size_t NKV, size_t HD, size_t BS, size_t n_ctx0, size_t n_tok,
                         double *rel_ref) {
    const bool f16 = type == KERN_TYPE_F16, q8 = type == KERN_TYPE_Q8_0;
    const char *tn = kern_type_name(type);
    const size_t row = NKV * HD, rb = kern_row_bytes(type, row), n_all = n_ctx0 + n_tok - 1, n_blk = (n_all + BS - 1) / BS;
    const size_t pool_blocks = 2 * n_blk + 3, q_dim = NH * HD, group = NH / NKV;
    uint8_t *K = calloc(pool_blocks * BS, rb), *V = calloc(pool_blocks * BS, rb);
    int32_t *table = malloc(n_blk * sizeof(int32_t));
    float *k = malloc(n_all * row * sizeof(float)), *v = malloc(n_all * row * sizeof(float));
    float *q = malloc(n_tok * q_dim * sizeof(float)), *out = malloc(n_tok * q_dim * sizeof(float));
    float *one = malloc(q_dim * sizeof(float)), *split = malloc(n_tok * q_dim * sizeof(float));
    float *scratch = malloc(kern_attn_scratch_floats(n_all, HD) * sizeof(float));
    double *s = malloc(n_all * sizeof(double));
    for (size_t b = 0; b < n_blk; b++) table[b] = (int32_t)(pool_blocks - 1 - 2 * b); /* scattered, backwards */
    for (size_t p = 0; p < n_all; p++) {
        for (size_t i = 0; i < row; i++) k[p * row + i] = frand(), v[p * row + i] = frand();
        kern_kv_store(K, V, type, BS, NKV, HD, table, (int32_t)p, k + p * row, v + p * row);
        if (q8) { /* the reference reads what the cache holds */
            const size_t slot = (size_t)table[p / BS] * BS + p % BS;
            kern_dequant_row_ref(type, K + slot * rb, k + p * row, row);
            kern_dequant_row_ref(type, V + slot * rb, v + p * row, row);
        }
    }
    for (size_t i = 0; i < n_tok * q_dim; i++) q[i] = frand() * 2;
    float *qd = malloc(n_tok * q_dim * sizeof(float)); /* q as the reference meets K */
    memcpy(qd, q, n_tok * q_dim * sizeof(float));
    if (q8) { /* a Q8_0 cache meets q quantised to Q8_0, head by head */
        uint8_t qb[1024 / 32 * 34];
        for (size_t i = 0; i < n_tok * NH; i++) {
            kern_quantize_act_row(KERN_TYPE_Q8_0, q + i * HD, qb, HD);
            kern_dequant_row_ref(KERN_TYPE_Q8_0, qb, qd + i * HD, HD);
        }
    }
    kern_kv_view kv = {K, V, type, BS, NKV, HD, table};
    const float scale = 1.0f / sqrtf((float)HD);
    kern_attn_paged_run(out, q, NH, 0, n_tok * NH, &kv, n_ctx0, scale, scratch);
#define R16(x) (f16 ? (double)kern_f16_to_f32(kern_f32_to_f16(x)) : (double)(x))
    double max_err = 0;
    for (size_t t = 0; t < n_tok; t++)
        for (size_t h = 0; h < NH; h++) {
            const size_t g = h / group, n = n_ctx0 + t;
            const float *qh = qd + t * q_dim + h * HD;
            double mx = -1e30, sum = 0;
            for (size_t p = 0; p < n; p++) {
                double d = 0;
                for (size_t i = 0; i < HD; i++) d += R16(qh[i]) * R16(k[p * row + g * HD + i]);
                s[p] = d * scale;
                mx = s[p] > mx ? s[p] : mx;
            }
            for (size_t p = 0; p < n; p++) sum += s[p] = exp(s[p] - mx);
            for (size_t p = 0; p < n; p++) s[p] = R16((float)(s[p] / sum)); /* weights meet an f16 V as f16 */
            for (size_t i = 0; i < HD; i++) {
                double o = 0;
                for (size_t p = 0; p < n; p++) o += s[p] * R16(v[p * row + g * HD + i]);
                max_err = fmax(max_err, fabs(o - out[t * q_dim + h * HD + i]));
            }
            /* alone: one token, one head */
            kern_attn_paged(one, q + t * q_dim, NH, h, h + 1, &kv, n, scale, scratch);
            ck_assert_msg(memcmp(one + h * HD, out + t * q_dim + h * HD, HD * sizeof(float)) == 0,
                          "%s KV %zu/%zu heads x %zu, token %zu head %zu: alone differs from the run", tn, NH, NKV, HD, t, h);
        }
#undef R16
    /* the run cut into ranges at odd places, as the engine's threads do */
    size_t cuts[4] = {0, 1 + (size_t)((frand() + 1) * 0.5 * (double)(n_tok * NH - 1)), 0, n_tok * NH};
    cuts[2] = cuts[1] + (n_tok * NH - cuts[1]) / 2;
    memset(split, 0xff, n_tok * q_dim * sizeof(float));
    for (int c = 0; c < 3; c++) {
        size_t t0 = cuts[c] / NH; /* a range starts at its first token, as attn_worker calls it */
        kern_attn_paged_run(split + t0 * q_dim, q + t0 * q_dim, NH, cuts[c] - t0 * NH, cuts[c + 1] - t0 * NH, &kv,
                            n_ctx0 + t0, scale, scratch);
    }
    ck_assert_msg(memcmp(split, out, n_tok * q_dim * sizeof(float)) == 0, "%s KV: a split run differs", tn);
    /* long contexts: the segments' partials computed in pieces (as the engine's threads cut a
     * decode step), then folded, give the run's result bitwise */
    for (size_t t = 0; t < n_tok && type != KERN_TYPE_F32; t++) {
        const size_t n = n_ctx0 + t, n_seg = kern_attn_n_seg(n);
        if (!n_seg) continue;
        float *part = malloc(NH * n_seg * (HD + 2) * sizeof(float));
        memset(part, 0xff, NH * n_seg * (HD + 2) * sizeof(float));
        const size_t cut_s = (size_t)((frand() + 1) * 0.5 * (double)(n_seg + 1)), cut_h = group * (1 + (size_t)((frand() + 1) * 0.5 * (double)(NKV - 1)));
        for (size_t g = 0; g < NKV; g++) /* one kv head's heads at a time, its segments in two pieces */
            for (int piece = 0; piece < 2; piece++)
                kern_attn_part(part, q + t * q_dim, NH, g * group, (g + 1) * group, &kv, n, piece ? cut_s : 0,
                               piece ? n_seg : cut_s, scale, scratch);
        memset(one, 0xff, q_dim * sizeof(float));
        kern_attn_fold(one, part, 0, cut_h, HD, n);
        kern_attn_fold(one, part, cut_h, NH, HD, n);
        ck_assert_msg(memcmp(one, out + t * q_dim, q_dim * sizeof(float)) == 0,
                      "%s KV ctx %zu: segment partials folded differ from the run", tn, n);
        free(part);
    }
    *rel_ref = 0;
    if (q8) { /* against the scalar reference kernel: the same sums in another order */
        const int isa = kern__isa();
        kern__set_isa(0);
        kern_attn_paged_run(split, q, NH, 0, n_tok * NH, &kv, n_ctx0, scale, scratch);
        kern__set_isa(isa);
        double mag = 0, diff = 0;
        for (size_t i = 0; i < n_tok * q_dim; i++)
            mag = fmax(mag, fabs(split[i])), diff = fmax(diff, fabs((double)split[i] - out[i]));
        *rel_ref = diff / mag;
    }
    free(K), free(V), free(table), free(k), free(v), free(q), free(out), free(one), free(split), free(scratch), free(s), free(qd);
    return max_err;
}

/* Paged attention with scattered blocks equals dense attention over the same K/V, at every ISA
 * level, for GQA groups of 1, 3 and 8, head sizes 48 / 64 / 128, odd contexts and block sizes,
 * single tokens and causal runs; and an item's result never depends on what it was batched with. */
START_TEST(test_attention_paged_vs_dense) {
    static const struct { size_t nh, nkv, hd, bs, n_ctx0, n_tok; } cases[] = {
        {6, 2, 48, 4, 23, 1},   {6, 2, 48, 4, 1, 9},     {8, 8, 64, 16, 37, 5}, {9, 3, 64, 16, 130, 3},
        {16, 2, 128, 5, 61, 4}, {16, 2, 128, 16, 1, 19}, {32, 4, 64, 16, 9, 3}, {4, 1, 64, 3, 300, 2},
        {9, 3, 64, 16, 1100, 2}, {6, 2, 48, 7, 509, 6}, /* over KERN_ATTN_SEG: segments; across it */
    };
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (int kvt = 0; kvt < 2; kvt++) {
            double worst = 0, rel;
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
                double e = check_attn(kvt ? KERN_TYPE_F16 : KERN_TYPE_F32, cases[c].nh, cases[c].nkv, cases[c].hd,
                                      cases[c].bs, cases[c].n_ctx0, cases[c].n_tok, &rel);
                /* f16 KV: a weight the kernel rounds (from f32) to the other f16 neighbour than the
                 * double reference does moves the output by 2^-11 of that weight */
                ck_assert_msg(e < (kvt ? 2e-4 : 1e-5), "%s %s KV case %zu: %g", isa_name[isa], kvt ? "f16" : "f32", c, e);
                worst = fmax(worst, e);
            }
            printf("%-6s paged attention (%s KV): max abs err vs dense %.2e\n", isa_name[isa], kvt ? "f16" : "f32", worst);
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* The same over a Q8_0 cache: head sizes 32, 64, 96 (AVX-512: a last part of 2 vectors) and 128,
 * GQA groups of 1, 3 and 8, block sizes 1, 7 and 16, odd contexts, single tokens and causal
 * runs; every level against the double reference over the dequantised cache and against the
 * scalar reference kernel (relative: the f32 sums in another order). */
START_TEST(test_attention_q8_0) {
    static const struct { size_t nh, nkv, hd, bs, n_ctx0, n_tok; } cases[] = {
        {3, 3, 32, 1, 23, 1},   {9, 3, 64, 7, 130, 3},   {16, 2, 128, 16, 61, 4}, {8, 1, 32, 16, 1, 19},
        {6, 2, 96, 7, 37, 5},   {4, 4, 128, 1, 300, 2},  {9, 3, 64, 16, 257, 1},  {24, 3, 64, 7, 45, 6},
        {24, 3, 32, 16, 77, 1}, {3, 1, 128, 7, 5, 11}, {9, 3, 64, 16, 2049, 1}, {6, 2, 96, 7, 508, 7},
    };
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        double worst = 0, worst_rel = 0, rel;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            double e = check_attn(KERN_TYPE_Q8_0, cases[c].nh, cases[c].nkv, cases[c].hd, cases[c].bs, cases[c].n_ctx0,
                                  cases[c].n_tok, &rel);
            ck_assert_msg(e < 1e-5, "%s Q8_0 KV case %zu: %g vs dense", isa_name[isa], c, e);
            ck_assert_msg(rel < 1e-5, "%s Q8_0 KV case %zu: %g relative to the scalar reference", isa_name[isa], c, rel);
            worst = fmax(worst, e), worst_rel = fmax(worst_rel, rel);
        }
        printf("%-6s paged attention (q8_0 KV): max abs err vs dense %.2e, relative to the scalar kernel %.2e\n",
               isa_name[isa], worst, worst_rel);
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

/* kern_kv_store into a Q8_0 cache: at every ISA level bitwise kern_quantize_act_row(Q8_0) of the
 * slot row (each kv head's head_dim values are whole blocks), in the slot the table names. */
START_TEST(test_kv_store_q8_0_every_isa) {
    enum { NKV = 3, HD = 64, ROW = NKV * HD, RB = ROW / 32 * 34, BS = 7 };
    static float k[ROW], v[ROW];
    static uint8_t K[4 * BS * RB], V[4 * BS * RB], want_k[RB], want_v[RB];
    const size_t rb = kern_row_bytes(KERN_TYPE_Q8_0, ROW);
    ck_assert_uint_eq(rb, RB);
    const int32_t table[2] = {3, 1};
    kern_init();
    for (int isa = 0; isa <= kern__isa_best(); isa++) {
        ck_assert_int_eq(kern__set_isa(isa), 0);
        for (int32_t pos = 0; pos < 2 * BS; pos += 3) {
            for (size_t i = 0; i < ROW; i++) k[i] = frand() * 7, v[i] = i % 32 == 5 ? 0.0f : frand() * 0.01f;
            for (size_t i = 64; i < 96; i++) v[i] = 0; /* an all-zero block: d = 0 */
            memset(K, 0xaa, sizeof K), memset(V, 0xaa, sizeof V);
            kern_kv_store(K, V, KERN_TYPE_Q8_0, BS, NKV, HD, table, pos, k, v);
            kern_quantize_act_row(KERN_TYPE_Q8_0, k, want_k, ROW);
            kern_quantize_act_row(KERN_TYPE_Q8_0, v, want_v, ROW);
            const size_t off = ((size_t)table[pos / BS] * BS + (size_t)pos % BS) * rb;
            ck_assert_msg(memcmp(K + off, want_k, rb) == 0 && memcmp(V + off, want_v, rb) == 0, "%s pos %d", isa_name[isa], pos);
            size_t untouched = 0;
            for (size_t i = 0; i < sizeof K; i++) untouched += (i < off || i >= off + rb) && K[i] == 0xaa;
            ck_assert_uint_eq(untouched, sizeof K - rb);
        }
    }
    kern__set_isa(kern__isa_best());
}
END_TEST

static void count_job(void *ctx, int ith, int nth) {
    int *hits = ctx;
    __atomic_fetch_add(&hits[ith], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&hits[8], nth, __ATOMIC_RELAXED);
}

START_TEST(test_pool_runs_every_share) {
    for (int nt = 1; nt <= 4; nt++) {
        kern_pool *p = kern_pool_new(nt);
        ck_assert_ptr_nonnull(p);
        int hits[9] = {0};
        for (int r = 0; r < 1000; r++) kern_pool_run(p, count_job, hits);
        for (int i = 0; i < nt; i++) ck_assert_int_eq(hits[i], 1000);
        ck_assert_int_eq(hits[8], 1000 * nt * nt);
        kern_pool_destroy(p);
    }
}
END_TEST

/* A pinned pool: thread i runs on the i-th CPU the process may use (wrapping around), the
 * caller included, and the caller's own affinity is what the pool found. */
static void cpu_job(void *ctx, int ith, int nth) {
    (void)nth;
    ((int *)ctx)[ith] = sched_getcpu();
}

START_TEST(test_pool_pinned) {
    cpu_set_t set;
    CPU_ZERO(&set);
    ck_assert_int_eq(sched_getaffinity(0, sizeof set, &set), 0);
    int cpus[CPU_SETSIZE], n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) cpus[n++] = c;
    ck_assert_int_gt(n, 0);
    kern_pool *p = kern_pool_new_pinned(3, true);
    ck_assert_ptr_nonnull(p);
    int got[3] = {-1, -1, -1};
    for (int r = 0; r < 20; r++) kern_pool_run(p, cpu_job, got);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(got[i], cpus[i % n]);
    /* a second pinned pool, created from this thread now pinned to cpus[0] (as tokd bench
     * creates the engine's pool after its own ran): still spread over every allowed CPU */
    kern_pool *q = kern_pool_new_pinned(3, true);
    ck_assert_ptr_nonnull(q);
    int got2[3] = {-1, -1, -1};
    for (int r = 0; r < 20; r++) kern_pool_run(q, cpu_job, got2);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(got2[i], cpus[i % n]);
    kern_pool_destroy(q);
    kern_pool_destroy(p);
    ck_assert_int_eq(sched_setaffinity(0, sizeof set, &set), 0); /* unpin this test thread */
}
END_TEST

int main(void) {
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_matmul_matches_reference);
    tcase_add_test(tc, test_matmul_quant_act_drift);
    tcase_add_test(tc, test_matmul_gemv_tiles);
    tcase_add_test(tc, test_matmul_gemm_act_tiles);
    tcase_add_test(tc, test_matmul_multi);
    tcase_add_test(tc, test_matmul_packed);
    tcase_add_test(tc, test_quantize_act_every_isa);
    tcase_add_test(tc, test_quantize_act_q8k_every_isa);
    tcase_add_test(tc, test_act_k_ref_vs_double);
    tcase_add_test(tc, test_matmul_act_k_shapes);
    tcase_add_test(tc, test_elementwise_every_isa);
    tcase_add_test(tc, test_kv_store_f16_every_isa);
    tcase_add_test(tc, test_kv_store_f16_layout);
    tcase_add_test(tc, test_fma_peak_every_isa);
    tcase_add_test(tc, test_rmsnorm_rope_swiglu_softmax);
    tcase_add_test(tc, test_attention_paged_vs_dense);
    tcase_add_test(tc, test_attention_q8_0);
    tcase_add_test(tc, test_kv_store_q8_0_every_isa);
    tcase_add_test(tc, test_pool_runs_every_share);
    tcase_add_test(tc, test_pool_pinned);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
