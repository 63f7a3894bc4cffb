/* simd_tmpl.h: the SIMD kernels, written once and compiled twice: by simd_avx2.c with 8-lane
 * vectors (VL 8, __m256, TMAX 3) and by simd_avx512.c with 16-lane vectors (VL 16, __m512,
 * TMAX 6). The includer defines VF, VL, TMAX, MK_CASES, the vector ops (vzero, vload, vstore,
 * vset1, vfma, vfms, vadd, vsub, vmul, vdiv, vmin, vmax, vand, vround, vpow2i), the fixed
 * reduction trees vhsum / vhmax, converters (vcvt_u8, vcvt_i8, vload_h, vload_bf16, vround_h)
 * and IDOT32 (u8 x s8 dot of 32 bytes into 8 int32 lanes: maddubs+madd on AVX2, vpdpbusd on
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

/* ---- quantised-activation matmul ----
 * Per block the integer sum is exact (byte dots on unpacked weights, then an integer
 * transpose-add tree), and the float steps are those of kern_vec_dot_act in the same order,
 * done for 8 (AVX2) or 16 (AVX-512) rows at once in the lanes of one vector (lane r is row r's
 * own scalar chain), so the result is bitwise equal to the scalar reference, whatever n_tok or
 * the thread split. One token: act_gemv / act_gemv16 (below). More tokens: act_gemm / act_gemm16
 * run the same per-lane chains for a tile of rows x GM_T tokens, each weight block unpacked
 * once per tile and applied to every token of it. */

static inline int hsum_i32(__m256i p) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Weight block -> the unsigned operand u and (signed types) the signed weights ws. */
static inline __attribute__((always_inline)) void unpack_w(uint32_t type, const uint8_t *b, __m256i *u, __m256i *ws) {
    if (type == KERN_TYPE_Q8_0) {
        *ws = _mm256_loadu_si256((const __m256i *)(b + 2));
        *u = _mm256_abs_epi8(*ws);
        return;
    }
    const __m128i m4 = _mm_set1_epi8(0x0f), q = ld128(b + (type == KERN_TYPE_Q4_1 ? 4 : 2));
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if (type == KERN_TYPE_Q4_1) {
        *u = v;
        return;
    }
    *ws = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
    *u = _mm256_abs_epi8(*ws);
}

/* One token (decode): 8 rows at a time share each activation block. Per block every row's
 * integer sum is exact, reduced by a transpose-add tree that leaves row r's sum in lane r, and
 * the float steps of kern_vec_dot_act run for the 8 rows in the 8 lanes of a ymm (lane r is row
 * r's own scalar chain), so the result is bitwise the scalar reference's. The unsigned operand of
 * the byte dot: Q4_0/Q4_1 nibbles as they are (Q4_0's -8 comes back as 8 * sum(x) per block);
 * with VNNI, Q8_0 as w + 128 (the 128 * sum(x) comes back the same way), on AVX2 |w| against
 * x * sign(w), since vpmaddubsw would saturate on w + 128. The per-block sums of x, its scale
 * (and Q8_1's s) are taken once per call. Scales of the 8 rows come in with one gather. */
#define GV_R 8
#define GV_MAX_NB (KERN_MATMUL_MAX_IN / CH)

/* 8 per-row dot vectors (8 int32 lanes each) -> lane r = sum of p[r] */
static inline __attribute__((always_inline)) __m256i gv_reduce8(const __m256i p[8]) {
    __m256i t[4], u[2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        t[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2 * k], p[2 * k + 1]), _mm256_unpackhi_epi32(p[2 * k], p[2 * k + 1]));
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        u[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]), _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x20), _mm256_permute2x128_si256(u[0], u[1], 0x31));
}

#if VL == 16
/* rows r and r+4 of one block as the unsigned byte operand of a zmm vpdpbusd */
static inline __attribute__((always_inline)) __m512i gv_w2(uint32_t type, const uint8_t *a, const uint8_t *b) {
    if (type == KERN_TYPE_Q8_0) {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 2))),
                                       _mm256_loadu_si256((const __m256i *)(b + 2)), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    const int off = type == KERN_TYPE_Q4_1 ? 4 : 2;
    __m512i q = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(ld128(a + off)), 0xff00, ld128(b + off));
    q = _mm512_mask_srli_epi16(q, 0xff00ff00u, q, 4); /* 128-bit lanes 1 and 3: high nibbles */
    return _mm512_and_si512(q, _mm512_set1_epi8(0x0f));
}
#endif

/* Row sums of one block for the 8 rows w[0..8) against the 32 activation bytes at xq. */
static inline __attribute__((always_inline)) __m256i gv_block(uint32_t type, const uint8_t *const w[8], const uint8_t *xq) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
#if VL == 16
    const __m512i xx = _mm512_broadcast_i64x4(x);
    __m512i p[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), gv_w2(type, w[k], w[k + 4]), xx);
    /* zmm k holds rows k (low half) and k+4: reduce pairs of 128-bit lanes, then halves */
    __m256i h[8];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) h[k] = _mm512_castsi512_si256(p[k]), h[k + 4] = _mm512_extracti64x4_epi64(p[k], 1);
    return gv_reduce8(h);
#else
    __m256i p[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        __m256i u, ws = _mm256_setzero_si256();
        if (type == KERN_TYPE_Q8_0) {
            unpack_w(type, w[r], &u, &ws);
            p[r] = IDOT32(u, _mm256_sign_epi8(x, ws));
        } else {
            const __m256i q = _mm256_broadcastsi128_si256(ld128(w[r] + (type == KERN_TYPE_Q4_1 ? 4 : 2)));
            u = _mm256_and_si256(_mm256_blend_epi32(q, _mm256_srli_epi16(q, 4), 0xf0), _mm256_set1_epi8(0x0f));
            p[r] = IDOT32(u, x);
        }
    }
    return gv_reduce8(p);
#endif
}

static inline short ld16(const uint8_t *p) {
    short h;
    memcpy(&h, p, 2);
    return h;
}

static inline __attribute__((always_inline)) void act_gemv(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, wbb = type == KERN_TYPE_Q8_0 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes;
    /* per block of x: its scale, Q8_1's s, and the correction k * sum(x) of the unsigned operand */
    float dx[GV_MAX_NB], sx[GV_MAX_NB];
    int32_t cx[GV_MAX_NB];
#if VL == 16
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
#else
    const int kc = type == KERN_TYPE_Q4_0 ? 8 : 0;
#endif
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *xb = j->Xq + b * xbb;
        dx[b] = h2f(xb);
        sx[b] = q41 ? h2f(xb + 2) : 0.0f;
        cx[b] = kc ? kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + (q41 ? 4 : 2))))) : 0;
    }
    for (size_t o = lo; o < hi; o += GV_R) {
        const int R = hi - o < GV_R ? (int)(hi - o) : GV_R;
        const uint8_t *w[GV_R]; /* rows past R repeat the last one: computed, not stored */
        for (int r = 0; r < GV_R; r++) w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * rb;
        const uint8_t *pf, *pf_end;
        int npf;
        pf_plan(j, o, GV_R, hi, nb, &pf, &pf_end, &npf);
        __m256 sum = _mm256_setzero_ps();
        for (size_t b = 0; b < nb; b++) {
            pf_lines(&pf, pf_end, npf);
            const uint8_t *xb = j->Xq + b * xbb;
            __m256i s = gv_block(type, w, xb + (q41 ? 4 : 2));
            if (kc) s = _mm256_sub_epi32(s, _mm256_set1_epi32(cx[b]));
            /* the 8 rows' f16 scales (Q4_1: and mins) */
            const __m128i dh = _mm_setr_epi16(ld16(w[0]), ld16(w[1]), ld16(w[2]), ld16(w[3]), ld16(w[4]), ld16(w[5]),
                                              ld16(w[6]), ld16(w[7]));
            const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(dh), _mm256_set1_ps(dx[b])), sf = _mm256_cvtepi32_ps(s);
            if (q41) {
                const __m128i mh = _mm_setr_epi16(ld16(w[0] + 2), ld16(w[1] + 2), ld16(w[2] + 2), ld16(w[3] + 2),
                                                  ld16(w[4] + 2), ld16(w[5] + 2), ld16(w[6] + 2), ld16(w[7] + 2));
                sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_mul_ps(dd, sf), _mm256_mul_ps(_mm256_cvtph_ps(mh), _mm256_set1_ps(sx[b]))));
            } else {
                sum = _mm256_add_ps(sum, _mm256_mul_ps(sf, dd));
            }
#pragma GCC unroll 8
            for (int r = 0; r < GV_R; r++) w[r] += wbb;
        }
        float v[GV_R];
        _mm256_storeu_ps(v, sum);
        for (int r = 0; r < R; r++) j->Y[o + r] = v[r];
    }
}

#if VL == 16
/* AVX-512 decode: 16 rows at a time, the float chains of the 16 rows in the 16 lanes of a zmm.
 * zmm k of a block holds two rows (gw_row(k) in its low half, gw_row(k) + 4 in its high half),
 * so that the transpose-add tree of gw_reduce16 leaves row r's sum in lane r. Q4 nibbles: the
 * high nibbles stay in place (16 n), masked, and their partial sums are shifted down by 4 just
 * before the last add of the tree (exact: every term is a multiple of 16). Scales: one 64-byte
 * load per row covers G blocks (4 of Q4_0/Q4_1, 2 of Q8_0), and a merge-masked vpermw drops
 * each row's G scales into lane r of G half-vectors. */
#define GW_R 16
static inline int gw_row(int k) { return k < 4 ? k : k + 4; }

static inline __attribute__((always_inline)) __m512i gw_w2(uint32_t type, const uint8_t *a, const uint8_t *b) {
    if (type == KERN_TYPE_Q8_0) {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a + 2))),
                                       _mm256_loadu_si256((const __m256i *)(b + 2)), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    const int off = type == KERN_TYPE_Q4_1 ? 4 : 2;
    __m512i q = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(ld128(a + off)), 0xff00, ld128(b + off));
    /* 128-bit lanes 0, 2: low nibbles (elements 0..15), lanes 1, 3: high nibbles times 16 */
    return _mm512_and_si512(q, _mm512_mask_blend_epi64(0xcc, _mm512_set1_epi8(0x0f), _mm512_set1_epi8((char)0xf0)));
}

/* 8 zmm of per-row partial sums (see gw_w2) -> lane r = row r's block sum */
static inline __attribute__((always_inline)) __m512i gw_reduce16(const __m512i p[8], int nib) {
    __m512i t[4], u[2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2 * k], p[2 * k + 1]), _mm512_unpackhi_epi32(p[2 * k], p[2 * k + 1]));
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        u[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * k], t[2 * k + 1]), _mm512_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    /* 128-bit lanes of u[k]: Q0, Q1: rows 4k'..+3 (two halves of the 32 bytes), Q2, Q3: the rows 4 on */
    __m512i a = _mm512_shuffle_i64x2(u[0], u[1], 0x88), b = _mm512_shuffle_i64x2(u[0], u[1], 0xdd);
    if (nib) b = _mm512_srai_epi32(b, 4);
    return _mm512_add_epi32(a, b);
}

static inline __attribute__((always_inline)) void act_gemv16(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1, nib = type != KERN_TYPE_Q8_0;
    const size_t nb = j->n_in / CH, wbb = type == KERN_TYPE_Q8_0 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes, xo = q41 ? 4 : 2;
    enum { G_MAX = 4 };
    const int G = type == KERN_TYPE_Q8_0 ? 2 : 4;
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
    float dx[GV_MAX_NB], sx[GV_MAX_NB];
    int32_t cx[GV_MAX_NB];
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *xb = j->Xq + b * xbb;
        dx[b] = h2f(xb);
        sx[b] = q41 ? h2f(xb + 2) : 0.0f;
        cx[b] = kc ? kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + xo)))) : 0;
    }
    /* word p of scale vector h holds block 2h + p / 16 (of the G loaded), row p % 16 */
    __m512i sidx[2], midx[2];
    for (int h = 0; h < 2; h++) {
        int16_t id[32], im[32];
        for (int p = 0; p < 32; p++) {
            int g = 2 * h + p / 16;
            id[p] = (int16_t)((g < G ? g : 0) * (int)wbb / 2);
            im[p] = (int16_t)(id[p] + 1);
        }
        sidx[h] = _mm512_loadu_si512(id), midx[h] = _mm512_loadu_si512(im);
    }
    for (size_t o = lo; o < hi; o += GW_R) {
        const int R = hi - o < GW_R ? (int)(hi - o) : GW_R;
        const uint8_t *w[GW_R]; /* rows past R repeat the last one: computed, not stored */
        for (int r = 0; r < GW_R; r++) w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * rb;
        const uint8_t *pf, *pf_end;
        int npf;
        pf_plan(j, o, GW_R, hi, nb, &pf, &pf_end, &npf);
        __m512 sum = _mm512_setzero_ps();
        for (size_t b0 = 0; b0 < nb; b0 += (size_t)G) {
            const int ng = nb - b0 < (size_t)G ? (int)(nb - b0) : G;
            const __mmask64 lm = ng == G ? ~0ull : (1ull << (ng * wbb)) - 1; /* never past the row */
            __m512i sd[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, sm[2] = {sd[0], sd[1]};
#pragma GCC unroll 16
            for (int r = 0; r < GW_R; r++) {
                const __m512i l = _mm512_maskz_loadu_epi8(lm, w[r] + b0 * wbb);
                const __mmask32 kr = (1u << r) | (1u << (16 + r));
#pragma GCC unroll 2
                for (int h = 0; h < G / 2; h++) {
                    sd[h] = _mm512_mask_permutexvar_epi16(sd[h], kr, sidx[h], l);
                    if (q41) sm[h] = _mm512_mask_permutexvar_epi16(sm[h], kr, midx[h], l);
                }
            }
#pragma GCC unroll 4
            for (int g = 0; g < G_MAX; g++) {
                if (g >= ng) break;
                const size_t b = b0 + (size_t)g, wo = b * wbb;
                pf_lines(&pf, pf_end, npf);
                const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(j->Xq + b * xbb + xo)));
                __m512i p[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++)
                    p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), gw_w2(type, w[gw_row(k)] + wo, w[gw_row(k) + 4] + wo), x);
                __m512i s = gw_reduce16(p, nib);
                if (kc) s = _mm512_sub_epi32(s, _mm512_set1_epi32(cx[b]));
                const __m256i dh = g & 1 ? _mm512_extracti64x4_epi64(sd[g / 2], 1) : _mm512_castsi512_si256(sd[g / 2]);
                const __m512 dd = _mm512_mul_ps(_mm512_cvtph_ps(dh), _mm512_set1_ps(dx[b])), sf = _mm512_cvtepi32_ps(s);
                if (q41) {
                    const __m256i mh = g & 1 ? _mm512_extracti64x4_epi64(sm[g / 2], 1) : _mm512_castsi512_si256(sm[g / 2]);
                    sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_mul_ps(dd, sf), _mm512_mul_ps(_mm512_cvtph_ps(mh), _mm512_set1_ps(sx[b]))));
                } else {
                    sum = _mm512_add_ps(sum, _mm512_mul_ps(sf, dd));
                }
            }
        }
        float v[GW_R];
        _mm512_storeu_ps(v, sum);
        for (int r = 0; r < R; r++) j->Y[o + r] = v[r];
    }
}
#endif


/* ---- quantised-activation GEMM (n_tok > 1) ----
 * Rows in lanes exactly as in the GEMV above (same unsigned operand, same transpose-add tree,
 * same per-lane float steps: dd = dw * dx, sum += s * dd, or Q4_1's sum += dd * s + mw * sx),
 * so every (row, token) output is bitwise the GEMV's. A row tile's f16 scales are widened once
 * (exact) for all its blocks; per token and block, dx, sx and the correction k * sum(x) are
 * taken once per call. Tokens run in tiles of GM_T (the last tile repeats its last token:
 * computed, not stored); the weights of one row tile stay in L1/L2 across the token tiles. */
#if VL == 16
#define GM_T 8
#define GM_R 16
#else
#define GM_T 4
#define GM_R 8
#endif

typedef struct {
    float *dx, *sx, *wd, *wm; /* dx, sx: [t * nb + b]; wd, wm: [b * GM_R + r] */
    int32_t *cx;
} gm_buf;

/* Per token and block of Xq: scale, Q8_1's s, and kc * sum(x). NULL on allocation failure. */
static int gm_prep(const kern__mm *j, int q41, int kc, size_t nb, gm_buf *g) {
    const size_t nt = j->n_tok, xbb = q41 ? 36 : 34, xo = q41 ? 4 : 2;
    float *f = malloc((2 * nt * nb + 2 * nb * GM_R) * sizeof(float));
    int32_t *c = malloc(nt * nb * sizeof(int32_t));
    if (!f || !c) {
        free(f), free(c);
        return -1;
    }
    g->dx = f, g->sx = f + nt * nb, g->wd = f + 2 * nt * nb, g->wm = g->wd + nb * GM_R, g->cx = c;
    for (size_t t = 0; t < nt; t++)
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *xb = j->Xq + t * j->act_bytes + b * xbb;
            g->dx[t * nb + b] = h2f(xb);
            g->sx[t * nb + b] = q41 ? h2f(xb + 2) : 0.0f;
            g->cx[t * nb + b] = kc ? kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + xo)))) : 0;
        }
    return 0;
}

/* The row tile's scales (and Q4_1 mins) as floats, block by block */
static inline void gm_scales(const uint8_t *const w[GM_R], int q41, size_t nb, size_t wbb, gm_buf *g) {
    for (size_t b = 0; b < nb; b++)
        for (int r = 0; r < GM_R; r++) {
            g->wd[b * GM_R + r] = h2f(w[r] + b * wbb);
            if (q41) g->wm[b * GM_R + r] = h2f(w[r] + b * wbb + 2);
        }
}

#if VL == 16
static inline __attribute__((always_inline)) void act_gemm16(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, wbb = type == KERN_TYPE_Q8_0 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes, xo = q41 ? 4 : 2, nt = j->n_tok;
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
    gm_buf g;
    if (gm_prep(j, q41, kc, nb, &g)) { /* no memory: one token at a time, same results */
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            act_gemv16(type, &one, lo, hi);
        }
        return;
    }
    /* the row tile repacked: per block, 8 zmm, zmm k lane r = unsigned bytes 4k..4k+3 of row r */
    __m512i *pk = aligned_alloc(64, nb * 8 * sizeof(__m512i));
    if (!pk) {
        free(g.dx), free(g.cx);
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            act_gemv16(type, &one, lo, hi);
        }
        return;
    }
    for (size_t o = lo; o < hi; o += GM_R) {
        const int R = hi - o < GM_R ? (int)(hi - o) : GM_R;
        const uint8_t *w[GM_R]; /* rows past R repeat the last one: computed, not stored */
        int32_t ofs[GM_R];
        for (int r = 0; r < GM_R; r++) w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * rb, ofs[r] = (int32_t)(w[r] - w[0]);
        gm_scales(w, q41, nb, wbb, &g);
        const __m512i vi = _mm512_loadu_si512(ofs);
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *base = w[0] + b * wbb + xo;
            if (type == KERN_TYPE_Q8_0) {
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++)
                    pk[b * 8 + k] = _mm512_xor_si512(_mm512_i32gather_epi32(vi, base + 4 * k, 1), _mm512_set1_epi8((char)0x80));
            } else {
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    const __m512i q = _mm512_i32gather_epi32(vi, base + 4 * k, 1);
                    pk[b * 8 + k] = _mm512_and_si512(q, _mm512_set1_epi8(0x0f));
                    pk[b * 8 + k + 4] = _mm512_and_si512(_mm512_srli_epi32(q, 4), _mm512_set1_epi8(0x0f));
                }
            }
        }
        for (size_t t0 = 0; t0 < nt; t0 += GM_T) {
            const int T = nt - t0 < GM_T ? (int)(nt - t0) : GM_T;
            size_t tk[GM_T];
            const uint8_t *xr[GM_T];
            for (int t = 0; t < GM_T; t++) tk[t] = t0 + (size_t)(t < T ? t : T - 1), xr[t] = j->Xq + tk[t] * j->act_bytes + xo;
            __m512 sum[GM_T];
#pragma GCC unroll 8
            for (int t = 0; t < GM_T; t++) sum[t] = _mm512_setzero_ps();
            for (size_t b = 0; b < nb; b++) {
                __m512i wv[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) wv[k] = _mm512_load_si512(pk + b * 8 + k);
                const __m512 dw = _mm512_loadu_ps(g.wd + b * GM_R);
#pragma GCC unroll 8
                for (int t = 0; t < GM_T; t++) {
                    const size_t ib = tk[t] * nb + b;
                    const uint8_t *xb = xr[t] + b * xbb;
                    __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++) {
                        int32_t xk;
                        memcpy(&xk, xb + 4 * k, 4);
                        s = _mm512_dpbusd_epi32(s, wv[k], _mm512_set1_epi32(xk));
                    }
                    if (kc) s = _mm512_sub_epi32(s, _mm512_set1_epi32(g.cx[ib]));
                    const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(g.dx[ib])), sf = _mm512_cvtepi32_ps(s);
                    if (q41)
                        sum[t] = _mm512_add_ps(sum[t], _mm512_add_ps(_mm512_mul_ps(dd, sf),
                                                                     _mm512_mul_ps(_mm512_loadu_ps(g.wm + b * GM_R), _mm512_set1_ps(g.sx[ib]))));
                    else
                        sum[t] = _mm512_add_ps(sum[t], _mm512_mul_ps(sf, dd));
                }
            }
            for (int t = 0; t < T; t++) {
                float v[GM_R];
                _mm512_storeu_ps(v, sum[t]);
                for (int r = 0; r < R; r++) j->Y[(t0 + (size_t)t) * j->n_out + o + r] = v[r];
            }
        }
    }
    free(pk), free(g.dx), free(g.cx);
}
#define ACT_GEMM act_gemm16
#else
static inline __attribute__((always_inline)) void act_gemm(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1, q8 = type == KERN_TYPE_Q8_0;
    const size_t nb = j->n_in / CH, wbb = q8 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes, xo = q41 ? 4 : 2, nt = j->n_tok;
    const int kc = type == KERN_TYPE_Q4_0 ? 8 : 0;
    gm_buf g;
    if (gm_prep(j, q41, kc, nb, &g)) { /* no memory: one token at a time, same results */
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            act_gemv(type, &one, lo, hi);
        }
        return;
    }
    for (size_t o = lo; o < hi; o += GM_R) {
        const int R = hi - o < GM_R ? (int)(hi - o) : GM_R;
        const uint8_t *w[GM_R]; /* rows past R repeat the last one: computed, not stored */
        for (int r = 0; r < GM_R; r++) w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * rb;
        gm_scales(w, q41, nb, wbb, &g);
        for (size_t t0 = 0; t0 < nt; t0 += GM_T) {
            const int T = nt - t0 < GM_T ? (int)(nt - t0) : GM_T;
            size_t tk[GM_T];
            const uint8_t *xr[GM_T];
            for (int t = 0; t < GM_T; t++) tk[t] = t0 + (size_t)(t < T ? t : T - 1), xr[t] = j->Xq + tk[t] * j->act_bytes + xo;
            __m256 sum[GM_T];
#pragma GCC unroll 4
            for (int t = 0; t < GM_T; t++) sum[t] = _mm256_setzero_ps();
            for (size_t b = 0; b < nb; b++) {
                const size_t wo = b * wbb;
                __m256i u[GM_R], ws[GM_R];
#pragma GCC unroll 8
                for (int r = 0; r < GM_R; r++) {
                    if (q8) {
                        ws[r] = _mm256_loadu_si256((const __m256i *)(w[r] + wo + 2));
                        u[r] = _mm256_abs_epi8(ws[r]);
                    } else {
                        const __m256i q = _mm256_broadcastsi128_si256(ld128(w[r] + wo + xo));
                        u[r] = _mm256_and_si256(_mm256_blend_epi32(q, _mm256_srli_epi16(q, 4), 0xf0), _mm256_set1_epi8(0x0f));
                    }
                }
                const __m256 dw = _mm256_loadu_ps(g.wd + b * GM_R);
#pragma GCC unroll 4
                for (int t = 0; t < GM_T; t++) {
                    const size_t ib = tk[t] * nb + b;
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(xr[t] + b * xbb));
                    __m256i p[GM_R];
#pragma GCC unroll 8
                    for (int r = 0; r < GM_R; r++) p[r] = IDOT32(u[r], q8 ? _mm256_sign_epi8(x, ws[r]) : x);
                    __m256i s = gv_reduce8(p);
                    if (kc) s = _mm256_sub_epi32(s, _mm256_set1_epi32(g.cx[ib]));
                    const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(g.dx[ib])), sf = _mm256_cvtepi32_ps(s);
                    if (q41)
                        sum[t] = _mm256_add_ps(sum[t], _mm256_add_ps(_mm256_mul_ps(dd, sf),
                                                                     _mm256_mul_ps(_mm256_loadu_ps(g.wm + b * GM_R), _mm256_set1_ps(g.sx[ib]))));
                    else
                        sum[t] = _mm256_add_ps(sum[t], _mm256_mul_ps(sf, dd));
                }
            }
            for (int t = 0; t < T; t++) {
                float v[GM_R];
                _mm256_storeu_ps(v, sum[t]);
                for (int r = 0; r < R; r++) j->Y[(t0 + (size_t)t) * j->n_out + o + r] = v[r];
            }
        }
    }
    free(g.dx), free(g.cx);
}
#define ACT_GEMM act_gemm
#endif

#if VL == 16
#define ACT_GEMV act_gemv16
#else
#define ACT_GEMV act_gemv
#endif
#define ACT_DEF(T)                                                                     \
    static void act_##T(const kern__mm *j, size_t lo, size_t hi) {                     \
        if (j->n_tok == 1) ACT_GEMV(KERN_TYPE_##T, j, lo, hi);                          \
        else ACT_GEMM(KERN_TYPE_##T, j, lo, hi);                                        \
    }
ACT_DEF(Q8_0)
ACT_DEF(Q4_0)
ACT_DEF(Q4_1)

static void mm_act(const kern__mm *j, size_t lo, size_t hi) {
    switch (j->wtype) {
    case KERN_TYPE_Q8_0: act_Q8_0(j, lo, hi); break;
    case KERN_TYPE_Q4_0: act_Q4_0(j, lo, hi); break;
    case KERN_TYPE_Q4_1: act_Q4_1(j, lo, hi); break;
    default: kern__ops_scalar.mm_act(j, lo, hi);
    }
}

/* Activation quantisation (kern_quantize_act_row, bitwise): amax by vector max (order-free),
 * q = x*id rounded to nearest-even by the conversion, as nearbyintf does in the default mode;
 * the integer sum is exact; scales go through the scalar f16 conversion. */
static void quant_act(uint32_t act, const float *x, void *out, size_t n) {
    uint8_t *o = out;
    const size_t hdr = act == KERN_ACT_Q8_1 ? 4 : 2;
    const VF absmask = vand_mask();
    for (size_t b = 0; b < n / CH; b++, x += CH, o += hdr + CH) {
        VF v[NV], m = vzero();
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) v[k] = vload(x + VL * k), m = vmax(m, vand(v[k], absmask));
        const float amax = vhmax(m), d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const VF idv = vset1(id);
        int sum = 0;
#if VL == 8
        __m256i q[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(vmul(v[k], idv));
        sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(o + hdr), p);
#else
        __m512i q0 = _mm512_cvtps_epi32(vmul(v[0], idv)), q1 = _mm512_cvtps_epi32(vmul(v[1], idv));
        sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        _mm_storeu_si128((__m128i *)(o + hdr), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(o + hdr + 16), _mm512_cvtepi32_epi8(q1));
#endif
        uint16_t dh = kern_f32_to_f16(d);
        memcpy(o, &dh, 2);
        if (act == KERN_ACT_Q8_1) {
            uint16_t sh = kern_f32_to_f16((float)sum * d);
            memcpy(o + 2, &sh, 2);
        }
    }
}

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

/* ---- attention over an f16 KV cache (one head; see kern__ops.attn_f16) ----
 * Slots of one KV block are contiguous (stride n_kv_head*head_dim), so positions are walked a
 * block at a time. Scores: F16C-widened K times q (already f16-rounded) with VL-wide FMAs.
 * Softmax: vexp, f32 sum, then each weight rounded to f16 through F16C (bitwise the scalar
 * kern_f32_to_f16 rounding for finite values). V: out accumulated in registers, 4 vectors of
 * head_dim at a time, over every position. */

static void softmax_f16w(float *x, size_t n) {
    VF m = vset1(-INFINITY);
    size_t i = 0;
    for (; i + VL <= n; i += VL) m = vmax(m, vload(x + i));
    float mx = vhmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
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
    for (i = 0; i + VL <= n; i += VL) vstore(x + i, vround_h(vmul(vload(x + i), iv)));
    for (; i < n; i++) x[i] = _cvtsh_ss(kern_f32_to_f16(x[i] * inv));
}

static void attn_f16(float *oh, const float *q, const kern_kv_view *kv, size_t kvh, size_t n_ctx, float scale,
                     float *sc) {
    const size_t hd = kv->head_dim, row = kv->n_kv_head * hd, bs = kv->block_size;
    if (hd % VL || hd > 1024) {
        kern__ops_scalar.attn_f16(oh, q, kv, kvh, n_ctx, scale, sc);
        return;
    }
    const uint16_t *K = (const uint16_t *)kv->k + kvh * hd, *V = (const uint16_t *)kv->v + kvh * hd;
    for (size_t p0 = 0; p0 < n_ctx; p0 += bs) {
        const size_t n = n_ctx - p0 < bs ? n_ctx - p0 : bs;
        const uint16_t *kb = K + (size_t)kv->block_table[p0 / bs] * bs * row;
        for (size_t i = 0; i < n; i++) {
            VF acc = vzero();
            for (size_t d = 0; d < hd; d += VL) acc = vfma(vload_h(kb + i * row + d), vload(q + d), acc);
            sc[p0 + i] = vhsum(acc) * scale;
        }
    }
    softmax_f16w(sc, n_ctx);
    for (size_t d0 = 0; d0 < hd; d0 += 4 * VL) {
        const int nv = hd - d0 < 4 * VL ? (int)((hd - d0) / VL) : 4;
        VF acc[4] = {vzero(), vzero(), vzero(), vzero()};
        for (size_t p0 = 0; p0 < n_ctx; p0 += bs) {
            const size_t n = n_ctx - p0 < bs ? n_ctx - p0 : bs;
            const uint16_t *vb = V + (size_t)kv->block_table[p0 / bs] * bs * row + d0;
            for (size_t i = 0; i < n; i++) {
                const VF a = vset1(sc[p0 + i]);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    if (k < nv) acc[k] = vfma(a, vload_h(vb + i * row + VL * k), acc[k]);
            }
        }
        for (int k = 0; k < nv; k++) vstore(oh + d0 + VL * k, acc[k]);
    }
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

static void swiglu(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + VL <= n; i += VL) {
        VF g = vload(gate + i);
        VF e = vexp(vsub(vzero(), g));
        vstore(out + i, vmul(vdiv(g, vadd(vset1(1.0f), e)), vload(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

#define SIMD_OPS_TABLE(name) {name, mm_f32, mm_act, quant_act, attn_f16, rmsnorm, swiglu, add}
