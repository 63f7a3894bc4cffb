/* The forward pass on CUDA: the same per-layer list of operations as engine/forward.c, on the
 * kcu_ kernels (kernels/cuda/kern_cuda.h), on one stream. Weights are uploaded once at context
 * creation (quantised formats stay quantised); the KV cache (f16, same block layout as the CPU's)
 * and every activation live on the device, allocated once. Per step the host sends one small
 * block of metadata (token ids, positions, KV slots, attention tiles, block tables, logits rows)
 * and gets back only the logits rows; sampling stays on the host.
 * Decode batches (<= KCU_GEMV_MAX_TOK tokens, or <= KCU_GEMV_BATCH_MAX with quantised weights) use
 * the GEMV kernels with f32 activations, the CPU's arithmetic; longer batches use cuBLAS GEMMs, on
 * f16/bf16 tensor cores unless eng_ctx_params.cuda_f32_gemm asks for f32.
 * Decode-only steps whose matmuls are all GEMVs are captured once as a CUDA graph per (tokens,
 * logits rows, context bucket) and replayed (unless eng_ctx_params.cuda_graphs is off): a
 * Llama-3-8B step is ~450 small launches at ~4.7 us each from the host, and replaying them saved
 * 6% of an H200 decode step (docs/PERF.md). The graph reads the step's metadata
 * from the same device buffer, filled by a copy enqueued before the replay; the attention split
 * count depends on the context only through its bucket (the next power of two >= 256).
 * Compiled only with TOKD_CUDA (the Makefile defines it when nvcc is found). */
#include "engine/forward_cuda.h"

#ifdef TOKD_CUDA

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"
#include "kernels/cuda/kern_cuda.h"

typedef struct {
    float *attn_norm, *ffn_norm;        /* (n_embd) */
    float *bq, *bk, *bv;                /* (q_dim), (kv_dim) x2; qwen2 only, else NULL */
    float *q_norm, *k_norm;             /* (head_dim); qwen3 only, else NULL */
    kcu_weight wq, wk, wv, wo;          /* (n_embd -> q_dim), (n_embd -> kv_dim) x2, (q_dim -> n_embd) */
    kcu_weight w_gate, w_up, w_down;    /* (n_embd -> n_ff) x2, (n_ff -> n_embd) */
} cu_layer;

#define N_GRAPHS 16 /* cached decode graphs, least recently used replaced */

typedef struct {
    int T, n_rows, keys; /* key: tokens, logits rows, context bucket */
    cudaGraphExec_t exec;
    uint64_t used;       /* step number of the last replay */
} cu_graph;

struct eng_cuda {
    eng_hparams hp;
    eng_traits tr;
    eng_ctx_params p;
    cudaStream_t st;
    kcu_blas *blas;
    kcu_weight tok_embd;   /* (n_embd, n_vocab) */
    kcu_weight output;     /* (n_embd -> n_vocab); a copy of tok_embd's handle when tied */
    bool tied;
    float *out_norm;       /* (n_embd) */
    cu_layer *layers;      /* (n_layer) */
    size_t weight_bytes, total_bytes;
    size_t kv_row, n_slots;
    void **k_cache, **v_cache; /* (n_layer) -> (n_slots, kv_row) f16 */
    /* activations, (max_tokens, width) each, as in forward.c */
    float *x, *xn, *q, *k, *v, *attn, *gate, *up;
    float *logits;         /* (max_logits, n_vocab) */
    float *split;          /* decode attention partials */
    size_t split_floats;
    /* step metadata: pinned host copy and device copy, same layout (int32 offsets below) */
    int32_t *h_meta, *d_meta;
    size_t off_pos, off_slot, off_rows, off_dec, off_pre, off_bt, bt_cap, meta_ints;
    cu_graph graphs[N_GRAPHS];
    uint64_t n_steps, n_replays;
};

static int fail(int rc, char *err, size_t errlen, const char *what) {
    if (err) snprintf(err, errlen, "cuda: %s: %s", what, kcu_last_error());
    return rc == KCU_ERR_INVALID ? ENG_ERR_INVALID : rc == KCU_ERR_NOMEM ? ENG_ERR_NOMEM : ENG_ERR_DEVICE;
}

#define CK(call, what)                                          \
    do {                                                        \
        int rc_ = (call);                                       \
        if (rc_) return fail(rc_, err, errlen, (what));         \
    } while (0)

static int alloc_f32(eng_cuda *g, float **p, size_t n) {
    int rc = kcu_alloc((void **)p, n * sizeof(float));
    if (!rc) g->total_bytes += n * sizeof(float);
    return rc;
}

/* Device KV cache, activations, scratch and metadata for g->p. */
static int alloc_state(eng_cuda *g, char *err, size_t errlen) {
    const eng_hparams *hp = &g->hp;
    size_t T = (size_t)g->p.max_tokens, R = (size_t)g->p.max_logits, E = hp->n_embd;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, wide = q_dim > E ? q_dim : E;
    size_t max_in = hp->n_ff > wide ? hp->n_ff : wide;
    if (hp->head_dim > KCU_ATTN_MAX_HEAD_DIM || hp->head_dim % 2) {
        snprintf(err, errlen, "cuda: head_dim %u is not supported (even, <= %d)", hp->head_dim, KCU_ATTN_MAX_HEAD_DIM);
        return ENG_ERR_INVALID;
    }
    if (g->p.kv_type != KERN_TYPE_F16) {
        snprintf(err, errlen, "cuda: only an f16 KV cache is supported (kv_type %u)", g->p.kv_type);
        return ENG_ERR_INVALID;
    }
    CK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking) == cudaSuccess ? 0 : KCU_ERR_CUDA, "stream");
    CK(kcu_blas_new(&g->blas, T, max_in), "cuBLAS");
    g->total_bytes += kcu_blas_bytes(g->blas);
    g->kv_row = (size_t)hp->n_head_kv * hp->head_dim;
    g->n_slots = (size_t)g->p.n_blocks * g->p.block_size;
    if (!(g->k_cache = tk_calloc(hp->n_layer, sizeof(void *))) || !(g->v_cache = tk_calloc(hp->n_layer, sizeof(void *)))) {
        snprintf(err, errlen, "cuda: out of host memory");
        return ENG_ERR_NOMEM;
    }
    size_t kv_bytes = g->n_slots * g->kv_row * 2;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        CK(kcu_alloc(&g->k_cache[l], kv_bytes), "KV cache");
        CK(kcu_alloc(&g->v_cache[l], kv_bytes), "KV cache");
        g->total_bytes += 2 * kv_bytes;
    }
    CK(alloc_f32(g, &g->x, T * E) || alloc_f32(g, &g->xn, T * wide) || alloc_f32(g, &g->q, T * q_dim) ||
           alloc_f32(g, &g->k, T * g->kv_row) || alloc_f32(g, &g->v, T * g->kv_row) || alloc_f32(g, &g->attn, T * q_dim) ||
           alloc_f32(g, &g->gate, T * hp->n_ff) || alloc_f32(g, &g->up, T * hp->n_ff) ||
           alloc_f32(g, &g->logits, R * hp->n_vocab),
       "activations");
    size_t split_tok = T < 64 ? T : 64;
    g->split_floats = kcu_attn_decode_scratch_floats((int)split_tok, (int)hp->n_head, (int)hp->head_dim);
    CK(alloc_f32(g, &g->split, g->split_floats), "attention scratch");
    /* metadata: tok, pos, slot (T each), rows (R), decode and prefill tiles (4T each), block tables */
    size_t per_seq = ((size_t)g->p.max_ctx + g->p.block_size - 1) / g->p.block_size + 1;
    g->off_pos = T, g->off_slot = 2 * T, g->off_rows = 3 * T, g->off_dec = 3 * T + R;
    g->off_pre = g->off_dec + 4 * T, g->off_bt = g->off_pre + 4 * T;
    g->bt_cap = T * per_seq;
    g->meta_ints = g->off_bt + g->bt_cap;
    CK(kcu_host_alloc((void **)&g->h_meta, g->meta_ints * 4), "pinned metadata");
    CK(kcu_alloc((void **)&g->d_meta, g->meta_ints * 4), "metadata");
    return 0;
}

static int up_vec(eng_cuda *g, float **dst, const float *src, size_t n) {
    if (!src) return 0;
    int rc = alloc_f32(g, dst, n);
    if (!rc) rc = kcu_h2d(*dst, src, n * sizeof(float), g->st);
    return rc;
}

static int up_w(eng_cuda *g, kcu_weight *dst, const eng_weight *src, bool counted) {
    int rc = kcu_weight_upload(dst, src->type, src->data, src->ne0, src->ne1);
    if (!rc) {
        g->total_bytes += dst->bytes;
        if (counted) g->weight_bytes += dst->bytes;
    }
    return rc;
}

static eng_cuda *cuda_alloc(const eng_hparams *hp, const eng_traits *tr, const eng_ctx_params *p) {
    eng_cuda *g = tk_calloc(1, sizeof *g);
    if (!g) return NULL;
    g->hp = *hp;
    g->tr = *tr;
    g->p = *p;
    if (!(g->layers = tk_calloc(hp->n_layer, sizeof(cu_layer)))) {
        tk_free(g);
        return NULL;
    }
    return g;
}

/* The end of both constructors: waits for the uploads or fills (rc: their result so far); on
 * failure destroys g and reports `what` with the CUDA error. */
static int cuda_done(eng_cuda *g, int rc, const char *what, eng_cuda **out, char *err, size_t errlen) {
    if (!rc) rc = kcu_sync(g->st);
    if (rc) {
        snprintf(err, errlen, "cuda: %s: %s", what, kcu_last_error());
        eng__cuda_destroy(g);
        return ENG_ERR_DEVICE;
    }
    *out = g;
    return 0;
}

int eng__cuda_new(const eng_model *m, const eng_ctx_params *p, eng_cuda **out, char *err, size_t errlen) {
    *out = NULL;
    CK(kcu_init(0, NULL), "device");
    eng_cuda *g = cuda_alloc(&m->hp, &m->traits, p);
    if (!g) {
        snprintf(err, errlen, "cuda: out of host memory");
        return ENG_ERR_NOMEM;
    }
    int rc = alloc_state(g, err, errlen);
    if (rc) goto fail;
    const eng_hparams *hp = &m->hp;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim;
    for (uint32_t l = 0; l < hp->n_layer && !rc; l++) {
        const eng_layer *s = &m->layers[l];
        cu_layer *d = &g->layers[l];
        rc = up_vec(g, &d->attn_norm, s->attn_norm, hp->n_embd) || up_vec(g, &d->ffn_norm, s->ffn_norm, hp->n_embd) ||
             up_vec(g, &d->bq, s->bq, q_dim) || up_vec(g, &d->bk, s->bk, g->kv_row) || up_vec(g, &d->bv, s->bv, g->kv_row) ||
             up_vec(g, &d->q_norm, s->q_norm, hp->head_dim) || up_vec(g, &d->k_norm, s->k_norm, hp->head_dim) ||
             up_w(g, &d->wq, &s->wq, true) || up_w(g, &d->wk, &s->wk, true) || up_w(g, &d->wv, &s->wv, true) ||
             up_w(g, &d->wo, &s->wo, true) || up_w(g, &d->w_gate, &s->w_gate, true) || up_w(g, &d->w_up, &s->w_up, true) ||
             up_w(g, &d->w_down, &s->w_down, true);
    }
    g->tied = m->traits.tied_embd || m->output.data == m->tok_embd.data;
    if (!rc) rc = up_vec(g, &g->out_norm, m->out_norm, hp->n_embd) || up_w(g, &g->tok_embd, &m->tok_embd, g->tied);
    if (!rc) {
        if (g->tied) g->output = g->tok_embd;
        else rc = up_w(g, &g->output, &m->output, true);
    }
    return cuda_done(g, rc, "uploading the weights", out, err, errlen);
fail:
    eng__cuda_destroy(g);
    return rc;
}

/* Allocates w and fills it on the device. */
static int rand_w(eng_cuda *g, kcu_weight *w, uint32_t type, uint64_t n_in, uint64_t n_out, uint64_t seed, bool counted) {
    int rc = kcu_weight_alloc(w, type, n_in, n_out);
    if (!rc) rc = kcu_weight_fill_random(w, seed, 1.0f / sqrtf((float)n_in), g->st);
    if (!rc) {
        g->total_bytes += w->bytes;
        if (counted) g->weight_bytes += w->bytes;
    }
    return rc;
}

static int const_vec(eng_cuda *g, float **dst, size_t n, float v) {
    int rc = alloc_f32(g, dst, n);
    if (!rc) rc = kcu_fill_f32(*dst, n, v, g->st);
    return rc;
}

int eng__cuda_new_random(const eng_hparams *hp, const eng_traits *tr, uint32_t wtype, const eng_ctx_params *p,
                         uint64_t seed, eng_cuda **out, char *err, size_t errlen) {
    *out = NULL;
    CK(kcu_init(0, NULL), "device");
    eng_cuda *g = cuda_alloc(hp, tr, p);
    if (!g) {
        snprintf(err, errlen, "cuda: out of host memory");
        return ENG_ERR_NOMEM;
    }
    int rc = alloc_state(g, err, errlen);
    if (rc) goto fail;
    uint64_t E = hp->n_embd, q_dim = (uint64_t)hp->n_head * hp->head_dim, kv = g->kv_row, F = hp->n_ff;
    for (uint32_t l = 0; l < hp->n_layer && !rc; l++) {
        cu_layer *d = &g->layers[l];
        uint64_t s = seed + 16 * (uint64_t)l;
        rc = const_vec(g, &d->attn_norm, E, 1.0f) || const_vec(g, &d->ffn_norm, E, 1.0f) ||
             (tr->qkv_bias && (const_vec(g, &d->bq, q_dim, 0.0f) || const_vec(g, &d->bk, kv, 0.0f) ||
                               const_vec(g, &d->bv, kv, 0.0f))) ||
             (tr->qk_norm && (const_vec(g, &d->q_norm, hp->head_dim, 1.0f) || const_vec(g, &d->k_norm, hp->head_dim, 1.0f))) ||
             rand_w(g, &d->wq, wtype, E, q_dim, s + 1, true) || rand_w(g, &d->wk, wtype, E, kv, s + 2, true) ||
             rand_w(g, &d->wv, wtype, E, kv, s + 3, true) || rand_w(g, &d->wo, wtype, q_dim, E, s + 4, true) ||
             rand_w(g, &d->w_gate, wtype, E, F, s + 5, true) || rand_w(g, &d->w_up, wtype, E, F, s + 6, true) ||
             rand_w(g, &d->w_down, wtype, F, E, s + 7, true);
    }
    g->tied = tr->tied_embd;
    if (!rc) rc = const_vec(g, &g->out_norm, E, 1.0f) || rand_w(g, &g->tok_embd, wtype, E, hp->n_vocab, seed - 1, g->tied);
    if (!rc) {
        if (g->tied) g->output = g->tok_embd;
        else rc = rand_w(g, &g->output, wtype, E, hp->n_vocab, seed - 2, true);
    }
    return cuda_done(g, rc, "random weights", out, err, errlen);
fail:
    eng__cuda_destroy(g);
    return rc;
}

void eng__cuda_destroy(eng_cuda *g) {
    if (!g) return;
    if (g->st) cudaStreamSynchronize(g->st);
    for (uint32_t l = 0; g->layers && l < g->hp.n_layer; l++) {
        cu_layer *d = &g->layers[l];
        float *vecs[] = {d->attn_norm, d->ffn_norm, d->bq, d->bk, d->bv, d->q_norm, d->k_norm};
        for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) kcu_free(vecs[i]);
        kcu_weight *ws[] = {&d->wq, &d->wk, &d->wv, &d->wo, &d->w_gate, &d->w_up, &d->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) kcu_weight_free(ws[i]);
    }
    tk_free(g->layers);
    kcu_weight_free(&g->tok_embd);
    if (!g->tied) kcu_weight_free(&g->output);
    kcu_free(g->out_norm);
    for (uint32_t l = 0; g->k_cache && l < g->hp.n_layer; l++) kcu_free(g->k_cache[l]);
    for (uint32_t l = 0; g->v_cache && l < g->hp.n_layer; l++) kcu_free(g->v_cache[l]);
    tk_free(g->k_cache);
    tk_free(g->v_cache);
    float *bufs[] = {g->x, g->xn, g->q, g->k, g->v, g->attn, g->gate, g->up, g->logits, g->split};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) kcu_free(bufs[i]);
    kcu_host_free(g->h_meta);
    kcu_free(g->d_meta);
    for (int i = 0; i < N_GRAPHS; i++)
        if (g->graphs[i].exec) cudaGraphExecDestroy(g->graphs[i].exec);
    kcu_blas_destroy(g->blas);
    if (g->st) cudaStreamDestroy(g->st);
    tk_free(g);
}

size_t eng__cuda_weight_bytes(const eng_cuda *g) { return g->weight_bytes; }
size_t eng__cuda_total_bytes(const eng_cuda *g) { return g->total_bytes; }
uint64_t eng__cuda_graph_replays(const eng_cuda *g) { return g->n_replays; }

int eng__cuda_kv_copy_block(eng_cuda *g, int32_t src, int32_t dst, char *err, size_t errlen) {
    size_t blk = (size_t)g->p.block_size * g->kv_row * 2; /* bytes per block */
    for (uint32_t l = 0; l < g->hp.n_layer; l++) {
        CK(kcu_d2d((char *)g->k_cache[l] + (size_t)dst * blk, (const char *)g->k_cache[l] + (size_t)src * blk, blk, g->st),
           "kv copy");
        CK(kcu_d2d((char *)g->v_cache[l] + (size_t)dst * blk, (const char *)g->v_cache[l] + (size_t)src * blk, blk, g->st),
           "kv copy");
    }
    return 0;
}

/* Device pointers into the step's metadata. */
typedef struct {
    const int32_t *tok, *pos, *slot, *rows, *bt;
    const kcu_attn_tile *dec, *pre;
    int n_dec, n_pre, max_keys;
} step_meta;

/* Fills the pinned metadata from the batch and sends it; one host-to-device copy per step. */
static int meta_send(eng_cuda *g, const eng_batch *b, const int32_t *logit_rows, int n_rows, step_meta *sm, char *err,
                     size_t errlen) {
    int32_t *h = g->h_meta, bs = g->p.block_size;
    kcu_attn_tile *dec = (kcu_attn_tile *)(h + g->off_dec), *pre = (kcu_attn_tile *)(h + g->off_pre);
    size_t n_bt = 0;
    int32_t t = 0;
    sm->n_dec = sm->n_pre = sm->max_keys = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const eng_seq_step *sq = &b->seqs[s];
        size_t n_blk = (size_t)(sq->n_cached + sq->n_new + bs - 1) / (size_t)bs;
        if (n_bt + n_blk > g->bt_cap) {
            snprintf(err, errlen, "cuda: batch block tables exceed %zu entries", g->bt_cap);
            return ENG_ERR_INVALID;
        }
        memcpy(h + g->off_bt + n_bt, sq->block_table, n_blk * sizeof(int32_t));
        for (int32_t i = 0; i < sq->n_new; i++) {
            int32_t pos = sq->n_cached + i;
            h[t + i] = b->tokens[t + i];
            h[g->off_pos + t + i] = pos;
            h[g->off_slot + t + i] = sq->block_table[pos / bs] * bs + pos % bs;
        }
        if (sq->n_new == 1) {
            dec[sm->n_dec++] = (kcu_attn_tile){t, 1, sq->n_cached, (int32_t)n_bt};
            if (sq->n_cached + 1 > sm->max_keys) sm->max_keys = sq->n_cached + 1;
        } else {
            for (int32_t i = 0; i < sq->n_new; i += KCU_ATTN_QT) {
                int32_t nq = sq->n_new - i < KCU_ATTN_QT ? sq->n_new - i : KCU_ATTN_QT;
                pre[sm->n_pre++] = (kcu_attn_tile){t + i, nq, sq->n_cached + i, (int32_t)n_bt};
            }
        }
        n_bt += n_blk;
        t += sq->n_new;
    }
    /* the decode attention's split count depends on the context only through its bucket (the next
     * power of two >= 256), so a step gives the same bits whether replayed from a graph captured
     * at a shorter context of the same bucket or launched directly */
    if (sm->n_dec) {
        int keys = 256;
        while (keys < sm->max_keys) keys *= 2;
        sm->max_keys = keys;
    }
    memcpy(h + g->off_rows, logit_rows, (size_t)n_rows * sizeof(int32_t));
    CK(kcu_h2d(g->d_meta, h, (g->off_bt + n_bt) * sizeof(int32_t), g->st), "metadata");
    const int32_t *d = g->d_meta;
    sm->tok = d, sm->pos = d + g->off_pos, sm->slot = d + g->off_slot, sm->rows = d + g->off_rows, sm->bt = d + g->off_bt;
    sm->dec = (const kcu_attn_tile *)(d + g->off_dec), sm->pre = (const kcu_attn_tile *)(d + g->off_pre);
    return 0;
}

static int mm(eng_cuda *g, const kcu_weight *w, const float *x, float *y, int T) {
    return kcu_matmul(g->blas, w, x, y, T, g->p.cuda_f32_gemm ? KCU_GEMM_F32 : KCU_GEMM_HALF, g->st);
}

/* y += x W^T: the residual adds, fused into the matmul */
static int mm_add(eng_cuda *g, const kcu_weight *w, const float *x, float *y, int T) {
    return kcu_matmul_add(g->blas, w, x, y, T, g->p.cuda_f32_gemm ? KCU_GEMM_F32 : KCU_GEMM_HALF, g->st);
}

static int layer_forward(eng_cuda *g, uint32_t il, int T, const step_meta *sm, char *err, size_t errlen) {
    const eng_hparams *hp = &g->hp;
    const cu_layer *ly = &g->layers[il];
    const int E = (int)hp->n_embd, hd = (int)hp->head_dim, q_dim = (int)(hp->n_head * hp->head_dim), kv = (int)g->kv_row;
    /* attention block */
    CK(kcu_rmsnorm(g->xn, g->x, ly->attn_norm, NULL, T, E, hp->rms_eps, g->st), "attn norm");
    CK(mm(g, &ly->wq, g->xn, g->q, T), "wq");
    CK(mm(g, &ly->wk, g->xn, g->k, T), "wk");
    CK(mm(g, &ly->wv, g->xn, g->v, T), "wv");
    if (ly->bq) CK(kcu_add_bias(g->q, ly->bq, T, q_dim, g->st), "bq");
    if (ly->bk) CK(kcu_add_bias(g->k, ly->bk, T, kv, g->st), "bk");
    if (ly->bv) CK(kcu_add_bias(g->v, ly->bv, T, kv, g->st), "bv");
    if (ly->q_norm) CK(kcu_rmsnorm(g->q, g->q, ly->q_norm, NULL, T * (int)hp->n_head, hd, hp->rms_eps, g->st), "q norm");
    if (ly->k_norm) CK(kcu_rmsnorm(g->k, g->k, ly->k_norm, NULL, T * (int)hp->n_head_kv, hd, hp->rms_eps, g->st), "k norm");
    CK(kcu_rope_kv(g->q, g->k, g->v, T, (int)hp->n_head, (int)hp->n_head_kv, hd, (int)hp->n_rot, sm->pos, hp->rope_freq_base,
                   g->tr.rope_neox, g->k_cache[il], g->v_cache[il], sm->slot, g->n_slots, g->st),
       "rope and kv store");
    kcu_attn_args a = {g->k_cache[il], g->v_cache[il], sm->bt, (int)hp->n_head, (int)hp->n_head_kv, hd, g->p.block_size,
                       1.0f / sqrtf((float)hp->head_dim)};
    if (sm->n_dec)
        CK(kcu_attn_decode(g->attn, g->q, &a, sm->dec, sm->n_dec, sm->max_keys, g->split, g->split_floats, g->st),
           "decode attention");
    if (sm->n_pre) CK(kcu_attn_prefill(g->attn, g->q, &a, sm->pre, sm->n_pre, g->st), "prefill attention");
    CK(mm_add(g, &ly->wo, g->attn, g->x, T), "wo");
    /* feed-forward block (SwiGLU) */
    CK(kcu_rmsnorm(g->xn, g->x, ly->ffn_norm, NULL, T, E, hp->rms_eps, g->st), "ffn norm");
    CK(mm(g, &ly->w_gate, g->xn, g->gate, T), "w_gate");
    CK(mm(g, &ly->w_up, g->xn, g->up, T), "w_up");
    CK(kcu_swiglu(g->gate, g->gate, g->up, (size_t)T * hp->n_ff, g->st), "swiglu");
    CK(mm_add(g, &ly->w_down, g->gate, g->x, T), "w_down");
    return 0;
}

/* The step's kernels, enqueued on g->st (or captured into a graph): embedding, layers, the
 * logits rows' norm and matmul into g->logits. */
static int step_body(eng_cuda *g, int T, const step_meta *sm, int n_rows, char *err, size_t errlen) {
    const int E = (int)g->hp.n_embd;
    int rc;
    CK(kcu_embed(g->x, &g->tok_embd, sm->tok, T, g->st), "embedding");
    for (uint32_t il = 0; il < g->hp.n_layer; il++)
        if ((rc = layer_forward(g, il, T, sm, err, errlen))) return rc;
    if (n_rows > 0) {
        CK(kcu_rmsnorm(g->xn, g->x, g->out_norm, sm->rows, n_rows, E, g->hp.rms_eps, g->st), "output norm");
        CK(mm(g, &g->output, g->xn, g->logits, n_rows), "logits");
    }
    return 0;
}

/* Whether a step of T tokens can be replayed from a graph: decode only, no cuBLAS call. */
static bool graph_ok(const eng_cuda *g, const step_meta *sm, int T) {
    if (!g->p.cuda_graphs || sm->n_pre || T > KCU_GEMV_BATCH_MAX) return false;
    if (!kcu_matmul_is_gemv(&g->output, T)) return false;
    for (uint32_t l = 0; l < g->hp.n_layer; l++) {
        const cu_layer *y = &g->layers[l];
        const kcu_weight *ws[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w_gate, &y->w_up, &y->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (!kcu_matmul_is_gemv(ws[i], T)) return false;
    }
    return true;
}

/* Replays (capturing first if needed) the graph of this decode step's shape. */
static int graph_step(eng_cuda *g, int T, step_meta *sm, int n_rows, char *err, size_t errlen) {
    const int keys = sm->max_keys; /* bucketed by meta_send */
    cu_graph *slot = NULL, *lru = &g->graphs[0];
    for (int i = 0; i < N_GRAPHS && !slot; i++) {
        cu_graph *c = &g->graphs[i];
        if (c->exec && c->T == T && c->n_rows == n_rows && c->keys == keys) slot = c;
        else if (!c->exec || (lru->exec && c->used < lru->used)) lru = c;
    }
    if (!slot) {
        if (lru->exec) cudaGraphExecDestroy(lru->exec), lru->exec = NULL;
        if (cudaStreamBeginCapture(g->st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            snprintf(err, errlen, "cuda: graph capture: %s", cudaGetErrorString(cudaGetLastError()));
            return ENG_ERR_DEVICE;
        }
        int rc = step_body(g, T, sm, n_rows, err, errlen);
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamEndCapture(g->st, &graph);
        if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&lru->exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (rc) return rc;
        if (e != cudaSuccess) {
            lru->exec = NULL;
            cudaGetLastError();
            snprintf(err, errlen, "cuda: graph capture: %s", cudaGetErrorString(e));
            return ENG_ERR_DEVICE;
        }
        lru->T = T, lru->n_rows = n_rows, lru->keys = keys;
        slot = lru;
    }
    slot->used = ++g->n_steps;
    g->n_replays++;
    cudaError_t e = cudaGraphLaunch(slot->exec, g->st);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cuda: graph launch: %s", cudaGetErrorString(e));
        return ENG_ERR_DEVICE;
    }
    return 0;
}

int eng__cuda_forward(eng_cuda *g, const eng_batch *b, const int32_t *logit_rows, int n_rows, float *logits, char *err,
                      size_t errlen) {
    const int T = b->n_tokens;
    if (T <= 0 || T > g->p.max_tokens || n_rows < 0 || n_rows > g->p.max_logits || n_rows > T) {
        snprintf(err, errlen, "cuda: batch of %d tokens, %d logits rows (limits %d, %d)", T, n_rows, g->p.max_tokens,
                 g->p.max_logits);
        return ENG_ERR_INVALID;
    }
    step_meta sm;
    int rc = meta_send(g, b, logit_rows, n_rows, &sm, err, errlen);
    if (rc) return rc;
    rc = graph_ok(g, &sm, T) ? graph_step(g, T, &sm, n_rows, err, errlen) : step_body(g, T, &sm, n_rows, err, errlen);
    if (rc) return rc;
    if (n_rows > 0)
        CK(kcu_d2h(logits, g->logits, (size_t)n_rows * g->hp.n_vocab * sizeof(float), g->st), "logits");
    CK(kcu_sync(g->st), "step");
    return n_rows;
}

#else

/* Built without CUDA: engine/forward.c refuses device = 1 before reaching here. */
typedef int eng__cuda_unused;

#endif
