/* Internal layout of eng_model, shared by engine/model.c (loading) and engine/forward.c. */
#ifndef ENGINE_MODEL_INTERNAL_H
#define ENGINE_MODEL_INTERNAL_H

#include "engine/model.h"
#include "kernels/kern.h"

/* A matrix view into the map: ne0 = input width (contiguous), ne1 = rows. */
typedef struct {
    uint32_t type;
    const void *data;
    uint64_t ne0, ne1;
} eng_weight;

typedef struct {
    const float *attn_norm;           /* (n_embd) */
    eng_weight wq, wk, wv, wo;        /* (n_embd -> n_head*hd), (n_embd -> n_kv*hd) x2, (n_head*hd -> n_embd) */
    const float *bq, *bk, *bv;        /* (n_head*hd), (n_kv*hd), (n_kv*hd); qwen2 only */
    const float *q_norm, *k_norm;     /* (head_dim); qwen3 only */
    const float *ffn_norm;            /* (n_embd) */
    eng_weight w_gate, w_up, w_down;  /* (n_embd -> n_ff) x2, (n_ff -> n_embd) */
} eng_layer;

struct eng_model {
    gguf_file *gguf;
    tok_vocab *vocab;
    eng_hparams hp;
    eng_traits traits;
    char *chat_template;
    char *name;
    eng_weight tok_embd;   /* (n_embd, n_vocab) */
    const float *out_norm; /* (n_embd) */
    eng_weight output;     /* (n_embd -> n_vocab); == tok_embd when tied */
    eng_layer *layers;     /* (n_layer) */
    float *owned_f32;      /* norms/biases stored as F16/BF16 in the file, converted */
    size_t weight_bytes;
};

#endif
