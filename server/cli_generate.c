/* `tokd generate`: load a model, tokenize one prompt (optionally rendered with the model's chat
 * template), generate, and print only the generated text on stdout. Timing goes to stderr with
 * --verbose. Used by humans and by the tests. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/chat.h"
#include "engine/model.h"
#include "kernels/kern.h"
#include "scheduler/generate.h"

#define MAX_STOPS 8

typedef struct {
    const char *model, *prompt, *system, *tmpl_name;
    bool chat, verbose, ignore_eos, quant_act;
    int32_t max_tokens, threads, ctx_size;
    int device; /* 0 cpu, 1 cuda */
    uint32_t kv_type; /* KERN_TYPE_F16 (default), Q8_0 or F32 */
    eng_sampling_params sp;
    const char *stops[MAX_STOPS];
    size_t n_stops;
} gen_opts;

static void gen_usage(FILE *f) {
    fprintf(f,
            "usage: tokd generate --model PATH --prompt TEXT [options]\n"
            "  --chat               render the prompt as a user message with the model's chat template\n"
            "  --system TEXT        system message (with --chat)\n"
            "  --template NAME      chat template family instead of the model's (chatml, llama3, llama2,\n"
            "                       mistral, gemma, zephyr)\n"
            "  --max-tokens N       tokens to generate (default 128)\n"
            "  --temperature T      0 = greedy (default 0)\n"
            "  --top-k K  --top-p P  --min-p P  --repeat-penalty R  --presence-penalty P\n"
            "  --frequency-penalty F  --seed S  --stop TEXT (repeatable)  --ignore-eos\n"
            "  --threads N          compute threads (default: all CPUs)\n"
            "  --ctx-size N         context length (default: min(model's, 4096))\n"
            "  --quant-act          8-bit activations for Q8_0/Q4_0/Q4_1 and K-quant weights, as llama.cpp (faster; default: f32)\n"
            "  --device cpu|cuda    backend (default cpu; cuda needs a build with CUDA)\n"
            "  --kv-type TYPE       KV cache element type: f16 (default), q8_0 (8-bit, CPU), f32\n"
            "  --verbose            timing and model info on stderr\n");
}

static int parse_num(const char *name, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v) || v < lo || v > hi) {
        fprintf(stderr, "tokd generate: --%s: '%s' is not a number in [%g, %g]\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, gen_opts *o) {
    static const struct option longs[] = {
        {"model", 1, 0, 'm'},       {"prompt", 1, 0, 'p'},      {"chat", 0, 0, 'c'},
        {"system", 1, 0, 'S'},      {"template", 1, 0, 'T'},    {"max-tokens", 1, 0, 'n'},
        {"temperature", 1, 0, 't'}, {"top-k", 1, 0, 'k'},       {"top-p", 1, 0, 'P'},
        {"min-p", 1, 0, 'M'},       {"repeat-penalty", 1, 0, 'r'}, {"presence-penalty", 1, 0, 'e'},
        {"frequency-penalty", 1, 0, 'f'}, {"seed", 1, 0, 's'},  {"stop", 1, 0, 'x'},
        {"ignore-eos", 0, 0, 'i'},  {"threads", 1, 0, 'j'},     {"ctx-size", 1, 0, 'C'}, {"quant-act", 0, 0, 'Q'},
        {"device", 1, 0, 'D'},      {"kv-type", 1, 0, 'K'},
        {"verbose", 0, 0, 'v'},     {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
    double v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:t:s:vh", longs, NULL)) != -1) {
        const char *name = "?";
        for (const struct option *lo = longs; lo->name; lo++)
            if (lo->val == c) name = lo->name; /* report the option as --name */
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'c': o->chat = true; break;
        case 'S': o->system = optarg; break;
        case 'T': o->tmpl_name = optarg; break;
        case 'i': o->ignore_eos = true; break;
        case 'v': o->verbose = true; break;
        case 'Q': o->quant_act = true; break;
        case 'D':
            if (strcmp(optarg, "cpu") == 0) o->device = 0;
            else if (strcmp(optarg, "cuda") == 0) o->device = 1;
            else { fprintf(stderr, "tokd generate: --device: '%s' is not cpu or cuda\n", optarg); return -1; }
            break;
        case 'K':
            if (eng_kv_type_parse(optarg, &o->kv_type)) {
                fprintf(stderr, "tokd generate: --kv-type: '%s' is not f16, q8_0 or f32\n", optarg);
                return -1;
            }
            break;
        case 'h': gen_usage(stdout); exit(0);
        case 'x':
            if (o->n_stops == MAX_STOPS) { fprintf(stderr, "tokd generate: at most %d --stop\n", MAX_STOPS); return -1; }
            o->stops[o->n_stops++] = optarg;
            break;
        case 'n': if (parse_num(name, optarg, 1, 1 << 20, &v)) return -1; o->max_tokens = (int32_t)v; break;
        case 'j': if (parse_num(name, optarg, 1, 256, &v)) return -1; o->threads = (int32_t)v; break;
        case 'C': if (parse_num(name, optarg, 16, 1 << 20, &v)) return -1; o->ctx_size = (int32_t)v; break;
        case 't': if (parse_num(name, optarg, 0, 100, &v)) return -1; o->sp.temperature = (float)v; break;
        case 'k': if (parse_num(name, optarg, 0, 1e9, &v)) return -1; o->sp.top_k = (int32_t)v; break;
        case 'P': if (parse_num(name, optarg, 0, 1, &v)) return -1; o->sp.top_p = (float)v; break;
        case 'M': if (parse_num(name, optarg, 0, 1, &v)) return -1; o->sp.min_p = (float)v; break;
        case 'r': if (parse_num(name, optarg, 0, 10, &v)) return -1; o->sp.repetition_penalty = (float)v; break;
        case 'e': if (parse_num(name, optarg, -2, 2, &v)) return -1; o->sp.presence_penalty = (float)v; break;
        case 'f': if (parse_num(name, optarg, -2, 2, &v)) return -1; o->sp.frequency_penalty = (float)v; break;
        case 's': if (parse_num(name, optarg, 0, 1.8e19, &v)) return -1; o->sp.seed = (uint64_t)v; break;
        default: gen_usage(stderr); return -1;
        }
    }
    if (!o->model || !o->prompt) {
        fprintf(stderr, "tokd generate: --model and --prompt are required\n");
        gen_usage(stderr);
        return -1;
    }
    return 0;
}

/* Renders the chat prompt; returns a tk_malloc'd string or NULL with a message printed. */
static char *render_chat(const eng_model *m, const gen_opts *o) {
    chat_tmpl t;
    char err[256];
    int rc;
    if (o->tmpl_name) {
        rc = chat_tmpl_by_name(o->tmpl_name, &t);
        if (rc) snprintf(err, sizeof err, "unknown template name '%s'", o->tmpl_name);
    } else if (eng_model_chat_template(m)) {
        rc = chat_tmpl_detect(eng_model_chat_template(m), &t, err, sizeof err);
    } else {
        rc = -1;
        snprintf(err, sizeof err, "the model has no tokenizer.chat_template; pass --template NAME");
    }
    if (rc) {
        fprintf(stderr, "tokd generate: %s: chat template: %s\n", o->model, err);
        return NULL;
    }
    chat_msg msgs[2];
    size_t n = 0;
    if (o->system) msgs[n++] = (chat_msg){"system", o->system};
    msgs[n++] = (chat_msg){"user", o->prompt};
    char *out = NULL;
    rc = chat_render(&t, msgs, n, true, "", &out, err, sizeof err);
    chat_tmpl_free(&t);
    if (rc) fprintf(stderr, "tokd generate: chat template: %s\n", err);
    return rc ? NULL : out;
}

static void print_text(void *ud, const char *text, size_t len) {
    (void)ud;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

static int run(const gen_opts *o, const eng_model *m) {
    char err[512] = "";
    char *text = o->chat ? render_chat(m, o) : tk_strndup(o->prompt, strlen(o->prompt));
    if (!text) return 1;
    const tok_vocab *v = eng_model_vocab(m);
    size_t len = strlen(text), n_prompt = 0, cap = len + 8;
    int32_t *prompt = tk_calloc(cap, sizeof(int32_t)), *out = NULL;
    eng_ctx *ctx = NULL;
    int status = 1;
    if (!prompt || tok_encode(v, text, len, true, o->chat, prompt, cap, &n_prompt)) {
        fprintf(stderr, "tokd generate: cannot tokenize the prompt\n");
        goto done;
    }
    eng_ctx_params cp;
    eng_ctx_params_default(&cp);
    uint32_t n_ctx = eng_model_hparams(m)->n_ctx_train;
    cp.max_ctx = o->ctx_size ? o->ctx_size : (int32_t)(n_ctx < 4096 ? n_ctx : 4096);
    cp.n_threads = o->threads;
    cp.quant_act = o->quant_act;
    cp.device = o->device;
    cp.kv_type = o->kv_type;
    cp.max_logits = 1;
    if (eng_ctx_new(m, &cp, &ctx, err, sizeof err)) {
        fprintf(stderr, "tokd generate: %s\n", err);
        goto done;
    }
    int32_t max_tokens = o->max_tokens;
    if ((size_t)max_tokens + n_prompt > (size_t)cp.max_ctx) max_tokens = cp.max_ctx - (int32_t)n_prompt;
    if (max_tokens <= 0 || !(out = tk_calloc((size_t)max_tokens, sizeof(int32_t)))) {
        fprintf(stderr, "tokd generate: prompt of %zu tokens leaves no room in the context (%d)\n", n_prompt, cp.max_ctx);
        goto done;
    }
    sched_gen_request rq = {prompt, n_prompt, o->sp, max_tokens, o->stops, o->n_stops, o->ignore_eos,
                            print_text, NULL, NULL};
    sched_gen_result res;
    if (sched_generate(ctx, m, &rq, out, &res, err, sizeof err)) {
        fprintf(stderr, "tokd generate: %s\n", err);
        goto done;
    }
    printf("\n");
    if (o->verbose)
        fprintf(stderr, "prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s (%.1f tok/s)\n",
                res.n_prompt, res.prefill_s, res.n_prompt / (res.prefill_s + 1e-9), res.n_gen, res.decode_s,
                res.n_gen / (res.decode_s + 1e-9));
    status = 0;
done:
    eng_ctx_destroy(ctx);
    tk_free(out);
    tk_free(prompt);
    tk_free(text);
    return status;
}

int cli_generate(int argc, char **argv) {
    gen_opts o = {0};
    eng_sampling_params_default(&o.sp);
    o.sp.temperature = 0;
    o.max_tokens = 128;
    o.kv_type = KERN_TYPE_F16;
    if (parse_opts(argc, argv, &o)) return 2;
    if (!o.verbose) tk_log_set_level(TK_LOG_WARN);
    char err[512] = "";
    eng_model *m = NULL;
    if (eng_model_load(o.model, &m, err, sizeof err)) {
        fprintf(stderr, "tokd generate: %s\n", err);
        return 1;
    }
    if (o.verbose) {
        const eng_hparams *hp = eng_model_hparams(m);
        fprintf(stderr, "model %s: %s, %u layers, n_embd %u, %u heads (%u kv), vocab %u\n", o.model,
                eng_model_traits(m)->arch_name, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_vocab);
    }
    int status = run(&o, m);
    eng_model_destroy(m);
    return status;
}
