/* Shared helpers for the unit tests (see testutil.h). */
#include "tests/unit/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/gguf.h"
#include "kernels/kern.h"

const char *tu_shared_path(const char *rel, char *buf, size_t cap) {
    const char *root = getenv("TOKD_SHARED");
    snprintf(buf, cap, "%s/%s", root && *root ? root : "../shared", rel);
    return buf;
}

const char *tu_default_model(void) {
    const char *p = getenv("TOKD_MODEL");
    struct stat st;
    if (!p || !*p || stat(p, &st) != 0) return NULL;
    return p;
}

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s) { return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static int add_matrix(gguf_writer *w, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1, float scale,
                      uint64_t *seed) {
    size_t rb = kern_row_bytes(type, ne0);
    uint8_t *data = malloc(rb * ne1);
    float *row = malloc(ne0 * sizeof(float));
    int rc = -1;
    if (!data || !row || rb == 0) goto out;
    for (uint64_t r = 0; r < ne1; r++) {
        for (uint64_t i = 0; i < ne0; i++) /* vectors are norm weights: around 1 */
            row[i] = rng_uniform(seed) * scale + (ne1 == 1 ? 1.0f : 0.0f);
        if (kern_quantize_row_ref(type, row, data + r * rb, ne0)) goto out;
    }
    uint64_t ne[2] = {ne0, ne1};
    rc = gguf_writer_add_tensor(w, name, type, ne1 == 1 ? 1 : 2, ne, data, rb * ne1);
out:
    free(data);
    free(row);
    return rc;
}

static int add_vocab(gguf_writer *w, uint32_t n_extra) {
    uint32_t n = 3 + 256 + n_extra;
    char **toks = calloc(n, sizeof(char *));
    float *scores = calloc(n, sizeof(float));
    int32_t *types = calloc(n, sizeof(int32_t));
    int rc = -1;
    if (!toks || !scores || !types) goto out;
    const char *ctl[3] = {"<unk>", "<s>", "</s>"};
    for (uint32_t i = 0; i < n; i++) {
        char buf[32];
        if (i < 3) snprintf(buf, sizeof buf, "%s", ctl[i]);
        else if (i < 259) snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
        else snprintf(buf, sizeof buf, "x%u", i);
        toks[i] = strdup(buf);
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
        scores[i] = i < 259 ? 0.0f : -(float)i;
    }
    rc = gguf_writer_add_str(w, "tokenizer.ggml.model", "llama") ||
         gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, n) ||
         gguf_writer_add_arr_f32(w, "tokenizer.ggml.scores", scores, n) ||
         gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", types, n) ||
         gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1) ||
         gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2) ||
         gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
out:
    for (uint32_t i = 0; toks && i < n; i++) free(toks[i]);
    free(toks);
    free(scores);
    free(types);
    return rc ? -1 : 0;
}

static int add_hparams(gguf_writer *w, const tu_tiny_spec *s) {
    char k[128];
    int rc = gguf_writer_add_str(w, "general.architecture", s->arch);
#define KV_U32(suffix, v) (snprintf(k, sizeof k, "%s." suffix, s->arch), gguf_writer_add_u32(w, k, (v)))
    rc = rc || KV_U32("embedding_length", s->n_embd) || KV_U32("block_count", s->n_layer) ||
         KV_U32("attention.head_count", s->n_head) || KV_U32("attention.head_count_kv", s->n_head_kv) ||
         KV_U32("feed_forward_length", s->n_ff) || KV_U32("context_length", 256) ||
         KV_U32("attention.key_length", s->head_dim) || KV_U32("attention.value_length", s->head_dim);
#undef KV_U32
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", s->arch);
    rc = rc || gguf_writer_add_f32(w, k, 1e-5f);
    snprintf(k, sizeof k, "%s.rope.freq_base", s->arch);
    rc = rc || gguf_writer_add_f32(w, k, 10000.0f);
    return rc ? -1 : 0;
}

static int add_layer(gguf_writer *w, const tu_tiny_spec *s, uint32_t il, uint64_t *seed) {
    uint64_t E = s->n_embd, Q = (uint64_t)s->n_head * s->head_dim, KV = (uint64_t)s->n_head_kv * s->head_dim;
    char n[96];
    int rc = 0;
#define T(suffix, type, a, b, scale) \
    (snprintf(n, sizeof n, "blk.%u." suffix, il), add_matrix(w, n, type, a, b, scale, seed))
    rc = rc || T("attn_norm.weight", KERN_TYPE_F32, E, 1, 0.2f) || T("ffn_norm.weight", KERN_TYPE_F32, E, 1, 0.2f);
    rc = rc || T("attn_q.weight", s->wtype, E, Q, 0.3f) || T("attn_k.weight", s->wtype, E, KV, 0.3f) ||
         T("attn_v.weight", s->wtype, E, KV, 0.3f) || T("attn_output.weight", s->wtype, Q, E, 0.3f) ||
         T("ffn_gate.weight", s->wtype, E, s->n_ff, 0.3f) || T("ffn_up.weight", s->wtype, E, s->n_ff, 0.3f) ||
         T("ffn_down.weight", s->wtype, s->n_ff, E, 0.3f);
    if (strcmp(s->arch, "qwen2") == 0)
        rc = rc || T("attn_q.bias", KERN_TYPE_F32, Q, 1, 0.5f) || T("attn_k.bias", KERN_TYPE_F32, KV, 1, 0.5f) ||
             T("attn_v.bias", KERN_TYPE_F32, KV, 1, 0.5f);
    if (strcmp(s->arch, "qwen3") == 0)
        rc = rc || T("attn_q_norm.weight", KERN_TYPE_F32, s->head_dim, 1, 1.0f) ||
             T("attn_k_norm.weight", KERN_TYPE_F32, s->head_dim, 1, 1.0f);
#undef T
    return rc ? -1 : 0;
}

int tu_write_tiny_model(const tu_tiny_spec *s, const char *path) {
    uint64_t seed = s->seed;
    uint64_t n_vocab = 259 + s->n_vocab_extra;
    gguf_writer *w = gguf_writer_new();
    if (!w) return -1;
    int rc = add_hparams(w, s) || add_vocab(w, s->n_vocab_extra) ||
             add_matrix(w, "token_embd.weight", s->wtype, s->n_embd, n_vocab, 1.0f, &seed) ||
             add_matrix(w, "output_norm.weight", KERN_TYPE_F32, s->n_embd, 1, 1.0f, &seed) ||
             (!s->tied && add_matrix(w, "output.weight", s->wtype, s->n_embd, n_vocab, 0.5f, &seed));
    for (uint32_t il = 0; !rc && il < s->n_layer; il++) rc = add_layer(w, s, il, &seed);
    char err[256] = "";
    if (!rc) rc = gguf_writer_write(w, path, err, sizeof err);
    if (rc) fprintf(stderr, "tu_write_tiny_model: failed %s\n", err);
    gguf_writer_destroy(w);
    return rc ? -1 : 0;
}

float tu_frand(void) {
    static uint64_t rs = 12345;
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}
