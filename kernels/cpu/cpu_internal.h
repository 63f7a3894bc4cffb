/* Internal to kernels/cpu: the table of ISA-specific kernels chosen at start-up (dispatch.c)
 * and the matmul job they run on. Never included from outside kernels/. */
#ifndef KERNELS_CPU_INTERNAL_H
#define KERNELS_CPU_INTERNAL_H

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
} kern__mm;

/* Kernels of one ISA level. Every entry is set (the scalar table is the fallback). */
typedef struct {
    const char *name;
    /* rows [lo, hi) of the f32-activation matmul / of the quantised-activation matmul */
    void (*mm_f32)(const kern__mm *j, size_t lo, size_t hi);
    void (*mm_act)(const kern__mm *j, size_t lo, size_t hi);
    /* kern_quantize_act_row, bitwise */
    void (*quant_act)(uint32_t act_type, const float *x, void *out, size_t n);
    /* one head of kern_attn_paged over an f16 cache: q already rounded to f16 values, kv head
     * kvh, out (head_dim) overwritten, scratch >= n_ctx floats */
    void (*attn_f16)(float *out, const float *q, const kern_kv_view *kv, size_t kvh, size_t n_ctx, float scale,
                     float *scratch);
    void (*rmsnorm)(float *out, const float *x, const float *w, size_t n, float eps);
    void (*swiglu)(float *out, const float *gate, const float *up, size_t n);
    void (*add)(float *x, const float *y, size_t n);
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
