/* Activation quantisation and the integer block dots that pair with it (see kern_matmul in
 * kernels/kern.h). Activations are quantised as ggml's CPU backend does (block by block, same
 * rounding), so tokd's 8-bit arithmetic tracks llama.cpp's for Q4_0/Q4_1/Q8_0 models:
 *   Q8_0 act: d = max|x|/127, q = rint(x*127/max)             (f16 d)
 *   Q8_1 act: as Q8_0, plus s = d * sum(q)                     (f16 d, f16 s)
 * Each block's integer sum is exact; the float steps per block are one fused multiply-add
 * (one rounding, as ggml's x86 kernels accumulate; the order of blocks is the row's):
 *   Q8_0 w . Q8_0 x: sum = fma(sum_i qw*qx, dw*dx, sum)
 *   Q4_0 w . Q8_0 x: sum = fma(sum_i (n-8)*qx, dw*dx, sum)
 *   Q4_1 w . Q8_1 x: sum = sum + fma(dw*dx, sum_i n*qx, mw*sx)
 * Every SIMD kernel runs exactly these steps per (row, token), so results are bitwise the
 * same at any batch size, thread split or ISA level. The K-quants (Q8_K activations) have
 * theirs in act_quant_k.c. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/kern.h"

uint32_t kern_act_type(uint32_t wtype) {
    switch (wtype) {
    case KERN_TYPE_Q8_0:
    case KERN_TYPE_Q4_0: return KERN_TYPE_Q8_0;
    case KERN_TYPE_Q4_1: return KERN_ACT_Q8_1;
    case KERN_TYPE_Q4_K:
    case KERN_TYPE_Q5_K:
    case KERN_TYPE_Q6_K: return KERN_ACT_Q8_K;
    default: return KERN_TYPE_F32;
    }
}

size_t kern_act_row_bytes(uint32_t act_type, size_t n) {
    if (act_type == KERN_TYPE_Q8_0) return n / KERN_QK * 34;
    if (act_type == KERN_ACT_Q8_1) return n / KERN_QK * 36;
    if (act_type == KERN_ACT_Q8_K) return n / KERN_QK_K * KERN__Q8K_BYTES;
    return n * sizeof(float);
}

void kern_quantize_act_row(uint32_t act_type, const float *x, void *out, size_t n) {
    if (act_type == KERN_ACT_Q8_K) {
        kern__quantize_act_q8k(x, out, n);
        return;
    }
    uint8_t *o = out;
    size_t hdr = act_type == KERN_ACT_Q8_1 ? 4 : 2;
    for (size_t b = 0; b < n / KERN_QK; b++, x += KERN_QK, o += hdr + KERN_QK) {
        float amax = 0;
        for (int i = 0; i < KERN_QK; i++) amax = fmaxf(amax, fabsf(x[i]));
        /* as ggml's x86 SIMD path: multiplier 127/max, round half to even */
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        int8_t *q = (int8_t *)(o + hdr);
        for (int i = 0; i < KERN_QK; i++) {
            q[i] = (int8_t)nearbyintf(x[i] * id);
            sum += q[i];
        }
        uint16_t dh = kern_f32_to_f16(d);
        memcpy(o, &dh, 2);
        if (act_type == KERN_ACT_Q8_1) {
            uint16_t sh = kern_f32_to_f16((float)sum * d);
            memcpy(o + 2, &sh, 2);
        }
    }
}

static float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kern_f16_to_f32(h);
}

static float dot_q8_0(const uint8_t *w, const uint8_t *x, size_t nb) {
    float sum = 0;
    for (size_t b = 0; b < nb; b++, w += 34, x += 34) {
        const int8_t *qw = (const int8_t *)(w + 2), *qx = (const int8_t *)(x + 2);
        int s = 0;
        for (int i = 0; i < KERN_QK; i++) s += qw[i] * qx[i];
        sum = fmaf((float)s, f16_at(w) * f16_at(x), sum);
    }
    return sum;
}

static float dot_q4_0(const uint8_t *w, const uint8_t *x, size_t nb) {
    float sum = 0;
    for (size_t b = 0; b < nb; b++, w += 18, x += 34) {
        const uint8_t *qw = w + 2;
        const int8_t *qx = (const int8_t *)(x + 2);
        int s = 0;
        for (int i = 0; i < KERN_QK / 2; i++)
            s += ((qw[i] & 0x0f) - 8) * qx[i] + ((qw[i] >> 4) - 8) * qx[i + KERN_QK / 2];
        sum = fmaf((float)s, f16_at(w) * f16_at(x), sum);
    }
    return sum;
}

static float dot_q4_1(const uint8_t *w, const uint8_t *x, size_t nb) {
    float sum = 0;
    for (size_t b = 0; b < nb; b++, w += 20, x += 36) {
        const uint8_t *qw = w + 4;
        const int8_t *qx = (const int8_t *)(x + 4);
        int s = 0;
        for (int i = 0; i < KERN_QK / 2; i++) s += (qw[i] & 0x0f) * qx[i] + (qw[i] >> 4) * qx[i + KERN_QK / 2];
        sum += fmaf(f16_at(w) * f16_at(x), (float)s, f16_at(w + 2) * f16_at(x + 2));
    }
    return sum;
}

float kern_vec_dot_act(uint32_t wtype, const void *wrow, const void *xq, size_t n) {
    switch (wtype) {
    case KERN_TYPE_Q8_0: return dot_q8_0(wrow, xq, n / KERN_QK);
    case KERN_TYPE_Q4_0: return dot_q4_0(wrow, xq, n / KERN_QK);
    case KERN_TYPE_Q4_1: return dot_q4_1(wrow, xq, n / KERN_QK);
    case KERN_TYPE_Q4_K:
    case KERN_TYPE_Q5_K:
    case KERN_TYPE_Q6_K: return kern__vec_dot_act_k(wtype, wrow, xq, n);
    default: return kern_dot_ref(wtype, wrow, xq, n);
    }
}
