/* kern: the kernel API. Tensor types, quantized row formats, and the CPU operations the
 * forward pass is built from. Every op here has a scalar reference that is always compiled
 * (kernels/cpu/ *_ref); faster versions are chosen at start-up and tested against it.
 *
 * Row formats follow ggml's block layouts bit for bit (GGUF files store them as is):
 *   Q8_0: 32 weights per block: f16 d; int8 qs[32]                 w = d*q
 *   Q4_0: 32 per block: f16 d; uint8 qs[16] (low nibbles = 0..15, high = 16..31)  w = d*(q-8)
 *   Q4_1: 32 per block: f16 d, f16 m; uint8 qs[16]                   w = d*q + m
 *   Q4_K: 256 per block (super-block): f16 d, f16 dmin, uint8 scales[12] (8 6-bit scales and
 *         mins), uint8 qs[128]                                       w = d*sc*q - dmin*m
 *   Q5_K: 256 per block: f16 d, dmin, scales[12], uint8 qh[32], qs[128]
 *   Q6_K: 256 per block: uint8 ql[128], qh[64], int8 scales[16], f16 d
 *   F16, BF16, F32: plain.
 * Thread: all functions are reentrant; kern_pool_run fans work out to the pool's threads. */
#ifndef KERNELS_KERN_H
#define KERNELS_KERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml type ids (the numbers stored in GGUF tensor infos). */
enum {
    KERN_TYPE_F32 = 0,
    KERN_TYPE_F16 = 1,
    KERN_TYPE_Q4_0 = 2,
    KERN_TYPE_Q4_1 = 3,
    KERN_TYPE_Q8_0 = 8,
    KERN_TYPE_Q4_K = 12,
    KERN_TYPE_Q5_K = 13,
    KERN_TYPE_Q6_K = 14,
    KERN_TYPE_BF16 = 30,
    KERN_TYPE_COUNT = 40 /* bound for tables indexed by type id */
};

#define KERN_QK 32   /* block size of Q8_0/Q4_0/Q4_1 */
#define KERN_QK_K 256 /* super-block size of the K-quants */

/* Type traits. kern_type_supported is false for ids outside the list above. */
bool kern_type_supported(uint32_t type);
const char *kern_type_name(uint32_t type);    /* "Q4_K", or "unknown" */
size_t kern_type_block_elems(uint32_t type);  /* 1 for F32/F16/BF16, 32, or 256 */
size_t kern_type_block_bytes(uint32_t type);  /* bytes of one block */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t kern_row_bytes(uint32_t type, size_t n);

/* Half-precision conversions (IEEE binary16 and bfloat16), round-to-nearest-even. */
float kern_f16_to_f32(uint16_t h);
uint16_t kern_f32_to_f16(float f);
float kern_bf16_to_f32(uint16_t h);
uint16_t kern_f32_to_bf16(float f);

/* Scalar references. n must be a multiple of the type's block size.
 * dequant: row of `type` -> n floats. dot: sum_i w[i]*x[i] over one row.
 * quantize: n floats -> row of `type` (same rounding rules as ggml's reference quantizers). */
void kern_dequant_row_ref(uint32_t type, const void *row, float *out, size_t n);
float kern_dot_ref(uint32_t type, const void *row, const float *x, size_t n);
int kern_quantize_row_ref(uint32_t type, const float *x, void *row, size_t n);

/* Dispatched versions (fastest available; identical contract). */
void kern_dequant_row(uint32_t type, const void *row, float *out, size_t n);
float kern_dot(uint32_t type, const void *row, const float *x, size_t n);

/* ---- thread pool ---- */
typedef struct kern_pool kern_pool;
/* Persistent pool of n_threads workers (the calling thread counts as worker 0). Workers spin
 * briefly after each job, then sleep on a condition variable. n_threads <= 0: one per CPU. */
kern_pool *kern_pool_new(int n_threads);
/* The same, with thread i pinned to the i-th CPU this process may use (sched_getaffinity;
 * wrapping around when there are fewer), the caller (worker 0) on its first job. */
kern_pool *kern_pool_new_pinned(int n_threads, bool pin);
void kern_pool_destroy(kern_pool *p);
int kern_pool_size(const kern_pool *p);
/* Runs fn(ctx, ith, nth) for ith in [0, nth) on the pool and returns when all are done. */
void kern_pool_run(kern_pool *p, void (*fn)(void *ctx, int ith, int nth), void *ctx);

/* ---- ops (f32 activations) ---- */
/* Y[t][o] = sum_i W[o][i] * X[t][i]; W is n_out rows of `wtype`, each n_in wide.
 * X: (n_tok, n_in) f32, Y: (n_tok, n_out) f32. Parallel over output rows on the pool (p may be
 * NULL: runs on the calling thread), each thread one contiguous range of rows (decode streams
 * W once, split between the threads). For n_tok > 1 weight rows are decoded once per tile of 4
 * rows into a per-thread stack buffer and reused for every token; n_in must be
 * <= KERN_MATMUL_MAX_IN. */
#define KERN_MATMUL_MAX_IN 65536
/* Two arithmetics, chosen by act_scratch:
 *  - NULL: f32 activations against the dequantised weights (the exact product; default).
 *  - non-NULL: activations quantised the way llama.cpp's CPU backend does it: for Q8_0 and
 *    Q4_0 weights each 32-block of X becomes Q8_0, for Q4_1 Q8_1 (int8 + f16 scale + f16 scaled
 *    sum), and each block dot is an exact integer sum, scaled and accumulated with one fused
 *    multiply-add per block (kernels/cpu/act_quant.c); for Q4_K/Q5_K/Q6_K each 256-block
 *    becomes Q8_K and each super-block dot is an exact integer sum followed by fixed float
 *    steps (act_quant_k.c); other weight types stay f32. act_scratch then holds the quantised X: at
 *    least kern_matmul_scratch_bytes(n_in, n_tok) bytes.
 * Either way a row's result does not depend on n_tok or the thread split. */
void kern_matmul(kern_pool *p, uint32_t wtype, const void *W, const float *X, float *Y,
                 size_t n_in, size_t n_out, size_t n_tok, void *act_scratch);
size_t kern_matmul_scratch_bytes(size_t n_in, size_t n_tok);
/* Several matmuls of the same X (e.g. Q, K and V, or gate and up) in one pool job: the same
 * results as one kern_matmul per entry, with one fan-out instead of n and, with act_scratch, X
 * quantised once (when every entry wants the same activation format; else one job each). */
typedef struct {
    uint32_t wtype;
    const void *W; /* (n_out, n_in) of wtype */
    float *Y;      /* (n_tok, n_out) */
    size_t n_out;
} kern_matmul_out;
void kern_matmul_multi(kern_pool *p, const kern_matmul_out *outs, int n, const float *X, size_t n_in, size_t n_tok,
                       void *act_scratch);
/* Scalar reference of kern_matmul (same arithmetic, one thread, allocates). */
void kern_matmul_ref(uint32_t wtype, const void *W, const float *X, float *Y, size_t n_in,
                     size_t n_out, size_t n_tok, bool quant_act);

/* Packed weights. kern_pack rearranges a Q8_0/Q4_0/Q4_1 matrix (n_out a multiple of
 * KERN_PACK_ROWS) in tiles of 16 rows that the AVX-512 quantised-activation kernels stream
 * without gathers or transposes (layout: kernels/cpu/pack.c); same size as the plain rows.
 * kern_matmul / kern_matmul_multi take it as wtype | KERN_PACKED, with bitwise the plain
 * matrix's results (levels without packed kernels unpack row by row). kern_pack_supported:
 * whether the current level has packed kernels for this type and shape (else packing gains
 * nothing). kern_pack returns 0, or -1 for a type or shape it does not pack. */
#define KERN_PACKED 0x100u
#define KERN_PACK_ROWS 16
bool kern_pack_supported(uint32_t wtype, size_t n_in, size_t n_out);
int kern_pack(kern_pool *p, uint32_t wtype, const void *W, void *out, size_t n_in, size_t n_out);
/* Row `row` of a packed matrix back in the plain row format. */
void kern_unpack_row(uint32_t wtype, const void *Wp, size_t n_in, size_t row, void *out);

/* Activation formats: the type X is quantised to for a weight type (KERN_TYPE_Q8_0,
 * KERN_ACT_Q8_1, KERN_ACT_Q8_K, or KERN_TYPE_F32 when X stays f32). */
#define KERN_ACT_Q8_1 9 /* ggml's Q8_1: f16 d, f16 s (= d * sum q), int8 qs[32] */
/* ggml's Q8_K (type 15), for Q4_K/Q5_K/Q6_K weights: per 256 values f32 d, int8 qs[256],
 * int16 bsums[16] (sums of 16 qs); the arithmetic is in kernels/cpu/act_quant_k.c */
#define KERN_ACT_Q8_K 15
uint32_t kern_act_type(uint32_t wtype);
size_t kern_act_row_bytes(uint32_t act_type, size_t n);
/* Quantise one activation row (n a multiple of 32; of 256 for Q8_K) as ggml's
 * quantize_row_q8_0/q8_1/q8_K(_ref) do. */
void kern_quantize_act_row(uint32_t act_type, const float *x, void *out, size_t n);
/* Dot of a weight row with a quantised activation row (scalar, the reference arithmetic). */
float kern_vec_dot_act(uint32_t wtype, const void *wrow, const void *xq, size_t n);

/* out = x / rms(x) * w  (per row of n). */
void kern_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps);
/* RoPE in place on one head of size head_dim at position pos. Rotates the first n_rot dims.
 * neox=false: pairs (2i, 2i+1) (llama GGUF); neox=true: pairs (i, i + n_rot/2) (qwen). */
void kern_rope(float *x, size_t head_dim, size_t n_rot, int32_t pos, float freq_base, bool neox);
/* kern_rope in two steps, for many heads (and layers) at one position: the table cs[2i], cs[2i+1]
 * = cos, sin of pair i's angle (n_rot floats), then the rotation; the same results. */
void kern_rope_table(float *cs, size_t n_rot, int32_t pos, float freq_base);
void kern_rope_apply(float *x, const float *cs, size_t n_rot, bool neox);
/* out[i] = silu(gate[i]) * up[i] */
void kern_swiglu(float *out, const float *gate, const float *up, size_t n);
/* x[i] += y[i] */
void kern_add(float *x, const float *y, size_t n);
/* In-place softmax over n values; returns nothing. */
void kern_softmax(float *x, size_t n);


/* ---- attention over a paged KV cache ----
 * One layer's cache is n_blocks blocks of block_size token slots; a slot holds n_kv_head
 * heads of head_dim values of kv_type (KERN_TYPE_F16, KERN_TYPE_F32 or KERN_TYPE_Q8_0):
 *   V[block][slot][kv_head][row bytes], and K likewise except for F16,
 * where a (slot, kv head) row is kern_row_bytes(kv_type, head_dim) bytes: 2 or 4 per value, or
 * for Q8_0 head_dim / 32 ggml Q8_0 blocks (f16 d, int8 q[32]; value = d * q), 34 bytes each
 * (head_dim must then be a multiple of 32). An F16 K block is dimension-major,
 *   K[block][kv_head][head_dim][slot] (halves),
 * so that one value of consecutive positions is one vector for the scores. A block is
 * block_size * kern_row_bytes(kv_type, n_kv_head * head_dim) bytes either way, and plain bytes:
 * copying one copies its KV.
 * A sequence's logical block b lives in physical block block_table[b]. */
typedef struct {
    const void *k;           /* (n_blocks, block_size, n_kv_head, row bytes) of kv_type */
    const void *v;           /* same layout */
    uint32_t kv_type;
    size_t block_size;
    size_t n_kv_head;
    size_t head_dim;
    const int32_t *block_table; /* the sequence's physical block ids */
} kern_kv_view;

/* Writes one token's K and V rows (n_kv_head*head_dim f32 each) at position pos. Q8_0 rows
 * are quantised block by block as kern_quantize_act_row(KERN_TYPE_Q8_0) does (ggml's x86
 * quantize_row_q8_0: d = max|x| / 127, q = round-half-even(x * 127 / max|x|), f16 d), bitwise
 * the same at every ISA level. */
void kern_kv_store(void *k_layer, void *v_layer, uint32_t kv_type, size_t block_size,
                   size_t n_kv_head, size_t head_dim, const int32_t *block_table, int32_t pos,
                   const float *k_row, const float *v_row);

/* Floats of scratch one thread needs for attention over up to max_ctx positions with heads of
 * head_dim (a tile of queries: their f16-rounded q rows and their scores). */
size_t kern_attn_scratch_floats(size_t max_ctx, size_t head_dim);

/* Causal attention of one query token attending to positions [0, n_ctx) of its sequence, for
 * heads [h0, h1): out (n_head*head_dim) = softmax(q.K^T * scale) V per head, with GQA (head h
 * uses kv head h / (n_head / n_kv_head)). With an f16 cache, q is rounded to f16 before meeting
 * K and the softmax weights are rounded to f16 before meeting V (llama.cpp's CPU path); sums
 * are f32. With a Q8_0 cache q is quantised to Q8_0 and meets K in integers (llama.cpp's
 * arithmetic for a Q8_0 K: kern_vec_dot_act), and each f32 softmax weight times a V block's
 * scale meets its int8 values (kernels/cpu/ops.c, attn_tile_scalar, defines the reference
 * arithmetic). scratch: kern_attn_scratch_floats(n_ctx, head_dim) floats. */
void kern_attn_paged(float *out, const float *q, size_t n_head, size_t h0, size_t h1,
                     const kern_kv_view *kv, size_t n_ctx, float scale, float *scratch);

/* Long contexts. A query with n_ctx > KERN_ATTN_SEG attends in segments of KERN_ATTN_SEG
 * positions (flash-decoding): per segment the max m of its scores, the weights exp(s - m)
 * (rounded to f16 for an f16 cache), their sum l and the unnormalised sums o of weights times
 * V; the segments are then folded in order (out = sum o e^(m - M) / sum l e^(m - M)) with one
 * fixed rounding. kern_attn_paged computes all of it; kern_attn_part computes the partials of
 * some segments, so that the segments of one query can be spread over threads, and
 * kern_attn_fold folds them: bitwise kern_attn_paged's result. */
#define KERN_ATTN_SEG 512
/* Segments of a query at context n_ctx: 0 up to KERN_ATTN_SEG (one pass, no partials), else
 * ceil(n_ctx / KERN_ATTN_SEG). */
size_t kern_attn_n_seg(size_t n_ctx);
/* Partials of segments [s_lo, s_hi) of heads [h0, h1) of one token (q: its n_head rows) at
 * context n_ctx > KERN_ATTN_SEG: head h's segment s goes to part + (h * n_seg + s) * (head_dim
 * + 2), n_seg = kern_attn_n_seg(n_ctx): head_dim sums, then m and l. F16 or Q8_0 cache.
 * scratch: kern_attn_scratch_floats(n_ctx, head_dim) floats. */
void kern_attn_part(float *part, const float *q, size_t n_head, size_t h0, size_t h1, const kern_kv_view *kv,
                    size_t n_ctx, size_t s_lo, size_t s_hi, float scale, float *scratch);
/* out (n_head * head_dim, heads [h0, h1) written) from every segment's partials */
void kern_attn_fold(float *out, const float *part, size_t h0, size_t h1, size_t head_dim, size_t n_ctx);

/* kern_attn_paged for a run of consecutive query tokens of one sequence, over a token-major
 * range of (token, head) items: item k = i * n_head + h (token i of the run, head h) is
 * computed for k in [lo, hi); token i (q rows q + i*n_head*head_dim, out likewise) attends to
 * positions [0, n_ctx0 + i). The heads that share a kv head are computed together, several
 * tokens at a time, so each K/V row is read once for them all. An item's result depends only
 * on its q row, its context and the cache: bitwise the same whatever the range or the run.
 * scratch: kern_attn_scratch_floats(n_ctx of the run's last token, head_dim) floats. */
void kern_attn_paged_run(float *out, const float *q, size_t n_head, size_t lo, size_t hi,
                         const kern_kv_view *kv, size_t n_ctx0, float scale, float *scratch);

/* One-time initialisation of lookup tables (f16 -> f32) and choice of the CPU kernel level
 * (best of avx512 / avx2 / scalar, or TOKD_ISA=scalar|avx2|avx512; logged once). Idempotent
 * and thread-safe; call it before the first op (the engine does, in eng_ctx_new). */
void kern_init(void);

/* ---- batched dot (kernels/cpu/quant.c) ---- */
/* out[r] = kern_dot(type, rows + r*row_stride_bytes, x, n) for r in [0, n_rows): the rows of
 * a weight matrix against one activation vector (the decode matmul). Same contract as
 * kern_dot; an unsupported type aborts in kern_dot/kern_dequant_row and their _ref versions
 * (loaders reject such types first), kern_quantize_row_ref returns -EINVAL instead. */
void kern_dot_rows(uint32_t type, const void *rows, size_t row_stride_bytes, size_t n_rows,
                   const float *x, size_t n, float *out);

/* ---- hardware ceilings, for `tokd bench` ---- */
/* f32 FMA throughput in GFLOP/s (2 per lane per FMA) of the pool's threads at the chosen ISA
 * level: independent chains of the widest vector FMA, in registers, best of runs over about
 * min_s seconds (kernels/cpu/ops.c). The compute floor of an f32 kernel. */
double kern_fma_peak(kern_pool *p, double min_s);

/* ---- memory bandwidth (kernels/cpu/membw.c), for `tokd bench` ---- */
/* Reads bytes/8 64-bit words of buf, each pool thread a contiguous slice (p may be NULL: the
 * calling thread), and returns their sum. */
uint64_t kern_membw_read(kern_pool *p, const void *buf, size_t bytes);
/* Writes `value` to every byte, split across the pool like kern_membw_read, so that each page
 * is first touched by the thread that will read it. */
void kern_membw_touch(kern_pool *p, void *buf, size_t bytes, uint8_t value);
/* Median read bandwidth in GB/s (1e9 bytes/s) over `runs` timed passes of kern_membw_read
 * (after one warm-up pass). 0 for a NULL buffer, bytes < 8 or runs <= 0. */
double kern_membw_measure(kern_pool *p, const void *buf, size_t bytes, int runs);

#endif
