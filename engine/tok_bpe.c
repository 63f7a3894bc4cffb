/* tok_bpe: byte-level BPE ("gpt2" vocabs) — the pre-tokenizer regex lists on PCRE2, the
 * GPT-2 byte <-> unicode mapping, merges loading and the merge loop.
 *
 * Encoding one raw-text fragment follows llama.cpp's llm_tokenizer_bpe: the pre-tokenizer
 * splits the text into pieces (each regex of the list splitting the pieces of the previous
 * one, keeping the gaps between matches as pieces); each piece is byte-encoded (every byte
 * becomes one code point of the GPT-2 table) and its symbols (one per byte) are merged by
 * lowest merge rank first, leftmost first on ties; each final symbol is looked up as a token,
 * or, when it is none, its bytes are looked up one by one.
 *
 * Differences from llama.cpp, on purpose: invalid UTF-8 input is kept byte for byte (PCRE2
 * runs with PCRE2_MATCH_INVALID_UTF, invalid bytes fall into gap pieces and byte-encode
 * normally) where llama.cpp turns each invalid byte into U+FFFD; the "default" pre-tokenizer
 * is the GPT-2 regex, where llama.cpp uses a four-regex list of its own. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdio.h>
#include <string.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/tokenizer_internal.h"

/* ---- regex lists (as llama.cpp's llama-vocab.cpp uses them) ---- */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
/* Llama 3's tokenizer.json regex with (?i:...) spelled out as character classes. */
#define RE_LLAMA3                                                                            \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                             \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

#define PRE_MAX_RE 4

typedef struct {
    const char *names; /* '|'-separated */
    const char *re[PRE_MAX_RE];
} pre_def;

static const pre_def pre_defs[] = {
    {"default|gpt-2|gpt2|mpt|olmo|jais", {RE_GPT2}},
    {"llama-bpe|llama3|dbrx|smaug-bpe", {RE_LLAMA3}},
    {"qwen2|stablelm2|deepseek-r1-qwen", {RE_QWEN2}},
    {"smollm|starcoder|refact|command-r|codeshell|exaone|minerva", {"\\p{N}", RE_GPT2}},
};

struct tok__pre {
    pcre2_general_context *gctx;
    pcre2_code *re[PRE_MAX_RE];
    int n_re;
};

static bool name_in_list(const char *list, const char *name, size_t len) {
    const char *p = list;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && memcmp(p, name, len) == 0) return true;
        if (!bar) break;
        p = bar + 1;
    }
    return false;
}

bool tok__pre_is_llama3(const char *name, size_t name_len) {
    return name_in_list(pre_defs[1].names, name, name_len);
}

static void *pre_malloc(PCRE2_SIZE n, void *data) {
    (void)data;
    return tk_malloc(n);
}

static void pre_free(void *p, void *data) {
    (void)data;
    tk_free(p);
}

void tok__pre_destroy(tok__pre *p) {
    if (!p) return;
    for (int i = 0; i < p->n_re; i++) pcre2_code_free(p->re[i]);
    pcre2_general_context_free(p->gctx);
    tk_free(p);
}

static int pre_compile(tok__pre *p, const char *src, char *err, size_t errlen) {
    pcre2_compile_context *cc = pcre2_compile_context_create(p->gctx);
    if (!cc) return TOK_ERR_NOMEM;
    int ec = 0;
    PCRE2_SIZE eo = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    if (!re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ec, msg, sizeof msg);
        if (err) snprintf(err, errlen, "pre-tokenizer regex at %zu: %s", (size_t)eo, (char *)msg);
        return ec == PCRE2_ERROR_HEAP_FAILED || ec == PCRE2_ERROR_NOMEMORY ? TOK_ERR_NOMEM
                                                                          : TOK_ERR_FORMAT;
    }
    /* JIT is an optimisation: when it is unavailable pcre2_match interprets. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    p->re[p->n_re++] = re;
    return 0;
}

int tok__pre_new(const char *name, size_t name_len, tok__pre **out, bool *known, char *err,
                 size_t errlen) {
    const pre_def *def = NULL;
    for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++)
        if (name_in_list(pre_defs[i].names, name, name_len)) def = &pre_defs[i];
    *known = def != NULL;
    if (!def) def = &pre_defs[0];
    tok__pre *p = tk_calloc(1, sizeof *p);
    if (!p) return TOK_ERR_NOMEM;
    p->gctx = pcre2_general_context_create(pre_malloc, pre_free, NULL);
    int rc = p->gctx ? 0 : TOK_ERR_NOMEM;
    for (int i = 0; rc == 0 && i < PRE_MAX_RE && def->re[i]; i++)
        rc = pre_compile(p, def->re[i], err, errlen);
    if (rc) {
        tok__pre_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* ---- splitting ---- */

void tok__pieces_free(tok__pieces *p) {
    tk_free(p->ends);
    p->ends = NULL;
    p->n = p->cap = 0;
}

static int pieces_push(tok__pieces *p, size_t end) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *e = tk_realloc(p->ends, cap * sizeof *e);
        if (!e) return TOK_ERR_NOMEM;
        p->ends = e;
        p->cap = cap;
    }
    p->ends[p->n++] = end;
    return 0;
}

/* One match of re in subj[0..len) starting at or after pos; 1 found, 0 none, <0 error. */
static int re_find(const pcre2_code *re, pcre2_match_data *md, const char *subj, size_t len,
                   size_t pos, size_t *ms, size_t *me) {
    int rc = pcre2_match(re, (PCRE2_SPTR)subj, len, pos, 0, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)subj, len, pos, PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return rc == PCRE2_ERROR_NOMEMORY ? TOK_ERR_NOMEM : TOK_ERR_FORMAT;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* Split the piece text[start..end) with re, appending piece ends (absolute) to out. */
static int split_piece(const pcre2_code *re, pcre2_match_data *md, const char *text, size_t start,
                       size_t end, tok__pieces *out) {
    const char *subj = text + start;
    size_t len = end - start, pos = 0, last = 0, ms, me;
    int rc;
    while (pos < len && (rc = re_find(re, md, subj, len, pos, &ms, &me)) != 0) {
        if (rc < 0) return rc;
        if (me == ms) { /* empty match: step one character, keep it in the gap */
            pos = ms + 1;
            while (pos < len && ((unsigned char)subj[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > last && (rc = pieces_push(out, start + ms)) != 0) return rc;
        if ((rc = pieces_push(out, start + me)) != 0) return rc;
        last = pos = me;
    }
    if (last < len) return pieces_push(out, end);
    return 0;
}

int tok__pre_split(const tok__pre *pre, const char *text, size_t len, tok__pieces *out) {
    out->n = 0;
    if (len == 0) return 0;
    int rc = pieces_push(out, len);
    if (rc) return rc;
    pcre2_match_data *md = pcre2_match_data_create(1, pre->gctx);
    if (!md) return TOK_ERR_NOMEM;
    tok__pieces next = {0};
    for (int r = 0; r < pre->n_re && rc == 0; r++) {
        next.n = 0;
        size_t start = 0;
        for (size_t i = 0; i < out->n && rc == 0; i++) {
            rc = split_piece(pre->re[r], md, text, start, out->ends[i], &next);
            start = out->ends[i];
        }
        tok__pieces t = *out; /* swap: next becomes the current split */
        *out = next;
        next = t;
    }
    tok__pieces_free(&next);
    pcre2_match_data_free(md);
    return rc;
}

int tok__pretokenize(const tok_vocab *v, const char *text, size_t len, tok__pieces *out) {
    if (!v->pre) return TOK_ERR_INVALID;
    return tok__pre_split(v->pre, text, len, out);
}

/* ---- GPT-2 byte <-> unicode ---- */

/* Printable bytes stand for themselves; the other 68 (0-32, 127-160, 173) are numbered in
 * order from U+0100. */
uint32_t tok__byte_to_cp(uint8_t b) {
    if (b <= 32) return 256u + b;
    if (b >= 127 && b <= 160) return 256u + 33u + (b - 127u);
    if (b == 173) return 256u + 67u;
    return b;
}

int tok__cp_to_byte(uint32_t cp) {
    if (cp < 256) return tok__byte_to_cp((uint8_t)cp) == cp ? (int)cp : -1;
    if (cp <= 288) return (int)(cp - 256);
    if (cp <= 322) return (int)(cp - 289 + 127);
    if (cp == 323) return 173;
    return -1;
}

size_t tok__utf8_len(unsigned char c) {
    static const size_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

int tok__utf8_decode(const unsigned char *s, size_t len, uint32_t *cp) {
    unsigned char c = s[0];
    int n = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
    if (n == 1) {
        *cp = c;
        return 1;
    }
    if (n == 0 || (size_t)n > len) goto bad;
    uint32_t v = c & (0x7Fu >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) goto bad;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    if ((n == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))) ||
        (n == 4 && (v < 0x10000 || v > 0x10FFFF)))
        goto bad;
    *cp = v;
    return n;
bad:
    *cp = 0xFFFFFFFFu;
    return 1;
}

/* ---- merges ---- */

/* Check every merge entry has a space past its first byte; sets *total (arena bytes). */
static int merges_check(const gguf_file *f, const char *key, uint64_t n, size_t *total, char *err,
                        size_t errlen) {
    *total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        const char *why = NULL;
        if (gguf_arr_str_at(f, key, i, &s, &len) != 0)
            why = "unreadable";
        else if (!(len > 1 && memchr(s + 1, ' ', len - 1))) /* llama.cpp: find(' ', 1) */
            why = "has no space";
        else if ((*total += len) > UINT32_MAX - 1)
            why = "makes the merges too large";
        if (why) {
            snprintf(err, errlen, "%s: %s: entry %llu %s", gguf_path(f), key,
                     (unsigned long long)i, why);
            return TOK_ERR_FORMAT;
        }
    }
    return 0;
}

int tok__bpe_load_merges(tok_vocab *v, const gguf_file *f, char *err, size_t errlen) {
    static const char *key = "tokenizer.ggml.merges";
    uint64_t n = 0;
    size_t total = 0;
    int rc = gguf_get_arr_str(f, key, &n);
    if (rc) {
        snprintf(err, errlen, "%s: %s: %s", gguf_path(f), key,
                 rc == GGUF_ERR_NOTFOUND ? "missing (required for gpt2 vocabs)"
                                         : "not an array of strings");
        return TOK_ERR_FORMAT;
    }
    if (n > INT32_MAX / 2) {
        snprintf(err, errlen, "%s: %s: %llu entries is too many", gguf_path(f), key,
                 (unsigned long long)n);
        return TOK_ERR_FORMAT;
    }
    if ((rc = merges_check(f, key, n, &total, err, errlen)) != 0) return rc;
    v->merges = tk_calloc(n ? n : 1, sizeof *v->merges);
    v->merge_arena = tk_malloc(total + 1);
    if (!v->merges || !v->merge_arena || tok__ht_init(&v->merge_ht, n)) return TOK_ERR_NOMEM;
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        gguf_arr_str_at(f, key, i, &s, &len);
        size_t a = (size_t)((const char *)memchr(s + 1, ' ', len - 1) - s);
        tok__merge *m = &v->merges[i];
        m->off = (uint32_t)off;
        m->first_len = (uint32_t)a;
        m->second_len = (uint32_t)(len - a - 1);
        memcpy(v->merge_arena + off, s, a);
        memcpy(v->merge_arena + off + a, s + a + 1, len - a - 1);
        off += len - 1;
        if (tok__merge_rank(v, s, a, s + a + 1, len - a - 1) >= 0) continue; /* duplicate */
        uint32_t h = tok__hash(s + a + 1, len - a - 1, tok__hash(s, a, TOK__HASH_SEED) ^ (uint32_t)a);
        size_t mask = v->merge_ht.cap - 1, j = h & mask;
        while (v->merge_ht.val[j] >= 0) j = (j + 1) & mask;
        v->merge_ht.val[j] = (int32_t)i;
        v->merge_ht.hash[j] = h;
    }
    v->n_merges = (int32_t)n;
    return 0;
}

int32_t tok__merge_rank(const tok_vocab *v, const char *a, size_t alen, const char *b, size_t blen) {
    if (!v->merge_ht.cap) return -1;
    uint32_t h = tok__hash(b, blen, tok__hash(a, alen, TOK__HASH_SEED) ^ (uint32_t)alen);
    size_t mask = v->merge_ht.cap - 1;
    for (size_t j = h & mask; v->merge_ht.val[j] >= 0; j = (j + 1) & mask) {
        if (v->merge_ht.hash[j] != h) continue;
        const tok__merge *m = &v->merges[v->merge_ht.val[j]];
        const char *t = v->merge_arena + m->off;
        if (m->first_len == alen && m->second_len == blen && memcmp(t, a, alen) == 0 &&
            memcmp(t + alen, b, blen) == 0)
            return v->merge_ht.val[j];
    }
    return -1;
}

/* ---- encoding ---- */

/* Scratch for one fragment, sized for its longest piece. */
typedef struct {
    char *enc;            /* byte-encoded piece, <= 2 bytes per input byte */
    tok__symbol *sym;     /* one per input byte */
    tok__bigram *heap;    /* <= 3 per input byte */
} bpe_scratch;

static void bpe_try_pair(const tok_vocab *v, const char *enc, const tok__symbol *sym,
                         int32_t l, int32_t r, tok__bigram *heap, size_t *nh) {
    if (l < 0 || r < 0) return;
    int32_t rank = tok__merge_rank(v, enc + sym[l].off, sym[l].n, enc + sym[r].off, sym[r].n);
    if (rank < 0) return;
    tok__bigram b = {(double)rank, l, r, sym[l].n + sym[r].n};
    tok__heap_push(heap, nh, b);
}

static void bpe_emit(const tok_vocab *v, const char *s, size_t n, tok__out *out) {
    int32_t id = tok__lookup(v, s, n);
    if (id >= 0) {
        tok__push(out, id);
        return;
    }
    for (size_t i = 0; i < n; i++) { /* as llama.cpp: each byte of the symbol as a token */
        id = tok__lookup(v, s + i, 1);
        if (id >= 0) tok__push(out, id);
    }
}

/* Merge the byte-encoded word enc[0..n) and emit its tokens. */
static void bpe_word(const tok_vocab *v, const char *enc, size_t n, bpe_scratch *s,
                     tok__out *out) {
    if (v->ignore_merges) {
        int32_t id = tok__lookup(v, enc, n);
        if (id >= 0) {
            tok__push(out, id);
            return;
        }
    }
    int32_t ns = 0;
    for (size_t off = 0; off < n; ns++) {
        size_t cl = tok__utf8_len((unsigned char)enc[off]);
        if (cl > n - off) cl = n - off;
        s->sym[ns] = (tok__symbol){(uint32_t)off, (uint32_t)cl, ns - 1, off + cl < n ? ns + 1 : -1};
        off += cl;
    }
    size_t nh = 0;
    for (int32_t i = 1; i < ns; i++) bpe_try_pair(v, enc, s->sym, i - 1, i, s->heap, &nh);
    while (nh > 0) {
        tok__bigram b = tok__heap_pop(s->heap, &nh);
        tok__symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = b.left;
        bpe_try_pair(v, enc, s->sym, l->prev, b.left, s->heap, &nh);
        bpe_try_pair(v, enc, s->sym, b.left, l->next, s->heap, &nh);
    }
    for (int32_t i = ns > 0 ? 0 : -1; i >= 0; i = s->sym[i].next)
        bpe_emit(v, enc + s->sym[i].off, s->sym[i].n, out);
}

static size_t byte_encode(const char *in, size_t n, char *enc) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = tok__byte_to_cp((uint8_t)in[i]);
        if (cp < 0x80) {
            enc[w++] = (char)cp;
        } else {
            enc[w++] = (char)(0xC0 | (cp >> 6));
            enc[w++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return w;
}

int tok__bpe_encode(const tok_vocab *v, const char *text, size_t len, tok__out *out) {
    tok__pieces pieces = {0};
    int rc = tok__pretokenize(v, text, len, &pieces);
    size_t maxp = 0, start = 0;
    for (size_t i = 0; rc == 0 && i < pieces.n; start = pieces.ends[i++])
        if (pieces.ends[i] - start > maxp) maxp = pieces.ends[i] - start;
    bpe_scratch s = {0};
    if (rc == 0 && maxp > 0) {
        s.enc = tk_malloc(2 * maxp);
        s.sym = tk_calloc(maxp, sizeof *s.sym);
        s.heap = tk_calloc(maxp, 3 * sizeof *s.heap);
        if (!s.enc || !s.sym || !s.heap) rc = TOK_ERR_NOMEM;
    }
    start = 0;
    for (size_t i = 0; rc == 0 && i < pieces.n; start = pieces.ends[i++]) {
        size_t n = byte_encode(text + start, pieces.ends[i] - start, s.enc);
        bpe_word(v, s.enc, n, &s, out);
    }
    tk_free(s.enc);
    tk_free(s.sym);
    tk_free(s.heap);
    tok__pieces_free(&pieces);
    return rc;
}

size_t tok__bpe_decode(const char *text, size_t len, char *buf, size_t cap) {
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int n = tok__utf8_decode((const unsigned char *)text + i, len - i, &cp);
        int b = cp == 0xFFFFFFFFu ? -1 : tok__cp_to_byte(cp);
        if (b >= 0) {
            if (w < cap) buf[w] = (char)b;
            w++;
        } else { /* not a byte-level code point: keep the text as is */
            for (int k = 0; k < n; k++, w++)
                if (w < cap) buf[w] = text[i + k];
        }
        i += (size_t)n;
    }
    return w;
}
