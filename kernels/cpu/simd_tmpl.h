/* simd_tmpl.h: the SIMD kernels, written once and compiled twice: by simd_avx2.c with 8-lane
 * vectors (VL 8, __m256, TMAX 3) and by simd_avx512.c with 16-lane vectors (VL 16, __m512,
 * TMAX 6). The includer defines VF, VL, TMAX, MK_CASES, the vector ops (vzero, vload, vstore,
 * vset1, vfma, vfms, vadd, vsub, vmul, vdiv, vmin, vmax, vand, vround, vpow2i), the fixed
 * reduction trees vhsum / vhmax, converters (vcvt_u8,
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

#include "kernels/cpu/simd_tmpl_attn.h" /* attention: attn_f16, attn_q8 */

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
