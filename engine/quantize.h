/* quantize: model-file tools as library code, behind `tokd quantize` and `tokd mkmodel`.
 *
 *  - eng_quantize_file: copies a GGUF model's metadata and re-encodes its weight matrices in one
 *    type (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16) with the reference quantizers
 *    (kern_quantize_row_ref), following llama.cpp's rules for which tensors to touch (see
 *    eng_quant_tensor_type).
 *  - eng_mkmodel_write: a random-weight model of a given shape (named shapes S135, S1B,
 *    LLAMA8B or custom dims) for llama, qwen2 or qwen3, with the tokenizer metadata copied from
 *    a vocab GGUF so that `tokd generate` runs on it.
 *
 * Both write through a streaming GGUF writer (in quantize.c): header, metadata and tensor
 * infos first, then each tensor's data in order, a chunk of rows at a time, so a model is
 * never held in memory whole. Rows are produced in parallel on a kern_pool; the output does
 * not depend on the number of threads.
 * Errors: ENG_ERR_* codes (engine/model.h) with a message naming the file and the tensor or
 * key in the caller's buffer. Thread: any; each call creates and destroys its own pool. */
#ifndef ENGINE_QUANTIZE_H
#define ENGINE_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

/* "Q8_0", "q4_k", "F16", "bf16"... -> KERN_TYPE_* of a type a model can be quantized to
 * (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K). 0, or ENG_ERR_INVALID. */
int eng_quant_type_parse(const char *name, uint32_t *type);
/* llama.cpp's general.file_type (llama_ftype) for a model whose matrices are mostly `type`:
 * F32 0, F16 1, Q4_0 2, Q4_1 3, Q8_0 7, Q4_K 14 (Q4_K_S), Q5_K 16 (Q5_K_S), Q6_K 18, BF16 32. */
uint32_t eng_quant_file_type(uint32_t type);

typedef struct {
    uint32_t type;          /* KERN_TYPE_* of the weight matrices */
    int32_t output_type;    /* -1: the default rule; else the type of output.weight */
    int32_t embd_type;      /* -1: the default rule; else the type of token_embd.weight */
    bool pure;              /* every matrix in `type`, no special rule for output.weight */
    bool allow_requantize;  /* accept matrices already quantized (dequantised, then re-encoded) */
    int n_threads;          /* 0: one per CPU */
} eng_quant_params;

void eng_quant_params_default(eng_quant_params *p, uint32_t type);

typedef struct {
    size_t n_tensors;    /* all tensors written */
    size_t n_converted;  /* tensors re-encoded (in `type` or a fallback) */
    size_t n_fallback;   /* of those, tensors whose width forced a fallback type */
    uint64_t bytes_in, bytes_out; /* tensor data bytes */
} eng_quant_stats;

/* The type tensor t of f gets under p; t's own type when it stays as is. The rule:
 *  - only tensors with >= 2 dims and more than one row are re-encoded (1-D tensors: norms,
 *    biases, and anything with a single row stay as they are);
 *  - output.weight (or token_embd.weight when the model has no output.weight: tied) gets Q6_K
 *    when `type` is a 4- or 5-bit format (Q4_0, Q4_1, Q4_K, Q5_K), as llama.cpp does, else
 *    `type`; p->output_type overrides, p->pure disables;
 *  - token_embd.weight of an untied model gets `type` (llama.cpp's default); p->embd_type
 *    overrides;
 *  - a width (ne[0]) that is not a multiple of the chosen type's block size falls back to
 *    Q8_0 when it is a multiple of 32, else to F16 (llama.cpp falls back to Q5_0/Q5_1/Q8_0,
 *    which tokd does not all have; Q8_0 is the nearest one at least as precise).
 * Writes into *fallback (may be NULL) whether the fallback applied. */
uint32_t eng_quant_tensor_type(const eng_quant_params *p, const gguf_file *f, const gguf_tensor *t,
                               bool *fallback);

/* Quantizes model `in` into `out` (overwritten). Every metadata key is copied byte for byte
 * except general.file_type, general.quantization_version and general.alignment, which are
 * rewritten; tensors keep their order and names. Matrices to re-encode must be F32, F16 or
 * BF16 (or any supported type with allow_requantize); anything else is an error naming the
 * tensor. st may be NULL. On error `out` is removed. */
int eng_quantize_file(const char *in, const char *out, const eng_quant_params *p, eng_quant_stats *st,
                      char *err, size_t errlen);

/* ---- random-weight models ---- */
typedef struct {
    const char *arch;       /* "llama", "qwen2" or "qwen3" */
    const char *name;       /* general.name; NULL: "tokd-random" */
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff;
    uint32_t head_dim;      /* 0: n_embd / n_head */
    uint32_t n_vocab;       /* embedding rows; 0: the vocab's token count */
    uint32_t n_ctx;         /* context_length key */
    uint32_t type;          /* KERN_TYPE_* of the matrices (fallbacks as in eng_quant_tensor_type) */
    bool tied;              /* no output.weight */
    float std;              /* weights ~ std * N(0,1) (Irwin-Hall approximation); norms are 1 */
    uint64_t seed;
    const char *vocab_from; /* GGUF whose tokenizer.* keys are copied; NULL: a built-in byte-level
                               SentencePiece vocab (3 controls, 256 byte tokens, fillers) */
    int n_threads;          /* 0: one per CPU */
} eng_mkmodel_spec;

/* Defaults: llama, Q8_0, std 0.02, seed 42, n_ctx 4096, untied, built-in vocab, no dims. */
void eng_mkmodel_spec_default(eng_mkmodel_spec *s);
/* Sets the dims of a named shape (case-insensitive): S135 (576, 30 layers, 9/3 heads, n_ff 1536,
 * vocab 32000), S1B (2048, 22, 32/4, 5632, 32000), LLAMA8B (4096, 32, 32/8, 14336, 128256).
 * 0, or ENG_ERR_INVALID for an unknown name. */
int eng_mkmodel_shape(const char *name, eng_mkmodel_spec *s);
/* Parameters (elements of every tensor, embedding and norms included) of the model the spec
 * describes, with n_vocab 0 read as 32000; 0 when a dim is 0. */
uint64_t eng_mkmodel_n_params(const eng_mkmodel_spec *s);
/* Writes the model to path (overwritten; removed on error). Checks the dims (heads divide,
 * head_dim even, vocab large enough for the tokenizer). */
int eng_mkmodel_write(const eng_mkmodel_spec *s, const char *path, char *err, size_t errlen);

#endif
