/* CUDA elementwise and row ops: embedding lookup and row dequantisation (any weight type),
 * RMSNorm (rows, gathered rows, per-head), RoPE (adjacent pairs or halves), SwiGLU, residual and
 * bias adds, and the f16 KV store into the paged cache. CPU counterparts: kernels/cpu/ops.c. */
#include "kernels/cuda/kcu_internal.cuh"

#include <math.h>

/* ---- embedding and dequantisation ---- */

template <typename T> __device__ __forceinline__ T kcu_cvt(float v);
template <> __device__ __forceinline__ float kcu_cvt<float>(float v) { return v; }
template <> __device__ __forceinline__ __half kcu_cvt<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 kcu_cvt<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

/* out[r][...] = row rows[r] (or row0 + r) of w. One block per output row (grid-stride over rows),
 * its threads over the row's groups; each group is written with 16-byte stores when its bytes
 * allow (the quantised types, and the plain ones on aligned rows). */
template <int TYPE, bool VEC, typename OT>
__global__ void __launch_bounds__(128) k_dequant(kcu__w w, const int32_t *rows, uint64_t row0, uint64_t n_rows, OT *out) {
    constexpr int GE = kcu__ge(TYPE, VEC);
    constexpr bool VST = (GE * sizeof(OT)) % 16 == 0; /* groups start 16-aligned when the row does */
    const uint32_t groups = (uint32_t)(w.n_in / GE);
    const bool row_al = (w.n_in * sizeof(OT)) % 16 == 0 && ((uintptr_t)out & 15) == 0;
    for (uint64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        OT *orow = out + r * w.n_in;
        const int64_t src = rows ? (int64_t)rows[r] : (int64_t)(row0 + r);
        const bool valid = src >= 0 && (uint64_t)src < w.n_out;
        for (uint32_t g = threadIdx.x; g < groups; g += blockDim.x) {
            float v[GE];
            if (valid) {
                kcu__decode<TYPE, VEC>(w, (uint64_t)src, g, v);
            } else {
#pragma unroll
                for (int j = 0; j < GE; j++) v[j] = 0.0f;
            }
            OT *o = orow + (size_t)g * GE;
            if constexpr (VST) {
                if (row_al) {
                    union {
                        OT h[GE];
                        uint4 u[GE * sizeof(OT) / 16];
                    } tmp;
#pragma unroll
                    for (int j = 0; j < GE; j++) tmp.h[j] = kcu_cvt<OT>(v[j]);
#pragma unroll
                    for (int j = 0; j < (int)(GE * sizeof(OT) / 16); j++) reinterpret_cast<uint4 *>(o)[j] = tmp.u[j];
                    continue;
                }
            }
#pragma unroll
            for (int j = 0; j < GE; j++) o[j] = kcu_cvt<OT>(v[j]);
        }
    }
}

template <typename OT>
static int dequant_launch(const kcu_weight *w, const int32_t *rows, uint64_t row0, uint64_t n_rows, OT *out,
                          cudaStream_t st) {
    kcu__w v = kcu__view(w);
    return kcu__dispatch(w->type, w->n_in, [&]<int TYPE, bool VEC>() -> int {
        unsigned g = n_rows > (1u << 20) ? (1u << 20) : (unsigned)n_rows;
        k_dequant<TYPE, VEC, OT><<<g, 128, 0, st>>>(v, rows, row0, n_rows, out);
        KCU_LAUNCHED("dequant");
        return 0;
    });
}

extern "C" int kcu_dequant_rows(const kcu_weight *w, uint64_t row0, uint64_t n_rows, void *out, uint32_t out_type,
                                cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_dequant_rows");
    if (rc) return rc;
    if (!out || row0 > w->n_out || n_rows > w->n_out - row0)
        return kcu__fail(KCU_ERR_INVALID, "kcu_dequant_rows: rows [%llu, +%llu) of %llu", (unsigned long long)row0,
                         (unsigned long long)n_rows, (unsigned long long)w->n_out);
    if (n_rows == 0) return 0;
    switch (out_type) {
    case KERN_TYPE_F32: return dequant_launch(w, NULL, row0, n_rows, (float *)out, st);
    case KERN_TYPE_F16: return dequant_launch(w, NULL, row0, n_rows, (__half *)out, st);
    case KERN_TYPE_BF16: return dequant_launch(w, NULL, row0, n_rows, (__nv_bfloat16 *)out, st);
    default: return kcu__fail(KCU_ERR_INVALID, "kcu_dequant_rows: output type %u", out_type);
    }
}

extern "C" int kcu_embed(float *out, const kcu_weight *w, const int32_t *tokens, int n_tok, cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_embed");
    if (rc) return rc;
    if (!out || !tokens || n_tok < 0) return kcu__fail(KCU_ERR_INVALID, "kcu_embed: %d tokens", n_tok);
    if (n_tok == 0) return 0;
    return dequant_launch(w, tokens, 0, (uint64_t)n_tok, out, st);
}

/* ---- RMSNorm: one block of 256 threads per row, double sums as in the CPU reference ---- */

__global__ void k_rmsnorm(float *out, const float *x, const float *w, const int32_t *rows, int n, float eps) {
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * n;
    float *orow = out + (size_t)r * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * xr[i];
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) part[0] = s;
    }
    __syncthreads();
    const float scale = (float)(1.0 / sqrt(part[0] / (double)n + (double)eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

extern "C" int kcu_rmsnorm(float *out, const float *x, const float *w, const int32_t *rows, int n_rows, int n, float eps,
                           cudaStream_t st) {
    if (!out || !x || !w || n_rows < 0 || n <= 0 || (rows && out == x))
        return kcu__fail(KCU_ERR_INVALID, "kcu_rmsnorm: %d rows of %d", n_rows, n);
    if (n_rows == 0) return 0;
    int threads = n >= 256 ? 256 : n >= 128 ? 128 : n >= 64 ? 64 : 32;
    k_rmsnorm<<<n_rows, threads, 0, st>>>(out, x, w, rows, n, eps);
    KCU_LAUNCHED("kcu_rmsnorm");
    return 0;
}

/* ---- RoPE: one thread per rotated pair; theta as the CPU computes it (f32 powf) ---- */

__global__ void k_rope(float *x, int n_tok, int n_heads, int head_dim, int n_rot, const int32_t *pos, float freq_base,
                       bool neox) {
    const int half = n_rot / 2;
    const size_t n = (size_t)n_tok * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t th = idx / half; /* token * n_heads + head */
        int t = (int)(th / n_heads);
        float theta = (float)pos[t] * powf(freq_base, -2.0f * (float)i / (float)n_rot);
        float c = cosf(theta), s = sinf(theta);
        float *xh = x + th * head_dim;
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = xh[a], x1 = xh[b];
        xh[a] = x0 * c - x1 * s;
        xh[b] = x0 * s + x1 * c;
    }
}

extern "C" int kcu_rope(float *x, int n_tok, int n_heads, int head_dim, int n_rot, const int32_t *pos, float freq_base,
                        bool neox, cudaStream_t st) {
    if (!x || !pos || n_tok < 0 || n_heads <= 0 || head_dim <= 0 || n_rot < 0 || n_rot > head_dim || n_rot % 2)
        return kcu__fail(KCU_ERR_INVALID, "kcu_rope: %d tokens, %d heads of %d, n_rot %d", n_tok, n_heads, head_dim, n_rot);
    size_t n = (size_t)n_tok * n_heads * (n_rot / 2);
    if (n == 0) return 0;
    unsigned g = kcu__blocks(n, 256);
    k_rope<<<g > 65536 ? 65536 : g, 256, 0, st>>>(x, n_tok, n_heads, head_dim, n_rot, pos, freq_base, neox);
    KCU_LAUNCHED("kcu_rope");
    return 0;
}

/* ---- RoPE of q and k and the KV store in one launch (decode steps are launch-bound) ----
 * One thread per pair of dims of each q and k head: the rotated pairs as k_rope (same theta,
 * same arithmetic, so bitwise its result), the pairs past n_rot left alone; a k head's thread
 * then writes its two dims of k, and the same two of v, as f16 into the token's cache slot. */
__global__ void k_rope_kv(float *q, float *k, const float *v, int n_tok, int n_head, int n_kv, int head_dim, int n_rot,
                          const int32_t *pos, float freq_base, bool neox, __half *kc, __half *vc, const int32_t *slot,
                          size_t n_slots) {
    const int hp = head_dim / 2, half = n_rot / 2, H = n_head + n_kv, kv_row = n_kv * head_dim;
    const size_t n = (size_t)n_tok * H * hp;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        const int p = (int)(idx % hp);
        const size_t th = idx / hp;
        const int h = (int)(th % H), t = (int)(th / H);
        float *x = h < n_head ? q + ((size_t)t * n_head + h) * head_dim : k + ((size_t)t * n_kv + (h - n_head)) * head_dim;
        int a, b;
        if (p < half) {
            a = neox ? p : 2 * p, b = neox ? p + half : 2 * p + 1;
            float theta = (float)pos[t] * powf(freq_base, -2.0f * (float)p / (float)n_rot);
            float c = cosf(theta), s = sinf(theta);
            float x0 = x[a], x1 = x[b];
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        } else {
            a = n_rot + 2 * (p - half), b = a + 1;
        }
        if (h >= n_head) {
            const int32_t sl = slot[t];
            if (sl < 0 || (size_t)sl >= n_slots) continue; /* the engine checks block ids first */
            const size_t o = (size_t)sl * kv_row + (size_t)(h - n_head) * head_dim;
            const float *vr = v + (size_t)t * kv_row + (size_t)(h - n_head) * head_dim;
            kc[o + a] = __float2half(x[a]), kc[o + b] = __float2half(x[b]);
            vc[o + a] = __float2half(vr[a]), vc[o + b] = __float2half(vr[b]);
        }
    }
}

extern "C" int kcu_rope_kv(float *q, float *k, const float *v, int n_tok, int n_head, int n_kv, int head_dim, int n_rot,
                           const int32_t *pos, float freq_base, bool neox, void *k_cache, void *v_cache,
                           const int32_t *slot, size_t n_slots, cudaStream_t st) {
    if (!q || !k || !v || !pos || !k_cache || !v_cache || !slot || n_tok < 0 || n_head <= 0 || n_kv <= 0 ||
        head_dim <= 0 || head_dim % 2 || n_rot < 0 || n_rot > head_dim || n_rot % 2)
        return kcu__fail(KCU_ERR_INVALID, "kcu_rope_kv: %d tokens, %d/%d heads of %d, n_rot %d", n_tok, n_head, n_kv,
                         head_dim, n_rot);
    size_t n = (size_t)n_tok * (n_head + n_kv) * (head_dim / 2);
    if (n == 0) return 0;
    unsigned g = kcu__blocks(n, 256);
    k_rope_kv<<<g > 65536 ? 65536 : g, 256, 0, st>>>(q, k, v, n_tok, n_head, n_kv, head_dim, n_rot, pos, freq_base, neox,
                                                     (__half *)k_cache, (__half *)v_cache, slot, n_slots);
    KCU_LAUNCHED("kcu_rope_kv");
    return 0;
}

/* ---- SwiGLU, add, bias ---- */

__global__ void k_swiglu(float *out, const float *g, const float *u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void k_add(float *x, const float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] += y[i];
}

__global__ void k_add_bias(float *x, const float *b, size_t n_tok, int n) {
    size_t total = n_tok * (size_t)n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        x[i] += b[i % (size_t)n];
}

extern "C" int kcu_swiglu(float *out, const float *g, const float *u, size_t n, cudaStream_t st) {
    if (!out || !g || !u) return kcu__fail(KCU_ERR_INVALID, "kcu_swiglu: NULL buffer");
    if (n == 0) return 0;
    unsigned gr = kcu__blocks(n, 256);
    k_swiglu<<<gr > 65536 ? 65536 : gr, 256, 0, st>>>(out, g, u, n);
    KCU_LAUNCHED("kcu_swiglu");
    return 0;
}

extern "C" int kcu_add(float *x, const float *y, size_t n, cudaStream_t st) {
    if (!x || !y) return kcu__fail(KCU_ERR_INVALID, "kcu_add: NULL buffer");
    if (n == 0) return 0;
    unsigned gr = kcu__blocks(n, 256);
    k_add<<<gr > 65536 ? 65536 : gr, 256, 0, st>>>(x, y, n);
    KCU_LAUNCHED("kcu_add");
    return 0;
}

extern "C" int kcu_add_bias(float *x, const float *b, int n_tok, int n, cudaStream_t st) {
    if (!x || !b || n_tok < 0 || n <= 0) return kcu__fail(KCU_ERR_INVALID, "kcu_add_bias: %d x %d", n_tok, n);
    if (n_tok == 0) return 0;
    unsigned gr = kcu__blocks((size_t)n_tok * n, 256);
    k_add_bias<<<gr > 65536 ? 65536 : gr, 256, 0, st>>>(x, b, (size_t)n_tok, n);
    KCU_LAUNCHED("kcu_add_bias");
    return 0;
}

/* ---- KV store: f32 rows -> f16 slots ---- */

__global__ void k_kv_store(__half *kc, __half *vc, const float *k, const float *v, const int32_t *slot, int n_tok,
                           int kv_row, size_t n_slots) {
    size_t n = (size_t)n_tok * kv_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / kv_row, j = i % kv_row;
        int32_t s = slot[t];
        if (s < 0 || (size_t)s >= n_slots) continue; /* the engine checks block ids first */
        size_t o = (size_t)s * kv_row + j;
        kc[o] = __float2half(k[i]);
        vc[o] = __float2half(v[i]);
    }
}

extern "C" int kcu_kv_store(void *k_cache, void *v_cache, const float *k, const float *v, const int32_t *slot, int n_tok,
                            int kv_row, size_t n_slots, cudaStream_t st) {
    if (!k_cache || !v_cache || !k || !v || !slot || n_tok < 0 || kv_row <= 0)
        return kcu__fail(KCU_ERR_INVALID, "kcu_kv_store: %d tokens of %d", n_tok, kv_row);
    if (n_tok == 0) return 0;
    unsigned gr = kcu__blocks((size_t)n_tok * kv_row, 256);
    k_kv_store<<<gr > 65536 ? 65536 : gr, 256, 0, st>>>((__half *)k_cache, (__half *)v_cache, k, v, slot, n_tok, kv_row,
                                                         n_slots);
    KCU_LAUNCHED("kcu_kv_store");
    return 0;
}
