/* tok_spm: SentencePiece-style encoding ("llama" vocabs), as llama.cpp's llm_tokenizer_spm.
 *
 * The fragment's spaces become "▁" (U+2581), with one more in front when the caller asks for
 * the space prefix. The text is cut into UTF-8 characters (symbols); every adjacent pair whose
 * concatenation is a token is a candidate, and the candidate whose token has the highest score
 * (leftmost on ties) is merged first, after which its new neighbours become candidates. Each
 * final symbol is its token, or, when it is none (a character missing from the vocab), one
 * <0xNN> byte token per byte. llama.cpp's "resegment" step can only reach that byte fallback:
 * every merged symbol is a token by construction, so it needs no reverse-merge table here. */
#include <string.h>

#include "common/tk_mem.h"
#include "engine/tokenizer_internal.h"

static void spm_try_pair(const tok_vocab *v, const char *buf, const tok__symbol *sym, int32_t l,
                         int32_t r, tok__bigram *heap, size_t *nh) {
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].n + sym[r].n; /* r follows l in buf: the pair is contiguous */
    int32_t id = tok__lookup(v, buf + sym[l].off, size);
    if (id < 0) return;
    tok__bigram b = {-(double)v->score[id], l, r, size};
    tok__heap_push(heap, nh, b);
}

/* Escape spaces: ' ' -> "▁", optional leading "▁". Returns the new length. */
static size_t spm_escape(const char *text, size_t len, bool space_prefix, char *buf) {
    static const char sp[3] = {(char)0xE2, (char)0x96, (char)0x81};
    size_t w = 0;
    if (space_prefix) {
        memcpy(buf, sp, 3);
        w = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + w, sp, 3);
            w += 3;
        } else {
            buf[w++] = text[i];
        }
    }
    return w;
}

static void spm_merge(const tok_vocab *v, const char *buf, tok__symbol *sym, int32_t ns,
                      tok__bigram *heap) {
    size_t nh = 0;
    for (int32_t i = 1; i < ns; i++) spm_try_pair(v, buf, sym, i - 1, i, heap, &nh);
    while (nh > 0) {
        tok__bigram b = tok__heap_pop(heap, &nh);
        tok__symbol *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        spm_try_pair(v, buf, sym, l->prev, b.left, heap, &nh);
        spm_try_pair(v, buf, sym, b.left, l->next, heap, &nh);
    }
}

int tok__spm_encode(const tok_vocab *v, const char *text, size_t len, bool space_prefix,
                    tok__out *out) {
    size_t n_sp = 0;
    for (size_t i = 0; i < len; i++) n_sp += text[i] == ' ';
    size_t blen = len + 2 * n_sp + (space_prefix ? 3 : 0); /* ' ' -> 3 bytes */
    if (blen == 0) return 0;
    char *buf = tk_malloc(blen);
    tok__symbol *sym = tk_calloc(blen, sizeof *sym);
    tok__bigram *heap = tk_calloc(blen, 3 * sizeof *heap);
    if (!buf || !sym || !heap) {
        tk_free(buf);
        tk_free(sym);
        tk_free(heap);
        return TOK_ERR_NOMEM;
    }
    blen = spm_escape(text, len, space_prefix, buf);
    int32_t ns = 0;
    for (size_t off = 0; off < blen; ns++) {
        size_t cl = tok__utf8_len((unsigned char)buf[off]);
        if (cl > blen - off) cl = blen - off;
        sym[ns] = (tok__symbol){(uint32_t)off, (uint32_t)cl, ns - 1, off + cl < blen ? ns + 1 : -1};
        off += cl;
    }
    spm_merge(v, buf, sym, ns, heap);
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int32_t id = tok__lookup(v, buf + sym[i].off, sym[i].n);
        if (id >= 0) {
            tok__push(out, id);
            continue;
        }
        for (uint32_t k = 0; k < sym[i].n; k++) { /* byte fallback */
            int32_t bid = v->byte_tok[(unsigned char)buf[sym[i].off + k]];
            if (bid >= 0) tok__push(out, bid);
        }
    }
    tk_free(buf);
    tk_free(sym);
    tk_free(heap);
    return 0;
}
