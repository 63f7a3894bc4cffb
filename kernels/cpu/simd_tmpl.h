/* simd_tmpl.h: the SIMD kernels, written once and compiled twice: by simd_avx2.c with 8-lane
 * vectors (VL 8, __m256, TMAX 3) and by simd_avx512.c with 16-lane vectors (VL 16, __m512,
 * TMAX 6). The includer defines VF, VL, TMAX, MK_CASES, the vector ops (vzero, vload, vstore,
 * vset1, vfma, vfms, vadd, vsub, vmul, vdiv, vmin, vmax, vand, vround, vpow2i), the fixed
 * reduction trees vhsum / vhmax (and vhsum_lanes: VL vhsums at once), converters (vcvt_u8,
 * vcvt_i8, vload_h, vstore_h, vload_bf16, vround_h) and IDOT32 (u8 x s8 dot of 32 bytes into 8 int32 lanes: maddubs+madd on AVX2, vpdpbusd on
 * VNNI). Everything here is static; the includer exports one kern__ops table (at the end).
 *
 * f32-activation matmul. Per output (row o, token t) the arithmetic is always:
 *   acc = 0; for each VL-wide step k of the row: acc = fma(w[k], x[k], acc); y = vhsum(acc)
 * where w is the row decoded by dec_chunk (32 weights at a time, the same floats every time).
 * The decode path (1 token) fuses decoding and FMAs for 4 rows at once and prefetches the
 * next tile (decode is a DRAM stream); the prefill path decodes a tile of 4 rows into a stack
 * buffer (L1-sized for these models) once and runs an R x T register micro-kernel over all
 * tokens. Both follow the per-output sequence above, so results are bitwise independent of
 * n_tok and of the thread split (a thread's rows may end in a partial tile: rows are
 * independent). Rows whose length is not a multiple of 32 (plain types only)
 * end with one zero-padded chunk, padded the same way on both paths. The sequence differs
 * between ISA levels (lane count), which is fine: the level is fixed for a process. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#define CH 32          /* weights per decoded chunk */
#define NV (CH / VL)   /* vectors per chunk */
#define MAX_PAD 65536  /* the prefill tile buffer: 4 rows of up to 16384 or 1 row of 65536 */

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 32 bytes (a: elements 0..15, b: 16..31) as NV vectors of floats, unsigned or signed. */
static inline __attribute__((always_inline)) void cvt32(__m128i a, __m128i b, int sgn, VF f[NV]) {
#if VL == 8
    __m128i a8 = _mm_srli_si128(a, 8), b8 = _mm_srli_si128(b, 8);
    f[0] = sgn ? vcvt_i8(a) : vcvt_u8(a);
    f[1] = sgn ? vcvt_i8(a8) : vcvt_u8(a8);
    f[2] = sgn ? vcvt_i8(b) : vcvt_u8(b);
    f[3] = sgn ? vcvt_i8(b8) : vcvt_u8(b8);
#else
    f[0] = sgn ? vcvt_i8(a) : vcvt_u8(a);
    f[1] = sgn ? vcvt_i8(b) : vcvt_u8(b);
#endif
}

static inline __m128i ld128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (ggml get_scale_min_k4). */
static inline void k4_scale_min(int j, const uint8_t *s, float *sc, float *m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63), *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Weights 32c..32c+31 of a row of `type` as NV vectors (only whole chunks; see dec_tail).
 * Always inlined with a constant type, so each caller gets one straight-line decoder. */
static inline __attribute__((always_inline)) void dec_chunk(uint32_t type, const uint8_t *row, size_t c, VF w[NV],
                                                            const float *ks) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    switch (type) {
    case KERN_TYPE_F32:
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vload((const float *)row + CH * c + VL * k);
        break;
    case KERN_TYPE_F16:
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vload_h((const uint16_t *)row + CH * c + VL * k);
        break;
    case KERN_TYPE_BF16:
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vload_bf16((const uint16_t *)row + CH * c + VL * k);
        break;
    case KERN_TYPE_Q8_0: { /* d * q */
        const uint8_t *b = row + 34 * c;
        const VF d = vset1(h2f(b));
        cvt32(ld128(b + 2), ld128(b + 18), 1, w);
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vmul(w[k], d);
        break;
    }
    case KERN_TYPE_Q4_0: { /* d * (q - 8); low nibbles are elements 0..15 */
        const uint8_t *b = row + 18 * c;
        const VF d = vset1(h2f(b));
#if VL == 16 /* the 16 values (k - 8) * d in a table, looked up by nibble (vpermps reads 4 index bits) */
        const __m512 lut = vmul(_mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7), d);
        const __m128i q16 = ld128(b + 2);
        w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(q16), lut);
        w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(q16, 4)), lut);
        break;
#endif
        __m128i q = ld128(b + 2), e = _mm_set1_epi8(8);
        cvt32(_mm_sub_epi8(_mm_and_si128(q, m4), e), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e), 1, w);
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vmul(w[k], d);
        break;
    }
    case KERN_TYPE_Q4_1: { /* fma(q, d, m) */
        const uint8_t *b = row + 20 * c;
        const VF d = vset1(h2f(b)), m = vset1(h2f(b + 2));
        __m128i q = ld128(b + 4);
        cvt32(_mm_and_si128(q, m4), _mm_and_si128(_mm_srli_epi16(q, 4), m4), 0, w);
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vfma(w[k], d, m);
        break;
    }
    case KERN_TYPE_Q4_K:
    case KERN_TYPE_Q5_K: { /* sub-block j: q*(d*sc) - dmin*m, fused; q = nibble (+16 from qh bit j) */
        const int five = type == KERN_TYPE_Q5_K, j = (int)(c % 8);
        const uint8_t *b = row + (five ? 176 : 144) * (c / 8), *qh = b + 16, *qs = qh + (five ? 32 : 0);
        float sc, mn;
        k4_scale_min(j, b + 4, &sc, &mn);
        __m128i a = ld128(qs + 32 * (j / 2)), bb = ld128(qs + 32 * (j / 2) + 16);
        __m128i sh = _mm_cvtsi32_si128((j & 1) * 4);
        a = _mm_and_si128(_mm_srl_epi16(a, sh), m4), bb = _mm_and_si128(_mm_srl_epi16(bb, sh), m4);
        if (five) {
            const __m128i bit = _mm_set1_epi8((char)(1u << j)), v16 = _mm_set1_epi8(16);
            a = _mm_or_si128(a, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(ld128(qh), bit), bit), v16));
            bb = _mm_or_si128(bb, _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(ld128(qh + 16), bit), bit), v16));
        }
        cvt32(a, bb, 0, w);
        const VF d1 = vset1(h2f(b) * sc), m1 = vset1(h2f(b + 2) * mn);
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) w[k] = vfms(w[k], d1, m1);
        break;
    }
    case KERN_TYPE_Q6_K: { /* elements 128h+32k+l: (ql nibble | 2 qh bits << 4) - 32, scale per 16 */
        const uint8_t *b = row + 210 * (c / 8);
        const int h = (int)(c % 8) / 4, k = (int)(c % 8) % 4;
        const int8_t *scl = (const int8_t *)(b + 192);
        const uint8_t *ql = b + 64 * h + 32 * (k & 1), *qh = b + 128 + 32 * h;
        __m128i nsh = _mm_cvtsi32_si128(k >= 2 ? 4 : 0), hsh = _mm_cvtsi32_si128(2 * k);
        const __m128i m3 = _mm_set1_epi8(3), e = _mm_set1_epi8(32);
        __m128i a = _mm_or_si128(_mm_and_si128(_mm_srl_epi16(ld128(ql), nsh), m4),
                                 _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(ld128(qh), hsh), m3), 4));
        __m128i bb = _mm_or_si128(_mm_and_si128(_mm_srl_epi16(ld128(ql + 16), nsh), m4),
                                  _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(ld128(qh + 16), hsh), m3), 4));
        cvt32(_mm_sub_epi8(a, e), _mm_sub_epi8(bb, e), 1, w);
        const float d = ks ? 0.0f : h2f(b + 208); /* ks: the 16 products below, taken once per block */
        const VF s0 = vset1(ks ? ks[8 * h + 2 * k] : d * (float)scl[8 * h + 2 * k]),
                 s1 = vset1(ks ? ks[8 * h + 2 * k + 1] : d * (float)scl[8 * h + 2 * k + 1]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) w[v] = vmul(w[v], v < NV / 2 ? s0 : s1);
        break;
    }
    default: __builtin_unreachable();
    }
}

/* The 16 scales of a Q6_K block times its d (the products dec_chunk makes), for a whole block. */
static inline void q6k_scales(const uint8_t *b, float ks[16]) {
    const VF d = vset1(h2f(b + 208));
    VF s[NV];
    cvt32(ld128(b + 192), _mm_setzero_si128(), 1, s); /* the first 16 values: the 16 scales */
#pragma GCC unroll 2
    for (int v = 0; v < 16 / VL; v++) vstore(ks + VL * v, vmul(s[v], d));
}

/* The last, partial chunk of a plain-type row (n % 32 != 0): its weights, zero-padded. */
static void dec_tail(uint32_t type, const uint8_t *row, size_t n, float out[CH]) {
    size_t c0 = n / CH * CH;
    memset(out, 0, CH * sizeof(float));
    for (size_t i = c0; i < n; i++) {
        uint16_t h;
        if (type == KERN_TYPE_F32) {
            memcpy(&out[i - c0], row + 4 * i, 4);
            continue;
        }
        memcpy(&h, row + 2 * i, 2);
        out[i - c0] = type == KERN_TYPE_F16 ? _cvtsh_ss(h) : kern_bf16_to_f32(h);
    }
}

/* x[c0..n) zero-padded to one chunk */
static inline void x_tail(const float *x, size_t n, float out[CH]) {
    size_t c0 = n / CH * CH;
    memset(out, 0, CH * sizeof(float));
    memcpy(out, x + c0, (n - c0) * sizeof(float));
}

/* Software prefetch of the next row tile while this one is computed: the tile's rows are one
 * contiguous range of W, but read as R interleaved streams, which the hardware prefetchers
 * follow too late (measured: compute and DRAM time added up). Issues n line prefetches from
 * *pf, stopping at end (the end of this thread's rows). */
static inline __attribute__((always_inline)) void pf_lines(const uint8_t **pf, const uint8_t *end, int n) {
    for (int i = 0; i < n; i++, *pf += 64)
        if (*pf < end) _mm_prefetch((const char *)*pf, _MM_HINT_T1);
}

/* Prefetch plan of one tile of rows [o, o + R) (of the thread's [o, hi)), run in `steps` steps:
 * the tile's bytes, PF_AHEAD bytes (or one tile, if larger) further on, *n lines per step. */
#define PF_AHEAD 8192
static inline void pf_plan(const kern__mm *j, size_t o, size_t R, size_t hi, size_t steps, const uint8_t **pf,
                           const uint8_t **end, int *n) {
    const size_t tile = R * j->row_bytes, ahead = tile > PF_AHEAD ? tile : PF_AHEAD;
    const uint8_t *stop = j->W + hi * j->row_bytes;
    *pf = j->W + o * j->row_bytes + ahead;
    *end = *pf + tile < stop ? *pf + tile : stop;
    *n = (int)((tile / (steps ? steps : 1) + 63) / 64);
}

/* ---- f32-activation matmul ---- */

/* Decode (one token): rows [lo, hi) against x, 4 rows at a time, decoding straight into FMAs. */
static inline __attribute__((always_inline)) void gemv_rows(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t n = j->n_in, nc = n / CH;
    const float *x = j->X;
    float xt[CH], wt[CH], ks[4][16]; /* ks: Q6_K scales of each row's current block */
    if (n % CH) x_tail(x, n, xt);
    for (size_t o = lo; o < hi; o += 4) {
        const int R = hi - o < 4 ? (int)(hi - o) : 4;
        const uint8_t *row[4];
        VF acc[4] = {vzero(), vzero(), vzero(), vzero()};
        for (int r = 0; r < 4; r++) row[r] = j->W + (o + (r < R ? r : 0)) * j->row_bytes;
        const uint8_t *pf, *pf_end;
        int npf;
        pf_plan(j, o, 4, hi, nc, &pf, &pf_end, &npf);
        for (size_t c = 0; c < nc; c++) {
            pf_lines(&pf, pf_end, npf);
            const float *xc = x + CH * c; /* x read from L1 by each FMA: no registers held */
#pragma GCC unroll 4 /* unrolled, so the accumulators stay in registers */
            for (int r = 0; r < 4; r++) { /* rows past R repeat row 0: harmless, not stored */
                VF w[NV];
                if (type == KERN_TYPE_Q6_K && c % 8 == 0) q6k_scales(row[r] + 210 * (c / 8), ks[r]);
                dec_chunk(type, row[r], c, w, type == KERN_TYPE_Q6_K ? ks[r] : NULL);
#pragma GCC unroll 4
                for (int k = 0; k < NV; k++) acc[r] = vfma(w[k], vload(xc + VL * k), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) {
            if (n % CH) {
                dec_tail(type, row[r], n, wt);
#pragma GCC unroll 4
                for (int k = 0; k < NV; k++) acc[r] = vfma(vload(wt + VL * k), vload(xt + VL * k), acc[r]);
            }
            j->Y[o + r] = vhsum(acc[r]);
        }
    }
}

/* Prefill micro-kernel: acc[r][t] += w_r . x_t over `len` floats (a multiple of VL), R rows of
 * the decoded tile (stride ws) against T token rows; accumulators live in registers. */
static inline __attribute__((always_inline)) void mk(int R, int T, VF *accm, const float *w, size_t ws,
                                                     const float *const *x, size_t off, size_t len) {
    VF acc[4][TMAX];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) acc[r][t] = accm[r * TMAX + t];
    for (size_t i = 0; i < len; i += VL) {
        VF xv[TMAX];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) xv[t] = vload(x[t] + off + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            VF wv = vload(w + r * ws + i);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) acc[r][t] = vfma(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) accm[r * TMAX + t] = acc[r][t];
}

/* mk with R in {1, 4} and T in 1..TMAX as compile-time constants */
static void mk_any(int R, int T, VF *accm, const float *w, size_t ws, const float *const *x, size_t off, size_t len) {
#define MK_CASE(t)                                                        \
    case t:                                                               \
        if (R == 4) mk(4, t, accm, w, ws, x, off, len);                   \
        else for (int r = 0; r < R; r++) mk(1, t, accm + r * TMAX, w + r * ws, ws, x, off, len); \
        break;
    switch (T) {
    MK_CASES
    default: __builtin_unreachable();
    }
#undef MK_CASE
}

/* Prefill: rows [lo, hi) in tiles of 4 (1 when rows are too long for the tile buffer): decode the
 * tile once, then sweep every token through the micro-kernel in groups of TMAX. */
static void gemm_rows(uint32_t type, const kern__mm *j, size_t lo, size_t hi, float *wt) {
    const size_t n = j->n_in, nc = n / CH, nfull = nc * CH, npad = (n + CH - 1) / CH * CH;
    const int RT = npad * 4 <= MAX_PAD ? 4 : 1;
    for (size_t o = lo; o < hi; o += (size_t)RT) {
        const int R = hi - o < (size_t)RT ? (int)(hi - o) : RT;
        for (int r = 0; r < R; r++) {
            const uint8_t *row = j->W + (o + r) * j->row_bytes;
            for (size_t c = 0; c < nc; c++) {
                VF w[NV];
                dec_chunk(type, row, c, w, NULL);
#pragma GCC unroll 4
                for (int k = 0; k < NV; k++) vstore(wt + r * npad + CH * c + VL * k, w[k]);
            }
            if (n % CH) dec_tail(type, row, n, wt + r * npad + nfull);
        }
        for (size_t t0 = 0; t0 < j->n_tok; t0 += TMAX) {
            const int T = j->n_tok - t0 < TMAX ? (int)(j->n_tok - t0) : TMAX;
            const float *xp[TMAX];
            VF accm[4 * TMAX];
            for (int i = 0; i < 4 * TMAX; i++) accm[i] = vzero();
            for (int t = 0; t < T; t++) xp[t] = j->X + (t0 + t) * n;
            mk_any(R, T, accm, wt, npad, xp, 0, nfull);
            if (n % CH) {
                float xt[TMAX][CH];
                const float *xtp[TMAX];
                for (int t = 0; t < T; t++) x_tail(xp[t], n, xt[t]), xtp[t] = xt[t];
                mk_any(R, T, accm, wt + nfull, npad, xtp, 0, CH);
            }
            for (int r = 0; r < R; r++)
                for (int t = 0; t < T; t++) j->Y[(t0 + t) * j->n_out + o + r] = vhsum(accm[r * TMAX + t]);
        }
    }
}

#define MM_TYPES(X) X(F32) X(F16) X(BF16) X(Q8_0) X(Q4_0) X(Q4_1) X(Q4_K) X(Q5_K) X(Q6_K)
#define MM_DEF(T)                                                                                      \
    static void mm_##T(const kern__mm *j, size_t lo, size_t hi) {                                        \
        float wt[MAX_PAD]; /* the decoded row tile (stack, like the scalar path's row) */            \
        if (j->n_tok == 1) gemv_rows(KERN_TYPE_##T, j, lo, hi);                                          \
        else gemm_rows(KERN_TYPE_##T, j, lo, hi, wt);                                                    \
    }
MM_TYPES(MM_DEF)

static void mm_f32(const kern__mm *j, size_t lo, size_t hi) {
    switch (j->wtype) {
#define MM_CASE(T) case KERN_TYPE_##T: mm_##T(j, lo, hi); break;
    MM_TYPES(MM_CASE)
#undef MM_CASE
    default: kern__ops_scalar.mm_f32(j, lo, hi);
    }
}

#include "kernels/cpu/simd_tmpl_act.h" /* quantised-activation matmul + quant_act */

/* expf on VL lanes: Cody-Waite reduction x = n ln2 + r, Cephes' degree-6 polynomial (about
 * 2 ulp), 2^n through the exponent bits; inputs clamped to where 2^n stays normal. */
static inline VF vexp(VF x) {
    x = vmin(vmax(x, vset1(-87.3f)), vset1(88.3f));
    VF n = vround(vmul(x, vset1(1.44269504088896341f)));
    VF r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    VF p = vset1(1.9875691500E-4f);
    p = vfma(p, r, vset1(1.3981999507E-3f));
    p = vfma(p, r, vset1(8.3334519073E-3f));
    p = vfma(p, r, vset1(4.1665795894E-2f));
    p = vfma(p, r, vset1(1.6666665459E-1f));
    p = vfma(p, r, vset1(5.0000001201E-1f));
    p = vadd(vfma(p, vmul(r, r), r), vset1(1.0f));
    return vmul(p, vpow2i(n));
}

/* ---- attention over an f16 or Q8_0 KV cache (a tile of queries of one sequence; kern__attn_tile) ----
 * One template, compiled once per cache type (attn_f16, attn_q8: `type` is a constant in each).
 * Per query the arithmetic is fixed, whatever else is in the tile (kern__attn_tile's invariant):
 *   f16: K is stored dimension-major, so a vector holds one value of VL positions; per position
 *        four fused chains over d mod 4 (attn_scores_h); Q8_0: q's Q8_0 blocks meet K's in
 *        integers (attn_scores_q8); either way bitwise the scalar reference's scores;
 *   softmax_w over its n_ctx scores (vexp, f32 sum; for an f16 cache the weights are then
 *   rounded to f16 through F16C, bitwise the scalar kern_f32_to_f16 rounding for finite values);
 *   out[d..d+VL) = fma(a[p], V[p][d..d+VL), out) over p = 0 .. n_ctx-1 in order, from zero, with
 *   a = w and V widened (f16), or a = w * the block's d and V its int8 values (Q8_0), so each
 *   path computes its scalar reference's sums (ops.c, pv_scalar) in another order only.
 * Past KERN__ATTN_SEG positions the same goes segment by segment (attn_tile_seg).
 * The tile only shares loads. Its queries are cut into chunks of consecutive queries with one
 * kv head: a K vector is widened once per chunk of up to SCH_R queries (f16), a Q8_0 K block
 * once per chunk of up to SC_R; a V row once per chunk of up to PV_R. The scores pass walks the
 * cache 16 slots at a time, every chunk taking its kv head from those slots; the V pass then
 * walks a segment (or the whole context) once per chunk and output part, its sums in registers.
 * Either way the arithmetic of a query is its own. */

#define SC_R 4                   /* queries per score chunk (Q8_0) */
#define SCH_R (VL == 16 ? 4 : 3) /* queries per score chunk (F16): 4 * SCH_R accumulators */
#define PV_R (VL == 16 ? 4 : 2)  /* queries per V chunk: PV_R x 4 accumulators */
#define AG 16                    /* slots per step of the walk; a multiple of VL */

/* Byte offset of value e in a cache row of `type` (F16, or Q8_0 with e a multiple of 32) */
static inline size_t kv_bytes(uint32_t type, size_t e) { return type == KERN_TYPE_Q8_0 ? e / KERN_QK * 34 : 2 * e; }

/* lane 0 of x in every lane */
#if VL == 8
#define vbroadcast0(x) _mm256_broadcastss_ps(x)
#else
#define vbroadcast0(x) _mm512_broadcastss_ps(x)
#endif

/* VL bytes at p, in the low bytes of a 128-bit register */
static inline __m128i ld_vl_bytes(const uint8_t *p) {
#if VL == 8
    return _mm_loadl_epi64((const __m128i *)p);
#else
    return ld128(p);
#endif
}

/* Values [e, e + VL) of a cache row as f32, p at a value that starts a Q8_0 block (e a constant
 * once inlined, so the block's scale is read once for all its vectors). Q8_0: d * (float)k for
 * each int8 k, exact in f32 (d has 11 significant bits, k 7). */
static inline __attribute__((always_inline)) VF kv_vec(uint32_t type, const uint8_t *p, int e) {
    if (type == KERN_TYPE_F16) return vload_h((const uint16_t *)p + e);
    const uint8_t *b = p + 34 * (e / KERN_QK);
    /* d: the block's first 8 bytes widened as halves (lane 0 is d), then broadcast */
    const VF d = vbroadcast0(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)b)));
    return vmul(vcvt_i8(ld_vl_bytes(b + 2 + e % KERN_QK)), d);
}

/* Slot rows of positions [c, c + AG) of a K or V cache (kv head 0); positions from n on (past the
 * longest context of the tile) get row c's, which is never used. */
static inline __attribute__((always_inline)) void attn_rows(uint32_t type, const kern_kv_view *kv, const void *base,
                                                            size_t c, size_t n, const uint8_t *rp[AG]) {
    const size_t bs = kv->block_size, row = kv_bytes(type, kv->n_kv_head * kv->head_dim);
    const uint8_t *b = base;
    if (bs % AG == 0) { /* the AG slots lie in one block */
        const uint8_t *r0 = b + ((size_t)kv->block_table[c / bs] * bs + c % bs) * row;
        for (int j = 0; j < AG; j++) rp[j] = r0 + (size_t)j * row;
        return;
    }
    for (size_t j = 0, p = c; j < AG; j++, p++)
        rp[j] = p < n ? b + ((size_t)kv->block_table[p / bs] * bs + p % bs) * row : rp[0];
}

/* KV prefetch. Past a few sequences or a long context the cache streams from L3 or DRAM, and
 * attention is bound by how many lines are in flight rather than by its arithmetic: the
 * scores pass prefetches the K of the group ATTN_PF groups of AG positions ahead, the V pass
 * likewise its V. (Also prefetching V into L2 during the scores pass was 7% faster from DRAM
 * but 14% slower with the KV in cache; measured, dropped.) Only for block_size a multiple of
 * AG (a group lies in one block). */
#define ATTN_PF 2

/* Prefetches an F16 K's values at positions [c, c + AG) of kv head h: value d's AG halves are
 * one 32-byte piece, block_size halves after value d - 1's. */
static inline __attribute__((always_inline)) void attn_pf_kt(const kern_kv_view *kv, size_t c, size_t h) {
    const size_t bs = kv->block_size, hd = kv->head_dim, step = bs >= 32 ? 1 : 32 / bs;
    const uint16_t *k = (const uint16_t *)kv->k + (size_t)kv->block_table[c / bs] * bs * kv->n_kv_head * hd + h * hd * bs +
                        c % bs;
    for (size_t d = 0; d < hd; d += step) _mm_prefetch((const char *)(k + d * bs), _MM_HINT_T0);
}

/* Prefetches bytes [off, off + n) of the rows at positions [c, c + AG) of a slot-major cache
 * (V, or a Q8_0 K) */
static inline __attribute__((always_inline)) void attn_pf_rows(uint32_t type, const kern_kv_view *kv, const void *base,
                                                               size_t c, size_t off, size_t n) {
    const size_t bs = kv->block_size;
    size_t row = kv_bytes(type, kv->n_kv_head * kv->head_dim);
    const uint8_t *r = (const uint8_t *)base + ((size_t)kv->block_table[c / bs] * bs + c % bs) * row + off;
    if (n == row) n = AG * row, row = 0; /* whole rows: one range */
    for (size_t j = 0; j < (row ? AG : 1); j++, r += row)
        for (size_t b = 0; b < n; b += 64) _mm_prefetch((const char *)(r + b), _MM_HINT_T0);
}

/* An F16 K's values at positions [c, c + AG) of kv head h, dimension-major (kern.h): value d of
 * position c + j at kt[d * ks + j]. With block_size a multiple of AG they lie in one block
 * (ks = block_size); else they are gathered into tmp (hd * AG halves; ks = AG), positions from
 * n on zero. */
static inline __attribute__((always_inline)) const uint16_t *attn_kt(const kern_kv_view *kv, size_t c, size_t n, size_t h,
                                                                   uint16_t *tmp, size_t *ks) {
    const size_t bs = kv->block_size, hd = kv->head_dim, blk = bs * kv->n_kv_head * hd;
    const uint16_t *k = kv->k;
    if (bs % AG == 0) {
        *ks = bs;
        return k + (size_t)kv->block_table[c / bs] * blk + h * hd * bs + c % bs;
    }
    *ks = AG;
    for (size_t j = 0, p = c; j < AG; j++, p++) {
        const uint16_t *kp = k + (size_t)kv->block_table[(p < n ? p : c) / bs] * blk + h * hd * bs + (p < n ? p : c) % bs;
        for (size_t d = 0; d < hd; d++) tmp[d * AG + j] = p < n ? kp[d * bs] : 0;
    }
    return tmp;
}

/* Scores at positions [c, c + AG) of queries [i0, i0 + R) over an F16 K, one kv head (R <= SCH_R,
 * a constant once inlined), kt/ks as attn_kt gives them. Lanes are positions: per query four
 * chains c_u = fma(K[p][d], q[d], c_u) over d = u mod 4, then ((c_0 + c_1) + (c_2 + c_3)) * scale,
 * the scalar reference's arithmetic; each d meets VL positions in one vector. Scores of positions
 * past a query's context are written too (its score row has room up to a multiple of 16) and
 * never read. */
static inline __attribute__((always_inline)) void attn_scores_h(const kern__attn_tile *t, size_t i0, const int R,
                                                                const uint16_t *kt, size_t ks, size_t c) {
    const size_t hd = t->kv->head_dim;
    const float *q[SCH_R];
    size_t n_max = 0;
    for (int r = 0; r < R; r++) {
        q[r] = t->q[i0 + r];
        n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    }
    const VF sv = vset1(t->scale);
    for (size_t h = 0; h < AG && c + h < n_max; h += VL) {
        VF acc[SCH_R][4]; /* registers: the loops over them are unrolled */
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) acc[r][u] = vzero();
        const uint16_t *kp = kt + h;
        for (size_t d = 0; d < hd; d += 4, kp += 4 * ks)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) {
                const VF k = vload_h(kp + (size_t)u * ks);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][u] = vfma(k, vset1(q[r][d + (size_t)u]), acc[r][u]);
            }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            vstore(t->sc[i0 + r] + c + h, vmul(vadd(vadd(acc[r][0], acc[r][1]), vadd(acc[r][2], acc[r][3])), sv));
    }
}

/* Scores at positions [c, c + AG) of queries [i0, i0 + R) over a Q8_0 K, one kv head (R <= SC_R,
 * a constant once inlined): the query's Q8_0 blocks meet the cache's in integers. Lane j of the
 * running sum is position j's own chain of kern_vec_dot_act (Q8_0): per block the exact integer
 * dot, then sum = fma((float)isum, d_k * d_q, sum), so the scores are bitwise the scalar
 * reference's. AVX-512: a zmm holds one block of two positions as unsigned bytes (k + 128, gw_w2),
 * shared by the R queries; vpdpbusd against the query block, started from -128 * (its 4-byte
 * sums) so the offset cancels lane by lane, and gw_reduce16 leaves position j's sum in lane j.
 * AVX2: 8 positions at a time, |k| against q * sign(k) (gv_block's arithmetic). */
static inline __attribute__((always_inline)) void attn_scores_q8(const kern__attn_tile *t, size_t i0, const int R,
                                                                 const uint8_t *const kr[AG], size_t c) {
    const size_t nb = t->kv->head_dim / KERN_QK, off = t->kvh[i0] * nb * 34;
    size_t n_max = 0;
    for (int r = 0; r < R; r++) n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    if (c >= n_max) return;
    float s[SC_R][AG];
#if VL == 16
    __m512 sum[SC_R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) sum[r] = _mm512_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const size_t ob = off + b * 34;
        __m512i kz[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) kz[k] = gw_w2(KERN_TYPE_Q8_0, kr[gw_row(k)] + ob, kr[gw_row(k) + 4] + ob);
        const __m256i dh = _mm256_setr_epi16(ld16(kr[0] + ob), ld16(kr[1] + ob), ld16(kr[2] + ob), ld16(kr[3] + ob),
                                             ld16(kr[4] + ob), ld16(kr[5] + ob), ld16(kr[6] + ob), ld16(kr[7] + ob),
                                             ld16(kr[8] + ob), ld16(kr[9] + ob), ld16(kr[10] + ob), ld16(kr[11] + ob),
                                             ld16(kr[12] + ob), ld16(kr[13] + ob), ld16(kr[14] + ob), ld16(kr[15] + ob));
        const __m512 dk = _mm512_cvtph_ps(dh);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *xb = t->qq[i0 + r] + b * 34;
            const __m512i xx = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 2)));
            const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), xx));
            __m512i p[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) p[k] = _mm512_dpbusd_epi32(init, kz[k], xx);
            const __m512 sf = _mm512_cvtepi32_ps(gw_reduce16(p, 0));
            sum[r] = _mm512_fmadd_ps(sf, _mm512_mul_ps(dk, _mm512_set1_ps(h2f(xb))), sum[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) _mm512_storeu_ps(s[r], _mm512_mul_ps(sum[r], _mm512_set1_ps(t->scale)));
#else
    for (int h = 0; h < AG / 8; h++) {
        const uint8_t *const *kp = kr + 8 * h;
        __m256 sum[SC_R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) sum[r] = _mm256_setzero_ps();
        for (size_t b = 0; b < nb; b++) {
            const size_t ob = off + b * 34;
            __m256i u[8], ws[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) unpack_w(KERN_TYPE_Q8_0, kp[j] + ob, &u[j], &ws[j]);
            const __m128i dh = _mm_setr_epi16(ld16(kp[0] + ob), ld16(kp[1] + ob), ld16(kp[2] + ob), ld16(kp[3] + ob),
                                              ld16(kp[4] + ob), ld16(kp[5] + ob), ld16(kp[6] + ob), ld16(kp[7] + ob));
            const __m256 dk = _mm256_cvtph_ps(dh);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *xb = t->qq[i0 + r] + b * 34;
                const __m256i x = _mm256_loadu_si256((const __m256i *)(xb + 2));
                __m256i p[8];
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) p[j] = IDOT32(u[j], _mm256_sign_epi8(x, ws[j]));
                const __m256 sf = _mm256_cvtepi32_ps(gv_reduce8(p));
                sum[r] = _mm256_fmadd_ps(sf, _mm256_mul_ps(dk, _mm256_set1_ps(h2f(xb))), sum[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) _mm256_storeu_ps(s[r] + 8 * h, _mm256_mul_ps(sum[r], _mm256_set1_ps(t->scale)));
    }
#endif
    for (int r = 0; r < R; r++) {
        const size_t n = t->n_ctx[i0 + r];
        if (c + AG <= n)
#pragma GCC unroll 2
            for (int h = 0; h < AG; h += VL) vstore(t->sc[i0 + r] + c + h, vload(s[r] + h));
        else if (c < n)
            for (size_t h = 0; h < n - c; h++) t->sc[i0 + r][c + h] = s[r][h];
    }
}

/* Output vectors [d0, d0 + NVC*VL) of queries [i0, i0 + R), one kv head, over positions
 * [c_lo, c_hi) (c_lo a multiple of AG): the running sums start from zero at c_lo = t->c0, else
 * from out, stay in registers over the range and go back to out (R <= PV_R, NVC <= 4; constants
 * once inlined, or NVC 0: nv vectors, chosen at run time). d0 is a multiple of 4 * VL, so it
 * starts a Q8_0 block. Each output value's chain is its own, whatever values are computed with
 * it. */
static inline __attribute__((always_inline)) void attn_pv(uint32_t type, const kern__attn_tile *t, size_t i0, const int R,
                                                          const int NVC, int nv, size_t d0, size_t c_lo, size_t c_hi) {
    const int nvv = NVC ? NVC : nv, q8 = type == KERN_TYPE_Q8_0;
    const size_t off = kv_bytes(type, t->kvh[i0] * t->kv->head_dim + d0);
    const float *w[PV_R];
    float *o[PV_R];
    size_t n_min = SIZE_MAX, n_max = 0;
    for (int r = 0; r < R; r++) {
        w[r] = t->sc[i0 + r];
        o[r] = t->out[i0 + r] + d0;
        n_min = t->n_ctx[i0 + r] < n_min ? t->n_ctx[i0 + r] : n_min;
        n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    }
    if (c_lo >= n_max) return;
    if (c_hi > n_max) c_hi = n_max;
    VF acc[PV_R][4], v[4]; /* registers: the loops over them are unrolled */
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            acc[r][k] = c_lo != t->c0 && k < nvv ? vload(o[r] + VL * k) : vzero();
    for (size_t c = c_lo; c < c_hi; c += AG) {
        const uint8_t *vr[AG];
        if (c + ATTN_PF * AG < c_hi && t->kv->block_size % AG == 0)
            attn_pf_rows(type, t->kv, t->kv->v, c + ATTN_PF * AG, off, kv_bytes(type, (size_t)nvv * VL));
        attn_rows(type, t->kv, t->kv->v, c, n_max, vr);
        /* Q8_0: the weights of the AG positions times each position's block scale, w[p] * d_b, for
         * the (at most 2) blocks of [d0, d0 + nvv*VL); the block's int8 values then meet them as
         * they are. Weight slots past n_ctx hold scratch, never used. */
        enum { NBL = 4 * VL / KERN_QK };
        float wd[q8 ? PV_R : 1][q8 ? NBL : 1][AG];
        if (q8)
#pragma GCC unroll 2
            for (int bl = 0; bl < NBL; bl++) {
                if (bl * KERN_QK >= nvv * VL) break;
                const uint8_t *const *vb = vr;
                const size_t ob = off + (size_t)bl * 34;
#pragma GCC unroll 2
                for (int h = 0; h < AG; h += VL) {
#if VL == 16
                    const VF dv = _mm512_cvtph_ps(_mm256_setr_epi16(
                        ld16(vb[h] + ob), ld16(vb[h + 1] + ob), ld16(vb[h + 2] + ob), ld16(vb[h + 3] + ob),
                        ld16(vb[h + 4] + ob), ld16(vb[h + 5] + ob), ld16(vb[h + 6] + ob), ld16(vb[h + 7] + ob),
                        ld16(vb[h + 8] + ob), ld16(vb[h + 9] + ob), ld16(vb[h + 10] + ob), ld16(vb[h + 11] + ob),
                        ld16(vb[h + 12] + ob), ld16(vb[h + 13] + ob), ld16(vb[h + 14] + ob), ld16(vb[h + 15] + ob)));
#else
                    const VF dv =
                        _mm256_cvtph_ps(_mm_setr_epi16(ld16(vb[h] + ob), ld16(vb[h + 1] + ob), ld16(vb[h + 2] + ob),
                                                       ld16(vb[h + 3] + ob), ld16(vb[h + 4] + ob), ld16(vb[h + 5] + ob),
                                                       ld16(vb[h + 6] + ob), ld16(vb[h + 7] + ob)));
#endif
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++)
                        vstore(wd[q8 ? r : 0][q8 ? bl : 0] + h, vmul(vload(w[r] + c + h), dv));
                }
            }
        const size_t e = c + AG < c_hi ? c + AG : c_hi, m = n_min < e ? n_min : e;
#define PV_LOAD(k)                                                                                                     \
    (q8 ? vcvt_i8(ld_vl_bytes(vp + 34 * (VL * (k) / KERN_QK) + 2 + VL * (k) % KERN_QK)) : kv_vec(type, vp, VL * (k)))
#define PV_W(r, k) (q8 ? vset1(wd[q8 ? r : 0][q8 ? VL * (k) / KERN_QK : 0][p - c]) : vset1(w[r][p]))
        size_t p = c;
        for (; p < m; p++) { /* positions every query of the chunk reaches */
            const uint8_t *vp = vr[p - c] + off;
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                if (k < nvv) v[k] = PV_LOAD(k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    if (k < nvv) acc[r][k] = vfma(PV_W(r, k), v[k], acc[r][k]);
        }
        for (; p < e; p++) { /* the causal tail: only the queries that reach p */
            const uint8_t *vp = vr[p - c] + off;
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                if (k < nvv) v[k] = PV_LOAD(k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                if (p >= t->n_ctx[i0 + r]) continue;
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    if (k < nvv) acc[r][k] = vfma(PV_W(r, k), v[k], acc[r][k]);
            }
        }
#undef PV_LOAD
#undef PV_W
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            if (k < nvv) vstore(o[r] + VL * k, acc[r][k]);
}

/* Scores at positions [c, c + AG) of every chunk of a tile (chunk k: queries [ci[k], ci[k] +
 * cr[k]), one kv head); n: the tile's longest context */
static inline __attribute__((always_inline)) void attn_k_group(uint32_t type, const kern__attn_tile *t, size_t c, size_t n,
                                                               const size_t *ci, const int *cr, int nc) {
    const size_t cp = c + ATTN_PF * AG, hd = t->kv->head_dim;
    const bool pf = cp < n && t->kv->block_size % AG == 0;
    if (type == KERN_TYPE_Q8_0) {
        const uint8_t *rp[AG];
        if (pf) attn_pf_rows(type, t->kv, t->kv->k, cp, 0, kv_bytes(type, t->kv->n_kv_head * hd)); /* whole rows */
        attn_rows(type, t->kv, t->kv->k, c, n, rp);
        for (int k = 0; k < nc; k++) switch (cr[k]) {
            case 1: attn_scores_q8(t, ci[k], 1, rp, c); break;
            case 2: attn_scores_q8(t, ci[k], 2, rp, c); break;
            case 3: attn_scores_q8(t, ci[k], 3, rp, c); break;
            default: attn_scores_q8(t, ci[k], 4, rp, c); break;
            }
        return;
    }
    uint16_t tmp[t->kv->block_size % AG ? hd * AG : 1]; /* head_dim <= 1024 */
    for (int k = 0; k < nc; k++) {
        size_t ks;
        if (pf && (k == 0 || t->kvh[ci[k]] != t->kvh[ci[k - 1]])) {
            attn_pf_kt(t->kv, cp, t->kvh[ci[k]]);
        }
        const uint16_t *kt = attn_kt(t->kv, c, n, t->kvh[ci[k]], tmp, &ks);
        switch (cr[k]) {
        case 1: attn_scores_h(t, ci[k], 1, kt, ks, c); break;
        case 2: attn_scores_h(t, ci[k], 2, kt, ks, c); break;
#if SCH_R > 3
        case 3: attn_scores_h(t, ci[k], 3, kt, ks, c); break;
#endif
        default: attn_scores_h(t, ci[k], SCH_R, kt, ks, c); break;
        }
    }
}

/* attn_pv with R and NVC constants: R queries (1..PV_R), NV vectors (2 or 4) */
#if PV_R > 2
#define PV_SWITCH(NV)                                                                                                  \
    switch (R) {                                                                                                       \
    case 1: attn_pv(type, t, i0, 1, NV, NV, d0, c_lo, c_hi); break;                                                         \
    case 2: attn_pv(type, t, i0, 2, NV, NV, d0, c_lo, c_hi); break;                                                         \
    case 3: attn_pv(type, t, i0, 3, NV, NV, d0, c_lo, c_hi); break;                                                         \
    default: attn_pv(type, t, i0, PV_R, NV, NV, d0, c_lo, c_hi); break;                                                     \
    }
#else
#define PV_SWITCH(NV)                                                                                                  \
    if (R == 1) attn_pv(type, t, i0, 1, NV, NV, d0, c_lo, c_hi);                                                            \
    else attn_pv(type, t, i0, PV_R, NV, NV, d0, c_lo, c_hi);
#endif

static inline __attribute__((always_inline)) void attn_pv_any(uint32_t type, const kern__attn_tile *t, size_t i0, int R,
                                                              int nv, size_t d0, size_t c_lo, size_t c_hi) {
    if (nv == 4) {
        PV_SWITCH(4)
    } else if (nv == 2) { /* a head's last 2 vectors (head_dim 96 or 160 on AVX-512, 48 on AVX2) */
        PV_SWITCH(2)
    } else { /* head_dim not a multiple of 2 vectors: its last part, one query at a time */
        for (int r = 0; r < R; r++) attn_pv(type, t, i0 + (size_t)r, 1, 0, nv, d0, c_lo, c_hi);
    }
}
#undef PV_SWITCH

/* Cuts the tile into chunks of consecutive queries with one kv head, at most rmax each:
 * chunk k is queries [i0[k], i0[k] + nr[k]). Returns the number of chunks. */
static int attn_chunks(const kern__attn_tile *t, int rmax, size_t i0[KERN__ATTN_QT], int nr[KERN__ATTN_QT]) {
    int n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (n && t->kvh[i] == t->kvh[i0[n - 1]] && nr[n - 1] < rmax) nr[n - 1]++;
        else i0[n] = i, nr[n++] = 1;
    }
    return n;
}

/* The largest of n scores */
static inline __attribute__((always_inline)) float scores_max(const float *x, size_t n) {
    VF m = vset1(-INFINITY);
    size_t i = 0;
    for (; i + VL <= n; i += VL) m = vmax(m, vload(x + i));
    float mx = vhmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* Softmax of n scores in place; round_h: the weights then rounded to f16 (an f16 cache's V) */
static inline __attribute__((always_inline)) void softmax_w(float *x, size_t n, const int round_h) {
    const float mx = scores_max(x, n);
    size_t i;
    VF sv = vzero(), mv = vset1(mx);
    for (i = 0; i + VL <= n; i += VL) {
        VF e = vexp(vsub(vload(x + i), mv));
        vstore(x + i, e);
        sv = vadd(sv, e);
    }
    double sum = vhsum(sv);
    for (; i < n; i++) sum += x[i] = expf(x[i] - mx);
    const float inv = (float)(1.0 / sum);
    const VF iv = vset1(inv);
    for (i = 0; i + VL <= n; i += VL) vstore(x + i, round_h ? vround_h(vmul(vload(x + i), iv)) : vmul(vload(x + i), iv));
    for (; i < n; i++) x[i] = round_h ? _cvtsh_ss(kern_f32_to_f16(x[i] * inv)) : x[i] * inv;
}

/* One segment's softmax pieces over its n scores x: m = their max, x[p] = exp(x[p] - m) (then
 * rounded to f16 for an f16 cache, as softmax_w), l = the sum of the unrounded exponentials */
static inline __attribute__((always_inline)) void softmax_seg(float *x, size_t n, const int round_h, float *m_out,
                                                              float *l_out) {
    const float mx = scores_max(x, n);
    size_t i;
    VF sv = vzero(), mv = vset1(mx);
    for (i = 0; i + VL <= n; i += VL) {
        VF e = vexp(vsub(vload(x + i), mv));
        sv = vadd(sv, e);
        vstore(x + i, round_h ? vround_h(e) : e);
    }
    float sum = vhsum(sv);
    for (; i < n; i++) {
        const float e = expf(x[i] - mx);
        sum += e;
        x[i] = round_h ? _cvtsh_ss(kern_f32_to_f16(e)) : e;
    }
    *m_out = mx, *l_out = sum;
}

/* A tile of queries at contexts over KERN__ATTN_SEG: segment by segment, the scores, their
 * softmax pieces and the weighted V sums (into ot), each query's result independent of the
 * others as in attn_tile; then stored as partials (pt) or folded into out in segment order. */
static inline __attribute__((always_inline)) void attn_tile_seg(uint32_t type, const kern__attn_tile *t) {
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim;
    size_t n_max = 0, ci[KERN__ATTN_QT];
    int cr[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) n_max = t->n_ctx[i] > n_max ? t->n_ctx[i] : n_max;
    kern__attn_tile u = *t; /* V sums into ot */
    for (size_t i = 0; i < t->n; i++) u.out[i] = t->ot[i];
    float M[KERN__ATTN_QT], L[KERN__ATTN_QT], m[KERN__ATTN_QT], l[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) M[i] = -INFINITY, L[i] = 0;
    const int nsc = attn_chunks(t, type == KERN_TYPE_F16 ? SCH_R : SC_R, ci, cr);
    size_t pi[KERN__ATTN_QT];
    int pr[KERN__ATTN_QT];
    const int npv = attn_chunks(t, PV_R, pi, pr);
    for (size_t sg = t->s_lo; sg < t->s_hi && sg * KERN__ATTN_SEG < n_max; sg++) {
        const size_t s0 = sg * KERN__ATTN_SEG, s1 = s0 + KERN__ATTN_SEG < n_max ? s0 + KERN__ATTN_SEG : n_max;
        u.c0 = s0;
        for (size_t c = s0; c < s1; c += AG) attn_k_group(type, &u, c, n_max, ci, cr, nsc);
        for (size_t i = 0; i < t->n; i++)
            if (t->n_ctx[i] > s0)
                softmax_seg(t->sc[i] + s0, (t->n_ctx[i] < s1 ? t->n_ctx[i] : s1) - s0, type == KERN_TYPE_F16, &m[i], &l[i]);
        for (int k = 0; k < npv; k++)
            for (size_t d0 = 0; d0 < hd; d0 += 4 * VL)
                attn_pv_any(type, &u, pi[k], pr[k], hd - d0 < 4 * VL ? (int)((hd - d0) / VL) : 4, d0, s0, s1);
        for (size_t i = 0; i < t->n; i++) {
            if (t->n_ctx[i] <= s0) continue;
            if (t->pt[i]) {
                float *pp = t->pt[i] + sg * (hd + 2);
                memcpy(pp, t->ot[i], hd * sizeof(float));
                pp[hd] = m[i], pp[hd + 1] = l[i];
            } else {
                kern__attn_fold(t->out[i], &M[i], &L[i], t->ot[i], m[i], l[i], hd);
            }
        }
    }
    for (size_t i = 0; i < t->n; i++)
        if (!t->pt[i]) kern__attn_fold_end(t->out[i], L[i], hd);
}

static inline __attribute__((always_inline)) void attn_tile(uint32_t type, const kern__attn_tile *t) {
    if (t->n_ctx[0] > KERN__ATTN_SEG) {
        attn_tile_seg(type, t);
        return;
    }
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim;
    size_t n_max = 0, ci[KERN__ATTN_QT];
    int cr[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) n_max = t->n_ctx[i] > n_max ? t->n_ctx[i] : n_max;
    int nc = attn_chunks(t, type == KERN_TYPE_F16 ? SCH_R : SC_R, ci, cr);
    for (size_t c = 0; c < n_max; c += AG) attn_k_group(type, t, c, n_max, ci, cr, nc);
    for (size_t i = 0; i < t->n; i++) softmax_w(t->sc[i], t->n_ctx[i], type == KERN_TYPE_F16);
    nc = attn_chunks(t, PV_R, ci, cr);
    for (int k = 0; k < nc; k++)
        for (size_t d0 = 0; d0 < hd; d0 += 4 * VL)
            attn_pv_any(type, t, ci[k], cr[k], hd - d0 < 4 * VL ? (int)((hd - d0) / VL) : 4, d0, 0, n_max);
}

static void attn_f16(const kern__attn_tile *t) {
    if (t->kv->head_dim % VL || t->kv->head_dim > 1024) kern__ops_scalar.attn_f16(t);
    else attn_tile(KERN_TYPE_F16, t);
}

static void attn_q8(const kern__attn_tile *t) {
    if (t->kv->head_dim % KERN_QK || t->kv->head_dim > 1024) kern__ops_scalar.attn_q8(t);
    else attn_tile(KERN_TYPE_Q8_0, t);
}

/* ---- elementwise ---- */

static void add(float *x, const float *y, size_t n) {
    size_t i = 0;
    for (; i + VL <= n; i += VL) vstore(x + i, vadd(vload(x + i), vload(y + i)));
    for (; i < n; i++) x[i] += y[i];
}

static void rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) {
    VF a0 = vzero(), a1 = vzero();
    size_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        VF x0 = vload(x + i), x1 = vload(x + i + VL);
        a0 = vfma(x0, x0, a0), a1 = vfma(x1, x1, a1);
    }
    double ss = vhsum(vadd(a0, a1));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    const VF sv = vset1(scale);
    for (i = 0; i + VL <= n; i += VL) vstore(out + i, vmul(vmul(vload(x + i), sv), vload(w + i)));
    for (; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* F16C's round-to-nearest-even is kern_f32_to_f16's for every non-NaN input (subnormals and
 * overflow to inf included) */
static void f32_to_f16(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i + VL <= n; i += VL) vstore_h(dst + i, vload(src + i));
    for (; i < n; i++) dst[i] = kern_f32_to_f16(src[i]);
}

static void swiglu(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + VL <= n; i += VL) {
        VF g = vload(gate + i);
        VF e = vexp(vsub(vzero(), g));
        vstore(out + i, vmul(vdiv(g, vadd(vset1(1.0f), e)), vload(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* kern__ops.fma_loop: 12 chains keep both FMA ports of a core busy (latency 4 x 2 ports = 8
 * in flight) and fit AVX2's 16 registers */
static float fma_loop(size_t n) {
    VF a[12];
    const VF m = vset1(0.99999994f), c = vset1(1e-8f);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = vset1(1.0f + (float)j * 1e-7f);
    for (size_t i = 0; i < n; i++)
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = vfma(a[j], m, c);
    VF s = a[0];
#pragma GCC unroll 12
    for (int j = 1; j < 12; j++) s = vadd(s, a[j]);
    return vhsum(s);
}

#define SIMD_OPS_TABLE(name)                                                                                           \
    {name, mm_f32, mm_act, MM_PACKED, quant_act, attn_f16, attn_q8, rmsnorm, f32_to_f16, swiglu, add, fma_loop, VL}
