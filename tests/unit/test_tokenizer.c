/* Unit tests for engine/tokenizer (Check suite "tokenizer").
 *
 * Reference data: llama.cpp's test vectors in $TOKD_SHARED/testdata/tokenizer (llama-spm,
 * gpt-2, starcoder vocabs); tests/data/tokenizer/smollm2_cases.txt (ids from llama.cpp for
 * SmolLM2's tokenizer, $TOKD_MODEL, made by gen_smollm2.py) and pretok_cases.txt (pre-tokenizer
 * splits from Python's `regex`, made by gen_pretok.py). Both .txt files come from the strings in
 * tricky_strings.py. Tiny hand-made vocabs (via the GGUF writer) cover bad metadata.
 * Run from the repository root. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/tk_time.h"
#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"

#define DATA_DIR "tests/data/tokenizer"

/* ---- helpers ---- */

static const char *shared_dir(void) {
    const char *s = getenv("TOKD_SHARED");
    return s && *s ? s : "../shared";
}

static const char *model_path(void) {
    const char *s = getenv("TOKD_MODEL");
    return s && *s ? s : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

/* Load a vocab and close the file at once: the vocab must not depend on the map. */
static tok_vocab *load_vocab(const char *path) {
    gguf_file *f = NULL;
    char err[512] = "";
    int rc = gguf_open(path, &f, err, sizeof err);
    ck_assert_msg(rc == 0, "gguf_open %s: %s", path, err);
    tok_vocab *v = NULL;
    rc = tok_vocab_load(f, &v, err, sizeof err);
    gguf_close(f);
    ck_assert_msg(rc == 0, "tok_vocab_load %s: %s", path, err);
    return v;
}

static tok_vocab *load_shared(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/testdata/tokenizer/%s", shared_dir(), name);
    return load_vocab(path);
}

/* The SmolLM2 model, or NULL (test skipped, said loudly) when it is not there. */
static tok_vocab *load_smollm2(void) {
    if (access(model_path(), R_OK) != 0) {
        fprintf(stderr, "SKIP: %s not found (set TOKD_MODEL or run make model)\n", model_path());
        return NULL;
    }
    return load_vocab(model_path());
}

static int encode(const tok_vocab *v, const char *s, size_t len, bool add_special, bool parse_special,
                  int32_t **ids, size_t *n) {
    size_t cap = len + 8;
    *ids = malloc(cap * sizeof **ids);
    int rc = tok_encode(v, s, len, add_special, parse_special, *ids, cap, n);
    if (rc == TOK_ERR_NOSPACE) {
        *ids = realloc(*ids, *n * sizeof **ids);
        cap = *n;
        rc = tok_encode(v, s, len, add_special, parse_special, *ids, cap, n);
    }
    return rc;
}

static char *decode(const tok_vocab *v, const int32_t *ids, size_t n, bool render, size_t *len) {
    int need = tok_decode(v, ids, n, render, NULL, 0);
    ck_assert_int_ge(need, 0);
    char *buf = malloc((size_t)need + 1);
    ck_assert_int_eq(tok_decode(v, ids, n, render, buf, (size_t)need), need);
    buf[need] = '\0';
    *len = (size_t)need;
    return buf;
}

/* Decode hex ("=" is empty) into a malloc'd buffer. */
static char *unhex(const char *h, size_t *len) {
    size_t n = strcmp(h, "=") == 0 ? 0 : strlen(h) / 2;
    char *out = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned b;
        ck_assert(sscanf(h + 2 * i, "%2x", &b) == 1);
        out[i] = (char)b;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

static bool ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* The tricky strings (the "case" lines of pretok_cases.txt), NULL-terminated, with lengths. */
static char **tricky_strings(size_t **lens, size_t *count) {
    char *all = read_file(DATA_DIR "/pretok_cases.txt", NULL);
    size_t n = 0, cap = 64;
    char **out = malloc(cap * sizeof *out);
    *lens = malloc(cap * sizeof **lens);
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "case ", 5) != 0) continue;
        ck_assert(n + 1 < cap);
        out[n] = unhex(line + 5, &(*lens)[n]);
        n++;
    }
    out[n] = NULL;
    free(all);
    *count = n;
    return out;
}

static void free_strings(char **s, size_t *lens) {
    for (size_t i = 0; s[i]; i++) free(s[i]);
    free(s);
    free(lens);
}

/* ---- 1. llama.cpp's vectors ---- */

static int parse_ids(char *line, int32_t *ids, size_t cap) {
    size_t n = 0;
    for (char *t = strtok(line, " \t\r"); t; t = strtok(NULL, " \t\r")) {
        ck_assert(n < cap);
        ids[n++] = (int32_t)strtol(t, NULL, 10);
    }
    return (int)n;
}

static void run_vectors(const char *vocab_name) {
    char path[1024];
    tok_vocab *v = load_shared(vocab_name);
    snprintf(path, sizeof path, "%s/testdata/tokenizer/%s.inp", shared_dir(), vocab_name);
    char *inp = read_file(path, NULL);
    snprintf(path, sizeof path, "%s/testdata/tokenizer/%s.out", shared_dir(), vocab_name);
    char *outf = read_file(path, NULL);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *p = inp, *lp = outf, *hit;
    int n_case = 0, n_fail = 0;
    while ((hit = strstr(p, sep)) != NULL) {
        size_t len = (size_t)(hit - p);
        char *nl = strchr(lp, '\n');
        ck_assert_msg(nl != NULL, "%s: fewer .out lines than cases", vocab_name);
        *nl = '\0';
        int32_t want[512], *got;
        int nw = parse_ids(lp, want, 512);
        size_t ng;
        ck_assert_int_eq(encode(v, p, len, false, false, &got, &ng), 0);
        if (!ids_equal(got, ng, want, (size_t)nw)) {
            n_fail++;
            fprintf(stderr, "%s case %d: '%.*s'\n", vocab_name, n_case, (int)len, p);
            print_ids("want", want, (size_t)nw);
            print_ids("got ", got, ng);
        }
        free(got);
        n_case++;
        p = hit + sizeof sep - 1;
        lp = nl + 1;
    }
    fprintf(stderr, "%s: %d cases, %d failed\n", vocab_name, n_case, n_fail);
    ck_assert_int_eq(n_case, 46);
    ck_assert_int_eq(n_fail, 0);
    free(inp);
    free(outf);
    tok_vocab_destroy(v);
}

START_TEST(test_vectors_llama_spm) { run_vectors("ggml-vocab-llama-spm.gguf"); }
END_TEST
START_TEST(test_vectors_gpt2) { run_vectors("ggml-vocab-gpt-2.gguf"); }
END_TEST
START_TEST(test_vectors_starcoder) { run_vectors("ggml-vocab-starcoder.gguf"); }
END_TEST

/* ---- 2. SmolLM2 against llama.cpp ---- */

START_TEST(test_smollm2_cases) {
    tok_vocab *v = load_smollm2();
    if (!v) return;
    char *all = read_file(DATA_DIR "/smollm2_cases.txt", NULL);
    int n_case = 0, n_fail = 0;
    char *save = NULL;
    for (char *line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "enc ", 4) != 0) continue;
        int special = line[4] - '0';
        char *hex = line + 6, *sp = strchr(hex, ' ');
        ck_assert(sp != NULL);
        *sp = '\0';
        size_t len, ng;
        char *text = unhex(hex, &len);
        int32_t want[1024], *got;
        int nw = parse_ids(sp + 1, want, 1024);
        ck_assert_int_eq(nw - 1, want[0]); /* the count, then the ids */
        ck_assert_int_eq(encode(v, text, len, false, special, &got, &ng), 0);
        if (!ids_equal(got, ng, want + 1, (size_t)want[0])) {
            n_fail++;
            fprintf(stderr, "smollm2 special=%d: '%s'\n", special, text);
            print_ids("want", want + 1, (size_t)want[0]);
            print_ids("got ", got, ng);
        }
        free(got);
        free(text);
        n_case++;
    }
    fprintf(stderr, "smollm2: %d cases, %d failed\n", n_case, n_fail);
    ck_assert_int_ge(n_case, 80);
    ck_assert_int_eq(n_fail, 0);
    free(all);
    tok_vocab_destroy(v);
}
END_TEST

/* ---- 3. pre-tokenizer splits against Python's regex ---- */

static int check_split(const char *text, size_t len, char *rec) {
    char *save = NULL, *name = strtok_r(rec, " ", &save);
    int want_n = atoi(strtok_r(NULL, " ", &save));
    tok__pre *pre = NULL;
    bool known = false;
    char err[160];
    ck_assert_int_eq(tok__pre_new(name, strlen(name), &pre, &known, err, sizeof err), 0);
    ck_assert(known);
    tok__pieces pc = {0};
    ck_assert_int_eq(tok__pre_split(pre, text, len, &pc), 0);
    int bad = (size_t)want_n != pc.n;
    size_t start = 0;
    for (size_t i = 0; !bad && i < pc.n; start = pc.ends[i++]) {
        size_t wl;
        char *want = unhex(strtok_r(NULL, " ", &save), &wl);
        bad = wl != pc.ends[i] - start || memcmp(want, text + start, wl) != 0;
        free(want);
    }
    if (bad) {
        fprintf(stderr, "pre %s: '%.*s': want %d pieces, got %zu:", name, (int)len, text, want_n, pc.n);
        for (size_t i = 0, s = 0; i < pc.n; s = pc.ends[i++])
            fprintf(stderr, " [%.*s]", (int)(pc.ends[i] - s), text + s);
        fprintf(stderr, "\n");
    }
    tok__pieces_free(&pc);
    tok__pre_destroy(pre);
    return bad;
}

START_TEST(test_pretok_cases) {
    char *all = read_file(DATA_DIR "/pretok_cases.txt", NULL);
    char *text = NULL, *save = NULL;
    size_t len = 0;
    int n_check = 0, n_fail = 0;
    for (char *line = strtok_r(all, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "case ", 5) == 0) {
            free(text);
            text = unhex(line + 5, &len);
        } else if (strncmp(line, "pre ", 4) == 0) {
            ck_assert(text != NULL);
            n_fail += check_split(text, len, line + 4);
            n_check++;
        }
    }
    fprintf(stderr, "pretok: %d splits, %d failed\n", n_check, n_fail);
    ck_assert_int_ge(n_check, 4 * 40);
    ck_assert_int_eq(n_fail, 0);
    free(text);
    free(all);
}
END_TEST

/* ---- 4. round trips and incremental detokenization ---- */

/* Whether s[0..n) is complete, valid UTF-8. */
static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tok__utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (cp == 0xFFFFFFFFu) return false;
        i += (size_t)k;
    }
    return true;
}

/* Feed ids one by one: every chunk must be valid UTF-8 and the whole must equal want. */
static void check_detok(const tok_vocab *v, const int32_t *ids, size_t n, const char *want,
                        size_t want_len) {
    char *acc = malloc(want_len + 64), chunk[512];
    size_t w = 0;
    tok_detok d;
    tok_detok_init(&d);
    for (size_t i = 0; i < n; i++) {
        int r = tok_detok_push(v, &d, ids[i], chunk, sizeof chunk);
        ck_assert_int_ge(r, 0);
        ck_assert_msg(valid_utf8(chunk, (size_t)r), "detok emitted broken UTF-8 at token %zu", i);
        ck_assert(w + (size_t)r <= want_len + 64);
        memcpy(acc + w, chunk, (size_t)r);
        w += (size_t)r;
    }
    ck_assert_int_eq(tok_detok_flush(&d, chunk, sizeof chunk), 0);
    ck_assert_msg(w == want_len && memcmp(acc, want, w) == 0, "detok: '%.*s' != '%.*s'", (int)w,
                  acc, (int)want_len, want);
    free(acc);
}

/* decode(encode(s)) == prefix + s, and the incremental detokenizer agrees. */
static void roundtrip(const tok_vocab *v, const char *s, size_t len, const char *prefix,
                      bool special) {
    int32_t *ids;
    size_t n, dl, pl = strlen(prefix);
    ck_assert_int_eq(encode(v, s, len, false, special, &ids, &n), 0);
    char *dec = decode(v, ids, n, special, &dl);
    char *want = malloc(len + pl + 1);
    memcpy(want, prefix, pl);
    memcpy(want + pl, s, len);
    ck_assert_msg(dl == len + pl && memcmp(dec, want, dl) == 0, "round trip: '%s' -> '%s'", want, dec);
    if (!special) check_detok(v, ids, n, want, len + pl);
    free(want);
    free(dec);
    free(ids);
}

static void roundtrip_all(const tok_vocab *v, bool spm, bool special) {
    size_t *lens, count;
    char **s = tricky_strings(&lens, &count);
    for (size_t i = 0; i < count; i++)
        roundtrip(v, s[i], lens[i], spm && lens[i] ? " " : "", special);
    free_strings(s, lens);
}

START_TEST(test_roundtrip) {
    static const char *const names[] = {"ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf",
                                        "ggml-vocab-llama-spm.gguf"};
    for (int k = 0; k < 3; k++) {
        tok_vocab *v = load_shared(names[k]);
        roundtrip_all(v, k == 2, false);
        /* Invalid UTF-8 survives byte for byte (byte-level BPE and SPM byte fallback). Only
         * gpt-2 has tokens for bytes that never occur in UTF-8 (0xF5-0xFF); an SPM lead byte
         * swallows the next bytes whatever they are (as in llama.cpp), so none precede a space. */
        static const char bad[] = "ok\x80\xbf mid\xe6\x97x end\xc3";
        static const char bad_gpt2[] = "ok\xff\xfe mid\xe6\x97 end\xc3";
        roundtrip(v, bad, sizeof bad - 1, k == 2 ? " " : "", true);
        if (k == 0) roundtrip(v, bad_gpt2, sizeof bad_gpt2 - 1, "", true);
        tok_vocab_destroy(v);
    }
    tok_vocab *v = load_smollm2();
    if (v) {
        roundtrip_all(v, false, false);
        roundtrip_all(v, false, true); /* control tokens rendered back as their text */
        tok_vocab_destroy(v);
    }
}
END_TEST

static void push_expect(const tok_vocab *v, tok_detok *d, int32_t id, const char *want) {
    char out[64];
    ck_assert_int_ge(id, 0);
    int r = tok_detok_push(v, d, id, out, sizeof out);
    ck_assert_int_eq(r, (int)strlen(want));
    ck_assert(memcmp(out, want, (size_t)r) == 0);
}

START_TEST(test_detok_partial) {
    tok_vocab *spm = load_shared("ggml-vocab-llama-spm.gguf");
    tok_detok d;
    tok_detok_init(&d);
    int32_t e6 = tok_find(spm, "<0xE6>", 6), x97 = tok_find(spm, "<0x97>", 6);
    int32_t xa5 = tok_find(spm, "<0xA5>", 6), xff = tok_find(spm, "<0xFF>", 6);
    push_expect(spm, &d, e6, ""); /* "日" = E6 97 A5, held back until complete */
    push_expect(spm, &d, x97, "");
    push_expect(spm, &d, xa5, "\xe6\x97\xa5");
    push_expect(spm, &d, xff, "\xef\xbf\xbd"); /* can never start a sequence */
    push_expect(spm, &d, e6, "");
    push_expect(spm, &d, tok_find(spm, "a", 1), "\xef\xbf\xbd" "a"); /* broken by 'a' */
    push_expect(spm, &d, e6, "");
    char out[8];
    ck_assert_int_eq(tok_detok_push(spm, &d, x97, out, 0), 0); /* still held: fits in 0 */
    ck_assert_int_eq(tok_detok_push(spm, &d, xa5, out, 2), TOK_ERR_NOSPACE); /* state kept */
    push_expect(spm, &d, xa5, "\xe6\x97\xa5");
    push_expect(spm, &d, e6, "");
    ck_assert_int_eq(tok_detok_flush(&d, out, sizeof out), 3);
    ck_assert(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    tok_vocab_destroy(spm);

    /* gpt2: "æ" (U+00E6) is the byte-level symbol of byte 0xE6. */
    tok_vocab *bpe = load_shared("ggml-vocab-gpt-2.gguf");
    tok_detok_init(&d);
    push_expect(bpe, &d, tok_find(bpe, "\xc3\xa6", 2), "");
    int32_t ids[8];
    size_t n;
    ck_assert_int_eq(tok_encode(bpe, "\xe6\x97\xa5", 3, false, false, ids, 8, &n), 0);
    ck_assert_int_ge((int)n, 1);
    tok_vocab_destroy(bpe);
}
END_TEST

/* ---- specials, flags, NOSPACE, decoding, speed ---- */

START_TEST(test_specials_spm) {
    tok_vocab *v = load_shared("ggml-vocab-llama-spm.gguf");
    ck_assert_int_eq(tok_n_vocab(v), 32000);
    ck_assert_int_eq(tok_bos(v), 1);
    ck_assert_int_eq(tok_eos(v), 2);
    ck_assert(tok_add_bos(v) && !tok_add_eos(v));
    ck_assert(tok_is_eog(v, 2) && !tok_is_eog(v, 1));
    int32_t ids[16];
    size_t n;
    ck_assert_int_eq(tok_encode(v, "", 0, true, false, ids, 16, &n), 0);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(ids[0], 1);
    /* parse_special: "<s>" is the control token and the text after it gets "▁" again. */
    ck_assert_int_eq(tok_encode(v, "<s>hi", 5, false, true, ids, 16, &n), 0);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], tok_find(v, "\xe2\x96\x81hi", 5));
    ck_assert_int_eq(n, 2);
    char buf[16];
    ck_assert_int_eq(tok_token_to_bytes(v, 1, false, buf, sizeof buf), 0);
    ck_assert_int_eq(tok_token_to_bytes(v, 1, true, buf, sizeof buf), 3);
    ck_assert_int_eq(tok_token_to_bytes(v, 13, false, buf, sizeof buf), 1); /* <0x0A> */
    ck_assert_int_eq(buf[0], '\n');
    ck_assert_int_eq(tok_token_to_bytes(v, 32000, false, buf, sizeof buf), TOK_ERR_INVALID);
    ck_assert_int_eq(tok_token_to_bytes(v, -1, false, buf, sizeof buf), TOK_ERR_INVALID);
    ck_assert_ptr_null(tok_token_text(v, 32000, NULL));
    /* NOSPACE reports the size needed. */
    ck_assert_int_eq(tok_encode(v, "hello world again", 17, true, false, ids, 2, &n), TOK_ERR_NOSPACE);
    ck_assert_int_gt(n, 2);
    size_t need = n;
    ck_assert_int_eq(tok_encode(v, "hello world again", 17, true, false, ids, need, &n), 0);
    ck_assert_int_eq(n, need);
    tok_vocab_destroy(v);
}
END_TEST

START_TEST(test_specials_smollm2) {
    tok_vocab *v = load_smollm2();
    if (!v) return;
    ck_assert_int_eq(tok_bos(v), 1);
    ck_assert_int_eq(tok_eos(v), 2);
    ck_assert_int_eq(tok_eot(v), 2);
    ck_assert(!tok_add_bos(v) && !tok_add_eos(v));
    ck_assert(tok_is_eog(v, 2) && tok_is_eog(v, 0) && !tok_is_eog(v, 1));
    int32_t ids[64];
    size_t n;
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    ck_assert_int_eq(tok_encode(v, s, strlen(s), true, true, ids, 64, &n), 0);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[n - 1], 2);
    ck_assert_int_eq(tok_encode(v, s, strlen(s), true, false, ids, 64, &n), 0);
    for (size_t i = 0; i < n; i++) ck_assert_int_gt(ids[i], 16); /* no control token */
    tok_vocab_destroy(v);
}
END_TEST

/* Not a benchmark: a loose bound that catches quadratic behaviour on a 10 KB text. */
START_TEST(test_encode_10kb_fast) {
    static const char *const names[] = {"ggml-vocab-llama-spm.gguf", "ggml-vocab-starcoder.gguf"};
    size_t *lens, count, len = 0;
    char **s = tricky_strings(&lens, &count), *text = malloc(12 << 10);
    for (size_t i = 0; len < 10 << 10; i = (i + 1) % count) {
        memcpy(text + len, s[i], lens[i]);
        len += lens[i];
    }
    for (int k = 0; k < 2; k++) {
        tok_vocab *v = load_shared(names[k]);
        int32_t *ids;
        size_t n;
        double t0 = tk_now_s();
        ck_assert_int_eq(encode(v, text, len, true, true, &ids, &n), 0);
        double dt = tk_now_s() - t0;
        fprintf(stderr, "%s: %zu bytes -> %zu tokens in %.2f ms\n", names[k], len, n, dt * 1e3);
        ck_assert_msg(dt < 2.0, "encoding 10 KB took %.3f s", dt);
        free(ids);
        tok_vocab_destroy(v);
    }
    free(text);
    free_strings(s, lens);
}
END_TEST

/* ---- 5. bad metadata (tiny vocabs written with the GGUF writer) ---- */

typedef enum { MK_OK, MK_NO_TOKENS, MK_MERGE_NO_SPACE, MK_BAD_MODEL, MK_TYPE_COUNT, MK_PRE } mk_kind;

static void make_vocab(const char *path, mk_kind kind, const char *pre) {
    static const char *const toks[] = {"<|endoftext|>", "a", "b", "ab", "\xc4\xa0", ("\xc4\xa0" "ab")};
    static const char *const merges[] = {"a b", "\xc4\xa0 ab", "bad"};
    int32_t types[] = {3, 1, 1, 1, 1, 1};
    gguf_writer *w = gguf_writer_new();
    ck_assert_ptr_nonnull(w);
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "tokenizer.ggml.model", kind == MK_BAD_MODEL ? "bert" : "gpt2");
    gguf_writer_add_str(w, "tokenizer.ggml.pre", pre ? pre : "gpt-2");
    if (kind != MK_NO_TOKENS) gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 6);
    gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", types, kind == MK_TYPE_COUNT ? 5 : 6);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, kind == MK_MERGE_NO_SPACE ? 3 : 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 0);
    char err[256] = "";
    ck_assert_msg(gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    gguf_writer_destroy(w);
}

static int try_load(mk_kind kind, const char *pre, char *err, size_t errlen, tok_vocab **out) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/tokd_tok_test_%d.gguf", (int)getpid());
    make_vocab(path, kind, pre);
    gguf_file *f = NULL;
    ck_assert_msg(gguf_open(path, &f, err, errlen) == 0, "%s", err);
    err[0] = '\0';
    int rc = tok_vocab_load(f, out, err, errlen);
    gguf_close(f);
    unlink(path);
    return rc;
}

static void expect_error(mk_kind kind, const char *needle) {
    char err[256];
    tok_vocab *v = NULL;
    ck_assert_int_eq(try_load(kind, NULL, err, sizeof err, &v), TOK_ERR_FORMAT);
    ck_assert_ptr_null(v);
    ck_assert_msg(strstr(err, needle) && strstr(err, ".gguf: "), "error '%s' lacks '%s'", err, needle);
}

START_TEST(test_bad_metadata) {
    expect_error(MK_NO_TOKENS, "tokenizer.ggml.tokens: missing");
    expect_error(MK_MERGE_NO_SPACE, "tokenizer.ggml.merges: entry 2 has no space");
    expect_error(MK_BAD_MODEL, "tokenizer.ggml.model: unsupported model 'bert'");
    expect_error(MK_TYPE_COUNT, "tokenizer.ggml.token_type");
}
END_TEST

START_TEST(test_tiny_vocab) {
    char err[256];
    tok_vocab *v = NULL;
    ck_assert_int_eq(try_load(MK_OK, NULL, err, sizeof err, &v), 0);
    int32_t ids[8];
    size_t n;
    ck_assert_int_eq(tok_encode(v, "ab ab", 5, false, false, ids, 8, &n), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], 3);
    ck_assert_int_eq(ids[1], 5);
    ck_assert_int_eq(tok_eos(v), 0);
    ck_assert_int_eq(tok_bos(v), -1); /* no key, no known text */
    tok_vocab_destroy(v);
    /* Unknown pre-tokenizer: a warning, then the gpt-2 regex. */
    tk_log_set_level(TK_LOG_ERROR);
    ck_assert_int_eq(try_load(MK_OK, "no-such-pre", err, sizeof err, &v), 0);
    tk_log_set_level(TK_LOG_INFO);
    ck_assert_int_eq(tok_encode(v, "ab ab", 5, false, false, ids, 8, &n), 0);
    ck_assert_int_eq(n, 2);
    tok_vocab_destroy(v);
    /* llama3 pre: whole-token pieces skip the merges, same ids here. */
    ck_assert_int_eq(try_load(MK_OK, "llama-bpe", err, sizeof err, &v), 0);
    ck_assert(tok_add_bos(v) == false); /* add_bos defaults true but there is no BOS token */
    ck_assert_int_eq(tok_encode(v, "ab ab", 5, false, false, ids, 8, &n), 0);
    ck_assert_int_eq(n, 2);
    tok_vocab_destroy(v);
}
END_TEST

/* Every allocation failure during load and encode is an error, never a crash or a leak. */
START_TEST(test_alloc_failures) {
    char err[256];
    int ok_at = -1;
    for (long k = 0; k < 400 && ok_at < 0; k++) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/tokd_tok_fail_%d.gguf", (int)getpid());
        make_vocab(path, MK_OK, NULL);
        gguf_file *f = NULL;
        ck_assert_int_eq(gguf_open(path, &f, err, sizeof err), 0);
        unlink(path);
        tok_vocab *v = NULL;
        tk_mem_fail_after(k);
        int rc = tok_vocab_load(f, &v, err, sizeof err);
        int32_t ids[8];
        size_t n;
        int rc2 = rc == 0 ? tok_encode(v, "ab ab<|endoftext|>", 18, true, true, ids, 8, &n) : -1;
        tk_mem_fail_after(-1);
        if (rc == 0 && rc2 == 0) ok_at = (int)k;
        ck_assert_msg(rc == 0 || rc == TOK_ERR_NOMEM, "k=%ld rc=%d %s", k, rc, err);
        ck_assert(rc2 == 0 || rc2 == TOK_ERR_NOMEM || rc2 == -1);
        ck_assert(rc == 0 || v == NULL);
        tok_vocab_destroy(v);
        gguf_close(f);
    }
    ck_assert_int_gt(ok_at, 0);
}
END_TEST

static Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_vectors_llama_spm);
    tcase_add_test(tc, test_vectors_gpt2);
    tcase_add_test(tc, test_vectors_starcoder);
    tcase_add_test(tc, test_smollm2_cases);
    tcase_add_test(tc, test_pretok_cases);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_detok_partial);
    tcase_add_test(tc, test_specials_spm);
    tcase_add_test(tc, test_specials_smollm2);
    tcase_add_test(tc, test_encode_10kb_fast);
    tcase_add_test(tc, test_bad_metadata);
    tcase_add_test(tc, test_tiny_vocab);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(tokenizer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
