/* kern_cuda: the CUDA backend's kernel API (prefix kcu_). Device buffers, quantised weights kept
 * on the GPU, and the operations the forward pass is built from, each the counterpart of a CPU op
 * in kernels/kern.h with the same arithmetic contract (f32 activations) and tested against the
 * CPU scalar reference (tests/gpu/test_cuda_kernels.c).
 *
 * Conventions of every launcher:
 *  - shapes and pointer alignment are checked on the host before launching;
 *  - it takes the stream to run on and enqueues asynchronously (no implicit sync);
 *  - it checks cudaGetLastError() after the launch;
 *  - it returns 0 or a negative KCU_ERR_* and leaves a message in kcu_last_error() (one
 *    buffer per host thread, like cudaGetLastError); nothing here exits or aborts.
 * Device pointers are marked with a _d suffix where host and device pointers meet.
 *
 * Weights on the device (kcu_weight). Quantised formats stay quantised; the 32-blocks are
 * split into a plane of quants and a plane of scales at upload, so that every row of quants is
 * 16-byte aligned and read with 16-byte loads (ggml's Q8_0 block is 34 bytes, Q4_0 18, Q4_1 20:
 * rows of those are not aligned):
 *   F32/F16/BF16: q = (n_out, n_in) values.
 *   Q8_0: q = int8 (n_out, n_in); s = f16 d (n_out, n_in/32).
 *   Q4_0: q = (n_out, n_in/2) bytes: block b's 16 bytes of ggml qs at [16b, 16b+16) (low nibble
 *         = element i, high = element i+16); s = f16 d (n_out, n_in/32).
 *   Q4_1: q as Q4_0; s = f16 pairs (d, m) (n_out, n_in/32, 2).
 *   Q4_K/Q5_K: q = ggml's super-blocks as in the file (n_out rows of row_bytes); s = NULL.
 *         Q4_K (144 B) and Q5_K (176 B) blocks are 16-byte aligned.
 *   Q6_K: q = the first 192 bytes of each 210-byte block (ql, qh: 16-byte aligned); s = the 16
 *         int8 scales of every block (n_out, n_in/256, 16), then the f16 d of every block.
 *
 * Matmul (kcu_matmul): Y(T, n_out) = X(T, n_in) W^T.
 *  - T <= KCU_GEMV_MAX_TOK (decode): a GEMV kernel, one block per 2 or 4 output rows, weights
 *    read once for all T tokens with 16-byte loads, dequantised in registers, f32 activations and
 *    f32 sums. Same arithmetic as the CPU's exact path up to summation order. Quantised weights
 *    take it up to KCU_GEMV_BATCH_MAX tokens too, KCU_GEMV_MAX_TOK at a time: re-reading them a
 *    few times costs less than dequantising the matrix for a GEMM (and decode batches keep the
 *    f32 arithmetic).
 *  - larger T (prefill): cuBLAS. Weights are dequantised ON THE FLY, a tile of rows at a time
 *    (at most KCU_GEMM_TILE_BYTES), into a scratch buffer, then multiplied with cublasGemmEx:
 *    KCU_GEMM_HALF converts X to f16 (bf16 for BF16 weights) and runs on tensor cores with f32
 *    accumulation (F16/BF16 weights are used in place, no copy); KCU_GEMM_F32 dequantises to
 *    f32 and runs a plain f32 GEMM (no TF32), which matches the CPU's exact path to rounding.
 *    Chosen over keeping dequantised copies: no extra weight memory (an 8B Q8_0 model would need
 *    16 GB more), one code path, and prefill is compute-bound at the sizes where it matters.
 *
 * Attention over the paged KV cache (f16 only on the GPU; same layout as the CPU:
 * K[block][slot][kv_head][head_dim]). The batch's query tokens are grouped into tiles of
 * consecutive tokens of one sequence (kcu_attn_tile). kcu_attn_decode takes one-token tiles; a
 * block computes all the q heads of one kv head (up to 4 at a time), so K/V rows are read once
 * per GQA group, over one of up to KCU_ATTN_MAX_SPLITS key ranges per context (split-K, merged
 * with a log-sum-exp), the split count chosen so that even one sequence fills the GPU.
 * kcu_attn_prefill takes tiles of up to KCU_ATTN_QT tokens and runs a flash-attention style loop
 * (online softmax over key tiles held in shared memory, causal mask). As on the CPU, q is rounded
 * to f16 before meeting K; scores, softmax and sums are f32. head_dim <= 256 and even; the caches
 * 4-byte aligned (decode reads rows with 16-byte loads when head_dim % 8 == 0 and the caches are
 * 16-byte aligned, else with 4-byte loads). */
#ifndef KERNELS_CUDA_KERN_CUDA_H
#define KERNELS_CUDA_KERN_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    KCU_ERR_CUDA = -20,    /* a CUDA runtime call or launch failed */
    KCU_ERR_INVALID = -21, /* bad shape, type or alignment (caught on the host) */
    KCU_ERR_NOMEM = -22,   /* device or pinned allocation failed */
    KCU_ERR_CUBLAS = -23,  /* a cuBLAS call failed */
};

/* Message of the last failure on this host thread ("" if none). */
const char *kcu_last_error(void);

/* ---- device and buffers ---- */
typedef struct {
    char name[256];
    int sm_count, cc_major, cc_minor;
    size_t total_mem, free_mem;
    size_t smem_optin;   /* max dynamic shared memory per block (opt-in) */
    double hbm_gbs;      /* peak DRAM bandwidth from the memory clock and bus width, GB/s */
} kcu_device_info;

/* Selects device `dev` for this host thread and fills *info (may be NULL). */
int kcu_init(int dev, kcu_device_info *info);
int kcu_alloc(void **p_d, size_t bytes);         /* cudaMalloc, zeroed */
void kcu_free(void *p_d);                        /* NULL is fine */
int kcu_host_alloc(void **p, size_t bytes);      /* pinned host memory */
void kcu_host_free(void *p);
int kcu_h2d(void *dst_d, const void *src, size_t bytes, cudaStream_t st); /* async */
int kcu_d2h(void *dst, const void *src_d, size_t bytes, cudaStream_t st); /* async */
int kcu_d2d(void *dst_d, const void *src_d, size_t bytes, cudaStream_t st);
int kcu_sync(cudaStream_t st); /* cudaStreamSynchronize + error check */

/* ---- weights ---- */
typedef struct {
    uint32_t type;        /* KERN_TYPE_* */
    uint64_t n_in, n_out; /* row width (contiguous) and rows */
    void *q;              /* device: quants or values (layout above) */
    void *s;              /* device: scales for Q8_0/Q4_0/Q4_1, else NULL */
    size_t bytes;         /* device bytes of q + s */
} kcu_weight;

/* True for the types the GPU handles: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K. */
bool kcu_type_supported(uint32_t type);
/* Allocates w for (n_in, n_out) of `type` (n_in a multiple of the block size). */
int kcu_weight_alloc(kcu_weight *w, uint32_t type, uint64_t n_in, uint64_t n_out);
/* Allocates and uploads a matrix in ggml's row format (host, e.g. the model's memory map),
 * repacking the 32-block formats into the plane layout (synchronous). */
int kcu_weight_upload(kcu_weight *w, uint32_t type, const void *host, uint64_t n_in, uint64_t n_out);
/* Fills an allocated weight on the device from a hash of (seed, index): values of magnitude about
 * `scale` (quants uniform, scales = scale/qmax); for benchmarks, no host copy. */
int kcu_weight_fill_random(kcu_weight *w, uint64_t seed, float scale, cudaStream_t st);
void kcu_weight_free(kcu_weight *w);
/* Uniform random f32 in [lo, hi) from a hash of (seed, index). */
int kcu_fill_random_f32(float *p_d, size_t n, uint64_t seed, float lo, float hi, cudaStream_t st);
int kcu_fill_f32(float *p_d, size_t n, float value, cudaStream_t st);

/* Rows [row0, row0+n_rows) of w dequantised into out_d (n_rows, n_in) of out_type
 * (KERN_TYPE_F32, F16 or BF16). */
int kcu_dequant_rows(const kcu_weight *w, uint64_t row0, uint64_t n_rows, void *out_d, uint32_t out_type,
                     cudaStream_t st);

/* ---- elementwise ops (f32 activations) ---- */
/* out(n_tok, n_in) = rows tokens_d[t] of the embedding w (n_vocab rows of n_in), dequantised.
 * An id outside [0, n_out) gives a zero row (the engine checks ids first). */
int kcu_embed(float *out_d, const kcu_weight *w, const int32_t *tokens_d, int n_tok, cudaStream_t st);
/* out[r] = x[rows_d ? rows_d[r] : r] / rms * w, rows of n floats; out may equal x (rows_d NULL).
 * Per-head q/k norm is this with n = head_dim over n_tok*n_head rows. */
int kcu_rmsnorm(float *out_d, const float *x_d, const float *w_d, const int32_t *rows_d, int n_rows, int n,
                float eps, cudaStream_t st);
/* RoPE in place on x(n_tok, n_heads*head_dim), token t at position pos_d[t]; the first n_rot dims of
 * each head; neox: pairs (i, i+n_rot/2), else (2i, 2i+1). */
int kcu_rope(float *x_d, int n_tok, int n_heads, int head_dim, int n_rot, const int32_t *pos_d, float freq_base,
             bool neox, cudaStream_t st);
int kcu_swiglu(float *out_d, const float *gate_d, const float *up_d, size_t n, cudaStream_t st); /* silu(g)*u */
int kcu_add(float *x_d, const float *y_d, size_t n, cudaStream_t st);                               /* x += y */
int kcu_add_bias(float *x_d, const float *b_d, int n_tok, int n, cudaStream_t st); /* x[t][i] += b[i] */
/* Writes token t's K and V rows (kv_row f32 each) as f16 into slot slot_d[t] of the caches
 * ((n_slots, kv_row) f16 each; slot = block*block_size + pos%block_size). */
int kcu_kv_store(void *k_cache_d, void *v_cache_d, const float *k_d, const float *v_d, const int32_t *slot_d,
                 int n_tok, int kv_row, size_t n_slots, cudaStream_t st);

/* kcu_rope on q (n_head heads) and on k (n_kv heads), then kcu_kv_store of k and v, in one launch
 * with the same results bit for bit (head_dim even). */
int kcu_rope_kv(float *q_d, float *k_d, const float *v_d, int n_tok, int n_head, int n_kv, int head_dim, int n_rot,
                const int32_t *pos_d, float freq_base, bool neox, void *k_cache_d, void *v_cache_d, const int32_t *slot_d,
                size_t n_slots, cudaStream_t st);

/* ---- matmul ---- */
#define KCU_GEMV_MAX_TOK 8
#define KCU_GEMV_BATCH_MAX 32
#define KCU_GEMM_TILE_BYTES ((size_t)64 << 20)
enum { KCU_GEMM_HALF = 0, KCU_GEMM_F32 = 1 };

typedef struct kcu_blas kcu_blas;
/* cuBLAS handle and scratch for GEMMs of up to max_tok tokens of width up to max_in. */
int kcu_blas_new(kcu_blas **out, size_t max_tok, size_t max_in);
void kcu_blas_destroy(kcu_blas *b);
size_t kcu_blas_bytes(const kcu_blas *b);
/* Bytes of dequantised rows per GEMM call (1 MiB .. KCU_GEMM_TILE_BYTES, the default); smaller
 * tiles can stay in L2 between the dequantisation and the GEMM (a measurement knob). */
void kcu_blas_set_tile(kcu_blas *b, size_t bytes);

/* Y(n_tok, n_out) = X(n_tok, n_in) W^T; X and Y 16-byte aligned; n_tok <= the blas max_tok
 * when the GEMM path is taken. */
int kcu_matmul(kcu_blas *b, const kcu_weight *w, const float *X_d, float *Y_d, int n_tok, int gemm_mode,
               cudaStream_t st);
/* Y += X W^T (the residual add fused into the matmul: the GEMV adds its sum to Y, the GEMM runs
 * with beta = 1). */
int kcu_matmul_add(kcu_blas *b, const kcu_weight *w, const float *X_d, float *Y_d, int n_tok, int gemm_mode,
                   cudaStream_t st);
/* True when kcu_matmul of n_tok tokens takes the GEMV path (no cuBLAS call). */
bool kcu_matmul_is_gemv(const kcu_weight *w, int n_tok);
/* The two paths on their own (tests): GEMV for n_tok <= KCU_GEMV_MAX_TOK, GEMM for any n_tok. */
int kcu_gemv(const kcu_weight *w, const float *X_d, float *Y_d, int n_tok, cudaStream_t st);
int kcu_gemm(kcu_blas *b, const kcu_weight *w, const float *X_d, float *Y_d, int n_tok, int gemm_mode,
             cudaStream_t st);

/* ---- attention ---- */
#define KCU_ATTN_QT 16          /* query tokens per prefill tile */
#define KCU_ATTN_MAX_SPLITS 32  /* key ranges per decode query */
#define KCU_ATTN_MAX_HEAD_DIM 256

/* Queries t0 .. t0+n_q-1 of the batch, at positions pos0 .. pos0+n_q-1 of one sequence whose
 * block table starts at block_tables_d[bt_off]; query i sees keys [0, pos0+i]. */
typedef struct {
    int32_t t0, n_q, pos0, bt_off;
} kcu_attn_tile;

typedef struct {
    const void *k_d, *v_d;          /* (n_slots, n_kv_head, head_dim) f16 each */
    const int32_t *block_tables_d;  /* concatenated block tables */
    int n_head, n_kv_head, head_dim, block_size;
    float scale;
} kcu_attn_args;

/* out(T, n_head*head_dim) for the one-token tiles tiles_d[0..n_tiles); q(T, n_head*head_dim).
 * max_keys: the largest pos0+1 among the tiles (host-known; sets the split count).
 * scratch_d: split partials, scratch_floats of them; fewer splits are used when it is small, one
 * when it is NULL (kcu_attn_decode_scratch_floats gives the size for the full split count). The
 * scratch is only used between the two kernels of one call (no state is kept across calls). */
int kcu_attn_decode(float *out_d, const float *q_d, const kcu_attn_args *a, const kcu_attn_tile *tiles_d,
                    int n_tiles, int max_keys, float *scratch_d, size_t scratch_floats, cudaStream_t st);
size_t kcu_attn_decode_scratch_floats(int n_tiles, int n_head, int head_dim);
/* Tiles of 1..KCU_ATTN_QT queries (causal, flash-attention style). */
int kcu_attn_prefill(float *out_d, const float *q_d, const kcu_attn_args *a, const kcu_attn_tile *tiles_d,
                     int n_tiles, cudaStream_t st);

#ifdef __cplusplus
}
#endif

#endif
