/* quant: the dispatched dequantize and dot kernels for the row formats of kernels/kern.h.
 *
 * Portable C with GCC/Clang generic vector types (vector_size(16): 4 floats), no
 * intrinsics: the compiler lowers them to whatever the target has (SSE2 on baseline x86-64,
 * NEON on arm64, wider with -mavx2). Plain loops were not enough: at -O2 GCC's cheap cost
 * model left the byte -> float conversions scalar. Each dot is fused per block (decode and
 * multiply in one pass, no per-element branches) with 4+ independent vector partial sums,
 * and block scales are applied once per block (or sub-block) to those partial sums rather
 * than per element. Bytes are widened with interleave shuffles (punpck* on x86), f16 scales
 * are converted inline without branches. These serve single rows (embeddings, tests); the
 * matmul has its own AVX2/AVX-512 decoders in simd_tmpl.h, chosen at start-up.
 *
 * Dequantization is bit-identical to kern_dequant_row_ref (the same float operations per
 * element); dots differ from kern_dot_ref only by summation order (tested in test_quant). */
#include "kernels/kern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    Q8_0_BYTES = 2 + KERN_QK,
    Q4_0_BYTES = 2 + KERN_QK / 2,
    Q4_1_BYTES = 4 + KERN_QK / 2,
    K_SCALE_BYTES = 12,
    Q4_K_BYTES = 4 + K_SCALE_BYTES + KERN_QK_K / 2,
    Q5_K_BYTES = 4 + K_SCALE_BYTES + KERN_QK_K / 8 + KERN_QK_K / 2,
    Q6_K_BYTES = KERN_QK_K / 2 + KERN_QK_K / 4 + KERN_QK_K / 16 + 2,
};

typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef int16_t i16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef float f32x4 __attribute__((vector_size(16)));

/* Two-input shuffle with constant lane indices (indices >= lanes pick from b). */
#if defined(__clang__)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (__typeof__(a)){__VA_ARGS__})
#endif
/* Interleave the low (LO4) or high (HI4) four 16-bit lanes of a with those of b. */
#define LO4(a, b) SHUF(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define HI4(a, b) SHUF(a, b, 4, 12, 5, 13, 6, 14, 7, 15)

/* ---- scalar and vector helpers ---- */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Branch-free binary16 -> binary32 (same results as kern_f16_to_f32 for every input).
 * Normal numbers: shift exponent and mantissa into place and rescale by 2^-112 to rebias
 * (inf/nan land on exponent 255 because of the extra 0x70 in the exponent offset).
 * Subnormals: put the mantissa under a 0.5 exponent and subtract 0.5, an exact operation. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w; /* exponent and mantissa, sign shifted out */
    float normal = bits_f32((two_w >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
    float subnormal = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    uint32_t mag = two_w < (1u << 27) ? f32_bits(subnormal) : f32_bits(normal);
    return bits_f32(sign | mag);
}

/* The same conversion on 4 lanes holding f16 bits in their low halves. */
static inline f32x4 f16x4_to_f32(u32x4 h) {
    u32x4 w = h << 16;
    u32x4 sign = w & 0x80000000u, two_w = w + w;
    f32x4 normal = (f32x4)((two_w >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
    f32x4 subnormal = (f32x4)((two_w >> 17) | (126u << 23)) - 0.5f;
    u32x4 is_sub = (u32x4)(two_w < (1u << 27)); /* all-ones lanes where subnormal */
    u32x4 mag = (is_sub & (u32x4)subnormal) | (~is_sub & (u32x4)normal);
    return (f32x4)(sign | mag);
}

static inline u8x16 ld_u8(const uint8_t *p) {
    u8x16 v;
    memcpy(&v, p, 16);
    return v;
}

static inline f32x4 ld_f32(const float *p) {
    f32x4 v;
    memcpy(&v, p, 16);
    return v;
}

static inline void st_f32(float *p, f32x4 v) { memcpy(p, &v, 16); }

static inline float hsum(f32x4 a) { return (a[0] + a[1]) + (a[2] + a[3]); }

/* 16 unsigned bytes -> f[0..3] = (float)(v[i] - bias), in order (zero-extending
 * interleaves with a zero vector, then an int32 -> float conversion). */
static inline void widen_u8(u8x16 v, int bias, f32x4 f[4]) {
    const u8x16 z = {0};
    const u16x8 z16 = {0};
    u16x8 lo = (u16x8)SHUF(v, z, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    u16x8 hi = (u16x8)SHUF(v, z, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    f[0] = __builtin_convertvector((i32x4)LO4(lo, z16) - bias, f32x4);
    f[1] = __builtin_convertvector((i32x4)HI4(lo, z16) - bias, f32x4);
    f[2] = __builtin_convertvector((i32x4)LO4(hi, z16) - bias, f32x4);
    f[3] = __builtin_convertvector((i32x4)HI4(hi, z16) - bias, f32x4);
}

/* 16 signed bytes -> 4x4 floats, in order (interleave with itself, arithmetic shift). */
static inline void widen_i8(i8x16 v, f32x4 f[4]) {
    i16x8 lo = (i16x8)SHUF(v, v, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7) >> 8;
    i16x8 hi = (i16x8)SHUF(v, v, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15) >> 8;
    f[0] = __builtin_convertvector((i32x4)SHUF(lo, lo, 0, 0, 1, 1, 2, 2, 3, 3) >> 16, f32x4);
    f[1] = __builtin_convertvector((i32x4)SHUF(lo, lo, 4, 4, 5, 5, 6, 6, 7, 7) >> 16, f32x4);
    f[2] = __builtin_convertvector((i32x4)SHUF(hi, hi, 0, 0, 1, 1, 2, 2, 3, 3) >> 16, f32x4);
    f[3] = __builtin_convertvector((i32x4)SHUF(hi, hi, 4, 4, 5, 5, 6, 6, 7, 7) >> 16, f32x4);
}

/* sum over 16 elements of w*x as 4 lanes, two independent chains */
static inline f32x4 dot16(const f32x4 w[4], const float *x) {
    return (w[0] * ld_f32(x) + w[1] * ld_f32(x + 4)) + (w[2] * ld_f32(x + 8) + w[3] * ld_f32(x + 12));
}

static inline f32x4 sum16(const float *x) {
    return (ld_f32(x) + ld_f32(x + 4)) + (ld_f32(x + 8) + ld_f32(x + 12));
}

/* The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (see quant_ref.c). */
static inline void k_scale_min(int j, const uint8_t *s, float *sc, float *m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static _Noreturn void bad_type(const char *fn, uint32_t type) {
    fprintf(stderr, "%s: unsupported tensor type %u (%s)\n", fn, type, kern_type_name(type));
    abort(); /* callers check kern_type_supported at load time: this is a broken invariant */
}

/* ---- block decoders shared by dot and dequant ---- */

/* Q4_K/Q5_K sub-block j (32 values, 0..15 or 0..31) as two vectors of 16. Chunk j/2 of qs
 * holds it in its low (j even) or high (j odd) nibbles; for Q5_K bit j of qh[l] is the
 * 5th bit of value l. */
static inline void k45_sub(const uint8_t *qs, const u8x16 qh[2], int five, int j, u8x16 q[2]) {
    u8x16 a = ld_u8(qs + 32 * (j / 2)), b = ld_u8(qs + 32 * (j / 2) + 16);
    if (j & 1) {
        a >>= 4, b >>= 4;
    } else {
        a &= 0x0f, b &= 0x0f;
    }
    if (five) {
        const uint8_t bit = (uint8_t)(1u << j);
        a |= (u8x16)((qh[0] & bit) != 0) & 16;
        b |= (u8x16)((qh[1] & bit) != 0) & 16;
    }
    q[0] = a, q[1] = b;
}

/* Q6_K, half h of a block, columns 16g..16g+15: q[k] are the values 0..63 of elements
 * 128h + 32k + 16g + (0..15), whose scale is scales[8h + 2k + g]. */
static inline void q6_group(const uint8_t *b, int h, int g, u8x16 q[4]) {
    u8x16 a = ld_u8(b + 64 * h + 16 * g), c = ld_u8(b + 64 * h + 32 + 16 * g);
    u8x16 hb = ld_u8(b + KERN_QK_K / 2 + 32 * h + 16 * g);
    q[0] = (a & 0x0f) | ((hb & 0x03) << 4);
    q[1] = (c & 0x0f) | ((hb & 0x0c) << 2);
    q[2] = (a >> 4) | (hb & 0x30);
    q[3] = (c >> 4) | ((hb & 0xc0) >> 2);
}

/* ---- dots ---- */

static float dot_f32(const float *w, const float *x, size_t n) {
    f32x4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 += ld_f32(w + i) * ld_f32(x + i);
        a1 += ld_f32(w + i + 4) * ld_f32(x + i + 4);
        a2 += ld_f32(w + i + 8) * ld_f32(x + i + 8);
        a3 += ld_f32(w + i + 12) * ld_f32(x + i + 12);
    }
    float s = hsum((a0 + a1) + (a2 + a3));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

/* 8 f16 or bf16 values (unaligned little-endian) -> two vectors of 4 floats. */
static inline void widen_half(const uint8_t *p, int bf16, f32x4 f[2]) {
    u16x8 h, z = {0};
    memcpy(&h, p, 16);
    if (bf16) { /* bf16 bits become the high half of each 32-bit lane */
        f[0] = (f32x4)LO4(z, h);
        f[1] = (f32x4)HI4(z, h);
    } else {
        f[0] = f16x4_to_f32((u32x4)LO4(h, z));
        f[1] = f16x4_to_f32((u32x4)HI4(h, z));
    }
}

static inline float half_at(const uint8_t *p, int bf16) {
    uint16_t h = rd16(p);
    return bf16 ? bits_f32((uint32_t)h << 16) : f16_to_f32(h);
}

static float dot_half(const uint8_t *row, const float *x, size_t n, int bf16) {
    f32x4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, w[4];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        widen_half(row + 2 * i, bf16, w);
        widen_half(row + 2 * i + 16, bf16, w + 2);
        a0 += w[0] * ld_f32(x + i);
        a1 += w[1] * ld_f32(x + i + 4);
        a2 += w[2] * ld_f32(x + i + 8);
        a3 += w[3] * ld_f32(x + i + 12);
    }
    float s = hsum((a0 + a1) + (a2 + a3));
    for (; i < n; i++) s += half_at(row + 2 * i, bf16) * x[i];
    return s;
}

static float dot_q8_0(const uint8_t *b, const float *x, size_t nb) {
    f32x4 acc = {0}, w[8];
    for (size_t i = 0; i < nb; i++, b += Q8_0_BYTES, x += KERN_QK) {
        i8x16 q0, q1;
        memcpy(&q0, b + 2, 16);
        memcpy(&q1, b + 18, 16);
        widen_i8(q0, w);
        widen_i8(q1, w + 4);
        acc += f16_to_f32(rd16(b)) * (dot16(w, x) + dot16(w + 4, x + 16));
    }
    return hsum(acc);
}

/* Q4_0: d * sum((q-8)*x). Q4_1: d * sum(q*x) + m * sum(x). Low nibbles are elements
 * 0..15, high nibbles 16..31. */
static float dot_q4_01(const uint8_t *b, const float *x, size_t nb, int has_min) {
    const size_t bytes = has_min ? Q4_1_BYTES : Q4_0_BYTES;
    const int bias = has_min ? 0 : 8;
    f32x4 acc = {0}, accm = {0}, lo[4], hi[4];
    for (size_t i = 0; i < nb; i++, b += bytes, x += KERN_QK) {
        u8x16 q = ld_u8(b + (has_min ? 4 : 2));
        widen_u8(q & 0x0f, bias, lo);
        widen_u8(q >> 4, bias, hi);
        acc += f16_to_f32(rd16(b)) * (dot16(lo, x) + dot16(hi, x + 16));
        if (has_min) accm += f16_to_f32(rd16(b + 2)) * (sum16(x) + sum16(x + 16));
    }
    return hsum(acc + accm);
}

/* Q4_K / Q5_K: sub-block j contributes d*sc_j * sum(q*x) - dmin*m_j * sum(x). */
static float dot_qk_45(const uint8_t *b, const float *x, size_t nb, int five) {
    const size_t bytes = five ? Q5_K_BYTES : Q4_K_BYTES;
    f32x4 acc = {0}, accm = {0};
    for (size_t i = 0; i < nb; i++, b += bytes) {
        const uint8_t *qh = b + 4 + K_SCALE_BYTES, *qs = five ? qh + KERN_QK_K / 8 : qh;
        const u8x16 h[2] = {five ? ld_u8(qh) : (u8x16){0}, five ? ld_u8(qh + 16) : (u8x16){0}};
        const float d = f16_to_f32(rd16(b)), dmin = f16_to_f32(rd16(b + 2));
        for (int j = 0; j < 8; j++, x += 32) {
            u8x16 q[2];
            f32x4 w[8];
            float sc, m;
            k45_sub(qs, h, five, j, q);
            widen_u8(q[0], 0, w);
            widen_u8(q[1], 0, w + 4);
            k_scale_min(j, b + 4, &sc, &m);
            acc += (d * sc) * (dot16(w, x) + dot16(w + 4, x + 16));
            accm += (dmin * m) * (sum16(x) + sum16(x + 16));
        }
    }
    return hsum(acc - accm);
}

static float dot_q6_k(const uint8_t *b, const float *x, size_t nb) {
    f32x4 acc0 = {0}, acc1 = {0};
    for (size_t i = 0; i < nb; i++, b += Q6_K_BYTES, x += KERN_QK_K) {
        const int8_t *scale = (const int8_t *)(b + KERN_QK_K / 2 + KERN_QK_K / 4);
        const float d = f16_to_f32(rd16(b + Q6_K_BYTES - 2));
        for (int h = 0; h < 2; h++) {
            for (int g = 0; g < 2; g++) {
                u8x16 q[4];
                f32x4 w[4][4];
                q6_group(b, h, g, q);
                const float *xg = x + 128 * h + 16 * g;
                for (int k = 0; k < 4; k++) widen_u8(q[k], 32, w[k]);
                acc0 += (d * (float)scale[8 * h + g]) * dot16(w[0], xg);
                acc1 += (d * (float)scale[8 * h + 2 + g]) * dot16(w[1], xg + 32);
                acc0 += (d * (float)scale[8 * h + 4 + g]) * dot16(w[2], xg + 64);
                acc1 += (d * (float)scale[8 * h + 6 + g]) * dot16(w[3], xg + 96);
            }
        }
    }
    return hsum(acc0 + acc1);
}

/* ---- dequantization (the same float operations per element as the reference) ---- */

static void deq_half(const uint8_t *row, float *y, size_t n, int bf16) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x4 w[2];
        widen_half(row + 2 * i, bf16, w);
        st_f32(y + i, w[0]);
        st_f32(y + i + 4, w[1]);
    }
    for (; i < n; i++) y[i] = half_at(row + 2 * i, bf16);
}

static void deq_q8_0(const uint8_t *b, float *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, b += Q8_0_BYTES, y += KERN_QK) {
        const float d = f16_to_f32(rd16(b));
        f32x4 w[8];
        i8x16 q0, q1;
        memcpy(&q0, b + 2, 16);
        memcpy(&q1, b + 18, 16);
        widen_i8(q0, w);
        widen_i8(q1, w + 4);
        for (int k = 0; k < 8; k++) st_f32(y + 4 * k, w[k] * d);
    }
}

static void deq_q4_01(const uint8_t *b, float *y, size_t nb, int has_min) {
    const size_t bytes = has_min ? Q4_1_BYTES : Q4_0_BYTES;
    for (size_t i = 0; i < nb; i++, b += bytes, y += KERN_QK) {
        const float d = f16_to_f32(rd16(b)), m = has_min ? f16_to_f32(rd16(b + 2)) : 0.0f;
        u8x16 q = ld_u8(b + (has_min ? 4 : 2));
        f32x4 w[8];
        widen_u8(q & 0x0f, has_min ? 0 : 8, w);
        widen_u8(q >> 4, has_min ? 0 : 8, w + 4);
        if (has_min) {
            for (int k = 0; k < 8; k++) st_f32(y + 4 * k, w[k] * d + m);
        } else {
            for (int k = 0; k < 8; k++) st_f32(y + 4 * k, w[k] * d);
        }
    }
}

static void deq_qk_45(const uint8_t *b, float *y, size_t nb, int five) {
    const size_t bytes = five ? Q5_K_BYTES : Q4_K_BYTES;
    for (size_t i = 0; i < nb; i++, b += bytes) {
        const uint8_t *qh = b + 4 + K_SCALE_BYTES, *qs = five ? qh + KERN_QK_K / 8 : qh;
        const u8x16 h[2] = {five ? ld_u8(qh) : (u8x16){0}, five ? ld_u8(qh + 16) : (u8x16){0}};
        const float d = f16_to_f32(rd16(b)), dmin = f16_to_f32(rd16(b + 2));
        for (int j = 0; j < 8; j++, y += 32) {
            u8x16 q[2];
            f32x4 w[8];
            float sc, m;
            k45_sub(qs, h, five, j, q);
            widen_u8(q[0], 0, w);
            widen_u8(q[1], 0, w + 4);
            k_scale_min(j, b + 4, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            for (int k = 0; k < 8; k++) st_f32(y + 4 * k, d1 * w[k] - m1);
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, b += Q6_K_BYTES, y += KERN_QK_K) {
        const int8_t *scale = (const int8_t *)(b + KERN_QK_K / 2 + KERN_QK_K / 4);
        const float d = f16_to_f32(rd16(b + Q6_K_BYTES - 2));
        for (int h = 0; h < 2; h++) {
            for (int g = 0; g < 2; g++) {
                u8x16 q[4];
                q6_group(b, h, g, q);
                for (int k = 0; k < 4; k++) {
                    f32x4 w[4];
                    widen_u8(q[k], 32, w);
                    const float dk = d * (float)scale[8 * h + 2 * k + g];
                    float *yk = y + 128 * h + 32 * k + 16 * g;
                    for (int v = 0; v < 4; v++) st_f32(yk + 4 * v, dk * w[v]);
                }
            }
        }
    }
}

/* ---- entry points ---- */

void kern_dequant_row(uint32_t type, const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    switch (type) {
    case KERN_TYPE_F32: memcpy(out, row, n * sizeof(float)); break;
    case KERN_TYPE_F16: deq_half(p, out, n, 0); break;
    case KERN_TYPE_BF16: deq_half(p, out, n, 1); break;
    case KERN_TYPE_Q8_0: deq_q8_0(p, out, n / KERN_QK); break;
    case KERN_TYPE_Q4_0: deq_q4_01(p, out, n / KERN_QK, 0); break;
    case KERN_TYPE_Q4_1: deq_q4_01(p, out, n / KERN_QK, 1); break;
    case KERN_TYPE_Q4_K: deq_qk_45(p, out, n / KERN_QK_K, 0); break;
    case KERN_TYPE_Q5_K: deq_qk_45(p, out, n / KERN_QK_K, 1); break;
    case KERN_TYPE_Q6_K: deq_q6_k(p, out, n / KERN_QK_K); break;
    default: bad_type("kern_dequant_row", type);
    }
}

float kern_dot(uint32_t type, const void *row, const float *x, size_t n) {
    const uint8_t *p = row;
    switch (type) {
    case KERN_TYPE_F32: return dot_f32(row, x, n);
    case KERN_TYPE_F16: return dot_half(p, x, n, 0);
    case KERN_TYPE_BF16: return dot_half(p, x, n, 1);
    case KERN_TYPE_Q8_0: return dot_q8_0(p, x, n / KERN_QK);
    case KERN_TYPE_Q4_0: return dot_q4_01(p, x, n / KERN_QK, 0);
    case KERN_TYPE_Q4_1: return dot_q4_01(p, x, n / KERN_QK, 1);
    case KERN_TYPE_Q4_K: return dot_qk_45(p, x, n / KERN_QK_K, 0);
    case KERN_TYPE_Q5_K: return dot_qk_45(p, x, n / KERN_QK_K, 1);
    case KERN_TYPE_Q6_K: return dot_q6_k(p, x, n / KERN_QK_K);
    default: bad_type("kern_dot", type);
    }
}

void kern_dot_rows(uint32_t type, const void *rows, size_t row_stride_bytes, size_t n_rows,
                   const float *x, size_t n, float *out) {
    const uint8_t *p = rows;
    for (size_t r = 0; r < n_rows; r++) out[r] = kern_dot(type, p + r * row_stride_bytes, x, n);
}
