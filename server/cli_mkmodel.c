/* `tokd mkmodel OUT.gguf --shape S135|S1B|LLAMA8B|custom`: writes a random-weight model of a
 * given shape with a real tokenizer (copied from a vocab GGUF), for benchmarks and tests that
 * need a model of realistic size without downloading one (engine/quantize.h does the work). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/tk_log.h"
#include "engine/model.h"
#include "engine/quantize.h"
#include "kernels/kern.h"
#include "server/cli_tools.h"

static void mkmodel_usage(FILE *f) {
    fprintf(f,
            "usage: tokd mkmodel OUT.gguf --shape NAME [options]\n"
            "  --shape NAME         S135 (576, 30 layers, 9/3 heads, ff 1536, vocab 32000),\n"
            "                       S1B (2048, 22, 32/4, 5632, 32000), LLAMA8B (4096, 32, 32/8, 14336, 128256)\n"
            "                       or custom (then --n-embd --n-layer --n-head --n-ff are required);\n"
            "                       the dim options below also override a named shape\n"
            "  --type T             weight matrices: Q8_0 (default), Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32\n"
            "  --arch A             llama (default), qwen2, qwen3\n"
            "  --n-embd N --n-layer N --n-head N --n-head-kv N --n-ff N --n-vocab N --head-dim N --n-ctx N\n"
            "  --tied               no output.weight (logits use token_embd)\n"
            "  --vocab-from FILE    GGUF whose tokenizer.* keys are copied (default\n"
            "                       $TOKD_SHARED/testdata/tokenizer/ggml-vocab-llama-spm.gguf, TOKD_SHARED\n"
            "                       defaulting to ../shared); 'none': a built-in byte-level vocab\n"
            "  --seed S             random seed (default 42)   --std X  weight std (default 0.02)\n"
            "  --name TEXT          general.name               --threads N  (default: all CPUs)\n");
}

static int parse_u(const char *name, const char *s, unsigned long long lo, unsigned long long hi,
                   unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "tokd mkmodel: --%s: '%s' is not an integer in [%llu, %llu]\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

typedef struct {
    const char *out, *shape;
    eng_mkmodel_spec s;
    /* dims given on the command line, applied over the shape's (0: not given) */
    uint32_t dims[8];
    char vocab_buf[512];
} mk_opts;

enum { D_EMBD, D_LAYER, D_HEAD, D_HEAD_KV, D_FF, D_VOCAB, D_HEAD_DIM, D_CTX };

static int parse_mk(int argc, char **argv, mk_opts *o) {
    static const struct option longs[] = {
        {"shape", 1, 0, 's'},     {"type", 1, 0, 't'},      {"arch", 1, 0, 'a'},        {"n-embd", 1, 0, 0},
        {"n-layer", 1, 0, 1},     {"n-head", 1, 0, 2},      {"n-head-kv", 1, 0, 3},     {"n-ff", 1, 0, 4},
        {"n-vocab", 1, 0, 5},     {"head-dim", 1, 0, 6},    {"n-ctx", 1, 0, 7},         {"tied", 0, 0, 'T'},
        {"vocab-from", 1, 0, 'v'}, {"seed", 1, 0, 'S'},     {"std", 1, 0, 'd'},         {"name", 1, 0, 'n'},
        {"threads", 1, 0, 'j'},   {"help", 0, 0, 'h'},      {0, 0, 0, 0}};
    static const unsigned long long dim_max[8] = {65536, 1024, 1024, 1024, 65536, 1u << 24, 1024, 1u << 24};
    unsigned long long v;
    int c, idx = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longs, &idx)) != -1) {
        if (c >= 0 && c < 8) {
            if (parse_u(longs[idx].name, optarg, 1, dim_max[c], &v)) return -1;
            o->dims[c] = (uint32_t)v;
            continue;
        }
        switch (c) {
        case 's': o->shape = optarg; break;
        case 't':
            if (eng_quant_type_parse(optarg, &o->s.type)) {
                fprintf(stderr, "tokd mkmodel: --type: unknown type '%s'\n", optarg);
                return -1;
            }
            break;
        case 'a': o->s.arch = optarg; break;
        case 'T': o->s.tied = true; break;
        case 'v': o->s.vocab_from = strcmp(optarg, "none") == 0 ? NULL : optarg; o->vocab_buf[0] = 1; break;
        case 'S': if (parse_u("seed", optarg, 0, ~0ull, &v)) return -1; o->s.seed = v; break;
        case 'd': {
            char *end;
            o->s.std = strtof(optarg, &end);
            if (*end || end == optarg || !(o->s.std >= 0 && o->s.std < 100)) {
                fprintf(stderr, "tokd mkmodel: --std: '%s' is not a number in [0, 100)\n", optarg);
                return -1;
            }
            break;
        }
        case 'n': o->s.name = optarg; break;
        case 'j': if (parse_u("threads", optarg, 1, 256, &v)) return -1; o->s.n_threads = (int)v; break;
        case 'h': mkmodel_usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (argc - optind != 1 || !o->shape) {
        fprintf(stderr, "tokd mkmodel: expected OUT.gguf and --shape\n");
        return -1;
    }
    o->out = argv[optind];
    return 0;
}

/* Shape, then command-line dims, then the default vocab. */
static int settle_spec(mk_opts *o) {
    eng_mkmodel_spec *s = &o->s;
    if (strcmp(o->shape, "custom") != 0 && eng_mkmodel_shape(o->shape, s)) {
        fprintf(stderr, "tokd mkmodel: --shape: unknown shape '%s' (S135, S1B, LLAMA8B, custom)\n", o->shape);
        return -1;
    }
    uint32_t *fields[8] = {&s->n_embd, &s->n_layer, &s->n_head, &s->n_head_kv, &s->n_ff, &s->n_vocab, &s->head_dim, &s->n_ctx};
    for (int i = 0; i < 8; i++)
        if (o->dims[i]) *fields[i] = o->dims[i];
    if (!s->n_head_kv) s->n_head_kv = s->n_head;
    if (!s->n_embd || !s->n_layer || !s->n_head || !s->n_ff) {
        fprintf(stderr, "tokd mkmodel: --shape custom needs --n-embd, --n-layer, --n-head and --n-ff\n");
        return -1;
    }
    if (!o->vocab_buf[0]) { /* no --vocab-from: the shared llama vocab */
        const char *root = getenv("TOKD_SHARED");
        snprintf(o->vocab_buf, sizeof o->vocab_buf, "%s/testdata/tokenizer/ggml-vocab-llama-spm.gguf",
                 root && *root ? root : "../shared");
        if (access(o->vocab_buf, R_OK) != 0) {
            fprintf(stderr, "tokd mkmodel: default vocab %s not found: pass --vocab-from FILE or --vocab-from none\n",
                    o->vocab_buf);
            return -1;
        }
        s->vocab_from = o->vocab_buf;
    }
    return 0;
}

int cli_mkmodel(int argc, char **argv) {
    mk_opts o;
    memset(&o, 0, sizeof o);
    eng_mkmodel_spec_default(&o.s);
    if (parse_mk(argc, argv, &o) || settle_spec(&o)) {
        mkmodel_usage(stderr);
        return 2;
    }
    tk_log_set_level(TK_LOG_WARN); /* no kernel start-up chatter in a tool's output */
    char err[512] = "";
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = eng_mkmodel_write(&o.s, o.out, err, sizeof err);
    if (rc) {
        fprintf(stderr, "tokd mkmodel: %s\n", err);
        return rc == ENG_ERR_INVALID ? 2 : 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "%s: %s %s, n_embd %u, %u layers, %u/%u heads, n_ff %u, %.1fM parameters, written in %.1f s\n",
            o.out, o.s.arch, kern_type_name(o.s.type), o.s.n_embd, o.s.n_layer, o.s.n_head, o.s.n_head_kv, o.s.n_ff,
            (double)eng_mkmodel_n_params(&o.s) / 1e6,
            (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
