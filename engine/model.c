/* Model loading: reads a GGUF file's hyper-parameters and architecture, checks that every
 * tensor the architecture needs is present with the right shape and a supported type, and
 * builds weight views into the memory map. Errors name the file and the key or tensor. */
#include "engine/model_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"

typedef struct {
    const char *name;
    eng_arch arch;
    eng_traits traits;
} arch_desc;

static const arch_desc archs[] = {
    {"llama", ENG_ARCH_LLAMA, {ENG_ARCH_LLAMA, "llama", false, false, false, false}},
    {"qwen2", ENG_ARCH_QWEN2, {ENG_ARCH_QWEN2, "qwen2", true, false, true, false}},
    {"qwen3", ENG_ARCH_QWEN3, {ENG_ARCH_QWEN3, "qwen3", false, true, true, false}},
};

typedef struct {
    eng_model *m;
    const char *path;
    char *err;
    size_t errlen;
    size_t n_owned, cap_owned; /* floats used / reserved in m->owned_f32 */
} loader;

__attribute__((format(printf, 3, 4))) static int fail(loader *L, int code, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (L->err) snprintf(L->err, L->errlen, "%s: %s", L->path, msg);
    return code;
}

/* Reads "<arch>.<suffix>" as u32; missing keys take def (def < 0: required). */
static int arch_u32(loader *L, const char *suffix, long long def, uint32_t *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->traits.arch_name, suffix);
    int rc = gguf_get_u32(L->m->gguf, key, out);
    if (rc == GGUF_ERR_NOTFOUND && def >= 0) {
        *out = (uint32_t)def;
        return 0;
    }
    if (rc == GGUF_ERR_NOTFOUND) return fail(L, ENG_ERR_FORMAT, "missing key '%s'", key);
    if (rc) return fail(L, ENG_ERR_FORMAT, "key '%s': not an unsigned 32-bit integer", key);
    return 0;
}

static int arch_f32(loader *L, const char *suffix, float def, float *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->traits.arch_name, suffix);
    int rc = gguf_get_f32(L->m->gguf, key, out);
    if (rc == GGUF_ERR_NOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc) return fail(L, ENG_ERR_FORMAT, "key '%s': not a number", key);
    return 0;
}

static int read_arch(loader *L) {
    const char *s;
    size_t n;
    if (gguf_get_str(L->m->gguf, "general.architecture", &s, &n))
        return fail(L, ENG_ERR_FORMAT, "missing key 'general.architecture'");
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        if (strlen(archs[i].name) == n && memcmp(archs[i].name, s, n) == 0) {
            L->m->traits = archs[i].traits;
            return 0;
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(n < 40 ? n : 40), s);
    return fail(L, ENG_ERR_FORMAT,
                "general.architecture: unsupported architecture '%s' (supported: llama, qwen2, qwen3)",
                name);
}

static int read_hparams(loader *L) {
    eng_hparams *hp = &L->m->hp;
    int rc;
    if ((rc = arch_u32(L, "embedding_length", -1, &hp->n_embd)) ||
        (rc = arch_u32(L, "block_count", -1, &hp->n_layer)) ||
        (rc = arch_u32(L, "attention.head_count", -1, &hp->n_head)) ||
        (rc = arch_u32(L, "attention.head_count_kv", hp->n_head, &hp->n_head_kv)) ||
        (rc = arch_u32(L, "feed_forward_length", -1, &hp->n_ff)) ||
        (rc = arch_u32(L, "context_length", 2048, &hp->n_ctx_train)) ||
        (rc = arch_f32(L, "rope.freq_base", 10000.0f, &hp->rope_freq_base)) ||
        (rc = arch_f32(L, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps)))
        return rc;
    if (hp->n_head == 0 || hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv)
        return fail(L, ENG_ERR_FORMAT, "%s.attention.head_count %u is not a multiple of head_count_kv %u",
                    L->m->traits.arch_name, hp->n_head, hp->n_head_kv);
    if (hp->n_layer == 0 || hp->n_layer > 1024 || hp->n_embd == 0 || hp->n_embd > 65536 ||
        hp->n_ff == 0 || hp->n_ff > KERN_MATMUL_MAX_IN)
        return fail(L, ENG_ERR_FORMAT, "%s: implausible sizes (block_count %u, embedding_length %u)",
                    L->m->traits.arch_name, hp->n_layer, hp->n_embd);
    if ((rc = arch_u32(L, "attention.key_length", hp->n_embd / hp->n_head, &hp->head_dim))) return rc;
    if (hp->head_dim == 0 || hp->head_dim % 2 || hp->head_dim > 1024)
        return fail(L, ENG_ERR_FORMAT, "%s.attention.key_length: bad head size %u",
                    L->m->traits.arch_name, hp->head_dim);
    if ((rc = arch_u32(L, "rope.dimension_count", hp->head_dim, &hp->n_rot))) return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return fail(L, ENG_ERR_FORMAT, "%s.rope.dimension_count: %u does not fit head size %u",
                    L->m->traits.arch_name, hp->n_rot, hp->head_dim);
    if (hp->rms_eps <= 0 || hp->rope_freq_base <= 0)
        return fail(L, ENG_ERR_FORMAT, "%s: rms epsilon and rope.freq_base must be positive",
                    L->m->traits.arch_name);
    return 0;
}

/* Looks up a matrix tensor and checks it is (ne0, ne1) with a supported type. */
static int get_matrix(loader *L, const char *name, uint64_t ne0, uint64_t ne1, bool optional,
                      eng_weight *w) {
    const gguf_tensor *t = gguf_find_tensor(L->m->gguf, name);
    memset(w, 0, sizeof *w);
    if (!t) return optional ? 0 : fail(L, ENG_ERR_FORMAT, "missing tensor '%s'", name);
    if (!kern_type_supported(t->type))
        return fail(L, ENG_ERR_FORMAT, "tensor '%s': unsupported tensor type %u", name, t->type);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        return fail(L, ENG_ERR_FORMAT, "tensor '%s' has shape [%llu, %llu, %llu], expected [%llu, %llu]",
                    name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                    (unsigned long long)t->ne[2], (unsigned long long)ne0, (unsigned long long)ne1);
    }
    *w = (eng_weight){t->type, t->data, ne0, ne1};
    L->m->weight_bytes += t->nbytes;
    return 0;
}

/* A 1-D vector of n floats: F32 in place, or F16/BF16 converted into owned storage. */
static int get_vector(loader *L, const char *name, uint64_t n, bool optional, const float **out) {
    const gguf_tensor *t = gguf_find_tensor(L->m->gguf, name);
    *out = NULL;
    if (!t) return optional ? 0 : fail(L, ENG_ERR_FORMAT, "missing tensor '%s'", name);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return fail(L, ENG_ERR_FORMAT, "tensor '%s': expected a vector of %llu values", name, (unsigned long long)n);
    if (t->type == KERN_TYPE_F32) {
        *out = t->data;
        return 0;
    }
    if (t->type != KERN_TYPE_F16 && t->type != KERN_TYPE_BF16)
        return fail(L, ENG_ERR_FORMAT, "tensor '%s': vector type %s is not F32/F16/BF16", name, kern_type_name(t->type));
    if (L->n_owned + n > L->cap_owned)
        return fail(L, ENG_ERR_FORMAT, "tensor '%s': too many converted vectors", name);
    float *dst = L->m->owned_f32 + L->n_owned;
    kern_dequant_row(t->type, t->data, dst, n);
    L->n_owned += n;
    *out = dst;
    return 0;
}

static int load_layer(loader *L, uint32_t il, eng_layer *ly) {
    const eng_hparams *hp = &L->m->hp;
    uint64_t q_dim = (uint64_t)hp->n_head * hp->head_dim, kv_dim = (uint64_t)hp->n_head_kv * hp->head_dim;
    bool bias = L->m->traits.qkv_bias, qkn = L->m->traits.qk_norm;
    char n[20][96];
    static const char *suffix[] = {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                                   "attn_output.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias",
                                   "attn_q_norm.weight", "attn_k_norm.weight", "ffn_norm.weight",
                                   "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
    for (int i = 0; i < 14; i++) snprintf(n[i], sizeof n[i], "blk.%u.%s", il, suffix[i]);
    int rc;
    if ((rc = get_vector(L, n[0], hp->n_embd, false, &ly->attn_norm)) ||
        (rc = get_matrix(L, n[1], hp->n_embd, q_dim, false, &ly->wq)) ||
        (rc = get_matrix(L, n[2], hp->n_embd, kv_dim, false, &ly->wk)) ||
        (rc = get_matrix(L, n[3], hp->n_embd, kv_dim, false, &ly->wv)) ||
        (rc = get_matrix(L, n[4], q_dim, hp->n_embd, false, &ly->wo)) ||
        (rc = get_vector(L, n[5], q_dim, !bias, &ly->bq)) ||
        (rc = get_vector(L, n[6], kv_dim, !bias, &ly->bk)) ||
        (rc = get_vector(L, n[7], kv_dim, !bias, &ly->bv)) ||
        (rc = get_vector(L, n[8], hp->head_dim, !qkn, &ly->q_norm)) ||
        (rc = get_vector(L, n[9], hp->head_dim, !qkn, &ly->k_norm)) ||
        (rc = get_vector(L, n[10], hp->n_embd, false, &ly->ffn_norm)) ||
        (rc = get_matrix(L, n[11], hp->n_embd, hp->n_ff, false, &ly->w_gate)) ||
        (rc = get_matrix(L, n[12], hp->n_embd, hp->n_ff, false, &ly->w_up)) ||
        (rc = get_matrix(L, n[13], hp->n_ff, hp->n_embd, false, &ly->w_down)))
        return rc;
    return 0;
}

static int load_weights(loader *L) {
    eng_model *m = L->m;
    const gguf_tensor *te = gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te) return fail(L, ENG_ERR_FORMAT, "missing tensor 'token_embd.weight'");
    if (te->ne[1] == 0 || te->ne[1] > (1u << 24))
        return fail(L, ENG_ERR_FORMAT, "tensor 'token_embd.weight': bad vocabulary size %llu", (unsigned long long)te->ne[1]);
    m->hp.n_vocab = (uint32_t)te->ne[1];
    int rc;
    if ((rc = get_matrix(L, "token_embd.weight", m->hp.n_embd, m->hp.n_vocab, false, &m->tok_embd))) return rc;
    m->weight_bytes = 0; /* the embedding is not read per token; the output matrix is */
    if ((rc = get_vector(L, "output_norm.weight", m->hp.n_embd, false, &m->out_norm))) return rc;
    if ((rc = get_matrix(L, "output.weight", m->hp.n_embd, m->hp.n_vocab, true, &m->output))) return rc;
    if (!m->output.data) {
        m->traits.tied_embd = true;
        m->output = m->tok_embd;
        m->weight_bytes += kern_row_bytes(m->tok_embd.type, m->hp.n_embd) * m->hp.n_vocab;
    }
    m->layers = tk_calloc(m->hp.n_layer, sizeof *m->layers);
    if (!m->layers) return fail(L, ENG_ERR_NOMEM, "out of memory");
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        if ((rc = load_layer(L, il, &m->layers[il]))) return rc;
    return 0;
}

static int read_strings(loader *L) {
    eng_model *m = L->m;
    const char *s;
    size_t n;
    if (gguf_get_str(m->gguf, "tokenizer.chat_template", &s, &n) == 0) {
        if (!(m->chat_template = tk_strndup(s, n))) return ENG_ERR_NOMEM;
    }
    if (gguf_get_str(m->gguf, "general.name", &s, &n) != 0) {
        s = strrchr(L->path, '/') ? strrchr(L->path, '/') + 1 : L->path;
        n = strlen(s);
    }
    if (!(m->name = tk_strndup(s, n))) return ENG_ERR_NOMEM;
    return 0;
}

int eng_model_load(const char *path, eng_model **out, char *err, size_t errlen) {
    *out = NULL;
    eng_model *m = tk_calloc(1, sizeof *m);
    if (!m) return ENG_ERR_NOMEM;
    loader L = {m, path, err, errlen, 0, 0};
    int rc = gguf_open(path, &m->gguf, err, errlen);
    if (rc) {
        rc = rc == GGUF_ERR_IO ? ENG_ERR_IO : rc == GGUF_ERR_NOMEM ? ENG_ERR_NOMEM : ENG_ERR_FORMAT;
        goto fail;
    }
    if ((rc = read_arch(&L))) goto fail;
    if ((rc = read_hparams(&L))) goto fail;
    /* room for converting every norm/bias vector of the model if stored as F16/BF16 */
    L.cap_owned = (size_t)m->hp.n_layer * (2 * m->hp.n_embd + 3 * (size_t)m->hp.n_head * m->hp.head_dim + 2 * m->hp.head_dim) + m->hp.n_embd;
    if (!(m->owned_f32 = tk_calloc(L.cap_owned, sizeof(float)))) {
        rc = fail(&L, ENG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_weights(&L))) goto fail;
    if ((rc = tok_vocab_load(m->gguf, &m->vocab, err, errlen))) {
        rc = rc == TOK_ERR_NOMEM ? ENG_ERR_NOMEM : ENG_ERR_FORMAT;
        goto fail;
    }
    if (tok_n_vocab(m->vocab) > (int32_t)m->hp.n_vocab) {
        rc = fail(&L, ENG_ERR_FORMAT, "tokenizer.ggml.tokens: %d tokens but token_embd.weight has %u rows",
                  tok_n_vocab(m->vocab), m->hp.n_vocab);
        goto fail;
    }
    if ((rc = read_strings(&L))) goto fail;
    *out = m;
    return 0;
fail:
    eng_model_destroy(m);
    return rc;
}

void eng_model_destroy(eng_model *m) {
    if (!m) return;
    tok_vocab_destroy(m->vocab);
    gguf_close(m->gguf);
    tk_free(m->layers);
    tk_free(m->owned_f32);
    tk_free(m->chat_template);
    tk_free(m->name);
    tk_free(m);
}

const eng_hparams *eng_model_hparams(const eng_model *m) { return &m->hp; }
const eng_traits *eng_model_traits(const eng_model *m) { return &m->traits; }
const tok_vocab *eng_model_vocab(const eng_model *m) { return m->vocab; }
const gguf_file *eng_model_gguf(const eng_model *m) { return m->gguf; }
const char *eng_model_chat_template(const eng_model *m) { return m->chat_template; }
const char *eng_model_name(const eng_model *m) { return m->name; }
size_t eng_model_weight_bytes(const eng_model *m) { return m->weight_bytes; }
