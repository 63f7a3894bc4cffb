/* tokenizer: the vocab loaded from GGUF metadata, special tokens, encode dispatch, decoding
 * and the incremental UTF-8-safe detokenizer. The two encoders live in tok_spm.c ("llama")
 * and tok_bpe.c ("gpt2"); see tokenizer.h for the contract.
 *
 * Encoding follows llama.cpp (llama-vocab.cpp) so that ids match it exactly: the text is
 * first partitioned around special tokens (longest text first; CONTROL and UNKNOWN tokens
 * only when parse_special, USER_DEFINED tokens always, as llama.cpp and HF tokenizers do),
 * then each raw fragment is encoded on its own. For SPM a fragment that starts the text or
 * follows a special token gets the "▁" prefix when add_space_prefix.
 *
 * Metadata rules: tokenizer.ggml.model and tokenizer.ggml.tokens are required (merges too for
 * gpt2); scores and token_type are optional but must have one entry per token when present.
 * A special-token id out of range is ignored with a warning. An unknown tokenizer.ggml.pre
 * logs a warning and falls back to the GPT-2 regex. */
#include "engine/tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/tokenizer_internal.h"

/* ---- hash tables ---- */

uint32_t tok__hash(const char *s, size_t len, uint32_t h) {
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

int tok__ht_init(tok__ht *t, size_t n_items) {
    size_t cap = 16;
    while (cap < 2 * n_items) cap *= 2;
    t->val = tk_malloc(cap * sizeof *t->val);
    t->hash = tk_calloc(cap, sizeof *t->hash);
    if (!t->val || !t->hash) return TOK_ERR_NOMEM;
    memset(t->val, 0xFF, cap * sizeof *t->val); /* all -1 */
    t->cap = cap;
    return 0;
}

void tok__ht_free(tok__ht *t) {
    tk_free(t->val);
    tk_free(t->hash);
    memset(t, 0, sizeof *t);
}

/* Slot of text in the token table: its id's slot, or the empty slot where it would go. */
static size_t tok_slot(const tok_vocab *v, const char *s, size_t len, uint32_t h) {
    size_t mask = v->tok_ht.cap - 1, j = h & mask;
    for (; v->tok_ht.val[j] >= 0; j = (j + 1) & mask) {
        int32_t id = v->tok_ht.val[j];
        if (v->tok_ht.hash[j] == h && v->text_len[id] == len &&
            memcmp(v->text_arena + v->text_off[id], s, len) == 0)
            break;
    }
    return j;
}

int32_t tok__lookup(const tok_vocab *v, const char *s, size_t len) {
    return v->tok_ht.val[tok_slot(v, s, len, tok__hash(s, len, TOK__HASH_SEED))];
}

/* ---- bigram heap (shared by both merge loops) ---- */

static bool bigram_before(const tok__bigram *a, const tok__bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

void tok__heap_push(tok__bigram *h, size_t *n, tok__bigram b) {
    size_t i = (*n)++;
    while (i > 0 && bigram_before(&b, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = b;
}

tok__bigram tok__heap_pop(tok__bigram *h, size_t *n) {
    tok__bigram top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && bigram_before(&h[c + 1], &h[c])) c++;
        if (!bigram_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

/* ---- loading ---- */

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static int load_tokens(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    static const char *key = "tokenizer.ggml.tokens";
    const char *path = gguf_path(f);
    uint64_t n = 0;
    int rc = gguf_get_arr_str(f, key, &n);
    if (rc == GGUF_ERR_NOTFOUND) return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: missing", path, key);
    if (rc) return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: not an array of strings", path, key);
    if (n == 0 || n > INT32_MAX / 2)
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: bad token count %llu", path, key,
                    (unsigned long long)n);
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (gguf_arr_str_at(f, key, i, &s, &len) != 0 || len > INT32_MAX / 2 ||
            (total += len + 1) > INT32_MAX)
            return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: entry %llu unreadable or too long",
                        path, key, (unsigned long long)i);
    }
    v->n_vocab = (int32_t)n;
    v->text_arena = tk_malloc(total);
    v->text_off = tk_calloc(n, sizeof *v->text_off);
    v->text_len = tk_calloc(n, sizeof *v->text_len);
    v->score = tk_calloc(n, sizeof *v->score);
    v->type = tk_calloc(n, sizeof *v->type);
    if (!v->text_arena || !v->text_off || !v->text_len || !v->score || !v->type ||
        tok__ht_init(&v->tok_ht, n))
        return TOK_ERR_NOMEM;
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        gguf_arr_str_at(f, key, i, &s, &len);
        memcpy(v->text_arena + off, s, len);
        v->text_arena[off + len] = '\0';
        v->text_off[i] = (uint32_t)off;
        v->text_len[i] = (uint32_t)len;
        off += len + 1;
        uint32_t h = tok__hash(s, len, TOK__HASH_SEED);
        size_t j = tok_slot(v, s, len, h);
        v->tok_ht.val[j] = (int32_t)i; /* duplicates: the last id wins, as in llama.cpp */
        v->tok_ht.hash[j] = h;
    }
    return 0;
}

/* Optional per-token array (scores, token types): absent is fine, else one entry per token. */
static int load_token_array(tok_vocab *v, const gguf_file *f, const char *key, char *err,
                            size_t errlen) {
    int64_t k = gguf_find_key(f, key);
    if (k < 0) return 1;
    if (gguf_kv_type(f, k) != GGUF_TYPE_ARRAY || gguf_kv_arr_n(f, k) != (uint64_t)v->n_vocab)
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: expected an array of %d entries",
                    gguf_path(f), key, v->n_vocab);
    return 0;
}

static int load_scores_types(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    const char *path = gguf_path(f);
    int rc = load_token_array(v, f, "tokenizer.ggml.scores", err, errlen);
    if (rc < 0) return rc;
    if (rc == 0 && gguf_get_arr_f32(f, "tokenizer.ggml.scores", v->score, v->n_vocab) != 0)
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.scores: not numeric", path);
    rc = load_token_array(v, f, "tokenizer.ggml.token_type", err, errlen);
    if (rc < 0) return rc;
    if (rc == 1) {
        memset(v->type, TOK_TYPE_NORMAL, (size_t)v->n_vocab);
        return 0;
    }
    int32_t *t = tk_calloc((size_t)v->n_vocab, sizeof *t);
    if (!t) return TOK_ERR_NOMEM;
    rc = gguf_get_arr_i32(f, "tokenizer.ggml.token_type", t, v->n_vocab) ? TOK_ERR_FORMAT : 0;
    for (int32_t i = 0; rc == 0 && i < v->n_vocab; i++) {
        if (t[i] < 0 || t[i] > TOK_TYPE_BYTE)
            rc = fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.token_type: entry %d has "
                      "unknown type %d", path, i, t[i]);
        v->type[i] = (uint8_t)(t[i] == 0 ? TOK_TYPE_NORMAL : t[i]);
    }
    tk_free(t);
    if (rc == TOK_ERR_FORMAT && !err[0])
        fail(err, errlen, rc, "%s: tokenizer.ggml.token_type: not an integer array", path);
    return rc;
}

/* Special token id from key: absent leaves *id, out of range warns and gives -1. */
static int load_id(tok_vocab *v, const gguf_file *f, const char *key, int32_t *id, char *err,
                   size_t errlen) {
    uint32_t u;
    int rc = gguf_get_u32(f, key, &u);
    if (rc == GGUF_ERR_NOTFOUND) return 0;
    if (rc) return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: not a token id", gguf_path(f), key);
    if (u >= (uint32_t)v->n_vocab) {
        TK_WARN("%s: %s: id %u out of range (n_vocab %d), ignored", gguf_path(f), key, u, v->n_vocab);
        *id = -1;
    } else {
        *id = (int32_t)u;
    }
    return 0;
}

static int load_flag(const gguf_file *f, const char *key, bool *out, char *err, size_t errlen) {
    int rc = gguf_get_bool(f, key, out);
    if (rc == 0 || rc == GGUF_ERR_NOTFOUND) return 0;
    return fail(err, errlen, TOK_ERR_FORMAT, "%s: %s: not a bool", gguf_path(f), key);
}

static int32_t find_first(const tok_vocab *v, const char *const *texts) {
    for (; *texts; texts++) {
        int32_t id = tok__lookup(v, *texts, strlen(*texts));
        if (id >= 0) return id;
    }
    return -1;
}

static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", "<end_of_utterance>",
    NULL};
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", NULL};

static void add_eog(tok_vocab *v, int32_t id) {
    if (id < 0 || v->n_eog == (int)(sizeof v->eog / sizeof v->eog[0])) return;
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return;
    v->eog[v->n_eog++] = id;
}

static int load_specials(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    static const char *const bos_texts[] = {"<|begin_of_text|>", "<s>", "<bos>", NULL};
    static const char *const eos_texts[] = {"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", NULL};
    bool spm = v->model == TOK__MODEL_SPM;
    v->bos = spm ? (v->n_vocab > 1 ? 1 : -1) : find_first(v, bos_texts);
    v->eos = spm ? (v->n_vocab > 2 ? 2 : -1) : find_first(v, eos_texts);
    v->unk = spm ? 0 : -1;
    v->eot = -1;
    int32_t eom = -1;
    int rc = 0;
    if ((rc = load_id(v, f, "tokenizer.ggml.bos_token_id", &v->bos, err, errlen)) ||
        (rc = load_id(v, f, "tokenizer.ggml.eos_token_id", &v->eos, err, errlen)) ||
        (rc = load_id(v, f, "tokenizer.ggml.unknown_token_id", &v->unk, err, errlen)) ||
        (rc = load_id(v, f, "tokenizer.ggml.eot_token_id", &v->eot, err, errlen)) ||
        (rc = load_id(v, f, "tokenizer.ggml.eom_token_id", &eom, err, errlen)))
        return rc;
    if (v->eot < 0) v->eot = find_first(v, eot_texts);
    add_eog(v, v->eos);
    add_eog(v, v->eot);
    add_eog(v, eom);
    for (const char *const *t = eog_texts; *t; t++) add_eog(v, tok__lookup(v, *t, strlen(*t)));
    return 0;
}

/* Sort key of a special token: longest text first, then lowest id (deterministic order). */
typedef struct {
    uint32_t len;
    int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bool is_special_type(uint8_t t) {
    return t == TOK_TYPE_CONTROL || t == TOK_TYPE_USER_DEFINED || t == TOK_TYPE_UNKNOWN;
}

static int build_special_list(tok_vocab *v) {
    size_t n = 0;
    for (int32_t i = 0; i < v->n_vocab; i++) n += is_special_type(v->type[i]) && v->text_len[i] > 0;
    special_key *keys = tk_calloc(n ? n : 1, sizeof *keys);
    v->special = tk_calloc(n ? n : 1, sizeof *v->special);
    if (!keys || !v->special) {
        tk_free(keys);
        return TOK_ERR_NOMEM;
    }
    n = 0;
    for (int32_t i = 0; i < v->n_vocab; i++)
        if (is_special_type(v->type[i]) && v->text_len[i] > 0)
            keys[n++] = (special_key){v->text_len[i], i};
    qsort(keys, n, sizeof *keys, cmp_special);
    for (size_t i = 0; i < n; i++) v->special[i] = keys[i].id;
    v->n_special = (int32_t)n;
    tk_free(keys);
    return 0;
}

static void build_byte_tokens(tok_vocab *v) {
    for (int b = 0; b < 256; b++) {
        char hex[8], one = (char)b;
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = tok__lookup(v, hex, 6);
        if (id < 0) id = tok__lookup(v, &one, 1);
        v->byte_tok[b] = id >= 0 ? id : v->unk;
    }
}

static int load_model_kind(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    const char *s, *path = gguf_path(f);
    size_t len;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &s, &len);
    if (rc == GGUF_ERR_NOTFOUND)
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.model: missing", path);
    if (rc) return fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.model: not a string", path);
    if (len == 5 && memcmp(s, "llama", 5) == 0) {
        v->model = TOK__MODEL_SPM;
    } else if (len == 4 && memcmp(s, "gpt2", 4) == 0) {
        v->model = TOK__MODEL_BPE;
    } else {
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.model: unsupported model "
                    "'%.*s' (supported: llama, gpt2)", path, (int)(len > 64 ? 64 : len), s);
    }
    return 0;
}

static int load_pre(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    const char *name = "default", *path = gguf_path(f);
    size_t len = 7;
    int rc = gguf_get_str(f, "tokenizer.ggml.pre", &name, &len);
    if (rc == GGUF_ERR_NOTFOUND) {
        TK_WARN("%s: tokenizer.ggml.pre: missing, using the gpt-2 pre-tokenizer", path);
        name = "default";
        len = 7;
    } else if (rc) {
        return fail(err, errlen, TOK_ERR_FORMAT, "%s: tokenizer.ggml.pre: not a string", path);
    }
    bool known;
    char rerr[160] = "";
    rc = tok__pre_new(name, len, &v->pre, &known, rerr, sizeof rerr);
    if (rc) return fail(err, errlen, rc, "%s: tokenizer.ggml.pre: %s", path, rerr);
    if (!known)
        TK_WARN("%s: tokenizer.ggml.pre: unknown pre-tokenizer '%.*s', using the gpt-2 regex", path,
                (int)(len > 64 ? 64 : len), name);
    v->ignore_merges = tok__pre_is_llama3(name, len);
    return 0;
}

static int load_all(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    int rc;
    if ((rc = load_model_kind(v, f, err, errlen)) || (rc = load_tokens(v, f, err, errlen)) ||
        (rc = load_scores_types(v, f, err, errlen)))
        return rc;
    bool spm = v->model == TOK__MODEL_SPM;
    if (!spm && ((rc = tok__bpe_load_merges(v, f, err, errlen)) || (rc = load_pre(v, f, err, errlen))))
        return rc;
    v->add_space_prefix = spm;
    v->add_bos = spm || v->ignore_merges; /* llama.cpp: SPM and Llama 3 add BOS by default */
    v->add_eos = false;
    if ((rc = load_flag(f, "tokenizer.ggml.add_bos_token", &v->add_bos, err, errlen)) ||
        (rc = load_flag(f, "tokenizer.ggml.add_eos_token", &v->add_eos, err, errlen)) ||
        (spm && (rc = load_flag(f, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err,
                                errlen))) ||
        (rc = load_specials(v, f, err, errlen)) || (rc = build_special_list(v)))
        return rc;
    build_byte_tokens(v);
    return 0;
}

int tok_vocab_load(const gguf_file *f, tok_vocab **out, char *err, size_t errlen) {
    char lerr[256] = "";
    *out = NULL;
    tok_vocab *v = tk_calloc(1, sizeof *v);
    if (!v) {
        if (err && errlen) snprintf(err, errlen, "%s: tokenizer: out of memory", gguf_path(f));
        return TOK_ERR_NOMEM;
    }
    int rc = load_all(v, f, lerr, sizeof lerr);
    if (rc) {
        if (rc == TOK_ERR_NOMEM && !lerr[0])
            snprintf(lerr, sizeof lerr, "%s: tokenizer: out of memory", gguf_path(f));
        if (err && errlen) snprintf(err, errlen, "%s", lerr);
        tok_vocab_destroy(v);
        return rc;
    }
    *out = v;
    return 0;
}

void tok_vocab_destroy(tok_vocab *v) {
    if (!v) return;
    tk_free(v->text_arena);
    tk_free(v->text_off);
    tk_free(v->text_len);
    tk_free(v->score);
    tk_free(v->type);
    tok__ht_free(&v->tok_ht);
    tk_free(v->merges);
    tk_free(v->merge_arena);
    tok__ht_free(&v->merge_ht);
    tok__pre_destroy(v->pre);
    tk_free(v->special);
    tk_free(v);
}

/* ---- accessors ---- */

int32_t tok_n_vocab(const tok_vocab *v) { return v->n_vocab; }
int32_t tok_bos(const tok_vocab *v) { return v->bos; }
int32_t tok_eos(const tok_vocab *v) { return v->eos; }
int32_t tok_eot(const tok_vocab *v) { return v->eot; }
bool tok_add_bos(const tok_vocab *v) { return v->add_bos && v->bos >= 0; }
bool tok_add_eos(const tok_vocab *v) { return v->add_eos && v->eos >= 0; }

bool tok_is_eog(const tok_vocab *v, int32_t id) {
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return true;
    return false;
}

const char *tok_token_text(const tok_vocab *v, int32_t id, size_t *len) {
    if (id < 0 || id >= v->n_vocab) return NULL;
    if (len) *len = v->text_len[id];
    return v->text_arena + v->text_off[id];
}

int32_t tok_find(const tok_vocab *v, const char *text, size_t len) {
    return tok__lookup(v, text, len);
}

/* ---- encoding ---- */

/* A fragment of the input: raw text (id < 0) or one special token. */
typedef struct {
    size_t off, len;
    int32_t id;
} frag;

typedef struct {
    frag *f;
    size_t n, cap;
} frag_list;

static int frag_push(frag_list *l, size_t off, size_t len, int32_t id) {
    if (len == 0 && id < 0) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        frag *f = tk_realloc(l->f, cap * sizeof *f);
        if (!f) return TOK_ERR_NOMEM;
        l->f = f;
        l->cap = cap;
    }
    l->f[l->n++] = (frag){off, len, id};
    return 0;
}

/* Split every raw fragment of in around the occurrences of token id, into out. */
static int frag_split(const tok_vocab *v, const char *text, int32_t id, const frag_list *in,
                      frag_list *out) {
    const char *tt = v->text_arena + v->text_off[id];
    size_t tl = v->text_len[id];
    int rc = 0;
    out->n = 0;
    for (size_t i = 0; i < in->n && rc == 0; i++) {
        frag fr = in->f[i];
        if (fr.id >= 0 || fr.len < tl) {
            rc = frag_push(out, fr.off, fr.len, fr.id);
            continue;
        }
        size_t pos = fr.off, end = fr.off + fr.len;
        const char *hit;
        while (rc == 0 && end - pos >= tl && (hit = memmem(text + pos, end - pos, tt, tl))) {
            size_t at = (size_t)(hit - text);
            if ((rc = frag_push(out, pos, at - pos, -1)) == 0) rc = frag_push(out, at, tl, id);
            pos = at + tl;
        }
        if (rc == 0) rc = frag_push(out, pos, end - pos, -1);
    }
    return rc;
}

/* Partition text around special tokens, longest first (llama.cpp's tokenizer_st_partition). */
static int partition(const tok_vocab *v, const char *text, size_t len, bool parse_special,
                     frag_list *out) {
    frag_list tmp = {0};
    int rc = frag_push(out, 0, len, -1);
    for (int32_t k = 0; rc == 0 && k < v->n_special; k++) {
        int32_t id = v->special[k];
        if (!parse_special && v->type[id] != TOK_TYPE_USER_DEFINED) continue;
        if (!memmem(text, len, v->text_arena + v->text_off[id], v->text_len[id])) continue;
        rc = frag_split(v, text, id, out, &tmp);
        frag_list t = *out;
        *out = tmp;
        tmp = t;
    }
    tk_free(tmp.f);
    return rc;
}

int tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t *out, size_t cap, size_t *n_out) {
    if (!v || !n_out || (!text && len) || (!out && cap)) return TOK_ERR_INVALID;
    if (len > (size_t)1 << 30) return TOK_ERR_INVALID; /* symbol offsets are 32-bit */
    tok__out o = {out, cap, 0};
    frag_list fl = {0};
    int rc = len ? partition(v, text, len, parse_special, &fl) : 0;
    if (rc == 0 && add_special && v->add_bos && v->bos >= 0) tok__push(&o, v->bos);
    bool prev_special = true; /* SPM: the first fragment and those after specials get "▁" */
    for (size_t i = 0; rc == 0 && i < fl.n; i++) {
        const frag *fr = &fl.f[i];
        if (fr->id >= 0) {
            tok__push(&o, fr->id);
            prev_special = true;
        } else if (v->model == TOK__MODEL_SPM) {
            rc = tok__spm_encode(v, text + fr->off, fr->len, v->add_space_prefix && prev_special, &o);
            prev_special = false;
        } else {
            rc = tok__bpe_encode(v, text + fr->off, fr->len, &o);
        }
    }
    if (rc == 0 && add_special && v->add_eos && v->eos >= 0) tok__push(&o, v->eos);
    tk_free(fl.f);
    if (rc) return rc;
    *n_out = o.n;
    return o.n > cap ? TOK_ERR_NOSPACE : 0;
}

/* ---- decoding ---- */

static size_t copy_out(const char *s, size_t n, char *buf, size_t cap) {
    if (cap) memcpy(buf, s, n < cap ? n : cap);
    return n;
}

/* SPM text with every "▁" turned back into a space. */
static size_t spm_unescape(const char *s, size_t n, char *buf, size_t cap) {
    size_t w = 0;
    for (size_t i = 0; i < n; w++) {
        char c = s[i];
        if (n - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
            c = ' ';
            i += 3;
        } else {
            i++;
        }
        if (w < cap) buf[w] = c;
    }
    return w;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tok_token_to_bytes(const tok_vocab *v, int32_t id, bool render_special, char *buf, size_t cap) {
    if (!v || id < 0 || id >= v->n_vocab || (!buf && cap)) return TOK_ERR_INVALID;
    const char *s = v->text_arena + v->text_off[id];
    size_t n = v->text_len[id];
    switch (v->type[id]) {
    case TOK_TYPE_CONTROL:
    case TOK_TYPE_UNKNOWN:
        return render_special ? (int)copy_out(s, n, buf, cap) : 0;
    case TOK_TYPE_USER_DEFINED:
        return (int)copy_out(s, n, buf, cap);
    case TOK_TYPE_UNUSED:
        return 0;
    case TOK_TYPE_BYTE:
        if (v->model == TOK__MODEL_SPM && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
            hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0) {
            char b = (char)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
            return (int)copy_out(&b, 1, buf, cap);
        }
        break; /* malformed byte token: decode as normal text */
    default:
        break;
    }
    if (v->model == TOK__MODEL_SPM) return (int)spm_unescape(s, n, buf, cap);
    return (int)tok__bpe_decode(s, n, buf, cap);
}

int tok_decode(const tok_vocab *v, const int32_t *ids, size_t n, bool render_special, char *buf,
               size_t cap) {
    if (!v || (!ids && n) || (!buf && cap)) return TOK_ERR_INVALID;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        int r = tok_token_to_bytes(v, ids[i], render_special, w < cap ? buf + w : NULL,
                                   w < cap ? cap - w : 0);
        if (r < 0) return r;
        if ((size_t)r > (size_t)INT32_MAX - w) return TOK_ERR_INVALID;
        w += (size_t)r;
    }
    return (int)w;
}

/* ---- incremental detokenizer ---- */

void tok_detok_init(tok_detok *d) { memset(d, 0, sizeof *d); }

static void put(const char *s, size_t n, char *out, size_t cap, size_t *w) {
    for (size_t i = 0; i < n; i++, (*w)++)
        if (*w < cap) out[*w] = s[i];
}

#define REPLACEMENT "\xef\xbf\xbd"

/* Total length of the sequence a valid lead byte starts (0 for a byte that cannot lead). */
static int lead_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
}

/* Whether b may follow the n bytes in p (rules of RFC 3629: no overlongs, no surrogates). */
static bool cont_ok(const unsigned char *p, int n, unsigned char b) {
    if (n == 1) {
        if (p[0] == 0xE0) return b >= 0xA0 && b <= 0xBF;
        if (p[0] == 0xED) return b >= 0x80 && b <= 0x9F;
        if (p[0] == 0xF0) return b >= 0x90 && b <= 0xBF;
        if (p[0] == 0xF4) return b >= 0x80 && b <= 0x8F;
    }
    return (b & 0xC0) == 0x80;
}

static void detok_byte(tok_detok *d, unsigned char b, char *out, size_t cap, size_t *w) {
    if (d->n_pending > 0) {
        if (cont_ok(d->pending, d->n_pending, b)) {
            d->pending[d->n_pending++] = b;
            if (d->n_pending == lead_len(d->pending[0])) {
                put((const char *)d->pending, (size_t)d->n_pending, out, cap, w);
                d->n_pending = 0;
            }
            return;
        }
        put(REPLACEMENT, 3, out, cap, w); /* the broken prefix; b starts afresh */
        d->n_pending = 0;
    }
    int n = lead_len(b);
    if (n == 1) {
        put((const char *)&b, 1, out, cap, w);
    } else if (n > 1) {
        d->pending[0] = b;
        d->n_pending = 1;
    } else {
        put(REPLACEMENT, 3, out, cap, w);
    }
}

int tok_detok_push(const tok_vocab *v, tok_detok *d, int32_t id, char *out, size_t cap) {
    if (!d || (!out && cap)) return TOK_ERR_INVALID;
    char local[256], *heap = NULL, *src = local;
    int n = tok_token_to_bytes(v, id, false, local, sizeof local);
    if (n < 0) return n;
    if ((size_t)n > sizeof local) { /* only for unusually long tokens */
        if (!(heap = tk_malloc((size_t)n))) return TOK_ERR_NOMEM;
        tok_token_to_bytes(v, id, false, heap, (size_t)n);
        src = heap;
    }
    tok_detok next = *d; /* committed only when everything fits */
    size_t w = 0;
    for (int i = 0; i < n; i++) detok_byte(&next, (unsigned char)src[i], out, cap, &w);
    tk_free(heap);
    if (w > cap || w > INT32_MAX) return TOK_ERR_NOSPACE;
    *d = next;
    return (int)w;
}

int tok_detok_flush(tok_detok *d, char *out, size_t cap) {
    if (!d || (!out && cap)) return TOK_ERR_INVALID;
    if (d->n_pending == 0) return 0;
    if (cap < 3) return TOK_ERR_NOSPACE;
    memcpy(out, REPLACEMENT, 3);
    d->n_pending = 0;
    return 3;
}
