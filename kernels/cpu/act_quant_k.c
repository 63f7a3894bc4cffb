/* The 8-bit activation arithmetic of the K-quants (Q4_K, Q5_K, Q6_K weights against Q8_K
 * activations), as scalar reference code: kern_quantize_act_row and kern_vec_dot_act call in
 * here (act_quant.c), and the SIMD kernels (simd_tmpl_actk.h) must match it bit for bit.
 *
 * Q8_K activation, per 256 values (ggml's quantize_row_q8_K_ref; 292 bytes):
 *   f32 d; int8 qs[256]; int16 bsums[16] (bsums[k] = sum of qs[16k..16k+15])
 *   max = the first x_i of largest magnitude; all zero: d = 0, qs = bsums = 0; else
 *   iscale = -127/max, q_i = min(127, nearest_int(iscale * x_i)) (ties to even), d = 1/iscale
 *   (so d < 0 when max > 0: the sign sits in d, and q of the max is -127).
 *
 * Dot of a weight row with a Q8_K row: per super-block b (in order, sum = 0.0f to start) an
 * exact integer part, then a fixed sequence of float operations:
 *   Q6_K: isum = sum_{j<16} sc_j * sum_{i<16} (q_{16j+i} - 32) * x_{16j+i}   (sc_j int8)
 *         dd = dw * dx;  sum = sum + dd * (float)isum
 *   Q4_K, Q5_K (q = 4- or 5-bit value, sc_j and m_j the 6-bit scale and min of sub-block j):
 *         isc = sum_{j<8} sc_j * sum_{i<32} q_{32j+i} * x_{32j+i}
 *         im  = sum_{j<8} m_j * (bsums_{2j} + bsums_{2j+1})
 *         a = dw * dx;  m = dminw * dx;  sum = sum + (a * (float)isc - m * (float)im)
 * where dw, dminw are the block's f16 scales as floats and dx the activation block's d. Every
 * product and sum above is one IEEE single operation in that order (C11 without contraction),
 * so any kernel that gets the integers right and repeats these steps gets the same bits.
 * The integers fit int32 with room: |isum| <= 16*16*32*127*128 < 2^27 (Q6_K),
 * |isc| <= 8*32*31*127*63 < 2^26, |im| <= 8*63*2*16*127 < 2^21. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* Byte offsets inside a Q8_K block */
enum { Q8K_D = 0, Q8K_QS = 4, Q8K_BSUMS = 4 + KERN_QK_K, Q8K_BYTES = 4 + KERN_QK_K + 2 * KERN_QK_K / 16 };
_Static_assert(Q8K_BYTES == KERN__Q8K_BYTES, "Q8_K block layout");

void kern__quantize_act_q8k(const float *x, void *out, size_t n) {
    uint8_t *o = out;
    for (size_t b = 0; b < n / KERN_QK_K; b++, x += KERN_QK_K, o += Q8K_BYTES) {
        float amax = 0, max = 0;
        for (int i = 0; i < KERN_QK_K; i++)
            if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
        int8_t *q = (int8_t *)(o + Q8K_QS);
        int16_t bs[KERN_QK_K / 16] = {0};
        float d = 0;
        if (amax == 0) {
            memset(q, 0, KERN_QK_K);
        } else {
            const float iscale = -127.0f / max;
            for (int i = 0; i < KERN_QK_K; i++) {
                int v = (int)nearbyintf(iscale * x[i]);
                q[i] = (int8_t)(v < 127 ? v : 127);
                bs[i / 16] = (int16_t)(bs[i / 16] + q[i]);
            }
            d = 1.0f / iscale;
        }
        memcpy(o + Q8K_D, &d, 4);
        memcpy(o + Q8K_BSUMS, bs, sizeof bs);
    }
}

static float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kern_f16_to_f32(h);
}

static float f32_at(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}

static int16_t bsum_at(const uint8_t *xb, int k) {
    int16_t s;
    memcpy(&s, xb + Q8K_BSUMS + 2 * k, 2);
    return s;
}

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (ggml get_scale_min_k4) */
static void scale_min_k4(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63, *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static float dot_q6_k(const uint8_t *w, const uint8_t *x, size_t nb) {
    float sum = 0;
    for (size_t b = 0; b < nb; b++, w += 210, x += Q8K_BYTES) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192), *qx = (const int8_t *)(x + Q8K_QS);
        int32_t isum = 0;
        for (int j = 0; j < 16; j++) {
            int32_t s = 0;
            for (int i = 16 * j; i < 16 * j + 16; i++) { /* element i: see deq_q6_k in quant_ref.c */
                int h = i / 128, k = (i % 128) / 32, l = i % 32;
                int lo = (ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f, hi = (qh[32 * h + l] >> (2 * k)) & 3;
                s += ((lo | (hi << 4)) - 32) * qx[i];
            }
            isum += sc[j] * s;
        }
        const float dd = f16_at(w + 208) * f32_at(x + Q8K_D);
        sum = sum + dd * (float)isum;
    }
    return sum;
}

static float dot_q45_k(const uint8_t *w, const uint8_t *x, size_t nb, int five) {
    const size_t wbb = five ? 176 : 144;
    float sum = 0;
    for (size_t b = 0; b < nb; b++, w += wbb, x += Q8K_BYTES) {
        const uint8_t *qh = w + 16, *qs = five ? qh + 32 : qh;
        const int8_t *qx = (const int8_t *)(x + Q8K_QS);
        int32_t isc = 0, im = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, w + 4, &sc, &m);
            int32_t s = 0;
            for (int l = 0; l < 32; l++) { /* see deq_qk_45 in quant_ref.c */
                int v = (qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0f;
                if (five) v |= ((qh[l] >> j) & 1) << 4;
                s += v * qx[32 * j + l];
            }
            isc += sc * s;
            im += m * (bsum_at(x, 2 * j) + bsum_at(x, 2 * j + 1));
        }
        const float dx = f32_at(x + Q8K_D), a = f16_at(w) * dx, m = f16_at(w + 2) * dx;
        sum = sum + (a * (float)isc - m * (float)im);
    }
    return sum;
}

float kern__vec_dot_act_k(uint32_t wtype, const void *wrow, const void *xq, size_t n) {
    switch (wtype) {
    case KERN_TYPE_Q4_K: return dot_q45_k(wrow, xq, n / KERN_QK_K, 0);
    case KERN_TYPE_Q5_K: return dot_q45_k(wrow, xq, n / KERN_QK_K, 1);
    default: return dot_q6_k(wrow, xq, n / KERN_QK_K);
    }
}
