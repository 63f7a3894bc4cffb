/* simd_tmpl_act.h: the quantised-activation half of simd_tmpl.h (included from it, at this point,
 * with the same VL/VF definitions): 8-bit activation GEMV and GEMM for Q8_0/Q4_0/Q4_1 weights and
 * the activation quantiser. Split out along that seam to keep each file readable; see simd_tmpl.h's
 * opening comment for the per-output arithmetic both halves guarantee. */

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
                sum = _mm256_add_ps(sum, _mm256_fmadd_ps(dd, sf, _mm256_mul_ps(_mm256_cvtph_ps(mh), _mm256_set1_ps(sx[b]))));
            } else {
                sum = _mm256_fmadd_ps(sf, dd, sum);
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
                    sum = _mm512_add_ps(sum, _mm512_fmadd_ps(dd, sf, _mm512_mul_ps(_mm512_cvtph_ps(mh), _mm512_set1_ps(sx[b]))));
                } else {
                    sum = _mm512_fmadd_ps(sf, dd, sum);
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
_Static_assert(GM_R <= 16, "kern__act_scratch_bytes sizes wd and wm for 16-row tiles");

typedef struct {
    float *dx, *sx, *wd, *wm; /* dx, sx: [t * nb + b]; wd, wm: [b * GM_R + r] */
    int32_t *cx;
    void *pk; /* the repacked row tile (AVX-512), 64-byte aligned */
} gm_buf;

/* Carves j->scratch (laid out as kern__act_scratch_bytes says) and fills, per token and block
 * of Xq: scale, Q8_1's s, and kc * sum(x). */
static void gm_prep(const kern__mm *j, int q41, int kc, size_t nb, gm_buf *g) {
    const size_t nt = j->n_tok, xbb = q41 ? 36 : 34, xo = q41 ? 4 : 2;
    g->pk = j->scratch;
    g->dx = (float *)((uint8_t *)j->scratch + nb * 8 * 64), g->sx = g->dx + nt * nb;
    g->wd = g->sx + nt * nb, g->wm = g->wd + nb * 16, g->cx = (int32_t *)(g->wm + nb * 16);
    for (size_t t = 0; t < nt; t++)
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *xb = j->Xq + t * j->act_bytes + b * xbb;
            g->dx[t * nb + b] = h2f(xb);
            g->sx[t * nb + b] = q41 ? h2f(xb + 2) : 0.0f;
            g->cx[t * nb + b] = kc ? kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + xo)))) : 0;
        }
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
/* 16 bytes at offset wo of each of the 16 rows -> q[k] lane r = bytes 4k..4k+3 of row r
 * (a 16 x 4 dword transpose by loads and in-lane unpacks; no gathers) */
static inline __attribute__((always_inline)) void gm_tr16x4(const uint8_t *const w[GM_R], size_t wo, __m512i q[4]) {
    __m512i a[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* 128-bit lane l of a[i]: row 4l + i */
        __m512i v = _mm512_castsi128_si512(ld128(w[i] + wo));
        v = _mm512_inserti32x4(v, ld128(w[4 + i] + wo), 1);
        v = _mm512_inserti32x4(v, ld128(w[8 + i] + wo), 2);
        a[i] = _mm512_inserti32x4(v, ld128(w[12 + i] + wo), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
    q[0] = _mm512_unpacklo_epi64(t0, t2), q[1] = _mm512_unpackhi_epi64(t0, t2);
    q[2] = _mm512_unpacklo_epi64(t1, t3), q[3] = _mm512_unpackhi_epi64(t1, t3);
}

static inline __attribute__((always_inline)) void act_gemm16(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, wbb = type == KERN_TYPE_Q8_0 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes, xo = q41 ? 4 : 2, nt = j->n_tok;
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
    if (!j->scratch) { /* no scratch (no memory): one token at a time, same results */
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            act_gemv16(type, &one, lo, hi);
        }
        return;
    }
    gm_buf g;
    gm_prep(j, q41, kc, nb, &g);
    /* the row tile repacked: per block, 8 zmm, zmm k lane r = unsigned bytes 4k..4k+3 of row r */
    __m512i *pk = g.pk;
    for (size_t o = lo; o < hi; o += GM_R) {
        const int R = hi - o < GM_R ? (int)(hi - o) : GM_R;
        const uint8_t *w[GM_R]; /* rows past R repeat the last one: computed, not stored */
        for (int r = 0; r < GM_R; r++) w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * rb;
        const uint8_t *pf, *pf_end;
        int npf;
        pf_plan(j, o, GM_R, hi, nb, &pf, &pf_end, &npf);
        for (size_t b = 0; b < nb; b++) {
            const size_t wo = b * wbb + xo;
            pf_lines(&pf, pf_end, npf);
            if (type == KERN_TYPE_Q8_0) {
#pragma GCC unroll 2
                for (int hf = 0; hf < 2; hf++) {
                    __m512i q[4];
                    gm_tr16x4(w, wo + 16 * (size_t)hf, q);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; k++) pk[b * 8 + 4 * hf + k] = _mm512_xor_si512(q[k], _mm512_set1_epi8((char)0x80));
                }
            } else {
                __m512i q[4];
                gm_tr16x4(w, wo, q);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    pk[b * 8 + k] = _mm512_and_si512(q[k], _mm512_set1_epi8(0x0f));
                    pk[b * 8 + k + 4] = _mm512_and_si512(_mm512_srli_epi32(q[k], 4), _mm512_set1_epi8(0x0f));
                }
            }
        }
        gm_scales(w, q41, nb, wbb, &g); /* after the repack: the tile's lines are in cache */
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
                        sum[t] = _mm512_add_ps(sum[t], _mm512_fmadd_ps(dd, sf,
                                                                     _mm512_mul_ps(_mm512_loadu_ps(g.wm + b * GM_R), _mm512_set1_ps(g.sx[ib]))));
                    else
                        sum[t] = _mm512_fmadd_ps(sf, dd, sum[t]);
                }
            }
            for (int t = 0; t < T; t++) {
                float v[GM_R];
                _mm512_storeu_ps(v, sum[t]);
                for (int r = 0; r < R; r++) j->Y[(t0 + (size_t)t) * j->n_out + o + r] = v[r];
            }
        }
    }
}
#define ACT_GEMM act_gemm16
#else
static inline __attribute__((always_inline)) void act_gemm(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1, q8 = type == KERN_TYPE_Q8_0;
    const size_t nb = j->n_in / CH, wbb = q8 ? 34 : q41 ? 20 : 18, xbb = q41 ? 36 : 34;
    const size_t rb = j->row_bytes, xo = q41 ? 4 : 2, nt = j->n_tok;
    const int kc = type == KERN_TYPE_Q4_0 ? 8 : 0;
    if (!j->scratch) { /* no scratch (no memory): one token at a time, same results */
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            act_gemv(type, &one, lo, hi);
        }
        return;
    }
    gm_buf g;
    gm_prep(j, q41, kc, nb, &g);
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
                        sum[t] = _mm256_add_ps(sum[t], _mm256_fmadd_ps(dd, sf,
                                                                     _mm256_mul_ps(_mm256_loadu_ps(g.wm + b * GM_R), _mm256_set1_ps(g.sx[ib]))));
                    else
                        sum[t] = _mm256_fmadd_ps(sf, dd, sum[t]);
                }
            }
            for (int t = 0; t < T; t++) {
                float v[GM_R];
                _mm256_storeu_ps(v, sum[t]);
                for (int r = 0; r < R; r++) j->Y[(t0 + (size_t)t) * j->n_out + o + r] = v[r];
            }
        }
    }
}
#define ACT_GEMM act_gemm
#endif

#if VL == 16
/* ---- packed weights (KERN_PACKED; layout in pack.c) ----
 * Block b of a 16-row tile is 4 (Q4) or 8 (Q8_0) zmm of quants, zmm k lane r = row r's bytes
 * 4k..4k+3 (Q4: nibbles; their high halves are elements 16.., i.e. zmm k + 4 once shifted), so
 * vpdpbusd against the broadcast activation bytes 4k..4k+3 accumulates row r's block sum in lane
 * r directly. Integer sums are exact in any order and the float steps per lane are those of
 * act_gemv16 (dd = dw * dx; sum = fma(sf, dd, sum), Q4_1: sum += fma(dd, sf, mw * sx)), so the results are
 * bitwise the plain matrix's. */
#define PK_QB(type) ((type) == KERN_TYPE_Q8_0 ? 512u : 256u) /* Q-plane bytes per block */
#ifndef PK_PF
#define PK_PF 1024 /* GEMV prefetch distance, bytes (512..2048 measured alike) */
#endif

/* Block b's 8 unsigned operands */
static inline __attribute__((always_inline)) void pk_unpack(uint32_t type, const uint8_t *q, __m512i w[8]) {
    if (type == KERN_TYPE_Q8_0) {
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) w[k] = _mm512_loadu_si512(q + 64 * k);
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const __m512i v = _mm512_loadu_si512(q + 64 * k);
        w[k] = _mm512_and_si512(v, m4);
        w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
}

/* Row sums of one block: init (-k * sum(x), or 0) plus the 8 byte dots, in two chains */
static inline __attribute__((always_inline)) __m512i pk_dot(const __m512i w[8], const uint8_t *x, int32_t init) {
    __m512i a = _mm512_set1_epi32(init), c = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        int32_t x0, x1;
        memcpy(&x0, x + 4 * k, 4);
        memcpy(&x1, x + 16 + 4 * k, 4);
        a = _mm512_dpbusd_epi32(a, w[k], _mm512_set1_epi32(x0));
        c = _mm512_dpbusd_epi32(c, w[k + 4], _mm512_set1_epi32(x1));
    }
    return _mm512_add_epi32(a, c);
}

/* the per-lane float step of one block */
static inline __attribute__((always_inline)) __m512 pk_step(__m512 sum, __m512i s, const uint8_t *D, const uint8_t *M,
                                                             float dx, float sx, int q41) {
    const __m512 dd = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)D)), _mm512_set1_ps(dx));
    const __m512 sf = _mm512_cvtepi32_ps(s);
    if (q41)
        return _mm512_add_ps(sum, _mm512_fmadd_ps(dd, sf,
                                                _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)M)), _mm512_set1_ps(sx))));
    return _mm512_fmadd_ps(sf, dd, sum);
}

/* Rows [lo, hi) of pk_gemv: one contiguous byte range, prefetched linearly PK_PF ahead */
static inline __attribute__((always_inline)) void pk_gemv_rows(uint32_t type, const kern__mm *j, size_t lo, size_t hi,
                                                               const float *dx, const float *sx, const int32_t *cx) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, xbb = q41 ? 36 : 34, xo = q41 ? 4 : 2, qb = PK_QB(type);
    const uint8_t *pf = j->W + lo * j->row_bytes + PK_PF, *pf_end = j->W + hi * j->row_bytes;
    const size_t tb = 16 * (j->row_bytes / nb); /* bytes of one block of a tile */
    for (size_t o = lo; o < hi; o += GW_R) {
        const uint8_t *Q = j->W + o * j->row_bytes, *D = Q + nb * qb, *M = D + nb * 32;
        __m512 sum = _mm512_setzero_ps();
        size_t b = 0;
        for (; b + 4 <= nb; b += 4) {
            for (const uint8_t *e = pf + 4 * tb; pf < e; pf += 64)
                if (pf < pf_end) _mm_prefetch((const char *)pf, _MM_HINT_T0);
            __m512i s[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) {
                __m512i w[8];
                pk_unpack(type, Q + (b + u) * qb, w);
                s[u] = pk_dot(w, j->Xq + (b + u) * xbb + xo, cx[b + u]);
            }
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) sum = pk_step(sum, s[u], D + (b + u) * 32, M + (b + u) * 32, dx[b + u], sx[b + u], q41);
        }
        for (; b < nb; b++) {
            __m512i w[8];
            pk_unpack(type, Q + b * qb, w);
            sum = pk_step(sum, pk_dot(w, j->Xq + b * xbb + xo, cx[b]), D + b * 32, M + b * 32, dx[b], sx[b], q41);
        }
        _mm512_storeu_ps(j->Y + o, sum);
    }
}

/* One token: each tile is one contiguous stream (the hardware prefetcher follows it); four
 * blocks' integer sums in flight, then their float steps in block order. */
static inline __attribute__((always_inline)) void pk_gemv(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, xbb = q41 ? 36 : 34, xo = q41 ? 4 : 2;
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
    float dx[GV_MAX_NB], sx[GV_MAX_NB];
    int32_t cx[GV_MAX_NB]; /* -k * sum(x): the start of each block's integer sum */
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *xb = j->Xq + b * xbb;
        dx[b] = h2f(xb);
        sx[b] = q41 ? h2f(xb + 2) : 0.0f;
        cx[b] = kc ? -kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + xo)))) : 0;
    }
    for (size_t r0 = lo, r1 = hi;;) {
        if (j->next) { /* dynamic chunks (kern__mm.next): a quarter of what is left, at least j->chunk */
            size_t c;
            r0 = atomic_load_explicit(j->next, memory_order_relaxed);
            do {
                if (r0 >= hi) break;
                c = (hi - r0) / 4 / 16 * 16;
                if (c < j->chunk) c = j->chunk;
            } while (!atomic_compare_exchange_weak_explicit(j->next, &r0, r0 + c, memory_order_relaxed, memory_order_relaxed));
            if (r0 >= hi) break;
            r1 = r0 + c < hi ? r0 + c : hi;
        }
        pk_gemv_rows(type, j, r0, r1, dx, sx, cx);
        if (!j->next) break;
    }
}

/* More tokens: per row tile, Q4 quants unpacked once into the scratch (Q8_0's are used in
 * place), then tiles of GM_T tokens against it, as act_gemm16. */
#define PK_T 8 /* tokens per tile of the packed GEMM */

/* The packed GEMM's view of X, made once per call: per token tile and block, the 8 groups of
 * 4 activation bytes of the tile's PK_T tokens side by side (group k of token t at int32
 * k * PK_T + t), then per token -k * sum(x), dx and sx: every operand of the inner loop is an
 * embedded broadcast off one pointer. Tokens past n_tok repeat the last one. */
typedef struct {
    int32_t *xq, *cx;
    float *dx, *sx;
} pk_x;

static void pk_prep(const kern__mm *j, int q41, int kc, size_t nb, pk_x *px) {
    const size_t nt = j->n_tok, ntp = (nt + PK_T - 1) / PK_T * PK_T, xbb = q41 ? 36 : 34, xo = q41 ? 4 : 2;
    /* past the plain GEMM's part of the scratch (kern__act_scratch_bytes) */
    uint8_t *base = (uint8_t *)j->scratch + nb * 8 * 64 + (2 * nt * nb + 2 * nb * 16) * sizeof(float) + nt * nb * sizeof(int32_t);
    px->xq = (int32_t *)base, px->cx = px->xq + ntp * nb * 8, px->dx = (float *)(px->cx + ntp * nb), px->sx = px->dx + ntp * nb;
    for (size_t tp = 0; tp < ntp; tp++) {
        const size_t t = tp < nt ? tp : nt - 1, tt = tp / PK_T, ti = tp % PK_T;
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *xb = j->Xq + t * j->act_bytes + b * xbb;
            const size_t tb = tt * nb + b;
            for (int k = 0; k < 8; k++) memcpy(px->xq + (tb * 8 + (size_t)k) * PK_T + ti, xb + xo + 4 * k, 4);
            px->cx[tb * PK_T + ti] = kc ? -kc * hsum_i32(IDOT32(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)(xb + xo)))) : 0;
            px->dx[tb * PK_T + ti] = h2f(xb);
            px->sx[tb * PK_T + ti] = q41 ? h2f(xb + 2) : 0.0f;
        }
    }
}

static inline __attribute__((always_inline)) void pk_gemm(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const int q41 = type == KERN_TYPE_Q4_1;
    const size_t nb = j->n_in / CH, nt = j->n_tok, qb = PK_QB(type);
    const int kc = type == KERN_TYPE_Q8_0 ? 128 : type == KERN_TYPE_Q4_0 ? 8 : 0;
    if (!j->scratch) {
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            pk_gemv(type, &one, lo, hi);
        }
        return;
    }
    pk_x px;
    pk_prep(j, q41, kc, nb, &px);
    __m512i *pk = j->scratch; /* the row tile's unpacked Q4 quants */
    for (size_t o = lo; o < hi; o += GM_R) {
        const uint8_t *Q = j->W + o * j->row_bytes, *D = Q + nb * qb, *M = D + nb * 32;
        const __m512i *wq = (const __m512i *)Q;
        if (type != KERN_TYPE_Q8_0) {
            for (size_t b = 0; b < nb; b++) pk_unpack(type, Q + b * qb, pk + b * 8);
            wq = pk;
        }
        for (size_t t0 = 0; t0 < nt; t0 += PK_T) {
            const int T = nt - t0 < PK_T ? (int)(nt - t0) : PK_T;
            const size_t tb0 = t0 / PK_T * nb;
            __m512 sum[PK_T];
#pragma GCC unroll 8
            for (int t = 0; t < PK_T; t++) sum[t] = _mm512_setzero_ps();
            for (size_t b = 0; b < nb; b++) {
                const size_t tb = tb0 + b;
                const int32_t *xq = px.xq + tb * 8 * PK_T, *cx = px.cx + tb * PK_T;
                const float *dx = px.dx + tb * PK_T, *sx = px.sx + tb * PK_T;
                __m512i wv[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) wv[k] = _mm512_loadu_si512(wq + b * 8 + k);
                const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(D + b * 32)));
                /* k-major: the tokens' dot chains interleave, so independent vpdpbusd are
                 * always ready to issue */
                __m512i s[PK_T];
#pragma GCC unroll 8
                for (int t = 0; t < PK_T; t++) s[t] = _mm512_set1_epi32(cx[t]);
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++)
#pragma GCC unroll 8
                    for (int t = 0; t < PK_T; t++) s[t] = _mm512_dpbusd_epi32(s[t], wv[k], _mm512_set1_epi32(xq[k * PK_T + t]));
#pragma GCC unroll 8
                for (int t = 0; t < PK_T; t++) {
                    const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(dx[t])), sf = _mm512_cvtepi32_ps(s[t]);
                    if (q41) {
                        const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(M + b * 32)));
                        sum[t] = _mm512_add_ps(sum[t], _mm512_fmadd_ps(dd, sf, _mm512_mul_ps(mw, _mm512_set1_ps(sx[t]))));
                    } else {
                        sum[t] = _mm512_fmadd_ps(sf, dd, sum[t]);
                    }
                }
            }
            for (int t = 0; t < T; t++) _mm512_storeu_ps(j->Y + (t0 + (size_t)t) * j->n_out + o, sum[t]);
        }
    }
}

static void mm_packed(const kern__mm *j, size_t lo, size_t hi) {
    switch (j->wtype & ~KERN_PACKED) {
#define PK_CASE(T)                                                                                                     \
    case KERN_TYPE_##T:                                                                                                \
        if (j->n_tok == 1) pk_gemv(KERN_TYPE_##T, j, lo, hi);                                                         \
        else pk_gemm(KERN_TYPE_##T, j, lo, hi);                                                                        \
        break;
        PK_CASE(Q8_0)
        PK_CASE(Q4_0)
        PK_CASE(Q4_1)
#undef PK_CASE
    default: kern__mm_packed_rows(j, lo, hi);
    }
}
#define MM_PACKED mm_packed
#else
#define MM_PACKED NULL
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

#include "kernels/cpu/simd_tmpl_actk.h" /* K-quants: Q8_K activations (actk_*, quant_act_q8k) */

static void mm_act(const kern__mm *j, size_t lo, size_t hi) {
    switch (j->wtype) {
    case KERN_TYPE_Q8_0: act_Q8_0(j, lo, hi); break;
    case KERN_TYPE_Q4_0: act_Q4_0(j, lo, hi); break;
    case KERN_TYPE_Q4_1: act_Q4_1(j, lo, hi); break;
    case KERN_TYPE_Q4_K: actk_Q4_K(j, lo, hi); break;
    case KERN_TYPE_Q5_K: actk_Q5_K(j, lo, hi); break;
    case KERN_TYPE_Q6_K: actk_Q6_K(j, lo, hi); break;
    default: kern__ops_scalar.mm_act(j, lo, hi);
    }
}

/* Activation quantisation (kern_quantize_act_row, bitwise): amax by vector max (order-free),
 * q = x*id rounded to nearest-even by the conversion, as nearbyintf does in the default mode;
 * the integer sum is exact; scales go through the scalar f16 conversion. */
static void quant_act(uint32_t act, const float *x, void *out, size_t n) {
    if (act == KERN_ACT_Q8_K) {
        quant_act_q8k(x, out, n);
        return;
    }
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

