/* CUDA matmul over device weights (see kern_cuda.h for the two paths):
 *  - k_gemv: decode, T <= KCU_GEMV_MAX_TOK tokens. One block of 32-128 threads per 2 or 4 output
 *    rows; each thread decodes groups of every row (16-byte loads of the quant plane, integer to
 *    float by exponent tricks, see kcu__bytef), multiplies them with the f32 activations of every
 *    token (float4 loads, each shared by the block's rows) and the block reduces with shuffles
 *    and shared memory. Weights are read once per call whatever T is.
 *  - kcu_gemm: prefill. Tiles of weight rows dequantised to f16/bf16/f32 scratch, then
 *    cublasGemmEx (f32 accumulation); F16/BF16 weights (half mode) and F32 weights go to cuBLAS
 *    directly. Layout: W (n_out, n_in) row-major is cuBLAS's column-major (n_in, n_out), so
 *    Y^T (n_out, T) = W (op T) * X^T with lda = ldb = n_in, ldc = n_out. */
#include <cublas_v2.h>
#include <stdlib.h>

#include "kernels/cuda/kcu_internal.cuh"

struct kcu_blas {
    cublasHandle_t h;
    size_t max_tok, max_in;
    void *xh;   /* (max_tok, max_in) f16/bf16: X converted for the half GEMM */
    void *tile; /* KCU_GEMM_TILE_BYTES: dequantised weight rows */
    size_t tile_bytes; /* used per GEMM: at most KCU_GEMM_TILE_BYTES (kcu_blas_set_tile) */
};

/* ---- GEMV ---- */

/* Start of every GEMV kernel: zeroes the accumulators, returns how many of the block's R rows
 * from row0 exist. */
template <int R, int NT>
__device__ __forceinline__ int kcu__gemv_begin(const kcu__w &w, uint64_t row0, float (&acc)[R][NT]) {
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    return w.n_out - row0 < (uint64_t)R ? (int)(w.n_out - row0) : R;
}

/* End of every GEMV kernel: acc[r][t] of each thread summed over the block (shuffles in the warp,
 * then the blockDim.x / 32 <= 4 warps through shared memory, in a fixed order) into
 * Y[t][row0 + r], or added to it. */
template <int R, int NT>
__device__ __forceinline__ void kcu__gemv_store(float (&acc)[R][NT], float *Y, uint64_t n_out, uint64_t row0, int nr, int T,
                                                int add) {
    __shared__ float red[4][R * NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float s = acc[r][t];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) red[warp][r * NT + t] = s;
        }
    __syncthreads();
    if (threadIdx.x < R * NT) {
        const int r = threadIdx.x / NT, t = threadIdx.x % NT;
        if (r < nr && t < T) {
            float s = red[0][threadIdx.x];
            for (int i = 1; i < nw; i++) s += red[i][threadIdx.x];
            float *y = Y + (size_t)t * n_out + row0 + r;
            *y = add ? *y + s : s;
        }
    }
}

/* Rows per block: enough that the decoded groups of all rows fit in 64 registers per thread. */
__host__ __device__ constexpr int kcu__gemv_rows(int type, bool vec) {
    return kcu__ge(type, vec) >= 32 ? 2 : 4;
}

/* Block of 1-4 warps (as many as the row has groups, gemv_threads) = R rows of W for all T (<= NT)
 * tokens. The threads stride over the row's
 * groups; each decodes its group of every row (R independent 16-byte loads in flight), then
 * multiplies them with each token's activations, so every X load serves R rows. Partial sums are
 * reduced in the warp with shuffles and across the warps through shared memory. */
template <int TYPE, bool VEC, int NT>
__global__ void __launch_bounds__(128) k_gemv(kcu__w w, const float *__restrict__ X, float *__restrict__ Y, int T, int add) {
    constexpr int GE = kcu__ge(TYPE, VEC), R = kcu__gemv_rows(TYPE, VEC);
    const uint64_t row0 = (uint64_t)blockIdx.x * R;
    const uint32_t n_groups = (uint32_t)(w.n_in / GE);
    float acc[R][NT];
    const int nr = kcu__gemv_begin(w, row0, acc);
#pragma unroll(GE <= 8 ? 2 : 1)
    for (uint32_t g = threadIdx.x; g < n_groups; g += blockDim.x) {
        float v[R][GE];
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r < nr) {
                kcu__decode<TYPE, VEC>(w, row0 + r, g, v[r]);
            } else {
#pragma unroll
                for (int j = 0; j < GE; j++) v[r][j] = 0.0f;
            }
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < T) {
                const float *x = X + (size_t)t * w.n_in + (size_t)g * GE;
                if constexpr (GE % 4 == 0) {
#pragma unroll
                    for (int j = 0; j < GE / 4; j++) {
                        float4 xv = reinterpret_cast<const float4 *>(x)[j];
#pragma unroll
                        for (int r = 0; r < R; r++)
                            acc[r][t] += v[r][4 * j] * xv.x + v[r][4 * j + 1] * xv.y + v[r][4 * j + 2] * xv.z + v[r][4 * j + 3] * xv.w;
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < GE; j++) {
                        float xj = x[j];
#pragma unroll
                        for (int r = 0; r < R; r++) acc[r][t] += v[r][j] * xj;
                    }
                }
            }
        }
    }
    kcu__gemv_store<R, NT>(acc, Y, w.n_out, row0, nr, T, add);
}

/* The plain (16-byte aligned rows) and 32-block types: each group is one 16-byte load of the
 * quant plane plus (Q8_0/Q4_0/Q4_1) its scale, so a thread first loads U groups of each of the
 * R rows (U*R independent loads in flight, streamed past L1), then decodes them 4 elements at a
 * time against the tokens' float4 activations. Values and sums as in k_gemv. */
template <int TYPE, int NT>
__global__ void __launch_bounds__(128) k_gemv_raw(kcu__w w, const float *__restrict__ X, float *__restrict__ Y, int T, int add) {
    constexpr int GE = kcu__ge(TYPE, true), R = 4, U = 2, NC = GE / 4;
    const uint64_t row0 = (uint64_t)blockIdx.x * R;
    const uint32_t n_groups = (uint32_t)(w.n_in / GE);
    float acc[R][NT];
    const int nr = kcu__gemv_begin(w, row0, acc);
    for (uint32_t g0 = threadIdx.x; g0 < n_groups; g0 += blockDim.x * U) {
        uint4 q[U][R];
        uint32_t sb[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint32_t g = g0 + blockDim.x * u;
                q[u][r] = make_uint4(0, 0, 0, 0), sb[u][r] = 0;
                if (g < n_groups && r < nr) kcu__raw_load<TYPE>(w, row0 + r, g, q[u][r], sb[u][r]);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const uint32_t g = g0 + blockDim.x * u;
            if (g >= n_groups) break;
#pragma unroll
            for (int j = 0; j < NC; j++) {
                float4 xv[NT];
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (t < T) xv[t] = __ldg(reinterpret_cast<const float4 *>(X + (size_t)t * w.n_in + (size_t)g * GE) + j);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float e[4];
                    kcu__chunk<TYPE>(q[u][r], sb[u][r], j, e);
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        if (t < T) acc[r][t] += e[0] * xv[t].x + e[1] * xv[t].y + e[2] * xv[t].z + e[3] * xv[t].w;
                }
            }
        }
    }
    kcu__gemv_store<R, NT>(acc, Y, w.n_out, row0, nr, T, add);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Q4_K/Q5_K: a group is a pair of 32-element sub-blocks (64 elements): the 16-byte header of its
 * super-block (d, dmin, 12 bytes of 6-bit scales and mins), the 32 bytes of quants whose low
 * nibbles are the first sub-block and high nibbles the second, and for Q5_K the super-block's 32
 * bytes of fifth bits (bit j of byte l: element l of sub-block j). All of it is loaded with
 * 16-byte loads (both block sizes are multiples of 16) before any is decoded. */
__device__ __forceinline__ uint32_t kcu__hbyte(const uint4 &h, int k) { /* byte k of the 16 */
    const uint32_t w = k < 4 ? h.x : k < 8 ? h.y : k < 12 ? h.z : h.w;
    return (w >> (8 * (k & 3))) & 0xffu;
}

template <int TYPE, int NT>
__global__ void __launch_bounds__(128) k_gemv_kq(kcu__w w, const float *__restrict__ X, float *__restrict__ Y, int T, int add) {
    constexpr int R = 4, BB = TYPE == KERN_TYPE_Q4_K ? 144 : 176, QOFF = TYPE == KERN_TYPE_Q4_K ? 16 : 48;
    const uint64_t row0 = (uint64_t)blockIdx.x * R;
    const uint32_t n_groups = (uint32_t)(w.n_in / 64);
    float acc[R][NT];
    const int nr = kcu__gemv_begin(w, row0, acc);
    for (uint32_t g = threadIdx.x; g < n_groups; g += blockDim.x) {
        const int jp = (int)(g & 3);
        uint4 hd[R], q[R][2], qh[R][2];
#pragma unroll
        for (int r = 0; r < R; r++) {
            hd[r] = q[r][0] = q[r][1] = qh[r][0] = qh[r][1] = make_uint4(0, 0, 0, 0);
            if (r < nr) {
                const uint8_t *blk = w.q + (row0 + r) * w.row_bytes + (size_t)(g >> 2) * BB;
                hd[r] = __ldcs(reinterpret_cast<const uint4 *>(blk));
                q[r][0] = __ldcs(reinterpret_cast<const uint4 *>(blk + QOFF + 32 * jp));
                q[r][1] = __ldcs(reinterpret_cast<const uint4 *>(blk + QOFF + 32 * jp + 16));
                if constexpr (TYPE == KERN_TYPE_Q5_K) {
                    qh[r][0] = __ldg(reinterpret_cast<const uint4 *>(blk + 16));
                    qh[r][1] = __ldg(reinterpret_cast<const uint4 *>(blk + 32));
                }
            }
        }
        float d1[R][2], m1[R][2];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float d = kcu__h2f(hd[r].x), dmin = kcu__h2f(hd[r].x >> 16);
#pragma unroll
            for (int sub = 0; sub < 2; sub++) { /* as kcu__scale_min, bytes 4.. of the header */
                const int j = 2 * jp + sub;
                uint32_t sc, mn;
                if (j < 4) {
                    sc = kcu__hbyte(hd[r], 4 + j) & 63, mn = kcu__hbyte(hd[r], 8 + j) & 63;
                } else {
                    sc = (kcu__hbyte(hd[r], 8 + j) & 0x0f) | ((kcu__hbyte(hd[r], j) >> 6) << 4);
                    mn = (kcu__hbyte(hd[r], 8 + j) >> 4) | ((kcu__hbyte(hd[r], 4 + j) >> 6) << 4);
                }
                d1[r][sub] = d * (float)sc, m1[r][sub] = dmin * (float)mn;
            }
        }
#pragma unroll
        for (int j = 0; j < 16; j++) { /* elements 4j..4j+3 of the group */
            const int sub = j >> 3, wi = j & 7;
            float4 xv[NT];
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t < T) xv[t] = __ldg(reinterpret_cast<const float4 *>(X + (size_t)t * w.n_in + (size_t)g * 64) + j);
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint4 &qq = q[r][wi >> 2];
                const uint32_t qw = (wi & 3) == 0 ? qq.x : (wi & 3) == 1 ? qq.y : (wi & 3) == 2 ? qq.z : qq.w;
                uint32_t val = (qw >> (4 * sub)) & 0x0f0f0f0fu;
                if constexpr (TYPE == KERN_TYPE_Q5_K) {
                    const uint4 &hh = qh[r][wi >> 2];
                    const uint32_t hw = (wi & 3) == 0 ? hh.x : (wi & 3) == 1 ? hh.y : (wi & 3) == 2 ? hh.z : hh.w;
                    val |= ((hw >> (2 * jp + sub)) & 0x01010101u) << 4;
                }
                float e[4];
#pragma unroll
                for (int b = 0; b < 4; b++) e[b] = d1[r][sub] * kcu__bytef(val, b, 0.0f) - m1[r][sub];
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (t < T) acc[r][t] += e[0] * xv[t].x + e[1] * xv[t].y + e[2] * xv[t].z + e[3] * xv[t].w;
            }
        }
    }
    kcu__gemv_store<R, NT>(acc, Y, w.n_out, row0, nr, T, add);
}

/* Threads per block: 32..128, no more than the row has groups (each thread takes whole groups). */
static unsigned gemv_threads(uint64_t n_groups) {
    return n_groups >= 128 ? 128 : n_groups > 64 ? 128 : n_groups > 32 ? 64 : 32;
}

template <int TYPE, bool VEC, int NT>
static void gemv_launch(const kcu__w &v, const float *X, float *Y, int n_tok, int add, cudaStream_t st) {
    if constexpr (kcu__raw_type(TYPE, VEC)) {
        k_gemv_raw<TYPE, NT><<<kcu__blocks((size_t)v.n_out, 4), gemv_threads(v.n_in / kcu__ge(TYPE, VEC) / 2), 0, st>>>(
            v, X, Y, n_tok, add);
    } else if constexpr (TYPE == KERN_TYPE_Q4_K || TYPE == KERN_TYPE_Q5_K) {
        k_gemv_kq<TYPE, NT><<<kcu__blocks((size_t)v.n_out, 4), gemv_threads(v.n_in / 64), 0, st>>>(v, X, Y, n_tok, add);
    } else {
        k_gemv<TYPE, VEC, NT><<<kcu__blocks((size_t)v.n_out, (unsigned)kcu__gemv_rows(TYPE, VEC)),
                                gemv_threads(v.n_in / kcu__ge(TYPE, VEC)), 0, st>>>(v, X, Y, n_tok, add);
    }
}

static int gemv(const kcu_weight *w, const float *X, float *Y, int n_tok, int add, cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_gemv");
    if (rc) return rc;
    if (!X || !Y || n_tok < 1 || n_tok > KCU_GEMV_MAX_TOK || !aligned16(X) || w->n_in % 4)
        return kcu__fail(KCU_ERR_INVALID, "kcu_gemv: %d tokens (1..%d), X %p (16-byte aligned), n_in %llu", n_tok,
                         KCU_GEMV_MAX_TOK, (const void *)X, (unsigned long long)w->n_in);
    kcu__w v = kcu__view(w);
    if (w->n_out / 2 >= 0x7fffffffu) return kcu__fail(KCU_ERR_INVALID, "kcu_gemv: too many rows");
    return kcu__dispatch(w->type, w->n_in, [&]<int TYPE, bool VEC>() -> int {
        if (n_tok == 1) gemv_launch<TYPE, VEC, 1>(v, X, Y, n_tok, add, st);
        else if (n_tok == 2) gemv_launch<TYPE, VEC, 2>(v, X, Y, n_tok, add, st);
        else if (n_tok <= 4) gemv_launch<TYPE, VEC, 4>(v, X, Y, n_tok, add, st);
        else gemv_launch<TYPE, VEC, 8>(v, X, Y, n_tok, add, st);
        KCU_LAUNCHED("kcu_gemv");
        return 0;
    });
}

extern "C" int kcu_gemv(const kcu_weight *w, const float *X, float *Y, int n_tok, cudaStream_t st) {
    return gemv(w, X, Y, n_tok, 0, st);
}

/* ---- GEMM via cuBLAS ---- */

static const char *blas_status(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
    }
}

extern "C" int kcu_blas_new(kcu_blas **out, size_t max_tok, size_t max_in) {
    *out = NULL;
    kcu_blas *b = (kcu_blas *)calloc(1, sizeof *b);
    if (!b) return kcu__fail(KCU_ERR_NOMEM, "kcu_blas_new: out of memory");
    b->max_tok = max_tok;
    b->max_in = max_in;
    cublasStatus_t s = cublasCreate(&b->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(b);
        return kcu__fail(KCU_ERR_CUBLAS, "cublasCreate: %s", blas_status(s));
    }
    int rc = kcu_alloc(&b->xh, max_tok * max_in * 2);
    if (rc == 0) rc = kcu_alloc(&b->tile, KCU_GEMM_TILE_BYTES);
    b->tile_bytes = KCU_GEMM_TILE_BYTES;
    if (rc) {
        kcu_blas_destroy(b);
        return rc;
    }
    *out = b;
    return 0;
}

extern "C" void kcu_blas_destroy(kcu_blas *b) {
    if (!b) return;
    if (b->h) cublasDestroy(b->h);
    kcu_free(b->xh);
    kcu_free(b->tile);
    free(b);
}

extern "C" void kcu_blas_set_tile(kcu_blas *b, size_t bytes) {
    b->tile_bytes = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes > KCU_GEMM_TILE_BYTES ? KCU_GEMM_TILE_BYTES : bytes;
}

extern "C" size_t kcu_blas_bytes(const kcu_blas *b) { return b ? b->max_tok * b->max_in * 2 + KCU_GEMM_TILE_BYTES : 0; }

template <typename OT> __global__ void k_to_half(OT *out, const float *x, size_t n);
template <> __global__ void k_to_half<__half>(__half *out, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2half(x[i]);
}
template <> __global__ void k_to_half<__nv_bfloat16>(__nv_bfloat16 *out, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(x[i]);
}

/* One cublasGemmEx: rows [r0, r0+m) of the output from A (m, k) of atype. */
static int gemm_call(kcu_blas *b, const void *A, const void *B, cudaDataType ab_type, float *Y, int m, int n_tok, int k,
                     int ldc, int add) {
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, m, n_tok, k, &one, A, ab_type, k, B, ab_type, k, add ? &one : &zero, Y,
                                    CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return kcu__fail(KCU_ERR_CUBLAS, "cublasGemmEx (%d x %d x %d): %s", m, n_tok, k, blas_status(s));
    return 0;
}

static int gemm(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode, int add, cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_gemm");
    if (rc) return rc;
    if (!b || !X || !Y || n_tok < 1 || (size_t)n_tok > b->max_tok || w->n_in > b->max_in || w->n_in > 0x7fffffffu ||
        w->n_out > 0x7fffffffu || (mode != KCU_GEMM_HALF && mode != KCU_GEMM_F32))
        return kcu__fail(KCU_ERR_INVALID, "kcu_gemm: %d tokens (max %zu), n_in %llu (max %zu), mode %d", n_tok,
                         b ? b->max_tok : 0, (unsigned long long)w->n_in, b ? b->max_in : 0, mode);
    cublasStatus_t s = cublasSetStream(b->h, st);
    if (s != CUBLAS_STATUS_SUCCESS) return kcu__fail(KCU_ERR_CUBLAS, "cublasSetStream: %s", blas_status(s));
    const int k = (int)w->n_in, n_out = (int)w->n_out;
    if (w->type == KERN_TYPE_F32) return gemm_call(b, w->q, X, CUDA_R_32F, Y, n_out, n_tok, k, n_out, add);
    /* operand type: f32 (exact mode), bf16 for BF16 weights, else f16 */
    const uint32_t ot = mode == KCU_GEMM_F32 ? KERN_TYPE_F32 : w->type == KERN_TYPE_BF16 ? KERN_TYPE_BF16 : KERN_TYPE_F16;
    const cudaDataType dt = ot == KERN_TYPE_F32 ? CUDA_R_32F : ot == KERN_TYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const void *B = X;
    if (ot != KERN_TYPE_F32) {
        size_t n = (size_t)n_tok * w->n_in;
        unsigned g = kcu__blocks(n, 256);
        if (ot == KERN_TYPE_BF16) k_to_half<__nv_bfloat16><<<g > 65536 ? 65536 : g, 256, 0, st>>>((__nv_bfloat16 *)b->xh, X, n);
        else k_to_half<__half><<<g > 65536 ? 65536 : g, 256, 0, st>>>((__half *)b->xh, X, n);
        KCU_LAUNCHED("kcu_gemm: convert X");
        B = b->xh;
    }
    if (w->type == ot) return gemm_call(b, w->q, B, dt, Y, n_out, n_tok, k, n_out, add); /* F16/BF16 in place */
    const size_t es = ot == KERN_TYPE_F32 ? 4 : 2;
    size_t tile_rows = b->tile_bytes / (w->n_in * es);
    if (tile_rows == 0) return kcu__fail(KCU_ERR_INVALID, "kcu_gemm: row of %llu too wide", (unsigned long long)w->n_in);
    /* the tile is reused by the next iteration's dequant only after this GEMM: same stream */
    for (size_t r0 = 0; r0 < w->n_out; r0 += tile_rows) {
        size_t m = w->n_out - r0 < tile_rows ? w->n_out - r0 : tile_rows;
        if ((rc = kcu_dequant_rows(w, r0, m, b->tile, ot, st))) return rc;
        if ((rc = gemm_call(b, b->tile, B, dt, Y + r0, (int)m, n_tok, k, n_out, add))) return rc;
    }
    return 0;
}

extern "C" bool kcu_matmul_is_gemv(const kcu_weight *w, int n_tok) {
    if (!w || n_tok < 1 || w->n_in % 4) return false;
    const bool quant = w->type != KERN_TYPE_F32 && w->type != KERN_TYPE_F16 && w->type != KERN_TYPE_BF16;
    return n_tok <= KCU_GEMV_MAX_TOK || (quant && n_tok <= KCU_GEMV_BATCH_MAX);
}

extern "C" int kcu_gemm(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode,
                        cudaStream_t st) {
    return gemm(b, w, X, Y, n_tok, mode, 0, st);
}

static int matmul(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode, int add,
                  cudaStream_t st) {
    if (!kcu_matmul_is_gemv(w, n_tok)) return gemm(b, w, X, Y, n_tok, mode, add, st);
    for (int t0 = 0; t0 < n_tok; t0 += KCU_GEMV_MAX_TOK) { /* weights re-read per chunk of tokens */
        const int nt = n_tok - t0 < KCU_GEMV_MAX_TOK ? n_tok - t0 : KCU_GEMV_MAX_TOK;
        int rc = gemv(w, X + (size_t)t0 * w->n_in, Y + (size_t)t0 * w->n_out, nt, add, st);
        if (rc) return rc;
    }
    return 0;
}

extern "C" int kcu_matmul(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode,
                          cudaStream_t st) {
    return matmul(b, w, X, Y, n_tok, mode, 0, st);
}

extern "C" int kcu_matmul_add(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode,
                              cudaStream_t st) {
    return matmul(b, w, X, Y, n_tok, mode, 1, st);
}
