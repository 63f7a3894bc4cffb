/* Shared helpers for the unit tests: paths to test data, random tiny models written with the
 * project's GGUF writer. */
#ifndef TESTS_UNIT_TESTUTIL_H
#define TESTS_UNIT_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Uniform pseudo-random float in [-1, 1): a fixed-seed LCG, the same sequence every run. */
float tu_frand(void);

/* $TOKD_SHARED/<rel> (default ../shared/<rel>) into buf. */
const char *tu_shared_path(const char *rel, char *buf, size_t cap);
/* $TOKD_MODEL, or NULL when unset or missing. */
const char *tu_default_model(void);
/* Reads a whole file (NUL-terminated); NULL on error. Caller frees with free(). */
char *tu_read_file(const char *path, size_t *len);

typedef struct {
    const char *arch;    /* "llama", "qwen2", "qwen3" */
    uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab_extra;
    uint32_t wtype;      /* KERN_TYPE_* of the matrices */
    bool tied;           /* omit output.weight */
    uint64_t seed;
} tu_tiny_spec;

/* Writes a random-weight model of spec's shape with a byte-level SPM vocab (3 controls + 256
 * byte tokens + n_vocab_extra filler tokens) to path. Returns 0 or a negative error. */
int tu_write_tiny_model(const tu_tiny_spec *spec, const char *path);

#endif
