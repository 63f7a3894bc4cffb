/* Kernel op tests: every op against a straightforward reference written here in double
 * precision, on random inputs at several shapes (odd sizes included); the max error is printed.
 * Quantised formats have their own suite (test_quant.c), the KV cache and attention theirs
 * (test_attention.c). */
#include <check.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h" /* kern__set_isa: run every ISA level */
#include "kernels/kern.h"
#include "tests/unit/testutil.h"

#define frand tu_frand

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
    tcase_add_test(tc, test_fma_peak_every_isa);
    tcase_add_test(tc, test_rmsnorm_rope_swiglu_softmax);
    tcase_add_test(tc, test_pool_runs_every_share);
    tcase_add_test(tc, test_pool_pinned);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
