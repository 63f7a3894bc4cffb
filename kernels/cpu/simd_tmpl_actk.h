/* simd_tmpl_actk.h: the K-quant part of the quantised-activation matmul (included from
 * simd_tmpl_act.h, just before its mm_act, with the same VL/VF definitions): Q4_K, Q5_K and Q6_K
 * weights against Q8_K activations, and the Q8_K activation quantiser.
 *
 * The arithmetic is the one act_quant_k.c defines: per super-block an exact integer sum, then
 * fixed float steps. Every kernel here computes the integers exactly (in any order: integer
 * addition is associative) and then repeats the reference's float steps for each (row, token) in
 * the reference's order, in a scalar register or in a lane of its own, so every output is bitwise
 * the scalar reference's, whatever n_tok or the thread split. Q6_K's -32 and the K4 mins come
 * back through the Q8_K bsums.
 *
 * AVX2 (VL 8): one row at a time, each super-block unpacked in registers to unsigned bytes in
 * their natural order, vpmaddubsw against the activation bytes, vpmaddwd with the sub-block
 * scales; the GEMM unpacks a super-block once per tile of rows x tokens.
 * AVX-512 (VL 16): the decode GEMV is one row at a time too (W read as one sequential stream),
 * vpmaddubsw + vpdpwssd, super-blocks in groups of 4 so that their scale unpacking, reductions
 * and float products share vectors; the GEMM repacks 16-row tiles so that lanes are rows and
 * runs vpdpbusd against broadcast activations. */

#define K8_QS 4   /* byte offset of qs[256] in a Q8_K block */
#define K8_BS 260 /* of bsums[16] */

static inline float ld_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

static inline __m256i ld256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

static inline short ld_u16(const uint8_t *p) {
    short h;
    memcpy(&h, p, 2);
    return h;
}

/* The 8 scales then the 8 mins of a Q4_K/Q5_K block as 16 bytes (ggml's 12-byte unpacking, in
 * xmm: low parts by one shuffle, the 2-bit high parts of j >= 4 by another). Reads 16 bytes at s,
 * the 12 scale bytes and 4 of qh/qs: inside the block. */
static inline __m128i k4_scmin(const uint8_t *s) {
    const __m128i v = ld128(s);
    __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    a = _mm_blend_epi32(a, _mm_srli_epi16(a, 4), 8); /* mins 4..7: the high nibbles of bytes 8..11 */
    a = _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    const __m128i b = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    return _mm_or_si128(a, _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30))); /* bits 6, 7 -> 4, 5 */
}

/* Software prefetch KPF bytes ahead of the bytes [p, p + n) about to be read, up to end (this
 * thread's last row): the hardware prefetchers stop at each 4 KiB page of the stream */
#define KPF 4096
static inline __attribute__((always_inline)) void kg_prefetch(const uint8_t *p, size_t n, const uint8_t *end) {
    for (size_t k = 0; k < n; k += 64)
        if (p + KPF + k < end) _mm_prefetch((const char *)(p + KPF + k), _MM_HINT_T0);
}

#if VL == 8
/* ---- AVX2: one row at a time, the super-block unpacked in registers ---- */

/* One weight super-block, unpacked: the 256 values (Q4_K/Q5_K 0..31, Q6_K 0..63 before its
 * -32) in order, the int16 scale of every vpmaddubsw output lane, and the int16 factor of every
 * bsums lane (K4: the min m_{k/2}; Q6_K: the scale sc_k). */
typedef struct {
    __m256i q[8], s[8]; /* q[c]: values 32c..32c+31 */
    __m256i c;
    float dw, dm; /* d (and dmin) as floats */
} ksb;

static inline __attribute__((always_inline)) void ksb_unpack(uint32_t type, const uint8_t *w, ksb *u) {
    if (type == KERN_TYPE_Q6_K) {
        const __m128i sc8 = ld128(w + 192);
        const uint8_t *ql = w, *qh = w + 128;
        u->c = _mm256_cvtepi8_epi16(sc8);
        u->dw = h2f(w + 208), u->dm = 0;
        const __m256i k0f = _mm256_set1_epi8(0x0f), k30 = _mm256_set1_epi8(0x30);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = ld256(ql + 64 * h), l1 = ld256(ql + 64 * h + 32), hb = ld256(qh + 32 * h);
            u->q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, k0f), _mm256_and_si256(_mm256_slli_epi16(hb, 4), k30));
            u->q[4 * h + 1] =
                _mm256_or_si256(_mm256_and_si256(l1, k0f), _mm256_and_si256(_mm256_slli_epi16(hb, 2), k30));
            u->q[4 * h + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), k0f), _mm256_and_si256(hb, k30));
            u->q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), k0f),
                                              _mm256_and_si256(_mm256_srli_epi16(hb, 2), k30));
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) /* q[c]: sub-blocks 2c (words 0..7) and 2c + 1 */
            u->s[c] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
                sc8, _mm_set_epi64x(0x0101010101010101ll * (2 * c + 1), 0x0101010101010101ll * (2 * c))));
        return;
    }
    /* Q4_K, Q5_K: qs byte l of chunk c (32 bytes) holds value 64c + l (low nibble) and 64c + 32 + l */
    const int five = type == KERN_TYPE_Q5_K;
    const uint8_t *qh = w + 16, *qs = five ? w + 48 : w + 16;
    const __m128i scm = k4_scmin(w + 4);
    u->c = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(scm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    u->dw = h2f(w), u->dm = h2f(w + 2);
    const __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm)), k0f = _mm256_set1_epi8(0x0f);
    const __m256i hb = five ? ld256(qh) : _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const __m256i raw = ld256(qs + 32 * c);
        u->q[2 * c] = _mm256_and_si256(raw, k0f);
        u->q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), k0f);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        if (five) { /* bit j of qh[l]: the 16 of value 32j + l */
            const __m256i bit = _mm256_set1_epi8((char)(1 << j));
            u->q[j] = _mm256_or_si256(
                u->q[j], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit), _mm256_set1_epi8(16)));
        }
        u->s[j] = _mm256_shuffle_epi8(s16, _mm256_set1_epi16((short)(((2 * j + 1) << 8) | (2 * j))));
    }
}

/* The exact integer sums of one unpacked super-block against one Q8_K block xb:
 * lane 0 = isum (Q6_K) or isc (K4), lane 1 = im (K4). */
static inline __attribute__((always_inline)) __m128i ksb_dot(uint32_t type, const ksb *u, const uint8_t *xb) {
    const uint8_t *xq = xb + K8_QS;
    __m256i a = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
        a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(u->q[c], ld256(xq + 32 * c)), u->s[c]));
    __m256i m = _mm256_madd_epi16(ld256(xb + K8_BS), u->c);
    if (type == KERN_TYPE_Q6_K) a = _mm256_sub_epi32(a, _mm256_slli_epi32(m, 5)), m = a; /* the -32 of every value */
    const __m256i t = _mm256_hadd_epi32(a, m);
    const __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    return _mm_hadd_epi32(t4, t4);
}

/* The reference's float steps for one super-block (see act_quant_k.c) */
static inline __attribute__((always_inline)) float ksb_step(uint32_t type, const ksb *u, __m128i is, float dx,
                                                            float sum) {
    const __m128 f = _mm_cvtepi32_ps(is);
    if (type == KERN_TYPE_Q6_K) {
        const float dd = u->dw * dx;
        return sum + dd * _mm_cvtss_f32(f);
    }
    const float a = u->dw * dx, m = u->dm * dx;
    return sum + (a * _mm_cvtss_f32(f) - m * _mm_cvtss_f32(_mm_shuffle_ps(f, f, 1)));
}

static inline size_t k_block_bytes(uint32_t type) {
    return type == KERN_TYPE_Q4_K ? 144 : type == KERN_TYPE_Q5_K ? 176 : 210;
}

static inline __attribute__((always_inline)) void act_k_gemv(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, wbb = k_block_bytes(type);
    const uint8_t *pf_end = j->W + hi * j->row_bytes;
    for (size_t o = lo; o < hi; o++) {
        const uint8_t *w = j->W + o * j->row_bytes, *x = j->Xq;
        float sum = 0;
        for (size_t b = 0; b < nb; b++, w += wbb, x += KERN__Q8K_BYTES) {
            ksb u;
            kg_prefetch(w, wbb, pf_end);
            ksb_unpack(type, w, &u);
            sum = ksb_step(type, &u, ksb_dot(type, &u, x), ld_f32(x), sum);
        }
        j->Y[o] = sum;
    }
}

/* n_tok > 1: tiles of GK_R rows x GK_T tokens; each super-block of a row is unpacked once per
 * tile and meets every token of it (the tile's activations stay in L1/L2 across its rows). */
#define GK_R 8
#define GK_T 16
static inline __attribute__((always_inline)) void act_k_gemm(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, wbb = k_block_bytes(type), nt = j->n_tok, xs = j->act_bytes;
    for (size_t o0 = lo; o0 < hi; o0 += GK_R) {
        const size_t R = hi - o0 < GK_R ? hi - o0 : GK_R;
        for (size_t t0 = 0; t0 < nt; t0 += GK_T) {
            const size_t T = nt - t0 < GK_T ? nt - t0 : GK_T;
            const uint8_t *x = j->Xq + t0 * xs;
            float sum[GK_R][GK_T] = {{0}};
            for (size_t b = 0; b < nb; b++)
                for (size_t r = 0; r < R; r++) {
                    ksb u;
                    ksb_unpack(type, j->W + (o0 + r) * j->row_bytes + b * wbb, &u);
                    for (size_t t = 0; t < T; t++) {
                        const uint8_t *xb = x + t * xs + b * KERN__Q8K_BYTES;
                        sum[r][t] = ksb_step(type, &u, ksb_dot(type, &u, xb), ld_f32(xb), sum[r][t]);
                    }
                }
            for (size_t r = 0; r < R; r++)
                for (size_t t = 0; t < T; t++)
                    j->Y[(t0 + t) * j->n_out + o0 + r] = sum[r][t];
        }
    }
}
#define ACTK_GEMM act_k_gemm
#define ACTK_GEMV act_k_gemv

#else /* VL == 16 */

/* AVX-512 decode (one row at a time, super-blocks in groups of KG = 4).
 * Q4_K/Q5_K: one 64-byte load of qs holds chunks 2p and 2p + 1, i.e. (low nibbles) values
 * 128p + l and 128p + 64 + l and (high nibbles) 128p + 32 + l and 128p + 96 + l, l < 32; the
 * activations are copied once per call into that order (kx.x), so a super-block unpacks with
 * two loads, three ands and two shifts. The scales of each nibble vector are sub-blocks
 * (4p, 4p + 2) and (4p + 1, 4p + 3), one vpermw each. Per group of 4 super-blocks: the 12 scale
 * bytes of each unpacked in one zmm, the integer sums reduced by one transpose-add tree (lanes
 * isc0, im0, isc1, im1, ...), and the float steps' products taken lane-wise; then the 4 adds to
 * the row's sum in order, as the reference does. A group past the row's end repeats its last
 * super-block (computed, never added). */
#define KG 4
#define KG_MAX_NB (KERN_MATMUL_MAX_IN / KERN_QK_K + KG)

/* Per-call activation tables of the AVX-512 decode */
typedef struct {
    __attribute__((aligned(64))) int8_t x[KG_MAX_NB * KERN_QK_K]; /* qs; K4: in nibble-vector order */
    int16_t bs[KG_MAX_NB][16]; /* K4: 0 x 8, then the sums of 32 (bsums 2j + 2j+1); Q6_K: the bsums */
    float dx[KG_MAX_NB][2];    /* K4: d, twice */
    float d1[KG_MAX_NB];       /* Q6_K: d */
} kx_tab;

static void kx_prep(int k4, const uint8_t *xq, size_t nb, kx_tab *t) {
    static const int from[8] = {0, 64, 32, 96, 128, 192, 160, 224};
    for (size_t b = 0; b < (nb + KG - 1) / KG * KG; b++) {
        if (b >= nb) { /* the padding of the last group: zeros */
            memset(t->x + 256 * b, 0, 256), memset(t->bs[b], 0, 32), t->dx[b][0] = t->dx[b][1] = t->d1[b] = 0;
            continue;
        }
        const uint8_t *xb = xq + b * KERN__Q8K_BYTES;
        int16_t bs[16];
        memcpy(bs, xb + K8_BS, 32);
        for (int k = 0; k < 8; k++)
            _mm256_store_si256((__m256i *)(t->x + 256 * b + 32 * k), ld256(xb + K8_QS + (k4 ? from[k] : 32 * k)));
        if (k4) {
            for (int k = 0; k < 8; k++)
                t->bs[b][k] = 0, t->bs[b][8 + k] = (int16_t)(bs[2 * k] + bs[2 * k + 1]);
        } else {
            memcpy(t->bs[b], bs, 32);
        }
        t->dx[b][0] = t->dx[b][1] = t->d1[b] = ld_f32(xb);
    }
}

/* vpermw indices: the scale of each word of a nibble vector, from the scale words of two
 * super-blocks (words 0..15: the first, 16..31: the second; o = 0 or 16 picks one).
 * K4: words 0..15 <- sub-block a, 16..31 <- b; Q6_K: word i <- sub-block 4c + i / 8 */
static inline __m512i k4_sidx(int a, int b, int o) {
    return _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)(a + o)), _mm512_set1_epi16((short)(b + o)));
}

static inline __m512i q6_sidx(int c, int o) {
    const __m512i iota =
        _mm512_cvtepu8_epi16(_mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                              21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));
    return _mm512_add_epi16(_mm512_set1_epi16((short)(4 * c + o)), _mm512_srli_epi16(iota, 3));
}

/* k4_scmin on four 16-byte lanes at once */
static inline __m512i k4_scmin4(__m512i v) {
    __m512i a = _mm512_shuffle_epi8(
        v, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11)));
    a = _mm512_mask_srli_epi16(a, 0xc0c0c0c0u, a, 4);
    a = _mm512_and_si512(
        a, _mm512_broadcast_i32x4(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15)));
    const __m512i b = _mm512_shuffle_epi8(
        v, _mm512_broadcast_i32x4(_mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7)));
    return _mm512_or_si512(a, _mm512_and_si512(_mm512_srli_epi16(b, 2), _mm512_set1_epi8(0x30)));
}

/* 16 bytes at each of p[0..3] as the four 128-bit lanes of a zmm */
static inline __m512i ld128x4(const uint8_t *const p[KG]) {
    __m512i v = _mm512_castsi128_si512(ld128(p[0]));
    v = _mm512_inserti32x4(v, ld128(p[1]), 1);
    v = _mm512_inserti32x4(v, ld128(p[2]), 2);
    return _mm512_inserti32x4(v, ld128(p[3]), 3);
}

/* The row's sum += r[0], r[2], ... r[2(ng - 1)] (the even lanes), in order */
static inline float kg_add_even(float sum, __m256 r, int ng) {
    const __m128 lo = _mm256_castps256_ps128(r), hi = _mm256_extractf128_ps(r, 1);
    sum = sum + _mm_cvtss_f32(lo);
    if (ng > 1) sum = sum + _mm_cvtss_f32(_mm_movehl_ps(lo, lo));
    if (ng > 2) sum = sum + _mm_cvtss_f32(hi);
    if (ng > 3) sum = sum + _mm_cvtss_f32(_mm_movehl_ps(hi, hi));
    return sum;
}

static inline uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The group's integer sums: acc[g] (16 lanes) of super-block g's isc, m01 / m23 (halves:
 * super-blocks 0 / 1, 2 / 3) of their im -> isc0, im0, isc1, im1, ... isc3, im3 */
static inline __attribute__((always_inline)) __m256i kg_reduce(const __m512i acc[KG], __m512i m01, __m512i m23) {
    /* 256-bit halves: super-block 2h (low), 2h + 1 (high), 8 lanes each */
    const __m512i x01 =
        _mm512_add_epi32(_mm512_shuffle_i64x2(acc[0], acc[1], 0x44), _mm512_shuffle_i64x2(acc[0], acc[1], 0xee));
    const __m512i x23 =
        _mm512_add_epi32(_mm512_shuffle_i64x2(acc[2], acc[3], 0x44), _mm512_shuffle_i64x2(acc[2], acc[3], 0xee));
    /* 128-bit lanes: isc and im partials, pairs 01 and 23 side by side */
    const __m512i u0 = _mm512_add_epi32(_mm512_unpacklo_epi32(x01, m01), _mm512_unpackhi_epi32(x01, m01));
    const __m512i u1 = _mm512_add_epi32(_mm512_unpacklo_epi32(x23, m23), _mm512_unpackhi_epi32(x23, m23));
    __m512i v = _mm512_add_epi32(_mm512_unpacklo_epi64(u0, u1), _mm512_unpackhi_epi64(u0, u1));
    /* 128-bit lane 0: isc0 im0 isc2 im2, lane 2: isc1 im1 isc3 im3 */
    v = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, 0xb1));
    return _mm512_castsi512_si256(_mm512_permutexvar_epi64(_mm512_setr_epi64(0, 4, 1, 5, 0, 4, 1, 5), v));
}

static inline __attribute__((always_inline)) void act_k4_gemv16(uint32_t type, const kern__mm *j, size_t lo,
                                                                size_t hi) {
    const int five = type == KERN_TYPE_Q5_K;
    const size_t nb = j->n_in / KERN_QK_K, wbb = five ? 176 : 144;
    kx_tab t;
    kx_prep(1, j->Xq, nb, &t);
    const __m512i k0f = _mm512_set1_epi8(0x0f), k16 = _mm512_set1_epi8(16);
    const uint8_t *pf_end = j->W + hi * j->row_bytes;
    for (size_t o = lo; o < hi; o++) {
        const uint8_t *row = j->W + o * j->row_bytes;
        float sum = 0;
        for (size_t b0 = 0; b0 < nb; b0 += KG) {
            const int ng = nb - b0 < KG ? (int)(nb - b0) : KG;
            const uint8_t *w[KG], *ws[KG];
#pragma GCC unroll 4
            for (int g = 0; g < KG; g++)
                w[g] = row + (b0 + (size_t)(g < ng ? g : ng - 1)) * wbb, ws[g] = w[g] + 4;
            kg_prefetch(w[0], KG * wbb, pf_end);
            const __m512i scm = k4_scmin4(ld128x4(ws)); /* lane g: super-block g's 8 scales, 8 mins */
            const __m512i s[2] = {_mm512_cvtepu8_epi16(_mm512_castsi512_si256(scm)),
                                  _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(scm, 1))};
            __m512i acc[KG];
#pragma GCC unroll 4
            for (int g = 0; g < KG; g++) {
                const uint8_t *qs = w[g] + (five ? 48 : 16);
                const int8_t *x = t.x + 256 * (b0 + (size_t)g);
                const __m512i hb = five ? _mm512_broadcast_i64x4(ld256(w[g] + 16)) : _mm512_setzero_si512();
                acc[g] = _mm512_setzero_si512();
#pragma GCC unroll 2
                for (int p = 0; p < 2; p++) {
                    const __m512i q = _mm512_loadu_si512(qs + 64 * p);
                    __m512i ql = _mm512_and_si512(q, k0f), qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), k0f);
                    if (five) { /* the 16 of value 32j + l is bit j of qh[l] */
                        const __mmask64 up = 0xffffffff00000000ull;
                        const __m512i bl = _mm512_mask_blend_epi8(up, _mm512_set1_epi8((char)(1 << (4 * p))),
                                                                  _mm512_set1_epi8((char)(1 << (4 * p + 2))));
                        const __m512i bh = _mm512_mask_blend_epi8(up, _mm512_set1_epi8((char)(1 << (4 * p + 1))),
                                                                  _mm512_set1_epi8((char)(1 << (4 * p + 3))));
                        ql = _mm512_mask_add_epi8(ql, _mm512_test_epi8_mask(hb, bl), ql, k16);
                        qh = _mm512_mask_add_epi8(qh, _mm512_test_epi8_mask(hb, bh), qh, k16);
                    }
                    const __m512i sl = _mm512_permutexvar_epi16(k4_sidx(4 * p, 4 * p + 2, 16 * (g & 1)), s[g / 2]);
                    const __m512i sh = _mm512_permutexvar_epi16(k4_sidx(4 * p + 1, 4 * p + 3, 16 * (g & 1)), s[g / 2]);
                    acc[g] = _mm512_dpwssd_epi32(acc[g], _mm512_maddubs_epi16(ql, _mm512_load_si512(x + 128 * p)), sl);
                    acc[g] =
                        _mm512_dpwssd_epi32(acc[g], _mm512_maddubs_epi16(qh, _mm512_load_si512(x + 128 * p + 64)), sh);
                }
            }
            const __m256 f = _mm256_cvtepi32_ps(kg_reduce(acc, _mm512_madd_epi16(s[0], _mm512_loadu_si512(t.bs[b0])),
                                                          _mm512_madd_epi16(s[1], _mm512_loadu_si512(t.bs[b0 + 2]))));
            /* d, dmin of each super-block: lanes 2g, 2g + 1 */
            const __m256 dm =
                _mm256_cvtph_ps(_mm_setr_epi32((int)ld32(w[0]), (int)ld32(w[1]), (int)ld32(w[2]), (int)ld32(w[3])));
            /* (d * dx) * isc, (dmin * dx) * im; then their difference in the even lanes */
            const __m256 p = _mm256_mul_ps(_mm256_mul_ps(dm, _mm256_loadu_ps(t.dx[b0])), f);
            sum = kg_add_even(sum, _mm256_sub_ps(p, _mm256_movehdup_ps(p)), ng);
        }
        j->Y[o] = sum;
    }
}

/* Q6_K decode, the same scheme with the values in their natural order (x copied as it is): per
 * group, the 16 int8 scales of each super-block widened in one go, the -32 of every value taken
 * back as 32 * sum_k sc_k * bsums_k, and the 4 integer sums reduced by a hadd tree. */
static inline __attribute__((always_inline)) void act_q6_gemv16(const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, wbb = 210;
    kx_tab t;
    kx_prep(0, j->Xq, nb, &t);
    const __m512i k0f = _mm512_set1_epi8(0x0f), k30 = _mm512_set1_epi8(0x30);
    /* 16-bit shifts of the qh bytes (bits 4, 5 of a byte only take that byte's bits) */
    const __m512i sha = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16(4), _mm512_set1_epi16(2));
    const __m512i shb = _mm512_mask_blend_epi16(0xffff0000u, _mm512_setzero_si512(), _mm512_set1_epi16(2));
    const uint8_t *pf_end = j->W + hi * j->row_bytes;
    for (size_t o = lo; o < hi; o++) {
        const uint8_t *row = j->W + o * j->row_bytes;
        float sum = 0;
        for (size_t b0 = 0; b0 < nb; b0 += KG) {
            const int ng = nb - b0 < KG ? (int)(nb - b0) : KG;
            const uint8_t *w[KG], *ws[KG];
            const int8_t *x[KG];
#pragma GCC unroll 4
            for (int g = 0; g < KG; g++) {
                const size_t b = b0 + (size_t)(g < ng ? g : ng - 1);
                w[g] = row + b * wbb, ws[g] = w[g] + 192, x[g] = t.x + 256 * (b0 + (size_t)g);
            }
            kg_prefetch(w[0], KG * wbb, pf_end);
            const __m512i sc = ld128x4(ws); /* lane g: super-block g's 16 scales */
            const __m512i s[2] = {_mm512_cvtepi8_epi16(_mm512_castsi512_si256(sc)),
                                  _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(sc, 1))};
            __m256i v[KG];
#pragma GCC unroll 4
            for (int g = 0; g < KG; g++) {
                const uint8_t *ql = w[g], *qh = w[g] + 128;
                __m512i acc = _mm512_setzero_si512();
                /* values 128h + 32k + l: ql nibble k >> 1 of byte 64h + 32(k & 1) + l, qh bits 2k */
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const __m512i l = _mm512_loadu_si512(ql + 64 * h), hb = _mm512_broadcast_i64x4(ld256(qh + 32 * h));
                    /* (a & 0x0f) | b, b already masked: vpternlogd 0xec */
                    const __m512i q0 =
                        _mm512_ternarylogic_epi32(l, _mm512_and_si512(_mm512_sllv_epi16(hb, sha), k30), k0f, 0xec);
                    const __m512i q1 = _mm512_ternarylogic_epi32(
                        _mm512_srli_epi16(l, 4), _mm512_and_si512(_mm512_srlv_epi16(hb, shb), k30), k0f, 0xec);
                    acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q0, _mm512_load_si512(x[g] + 128 * h)),
                                              _mm512_permutexvar_epi16(q6_sidx(2 * h, 16 * (g & 1)), s[g / 2]));
                    acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q1, _mm512_load_si512(x[g] + 128 * h + 64)),
                                              _mm512_permutexvar_epi16(q6_sidx(2 * h + 1, 16 * (g & 1)), s[g / 2]));
                }
                v[g] = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) { /* the -32: 32 * sum_k sc_k * bsums_k */
                const __m512i m = _mm512_slli_epi32(_mm512_madd_epi16(s[h], _mm512_loadu_si512(t.bs[b0 + 2 * h])), 5);
                v[2 * h] = _mm256_sub_epi32(v[2 * h], _mm512_castsi512_si256(m));
                v[2 * h + 1] = _mm256_sub_epi32(v[2 * h + 1], _mm512_extracti64x4_epi64(m, 1));
            }
            const __m256i r = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            const __m128 f = _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
            const __m128 dw = _mm_cvtph_ps(_mm_setr_epi16(ld_u16(w[0] + 208), ld_u16(w[1] + 208), ld_u16(w[2] + 208),
                                                          ld_u16(w[3] + 208), 0, 0, 0, 0));
            const __m128 p = _mm_mul_ps(_mm_mul_ps(dw, _mm_loadu_ps(t.d1 + b0)), f); /* (d * dx) * isum */
            sum = sum + _mm_cvtss_f32(p);
            if (ng > 1) sum = sum + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1));
            if (ng > 2) sum = sum + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 2));
            if (ng > 3) sum = sum + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 3));
        }
        j->Y[o] = sum;
    }
}

/* AVX-512 GEMM: rows in lanes. A tile of KM_R = 16 rows is repacked once per call into the
 * scratch, super-block by super-block: 64 vectors whose lane r holds values 4i..4i+3 of row r
 * (unsigned: Q4_K 0..15, Q5_K 0..31, Q6_K 0..63), the sub-block scales of the 16 rows as int32
 * lanes (K4: and the mins in int16 pairs), d and dmin as floats. Then for each token, per
 * sub-block: vpdpbusd of the 16 rows' values with the token's 4 activation bytes broadcast
 * (Q6_K starts from -32 * bsum of the sub-block), times the scales (vpmulld), summed: each lane is
 * its row's exact isum (isc); K4's im by vpdpwssd of the min pairs with the token's pairs of
 * sums of 32. The float steps run lane-wise, lane r being row r's own scalar chain, so every
 * (row, token) is bitwise the reference. Tokens in tiles of KM_T (a last partial tile repeats
 * its last token: computed, not stored); the tile's repacked rows stay in L2 across them. */
#define KM_R 16
#define KM_T 8

typedef struct {
    __m512i *pk; /* [64 b + i]: lane r = values 4i..4i+3 of row r */
    __m512i *sc; /* [16 b + j]: lane r = row r's scale of sub-block j; K4: [16 b + 8 + i] = (m_2i, m_2i+1) */
    __m512 *dw;  /* [2 b]: d of each row, [2 b + 1]: dmin */
    float *dx;   /* [t nb + b] */
    int32_t *cx; /* [16 (t nb + b) + k]: Q6_K: -32 bsums_k; K4 (k < 4): sums of 32 2k, 2k+1 as int16 pairs */
} km_buf;

/* 16 bytes at offset off of each of the 16 rows -> q[k] lane r = bytes 4k..4k+3 of row r:
 * simd_tmpl_act.h's transpose (this file is included after it) */
_Static_assert(KM_R == GM_R, "km_tr16x4 is gm_tr16x4");
#define km_tr16x4 gm_tr16x4

/* Carves j->scratch (kern__act_scratch_bytes) and fills the per-token tables */
static void km_prep(uint32_t type, const kern__mm *j, size_t nb, km_buf *m) {
    uint8_t *p = j->scratch;
    m->pk = (__m512i *)p, p += nb * 64 * 64;
    m->sc = (__m512i *)p, p += nb * 16 * 64;
    m->dw = (__m512 *)p, p += nb * 2 * 64;
    m->dx = (float *)p, p += j->n_tok * nb * sizeof(float);
    m->cx = (int32_t *)p;
    for (size_t t = 0; t < j->n_tok; t++)
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *xb = j->Xq + t * j->act_bytes + b * KERN__Q8K_BYTES;
            int16_t bs[16];
            int32_t *c = m->cx + 16 * (t * nb + b);
            memcpy(bs, xb + K8_BS, 32);
            m->dx[t * nb + b] = ld_f32(xb);
            if (type == KERN_TYPE_Q6_K) {
                for (int k = 0; k < 16; k++)
                    c[k] = -32 * bs[k];
            } else {
                for (int k = 0; k < 4; k++)
                    c[k] = (int32_t)((uint32_t)(uint16_t)(bs[4 * k] + bs[4 * k + 1]) |
                                     (uint32_t)(uint16_t)(bs[4 * k + 2] + bs[4 * k + 3]) << 16);
                memset(c + 4, 0, 12 * sizeof(int32_t));
            }
        }
}

/* Super-block b of the tile's rows w[] -> m (see km_buf) */
static inline __attribute__((always_inline)) void km_repack(uint32_t type, const uint8_t *const w[KM_R], size_t b,
                                                            km_buf *m) {
    const __m512i k0f = _mm512_set1_epi8(0x0f), k30 = _mm512_set1_epi8(0x30), kff = _mm512_set1_epi32(0xff);
    __m512i *pk = m->pk + 64 * b, *sc = m->sc + 16 * b, q[4];
    if (type == KERN_TYPE_Q6_K) {
        const size_t off = 210 * b;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
#pragma GCC unroll 2
            for (int s = 0; s < 2; s++) { /* values 128h + 32k + 16s + 4i + e: dword 32h + 8k + 4s + i */
                __m512i l0[4], l1[4];
                km_tr16x4(w, off + 64 * h + 16 * s, l0);
                km_tr16x4(w, off + 64 * h + 32 + 16 * s, l1);
                km_tr16x4(w, off + 128 + 32 * h + 16 * s, q);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    __m512i *d = pk + 32 * h + 4 * s + i;
                    d[0] =
                        _mm512_ternarylogic_epi32(l0[i], _mm512_and_si512(_mm512_slli_epi16(q[i], 4), k30), k0f, 0xec);
                    d[8] =
                        _mm512_ternarylogic_epi32(l1[i], _mm512_and_si512(_mm512_slli_epi16(q[i], 2), k30), k0f, 0xec);
                    d[16] =
                        _mm512_ternarylogic_epi32(_mm512_srli_epi16(l0[i], 4), _mm512_and_si512(q[i], k30), k0f, 0xec);
                    d[24] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l1[i], 4),
                                                      _mm512_and_si512(_mm512_srli_epi16(q[i], 2), k30), k0f, 0xec);
                }
            }
        km_tr16x4(w, off + 192, q); /* q[k] lane r: scales 4k..4k+3 of row r, int8 */
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++)
            sc[k] = _mm512_srai_epi32(_mm512_slli_epi32(q[k / 4], 24 - 8 * (k % 4)), 24);
        uint16_t d[KM_R];
        for (int r = 0; r < KM_R; r++)
            d[r] = (uint16_t)ld_u16(w[r] + off + 208);
        m->dw[2 * b] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
        return;
    }
    const int five = type == KERN_TYPE_Q5_K;
    const size_t off = (five ? 176 : 144) * b, qs = off + (five ? 48 : 16);
    /* qs byte 32c + 16h + 4k + e: values 64c + 16h + 4k + e (low nibble), + 32 (high) */
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            km_tr16x4(w, qs + 32 * c + 16 * h, q);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                pk[16 * c + 4 * h + k] = _mm512_and_si512(q[k], k0f);
                pk[16 * c + 8 + 4 * h + k] = _mm512_and_si512(_mm512_srli_epi16(q[k], 4), k0f);
            }
        }
    if (five)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) { /* bit j of qh[16h + 4k + e]: the 16 of value 32j + 16h + 4k + e */
            km_tr16x4(w, off + 16 + 16 * h, q);
            for (int jj = 0; jj < 8; jj++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    __m512i *d = pk + 8 * jj + 4 * h + k;
                    *d = _mm512_mask_add_epi8(*d, _mm512_test_epi8_mask(q[k], _mm512_set1_epi8((char)(1 << jj))), *d,
                                              _mm512_set1_epi8(16));
                }
        }
    __attribute__((aligned(64))) uint8_t sm[KM_R][16];
    uint32_t dd[KM_R];
    const uint8_t *sp[KM_R];
    for (int r = 0; r < KM_R; r++) {
        _mm_store_si128((__m128i *)sm[r], k4_scmin(w[r] + off + 4));
        dd[r] = ld32(w[r] + off), sp[r] = sm[r];
    }
    km_tr16x4(sp, 0, q); /* q[0], q[1]: scales 0..3, 4..7; q[2], q[3]: mins */
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        sc[k] = _mm512_and_si512(_mm512_srli_epi32(q[k / 4], 8 * (k % 4)), kff);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* (m_2i, m_2i+1): bytes 2(i % 2), +1 of q[2 + i / 2] as int16s */
        const __m512i u = i % 2 ? _mm512_srli_epi32(q[2 + i / 2], 16) : q[2 + i / 2];
        sc[8 + i] = _mm512_or_si512(_mm512_and_si512(u, kff),
                                    _mm512_slli_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0xff00)), 8));
    }
    const __m512i dv = _mm512_loadu_si512(dd);
    m->dw[2 * b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dv));
    m->dw[2 * b + 1] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dv, 16)));
}

static inline __attribute__((always_inline)) void act_k_gemm16(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, nt = j->n_tok;
    const int q6 = type == KERN_TYPE_Q6_K;
    if (!j->scratch) { /* no scratch (no memory): one token at a time, same results */
        for (size_t t = 0; t < nt; t++) {
            kern__mm one = *j;
            one.Xq += t * j->act_bytes, one.Y += t * j->n_out, one.n_tok = 1;
            if (q6)
                act_q6_gemv16(&one, lo, hi);
            else
                act_k4_gemv16(type, &one, lo, hi);
        }
        return;
    }
    km_buf m;
    km_prep(type, j, nb, &m);
    for (size_t o = lo; o < hi; o += KM_R) {
        const int R = hi - o < KM_R ? (int)(hi - o) : KM_R;
        const uint8_t *w[KM_R]; /* rows past R repeat the last one: computed, not stored */
        for (int r = 0; r < KM_R; r++)
            w[r] = j->W + (o + (size_t)(r < R ? r : R - 1)) * j->row_bytes;
        for (size_t b = 0; b < nb; b++)
            km_repack(type, w, b, &m);
        for (size_t t0 = 0; t0 < nt; t0 += KM_T) {
            const int T = nt - t0 < KM_T ? (int)(nt - t0) : KM_T;
            size_t tk[KM_T];
            const uint8_t *xr[KM_T];
            for (int t = 0; t < KM_T; t++)
                tk[t] = t0 + (size_t)(t < T ? t : T - 1), xr[t] = j->Xq + tk[t] * j->act_bytes + K8_QS;
            __m512 sum[KM_T];
#pragma GCC unroll 8
            for (int t = 0; t < KM_T; t++)
                sum[t] = _mm512_setzero_ps();
            for (size_t b = 0; b < nb; b++) {
                const __m512i *pk = m.pk + 64 * b, *sc = m.sc + 16 * b;
                /* sub-blocks of 8 (K4) or 4 (Q6_K) dwords; Q6_K two at a time */
                __m512i acc[KM_T];
#pragma GCC unroll 8
                for (int t = 0; t < KM_T; t++)
                    acc[t] = _mm512_setzero_si512();
#pragma GCC unroll 1
                for (int sb = 0; sb < 8; sb++) {
                    __m512i wv[8];
#pragma GCC unroll 8
                    for (int i = 0; i < 8; i++)
                        wv[i] = _mm512_load_si512(pk + 8 * sb + i);
#pragma GCC unroll 8
                    for (int t = 0; t < KM_T; t++) {
                        const uint8_t *x = xr[t] + b * KERN__Q8K_BYTES + 32 * sb;
                        if (q6) {
                            const int32_t *c = m.cx + 16 * (tk[t] * nb + b) + 2 * sb;
                            __m512i s0 = _mm512_set1_epi32(c[0]), s1 = _mm512_set1_epi32(c[1]);
#pragma GCC unroll 4
                            for (int i = 0; i < 4; i++) {
                                s0 = _mm512_dpbusd_epi32(s0, wv[i], _mm512_set1_epi32((int)ld32(x + 4 * i)));
                                s1 = _mm512_dpbusd_epi32(s1, wv[4 + i], _mm512_set1_epi32((int)ld32(x + 16 + 4 * i)));
                            }
                            acc[t] = _mm512_add_epi32(acc[t], _mm512_add_epi32(_mm512_mullo_epi32(s0, sc[2 * sb]),
                                                                               _mm512_mullo_epi32(s1, sc[2 * sb + 1])));
                        } else {
                            __m512i s0 = _mm512_setzero_si512();
#pragma GCC unroll 8
                            for (int i = 0; i < 8; i++)
                                s0 = _mm512_dpbusd_epi32(s0, wv[i], _mm512_set1_epi32((int)ld32(x + 4 * i)));
                            acc[t] = _mm512_add_epi32(acc[t], _mm512_mullo_epi32(s0, sc[sb]));
                        }
                    }
                }
                const __m512 dw = m.dw[2 * b];
#pragma GCC unroll 8
                for (int t = 0; t < KM_T; t++) {
                    const size_t ib = tk[t] * nb + b;
                    const __m512 dx = _mm512_set1_ps(m.dx[ib]), f = _mm512_cvtepi32_ps(acc[t]);
                    if (q6) {
                        sum[t] = _mm512_add_ps(sum[t], _mm512_mul_ps(_mm512_mul_ps(dw, dx), f));
                    } else {
                        const int32_t *c = m.cx + 16 * ib;
                        __m512i im = _mm512_setzero_si512();
#pragma GCC unroll 4
                        for (int i = 0; i < 4; i++)
                            im = _mm512_dpwssd_epi32(im, sc[8 + i], _mm512_set1_epi32(c[i]));
                        const __m512 a = _mm512_mul_ps(dw, dx), mn = _mm512_mul_ps(m.dw[2 * b + 1], dx);
                        sum[t] = _mm512_add_ps(
                            sum[t], _mm512_sub_ps(_mm512_mul_ps(a, f), _mm512_mul_ps(mn, _mm512_cvtepi32_ps(im))));
                    }
                }
            }
            for (int t = 0; t < T; t++) {
                float v[KM_R];
                _mm512_storeu_ps(v, sum[t]);
                for (int r = 0; r < R; r++)
                    j->Y[(t0 + (size_t)t) * j->n_out + o + r] = v[r];
            }
        }
    }
}
#define ACTK_GEMM act_k_gemm16
#define ACTK_GEMV(t, j, lo, hi) ((t) == KERN_TYPE_Q6_K ? act_q6_gemv16(j, lo, hi) : act_k4_gemv16(t, j, lo, hi))
#endif /* VL */

#define ACTK_DEF(T)                                                                                                    \
    static void actk_##T(const kern__mm *j, size_t lo, size_t hi) {                                                    \
        if (j->n_tok == 1)                                                                                             \
            ACTK_GEMV(KERN_TYPE_##T, j, lo, hi);                                                                       \
        else                                                                                                           \
            ACTK_GEMM(KERN_TYPE_##T, j, lo, hi);                                                                       \
    }
ACTK_DEF(Q4_K)
ACTK_DEF(Q5_K)
ACTK_DEF(Q6_K)

/* Q8_K activation quantisation (kern__quantize_act_q8k, bitwise): amax by vector max, the first
 * value of that magnitude found by compare masks (the reference's strict > keeps the first), the
 * products iscale * x rounded to nearest-even by the conversion (as nearbyintf; |v| <= 127, so
 * the clamp to 127 is a no-op here), bsums by vpsadbw on the bytes biased by 128. */
static void quant_act_q8k(const float *x, void *out, size_t n) {
    uint8_t *o = out;
    enum { NK = KERN_QK_K / VL };
    const VF absmask = vand_mask();
    for (size_t b = 0; b < n / KERN_QK_K; b++, x += KERN_QK_K, o += KERN__Q8K_BYTES) {
        VF m = vzero();
#pragma GCC unroll 32
        for (int k = 0; k < NK; k++)
            m = vmax(m, vand(vload(x + VL * k), absmask));
        const float amax = vhmax(m);
        if (amax == 0) {
            memset(o, 0, KERN__Q8K_BYTES);
            continue;
        }
        int first = 0;
        for (int k = 0; k < NK; k++) {
#if VL == 16
            const unsigned hit = _mm512_cmp_ps_mask(vand(vload(x + VL * k), absmask), vset1(amax), _CMP_EQ_OQ);
#else
            const unsigned hit =
                (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(vand(vload(x + VL * k), absmask), vset1(amax), _CMP_EQ_OQ));
#endif
            if (hit) {
                first = VL * k + __builtin_ctz(hit);
                break;
            }
        }
        const float iscale = -127.0f / x[first], d = 1.0f / iscale;
        const VF is = vset1(iscale);
        uint8_t *q = o + K8_QS;
        for (int k = 0; k < KERN_QK_K / 32; k++) {
#if VL == 16
            _mm_storeu_si128((__m128i *)(q + 32 * k),
                             _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(vmul(vload(x + 32 * k), is))));
            _mm_storeu_si128((__m128i *)(q + 32 * k + 16),
                             _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(vmul(vload(x + 32 * k + 16), is))));
#else
            __m256i v[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                v[i] = _mm256_cvtps_epi32(vmul(vload(x + 32 * k + 8 * i), is));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
            _mm256_storeu_si256((__m256i *)(q + 32 * k),
                                _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#endif
        }
        int16_t bs[16];
        for (int k = 0; k < 8; k++) { /* 4 sums of 8 biased bytes; two make a bsum */
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(ld256(q + 32 * k), _mm256_set1_epi8((char)0x80)),
                                              _mm256_setzero_si256());
            bs[2 * k] = (int16_t)(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) - 16 * 128);
            bs[2 * k + 1] = (int16_t)(_mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3) - 16 * 128);
        }
        memcpy(o, &d, 4);
        memcpy(o + K8_BS, bs, sizeof bs);
    }
}
