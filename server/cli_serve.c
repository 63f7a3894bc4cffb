/* `tokd serve`: the OpenAI-compatible HTTP daemon. Loads the config (defaults < --config file <
 * TOKD_* environment < flags), the model and its chat template, starts the scheduler's engine
 * thread and the HTTP front end (http.c) on this thread's libuv loop, and runs until SIGTERM or
 * SIGINT has drained the in-flight requests. Exit status: 0 after a drain, 1 on a start-up
 * failure, 2 on a usage error. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "config/config.h"
#include "kernels/kern.h"
#include "server/cli.h"
#include "server/srv_internal.h"

static void serve_usage(FILE *f) {
    fprintf(f, "usage: tokd serve --model PATH [--host H] [--port P] [--config FILE] [--api-key K] [options]\n"
               "Every config key is also a flag (--max-batched-tokens N), a TOKD_* variable and a JSON key:\n");
    cfg_print_help(f);
}

static int log_level(const char *s) {
    if (strcmp(s, "debug") == 0) return TK_LOG_DEBUG;
    if (strcmp(s, "warn") == 0) return TK_LOG_WARN;
    if (strcmp(s, "error") == 0) return TK_LOG_ERROR;
    return TK_LOG_INFO;
}

/* Chat template: the configured family, else the model's, else ChatML (documented fallback). */
static void pick_template(srv_server *s) {
    const cfg_config *c = s->cfg;
    char err[256] = "";
    if (c->chat_template[0] && chat_tmpl_by_name(c->chat_template, &s->tmpl) == 0) return;
    const char *src = eng_model_chat_template(s->model);
    if (src && chat_tmpl_detect(src, &s->tmpl, err, sizeof err) == 0) return;
    TK_WARN("serve: %s; chat requests use the ChatML template (set chat_template to choose another)",
            src ? err : "the model has no tokenizer.chat_template");
    chat_tmpl_by_name("chatml", &s->tmpl);
}

static void sched_params_from_cfg(const cfg_config *c, const eng_model *m, sched_params *p) {
    memset(p, 0, sizeof *p);
    p->max_seqs = c->max_seqs;
    p->max_batched_tokens = c->max_batched_tokens;
    p->max_waiting = c->max_waiting;
    p->prefix_cache = c->prefix_cache;
    eng_ctx_params_default(&p->engine);
    const eng_hparams *hp = eng_model_hparams(m);
    p->engine.block_size = c->block_size;
    if (eng_kv_type_parse(c->kv_type, &p->engine.kv_type)) p->engine.kv_type = KERN_TYPE_F16; /* config checked the name */
    p->engine.n_threads = c->threads;
    p->engine.quant_act = c->quant_act;
    p->engine.pin_threads = c->pin_threads;
    p->engine.device = strcmp(c->device, "cuda") == 0 ? 1 : 0;
    uint32_t n_ctx = hp->n_ctx_train ? hp->n_ctx_train : 4096;
    p->engine.max_ctx = c->ctx_size ? c->ctx_size : (int32_t)(n_ctx < 4096 ? n_ctx : 4096);
    if (c->kv_blocks > 0) {
        p->engine.n_blocks = c->kv_blocks;
    } else {
        size_t per_block = eng_kv_token_bytes(m, p->engine.kv_type) * (size_t)c->block_size;
        size_t n = ((size_t)c->kv_cache_mb << 20) / (per_block ? per_block : 1);
        p->engine.n_blocks = n > (1u << 24) ? (1 << 24) : (n ? (int32_t)n : 1);
    }
}

/* 2,000 idle clients need 2,000 descriptors: take the hard limit. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int start(srv_server *s, const cfg_config *c, sched_params *sp, char *err, size_t errlen) {
    if (eng_model_load(c->model, (eng_model **)&s->model, err, errlen)) return -1;
    s->vocab = eng_model_vocab(s->model);
    pick_template(s);
    snprintf(s->model_id, sizeof s->model_id, "%s", c->model_name);
    sched_params_from_cfg(c, s->model, sp);
    if (srv_http_start(s, err, errlen)) return -1;
    if (sched_new(s->model, sp, srv_emit, s, &s->sched, err, errlen)) return -1;
    s->max_ctx = sched_max_ctx(s->sched);
    s->limits = (srv_limits){c->max_n, c->max_tokens_limit > 0 ? c->max_tokens_limit : s->max_ctx,
                             tok_n_vocab(s->vocab)};
    return 0;
}

int cli_serve(int argc, char **argv) {
    static cfg_config cfg;
    char err[1024] = "";
    int rc = cfg_load(&cfg, argc, argv, NULL, err, sizeof err);
    if (rc == 1) {
        serve_usage(stdout);
        return 0;
    }
    if (rc || !cfg.model[0]) {
        fprintf(stderr, "tokd serve: %s\n", rc ? err : "--model PATH is required");
        serve_usage(stderr);
        return 2;
    }
    tk_log_set_level(log_level(cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    static srv_server s; /* large (id table); zeroed */
    s.cfg = &cfg;
    s.loop = uv_default_loop();
    s.started = (int64_t)time(NULL);
    srv_metrics_init(&s.metrics);
    pthread_mutex_init(&s.evq.mu, NULL); /* destroyed by srv_http_stop */
    sched_params sp;
    int status = 0;
    if (start(&s, &cfg, &sp, err, sizeof err)) {
        fprintf(stderr, "tokd serve: %s\n", err);
        status = 1;
    } else {
        const eng_hparams *hp = eng_model_hparams(s.model);
        TK_INFO("tokd serve: model %s (%s, %s, %u layers), threads %d, KV %d blocks x %d tokens (%s), "
                "%s activations, context %d, template %s, listening on http://%s:%u", s.model_id, cfg.model,
                eng_model_traits(s.model)->arch_name, hp->n_layer, cfg.threads, sp.engine.n_blocks,
                sp.engine.block_size, cfg.kv_type, cfg.quant_act ? "8-bit" : "f32", s.max_ctx, chat_tmpl_name(s.tmpl.kind), cfg.host, s.port);
        uv_run(s.loop, UV_RUN_DEFAULT);
    }
    srv_http_stop(&s); /* completes every open request (aborting what is left) */
    if (s.sched) sched_destroy(s.sched);
    uv_loop_close(s.loop);
    chat_tmpl_free(&s.tmpl);
    if (s.model) eng_model_destroy((eng_model *)s.model);
    return status;
}
