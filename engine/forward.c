/* The forward pass: one transformer step over a flat ragged batch (eng_batch) against the paged
 * KV cache held by the context. Reads top to bottom as a per-layer list of kernel calls; every
 * buffer is allocated once in eng_ctx_new (sized by eng_ctx_params), none per step.
 * Thread: an eng_ctx is used by one engine thread; its pool fans out inside the ops. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/forward_cuda.h"
#include "engine/model_internal.h"

/* Attention cost of a (token, head) item beyond its context length, in positions' worth: the
 * q rounding, the softmax pass and the output store (attn_split) */
#define ATTN_ITEM_OVERHEAD 16
#define ATTN_SPLIT_MAX_T 4 /* steps of at most this many tokens may spread a query's segments (attn_split_worker) */

struct eng_ctx {
    const eng_model *m;
    eng_ctx_params p;
    kern_pool *pool;
    size_t kv_row;        /* n_head_kv * head_dim */
    size_t kv_row_bytes;  /* one slot's K (or V) row of kv_type: kern_row_bytes(kv_type, kv_row) */
    void **k_cache;       /* (n_layer) -> (n_blocks, block_size, kv_row_bytes) bytes (kernels/kern.h) */
    void **v_cache;       /* same */
    /* activations, (max_tokens, width) each */
    float *x;             /* residual stream (T, n_embd) */
    float *xn;            /* normed input (T, max(n_embd, q_dim)) */
    float *q, *k, *v;     /* (T, q_dim), (T, kv_dim), (T, kv_dim) */
    float *attn;          /* (T, q_dim) */
    float *gate, *up;     /* (T, n_ff) */
    float *tmp;           /* (T, n_embd) */
    float *scores;        /* (n_threads, attn_scratch) attention scratch */
    size_t attn_scratch;  /* floats per thread: kern_attn_scratch_floats(max_ctx, head_dim) */
    float *attn_part;     /* (ATTN_SPLIT_MAX_T, n_head, attn_n_seg, head_dim + 2) segment partials of
                             attn_split_worker; NULL: never split (one thread, short contexts) */
    size_t attn_n_seg;    /* kern_attn_n_seg(max_ctx) */
    int32_t *tok_seq;     /* (T) owning sequence of each batch token */
    int32_t *tok_pos;     /* (T) position of each batch token */
    uint64_t *attn_cost;  /* (T + 1) prefix sums of the tokens' attention cost (attn_split) */
    float *rope_cs;       /* (T, n_rot) kern_rope_table of each batch token's position (all layers) */
    int32_t *logit_rows;  /* (max_logits) batch token index of each logits row */
    void *mm_scratch;     /* quantised activations for kern_matmul */
    eng_layer *layers;    /* (n_layer) the model's layer table, matmul weights swapped for packed ones */
    eng_weight output;    /* likewise the model's output matrix */
    void *packed_raw;     /* this context's packed weights (kern_pack; quant_act on a level with packed
                             kernels), one allocation */
    eng_cuda *cuda;       /* device = 1: weights, KV cache and activations on the GPU (forward_cuda.c);
                             the host KV cache is then not allocated */
    char last_error[256];
};

/* The K/V element types the cache takes (kernels/kern.h, kern_kv_view) */
static bool kv_type_ok(uint32_t t) { return t == KERN_TYPE_F16 || t == KERN_TYPE_F32 || t == KERN_TYPE_Q8_0; }

static const struct {
    const char *name;
    uint32_t type;
} kv_names[] = {{"f16", KERN_TYPE_F16}, {"q8_0", KERN_TYPE_Q8_0}, {"f32", KERN_TYPE_F32}};

int eng_kv_type_parse(const char *name, uint32_t *type) {
    for (size_t i = 0; i < sizeof kv_names / sizeof kv_names[0]; i++)
        if (strcmp(name, kv_names[i].name) == 0) return *type = kv_names[i].type, 0;
    return ENG_ERR_INVALID;
}

const char *eng_kv_type_name(uint32_t type) {
    for (size_t i = 0; i < sizeof kv_names / sizeof kv_names[0]; i++)
        if (kv_names[i].type == type) return kv_names[i].name;
    return "unknown";
}

size_t eng_kv_token_bytes(const eng_model *m, uint32_t kv_type) {
    const eng_hparams *hp = &m->hp;
    if (!kv_type_ok(kv_type)) return 0;
    return 2 * (size_t)hp->n_layer * kern_row_bytes(kv_type, (size_t)hp->n_head_kv * hp->head_dim);
}

void eng_ctx_params_default(eng_ctx_params *p) {
    *p = (eng_ctx_params){.max_tokens = 512, .max_logits = 0, .n_blocks = 0, .block_size = 16,
                          .max_ctx = 0, .kv_type = KERN_TYPE_F16, .n_threads = 0, .quant_act = false,
                          .device = 0, .cuda_f32_gemm = false, .cuda_graphs = true};
}

static int ctx_alloc(eng_ctx *c) {
    const eng_hparams *hp = &c->m->hp;
    size_t T = (size_t)c->p.max_tokens, q_dim = (size_t)hp->n_head * hp->head_dim;
    size_t wide = q_dim > hp->n_embd ? q_dim : hp->n_embd;
    c->attn_scratch = kern_attn_scratch_floats((size_t)c->p.max_ctx, hp->head_dim);
    size_t kv_bytes = (size_t)c->p.n_blocks * c->p.block_size * c->kv_row_bytes;
    if (!(c->k_cache = tk_calloc(hp->n_layer, sizeof(void *))) || !(c->v_cache = tk_calloc(hp->n_layer, sizeof(void *))))
        return ENG_ERR_NOMEM;
    for (uint32_t l = 0; l < hp->n_layer && c->p.device == 0; l++) /* the CUDA backend keeps its own on the device */
        if (!(c->k_cache[l] = tk_calloc(1, kv_bytes)) || !(c->v_cache[l] = tk_calloc(1, kv_bytes))) return ENG_ERR_NOMEM;
    if (!(c->x = tk_calloc(T * hp->n_embd, sizeof(float))) || !(c->xn = tk_calloc(T * wide, sizeof(float))) ||
        !(c->q = tk_calloc(T * q_dim, sizeof(float))) || !(c->k = tk_calloc(T * c->kv_row, sizeof(float))) ||
        !(c->v = tk_calloc(T * c->kv_row, sizeof(float))) || !(c->attn = tk_calloc(T * q_dim, sizeof(float))) ||
        !(c->gate = tk_calloc(T * hp->n_ff, sizeof(float))) || !(c->up = tk_calloc(T * hp->n_ff, sizeof(float))) ||
        !(c->tmp = tk_calloc(T * hp->n_embd, sizeof(float))) ||
        !(c->scores = tk_calloc((size_t)kern_pool_size(c->pool) * c->attn_scratch, sizeof(float))) ||
        !(c->tok_seq = tk_calloc(T, sizeof(int32_t))) || !(c->tok_pos = tk_calloc(T, sizeof(int32_t))) ||
        !(c->attn_cost = tk_calloc(T + 1, sizeof(uint64_t))) ||
        !(c->rope_cs = tk_calloc(T * (hp->n_rot ? hp->n_rot : 1), sizeof(float))) ||
        !(c->logit_rows = tk_calloc((size_t)c->p.max_logits, sizeof(int32_t))))
        return ENG_ERR_NOMEM;
    c->attn_n_seg = kern_attn_n_seg((size_t)c->p.max_ctx);
    if (kern_pool_size(c->pool) > 1 && c->attn_n_seg && c->p.kv_type != KERN_TYPE_F32 && c->p.device == 0 &&
        c->p.attn_split >= 0 &&
        !(c->attn_part = tk_calloc(ATTN_SPLIT_MAX_T * hp->n_head * c->attn_n_seg * (hp->head_dim + 2), sizeof(float))))
        return ENG_ERR_NOMEM;
    size_t max_in = hp->n_ff > wide ? hp->n_ff : wide;
    if (c->p.quant_act && !(c->mm_scratch = tk_malloc(kern_matmul_scratch_bytes(max_in, T)))) return ENG_ERR_NOMEM;
    return 0;
}

/* The context's view of the matmul weights: the model's, or (8-bit activations on a CPU level
 * with packed kernels) its own packed copy of every matrix that packs, made once here with the
 * pool. The model stays immutable; the map pages of the packed matrices are dropped
 * (MADV_DONTNEED on a read-only file map: they read back from the file if anything touches
 * them again), so memory does not double. Packed results are bitwise the plain ones. */
static int ctx_weights(eng_ctx *c) {
    const eng_model *m = c->m;
    const uint32_t L = m->hp.n_layer;
    if (!(c->layers = tk_malloc((size_t)L * sizeof *c->layers))) return ENG_ERR_NOMEM;
    memcpy(c->layers, m->layers, (size_t)L * sizeof *c->layers);
    c->output = m->output;
    if (!c->p.quant_act || c->p.device != 0) return 0;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t total = 0;
    uint8_t *base = NULL;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        for (uint32_t l = 0; l <= L; l++) {
            eng_layer *ly = l < L ? &c->layers[l] : NULL;
            eng_weight *ws[7] = {&c->output};
            int n = 1;
            if (ly) ws[0] = &ly->wq, ws[1] = &ly->wk, ws[2] = &ly->wv, ws[3] = &ly->wo, ws[4] = &ly->w_gate,
                ws[5] = &ly->w_up, ws[6] = &ly->w_down, n = 7;
            for (int i = 0; i < n; i++) {
                eng_weight *w = ws[i];
                if (!kern_pack_supported(w->type, w->ne0, w->ne1)) continue;
                const size_t bytes = kern_row_bytes(w->type, w->ne0) * w->ne1;
                if (pass == 1) {
                    kern_pack(c->pool, w->type, w->data, base + off, w->ne0, w->ne1);
                    uintptr_t a = ((uintptr_t)w->data + page - 1) & ~(uintptr_t)(page - 1);
                    uintptr_t b = ((uintptr_t)w->data + bytes) & ~(uintptr_t)(page - 1);
                    if (w->data != m->tok_embd.data && b > a) madvise((void *)a, b - a, MADV_DONTNEED);
                    w->data = base + off, w->type |= KERN_PACKED;
                }
                off += (bytes + 63) & ~(size_t)63;
            }
        }
        if (pass == 0) {
            if (!(total = off)) return 0;
            TK_INFO("engine: %.1f MiB of weights packed for the 8-bit kernels", (double)total / 1048576.0);
            if (!(c->packed_raw = tk_malloc(total + 63))) return ENG_ERR_NOMEM;
            base = (uint8_t *)(((uintptr_t)c->packed_raw + 63) & ~(uintptr_t)63);
        }
    }
    return 0;
}

int eng_ctx_new(const eng_model *m, const eng_ctx_params *p, eng_ctx **out, char *err, size_t errlen) {
    *out = NULL;
    kern_init();
    eng_ctx *c = tk_calloc(1, sizeof *c);
    if (!c) return ENG_ERR_NOMEM;
    c->m = m;
    c->p = *p;
    if (c->p.max_ctx <= 0) c->p.max_ctx = (int32_t)m->hp.n_ctx_train;
    if (c->p.max_logits <= 0) c->p.max_logits = c->p.max_tokens;
    if (c->p.n_blocks <= 0) c->p.n_blocks = (c->p.max_ctx + c->p.block_size - 1) / c->p.block_size;
    c->kv_row = (size_t)m->hp.n_head_kv * m->hp.head_dim;
    c->kv_row_bytes = kv_type_ok(c->p.kv_type) ? kern_row_bytes(c->p.kv_type, c->kv_row) : 0;
    int rc = ENG_ERR_INVALID;
    if (c->p.max_tokens <= 0 || c->p.block_size <= 0 || c->p.max_ctx <= 0 || !kv_type_ok(c->p.kv_type)) {
        if (err) snprintf(err, errlen, "engine context: bad parameters (max_tokens %d, block_size %d, kv type %u)",
                          c->p.max_tokens, c->p.block_size, c->p.kv_type);
        goto fail;
    }
    if (c->p.kv_type == KERN_TYPE_Q8_0 && m->hp.head_dim % KERN_QK) {
        if (err) snprintf(err, errlen, "engine context: a q8_0 KV cache stores rows of head_dim in blocks of %d values; "
                          "this model's head_dim is %u (use kv_type f16)", KERN_QK, m->hp.head_dim);
        goto fail;
    }
    if (c->p.device != 0 && c->p.device != 1) {
        if (err) snprintf(err, errlen, "engine context: unknown device %d (0 cpu, 1 cuda)", c->p.device);
        goto fail;
    }
#ifndef TOKD_CUDA
    if (c->p.device == 1) {
        if (err) snprintf(err, errlen, "engine context: tokd was built without CUDA (rebuild with make CUDA=1)");
        rc = ENG_ERR_DEVICE;
        goto fail;
    }
#endif
    if (c->p.device == 1 && (c->p.quant_act || c->p.kv_type != KERN_TYPE_F16)) {
        if (err) snprintf(err, errlen, "engine context: the CUDA backend takes f32 activations and an f16 KV cache only "
                          "(kv_type %s, quant_act %s; q8_0 KV and 8-bit activations are CPU-only)",
                          eng_kv_type_name(c->p.kv_type), c->p.quant_act ? "on" : "off");
        goto fail;
    }
    rc = ENG_ERR_NOMEM;
    /* the CUDA backend needs no compute threads: a pool of one keeps the host side cheap */
    if (!(c->pool = kern_pool_new_pinned(c->p.device == 1 ? 1 : c->p.n_threads, c->p.pin_threads && c->p.device == 0)) || ctx_alloc(c) != 0 || ctx_weights(c) != 0) {
        if (err) snprintf(err, errlen, "engine context: out of memory");
        goto fail;
    }
#ifdef TOKD_CUDA
    if (c->p.device == 1 && (rc = eng__cuda_new(m, &c->p, &c->cuda, err, errlen)) != 0) goto fail;
#endif
    *out = c;
    return 0;
fail:
    eng_ctx_destroy(c);
    return rc;
}

void eng_ctx_destroy(eng_ctx *c) {
    if (!c) return;
#ifdef TOKD_CUDA
    eng__cuda_destroy(c->cuda);
#endif
    for (uint32_t l = 0; c->k_cache && l < c->m->hp.n_layer; l++) tk_free(c->k_cache[l]);
    for (uint32_t l = 0; c->v_cache && l < c->m->hp.n_layer; l++) tk_free(c->v_cache[l]);
    tk_free(c->k_cache);
    tk_free(c->v_cache);
    float *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->attn, c->gate, c->up, c->tmp, c->scores, c->rope_cs, c->attn_part};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) tk_free(bufs[i]);
    tk_free(c->tok_seq);
    tk_free(c->tok_pos);
    tk_free(c->attn_cost);
    tk_free(c->logit_rows);
    tk_free(c->mm_scratch);
    tk_free(c->layers);
    tk_free(c->packed_raw);
    kern_pool_destroy(c->pool);
    tk_free(c);
}

const eng_ctx_params *eng_ctx_params_get(const eng_ctx *c) { return &c->p; }
const char *eng_ctx_last_error(const eng_ctx *c) { return c->last_error; }

int eng_kv_copy_block(eng_ctx *c, int32_t src, int32_t dst) {
    if (src < 0 || dst < 0 || src >= c->p.n_blocks || dst >= c->p.n_blocks) {
        snprintf(c->last_error, sizeof c->last_error, "kv copy: block %d -> %d (pool has %d)", src, dst, c->p.n_blocks);
        return ENG_ERR_INVALID;
    }
#ifdef TOKD_CUDA
    if (c->cuda) return eng__cuda_kv_copy_block(c->cuda, src, dst, c->last_error, sizeof c->last_error);
#endif
    size_t blk = (size_t)c->p.block_size * c->kv_row_bytes; /* bytes per block */
    for (uint32_t l = 0; l < c->m->hp.n_layer; l++) {
        memcpy((char *)c->k_cache[l] + (size_t)dst * blk, (const char *)c->k_cache[l] + (size_t)src * blk, blk);
        memcpy((char *)c->v_cache[l] + (size_t)dst * blk, (const char *)c->v_cache[l] + (size_t)src * blk, blk);
    }
    return 0;
}

__attribute__((format(printf, 2, 3))) static int bad_batch(eng_ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    return ENG_ERR_INVALID;
}

/* Checks the batch against the context's limits and fills tok_seq/tok_pos/logit_rows.
 * Returns the number of logits rows or a negative error. */
static int batch_prepare(eng_ctx *c, const eng_batch *b) {
    if (b->n_tokens <= 0 || b->n_tokens > c->p.max_tokens)
        return bad_batch(c, "batch: %d tokens (limit %d)", b->n_tokens, c->p.max_tokens);
    int32_t t = 0, n_rows = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const eng_seq_step *sq = &b->seqs[s];
        if (sq->n_new <= 0 || sq->n_cached < 0 || t + sq->n_new > b->n_tokens)
            return bad_batch(c, "batch: sequence %d has %d new tokens at %d cached", s, sq->n_new, sq->n_cached);
        if (sq->n_cached + sq->n_new > c->p.max_ctx)
            return bad_batch(c, "batch: sequence %d reaches position %d beyond the context (%d)", s,
                             sq->n_cached + sq->n_new, c->p.max_ctx);
        int32_t n_blk = (sq->n_cached + sq->n_new + c->p.block_size - 1) / c->p.block_size;
        for (int32_t i = 0; i < n_blk; i++)
            if (sq->block_table[i] < 0 || sq->block_table[i] >= c->p.n_blocks)
                return bad_batch(c, "batch: sequence %d block %d is %d (pool has %d)", s, i, sq->block_table[i], c->p.n_blocks);
        for (int32_t i = 0; i < sq->n_new; i++, t++) {
            if (b->tokens[t] < 0 || (uint32_t)b->tokens[t] >= c->m->hp.n_vocab)
                return bad_batch(c, "batch: token id %d out of range (vocab %u)", b->tokens[t], c->m->hp.n_vocab);
            c->tok_seq[t] = s;
            c->tok_pos[t] = sq->n_cached + i;
            bool want = sq->logits == ENG_LOGITS_ALL || (sq->logits == ENG_LOGITS_LAST && i == sq->n_new - 1);
            if (want) {
                if (n_rows >= c->p.max_logits) return bad_batch(c, "batch: more than %d logits rows", c->p.max_logits);
                c->logit_rows[n_rows++] = t;
            }
        }
    }
    if (t != b->n_tokens) return bad_batch(c, "batch: sequences cover %d of %d tokens", t, b->n_tokens);
    for (int32_t i = 0; i < b->n_tokens; i++) /* a (token, head) item costs about its context length */
        c->attn_cost[i + 1] = c->attn_cost[i] + (uint64_t)c->tok_pos[i] + 1 + ATTN_ITEM_OVERHEAD;
    return n_rows;
}

/* ---- attention job: (token, head) pairs split across the pool ---- */
typedef struct {
    eng_ctx *c;
    const eng_batch *b;
    uint32_t layer;
} attn_job;

/* First (token, head) item, token-major (item = t * n_head + h), of share ith of nth: the
 * shares have about equal cost, an item of token t costing attn_cost[t + 1] - attn_cost[t]
 * (causal prefill makes later tokens dearer). Share 0 starts at 0 and share nth ends at
 * T * n_head; the boundaries only move forward with ith. */
static size_t attn_split(const eng_ctx *c, size_t T, size_t n_head, int ith, int nth) {
    const uint64_t *cum = c->attn_cost;
    uint64_t w = cum[T] * n_head * (uint64_t)ith / (uint64_t)nth; /* < 2^64: T, contexts and heads are bounded */
    size_t a = 0, b = T; /* the last token t with cum[t] * n_head <= w */
    while (a < b) {
        size_t m = (a + b + 1) / 2;
        if (cum[m] * n_head <= w) a = m;
        else b = m - 1;
    }
    if (a == T) return T * n_head;
    uint64_t cost = cum[a + 1] - cum[a], h = (w - cum[a] * n_head + cost / 2) / cost;
    return a * n_head + (h < n_head ? h : n_head);
}

/* Layer `layer`'s cache as batch token t's sequence sees it */
static kern_kv_view tok_kv(const eng_ctx *c, const eng_batch *b, uint32_t layer, size_t t) {
    const eng_hparams *hp = &c->m->hp;
    return (kern_kv_view){c->k_cache[layer], c->v_cache[layer], c->p.kv_type, (size_t)c->p.block_size,
                          hp->n_head_kv, hp->head_dim, b->seqs[c->tok_seq[t]].block_table};
}

static void attn_worker(void *ctx, int ith, int nth) {
    const attn_job *j = ctx;
    eng_ctx *c = j->c;
    const eng_hparams *hp = &c->m->hp;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, T = (size_t)j->b->n_tokens;
    float *scratch = c->scores + (size_t)ith * c->attn_scratch;
    /* work items are (token, head) pairs, so one decoding sequence still uses every thread */
    size_t n_head = hp->n_head, lo = attn_split(c, T, n_head, ith, nth), hi = attn_split(c, T, n_head, ith + 1, nth);
    while (lo < hi) { /* a run of this share's tokens of one sequence (its tokens are adjacent) */
        size_t t = lo / n_head, te = t + 1;
        while (te < T && te * n_head < hi && c->tok_seq[te] == c->tok_seq[t]) te++;
        size_t end = te * n_head < hi ? te * n_head : hi;
        const kern_kv_view kv = tok_kv(c, j->b, j->layer, t);
        kern_attn_paged_run(c->attn + t * q_dim, c->q + t * q_dim, n_head, lo - t * n_head, end - t * n_head, &kv,
                            (size_t)c->tok_pos[t] + 1, 1.0f / sqrtf((float)hp->head_dim), scratch);
        lo = end;
    }
}

/* ---- attention of a few tokens at long context: segments across the pool ----
 * A decode step of one sequence has n_head (token, head) items: 9 heads on 2 threads split
 * 5 / 4, each thread reading 2 of the 3 kv heads, so attn_worker leaves threads unevenly loaded
 * and reads the cache 4/3 times over. A query at a context over KERN_ATTN_SEG attends in
 * segments (kernels/kern.h), so here the items are (token, segment, kv head): every thread gets
 * an equal share of the positions, the segments' partials go to attn_part and the caller folds
 * them. The kernels compute each segment alike wherever it runs, so the results are bitwise
 * attn_worker's. Tokens at shorter contexts are (token, kv head) items computed whole. */
static void attn_split_worker(void *ctx, int ith, int nth) {
    const attn_job *j = ctx;
    eng_ctx *c = j->c;
    const eng_hparams *hp = &c->m->hp;
    const size_t T = (size_t)j->b->n_tokens, n_head = hp->n_head, n_kv = hp->n_head_kv, group = n_head / n_kv;
    const size_t hd = hp->head_dim, q_dim = n_head * hd, seg = KERN_ATTN_SEG;
    float *scratch = c->scores + (size_t)ith * c->attn_scratch;
    const float scale = 1.0f / sqrtf((float)hd);
    uint64_t total = 0;
    for (size_t t = 0; t < T; t++) total += (uint64_t)n_kv * (uint64_t)(c->tok_pos[t] + 1);
    /* Items laid end to end by their positions: token by token; a short context kv head by kv
     * head, a long one segment by segment and in a segment kv head by kv head. An item is this
     * thread's when its middle lies in [lo, hi) (twice the offsets, to stay in integers). Whole
     * segments go in one call (every head walks the cache together, as in kern_attn_paged_run);
     * a segment cut between threads goes by kv heads. */
    const uint64_t lo = 2 * (total * (uint64_t)ith / (uint64_t)nth), hi = 2 * (total * (uint64_t)(ith + 1) / (uint64_t)nth);
    uint64_t at = 0; /* twice the offset of the next item */
#define MINE(len) (at + (len) >= lo && at + (len) < hi) /* the middle of the item at `at`, `len` positions */
    for (size_t t = 0; t < T && at < hi; t++) {
        const size_t n = (size_t)c->tok_pos[t] + 1, n_seg = kern_attn_n_seg(n);
        const kern_kv_view kv = tok_kv(c, j->b, j->layer, t);
        const float *q = c->q + t * q_dim;
        if (!n_seg) {
            for (size_t g = 0; g < n_kv; g++, at += 2 * n)
                if (MINE(n))
                    kern_attn_paged_run(c->attn + t * q_dim, q, n_head, g * group, (g + 1) * group, &kv, n, scale, scratch);
            continue;
        }
        float *part = c->attn_part + t * n_head * c->attn_n_seg * (hd + 2);
        size_t run = SIZE_MAX; /* first of a run of whole segments not yet computed */
        for (size_t s = 0; s < n_seg; s++) {
            const size_t len = s + 1 < n_seg ? seg : n - s * seg;
            size_t ga = n_kv, gb = 0; /* this thread's kv heads of segment s: [ga, gb) */
            for (size_t g = 0; g < n_kv; g++, at += 2 * len)
                if (MINE(len)) ga = g < ga ? g : ga, gb = g + 1;
            if (ga == 0 && gb == n_kv) {
                if (run == SIZE_MAX) run = s;
                continue;
            }
            if (run != SIZE_MAX) kern_attn_part(part, q, n_head, 0, n_head, &kv, n, run, s, scale, scratch);
            run = SIZE_MAX;
            if (ga < gb) kern_attn_part(part, q, n_head, ga * group, gb * group, &kv, n, s, s + 1, scale, scratch);
        }
        if (run != SIZE_MAX) kern_attn_part(part, q, n_head, 0, n_head, &kv, n, run, n_seg, scale, scratch);
    }
#undef MINE
}

/* Whether this step's attention spreads segments: a few tokens, one past KERN_ATTN_SEG */
static bool attn_use_split(const eng_ctx *c, size_t T) {
    if (!c->attn_part || T > ATTN_SPLIT_MAX_T) return false;
    for (size_t t = 0; t < T; t++)
        if (kern_attn_n_seg((size_t)c->tok_pos[t] + 1)) return true;
    return false;
}

static void attn_run(eng_ctx *c, const eng_batch *b, uint32_t il) {
    attn_job aj = {c, b, il};
    const size_t T = (size_t)b->n_tokens;
    if (!attn_use_split(c, T)) {
        kern_pool_run(c->pool, attn_worker, &aj);
        return;
    }
    kern_pool_run(c->pool, attn_split_worker, &aj);
    const eng_hparams *hp = &c->m->hp;
    const size_t hd = hp->head_dim, q_dim = (size_t)hp->n_head * hd;
    for (size_t t = 0; t < T; t++) {
        const size_t n = (size_t)c->tok_pos[t] + 1;
        if (kern_attn_n_seg(n))
            kern_attn_fold(c->attn + t * q_dim, c->attn_part + t * hp->n_head * c->attn_n_seg * (hd + 2), 0, hp->n_head, hd, n);
    }
}

/* ---- per-token work between the matmuls, split across the pool by tokens ----
 * Every phase treats each token on its own (the same calls whatever the split), so the
 * results do not depend on the batch; a step of a few tokens runs it on the calling thread. */
enum { PH_ATTN_NORM, PH_QKV_POST, PH_ATTN_OUT, PH_FFN_ACT, PH_FFN_OUT };

typedef struct {
    eng_ctx *c;
    const eng_batch *b;
    const eng_layer *ly;
    uint32_t il;
    int phase;
} tok_job;

static void tok_phase(const tok_job *j, size_t t0, size_t t1) {
    eng_ctx *c = j->c;
    const eng_layer *ly = j->ly;
    const eng_hparams *hp = &c->m->hp;
    const size_t E = hp->n_embd, hd = hp->head_dim, q_dim = (size_t)hp->n_head * hd, F = hp->n_ff;
    const bool neox = c->m->traits.rope_neox;
    for (size_t t = t0; t < t1; t++) switch (j->phase) {
        case PH_ATTN_NORM: kern_rmsnorm(c->xn + t * E, c->x + t * E, ly->attn_norm, E, hp->rms_eps); break;
        case PH_QKV_POST: { /* biases, per-head q/k norm (qwen3), RoPE at the token's position, K/V into the cache */
            float *q = c->q + t * q_dim, *k = c->k + t * c->kv_row, *v = c->v + t * c->kv_row;
            if (ly->bq) kern_add(q, ly->bq, q_dim);
            if (ly->bk) kern_add(k, ly->bk, c->kv_row);
            if (ly->bv) kern_add(v, ly->bv, c->kv_row);
            const float *cs = c->rope_cs + t * hp->n_rot; /* this token's angles (eng_forward) */
            for (uint32_t h = 0; h < hp->n_head; h++) {
                if (ly->q_norm) kern_rmsnorm(q + h * hd, q + h * hd, ly->q_norm, hd, hp->rms_eps);
                kern_rope_apply(q + h * hd, cs, hp->n_rot, neox);
            }
            for (uint32_t h = 0; h < hp->n_head_kv; h++) {
                if (ly->k_norm) kern_rmsnorm(k + h * hd, k + h * hd, ly->k_norm, hd, hp->rms_eps);
                kern_rope_apply(k + h * hd, cs, hp->n_rot, neox);
            }
            kern_kv_store(c->k_cache[j->il], c->v_cache[j->il], c->p.kv_type, (size_t)c->p.block_size, hp->n_head_kv, hd,
                          j->b->seqs[c->tok_seq[t]].block_table, c->tok_pos[t], k, v);
            break;
        }
        case PH_ATTN_OUT: /* residual, then the feed-forward norm */
            kern_add(c->x + t * E, c->tmp + t * E, E);
            kern_rmsnorm(c->xn + t * E, c->x + t * E, ly->ffn_norm, E, hp->rms_eps);
            break;
        case PH_FFN_ACT: kern_swiglu(c->gate + t * F, c->gate + t * F, c->up + t * F, F); break;
        case PH_FFN_OUT: kern_add(c->x + t * E, c->tmp + t * E, E); break;
        }
}

static void tok_worker(void *ctx, int ith, int nth) {
    const tok_job *j = ctx;
    size_t T = (size_t)j->b->n_tokens;
    tok_phase(j, T * (size_t)ith / (size_t)nth, T * (size_t)(ith + 1) / (size_t)nth);
}

static void tok_run(eng_ctx *c, const eng_batch *b, const eng_layer *ly, uint32_t il, int phase) {
    tok_job j = {c, b, ly, il, phase};
    if (b->n_tokens >= 4) kern_pool_run(c->pool, tok_worker, &j);
    else tok_phase(&j, 0, (size_t)b->n_tokens);
}

static void mm(eng_ctx *c, const eng_weight *w, const float *x, float *y, size_t T) {
    kern_matmul(c->pool, w->type, w->data, x, y, (size_t)w->ne0, (size_t)w->ne1, T, c->mm_scratch);
}

/* Matmuls of one input x: one pool job (kern_matmul_multi) */
static void mm2(eng_ctx *c, const eng_weight *w0, float *y0, const eng_weight *w1, float *y1, const float *x, size_t T) {
    const kern_matmul_out o[2] = {{w0->type, w0->data, y0, (size_t)w0->ne1}, {w1->type, w1->data, y1, (size_t)w1->ne1}};
    kern_matmul_multi(c->pool, o, 2, x, (size_t)w0->ne0, T, c->mm_scratch);
}

static void mm3(eng_ctx *c, const eng_weight *w0, float *y0, const eng_weight *w1, float *y1, const eng_weight *w2,
                float *y2, const float *x, size_t T) {
    const kern_matmul_out o[3] = {{w0->type, w0->data, y0, (size_t)w0->ne1},
                                  {w1->type, w1->data, y1, (size_t)w1->ne1},
                                  {w2->type, w2->data, y2, (size_t)w2->ne1}};
    kern_matmul_multi(c->pool, o, 3, x, (size_t)w0->ne0, T, c->mm_scratch);
}

static void layer_forward(eng_ctx *c, const eng_batch *b, uint32_t il) {
    const eng_layer *ly = &c->layers[il];
    size_t T = (size_t)b->n_tokens;
    /* attention block */
    tok_run(c, b, ly, il, PH_ATTN_NORM);
    mm3(c, &ly->wq, c->q, &ly->wk, c->k, &ly->wv, c->v, c->xn, T); /* one job for Q, K and V */
    tok_run(c, b, ly, il, PH_QKV_POST);
    attn_run(c, b, il);
    mm(c, &ly->wo, c->attn, c->tmp, T);
    /* feed-forward block (SwiGLU) */
    tok_run(c, b, ly, il, PH_ATTN_OUT);
    mm2(c, &ly->w_gate, c->gate, &ly->w_up, c->up, c->xn, T); /* one job for gate and up */
    tok_run(c, b, ly, il, PH_FFN_ACT);
    mm(c, &ly->w_down, c->gate, c->tmp, T);
    tok_run(c, b, ly, il, PH_FFN_OUT);
}

int eng_forward(eng_ctx *c, const eng_batch *b, float *logits) {
    const eng_model *m = c->m;
    size_t E = m->hp.n_embd;
    int n_rows = batch_prepare(c, b);
    if (n_rows < 0) return n_rows;
#ifdef TOKD_CUDA
    if (c->cuda) return eng__cuda_forward(c->cuda, b, c->logit_rows, n_rows, logits, c->last_error, sizeof c->last_error);
#endif
    for (int32_t t = 0; t < b->n_tokens; t++) /* token embeddings */
        kern_dequant_row(m->tok_embd.type,
                         (const uint8_t *)m->tok_embd.data + (size_t)b->tokens[t] * kern_row_bytes(m->tok_embd.type, E),
                         c->x + t * E, E);
    for (int32_t t = 0; t < b->n_tokens; t++) /* RoPE angles: once per token, for every layer and head */
        kern_rope_table(c->rope_cs + (size_t)t * m->hp.n_rot, m->hp.n_rot, c->tok_pos[t], m->hp.rope_freq_base);
    for (uint32_t il = 0; il < m->hp.n_layer; il++) layer_forward(c, b, il);
    if (n_rows == 0) return 0;
    for (int r = 0; r < n_rows; r++) /* final norm of the rows that want logits */
        kern_rmsnorm(c->xn + r * E, c->x + (size_t)c->logit_rows[r] * E, m->out_norm, E, m->hp.rms_eps);
    mm(c, &c->output, c->xn, logits, (size_t)n_rows);
    return n_rows;
}
