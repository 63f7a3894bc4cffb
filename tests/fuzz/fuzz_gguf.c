/* libFuzzer target for the GGUF reader: parses the input with gguf__open_mem (the same
 * parser gguf_open runs on the mapped file) and, when it opens, reads back every key through
 * every getter and touches the first and last byte of every tensor, so that any value the
 * parser accepted but did not bound correctly shows up as an ASan report.
 *
 * Build: clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_gguf.c engine/gguf.c \
 *        kernels/cpu/types.c common/tk_mem.c common/tk_log.c -lm
 * Seeds: any .gguf files (tests write small ones; ../shared/testdata has real ones). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/gguf_internal.h"

static volatile uint64_t sink; /* keeps the reads from being optimised away */

static void read_kv(const gguf_file *f, int64_t i) {
    const char *key = gguf_kv_key(f, i), *s;
    size_t len;
    uint32_t u;
    int64_t v;
    float x;
    bool b;
    if (gguf_find_key(f, key) != i) abort(); /* keys are unique after open */
    if (gguf_get_u32(f, key, &u) == 0) sink += u;
    if (gguf_get_i64(f, key, &v) == 0) sink += (uint64_t)v;
    if (gguf_get_f32(f, key, &x) == 0) sink += (uint64_t)(x == x);
    if (gguf_get_bool(f, key, &b) == 0) sink += b;
    if (gguf_get_str(f, key, &s, &len) == 0 && len) sink += (uint8_t)s[0] + (uint8_t)s[len - 1];
    uint64_t n = gguf_kv_arr_n(f, i);
    if (gguf_get_arr_str(f, key, &n) == 0) {
        for (uint64_t j = 0; j < n; j++)
            if (gguf_arr_str_at(f, key, j, &s, &len) == 0 && len) sink += (uint8_t)s[len - 1];
        return;
    }
    if (n > 0 && n <= 4096) {
        int32_t ai[4096];
        float af[4096];
        if (gguf_get_arr_i32(f, key, ai, n) == 0) sink += (uint32_t)ai[n - 1];
        if (gguf_get_arr_f32(f, key, af, n) == 0) sink += (uint64_t)(af[n - 1] == af[n - 1]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f = NULL;
    char err[256];
    /* An exact-size copy: libFuzzer's buffer is exact too, but be explicit about it. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    if (gguf__open_mem(copy, size, "fuzz.gguf", &f, err, sizeof err) == 0) {
        for (int64_t i = 0; i < gguf_n_kv(f); i++) read_kv(f, i);
        for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
            const gguf_tensor *t = gguf_tensor_at(f, i);
            if (gguf_find_tensor(f, t->name) != t) abort();
            if (t->nbytes) {
                const uint8_t *p = t->data;
                sink += p[0] + p[t->nbytes - 1];
            }
        }
        gguf_close(f);
    } else if (err[0] == '\0') {
        abort(); /* every error must come with a message */
    }
    free(copy);
    return 0;
}
