/* tokenizer: text <-> token ids, built from a GGUF file's tokenizer.ggml.* metadata.
 *
 * Two models, as llama.cpp names them in tokenizer.ggml.model:
 *   "llama": SentencePiece-style BPE driven by token scores, "▁" for spaces, a leading space
 *            added when tokenizer.ggml.add_space_prefix (default true), <0xNN> byte fallback.
 *   "gpt2":  byte-level BPE with tokenizer.ggml.merges; the text is first split by the
 *            pre-tokenizer named in tokenizer.ggml.pre ("default"/"gpt-2", "llama-bpe"/"llama3",
 *            "qwen2", "smollm", "starcoder", ...) whose regexes run on PCRE2 with Unicode
 *            properties.
 * Special tokens (token_type CONTROL/USER_DEFINED) are matched in the text when parse_special.
 * Thread: immutable after load; any thread may encode/decode concurrently. */
#ifndef ENGINE_TOKENIZER_H
#define ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

typedef struct tok_vocab tok_vocab;

enum {
    TOK_ERR_FORMAT = -2, /* bad or missing tokenizer metadata */
    TOK_ERR_NOMEM = -3,
    TOK_ERR_NOSPACE = -6, /* output buffer too small; *n_out holds the size needed */
    TOK_ERR_INVALID = -7, /* bad argument (e.g. token id out of range) */
};

/* Token types (tokenizer.ggml.token_type), numbered as in GGUF. */
enum {
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/* Build the vocab from f's metadata. Errors name the file and the key. Caller owns *out. */
int tok_vocab_load(const gguf_file *f, tok_vocab **out, char *err, size_t errlen);
void tok_vocab_destroy(tok_vocab *v);

int32_t tok_n_vocab(const tok_vocab *v);
int32_t tok_bos(const tok_vocab *v); /* -1 if none */
int32_t tok_eos(const tok_vocab *v); /* -1 if none */
int32_t tok_eot(const tok_vocab *v); /* end-of-turn (<|im_end|>, <|eot_id|>, <end_of_turn>), -1 if none */
bool tok_add_bos(const tok_vocab *v);
bool tok_add_eos(const tok_vocab *v);
/* True for tokens that end generation: EOS, EOT and other end-of-generation controls. */
bool tok_is_eog(const tok_vocab *v, int32_t id);
/* Raw vocab string of a token (as stored in GGUF), NULL if out of range. */
const char *tok_token_text(const tok_vocab *v, int32_t id, size_t *len);
/* Id of an exact vocab string, -1 if absent. */
int32_t tok_find(const tok_vocab *v, const char *text, size_t len);

/* Encode len bytes of text. add_special: add BOS/EOS as the vocab asks. parse_special: text
 * such as "<|im_start|>" becomes its control token instead of being tokenized as text.
 * Writes up to cap ids; returns 0 and sets *n_out, or TOK_ERR_NOSPACE with *n_out = needed. */
int tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t *out, size_t cap, size_t *n_out);

/* Bytes a token stands for in output text ("▁" -> " ", <0x0A> -> "\n", byte-level decoding
 * for gpt2 vocabs). Control tokens give "" unless render_special. Returns the byte count
 * (may exceed cap, in which case nothing past cap is written), or a negative error. */
int tok_token_to_bytes(const tok_vocab *v, int32_t id, bool render_special, char *buf, size_t cap);

/* Bytes of a whole id sequence, concatenated (tok_token_to_bytes for each). Returns the byte
 * count (may exceed cap; nothing past cap is written) or a negative error. */
int tok_decode(const tok_vocab *v, const int32_t *ids, size_t n, bool render_special, char *buf,
               size_t cap);

/* Incremental detokenizer: feeds token ids, emits only complete UTF-8 sequences, holding back
 * a partial multi-byte character until its remaining bytes arrive. Caller owns the struct. */
typedef struct {
    unsigned char pending[8];
    int n_pending;
} tok_detok;
void tok_detok_init(tok_detok *d);
/* Appends the text of `id` to out (cap bytes) and returns bytes written, or a negative error.
 * Invalid bytes that can never become a valid sequence are emitted as U+FFFD. Control tokens
 * add nothing (tok_token_to_bytes with render_special false). On TOK_ERR_NOSPACE nothing is
 * written and *d is unchanged, so the call can be retried with a larger buffer. */
int tok_detok_push(const tok_vocab *v, tok_detok *d, int32_t id, char *out, size_t cap);
/* Flushes what is still held back (as U+FFFD for an incomplete sequence). */
int tok_detok_flush(tok_detok *d, char *out, size_t cap);

#endif
