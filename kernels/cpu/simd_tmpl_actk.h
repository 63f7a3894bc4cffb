/* simd_tmpl_actk.h: the K-quant part of the quantised-activation matmul (included from
 * simd_tmpl_act.h, just before its mm_act, with the same VL/VF definitions): Q4_K, Q5_K and Q6_K
 * weights against Q8_K activations, and the Q8_K activation quantiser.
 *
 * The arithmetic is the one act_quant_k.c defines: per super-block an exact integer sum, then
 * fixed float steps. Here the integer part is SIMD (weights unpacked to unsigned bytes in their
 * natural order, vpmaddubsw against the activation bytes, then vpmaddwd / vpdpwssd with the
 * sub-block scales; Q6_K's -32 and the K4 mins come back through the Q8_K bsums) and the float
 * steps are the reference's, one (row, token) at a time in scalar code, so every output is
 * bitwise the scalar reference's, whatever n_tok or the thread split.
 *
 * One token (decode): act_k_gemv, one row at a time: W is read as one sequential stream and
 * every super-block is unpacked once. More tokens: act_k_gemm, the same per-(row, token) steps
 * with each super-block unpacked once per row and group of tokens. */

#define K8_QS 4   /* byte offset of qs[256] in a Q8_K block */
#define K8_BS 260 /* of bsums[16] */

static inline float ld_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

static inline __m256i ld256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* The 8 scales then the 8 mins of a Q4_K/Q5_K block as 16 bytes (ggml's 12-byte unpacking) */
static inline __m128i k4_scmin(const uint8_t *s) {
    uint32_t u[3], o[4];
    memcpy(u, s, 12);
    o[0] = u[0] & 0x3f3f3f3f;
    o[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    o[2] = u[1] & 0x3f3f3f3f;
    o[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    return _mm_loadu_si128((const __m128i *)o);
}

/* One weight super-block, unpacked: the 256 values (Q4_K/Q5_K 0..31, Q6_K 0..63 before its
 * -32) in order, the int16 scale of every vpmaddubsw output lane, and the int16 factor of every
 * bsums lane (K4: the min m_{k/2}; Q6_K: the scale sc_k). */
typedef struct {
#if VL == 16
    __m512i q[4], s[4]; /* q[c]: values 64c..64c+63 */
#else
    __m256i q[8], s[8]; /* q[c]: values 32c..32c+31 */
#endif
    __m256i c;
    float dw, dm; /* d (and dmin) as floats */
} ksb;

#if VL == 16
static const int16_t q6_sidx[4][32] = {
#define Q6_SIDX(c) {4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, \
                    4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, \
                    4 * c + 2, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3}
    Q6_SIDX(0), Q6_SIDX(1), Q6_SIDX(2), Q6_SIDX(3)
#undef Q6_SIDX
};
#endif

static inline __attribute__((always_inline)) void ksb_unpack(uint32_t type, const uint8_t *w, ksb *u) {
    if (type == KERN_TYPE_Q6_K) {
        const __m128i sc8 = ld128(w + 192);
        const uint8_t *ql = w, *qh = w + 128;
        u->c = _mm256_cvtepi8_epi16(sc8);
        u->dw = h2f(w + 208), u->dm = 0;
#if VL == 16
        const __m512i s32 = _mm512_castsi256_si512(u->c), k0f = _mm512_set1_epi8(0x0f), k30 = _mm512_set1_epi8(0x30);
        /* 16-bit shifts of the qh bytes (bits 4, 5 of a byte only take that byte's bits) */
        const __m512i sha = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16(4), _mm512_set1_epi16(2));
        const __m512i shb = _mm512_mask_blend_epi16(0xffff0000u, _mm512_setzero_si512(), _mm512_set1_epi16(2));
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) { /* values 128h + 32k + l: ql nibble k >> 1 of byte 64h + 32(k & 1) + l, qh bits 2k */
            const __m512i l = _mm512_loadu_si512(ql + 64 * h), hb = _mm512_broadcast_i64x4(ld256(qh + 32 * h));
            u->q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, k0f), _mm512_and_si512(_mm512_sllv_epi16(hb, sha), k30));
            u->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), k0f),
                                              _mm512_and_si512(_mm512_srlv_epi16(hb, shb), k30));
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) /* word i of q[c]'s products: sub-block 4c + i / 8 */
            u->s[c] = _mm512_permutexvar_epi16(_mm512_loadu_si512(q6_sidx[c]), s32);
#else
        const __m256i k0f = _mm256_set1_epi8(0x0f), k30 = _mm256_set1_epi8(0x30);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = ld256(ql + 64 * h), l1 = ld256(ql + 64 * h + 32), hb = ld256(qh + 32 * h);
            u->q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, k0f), _mm256_and_si256(_mm256_slli_epi16(hb, 4), k30));
            u->q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, k0f), _mm256_and_si256(_mm256_slli_epi16(hb, 2), k30));
            u->q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), k0f), _mm256_and_si256(hb, k30));
            u->q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), k0f),
                                              _mm256_and_si256(_mm256_srli_epi16(hb, 2), k30));
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) /* q[c]: sub-blocks 2c (words 0..7) and 2c + 1 */
            u->s[c] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, _mm_set_epi64x(0x0101010101010101ll * (2 * c + 1),
                                                                                   0x0101010101010101ll * (2 * c))));
#endif
        return;
    }
    /* Q4_K, Q5_K: qs byte l of chunk c (32 bytes) holds value 64c + l (low nibble) and 64c + 32 + l */
    const int five = type == KERN_TYPE_Q5_K;
    const uint8_t *qh = w + 16, *qs = five ? w + 48 : w + 16;
    const __m128i scm = k4_scmin(w + 4);
    u->c = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    u->dw = h2f(w), u->dm = h2f(w + 2);
#if VL == 16
    const __m512i s32 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(scm)), k0f = _mm512_set1_epi8(0x0f);
    const __m512i hb = five ? _mm512_broadcast_i64x4(ld256(qh)) : _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512i q = _mm512_broadcast_i64x4(ld256(qs + 32 * c));
        q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xffff0000u, q, 4), k0f);
        if (five) { /* bit 2c of qh[l] for value 64c + l, bit 2c + 1 for 64c + 32 + l */
            const __m512i bit = _mm512_mask_blend_epi8(0xffffffff00000000ull, _mm512_set1_epi8((char)(1 << (2 * c))),
                                                       _mm512_set1_epi8((char)(1 << (2 * c + 1))));
            q = _mm512_or_si512(q, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(hb, bit), _mm512_set1_epi8(16)));
        }
        u->q[c] = q;
        u->s[c] = _mm512_permutexvar_epi16(_mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)(2 * c)),
                                                                   _mm512_set1_epi16((short)(2 * c + 1))),
                                           s32);
    }
#else
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
            u->q[j] = _mm256_or_si256(u->q[j], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit), _mm256_set1_epi8(16)));
        }
        u->s[j] = _mm256_shuffle_epi8(s16, _mm256_set1_epi16((short)(((2 * j + 1) << 8) | (2 * j))));
    }
#endif
}

/* The exact integer sums of one unpacked super-block against one Q8_K block xb:
 * lane 0 = isum (Q6_K) or isc (K4), lane 1 = im (K4). */
static inline __attribute__((always_inline)) __m128i ksb_dot(uint32_t type, const ksb *u, const uint8_t *xb) {
    const uint8_t *xq = xb + K8_QS;
#if VL == 16
    __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++)
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(u->q[c], _mm512_loadu_si512(xq + 64 * c)), u->s[c]);
    __m256i a = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
#else
    __m256i a = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
        a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(u->q[c], ld256(xq + 32 * c)), u->s[c]));
#endif
    __m256i m = _mm256_madd_epi16(ld256(xb + K8_BS), u->c);
    if (type == KERN_TYPE_Q6_K) a = _mm256_sub_epi32(a, _mm256_slli_epi32(m, 5)), m = a; /* the -32 of every value */
    const __m256i t = _mm256_hadd_epi32(a, m);
    const __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    return _mm_hadd_epi32(t4, t4);
}

/* The reference's float steps for one super-block (see act_quant_k.c) */
static inline __attribute__((always_inline)) float ksb_step(uint32_t type, const ksb *u, __m128i is, float dx, float sum) {
    const __m128 f = _mm_cvtepi32_ps(is);
    if (type == KERN_TYPE_Q6_K) {
        const float dd = u->dw * dx;
        return sum + dd * _mm_cvtss_f32(f);
    }
    const float a = u->dw * dx, m = u->dm * dx;
    return sum + (a * _mm_cvtss_f32(f) - m * _mm_cvtss_f32(_mm_shuffle_ps(f, f, 1)));
}

static inline size_t k_block_bytes(uint32_t type) { return type == KERN_TYPE_Q4_K ? 144 : type == KERN_TYPE_Q5_K ? 176 : 210; }

static inline __attribute__((always_inline)) void act_k_gemv(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, wbb = k_block_bytes(type);
    for (size_t o = lo; o < hi; o++) {
        const uint8_t *w = j->W + o * j->row_bytes, *x = j->Xq;
        float sum = 0;
        for (size_t b = 0; b < nb; b++, w += wbb, x += KERN__Q8K_BYTES) {
            ksb u;
            ksb_unpack(type, w, &u);
            sum = ksb_step(type, &u, ksb_dot(type, &u, x), ld_f32(x), sum);
        }
        j->Y[o] = sum;
    }
}

/* n_tok > 1: per row, tokens in groups of GK_T; each super-block is unpacked once per group and
 * meets every token of it, with the chains of the group's tokens kept side by side. */
#define GK_T 16
static inline __attribute__((always_inline)) void act_k_gemm(uint32_t type, const kern__mm *j, size_t lo, size_t hi) {
    const size_t nb = j->n_in / KERN_QK_K, wbb = k_block_bytes(type), nt = j->n_tok, xs = j->act_bytes;
    for (size_t o = lo; o < hi; o++) {
        const uint8_t *row = j->W + o * j->row_bytes;
        for (size_t t0 = 0; t0 < nt; t0 += GK_T) {
            const size_t T = nt - t0 < GK_T ? nt - t0 : GK_T;
            const uint8_t *x = j->Xq + t0 * xs;
            float sum[GK_T] = {0};
            for (size_t b = 0; b < nb; b++) {
                ksb u;
                ksb_unpack(type, row + b * wbb, &u);
                for (size_t t = 0; t < T; t++) {
                    const uint8_t *xb = x + t * xs + b * KERN__Q8K_BYTES;
                    sum[t] = ksb_step(type, &u, ksb_dot(type, &u, xb), ld_f32(xb), sum[t]);
                }
            }
            for (size_t t = 0; t < T; t++) j->Y[(t0 + t) * j->n_out + o] = sum[t];
        }
    }
}

#define ACTK_DEF(T)                                                                    \
    static void actk_##T(const kern__mm *j, size_t lo, size_t hi) {                    \
        if (j->n_tok == 1) act_k_gemv(KERN_TYPE_##T, j, lo, hi);                        \
        else act_k_gemm(KERN_TYPE_##T, j, lo, hi);                                      \
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
        for (int k = 0; k < NK; k++) m = vmax(m, vand(vload(x + VL * k), absmask));
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
            const unsigned hit = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(vand(vload(x + VL * k), absmask), vset1(amax), _CMP_EQ_OQ));
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
            _mm_storeu_si128((__m128i *)(q + 32 * k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(vmul(vload(x + 32 * k), is))));
            _mm_storeu_si128((__m128i *)(q + 32 * k + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(vmul(vload(x + 32 * k + 16), is))));
#else
            __m256i v[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) v[i] = _mm256_cvtps_epi32(vmul(vload(x + 32 * k + 8 * i), is));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
            _mm256_storeu_si256((__m256i *)(q + 32 * k), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#endif
        }
        int16_t bs[16];
        for (int k = 0; k < 8; k++) { /* 4 sums of 8 biased bytes; two make a bsum */
            const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(ld256(q + 32 * k), _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            bs[2 * k] = (int16_t)(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) - 16 * 128);
            bs[2 * k + 1] = (int16_t)(_mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3) - 16 * 128);
        }
        memcpy(o, &d, 4);
        memcpy(o + K8_BS, bs, sizeof bs);
    }
}
