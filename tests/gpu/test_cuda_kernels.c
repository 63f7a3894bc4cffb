/* Every CUDA kernel (kernels/cuda/kern_cuda.h) against the CPU scalar reference, llm.c style:
 * fresh random inputs at several shapes, odd sizes included; for each case the max relative
 * error max|gpu - ref| / max|ref| is printed beside its bound (per dtype / arithmetic) and the run
 * fails if any case exceeds its bound. Needs a GPU; run by tests/gpu/run.sh, never by make test.
 * The CPU side runs with TOKD_ISA=scalar (the portable reference code). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kern_cuda.h"
#include "kernels/kern.h"

static int n_fail, n_case;
static uint64_t rng_state = 0x1234567887654321ull;

static float frand(void) { /* [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
}

#define CHECK(call)                                                                                    \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_) {                                                                                     \
            fprintf(stderr, "FATAL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call, rc_, kcu_last_error()); \
            exit(2);                                                                                   \
        }                                                                                              \
    } while (0)

static void *dev_copy(const void *h, size_t bytes) {
    void *d;
    CHECK(kcu_alloc(&d, bytes));
    CHECK(kcu_h2d(d, h, bytes, 0));
    CHECK(kcu_sync(0));
    return d;
}

static void to_host(void *h, const void *d, size_t bytes) {
    CHECK(kcu_sync(0));
    CHECK(kcu_d2h(h, d, bytes, 0));
    CHECK(kcu_sync(0));
}

/* Records one case: prints the error and whether it is within bound. */
static void report(const char *what, const char *shape, const float *got, const float *ref, size_t n, double bound) {
    double mx = 0, md = 0;
    int bad_val = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)ref[i]));
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) != isnan(ref[i])) bad_val = 1;
        md = fmax(md, d);
    }
    double rel = md / (mx > 1e-30 ? mx : 1e-30);
    int ok = !bad_val && rel <= bound;
    n_case++;
    if (!ok) n_fail++;
    printf("%-4s %-26s %-34s max rel err %.3e (bound %.0e)%s\n", ok ? "ok" : "FAIL", what, shape, rel, bound,
           bad_val ? " NaN mismatch" : "");
}

static const uint32_t all_types[] = {KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_BF16, KERN_TYPE_Q8_0, KERN_TYPE_Q4_0,
                                     KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

/* Random matrix of `type` in ggml row format (host) and its f32 dequantisation. */
static uint8_t *make_weight(uint32_t type, size_t n_in, size_t n_out, float **deq) {
    size_t rb = kern_row_bytes(type, n_in);
    uint8_t *w = malloc(rb * n_out);
    float *row = malloc(n_in * sizeof(float));
    *deq = malloc(n_in * n_out * sizeof(float));
    for (size_t r = 0; r < n_out; r++) {
        fill(row, n_in, 1.0f / sqrtf((float)n_in) * 3.0f);
        if (kern_quantize_row_ref(type, row, w + r * rb, n_in)) {
            fprintf(stderr, "quantize %s failed\n", kern_type_name(type));
            exit(2);
        }
        kern_dequant_row_ref(type, w + r * rb, *deq + r * n_in, n_in);
    }
    free(row);
    return w;
}

static size_t block_of(uint32_t t) { return kern_type_block_elems(t); }

/* ---- dequant, embedding, GEMV, GEMM ---- */
static void test_weights(kcu_blas *blas) {
    static const size_t shapes[][2] = {{256, 3}, {512, 67}, {1024, 129}, {96, 33}, {172, 31}, {36, 5}, {4096, 20}};
    static const int toks[] = {1, 2, 3, 8, 9, 33};
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            size_t n_in = shapes[si][0], n_out = shapes[si][1];
            if (n_in % block_of(type)) continue;
            char shape[64];
            float *deq;
            uint8_t *wh = make_weight(type, n_in, n_out, &deq);
            kcu_weight w;
            CHECK(kcu_weight_upload(&w, type, wh, n_in, n_out));
            /* dequant of a row range */
            size_t r0 = n_out / 3, nr = n_out - r0;
            size_t out_rows = n_out > 7 ? n_out : 7; /* the dequantised rows, or 7 embedding rows */
            float *got = malloc(n_in * out_rows * sizeof(float)), *out_d;
            CHECK(kcu_alloc((void **)&out_d, n_in * out_rows * sizeof(float)));
            CHECK(kcu_dequant_rows(&w, r0, nr, out_d, KERN_TYPE_F32, 0));
            to_host(got, out_d, nr * n_in * sizeof(float));
            snprintf(shape, sizeof shape, "%s %zux%zu rows %zu+", kern_type_name(type), n_in, n_out, r0);
            report("dequant", shape, got, deq + r0 * n_in, nr * n_in, 1e-6);
            /* embedding lookup of repeated and out-of-order ids */
            int32_t ids[7] = {0, (int32_t)n_out - 1, 1 % (int32_t)n_out, 0, (int32_t)(n_out / 2), 2 % (int32_t)n_out, 0};
            float *ref = malloc(7 * n_in * sizeof(float));
            for (int i = 0; i < 7; i++) memcpy(ref + i * n_in, deq + (size_t)ids[i] * n_in, n_in * sizeof(float));
            int32_t *ids_d = dev_copy(ids, sizeof ids);
            CHECK(kcu_embed(out_d, &w, ids_d, 7, 0));
            to_host(got, out_d, 7 * n_in * sizeof(float));
            snprintf(shape, sizeof shape, "%s %zux%zu 7 ids", kern_type_name(type), n_in, n_out);
            report("embed", shape, got, ref, 7 * n_in, 1e-6);
            free(ref);
            kcu_free(ids_d);
            /* matmul: GEMV (T <= 8) and both GEMM modes */
            for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                int T = toks[k];
                float *x = malloc(T * n_in * sizeof(float)), *y = malloc(T * n_out * sizeof(float));
                float *yg = malloc(T * n_out * sizeof(float)), *y_d;
                fill(x, (size_t)T * n_in, 1.0f);
                kern_matmul_ref(type, wh, x, y, n_in, n_out, (size_t)T, false);
                float *x_d = dev_copy(x, T * n_in * sizeof(float));
                CHECK(kcu_alloc((void **)&y_d, T * n_out * sizeof(float)));
                if (T <= KCU_GEMV_MAX_TOK && n_in % 4 == 0) {
                    CHECK(kcu_gemv(&w, x_d, y_d, T, 0));
                    to_host(yg, y_d, T * n_out * sizeof(float));
                    snprintf(shape, sizeof shape, "%s %zux%zu T=%d", kern_type_name(type), n_in, n_out, T);
                    report("gemv", shape, yg, y, T * n_out, 2e-5);
                }
                if (T == 1 || T >= 8) {
                    CHECK(kcu_gemm(blas, &w, x_d, y_d, T, KCU_GEMM_F32, 0));
                    to_host(yg, y_d, T * n_out * sizeof(float));
                    snprintf(shape, sizeof shape, "%s %zux%zu T=%d", kern_type_name(type), n_in, n_out, T);
                    report("gemm f32", shape, yg, y, T * n_out, 2e-5);
                    CHECK(kcu_gemm(blas, &w, x_d, y_d, T, KCU_GEMM_HALF, 0));
                    to_host(yg, y_d, T * n_out * sizeof(float));
                    /* f16 operands: ~2^-11 per product; bf16 (BF16 weights): 2^-8 */
                    report("gemm half", shape, yg, y, T * n_out, type == KERN_TYPE_BF16 ? 2e-2 : 4e-3);
                }
                if (T == 3 || T == 33) { /* Y += X W^T on the GEMV (T 3) and GEMM (T 33 dense, chunked quantised) paths */
                    float *y0 = malloc(T * n_out * sizeof(float));
                    fill(y0, (size_t)T * n_out, 1.0f);
                    CHECK(kcu_h2d(y_d, y0, T * n_out * sizeof(float), 0));
                    CHECK(kcu_matmul_add(blas, &w, x_d, y_d, T, KCU_GEMM_F32, 0));
                    to_host(yg, y_d, T * n_out * sizeof(float));
                    for (size_t i = 0; i < (size_t)T * n_out; i++) y0[i] += y[i];
                    snprintf(shape, sizeof shape, "%s %zux%zu T=%d", kern_type_name(type), n_in, n_out, T);
                    report("matmul_add f32", shape, yg, y0, T * n_out, 2e-5);
                    free(y0);
                }
                kcu_free(x_d);
                kcu_free(y_d);
                free(x), free(y), free(yg);
            }
            kcu_free(out_d);
            free(got);
            kcu_weight_free(&w);
            free(wh);
            free(deq);
        }
    }
}

/* ---- elementwise ---- */
static void test_elementwise(void) {
    static const int norm_shapes[][2] = {{5, 576}, {3, 64}, {7, 4097}, {1, 8}, {300, 128}};
    for (size_t s = 0; s < sizeof norm_shapes / sizeof norm_shapes[0]; s++) {
        int R = norm_shapes[s][0], n = norm_shapes[s][1];
        size_t N = (size_t)R * n;
        float *x = malloc(N * 4), *w = malloc(n * 4), *ref = malloc(N * 4), *got = malloc((R > 3 ? N : 3 * (size_t)n) * 4);
        fill(x, N, 3.0f), fill(w, n, 1.0f);
        for (int r = 0; r < R; r++) kern_rmsnorm(ref + (size_t)r * n, x + (size_t)r * n, w, n, 1e-5f);
        float *x_d = dev_copy(x, N * 4), *w_d = dev_copy(w, n * 4), *o_d;
        CHECK(kcu_alloc((void **)&o_d, (R > 3 ? N : 3 * (size_t)n) * 4)); /* R rows, or the 3 gathered ones */
        CHECK(kcu_rmsnorm(o_d, x_d, w_d, NULL, R, n, 1e-5f, 0));
        to_host(got, o_d, N * 4);
        char shape[64];
        snprintf(shape, sizeof shape, "%d rows of %d", R, n);
        report("rmsnorm", shape, got, ref, N, 1e-6);
        CHECK(kcu_rmsnorm(x_d, x_d, w_d, NULL, R, n, 1e-5f, 0)); /* in place (per-head q/k norm) */
        to_host(got, x_d, N * 4);
        report("rmsnorm in place", shape, got, ref, N, 1e-6);
        /* gathered rows (final norm of the logits rows) */
        int32_t rows[3] = {R - 1, 0, R / 2};
        float *ref2 = malloc(3 * (size_t)n * 4);
        for (int i = 0; i < 3; i++) memcpy(ref2 + (size_t)i * n, ref + (size_t)rows[i] * n, (size_t)n * 4);
        CHECK(kcu_h2d(x_d, x, N * 4, 0));
        int32_t *rows_d = dev_copy(rows, sizeof rows);
        CHECK(kcu_rmsnorm(o_d, x_d, w_d, rows_d, 3, n, 1e-5f, 0));
        to_host(got, o_d, 3 * (size_t)n * 4);
        report("rmsnorm gather", shape, got, ref2, 3 * (size_t)n, 1e-6);
        kcu_free(rows_d), kcu_free(x_d), kcu_free(w_d), kcu_free(o_d);
        free(x), free(w), free(ref), free(got), free(ref2);
    }
    static const int rope_shapes[][4] = {{5, 8, 64, 64}, {3, 9, 64, 64}, {4, 4, 128, 128}, {2, 3, 64, 32}, {6, 8, 8, 8},
                                         {1, 2, 256, 256}};
    for (size_t s = 0; s < sizeof rope_shapes / sizeof rope_shapes[0]; s++)
        for (int neox = 0; neox < 2; neox++) {
            int T = rope_shapes[s][0], H = rope_shapes[s][1], hd = rope_shapes[s][2], nr = rope_shapes[s][3];
            size_t N = (size_t)T * H * hd;
            float *x = malloc(N * 4), *got = malloc(N * 4);
            int32_t *pos = malloc((size_t)T * 4);
            fill(x, N, 2.0f);
            for (int t = 0; t < T; t++) pos[t] = t == 0 ? 0 : (int32_t)((frand() + 1.0f) * 2000.0f);
            float *x_d = dev_copy(x, N * 4);
            int32_t *pos_d = dev_copy(pos, (size_t)T * 4);
            CHECK(kcu_rope(x_d, T, H, hd, nr, pos_d, 10000.0f, neox, 0));
            to_host(got, x_d, N * 4);
            for (int t = 0; t < T; t++)
                for (int h = 0; h < H; h++) kern_rope(x + ((size_t)t * H + h) * hd, hd, nr, pos[t], 10000.0f, neox);
            char shape[64];
            snprintf(shape, sizeof shape, "T%d H%d hd%d rot%d %s", T, H, hd, nr, neox ? "neox" : "pairs");
            /* theta = pos * base^(-2i/n) up to 4000 rad: an ulp of powf moves sin/cos by ~1e-4 */
            report("rope", shape, got, x, N, 2e-3);
            kcu_free(x_d), kcu_free(pos_d);
            free(x), free(got), free(pos);
        }
    /* fused rope of q and k + KV store == kcu_rope twice + kcu_kv_store, bit for bit */
    static const int rkv[][5] = {{5, 8, 4, 64, 64}, {3, 9, 3, 64, 32}, {7, 32, 8, 128, 128}, {2, 4, 4, 8, 8}, {4, 6, 2, 96, 64}};
    for (size_t s = 0; s < sizeof rkv / sizeof rkv[0]; s++)
        for (int neox = 0; neox < 2; neox++) {
            int T = rkv[s][0], H = rkv[s][1], KV = rkv[s][2], hd = rkv[s][3], nr = rkv[s][4], kvr = KV * hd;
            size_t nq = (size_t)T * H * hd, nk = (size_t)T * kvr, n_slots = (size_t)T * 3;
            float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
            int32_t pos[8], slot[8];
            fill(q, nq, 2.0f), fill(k, nk, 2.0f), fill(v, nk, 1.0f);
            for (int t = 0; t < T; t++) pos[t] = (int32_t)((frand() + 1.0f) * 1000.0f), slot[t] = 3 * t + (t % 3);
            float *qa = dev_copy(q, nq * 4), *ka = dev_copy(k, nk * 4), *qb = dev_copy(q, nq * 4), *kb = dev_copy(k, nk * 4);
            float *v_d = dev_copy(v, nk * 4);
            int32_t *pos_d = dev_copy(pos, sizeof pos), *slot_d = dev_copy(slot, sizeof slot);
            void *kca, *vca, *kcb, *vcb;
            CHECK(kcu_alloc(&kca, n_slots * kvr * 2));
            CHECK(kcu_alloc(&vca, n_slots * kvr * 2));
            CHECK(kcu_alloc(&kcb, n_slots * kvr * 2));
            CHECK(kcu_alloc(&vcb, n_slots * kvr * 2));
            CHECK(kcu_rope(qa, T, H, hd, nr, pos_d, 10000.0f, neox, 0));
            CHECK(kcu_rope(ka, T, KV, hd, nr, pos_d, 10000.0f, neox, 0));
            CHECK(kcu_kv_store(kca, vca, ka, v_d, slot_d, T, kvr, n_slots, 0));
            CHECK(kcu_rope_kv(qb, kb, v_d, T, H, KV, hd, nr, pos_d, 10000.0f, neox, kcb, vcb, slot_d, n_slots, 0));
            size_t nb = nq * 4 + nk * 4 + 4 * n_slots * kvr * 2;
            uint8_t *ha = malloc(nb), *hb = malloc(nb);
            to_host(ha, qa, nq * 4), to_host(ha + nq * 4, ka, nk * 4);
            to_host(ha + nq * 4 + nk * 4, kca, n_slots * kvr * 2), to_host(ha + nq * 4 + nk * 4 + n_slots * kvr * 2, vca, n_slots * kvr * 2);
            to_host(hb, qb, nq * 4), to_host(hb + nq * 4, kb, nk * 4);
            to_host(hb + nq * 4 + nk * 4, kcb, n_slots * kvr * 2), to_host(hb + nq * 4 + nk * 4 + n_slots * kvr * 2, vcb, n_slots * kvr * 2);
            int same = memcmp(ha, hb, nq * 4 + nk * 4 + 2 * n_slots * kvr * 2) == 0;
            n_case++, n_fail += !same;
            printf("%-4s %-26s T%d H%d/%d hd%d rot%d %-14s %s\n", same ? "ok" : "FAIL", "rope_kv fused", T, H, KV, hd, nr,
                   neox ? "neox" : "pairs", same ? "bitwise equal to rope + kv_store" : "DIFFERS from rope + kv_store");
            kcu_free(qa), kcu_free(ka), kcu_free(qb), kcu_free(kb), kcu_free(v_d), kcu_free(pos_d), kcu_free(slot_d);
            kcu_free(kca), kcu_free(vca), kcu_free(kcb), kcu_free(vcb);
            free(q), free(k), free(v), free(ha), free(hb);
        }
    static const size_t sizes[] = {1, 1000, 1000003};
    for (size_t s = 0; s < 3; s++) {
        size_t n = sizes[s];
        float *a = malloc(n * 4), *b = malloc(n * 4), *ref = malloc(n * 4), *got = malloc(n * 4);
        fill(a, n, 6.0f), fill(b, n, 2.0f);
        float *a_d = dev_copy(a, n * 4), *b_d = dev_copy(b, n * 4), *o_d;
        CHECK(kcu_alloc((void **)&o_d, n * 4));
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu", n);
        kern_swiglu(ref, a, b, n);
        CHECK(kcu_swiglu(o_d, a_d, b_d, n, 0));
        to_host(got, o_d, n * 4);
        report("swiglu", shape, got, ref, n, 1e-6);
        memcpy(ref, a, n * 4);
        kern_add(ref, b, n);
        CHECK(kcu_add(a_d, b_d, n, 0));
        to_host(got, a_d, n * 4);
        report("add", shape, got, ref, n, 1e-7);
        /* bias: n = rows * width with width 1000 or 1 */
        size_t width = n >= 1000 ? 1000 : 1, rows = n / width;
        CHECK(kcu_h2d(a_d, a, n * 4, 0));
        memcpy(ref, a, n * 4);
        for (size_t r = 0; r < rows; r++) kern_add(ref + r * width, b, width);
        CHECK(kcu_add_bias(a_d, b_d, (int)rows, (int)width, 0));
        to_host(got, a_d, n * 4);
        report("add_bias", shape, got, ref, n, 1e-7);
        kcu_free(a_d), kcu_free(b_d), kcu_free(o_d);
        free(a), free(b), free(ref), free(got);
    }
}

/* ---- KV store and attention ---- */
typedef struct {
    int n_cached, n_new; /* the step's tokens sit at n_cached .. n_cached+n_new-1 */
} seq_spec;

static void test_attention_case(int n_head, int n_kv, int hd, int bs, const seq_spec *seqs, int n_seqs) {
    int kv_row = n_kv * hd, q_dim = n_head * hd;
    int n_blocks = 0, total_keys = 0, T = 0;
    for (int s = 0; s < n_seqs; s++) {
        n_blocks += (seqs[s].n_cached + seqs[s].n_new + bs - 1) / bs;
        total_keys += seqs[s].n_cached + seqs[s].n_new;
        T += seqs[s].n_new;
    }
    n_blocks += 3; /* unused blocks in the pool */
    size_t n_slots = (size_t)n_blocks * bs;
    /* block tables: a shuffled pool */
    int32_t *perm = malloc((size_t)n_blocks * 4);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)((frand() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    uint16_t *kc = calloc(n_slots * kv_row, 2), *vc = calloc(n_slots * kv_row, 2);
    float *krow = malloc((size_t)total_keys * kv_row * 4), *vrow = malloc((size_t)total_keys * kv_row * 4);
    int32_t *slots = malloc((size_t)total_keys * 4);
    fill(krow, (size_t)total_keys * kv_row, 2.0f), fill(vrow, (size_t)total_keys * kv_row, 1.0f);
    float *q = malloc((size_t)T * q_dim * 4), *ref = calloc((size_t)T * q_dim, 4), *got = malloc((size_t)T * q_dim * 4);
    fill(q, (size_t)T * q_dim, 1.0f);
    kcu_attn_tile *dec = calloc((size_t)T + 1, sizeof(kcu_attn_tile)), *pre = calloc((size_t)T + 1, sizeof(kcu_attn_tile));
    int n_dec = 0, n_pre = 0, max_keys = 1, bt_off = 0, key = 0, t = 0, max_ctx = 0;
    for (int s = 0; s < n_seqs; s++) {
        int len = seqs[s].n_cached + seqs[s].n_new;
        max_ctx = len > max_ctx ? len : max_ctx;
        const int32_t *bt = perm + bt_off;
        for (int p = 0; p < len; p++, key++) {
            slots[key] = bt[p / bs] * bs + p % bs;
            kern_kv_store(kc, vc, KERN_TYPE_F16, (size_t)bs, (size_t)n_kv, (size_t)hd, bt, p, krow + (size_t)key * kv_row,
                          vrow + (size_t)key * kv_row);
        }
        if (seqs[s].n_new == 1) {
            dec[n_dec++] = (kcu_attn_tile){t, 1, seqs[s].n_cached, bt_off};
            max_keys = len > max_keys ? len : max_keys;
        } else {
            for (int i = 0; i < seqs[s].n_new; i += KCU_ATTN_QT) {
                int nq = seqs[s].n_new - i < KCU_ATTN_QT ? seqs[s].n_new - i : KCU_ATTN_QT;
                pre[n_pre++] = (kcu_attn_tile){t + i, nq, seqs[s].n_cached + i, bt_off};
            }
        }
        float *scratch = malloc(kern_attn_scratch_floats((size_t)len, (size_t)hd) * 4);
        kern_kv_view kv = {kc, vc, KERN_TYPE_F16, (size_t)bs, (size_t)n_kv, (size_t)hd, bt};
        for (int i = 0; i < seqs[s].n_new; i++)
            kern_attn_paged(ref + (size_t)(t + i) * q_dim, q + (size_t)(t + i) * q_dim, (size_t)n_head, 0, (size_t)n_head,
                            &kv, (size_t)(seqs[s].n_cached + i + 1), 1.0f / sqrtf((float)hd), scratch);
        free(scratch);
        bt_off += (len + bs - 1) / bs;
        t += seqs[s].n_new;
    }
    /* GPU: KV store, then compare the caches value for value, bit for bit */
    void *kc_d, *vc_d;
    CHECK(kcu_alloc(&kc_d, n_slots * kv_row * 2));
    CHECK(kcu_alloc(&vc_d, n_slots * kv_row * 2));
    float *krow_d = dev_copy(krow, (size_t)total_keys * kv_row * 4), *vrow_d = dev_copy(vrow, (size_t)total_keys * kv_row * 4);
    int32_t *slots_d = dev_copy(slots, (size_t)total_keys * 4), *bt_d = dev_copy(perm, (size_t)n_blocks * 4);
    CHECK(kcu_kv_store(kc_d, vc_d, krow_d, vrow_d, slots_d, total_keys, kv_row, n_slots, 0));
    uint16_t *kg = malloc(n_slots * kv_row * 2), *vg = malloc(n_slots * kv_row * 2);
    to_host(kg, kc_d, n_slots * kv_row * 2);
    to_host(vg, vc_d, n_slots * kv_row * 2);
    char shape[96];
    snprintf(shape, sizeof shape, "H%d/%d hd%d bs%d %d seqs ctx<=%d", n_head, n_kv, hd, bs, n_seqs, max_ctx);
    n_case++;
    /* V: both slot-major rows. K: the device's slot-major, the CPU's dimension-major in its
     * block (kernels/kern.h): value e of slot j of block b at (b * kv_row + e) * bs + j */
    int same = memcmp(vg, vc, n_slots * kv_row * 2) == 0;
    for (size_t sl = 0; sl < n_slots && same; sl++)
        for (int e = 0; e < kv_row && same; e++)
            same = kg[sl * (size_t)kv_row + (size_t)e] == kc[(sl / (size_t)bs * (size_t)kv_row + (size_t)e) * (size_t)bs + sl % (size_t)bs];
    if (!same) n_fail++;
    printf("%-4s %-26s %-34s f16 caches %s\n", same ? "ok" : "FAIL", "kv_store", shape, same ? "identical" : "DIFFER");
    float *q_d = dev_copy(q, (size_t)T * q_dim * 4), *o_d, *scr_d;
    CHECK(kcu_alloc((void **)&o_d, (size_t)T * q_dim * 4));
    size_t scr_n = kcu_attn_decode_scratch_floats(n_dec > 0 ? n_dec : 1, n_head, hd);
    CHECK(kcu_alloc((void **)&scr_d, scr_n * 4));
    kcu_attn_tile *dec_d = dev_copy(dec, sizeof(kcu_attn_tile) * (size_t)(n_dec + 1));
    kcu_attn_tile *pre_d = dev_copy(pre, sizeof(kcu_attn_tile) * (size_t)(n_pre + 1));
    kcu_attn_args a = {kc_d, vc_d, bt_d, n_head, n_kv, hd, bs, 1.0f / sqrtf((float)hd)};
    CHECK(kcu_attn_decode(o_d, q_d, &a, dec_d, n_dec, max_keys, scr_d, scr_n, 0));
    CHECK(kcu_attn_prefill(o_d, q_d, &a, pre_d, n_pre, 0));
    to_host(got, o_d, (size_t)T * q_dim * 4);
    /* the CPU rounds the normalised probabilities to f16 before V; the GPU keeps them f32 */
    report("attention", shape, got, ref, (size_t)T * q_dim, 3e-3);
    if (n_dec) { /* the decode path without splits (no scratch) must agree too */
        CHECK(kcu_attn_decode(o_d, q_d, &a, dec_d, n_dec, max_keys, NULL, 0, 0));
        to_host(got, o_d, (size_t)T * q_dim * 4);
        report("attention decode 1 split", shape, got, ref, (size_t)T * q_dim, 3e-3);
    }
    kcu_free(kc_d), kcu_free(vc_d), kcu_free(krow_d), kcu_free(vrow_d), kcu_free(slots_d), kcu_free(bt_d);
    kcu_free(q_d), kcu_free(o_d), kcu_free(scr_d), kcu_free(dec_d), kcu_free(pre_d);
    free(perm), free(kc), free(vc), free(krow), free(vrow), free(slots), free(q), free(ref), free(got);
    free(dec), free(pre), free(kg), free(vg);
}

static void test_attention(void) {
    /* the decode kernel's paths: 16-byte rows with 8/16/32 lanes per key (idle lanes at hd 80),
     * 4-byte rows when head_dim % 8 != 0 (hd 100, 36), groups cut into chunks of <= 4 heads
     * (16 -> 4 x 4, 7 -> 4 + 3) */
    static const int heads[][3] = {{8, 4, 8},   {9, 3, 64},   {32, 8, 128}, {4, 4, 256},
                                   {6, 2, 96},  {16, 1, 80},  {6, 2, 100},  {14, 2, 36}};
    const seq_spec decode[] = {{0, 1}, {16, 1}, {299, 1}, {2100, 1}};
    const seq_spec prefill[] = {{0, 45}, {37, 45}, {0, 2}, {15, 17}};
    const seq_spec mixed[] = {{5, 1}, {0, 33}, {700, 1}, {20, 3}};
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        test_attention_case(heads[h][0], heads[h][1], heads[h][2], 16, decode, 4);
        test_attention_case(heads[h][0], heads[h][1], heads[h][2], 16, prefill, 4);
        test_attention_case(heads[h][0], heads[h][1], heads[h][2], 7, mixed, 4);
    }
}

int main(void) {
    setenv("TOKD_ISA", "scalar", 1); /* the CPU side is the portable reference */
    kern_init();
    kcu_device_info info;
    CHECK(kcu_init(0, &info));
    printf("device: %s (sm_%d%d, %d SMs, %.0f GB/s peak)\n", info.name, info.cc_major, info.cc_minor, info.sm_count,
           info.hbm_gbs);
    kcu_blas *blas;
    CHECK(kcu_blas_new(&blas, 64, 8192));
    test_weights(blas);
    test_elementwise();
    test_attention();
    kcu_blas_destroy(blas);
    printf("test_cuda_kernels: %d/%d cases within bounds\n", n_case - n_fail, n_case);
    return n_fail ? 1 : 0;
}
