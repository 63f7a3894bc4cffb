/* CUDA matmul over device weights (see kern_cuda.h for the two paths):
 *  - k_gemv: decode, T <= KCU_GEMV_MAX_TOK tokens. One warp per output row; each lane decodes
 *    groups of the row (16-byte loads of the quant plane), multiplies them with the f32
 *    activations of every token (float4 loads) and the warp reduces with shuffles. Weights are
 *    read once per call whatever T is.
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
};

/* ---- GEMV ---- */

template <int TYPE, bool VEC, int NT>
__global__ void __launch_bounds__(128) k_gemv(kcu__w w, const float *__restrict__ X, float *__restrict__ Y, int T) {
    constexpr int GE = kcu__ge(TYPE, VEC);
    const int lane = threadIdx.x & 31;
    const uint64_t row = (uint64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= w.n_out) return; /* whole warps leave together: no block-level sync below */
    const uint64_t n_groups = w.n_in / GE;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    /* unrolled so that each lane has several 16-byte weight loads in flight */
#pragma unroll(GE <= 8 ? 4 : 2)
    for (uint64_t g = lane; g < n_groups; g += 32) {
        float v[GE];
        kcu__decode<TYPE, VEC>(w, row, g, v);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < T) {
                const float *x = X + (size_t)t * w.n_in + g * GE;
                float s = 0.0f;
                if constexpr (GE % 4 == 0) {
#pragma unroll
                    for (int j = 0; j < GE / 4; j++) {
                        float4 xv = reinterpret_cast<const float4 *>(x)[j];
                        s += v[4 * j] * xv.x + v[4 * j + 1] * xv.y + v[4 * j + 2] * xv.z + v[4 * j + 3] * xv.w;
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < GE; j++) s += v[j] * x[j];
                }
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = acc[t];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0 && t < T) Y[(size_t)t * w.n_out + row] = s;
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

extern "C" int kcu_gemv(const kcu_weight *w, const float *X, float *Y, int n_tok, cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_gemv");
    if (rc) return rc;
    if (!X || !Y || n_tok < 1 || n_tok > KCU_GEMV_MAX_TOK || !aligned16(X) || w->n_in % 4)
        return kcu__fail(KCU_ERR_INVALID, "kcu_gemv: %d tokens (1..%d), X %p (16-byte aligned), n_in %llu", n_tok,
                         KCU_GEMV_MAX_TOK, (const void *)X, (unsigned long long)w->n_in);
    kcu__w v = kcu__view(w);
    const unsigned rows_per_block = 4;
    if (w->n_out / rows_per_block >= 0x7fffffffu) return kcu__fail(KCU_ERR_INVALID, "kcu_gemv: too many rows");
    unsigned grid = kcu__blocks((size_t)w->n_out, rows_per_block);
    return kcu__dispatch(w->type, w->n_in, [&]<int TYPE, bool VEC>() -> int {
        if (n_tok == 1) k_gemv<TYPE, VEC, 1><<<grid, 128, 0, st>>>(v, X, Y, n_tok);
        else if (n_tok == 2) k_gemv<TYPE, VEC, 2><<<grid, 128, 0, st>>>(v, X, Y, n_tok);
        else if (n_tok <= 4) k_gemv<TYPE, VEC, 4><<<grid, 128, 0, st>>>(v, X, Y, n_tok);
        else k_gemv<TYPE, VEC, 8><<<grid, 128, 0, st>>>(v, X, Y, n_tok);
        KCU_LAUNCHED("kcu_gemv");
        return 0;
    });
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
                     int ldc) {
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, m, n_tok, k, &one, A, ab_type, k, B, ab_type, k, &zero, Y,
                                    CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return kcu__fail(KCU_ERR_CUBLAS, "cublasGemmEx (%d x %d x %d): %s", m, n_tok, k, blas_status(s));
    return 0;
}

extern "C" int kcu_gemm(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode,
                        cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_gemm");
    if (rc) return rc;
    if (!b || !X || !Y || n_tok < 1 || (size_t)n_tok > b->max_tok || w->n_in > b->max_in || w->n_in > 0x7fffffffu ||
        w->n_out > 0x7fffffffu || (mode != KCU_GEMM_HALF && mode != KCU_GEMM_F32))
        return kcu__fail(KCU_ERR_INVALID, "kcu_gemm: %d tokens (max %zu), n_in %llu (max %zu), mode %d", n_tok,
                         b ? b->max_tok : 0, (unsigned long long)w->n_in, b ? b->max_in : 0, mode);
    cublasStatus_t s = cublasSetStream(b->h, st);
    if (s != CUBLAS_STATUS_SUCCESS) return kcu__fail(KCU_ERR_CUBLAS, "cublasSetStream: %s", blas_status(s));
    const int k = (int)w->n_in, n_out = (int)w->n_out;
    if (w->type == KERN_TYPE_F32) return gemm_call(b, w->q, X, CUDA_R_32F, Y, n_out, n_tok, k, n_out);
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
    if (w->type == ot) return gemm_call(b, w->q, B, dt, Y, n_out, n_tok, k, n_out); /* F16/BF16 weights in place */
    const size_t es = ot == KERN_TYPE_F32 ? 4 : 2;
    size_t tile_rows = KCU_GEMM_TILE_BYTES / (w->n_in * es);
    if (tile_rows == 0) return kcu__fail(KCU_ERR_INVALID, "kcu_gemm: row of %llu too wide", (unsigned long long)w->n_in);
    /* the tile is reused by the next iteration's dequant only after this GEMM: same stream */
    for (size_t r0 = 0; r0 < w->n_out; r0 += tile_rows) {
        size_t m = w->n_out - r0 < tile_rows ? w->n_out - r0 : tile_rows;
        if ((rc = kcu_dequant_rows(w, r0, m, b->tile, ot, st))) return rc;
        if ((rc = gemm_call(b, b->tile, B, dt, Y + r0, (int)m, n_tok, k, n_out))) return rc;
    }
    return 0;
}

extern "C" int kcu_matmul(kcu_blas *b, const kcu_weight *w, const float *X, float *Y, int n_tok, int mode,
                          cudaStream_t st) {
    if (n_tok >= 1 && n_tok <= KCU_GEMV_MAX_TOK && w && w->n_in % 4 == 0) return kcu_gemv(w, X, Y, n_tok, st);
    return kcu_gemm(b, w, X, Y, n_tok, mode, st);
}
