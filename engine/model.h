/* model: a GGUF model loaded for inference — hyper-parameters, architecture traits, weight
 * views into the memory map, the tokenizer and the chat template — and the forward pass over a
 * ragged step batch against a paged KV cache.
 *
 * One forward pass serves every supported architecture; what differs is described by traits:
 *   llama  (Llama 2/3, TinyLlama, SmolLM2, Mistral): rope on adjacent pairs, no biases
 *   qwen2  : q/k/v biases, rope on halves (NeoX style)
 *   qwen3  : per-head RMSNorm of q and k, rope on halves, explicit head_dim
 * Tied embeddings (no output.weight) use token_embd.weight for the logits.
 * Thread: an eng_model is immutable after load and may be shared; an eng_ctx (activations,
 * KV storage, thread pool) belongs to one engine thread. */
#ifndef ENGINE_MODEL_H
#define ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

enum {
    ENG_ERR_IO = -1,
    ENG_ERR_FORMAT = -2, /* bad or unsupported model file */
    ENG_ERR_NOMEM = -3,
    ENG_ERR_INVALID = -7, /* bad argument (batch shape, token id, position beyond context) */
    ENG_ERR_DEVICE = -8,  /* the GPU backend failed (CUDA error), or was asked for and not built */
};

typedef enum { ENG_ARCH_LLAMA = 0, ENG_ARCH_QWEN2, ENG_ARCH_QWEN3, ENG_ARCH_COUNT } eng_arch;

typedef struct {
    eng_arch arch;
    const char *arch_name;
    bool qkv_bias;     /* q/k/v projections have biases (qwen2) */
    bool qk_norm;      /* per-head RMSNorm on q and k (qwen3) */
    bool rope_neox;    /* rotate (i, i+n_rot/2) instead of (2i, 2i+1) */
    bool tied_embd;    /* logits use token_embd.weight */
} eng_traits;

typedef struct {
    uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    uint32_t n_ctx_train;
    float rope_freq_base, rms_eps;
} eng_hparams;

typedef struct eng_model eng_model;

/* Load `path` (GGUF). Errors name the file and the key or tensor. Caller owns *out. */
int eng_model_load(const char *path, eng_model **out, char *err, size_t errlen);
void eng_model_destroy(eng_model *m);

const eng_hparams *eng_model_hparams(const eng_model *m);
const eng_traits *eng_model_traits(const eng_model *m);
const tok_vocab *eng_model_vocab(const eng_model *m);
const gguf_file *eng_model_gguf(const eng_model *m);
/* tokenizer.chat_template (NUL-terminated copy) or NULL. */
const char *eng_model_chat_template(const eng_model *m);
const char *eng_model_name(const eng_model *m); /* general.name or the file name */
/* Bytes of weights read per forward token (for bandwidth figures). */
size_t eng_model_weight_bytes(const eng_model *m);

/* ---- step batch ---- */
enum { ENG_LOGITS_NONE = 0, ENG_LOGITS_LAST = 1, ENG_LOGITS_ALL = 2 };

/* One sequence's part of a step. Its n_new tokens sit at positions n_cached .. n_cached+n_new-1;
 * block_table covers all of them (ceil((n_cached+n_new)/block_size) physical block ids). */
typedef struct {
    const int32_t *block_table;
    int32_t n_cached;
    int32_t n_new;
    int32_t logits; /* ENG_LOGITS_*: which of its tokens produce a logits row */
} eng_seq_step;

/* A flat ragged batch: tokens of seqs[0] first, then seqs[1], ... */
typedef struct {
    const int32_t *tokens;
    int32_t n_tokens;
    const eng_seq_step *seqs;
    int32_t n_seqs;
} eng_batch;

/* ---- context: KV storage, activations, thread pool ---- */
typedef struct {
    int32_t max_tokens;  /* most tokens in one step (prefill chunk + decodes) */
    int32_t max_logits;  /* most logits rows in one step; 0: max_tokens */
    int32_t n_blocks;    /* KV blocks in the pool */
    int32_t block_size;  /* tokens per block */
    int32_t max_ctx;     /* longest sequence (positions); 0: n_ctx_train */
    uint32_t kv_type;    /* KERN_TYPE_F16 (default), KERN_TYPE_Q8_0 (8-bit, about half the bytes; needs
                            head_dim % 32 == 0) or KERN_TYPE_F32 (debugging) */
    int n_threads;       /* 0: one per CPU */
    bool pin_threads;    /* compute thread i pinned to the i-th allowed CPU (kern_pool_new_pinned) */
    bool quant_act;      /* quantise activations as llama.cpp's CPU backend does (see kern_matmul);
                            default false: exact f32 activations (CPU only) */
    int device;          /* backend: 0 cpu (default), 1 cuda (f16 KV cache only; an error when tokd was
                            built without CUDA) */
    bool cuda_f32_gemm;  /* cuda: prefill GEMMs in f32 (the CPU's arithmetic, slower) instead of
                            f16/bf16 tensor cores with f32 accumulation */
    bool cuda_graphs;    /* cuda: replay decode steps from captured CUDA graphs instead of launching
                            kernel by kernel (same results, bit for bit; default on) */
    int attn_split;      /* cpu: 0 (default) a step of a few tokens spreads the segments of a long
                            context's attention (kern_attn_part) across the threads; -1 never (the
                            same results, bit for bit) */
} eng_ctx_params;

void eng_ctx_params_default(eng_ctx_params *p);

/* Bytes of KV cache one token takes in every layer, K and V, with kv_type (what a pool of n
 * tokens costs; Q8_0 counts its block scales); 0 for a type the cache does not take. */
size_t eng_kv_token_bytes(const eng_model *m, uint32_t kv_type);
/* KV types by the config's names (the kv_type key, --kv-type): "f16", "q8_0", "f32". parse:
 * 0, or ENG_ERR_INVALID for another name; name: "unknown" for another type. */
int eng_kv_type_parse(const char *name, uint32_t *type);
const char *eng_kv_type_name(uint32_t type);

typedef struct eng_ctx eng_ctx;

int eng_ctx_new(const eng_model *m, const eng_ctx_params *p, eng_ctx **out, char *err, size_t errlen);
void eng_ctx_destroy(eng_ctx *c);
const eng_ctx_params *eng_ctx_params_get(const eng_ctx *c);

/* Runs the batch: writes the new tokens' K/V into their blocks and, for each requested
 * logits row (in batch order), n_vocab floats into logits. Returns the number of logits rows
 * written or a negative ENG_ERR_* (with a message in the context's last error). */
int eng_forward(eng_ctx *c, const eng_batch *b, float *logits);
const char *eng_ctx_last_error(const eng_ctx *c);

/* Copies block src's K/V rows into block dst in every layer: copy-on-write of a partially
 * filled block when a sequence forks (n > 1). 0, or ENG_ERR_INVALID for a bad block id. */
int eng_kv_copy_block(eng_ctx *c, int32_t src, int32_t dst);

#endif
