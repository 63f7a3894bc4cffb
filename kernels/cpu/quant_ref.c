/* quant_ref: scalar reference kernels for the quantized row formats of kernels/kern.h.
 *
 * Dequantization and dot follow the per-element definition of each ggml block layout, with
 * the float operations in the same order as ggml's dequantize_row_* (so results are
 * bit-identical to ggml and to gguf-py). kern_dot_ref dequantizes a block and accumulates
 * in double: it is the yardstick the dispatched kernels (quant.c) are tested against.
 *
 * Quantizers: F32/F16/BF16/Q8_0/Q4_0/Q4_1 use exactly the rounding rules of ggml's
 * quantize_row_*_ref. The K-quants (Q4_K/Q5_K/Q6_K) are our own encoders writing ggml's
 * layout: per sub-block a small search over candidate scales with a least-squares refit
 * (like, but simpler than, ggml's make_qkx2_quants), then the sub-block scales are
 * themselves quantized to 6 bits (Q4_K/Q5_K) or int8 (Q6_K) under an f16 super-scale.
 * Blocks are read byte-wise (little-endian), so rows need no alignment. */
#include "kernels/kern.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Byte sizes of the block fields (see the layout table in kern.h). */
enum {
    Q8_0_BYTES = 2 + KERN_QK,
    Q4_0_BYTES = 2 + KERN_QK / 2,
    Q4_1_BYTES = 4 + KERN_QK / 2,
    K_SCALE_BYTES = 12,
    Q4_K_BYTES = 4 + K_SCALE_BYTES + KERN_QK_K / 2,
    Q5_K_BYTES = 4 + K_SCALE_BYTES + KERN_QK_K / 8 + KERN_QK_K / 2,
    Q6_K_BYTES = KERN_QK_K / 2 + KERN_QK_K / 4 + KERN_QK_K / 16 + 2,
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

static float rd_f16(const uint8_t *p) { return kern_f16_to_f32(rd16(p)); }

static _Noreturn void bad_type(const char *fn, uint32_t type) {
    fprintf(stderr, "%s: unsupported tensor type %u (%s)\n", fn, type, kern_type_name(type));
    abort(); /* callers check kern_type_supported at load time: this is a broken invariant */
}

/* The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K/Q5_K:
 * bytes 0-3 low 6 bits = scales 0-3, bytes 4-7 low 6 bits = mins 0-3; for j >= 4 the low
 * 4 bits sit in byte j+4 (scale low nibble, min high nibble) and the high 2 bits in the top
 * bits of bytes j-4 (scale) and j (min). */
static void k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* ---- dequantization, one block each ---- */

static void deq_q8_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int i = 0; i < KERN_QK; i++) y[i] = (float)q[i] * d;
}

static void deq_q4_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const uint8_t *qs = b + 2;
    for (int i = 0; i < KERN_QK / 2; i++) {
        y[i] = (float)((qs[i] & 0x0f) - 8) * d;
        y[i + KERN_QK / 2] = (float)((qs[i] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int i = 0; i < KERN_QK / 2; i++) {
        y[i] = (float)(qs[i] & 0x0f) * d + m;
        y[i + KERN_QK / 2] = (float)(qs[i] >> 4) * d + m;
    }
}

/* Q4_K and Q5_K: 8 sub-blocks of 32; qs byte l of 32-byte chunk c holds sub-block 2c in its
 * low nibble and 2c+1 in its high nibble; for Q5_K bit j of qh[l] is the 5th bit of
 * element l of sub-block j. */
static void deq_qk_45(const uint8_t *b, float *y, int five) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *sc = b + 4;
    const uint8_t *qh = b + 4 + K_SCALE_BYTES;
    const uint8_t *qs = five ? qh + KERN_QK_K / 8 : qh;
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        k_scale_min(j, sc, &s, &m);
        float d1 = d * (float)s, m1 = dmin * (float)m;
        const uint8_t *q = qs + 32 * (j / 2);
        int shift = 4 * (j & 1);
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0x0f;
            if (five) v |= ((qh[l] >> j) & 1) << 4;
            y[32 * j + l] = d1 * (float)v - m1;
        }
    }
}

/* Q6_K: two halves of 128; in half h, element l + 32k (k = 0..3, l < 32) takes its low 4
 * bits from ql[64h + l + 32(k&1)] (low nibble for k < 2, high for k >= 2) and its high 2
 * bits from qh[32h + l] >> 2k; value q - 32 times int8 scale[i / 16] times d. */
static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + KERN_QK_K / 2;
    const int8_t *sc = (const int8_t *)(b + KERN_QK_K / 2 + KERN_QK_K / 4);
    float d = rd_f16(b + Q6_K_BYTES - 2);
    for (int i = 0; i < KERN_QK_K; i++) {
        int h = i / 128, k = (i % 128) / 32, l = i % 32;
        int lo = (ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
        int hi = (qh[32 * h + l] >> (2 * k)) & 3;
        y[i] = d * (float)sc[i / 16] * (float)((lo | (hi << 4)) - 32);
    }
}

/* Dequantizes one block (or one element for the plain types) at b into y. */
static void deq_block(uint32_t type, const uint8_t *b, float *y) {
    switch (type) {
    case KERN_TYPE_F32: memcpy(y, b, 4); break;
    case KERN_TYPE_F16: y[0] = kern_f16_to_f32(rd16(b)); break;
    case KERN_TYPE_BF16: y[0] = kern_bf16_to_f32(rd16(b)); break;
    case KERN_TYPE_Q8_0: deq_q8_0(b, y); break;
    case KERN_TYPE_Q4_0: deq_q4_0(b, y); break;
    case KERN_TYPE_Q4_1: deq_q4_1(b, y); break;
    case KERN_TYPE_Q4_K: deq_qk_45(b, y, 0); break;
    case KERN_TYPE_Q5_K: deq_qk_45(b, y, 1); break;
    case KERN_TYPE_Q6_K: deq_q6_k(b, y); break;
    default: bad_type("kern_dequant_row_ref", type);
    }
}

void kern_dequant_row_ref(uint32_t type, const void *row, float *out, size_t n) {
    if (!kern_type_supported(type)) bad_type("kern_dequant_row_ref", type);
    size_t be = kern_type_block_elems(type), bb = kern_type_block_bytes(type);
    const uint8_t *p = row;
    for (size_t i = 0; i < n / be; i++) deq_block(type, p + i * bb, out + i * be);
}

float kern_dot_ref(uint32_t type, const void *row, const float *x, size_t n) {
    if (!kern_type_supported(type)) bad_type("kern_dot_ref", type);
    size_t be = kern_type_block_elems(type), bb = kern_type_block_bytes(type);
    const uint8_t *p = row;
    float w[KERN_QK_K];
    double sum = 0;
    for (size_t i = 0; i < n / be; i++) {
        deq_block(type, p + i * bb, w);
        for (size_t j = 0; j < be; j++) sum += (double)w[j] * (double)x[i * be + j];
    }
    return (float)sum;
}

/* ---- quantization: the simple formats (ggml's quantize_row_*_ref rules) ---- */

static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0;
    for (int i = 0; i < KERN_QK; i++) amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, kern_f32_to_f16(d));
    for (int i = 0; i < KERN_QK; i++) b[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id);
}

static void quant_q4_0(const float *x, uint8_t *b) {
    float amax = 0, max = 0; /* max: the value with the largest magnitude, sign kept */
    for (int i = 0; i < KERN_QK; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    float d = max / -8.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, kern_f32_to_f16(d));
    for (int i = 0; i < KERN_QK / 2; i++) {
        int q0 = (int)(int8_t)(x[i] * id + 8.5f);
        int q1 = (int)(int8_t)(x[i + KERN_QK / 2] * id + 8.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b[2 + i] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void quant_q4_1(const float *x, uint8_t *b) {
    float min = x[0], max = x[0];
    for (int i = 1; i < KERN_QK; i++) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
    }
    float d = (max - min) / 15.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, kern_f32_to_f16(d));
    wr16(b + 2, kern_f32_to_f16(min));
    for (int i = 0; i < KERN_QK / 2; i++) {
        int q0 = (int)(int8_t)((x[i] - min) * id + 0.5f);
        int q1 = (int)(int8_t)((x[i + KERN_QK / 2] - min) * id + 0.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b[4 + i] = (uint8_t)(q0 | (q1 << 4));
    }
}

/* ---- quantization: K-quant helpers ---- */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Asymmetric fit of n values to scale*L - off with L in [0, nmax], off >= 0 (the layout
 * stores a subtracted min). Tries iscales around nmax/(max-min), refits scale and offset by
 * least squares for each, keeps the lowest squared error. Returns scale; *off the offset. */
static float fit_asym(const float *x, int n, int nmax, float *off) {
    float lo = 0, hi = x[0]; /* the offset can only pull values down: lo <= 0 */
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *off = -lo;
    if (hi <= lo) return 0.0f;
    float best_scale = (hi - lo) / (float)nmax, best_err = INFINITY;
    for (int step = -10; step <= 10; step++) {
        float iscale = ((float)nmax + 0.1f * (float)step) / (hi - lo);
        double sl = 0, sll = 0, sx = 0, slx = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi((int)lrintf(iscale * (x[i] - lo)), 0, nmax);
            sl += l, sll += (double)l * l, sx += x[i], slx += (double)l * x[i];
        }
        double det = n * sll - sl * sl;
        if (det <= 0) continue;
        double scale = (n * slx - sl * sx) / det, mn = (sll * sx - sl * slx) / det;
        if (mn > 0) { /* offset must stay >= 0: refit the scale alone with mn = 0 */
            mn = 0;
            scale = slx / sll;
        }
        double err = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi((int)lrintf(iscale * (x[i] - lo)), 0, nmax);
            double e = scale * l + mn - x[i];
            err += e * e;
        }
        if (err < best_err && scale > 0) {
            best_err = (float)err, best_scale = (float)scale, *off = (float)-mn;
        }
    }
    return best_scale;
}

/* Symmetric fit of n values to scale*L with L in [-nmax, nmax-1]. The largest-magnitude
 * value maps near -nmax (the extra negative level); the scale is refit by least squares. */
static float fit_sym(const float *x, int n, int nmax) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    }
    if (amax == 0.0f) return 0.0f;
    float best_scale = max / (float)-nmax, best_err = INFINITY;
    for (int step = -9; step <= 9; step++) {
        float iscale = -((float)nmax + 0.1f * (float)step) / max;
        double slx = 0, sll = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi((int)lrintf(iscale * x[i]), -nmax, nmax - 1);
            slx += (double)l * x[i], sll += (double)l * l;
        }
        if (sll == 0) continue;
        double scale = slx / sll, err = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi((int)lrintf(iscale * x[i]), -nmax, nmax - 1);
            double e = scale * l - x[i];
            err += e * e;
        }
        if (err < best_err) best_err = (float)err, best_scale = (float)scale;
    }
    return best_scale;
}

/* Packs 6-bit scales ls[8] and mins lm[8] the way k_scale_min unpacks them. */
static void k_pack_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *s) {
    for (int j = 0; j < 4; j++) {
        s[j] = ls[j];
        s[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; j++) {
        s[j + 4] = (uint8_t)((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
        s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        s[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

/* Q4_K (five = 0) and Q5_K (five = 1) super-block encoder. */
static void quant_qk_45(const float *x, uint8_t *b, int five) {
    int nmax = five ? 31 : 15;
    float scale[8], off[8], max_scale = 0, max_off = 0;
    for (int j = 0; j < 8; j++) {
        scale[j] = fit_asym(x + 32 * j, 32, nmax, &off[j]);
        max_scale = fmaxf(max_scale, scale[j]);
        max_off = fmaxf(max_off, off[j]);
    }
    float is = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float im = max_off > 0 ? 63.0f / max_off : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)clampi((int)lrintf(is * scale[j]), 0, 63);
        lm[j] = (uint8_t)clampi((int)lrintf(im * off[j]), 0, 63);
    }
    uint16_t dh = kern_f32_to_f16(max_scale / 63.0f), mh = kern_f32_to_f16(max_off / 63.0f);
    wr16(b, dh);
    wr16(b + 2, mh);
    memset(b + 4, 0, (size_t)(five ? Q5_K_BYTES : Q4_K_BYTES) - 4);
    k_pack_scales(ls, lm, b + 4);
    uint8_t *qh = b + 4 + K_SCALE_BYTES, *qs = five ? qh + KERN_QK_K / 8 : qh;
    float d = kern_f16_to_f32(dh), dmin = kern_f16_to_f32(mh);
    for (int j = 0; j < 8; j++) { /* requantize against the scales actually stored */
        float d1 = d * (float)ls[j], m1 = dmin * (float)lm[j];
        for (int l = 0; l < 32; l++) {
            int v = d1 > 0 ? clampi((int)lrintf((x[32 * j + l] + m1) / d1), 0, nmax) : 0;
            qs[32 * (j / 2) + l] |= (uint8_t)((v & 0x0f) << (4 * (j & 1)));
            if (five) qh[l] |= (uint8_t)((v >> 4) << j);
        }
    }
}

static void quant_q6_k(const float *x, uint8_t *b) {
    float scale[16], max_scale = 0, amax = 0;
    for (int i = 0; i < 16; i++) {
        scale[i] = fit_sym(x + 16 * i, 16, 32);
        if (fabsf(scale[i]) > amax) amax = fabsf(scale[i]), max_scale = scale[i];
    }
    uint8_t *ql = b, *qh = b + KERN_QK_K / 2, *sc = qh + KERN_QK_K / 4;
    memset(b, 0, Q6_K_BYTES);
    float iscale = amax > 0 ? -128.0f / max_scale : 0.0f;
    uint16_t dh = kern_f32_to_f16(amax > 0 ? 1.0f / iscale : 0.0f);
    wr16(b + Q6_K_BYTES - 2, dh);
    float d = kern_f16_to_f32(dh);
    for (int i = 0; i < 16; i++) {
        int ls = clampi((int)lrintf(iscale * scale[i]), -128, 127);
        sc[i] = (uint8_t)(int8_t)ls;
        float d1 = d * (float)ls;
        for (int e = 16 * i; e < 16 * i + 16; e++) {
            int v = d1 != 0.0f ? clampi((int)lrintf(x[e] / d1), -32, 31) + 32 : 32;
            int h = e / 128, k = (e % 128) / 32, l = e % 32;
            ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)((v & 0x0f) << (4 * (k >> 1)));
            qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
        }
    }
}

int kern_quantize_row_ref(uint32_t type, const float *x, void *row, size_t n) {
    size_t be = kern_type_block_elems(type), bb = kern_type_block_bytes(type);
    if (be == 0 || n % be) return -EINVAL;
    uint8_t *p = row;
    for (size_t i = 0; i < n / be; i++, p += bb) {
        const float *xb = x + i * be;
        switch (type) {
        case KERN_TYPE_F32: memcpy(p, xb, 4); break;
        case KERN_TYPE_F16: wr16(p, kern_f32_to_f16(xb[0])); break;
        case KERN_TYPE_BF16: wr16(p, kern_f32_to_bf16(xb[0])); break;
        case KERN_TYPE_Q8_0: quant_q8_0(xb, p); break;
        case KERN_TYPE_Q4_0: quant_q4_0(xb, p); break;
        case KERN_TYPE_Q4_1: quant_q4_1(xb, p); break;
        case KERN_TYPE_Q4_K: quant_qk_45(xb, p, 0); break;
        case KERN_TYPE_Q5_K: quant_qk_45(xb, p, 1); break;
        case KERN_TYPE_Q6_K: quant_q6_k(xb, p); break;
        default: return -EINVAL;
        }
    }
    return 0;
}
