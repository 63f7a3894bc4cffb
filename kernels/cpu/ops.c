/* CPU ops on f32 activations: matmul over quantised weights (parallel on the pool), RMSNorm,
 * RoPE, SwiGLU, residual add, softmax, and attention over the paged KV cache.
 * The portable versions live here and form kern__ops_scalar; kern_init switches kern__cur to
 * the AVX2 or AVX-512 table (dispatch.c, simd_avx2.c, simd_avx512.c) and the public entry
 * points below call through it. */
#include "kernels/kern.h"
#include "kernels/cpu/cpu_internal.h"

#include "common/tk_mem.h"
#include "common/tk_time.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;

static void init_tables(void) {
    for (uint32_t i = 0; i < 65536; i++) f16_table[i] = kern_f16_to_f32((uint16_t)i);
    kern__dispatch_init();
}

void kern_init(void) { pthread_once(&f16_once, init_tables); }

/* ---- matmul ---- */

static float dot_f32(const float *a, const float *b, size_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
        s4 += a[i + 4] * b[i + 4];
        s5 += a[i + 5] * b[i + 5];
        s6 += a[i + 6] * b[i + 6];
        s7 += a[i + 7] * b[i + 7];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

/* Split [0, n) into nth nearly equal ranges, aligned to `align` where possible. */
static void split_range(size_t n, int ith, int nth, size_t align, size_t *lo, size_t *hi) {
    size_t chunks = (n + align - 1) / align;
    size_t a = chunks * (size_t)ith / (size_t)nth, b = chunks * (size_t)(ith + 1) / (size_t)nth;
    *lo = a * align < n ? a * align : n;
    *hi = b * align < n ? b * align : n;
}

/* Scalar rows [lo, hi): one arithmetic path for every batch size, so a sequence's logits do
 * not depend on what else is in the step: either integer block dots against quantised X, or
 * the row dequantised once and f32 dots with every token. */
static void mm_act_scalar(const kern__mm *j, size_t lo, size_t hi) {
    for (size_t o = lo; o < hi; o++)
        for (size_t t = 0; t < j->n_tok; t++)
            j->Y[t * j->n_out + o] = kern_vec_dot_act(j->wtype, j->W + o * j->row_bytes, j->Xq + t * j->act_bytes, j->n_in);
}

static void mm_f32_scalar(const kern__mm *j, size_t lo, size_t hi) {
    float row[KERN_MATMUL_MAX_IN];
    for (size_t o = lo; o < hi; o++) {
        kern_dequant_row(j->wtype, j->W + o * j->row_bytes, row, j->n_in);
        for (size_t t = 0; t < j->n_tok; t++)
            j->Y[t * j->n_out + o] = dot_f32(row, j->X + t * j->n_in, j->n_in);
    }
}

/* Several matmuls over one X in one pool job: their output rows form one range that is split
 * across the threads (each thread a contiguous slice, in multiples of 16, the largest SIMD row
 * tile, so tiles stay whole), and each slice runs op by op. A row's result never depends on the
 * split (kern__mm's invariant), so neither does anything here. */
#define MM_MAX_OPS 4
typedef struct {
    kern__mm mm[MM_MAX_OPS];
    _Atomic size_t next[MM_MAX_OPS]; /* dynamic row chunks of a packed one-token job (see kern__mm.next) */
    bool dyn;
    int n;
    size_t rows;          /* sum of the n_out */
    kern_pool *pool;      /* owner of the per-thread scratch; NULL: a single-thread call */
    size_t scratch_bytes; /* per thread, kern__act_scratch_bytes; 0 when no kernel needs one */
    void *scratch;        /* for a NULL pool: the call's own scratch (or NULL) */
} mm_job;

static void matmul_worker(void *ctx, int ith, int nth) {
    mm_job *j = ctx;
    if (j->dyn) { /* op by op, every thread taking chunks until the op's rows run out */
        for (int i = 0; i < j->n; i++) {
            kern__mm m = j->mm[i];
            m.next = &j->next[i];
            kern__cur->mm_packed(&m, 0, m.n_out);
        }
        return;
    }
    size_t lo, hi, base = 0;
    split_range(j->rows, ith, nth, 16, &lo, &hi);
    void *scratch = NULL;
    if (j->scratch_bytes && lo < hi) scratch = j->pool ? kern__pool_scratch(j->pool, ith, j->scratch_bytes) : j->scratch;
    for (int i = 0; i < j->n && lo < hi; base += j->mm[i].n_out, i++) {
        kern__mm m = j->mm[i];
        m.scratch = scratch;
        size_t a = lo > base ? lo - base : 0, b = hi - base < m.n_out ? hi - base : m.n_out;
        if (!(hi > base && a < b)) continue;
        if (m.wtype & KERN_PACKED) (m.Xq && kern__cur->mm_packed ? kern__cur->mm_packed : kern__mm_packed_rows)(&m, a, b);
        else (m.Xq ? kern__cur->mm_act : kern__cur->mm_f32)(&m, a, b);
    }
}

/* Quantises tokens [lo, hi) of X into the scratch (j->Xq) */
static void quant_act_worker(void *ctx, int ith, int nth) {
    const kern__mm *j = ctx;
    size_t lo, hi;
    split_range(j->n_tok, ith, nth, 1, &lo, &hi);
    for (size_t t = lo; t < hi; t++)
        kern__cur->quant_act(j->act, j->X + t * j->n_in, (uint8_t *)j->Xq + t * j->act_bytes, j->n_in);
}

size_t kern_matmul_scratch_bytes(size_t n_in, size_t n_tok) {
    /* the largest activation row: Q8_1 (36 bytes per 32) or Q8_K (292 per 256) */
    const size_t q81 = kern_act_row_bytes(KERN_ACT_Q8_1, (n_in + KERN_QK - 1) / KERN_QK * KERN_QK),
                 q8k = kern_act_row_bytes(KERN_ACT_Q8_K, (n_in + KERN_QK_K - 1) / KERN_QK_K * KERN_QK_K);
    return n_tok * (q81 > q8k ? q81 : q8k);
}

void kern_matmul_multi(kern_pool *p, const kern_matmul_out *outs, int n, const float *X, size_t n_in, size_t n_tok,
                       void *scratch) {
    uint32_t act = scratch && n > 0 ? kern_act_type(outs[0].wtype & ~KERN_PACKED) : KERN_TYPE_F32;
    bool same = n <= MM_MAX_OPS;
    for (int i = 1; i < n; i++) same = same && (scratch ? kern_act_type(outs[i].wtype & ~KERN_PACKED) : KERN_TYPE_F32) == act;
    if (!same) { /* activations of two formats (or too many ops): one job each */
        for (int i = 0; i < n; i++)
            kern_matmul(p, outs[i].wtype, outs[i].W, X, outs[i].Y, n_in, outs[i].n_out, n_tok, scratch);
        return;
    }
    mm_job j = {.n = n, .pool = p};
    for (int i = 0; i < n; i++) {
        j.mm[i] = (kern__mm){outs[i].wtype, act, outs[i].W, kern_row_bytes(outs[i].wtype & ~KERN_PACKED, n_in), kern_act_row_bytes(act, n_in),
                             X, NULL, outs[i].Y, n_in, outs[i].n_out, n_tok, NULL, NULL, 0};
        j.rows += outs[i].n_out;
    }
    void *raw = NULL;
    if (act != KERN_TYPE_F32) { /* X quantised once, for every op */
        for (int i = 0; i < n; i++) j.mm[i].Xq = scratch;
        if (n_tok >= 4) kern_pool_run(p, quant_act_worker, &j.mm[0]); /* a job of its own: the pool has no barrier */
        else quant_act_worker(&j.mm[0], 0, 1);
        if (n_tok > 1) j.scratch_bytes = kern__act_scratch_bytes(n_in, n_tok);
        /* Without a pool (tests, tools; not the forward pass) the GEMM's scratch is this call's */
        if (j.scratch_bytes && !p && (raw = tk_malloc(j.scratch_bytes + 63)))
            j.scratch = (void *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    }
    /* one token, packed, several threads: rows in chunks taken as threads come free, so a
     * thread slowed down (a busy host, a late wake-up) does not hold the step */
    j.dyn = n_tok == 1 && act != KERN_TYPE_F32 && kern__cur->mm_packed && kern_pool_size(p) > 1;
    for (int i = 0; i < n && j.dyn; i++) {
        j.dyn = (outs[i].wtype & KERN_PACKED) != 0;
        j.mm[i].chunk = 32; /* the smallest chunk: pk_gemv takes a quarter of the rows left */
        atomic_init(&j.next[i], 0);
    }
    kern_pool_run(p, matmul_worker, &j);
    tk_free(raw);
}

void kern_matmul(kern_pool *p, uint32_t wtype, const void *W, const float *X, float *Y,
                 size_t n_in, size_t n_out, size_t n_tok, void *scratch) {
    const kern_matmul_out o = {wtype, W, Y, n_out};
    kern_matmul_multi(p, &o, 1, X, n_in, n_tok, scratch);
}

void kern_matmul_ref(uint32_t wtype, const void *W, const float *X, float *Y, size_t n_in,
                     size_t n_out, size_t n_tok, bool quant_act) {
    size_t rb = kern_row_bytes(wtype, n_in);
    uint32_t act = quant_act ? kern_act_type(wtype) : KERN_TYPE_F32;
    size_t ab = kern_act_row_bytes(act, n_in);
    uint8_t *xq = act != KERN_TYPE_F32 ? malloc(ab) : NULL;
    for (size_t t = 0; t < n_tok; t++) {
        if (xq) kern_quantize_act_row(act, X + t * n_in, xq, n_in);
        for (size_t o = 0; o < n_out; o++) {
            const uint8_t *w = (const uint8_t *)W + o * rb;
            Y[t * n_out + o] = xq ? kern_vec_dot_act(wtype, w, xq, n_in) : kern_dot_ref(wtype, w, X + t * n_in, n_in);
        }
    }
    free(xq);
}

/* ---- elementwise ---- */

static void rmsnorm_scalar(float *out, const float *x, const float *w, size_t n, float eps) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void kern_rope_table(float *cs, size_t n_rot, int32_t pos, float freq_base) {
    for (size_t i = 0; i < n_rot / 2; i++) {
        float theta = (float)pos * powf(freq_base, -2.0f * (float)i / (float)n_rot);
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

void kern_rope_apply(float *x, const float *cs, size_t n_rot, bool neox) {
    size_t half = n_rot / 2;
    for (size_t i = 0; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        size_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

void kern_rope(float *x, size_t head_dim, size_t n_rot, int32_t pos, float freq_base, bool neox) {
    (void)head_dim;
    float cs[1024]; /* n_rot <= head_dim <= 1024 (checked at model load) */
    kern_rope_table(cs, n_rot, pos, freq_base);
    kern_rope_apply(x, cs, n_rot, neox);
}

static void swiglu_scalar(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void f32_to_f16_scalar(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = kern_f32_to_f16(src[i]);
}

static void add_scalar(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

void kern_softmax(float *x, size_t n) {
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

/* ---- paged KV ---- */

/* Byte offset of position pos's slot in a layer's cache whose slot rows are row_bytes long. */
static size_t slot_offset(const int32_t *table, size_t block_size, size_t row_bytes, int32_t pos) {
    size_t b = (size_t)table[(size_t)pos / block_size];
    return (b * block_size + (size_t)pos % block_size) * row_bytes;
}

/* Offset in halves of value 0 of position pos (kv head 0) in a layer's dimension-major F16 K
 * cache: value e = h * head_dim + d of the slot row lies e * block_size halves further. */
static size_t kv_kt_offset(const int32_t *table, size_t block_size, size_t n_kv_head, size_t head_dim, int32_t pos) {
    size_t b = (size_t)table[(size_t)pos / block_size];
    return b * block_size * n_kv_head * head_dim + (size_t)pos % block_size;
}

void kern_kv_store(void *k_layer, void *v_layer, uint32_t kv_type, size_t block_size,
                   size_t n_kv_head, size_t head_dim, const int32_t *block_table, int32_t pos,
                   const float *k_row, const float *v_row) {
    size_t row = n_kv_head * head_dim, rb = kern_row_bytes(kv_type, row);
    if (rb == 0 || (kv_type == KERN_TYPE_Q8_0 && head_dim % KERN_QK)) abort(); /* eng_ctx_new checks both */
    uint8_t *k = (uint8_t *)k_layer + slot_offset(block_table, block_size, rb, pos);
    uint8_t *v = (uint8_t *)v_layer + slot_offset(block_table, block_size, rb, pos);
    switch (kv_type) {
    case KERN_TYPE_F16: { /* K dimension-major in its block (kern.h), V as a slot row */
        uint16_t h[1024];
        uint16_t *kt = (uint16_t *)k_layer + kv_kt_offset(block_table, block_size, n_kv_head, head_dim, pos);
        for (size_t e = 0; e < row; e += 1024) {
            const size_t n = row - e < 1024 ? row - e : 1024;
            kern__cur->f32_to_f16(h, k_row + e, n);
            for (size_t i = 0; i < n; i++) kt[(e + i) * block_size] = h[i]; /* value e+i of the slot */
        }
        kern__cur->f32_to_f16((uint16_t *)v, v_row, row);
        break;
    }
    case KERN_TYPE_Q8_0: /* the heads' blocks line up with the slot row's (head_dim % 32 == 0) */
        kern__cur->quant_act(KERN_TYPE_Q8_0, k_row, k, row);
        kern__cur->quant_act(KERN_TYPE_Q8_0, v_row, v, row);
        break;
    default:
        memcpy(k, k_row, row * 4);
        memcpy(v, v_row, row * 4);
    }
}

/* Position pos's slot row (all kv heads) of a layer's K or V cache. */
static const uint8_t *kv_row(const kern_kv_view *kv, const void *base, size_t pos) {
    size_t rb = kern_row_bytes(kv->kv_type, kv->n_kv_head * kv->head_dim);
    return (const uint8_t *)base + slot_offset(kv->block_table, kv->block_size, rb, (int32_t)pos);
}

static float q8_scale(const uint8_t *blk) {
    uint16_t h;
    memcpy(&h, blk, 2);
    return f16_table[h];
}

/* The reference kernels (kern__ops_scalar.attn_f16 / attn_q8), one query at a time.
 * f16 cache: q (already rounded to f16) meets K in f32, four fused chains per score,
 *   s[p] = scale * ((c_0 + c_1) + (c_2 + c_3)),  c_u = fma(K[p][d], q[d], c_u) over d = u mod 4
 * in order from zero (bitwise the SIMD tiles' scores, whose lanes are positions); the softmax
 * weights are rounded to f16 (as llama.cpp's CPU path does) before meeting V; the sums stay f32.
 * Q8_0 cache: K and V rows are head_dim/32 blocks b of (f16 d_b, int8 k_b[32]); qq is the query
 * quantised to Q8_0 blocks (f16 e_b, int8 x_b[32]) by kern_quantize_act_row, as llama.cpp
 * quantises q for a Q8_0 K. In f32 arithmetic:
 *   s[p]   = scale * kern_vec_dot_act(Q8_0, K row, qq): per block the exact integer
 *            sum_j k_b[j] * x_b[j], then sum = fma((float)isum, d_b * e_b, sum) in block order
 *   out[i] = sum_p (w[p] * d_b) * (float)v_b[j],  i = 32b + j          (p in order, from zero)
 *   The scores are bitwise those of the SIMD tiles (lane by lane the same chain); the outputs
 *   differ from theirs only in the order of f32 sums.
 * Weights: up to KERN__ATTN_SEG positions, w = softmax(s) (kern_softmax: f32 exponentials,
 * double sum). Longer contexts go in segments of KERN__ATTN_SEG positions: per segment its max m,
 * w[p] = exp(s[p] - m) unnormalised, l = their f32 sum, and o = sum_p w[p] V[p]; the segments are
 * folded in order by kern__attn_fold and the result divided by the total (kern__attn_fold_end). */
static float score_scalar(const kern__attn_tile *t, size_t i, size_t p) {
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim;
    if (kv->kv_type == KERN_TYPE_Q8_0)
        return kern_vec_dot_act(KERN_TYPE_Q8_0, kv_row(kv, kv->k, p) + t->kvh[i] * (hd / KERN_QK * 34), t->qq[i], hd) *
               t->scale;
    const size_t bs = kv->block_size;
    const uint16_t *k = (const uint16_t *)kv->k + kv_kt_offset(kv->block_table, bs, kv->n_kv_head, hd, (int32_t)p) +
                        t->kvh[i] * hd * bs; /* value d at k[d * bs] */
    float c[4] = {0, 0, 0, 0};
    for (size_t d = 0; d < hd; d++) c[d % 4] = fmaf(f16_table[k[d * bs]], t->q[i][d], c[d % 4]);
    return ((c[0] + c[1]) + (c[2] + c[3])) * t->scale;
}

/* o = sum over p in [p0, p1) of weight w[p] times V[p] (o zeroed first) */
static void pv_scalar(const kern__attn_tile *t, size_t i, const float *w, size_t p0, size_t p1, float *o) {
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim, nb = hd / KERN_QK;
    memset(o, 0, hd * sizeof(float));
    for (size_t p = p0; p < p1; p++) {
        if (kv->kv_type == KERN_TYPE_Q8_0) {
            const uint8_t *v = kv_row(kv, kv->v, p) + t->kvh[i] * nb * 34;
            for (size_t b = 0; b < nb; b++) {
                const float a = w[p] * q8_scale(v + b * 34);
                const int8_t *vq = (const int8_t *)(v + b * 34 + 2);
                for (size_t j = 0; j < KERN_QK; j++) o[b * KERN_QK + j] += a * (float)vq[j];
            }
        } else {
            const uint16_t *v = (const uint16_t *)kv_row(kv, kv->v, p) + t->kvh[i] * hd;
            const float a = f16_table[kern_f32_to_f16(w[p])];
            for (size_t d = 0; d < hd; d++) o[d] += a * f16_table[v[d]];
        }
    }
}

static void attn_tile_scalar(const kern__attn_tile *t) {
    const size_t hd = t->kv->head_dim;
    for (size_t i = 0; i < t->n; i++) {
        const size_t n = t->n_ctx[i];
        float *w = t->sc[i];
        if (n <= KERN__ATTN_SEG) {
            for (size_t p = 0; p < n; p++) w[p] = score_scalar(t, i, p);
            kern_softmax(w, n);
            pv_scalar(t, i, w, 0, n, t->out[i]);
            continue;
        }
        float M = -INFINITY, L = 0;
        for (size_t sg = t->s_lo; sg < t->s_hi && sg * KERN__ATTN_SEG < n; sg++) {
            const size_t s0 = sg * KERN__ATTN_SEG, s1 = s0 + KERN__ATTN_SEG < n ? s0 + KERN__ATTN_SEG : n;
            float m = -INFINITY, l = 0;
            for (size_t p = s0; p < s1; p++) w[p] = score_scalar(t, i, p), m = w[p] > m ? w[p] : m;
            for (size_t p = s0; p < s1; p++) l += w[p] = expf(w[p] - m);
            pv_scalar(t, i, w, s0, s1, t->ot[i]);
            if (t->pt[i]) {
                float *pp = t->pt[i] + sg * (hd + 2);
                memcpy(pp, t->ot[i], hd * sizeof(float));
                pp[hd] = m, pp[hd + 1] = l;
            } else {
                kern__attn_fold(t->out[i], &M, &L, t->ot[i], m, l, hd);
            }
        }
        if (!t->pt[i]) kern__attn_fold_end(t->out[i], L, hd);
    }
}

/* Called, never inlined, by every level and by kern_attn_fold: one machine code, one rounding */
void kern__attn_fold(float *out, float *M, float *L, const float *o, float m, float l, size_t hd) {
    if (*M == -INFINITY) { /* the first segment */
        memcpy(out, o, hd * sizeof(float));
        *M = m, *L = l;
        return;
    }
    const float mx = m > *M ? m : *M, a = expf(*M - mx), b = expf(m - mx);
    for (size_t d = 0; d < hd; d++) out[d] = out[d] * a + o[d] * b;
    *L = *L * a + l * b, *M = mx;
}

void kern__attn_fold_end(float *out, float L, size_t hd) {
    const float inv = 1.0f / L;
    for (size_t d = 0; d < hd; d++) out[d] *= inv;
}

static void attn_f32(float *oh, const float *q, const kern_kv_view *kv, size_t kvh, size_t n_ctx, float scale,
                     float *scratch) {
    size_t hd = kv->head_dim;
    for (size_t p = 0; p < n_ctx; p++) scratch[p] = dot_f32((const float *)kv_row(kv, kv->k, p) + kvh * hd, q, hd) * scale;
    kern_softmax(scratch, n_ctx);
    memset(oh, 0, hd * sizeof(float));
    for (size_t p = 0; p < n_ctx; p++) {
        const float *v = (const float *)kv_row(kv, kv->v, p) + kvh * hd;
        for (size_t i = 0; i < hd; i++) oh[i] += scratch[p] * v[i];
    }
}

static size_t attn_stride(size_t n_ctx) { return (n_ctx + 15) / 16 * 16; }

size_t kern_attn_scratch_floats(size_t max_ctx, size_t head_dim) {
    return KERN__ATTN_QT * (2 * head_dim + attn_stride(max_ctx));
}

size_t kern_attn_n_seg(size_t n_ctx) { return n_ctx <= KERN__ATTN_SEG ? 0 : (n_ctx + KERN__ATTN_SEG - 1) / KERN__ATTN_SEG; }

/* Scratch: KERN__ATTN_QT q rows (head_dim floats each: the f16-rounded q of an f16 cache, or
 * the Q8_0 blocks of q for a Q8_0 cache, 34/32 bytes a value), KERN__ATTN_QT segment sums rows
 * (head_dim each), then KERN__ATTN_QT score rows (stride each). */
typedef struct {
    kern__attn_tile t;
    void (*tile)(const kern__attn_tile *);
    float *qr, *ot, *sc;
    size_t stride;
    bool q8, seg; /* the tile's cache type; its queries are at contexts over KERN__ATTN_SEG */
} attn_batch;

static void attn_batch_init(attn_batch *ab, const kern_kv_view *kv, size_t max_ctx, float scale, float *scratch) {
    const size_t hd = kv->head_dim;
    ab->q8 = kv->kv_type == KERN_TYPE_Q8_0;
    if ((!ab->q8 && kv->kv_type != KERN_TYPE_F16) || (ab->q8 && hd % KERN_QK)) abort(); /* eng_ctx_new checks both */
    ab->tile = ab->q8 ? kern__cur->attn_q8 : kern__cur->attn_f16;
    ab->t = (kern__attn_tile){.kv = kv, .scale = scale, .s_hi = SIZE_MAX};
    ab->stride = attn_stride(max_ctx);
    ab->qr = scratch, ab->ot = scratch + KERN__ATTN_QT * hd, ab->sc = scratch + 2 * KERN__ATTN_QT * hd;
    ab->seg = false;
}

static void attn_batch_flush(attn_batch *ab) {
    if (ab->t.n) ab->tile(&ab->t);
    ab->t.n = 0;
}

/* Adds query row q (kv head kvh, context n_ctx) to the tile: its result goes to out, or its
 * partials to pt (segmented queries, kern_attn_part). A tile holds queries of one kind. */
static void attn_batch_add(attn_batch *ab, const float *q, size_t kvh, size_t n_ctx, float *out, float *pt) {
    const size_t hd = ab->t.kv->head_dim;
    const bool seg = n_ctx > KERN__ATTN_SEG;
    if (ab->t.n && seg != ab->seg) attn_batch_flush(ab);
    ab->seg = seg;
    const size_t j = ab->t.n++;
    if (ab->q8) { /* q quantised to Q8_0 blocks meets the Q8_0 K in integers */
        kern__cur->quant_act(KERN_TYPE_Q8_0, q, (uint8_t *)(ab->qr + j * hd), hd);
        ab->t.qq[j] = (const uint8_t *)(ab->qr + j * hd);
    } else { /* q rounded to f16 before meeting K, as llama.cpp's CPU path does */
        uint16_t qh[1024]; /* head_dim <= 1024 (checked at model load) */
        kern__cur->f32_to_f16(qh, q, hd);
        for (size_t d = 0; d < hd; d++) ab->qr[j * hd + d] = f16_table[qh[d]];
        ab->t.q[j] = ab->qr + j * hd;
    }
    ab->t.kvh[j] = kvh;
    ab->t.out[j] = out;
    ab->t.pt[j] = pt;
    ab->t.ot[j] = ab->ot + j * hd;
    ab->t.n_ctx[j] = n_ctx;
    ab->t.sc[j] = ab->sc + j * ab->stride;
    if (ab->t.n == KERN__ATTN_QT) attn_batch_flush(ab);
}

void kern_attn_paged_run(float *out, const float *q, size_t n_head, size_t lo, size_t hi,
                         const kern_kv_view *kv, size_t n_ctx0, float scale, float *scratch) {
    kern_init();
    if (lo >= hi) return;
    const size_t hd = kv->head_dim, group = n_head / kv->n_kv_head, last = (hi - 1) / n_head;
    if (kv->kv_type == KERN_TYPE_F32) {
        for (size_t k = lo; k < hi; k++)
            attn_f32(out + k * hd, q + k * hd, kv, k % n_head / group, n_ctx0 + k / n_head, scale, scratch);
        return;
    }
    attn_batch ab;
    attn_batch_init(&ab, kv, n_ctx0 + last, scale, scratch);
    /* one kv head at a time: its heads of every token of the range in token order; a tile may
     * hold several kv heads (a decode step's heads walk the cache together) */
    for (size_t g = 0; g < kv->n_kv_head; g++) {
        for (size_t i = lo / n_head; i <= last; i++) {
            size_t ha = g * group, hb = ha + group;
            if (i * n_head + ha < lo) ha = lo - i * n_head;
            if (i * n_head + hb > hi) hb = hi - i * n_head;
            for (size_t h = ha; h < hb; h++) {
                const size_t k = i * n_head + h;
                attn_batch_add(&ab, q + k * hd, g, n_ctx0 + i, out + k * hd, NULL);
            }
        }
    }
    attn_batch_flush(&ab);
}

void kern_attn_part(float *part, const float *q, size_t n_head, size_t h0, size_t h1, const kern_kv_view *kv,
                    size_t n_ctx, size_t s_lo, size_t s_hi, float scale, float *scratch) {
    kern_init();
    const size_t hd = kv->head_dim, group = n_head / kv->n_kv_head, n_seg = kern_attn_n_seg(n_ctx);
    if (h0 >= h1 || s_lo >= s_hi || !n_seg) return;
    attn_batch ab;
    attn_batch_init(&ab, kv, n_ctx, scale, scratch);
    ab.t.s_lo = s_lo, ab.t.s_hi = s_hi;
    for (size_t h = h0; h < h1; h++) attn_batch_add(&ab, q + h * hd, h / group, n_ctx, NULL, part + h * n_seg * (hd + 2));
    attn_batch_flush(&ab);
}

void kern_attn_fold(float *out, const float *part, size_t h0, size_t h1, size_t head_dim, size_t n_ctx) {
    const size_t n_seg = kern_attn_n_seg(n_ctx), hd = head_dim;
    for (size_t h = h0; h < h1; h++) {
        float M = -INFINITY, L = 0;
        for (size_t s = 0; s < n_seg; s++) {
            const float *pp = part + (h * n_seg + s) * (hd + 2);
            kern__attn_fold(out + h * hd, &M, &L, pp, pp[hd], pp[hd + 1], hd);
        }
        kern__attn_fold_end(out + h * hd, L, hd);
    }
}

void kern_attn_paged(float *out, const float *q, size_t n_head, size_t h0, size_t h1,
                     const kern_kv_view *kv, size_t n_ctx, float scale, float *scratch) {
    kern_attn_paged_run(out, q, n_head, h0, h1, kv, n_ctx, scale, scratch);
}

/* ---- dispatch ---- */

/* kern__ops.fma_loop, one lane: a multiply and an add (as the scalar kernels compute; fmaf is a
 * library call where the target has no FMA) */
static float fma_loop_scalar(size_t n) {
    float a[12];
    for (int j = 0; j < 12; j++) a[j] = 1.0f + (float)j * 1e-7f;
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < 12; j++) a[j] = a[j] * 0.99999994f + 1e-8f;
    float s = 0;
    for (int j = 0; j < 12; j++) s += a[j];
    return s;
}

const kern__ops kern__ops_scalar = {"scalar", mm_f32_scalar, mm_act_scalar, NULL, kern_quantize_act_row, attn_tile_scalar,
                                    attn_tile_scalar, rmsnorm_scalar, f32_to_f16_scalar, swiglu_scalar, add_scalar, fma_loop_scalar, 1};

void kern_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) { kern__cur->rmsnorm(out, x, w, n, eps); }
void kern_swiglu(float *out, const float *gate, const float *up, size_t n) { kern__cur->swiglu(out, gate, up, n); }
void kern_add(float *x, const float *y, size_t n) { kern__cur->add(x, y, n); }

/* ---- f32 FMA throughput (tokd bench's hardware compute ceiling) ---- */

typedef struct {
    size_t n;
    _Atomic int sink; /* keeps the loops' results alive */
} fma_job;

static void fma_worker(void *ctx, int ith, int nth) {
    (void)ith, (void)nth;
    fma_job *j = ctx;
    if (kern__cur->fma_loop(j->n) == 12345.0f) j->sink++;
}

double kern_fma_peak(kern_pool *p, double min_s) {
    kern_init();
    const int nth = kern_pool_size(p);
    fma_job j = {1 << 16, 0};
    double best = 0, t_all = 0;
    for (int run = 0; run < 100 && (run < 3 || t_all < min_s); run++) {
        const double t0 = tk_now_s();
        kern_pool_run(p, fma_worker, &j);
        const double t = tk_now_s() - t0;
        t_all += t;
        if (t < 1e-4) j.n *= 4; /* too short to time: a longer loop */
        else best = fmax(best, 2.0 * 12 * (double)kern__cur->fma_lanes * (double)j.n * nth / t * 1e-9);
    }
    return best;
}
