/* libFuzzer target for the tokenizers: the input is arbitrary bytes (invalid UTF-8, stray
 * special-token text, long runs). The first byte picks the vocab (gpt-2 byte-level BPE,
 * starcoder BPE with the \p{N} pre-tokenizer, llama SPM) and parse_special; the rest is the text.
 * Checked: encode never fails but for NOSPACE, the NOSPACE size is the real size, every id is in
 * range, the pre-tokenizer's pieces tile the text, the incremental detokenizer only ever emits
 * valid UTF-8, and for gpt-2 without parse_special decode(encode(text)) == text byte for byte.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. tests/fuzz/fuzz_tokenizer.c \
 *          engine/tokenizer.c engine/tok_spm.c engine/tok_bpe.c engine/gguf.c kernels/cpu/types.c \
 *          common/tk_mem.c common/tk_log.c -lpcre2-8 -lm -o /tmp/fuzz_tokenizer
 * Run from the repository root (vocabs from $TOKD_SHARED, default ../shared):
 *        /tmp/fuzz_tokenizer -max_len=4096 tests/data/tokenizer */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_log.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"

static const char *const vocab_names[] = {"ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf",
                                          "ggml-vocab-llama-spm.gguf"};
#define N_VOCABS 3
static tok_vocab *vocabs[N_VOCABS];

static tok_vocab *load(const char *name) {
    const char *dir = getenv("TOKD_SHARED");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/testdata/tokenizer/%s", dir && *dir ? dir : "../shared", name);
    gguf_file *f = NULL;
    tok_vocab *v = NULL;
    if (gguf_open(path, &f, err, sizeof err) != 0 || tok_vocab_load(f, &v, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort();
    }
    gguf_close(f);
    return v;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tk_log_set_level(TK_LOG_ERROR);
    for (int i = 0; i < N_VOCABS; i++) vocabs[i] = load(vocab_names[i]);
    return 0;
}

static void check_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tok__utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (cp == 0xFFFFFFFFu) abort();
    }
}

static void check_pieces(const tok_vocab *v, const char *text, size_t len) {
    tok__pieces pc = {0};
    if (tok__pretokenize(v, text, len, &pc) != 0) abort();
    size_t prev = 0;
    for (size_t i = 0; i < pc.n; prev = pc.ends[i++])
        if (pc.ends[i] <= prev) abort();
    if (prev != len) abort();
    tok__pieces_free(&pc);
}

static void check_detok(const tok_vocab *v, const int32_t *ids, size_t n) {
    tok_detok d;
    char chunk[1024];
    tok_detok_init(&d);
    for (size_t i = 0; i < n; i++) {
        int r = tok_detok_push(v, &d, ids[i], chunk, sizeof chunk);
        if (r < 0) abort();
        check_utf8(chunk, (size_t)r);
    }
    int r = tok_detok_flush(&d, chunk, sizeof chunk);
    if (r < 0) abort();
    check_utf8(chunk, (size_t)r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const tok_vocab *v = vocabs[data[0] % N_VOCABS];
    bool special = (data[0] >> 2) & 1, bpe = data[0] % N_VOCABS != 2;
    const char *text = (const char *)data + 1;
    size_t len = size - 1, n = 0, n2 = 0;
    int32_t small[4];
    int rc = tok_encode(v, text, len, true, special, small, 4, &n);
    if (rc != 0 && rc != TOK_ERR_NOSPACE) abort();
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids || tok_encode(v, text, len, true, special, ids, n, &n2) != 0 || n2 != n) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok_n_vocab(v)) abort();
    if (bpe) check_pieces(v, text, len);
    check_detok(v, ids, n);
    if (data[0] % N_VOCABS == 0 && !special) { /* gpt-2 has a token for every byte */
        char *dec = malloc(len + 1);
        if (!dec || tok_decode(v, ids, n, false, dec, len) != (int)len || memcmp(dec, text, len))
            abort();
        free(dec);
    }
    free(ids);
    return 0;
}
