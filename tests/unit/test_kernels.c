/* Kernel op tests: every op against a straightforward reference written here in double
 * precision, on random inputs at several shapes (odd sizes included); the max error is printed.
 * Quantised formats have their own suite (test_quant.c). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern.h"

static uint64_t rs = 12345;
static float frand(void) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

START_TEST(test_matmul_matches_reference) {
    static const uint32_t types[] = {KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_BF16, KERN_TYPE_Q8_0,
                                     KERN_TYPE_Q4_0, KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
    static const size_t shapes[][3] = {{256, 1, 1}, {256, 7, 3}, {512, 33, 1}, {768, 13, 5}, {256, 64, 17}};
    kern_pool *pool = kern_pool_new(2);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        double max_rel = 0, max_exact = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            size_t n_in = shapes[si][0], n_out = shapes[si][1], n_tok = shapes[si][2];
            size_t rb = kern_row_bytes(t, n_in);
            uint8_t *W = malloc(rb * n_out);
            float *row = malloc(n_in * sizeof(float)), *X = malloc(n_in * n_tok * sizeof(float));
            float *Y = malloc(n_out * n_tok * sizeof(float)), *Yr = malloc(n_out * n_tok * sizeof(float));
            for (size_t o = 0; o < n_out; o++) {
                for (size_t i = 0; i < n_in; i++) row[i] = frand();
                ck_assert_int_eq(kern_quantize_row_ref(t, row, W + o * rb, n_in), 0);
            }
            for (size_t i = 0; i < n_in * n_tok; i++) X[i] = frand();
            uint8_t *scratch = malloc(kern_matmul_scratch_bytes(n_in, n_tok));
            bool qa = si % 2 == 1; /* alternate exact and llama.cpp-style activations */
            kern_matmul(pool, t, W, X, Y, n_in, n_out, n_tok, qa ? scratch : NULL);
            kern_matmul_ref(t, W, X, Yr, n_in, n_out, n_tok, qa);
            for (size_t i = 0; i < n_out * n_tok; i++) {
                double rel = fabs(Y[i] - Yr[i]) / (fabs(Yr[i]) + 1.0);
                max_rel = rel > max_rel ? rel : max_rel;
            }
            /* against the exact product of dequantised weights and f32 activations */
            for (size_t tk = 0; tk < n_tok; tk++)
                for (size_t o = 0; o < n_out; o++) {
                    double ex = kern_dot_ref(t, W + o * rb, X + tk * n_in, n_in);
                    double e = fabs(Y[tk * n_out + o] - ex) / (sqrt((double)n_in) * 0.5);
                    max_exact = e > max_exact ? e : max_exact;
                }
            /* each output row is the same whatever the batch: token 0 alone equals row 0 */
            kern_matmul(pool, t, W, X, Yr, n_in, n_out, 1, qa ? scratch : NULL);
            ck_assert_mem_eq(Y, Yr, n_out * sizeof(float));
            free(scratch);
            free(W); free(row); free(X); free(Y); free(Yr);
        }
        printf("matmul %-5s max rel err vs reference %.2e\n", kern_type_name(t), max_rel);
        ck_assert_msg(max_rel < 1e-4, "%s: %g", kern_type_name(t), max_rel);
        ck_assert_msg(max_exact < 2e-2, "%s: quantised activations drift %g from the f32 product", kern_type_name(t), max_exact);
    }
    kern_pool_destroy(pool);
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

/* Paged attention with scattered blocks equals dense attention over the same K/V. */
START_TEST(test_attention_paged_vs_dense) {
    enum { NH = 6, NKV = 2, HD = 20, BS = 4, NCTX = 23, NBLK = 16 };
    for (int kvt = 0; kvt < 2; kvt++) {
        uint32_t type = kvt ? KERN_TYPE_F16 : KERN_TYPE_F32;
        size_t eb = kvt ? 2 : 4, row = NKV * HD;
        void *K = calloc(NBLK * BS * row, eb), *V = calloc(NBLK * BS * row, eb);
        int32_t table[6] = {9, 2, 14, 0, 7, 3};
        float k[NCTX][NKV * HD], v[NCTX][NKV * HD], q[NH * HD], out[NH * HD], scratch[NCTX];
        for (int p = 0; p < NCTX; p++) {
            for (int i = 0; i < NKV * HD; i++) k[p][i] = frand(), v[p][i] = frand();
            kern_kv_store(K, V, type, BS, NKV, HD, table, p, k[p], v[p]);
        }
        for (int i = 0; i < NH * HD; i++) q[i] = frand();
        kern_kv_view kv = {K, V, type, BS, NKV, HD, table};
        kern_attn_paged(out, q, NH, 0, NH, &kv, NCTX, 0.3f, scratch);
        double max_err = 0;
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            double s[NCTX], mx = -1e30, sum = 0;
            for (int p = 0; p < NCTX; p++) {
                double d = 0;
                for (int i = 0; i < HD; i++) {
                    double kk = kvt ? kern_f16_to_f32(kern_f32_to_f16(k[p][g * HD + i])) : k[p][g * HD + i];
                    double qq = kvt ? kern_f16_to_f32(kern_f32_to_f16(q[h * HD + i])) : q[h * HD + i];
                    d += qq * kk;
                }
                s[p] = d * 0.3;
                mx = s[p] > mx ? s[p] : mx;
            }
            for (int p = 0; p < NCTX; p++) sum += s[p] = exp(s[p] - mx);
            for (int p = 0; p < NCTX; p++) /* weights meet an f16 V as f16 */
                s[p] = kvt ? kern_f16_to_f32(kern_f32_to_f16((float)(s[p] / sum))) : s[p] / sum;
            for (int i = 0; i < HD; i++) {
                double o = 0;
                for (int p = 0; p < NCTX; p++)
                    o += s[p] * (kvt ? kern_f16_to_f32(kern_f32_to_f16(v[p][g * HD + i])) : v[p][g * HD + i]);
                double e = fabs(o - out[h * HD + i]);
                max_err = e > max_err ? e : max_err;
            }
        }
        printf("paged attention (%s KV): max abs err vs dense %.2e\n", kvt ? "f16" : "f32", max_err);
        ck_assert_msg(max_err < 1e-5, "%g", max_err);
        free(K);
        free(V);
    }
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

int main(void) {
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_matmul_matches_reference);
    tcase_add_test(tc, test_rmsnorm_rope_swiglu_softmax);
    tcase_add_test(tc, test_attention_paged_vs_dense);
    tcase_add_test(tc, test_pool_runs_every_share);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
