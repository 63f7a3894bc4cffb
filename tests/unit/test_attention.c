/* KV cache and attention tests: kern_kv_store's layouts and conversions, and paged attention
 * (f16 and Q8_0 caches, decode and causal runs, segments past KERN_ATTN_SEG) against a dense
 * double-precision reference, at every ISA level; split from test_kernels.c along that seam. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h" /* kern__set_isa: run every ISA level */
#include "kernels/kern.h"
#include "tests/unit/testutil.h"

#define frand tu_frand

static const char *const isa_name[] = {"scalar", "avx2", "avx512"};

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

int main(void) {
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("kv");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_kv_store_f16_every_isa);
    tcase_add_test(tc, test_kv_store_f16_layout);
    tcase_add_test(tc, test_kv_store_q8_0_every_isa);
    tcase_add_test(tc, test_attention_paged_vs_dense);
    tcase_add_test(tc, test_attention_q8_0);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
