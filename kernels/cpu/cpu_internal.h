/* Internal to kernels/cpu: the table of ISA-specific kernels chosen at start-up (dispatch.c)
 * and the matmul job they run on. Never included from outside kernels/. */
#ifndef KERNELS_CPU_INTERNAL_H
#define KERNELS_CPU_INTERNAL_H

#include <stdatomic.h>

#include "kernels/kern.h"

enum { KERN_ISA_SCALAR = 0, KERN_ISA_AVX2 = 1, KERN_ISA_AVX512 = 2, KERN_ISA_COUNT = 3 };

/* One kern_matmul call. Invariant: Y[t][o] depends only on row o of W and token t of X (or
 * Xq), never on n_tok or on which rows a thread was given. */
typedef struct {
    uint32_t wtype, act;
    const uint8_t *W;         /* (n_out, row_bytes) */
    size_t row_bytes, act_bytes;
    const float *X;           /* (n_tok, n_in) */
    const uint8_t *Xq;        /* (n_tok, act_bytes): X quantised to `act`, NULL when act is F32 */
    float *Y;                 /* (n_tok, n_out) */
    size_t n_in, n_out, n_tok;
    void *scratch;            /* this thread's kern__act_scratch_bytes(n_in, n_tok) bytes, 64-byte aligned,
                               * for the quantised-activation GEMM (n_tok > 1); NULL: none (that GEMM
                               * then runs one token at a time, same results) */
    _Atomic size_t *next;     /* packed GEMV (n_tok 1) only, non-NULL: ignore [lo, hi) and take rows
                               * [r, r + c) from next until r >= n_out, c a quarter of the rows left
                               * (16-aligned), at least chunk: big chunks keep the prefetch streams
                               * long, small ones at the end keep the threads finishing together
                               * (threads that finish early take more; a row's result never depends on
                               * who computes it) */
    size_t chunk;
} kern__mm;

/* K-quant activations (act_quant_k.c): bytes of a Q8_K block, its quantiser and the scalar
 * reference dot of a Q4_K/Q5_K/Q6_K row with a Q8_K row (kern_quantize_act_row and
 * kern_vec_dot_act call these). */
#define KERN__Q8K_BYTES 292
void kern__quantize_act_q8k(const float *x, void *out, size_t n);
float kern__vec_dot_act_k(uint32_t wtype, const void *wrow, const void *xq, size_t n);

/* Bytes of kern__mm.scratch, laid out as: the repacked row tile (nb * 8 64-byte vectors, used by
 * AVX-512), then floats dx, sx (n_tok * nb each) and the row tile's scales wd, wm (nb * 16 each),
 * then int32 cx (n_tok * nb), then the packed GEMM's X interleaved by token tiles of 8 (simd_tmpl_act.h,
 * pk_prep: 32 bytes + cx, dx, sx per token and block); nb = n_in / 32 blocks. 16 is the
 * largest row tile (GM_R). */
/* K-quants (simd_tmpl_actk.h) lay it out per super-block instead (kb = n_in / 256): the repacked row
 * tile (64 vectors), its scales (16) and d, dmin (2), then per token and super-block dx and 16
 * int32 (the bsums terms); the larger of the two layouts is what a thread gets. */
static inline size_t kern__act_scratch_bytes(size_t n_in, size_t n_tok) {
    const size_t nb = n_in / 32, kb = n_in / 256, ntp = (n_tok + 7) / 8 * 8;
    const size_t q = nb * 8 * 64 + (2 * n_tok * nb + 2 * nb * 16) * sizeof(float) + n_tok * nb * sizeof(int32_t) +
                     ntp * nb * (32 + 3 * 4); /* + the packed GEMM's interleaved copy of X */
    const size_t k = kb * (64 + 16 + 2) * 64 + n_tok * kb * (sizeof(float) + 16 * sizeof(int32_t));
    return q > k ? q : k;
}

/* Thread ith's scratch of pool p (pool.c), grown to at least `bytes` (it only grows, so a
 * steady state allocates nothing) and 64-byte aligned; freed by kern_pool_destroy. NULL when p
 * is NULL or memory runs out. Runs on pool thread ith, inside a job: each slot is touched by
 * its own thread only. */
void *kern__pool_scratch(kern_pool *p, int ith, size_t bytes);

/* Rows [lo, hi) of a packed matrix, unpacked row by row into the level's plain-row kernels
 * (pack.c): any level, either arithmetic. */
void kern__mm_packed_rows(const kern__mm *j, size_t lo, size_t hi);

/* Queries per attention tile: one tile's queries walk the cache together (kern_attn_paged_run);
 * kern_attn_scratch_floats sizes for this many. */
#define KERN__ATTN_QT 16

/* A tile of attention queries of one sequence over an f16 or Q8_0 cache (kv->kv_type): query i
 * (q[i], head_dim values already rounded to f16, for an f16 cache; qq[i], its Q8_0 blocks, for a
 * Q8_0 cache) reads kv
 * head kvh[i] at positions [0, n_ctx[i]) and its result goes
 * to out[i] (head_dim, overwritten); sc[i] is n_ctx[i] floats of scratch. Queries that share a
 * kv head are best placed next to each other (they share loads).
 * Invariant: out[i] depends only on q[i], kvh[i], n_ctx[i], the cache and scale, never on the
 * other queries of the tile nor on n (bitwise): batched steps equal one-sequence steps. */
/* Contexts longer than this go in segments of this many positions (kern_attn_n_seg) */
#define KERN__ATTN_SEG KERN_ATTN_SEG

typedef struct {
    const kern_kv_view *kv;
    float scale;
    /* Every query of a tile has n_ctx <= KERN__ATTN_SEG, or every one more. The latter are
     * computed segment by segment, segments [s_lo, s_hi) only: each segment's unnormalised sums
     * go to ot[i] (head_dim floats of scratch), then to pt[i] + s * (head_dim + 2) as (sums, max,
     * exp sum) when pt[i] is set (kern_attn_part), else folded into out[i] (kern__attn_fold). */
    size_t s_lo, s_hi;
    float *ot[KERN__ATTN_QT];
    float *pt[KERN__ATTN_QT];
    size_t c0; /* the position a tile's V sums start from zero at (its segment's first) */
    size_t n; /* 1 .. KERN__ATTN_QT */
    size_t kvh[KERN__ATTN_QT];
    const float *q[KERN__ATTN_QT];    /* f16 cache */
    const uint8_t *qq[KERN__ATTN_QT]; /* Q8_0 cache: q as Q8_0 blocks (kern_quantize_act_row) */
    float *out[KERN__ATTN_QT];
    size_t n_ctx[KERN__ATTN_QT];
    float *sc[KERN__ATTN_QT];
} kern__attn_tile;

/* Folds a segment's (o: head_dim unnormalised sums, m: its max score, l: its exp sum) into a
 * query's running (out, *M, *L), segments in order, *M = -INFINITY before the first; then
 * kern__attn_fold_end divides by the total. Out of line: every caller gets the same rounding. */
void kern__attn_fold(float *out, float *M, float *L, const float *o, float m, float l, size_t hd);
void kern__attn_fold_end(float *out, float L, size_t hd);

/* Kernels of one ISA level. Every entry is set (the scalar table is the fallback). */
typedef struct {
    const char *name;
    /* rows [lo, hi) of the f32-activation matmul / of the quantised-activation matmul */
    void (*mm_f32)(const kern__mm *j, size_t lo, size_t hi);
    void (*mm_act)(const kern__mm *j, size_t lo, size_t hi);
    /* rows [lo, hi) of a packed matrix (wtype | KERN_PACKED; lo, hi multiples of 16) with
     * quantised activations; NULL: the level has none (kern__mm_packed_rows runs it) */
    void (*mm_packed)(const kern__mm *j, size_t lo, size_t hi);
    /* kern_quantize_act_row, bitwise */
    void (*quant_act)(uint32_t act_type, const float *x, void *out, size_t n);
    /* a tile of kern_attn_paged_run over an f16 cache / a Q8_0 cache (kern__attn_tile; the
     * scalar attn_q8 is the reference arithmetic, kernels/cpu/ops.c) */
    void (*attn_f16)(const kern__attn_tile *t);
    void (*attn_q8)(const kern__attn_tile *t);
    void (*rmsnorm)(float *out, const float *x, const float *w, size_t n, float eps);
    /* dst[i] = kern_f32_to_f16(src[i]), bitwise for every input but NaN (which stays a NaN) */
    void (*f32_to_f16)(uint16_t *dst, const float *src, size_t n);
    void (*swiglu)(float *out, const float *gate, const float *up, size_t n);
    void (*add)(float *x, const float *y, size_t n);
    /* n rounds of 12 independent f32 FMA chains, each a vector of fma_lanes lanes, in
     * registers (kern_fma_peak); returns a sum of the chains so that they are computed */
    float (*fma_loop)(size_t n);
    int fma_lanes;
} kern__ops;

extern const kern__ops *kern__cur;  /* the chosen table; scalar until kern_init */
extern const kern__ops kern__ops_scalar;
const kern__ops *kern__ops_avx2(void);
const kern__ops *kern__ops_avx512(void);

/* Best level this CPU runs, and a setter for tests and benchmarks: 0, or -1 when the CPU
 * lacks the level. Not thread-safe against running kernels. */
int kern__isa_best(void);
int kern__set_isa(int isa);
int kern__isa(void);

/* Picks the level (TOKD_ISA or the best) and logs it; called once, from kern_init. */
void kern__dispatch_init(void);

#endif
