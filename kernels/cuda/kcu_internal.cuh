/* Internals shared by the CUDA source files: error reporting, the device view of a
 * weight, and the per-type decoders that turn one "group" of a weight row into floats. A group
 * is what one thread decodes at a time: 4 (F32) or 8 (F16/BF16) values read with one 16-byte
 * load, or 1 value when the rows are not 16-byte aligned; 16 quants of Q8_0 (one 16-byte load of
 * the quant plane); one 32-block of Q4_0/Q4_1 (one 16-byte load); one 32-element sub-block of a
 * K-quant super-block. The decoders compute exactly what kernels/cpu/quant_ref.c computes. */
#ifndef KERNELS_CUDA_KCU_INTERNAL_CUH
#define KERNELS_CUDA_KCU_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kernels/cuda/kern_cuda.h"
#include "kernels/kern.h"
}

/* Sets the thread's last error message; returns code. */
int kcu__fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KCU_TRY(call, what)                                                                           \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) return kcu__fail(KCU_ERR_CUDA, "%s: %s", (what), cudaGetErrorString(e_)); \
    } while (0)

#define KCU_LAUNCHED(what)                                                                                \
    do {                                                                                                  \
        cudaError_t e_ = cudaGetLastError();                                                              \
        if (e_ != cudaSuccess) return kcu__fail(KCU_ERR_CUDA, "%s: launch: %s", (what), cudaGetErrorString(e_)); \
    } while (0)

/* Grid size for n items of `per_block`, at most 2^31-1 blocks (callers grid-stride beyond). */
static inline unsigned kcu__blocks(size_t n, unsigned per_block) {
    size_t b = (n + per_block - 1) / per_block;
    if (b == 0) b = 1;
    return b > 0x7fffffffu ? 0x7fffffffu : (unsigned)b;
}

/* Device view of a kcu_weight. */
struct kcu__w {
    const uint8_t *q, *s;
    uint64_t n_in, n_out;
    uint64_t row_bytes; /* bytes of one row of q */
};

/* Bytes of one row of the quant plane (see kern_cuda.h). */
static inline uint64_t kcu__q_row_bytes(uint32_t type, uint64_t n_in) {
    switch (type) {
    case KERN_TYPE_F32: return n_in * 4;
    case KERN_TYPE_F16:
    case KERN_TYPE_BF16: return n_in * 2;
    case KERN_TYPE_Q8_0: return n_in;
    case KERN_TYPE_Q4_0:
    case KERN_TYPE_Q4_1: return n_in / 2;
    case KERN_TYPE_Q4_K: return n_in / 256 * 144;
    case KERN_TYPE_Q5_K: return n_in / 256 * 176;
    case KERN_TYPE_Q6_K: return n_in / 256 * 192; /* ql | qh; scales and d in the scale plane */
    default: return 0;
    }
}

static inline kcu__w kcu__view(const kcu_weight *w) {
    kcu__w v;
    v.q = (const uint8_t *)w->q;
    v.s = (const uint8_t *)w->s;
    v.n_in = w->n_in;
    v.n_out = w->n_out;
    v.row_bytes = kcu__q_row_bytes(w->type, w->n_in);
    return v;
}

/* Elements per group; vec: rows are 16-byte aligned (plain types only). */
__host__ __device__ constexpr int kcu__ge(int type, bool vec) {
    return type == KERN_TYPE_F32                              ? (vec ? 4 : 1)
           : (type == KERN_TYPE_F16 || type == KERN_TYPE_BF16) ? (vec ? 8 : 1)
           : type == KERN_TYPE_Q8_0                            ? 16
                                                               : 32;
}

__device__ __forceinline__ float kcu__h2f(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)(h & 0xffffu))); }
__device__ __forceinline__ float kcu__bf2f(uint32_t h) { return __uint_as_float((h & 0xffffu) << 16); }
__device__ __forceinline__ uint32_t kcu__byte(const uint32_t *u, int i) { return (u[i >> 2] >> (8 * (i & 3))) & 0xffu; }
__device__ __forceinline__ uint32_t kcu__rd16(const uint8_t *p) { return *(const uint16_t *)p; } /* p 2-aligned */

/* Small unsigned ints to float without I2F (a quarter-rate instruction): the int is placed in
 * the mantissa of 2^23 and 2^23 + off subtracted, which is exact for values below 2^23, so the
 * result is bitwise (float)(v - off). kcu__bytef takes byte i of u (one PRMT). */
__device__ __forceinline__ float kcu__u2f(uint32_t v, float off) { return __uint_as_float(0x4B000000u | v) - (8388608.0f + off); }
__device__ __forceinline__ float kcu__bytef(uint32_t u, int i, float off) {
    return __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650u | (uint32_t)i)) - (8388608.0f + off);
}

__device__ __forceinline__ void kcu__ld16(const uint8_t *p, uint32_t *u) { /* p 16-aligned */
    uint4 a = *(const uint4 *)p;
    u[0] = a.x, u[1] = a.y, u[2] = a.z, u[3] = a.w;
}

/* Scale and min of sub-block j of a Q4_K/Q5_K super-block (as k_scale_min in quant_ref.c). */
__device__ __forceinline__ void kcu__scale_min(int j, const uint8_t *s, float *sc, float *m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Decodes group g of row `row` into v[kcu__ge(TYPE, VEC)]. */
template <int TYPE, bool VEC>
__device__ __forceinline__ void kcu__decode(const kcu__w &w, uint64_t row, uint64_t g, float *v) {
    const uint8_t *rq = w.q + row * w.row_bytes;
    if constexpr (TYPE == KERN_TYPE_F32) {
        if constexpr (VEC) {
            float4 a = reinterpret_cast<const float4 *>(rq)[g];
            v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        } else {
            v[0] = reinterpret_cast<const float *>(rq)[g];
        }
    } else if constexpr (TYPE == KERN_TYPE_F16 || TYPE == KERN_TYPE_BF16) {
        if constexpr (VEC) {
            uint32_t u[4];
            kcu__ld16(rq + g * 16, u);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                v[2 * j] = TYPE == KERN_TYPE_F16 ? kcu__h2f(u[j]) : kcu__bf2f(u[j]);
                v[2 * j + 1] = TYPE == KERN_TYPE_F16 ? kcu__h2f(u[j] >> 16) : kcu__bf2f(u[j] >> 16);
            }
        } else {
            uint32_t h = reinterpret_cast<const uint16_t *>(rq)[g];
            v[0] = TYPE == KERN_TYPE_F16 ? kcu__h2f(h) : kcu__bf2f(h);
        }
    } else if constexpr (TYPE == KERN_TYPE_Q8_0) {
        uint32_t u[4];
        kcu__ld16(rq + g * 16, u);
        float d = kcu__h2f(reinterpret_cast<const uint16_t *>(w.s)[row * (w.n_in / 32) + g / 2]);
#pragma unroll
        for (int k = 0; k < 4; k++) { /* byte b of the quants is q + 128 after flipping its top bit */
            const uint32_t uk = u[k] ^ 0x80808080u;
#pragma unroll
            for (int b = 0; b < 4; b++) v[4 * k + b] = kcu__bytef(uk, b, 128.0f) * d;
        }
    } else if constexpr (TYPE == KERN_TYPE_Q4_0 || TYPE == KERN_TYPE_Q4_1) {
        uint32_t u[4];
        kcu__ld16(rq + g * 16, u);
        float d, m = 0.0f;
        if constexpr (TYPE == KERN_TYPE_Q4_0) {
            d = kcu__h2f(reinterpret_cast<const uint16_t *>(w.s)[row * (w.n_in / 32) + g]);
        } else {
            uint32_t dm = reinterpret_cast<const uint32_t *>(w.s)[row * (w.n_in / 32) + g];
            d = kcu__h2f(dm), m = kcu__h2f(dm >> 16);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t lo = u[k] & 0x0f0f0f0fu, hi = (u[k] >> 4) & 0x0f0f0f0fu;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                if constexpr (TYPE == KERN_TYPE_Q4_0) {
                    v[4 * k + b] = kcu__bytef(lo, b, 8.0f) * d;
                    v[4 * k + b + 16] = kcu__bytef(hi, b, 8.0f) * d;
                } else {
                    v[4 * k + b] = kcu__bytef(lo, b, 0.0f) * d + m;
                    v[4 * k + b + 16] = kcu__bytef(hi, b, 0.0f) * d + m;
                }
            }
        }
    } else if constexpr (TYPE == KERN_TYPE_Q4_K || TYPE == KERN_TYPE_Q5_K) {
        constexpr int BB = TYPE == KERN_TYPE_Q4_K ? 144 : 176;
        const uint8_t *blk = rq + (g / 8) * BB;
        const int j = (int)(g % 8);
        float d = kcu__h2f(kcu__rd16(blk)), dmin = kcu__h2f(kcu__rd16(blk + 2)), sc, mn;
        kcu__scale_min(j, blk + 4, &sc, &mn);
        float d1 = d * sc, m1 = dmin * mn;
        const uint8_t *qs = blk + (TYPE == KERN_TYPE_Q4_K ? 16 : 48) + 32 * (j / 2);
        uint32_t q[8], h[8];
        kcu__ld16(qs, q);
        kcu__ld16(qs + 16, q + 4);
        if constexpr (TYPE == KERN_TYPE_Q5_K) {
            kcu__ld16(blk + 16, h);
            kcu__ld16(blk + 32, h + 4);
        }
        const int shift = 4 * (j & 1);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            uint32_t val = (q[k] >> shift) & 0x0f0f0f0fu;
            if constexpr (TYPE == KERN_TYPE_Q5_K) val |= ((h[k] >> j) & 0x01010101u) << 4;
#pragma unroll
            for (int b = 0; b < 4; b++) v[4 * k + b] = d1 * kcu__bytef(val, b, 0.0f) - m1;
        }
    } else if constexpr (TYPE == KERN_TYPE_Q6_K) {
        const uint8_t *blk = rq + (g / 8) * 192;
        const int sg = (int)(g % 8), hh = sg / 4, k = sg % 4;
        /* the plane layout (kern_cuda.h): 192-byte quant blocks, 16-byte aligned */
        uint32_t ql[8], qh[8];
        kcu__ld16(blk + 64 * hh + 32 * (k & 1), ql);
        kcu__ld16(blk + 64 * hh + 32 * (k & 1) + 16, ql + 4);
        kcu__ld16(blk + 128 + 32 * hh, qh);
        kcu__ld16(blk + 128 + 32 * hh + 16, qh + 4);
        const uint64_t bi = row * (w.n_in / 256) + g / 8, n_blk = w.n_out * (w.n_in / 256);
        const int8_t *sc = reinterpret_cast<const int8_t *>(w.s + bi * 16);
        float d = kcu__h2f(reinterpret_cast<const uint16_t *>(w.s + n_blk * 16)[bi]);
        float s0 = d * (float)sc[2 * sg], s1 = d * (float)sc[2 * sg + 1];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t val = ((ql[i] >> (4 * (k >> 1))) & 0x0f0f0f0fu) | (((qh[i] >> (2 * k)) & 0x03030303u) << 4);
#pragma unroll
            for (int b = 0; b < 4; b++) v[4 * i + b] = (i < 4 ? s0 : s1) * kcu__bytef(val, b, 32.0f);
        }
    }
}

/* The types whose groups are one 16-byte load of the quant plane (plus, for the 32-block types,
 * one scale): their GEMV and dequantisation load several groups before decoding any. */
__host__ __device__ constexpr bool kcu__raw_type(int type, bool vec) {
    return vec && (type == KERN_TYPE_F32 || type == KERN_TYPE_F16 || type == KERN_TYPE_BF16 || type == KERN_TYPE_Q8_0 ||
                   type == KERN_TYPE_Q4_0 || type == KERN_TYPE_Q4_1);
}

/* The 16 bytes q of group g of `row` and its scale bits (Q8_0/Q4_0: f16 d; Q4_1: d | m << 16). */
template <int TYPE>
__device__ __forceinline__ void kcu__raw_load(const kcu__w &w, uint64_t row, uint32_t g, uint4 &q, uint32_t &sb) {
    const uint32_t nb = (uint32_t)(w.n_in / 32);
    q = __ldcs(reinterpret_cast<const uint4 *>(w.q + row * w.row_bytes) + g);
    if constexpr (TYPE == KERN_TYPE_Q8_0) sb = __ldcs(reinterpret_cast<const unsigned short *>(w.s) + row * nb + g / 2);
    else if constexpr (TYPE == KERN_TYPE_Q4_0) sb = __ldcs(reinterpret_cast<const unsigned short *>(w.s) + row * nb + g);
    else if constexpr (TYPE == KERN_TYPE_Q4_1) sb = __ldcs(reinterpret_cast<const unsigned int *>(w.s) + row * nb + g);
    else sb = 0;
}

/* Elements 4j..4j+3 of a raw group (kcu__raw_load), the values kcu__decode gives. */
template <int TYPE>
__device__ __forceinline__ void kcu__chunk(const uint4 &q, uint32_t sb, int j, float *e) {
    const uint32_t wd[4] = {q.x, q.y, q.z, q.w};
    if constexpr (TYPE == KERN_TYPE_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++) e[i] = __uint_as_float(wd[i]);
    } else if constexpr (TYPE == KERN_TYPE_F16 || TYPE == KERN_TYPE_BF16) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const uint32_t u = wd[2 * j + i];
            e[2 * i] = TYPE == KERN_TYPE_F16 ? kcu__h2f(u) : kcu__bf2f(u);
            e[2 * i + 1] = TYPE == KERN_TYPE_F16 ? kcu__h2f(u >> 16) : kcu__bf2f(u >> 16);
        }
    } else if constexpr (TYPE == KERN_TYPE_Q8_0) {
        const float d = kcu__h2f(sb);
        const uint32_t u = wd[j] ^ 0x80808080u;
#pragma unroll
        for (int b = 0; b < 4; b++) e[b] = kcu__bytef(u, b, 128.0f) * d;
    } else { /* Q4_0, Q4_1: elements 4j.. are the low nibbles of word j (j < 4), else the high of j-4 */
        const uint32_t u = j < 4 ? wd[j] & 0x0f0f0f0fu : (wd[j - 4] >> 4) & 0x0f0f0f0fu;
        const float d = kcu__h2f(sb);
        if constexpr (TYPE == KERN_TYPE_Q4_0) {
#pragma unroll
            for (int b = 0; b < 4; b++) e[b] = kcu__bytef(u, b, 8.0f) * d;
        } else {
            const float m = kcu__h2f(sb >> 16);
#pragma unroll
            for (int b = 0; b < 4; b++) e[b] = kcu__bytef(u, b, 0.0f) * d + m;
        }
    }
}


/* Whether rows of a plain type are 16-byte aligned (vector groups) for this n_in. */
static inline bool kcu__vec_ok(uint32_t type, uint64_t n_in) {
    return kcu__q_row_bytes(type, n_in) % 16 == 0;
}

/* Calls F.template operator()<TYPE, VEC>() for the weight's type; returns F's result or
 * KCU_ERR_INVALID for an unsupported type. */
template <class F>
static int kcu__dispatch(uint32_t type, uint64_t n_in, F &&f) {
    bool vec = kcu__vec_ok(type, n_in);
    switch (type) {
    case KERN_TYPE_F32: return vec ? f.template operator()<KERN_TYPE_F32, true>() : f.template operator()<KERN_TYPE_F32, false>();
    case KERN_TYPE_F16: return vec ? f.template operator()<KERN_TYPE_F16, true>() : f.template operator()<KERN_TYPE_F16, false>();
    case KERN_TYPE_BF16: return vec ? f.template operator()<KERN_TYPE_BF16, true>() : f.template operator()<KERN_TYPE_BF16, false>();
    case KERN_TYPE_Q8_0: return f.template operator()<KERN_TYPE_Q8_0, true>();
    case KERN_TYPE_Q4_0: return f.template operator()<KERN_TYPE_Q4_0, true>();
    case KERN_TYPE_Q4_1: return f.template operator()<KERN_TYPE_Q4_1, true>();
    case KERN_TYPE_Q4_K: return f.template operator()<KERN_TYPE_Q4_K, true>();
    case KERN_TYPE_Q5_K: return f.template operator()<KERN_TYPE_Q5_K, true>();
    case KERN_TYPE_Q6_K: return f.template operator()<KERN_TYPE_Q6_K, true>();
    default: return kcu__fail(KCU_ERR_INVALID, "unsupported weight type %u on CUDA", type);
    }
}

/* Host check of a weight: supported type, n_in a multiple of the block, allocated. */
int kcu__check_weight(const kcu_weight *w, const char *what);

#endif
