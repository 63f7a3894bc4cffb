/* tokenizer internals: the vocab struct, its hash tables, and the seams between
 * tokenizer.c (load, special tokens, decoding), tok_spm.c (SentencePiece-style encoding) and
 * tok_bpe.c (pre-tokenizer on PCRE2 + byte-level BPE). Included only by those files and the
 * tokenizer unit test / fuzz target. */
#ifndef ENGINE_TOKENIZER_INTERNAL_H
#define ENGINE_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"

typedef enum { TOK__MODEL_SPM = 0, TOK__MODEL_BPE = 1 } tok__model;

/* Open-addressing hash table of int32 values (token ids or merge ranks). Keys live outside the
 * table (in the vocab's arenas); each slot keeps the full 32-bit hash to skip most compares.
 * Invariant: cap is a power of two and at most half the slots are used; empty slots hold -1. */
typedef struct {
    int32_t *val;
    uint32_t *hash;
    size_t cap;
} tok__ht;

/* Pre-tokenizer: an ordered list of compiled PCRE2 regexes applied one after another, each
 * splitting the pieces the previous one produced (see tok__pre_split). Opaque here. */
typedef struct tok__pre tok__pre;

/* One merge rule "first second", rank = its index in tokenizer.ggml.merges. */
typedef struct {
    uint32_t off; /* into merge_arena: first then second, no separator */
    uint32_t first_len, second_len;
} tok__merge;

/* The vocab. Immutable after tok_vocab_load; every array is indexed by token id < n_vocab.
 * Token texts are copied into text_arena (NUL-terminated) so the vocab outlives the gguf_file. */
struct tok_vocab {
    tok__model model;
    int32_t n_vocab;
    char *text_arena;
    uint32_t *text_off; /* (n_vocab) */
    uint32_t *text_len; /* (n_vocab) */
    float *score;       /* (n_vocab), 0 when the file has no scores */
    uint8_t *type;      /* (n_vocab), TOK_TYPE_* */
    tok__ht tok_ht;     /* token text -> id (first id wins on duplicates) */

    tok__merge *merges; /* (n_merges) */
    char *merge_arena;
    int32_t n_merges;
    tok__ht merge_ht;   /* (first, second) -> rank (lowest rank wins on duplicates) */

    tok__pre *pre;      /* BPE only */
    bool ignore_merges; /* llama3: a piece that is a whole token is emitted as is */
    bool add_space_prefix;
    bool add_bos, add_eos;
    int32_t bos, eos, eot, unk;
    int32_t eog[16];
    int n_eog;
    int32_t byte_tok[256]; /* SPM byte fallback: id of <0xNN> (or the 1-byte token), else unk */

    int32_t *special;   /* CONTROL/USER_DEFINED/UNKNOWN ids, longest text first */
    int32_t n_special;
};

/* Output sink: ids past cap are counted, not written (gives TOK_ERR_NOSPACE's size). */
typedef struct {
    int32_t *buf;
    size_t cap;
    size_t n;
} tok__out;

static inline void tok__push(tok__out *o, int32_t id) {
    if (o->n < o->cap) o->buf[o->n] = id;
    o->n++;
}

/* A symbol of the merge loops: a span of the word being merged, linked to its live
 * neighbours (-1 at the ends); n == 0 once merged into its left neighbour. */
typedef struct {
    uint32_t off, n;
    int32_t prev, next;
} tok__symbol;

/* A candidate merge of symbols left and right whose texts total size bytes. Popped in order
 * of key (SPM: -score, BPE: rank), then leftmost first, as llama.cpp's priority queues do.
 * A popped bigram is stale (skipped) when either side changed since it was pushed. */
typedef struct {
    double key;
    int32_t left, right;
    uint32_t size;
} tok__bigram;
void tok__heap_push(tok__bigram *h, size_t *n, tok__bigram b);
tok__bigram tok__heap_pop(tok__bigram *h, size_t *n);

/* Hashing and lookup. */
uint32_t tok__hash(const char *s, size_t len, uint32_t h);
#define TOK__HASH_SEED 2166136261u
int32_t tok__lookup(const tok_vocab *v, const char *s, size_t len); /* -1 if absent */
/* Rank of the merge (a, b), -1 if absent. */
int32_t tok__merge_rank(const tok_vocab *v, const char *a, size_t alen, const char *b, size_t blen);
int tok__ht_init(tok__ht *t, size_t n_items);
void tok__ht_free(tok__ht *t);

/* SentencePiece-style encoding of one raw-text fragment (spaces escaped inside). */
int tok__spm_encode(const tok_vocab *v, const char *text, size_t len, bool space_prefix,
                    tok__out *out);

/* Byte-level BPE encoding of one raw-text fragment: pre-tokenize, byte-encode, merge. */
int tok__bpe_encode(const tok_vocab *v, const char *text, size_t len, tok__out *out);
/* Load the merges (tokenizer.ggml.merges) into v. Errors name file and key. */
int tok__bpe_load_merges(tok_vocab *v, const gguf_file *f, char *err, size_t errlen);
/* Decode a gpt2 vocab string to the bytes it stands for (code points outside the byte table
 * are kept as UTF-8). Writes up to cap bytes, returns the full count. */
size_t tok__bpe_decode(const char *text, size_t len, char *buf, size_t cap);
/* GPT-2 byte <-> unicode mapping: the code point standing for byte b, and the inverse
 * (-1 for a code point that stands for no byte). */
uint32_t tok__byte_to_cp(uint8_t b);
int tok__cp_to_byte(uint32_t cp);
/* Decode a UTF-8 code point at s (len > 0). Returns its length (1..4) and sets *cp; for an
 * invalid or truncated sequence returns 1 and sets *cp = 0xFFFFFFFF. */
int tok__utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
/* Length of the UTF-8 sequence started by lead byte c, as llama.cpp's unicode_len_utf8. */
size_t tok__utf8_len(unsigned char c);

/* Pre-tokenizer. Known names: "default", "gpt-2", "gpt2", "mpt", "olmo", "jais" (GPT-2 regex);
 * "llama-bpe", "llama3", "dbrx", "smaug-bpe" (Llama 3 regex); "qwen2", "stablelm2",
 * "deepseek-r1-qwen" (Qwen2 regex); "smollm", "starcoder", "refact", "command-r", "codeshell",
 * "exaone", "minerva" ("\p{N}" then the GPT-2 regex). An unknown name logs a warning and uses
 * the GPT-2 regex (*known = false). */
int tok__pre_new(const char *name, size_t name_len, tok__pre **out, bool *known, char *err,
                 size_t errlen);
void tok__pre_destroy(tok__pre *p);
/* Whether the named pre-tokenizer is one of the Llama 3 family (merges are ignored for whole
 * tokens). */
bool tok__pre_is_llama3(const char *name, size_t name_len);

/* Pieces of a split: consecutive, covering the text, ends[i] = end offset of piece i. */
typedef struct {
    size_t *ends;
    size_t n, cap;
} tok__pieces;
void tok__pieces_free(tok__pieces *p);
/* Split text with p's regex list: each regex splits every piece the previous produced into
 * its matches and the non-matching gaps between them (both kept, empty ones dropped); a
 * regex sees one piece as its whole subject. Returns 0, TOK_ERR_NOMEM or TOK_ERR_FORMAT
 * (PCRE2 match error). p->ends is reused across calls; free with tok__pieces_free. */
int tok__pre_split(const tok__pre *pre, const char *text, size_t len, tok__pieces *out);
/* The same with the vocab's own pre-tokenizer (BPE vocabs only; TOK_ERR_INVALID for SPM). */
int tok__pretokenize(const tok_vocab *v, const char *text, size_t len, tok__pieces *out);

#endif
