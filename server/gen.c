/* gen: POST /v1/completions and /v1/chat/completions — from a complete body to a submitted
 * sched_request, and from scheduler events back to OpenAI responses.
 *
 * Path: parse + validate (parse.c) -> model name check -> chat template (engine/chat) ->
 * tokens (engine/tokenizer) -> context and limit checks -> sched_submit. Then either
 *   stream:     a 200 text/event-stream response whose content reader (stream_reader) hands
 *               MHD the SSE bytes buffered so far, or suspends the connection when there are
 *               none (returning 0); srv_req_wake resumes it when an event appends bytes;
 *   non-stream: the connection is suspended until every choice has finished, then resumed and
 *               answered with the whole JSON body (srv_gen_resumed).
 * Timings for /metrics (TTFT, inter-token, end-to-end) are taken here as events arrive.
 * Thread: loop thread. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "server/srv_internal.h"

/* Prompt text -> token ids. Renders chat messages with the model's template first. */
static int build_prompt(srv_server *s, const srv_gen_req *g, int32_t **ids, size_t *n, srv_error *e) {
    if (g->prompt_ids) {
        if (!(*ids = tk_calloc(g->n_prompt_ids, sizeof(int32_t)))) return srv_err(e, 500, "", "out of memory");
        memcpy(*ids, g->prompt_ids, g->n_prompt_ids * sizeof(int32_t));
        *n = g->n_prompt_ids;
        return 0;
    }
    char *text = g->prompt, *rendered = NULL;
    if (g->endpoint == SRV_EP_CHAT) {
        chat_msg *msgs = tk_calloc(g->n_msgs, sizeof *msgs);
        if (!msgs) return srv_err(e, 500, "", "out of memory");
        for (size_t i = 0; i < g->n_msgs; i++) msgs[i] = (chat_msg){g->msgs[i].role, g->msgs[i].content};
        char err[256] = "";
        int rc = chat_render(&s->tmpl, msgs, g->n_msgs, true, "", &rendered, err, sizeof err);
        tk_free(msgs);
        if (rc == CHAT_ERR_INVALID) return srv_err(e, 400, "messages", "%s", err);
        if (rc) return srv_err(e, 500, "", "chat template: %s", err);
        text = rendered;
    }
    size_t len = strlen(text), cap = len + 8;
    int rc = TOK_ERR_NOMEM;
    for (int tries = 0; tries < 2; tries++) {
        tk_free(*ids);
        if (!(*ids = tk_calloc(cap, sizeof(int32_t)))) break;
        rc = tok_encode(s->vocab, text, len, true, true, *ids, cap, n);
        if (rc != TOK_ERR_NOSPACE) break;
        cap = *n;
    }
    tk_free(rendered);
    if (rc) {
        tk_free(*ids);
        *ids = NULL;
        return srv_err(e, rc == TOK_ERR_NOMEM ? 500 : 400, g->endpoint == SRV_EP_CHAT ? "messages" : "prompt",
                       "the prompt cannot be tokenized (%d)", rc);
    }
    return 0;
}

/* Context checks; sets the effective max_tokens. */
static int check_lengths(srv_server *s, const srv_gen_req *g, size_t n_prompt, int32_t *max_tokens, srv_error *e) {
    const char *pp = g->endpoint == SRV_EP_CHAT ? "messages" : "prompt";
    int32_t ctx = s->max_ctx;
    int32_t max_prompt = s->cfg->max_prompt_tokens > 0 && s->cfg->max_prompt_tokens < ctx ? s->cfg->max_prompt_tokens
                                                                                           : ctx - 1;
    if (n_prompt == 0) return srv_err(e, 400, pp, "the prompt is empty");
    if (n_prompt > (size_t)max_prompt)
        return srv_err(e, 400, pp, "the prompt has %zu tokens, over the limit of %d (context length %d)", n_prompt,
                       max_prompt, ctx);
    int32_t room = ctx - (int32_t)n_prompt;
    if (g->max_tokens >= 0) {
        if (g->max_tokens > room)
            return srv_err(e, 400, g->max_tokens_param,
                           "this model's context length is %d tokens; the prompt has %zu and %s is %d "
                           "(at most %d fit)", ctx, n_prompt, g->max_tokens_param, g->max_tokens, room);
        *max_tokens = g->max_tokens;
    } else {
        int32_t def = s->cfg->default_max_tokens > 0 ? s->cfg->default_max_tokens : 256;
        if (s->cfg->max_tokens_limit > 0 && def > s->cfg->max_tokens_limit) def = s->cfg->max_tokens_limit;
        *max_tokens = def < room ? def : room;
    }
    return 0;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_req *r = cls;
    size_t avail = r->out.len - r->out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->out.p + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out.len) r->out.len = r->out_off = 0; /* keep the storage */
        return (ssize_t)n;
    }
    if (r->out_end) return MHD_CONTENT_READER_END_OF_STREAM;
    /* nothing to send yet: park the connection until srv_req_wake (no busy loop) */
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    return 0;
}

static int alloc_choices(srv_req *r, const srv_gen_req *g, srv_server *s) {
    r->n = g->n;
    r->stream = g->stream;
    r->include_usage = g->stream && g->include_usage;
    snprintf(r->oid, sizeof r->oid, "%s-%016llx", g->endpoint == SRV_EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(r->id * 0x9E3779B97F4A7C15ull));
    r->fmt = (srv_fmt){g->endpoint, r->oid, (int64_t)time(NULL), s->model_id, s->vocab};
    r->choices = tk_calloc((size_t)g->n, sizeof *r->choices);
    r->t_last_ns = tk_calloc((size_t)g->n, sizeof *r->t_last_ns);
    r->text_pos = tk_calloc((size_t)g->n, sizeof *r->text_pos);
    return r->choices && r->t_last_ns && r->text_pos ? 0 : -1;
}

static enum MHD_Result start_stream(srv_req *r) {
    if (r->fmt.endpoint == SRV_EP_CHAT) /* the role comes first, as OpenAI sends it */
        for (int32_t i = 0; i < r->n; i++) srv_sse_chunk(&r->fmt, &r->out, i, "", 0, true, NULL, NULL, r->include_usage);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, r, NULL);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    if (r->srv->draining) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->responded = true;
    return ret;
}

static int submit(srv_req *r, const srv_gen_req *g, const int32_t *ids, size_t n, int32_t max_tokens, srv_error *e) {
    srv_server *s = r->srv;
    r->id = ++s->next_id;
    if (alloc_choices(r, g, s)) return srv_err(e, 500, "", "out of memory");
    sched_request rq = {.id = r->id, .prompt = ids, .n_prompt = n, .sampling = g->sp, .max_tokens = max_tokens,
                        .n = g->n, .stops = (const char *const *)g->stops, .n_stops = g->n_stops,
                        .ignore_eos = g->ignore_eos, .want_logprobs = g->logprobs};
    char err[256] = "";
    srv_req_register(r); /* before submit: events can only be applied later, on this thread */
    int rc = sched_submit(s->sched, &rq, err, sizeof err);
    if (rc == 0) return 0;
    srv_req_unregister(r);
    if (rc == SCHED_ERR_FULL) return srv_err(e, 429, "", "the server is busy (request queue full); retry later");
    if (rc == SCHED_ERR_INVALID) return srv_err(e, 400, "", "%s", err[0] ? err : "invalid request");
    if (rc == SCHED_ERR_STOPPED) return srv_err(e, 503, "", "the server is shutting down");
    return srv_err(e, 500, "", "cannot submit the request (%d): %s", rc, err);
}

enum MHD_Result srv_gen_handle(srv_req *r, int endpoint) {
    srv_server *s = r->srv;
    srv_gen_req g;
    srv_error e;
    int32_t *ids = NULL, max_tokens = 0;
    size_t n = 0;
    if (srv_parse_gen(r->body.p, r->body.len, endpoint, &s->limits, &g, &e)) return srv_respond_error(r, &e);
    srv_buf_free(&r->body);
    int rc = -1;
    if (g.model && strcmp(g.model, s->model_id) != 0) {
        srv_err(&e, 404, "model", "the model '%.100s' does not exist (this server serves '%s')", g.model, s->model_id);
        e.code = "model_not_found";
    } else if (!build_prompt(s, &g, &ids, &n, &e) && !check_lengths(s, &g, n, &max_tokens, &e) &&
               !submit(r, &g, ids, n, max_tokens, &e)) {
        rc = 0;
    }
    tk_free(ids);
    srv_gen_req_free(&g);
    if (rc) return srv_respond_error(r, &e);
    if (r->stream) return start_stream(r);
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    return MHD_YES;
}

enum MHD_Result srv_gen_resumed(srv_req *r) {
    if (r->failed) return srv_respond_error(r, &r->err);
    if (r->final_body) return srv_respond(r, 200, r->final_body, strlen(r->final_body), "application/json", NULL, NULL);
    r->suspended = true; /* woken early: keep waiting */
    MHD_suspend_connection(r->conn);
    return MHD_YES;
}

void srv_gen_free(srv_req *r) {
    for (int32_t i = 0; r->choices && i < r->n; i++) {
        srv_buf_free(&r->choices[i].text);
        cJSON_Delete(r->choices[i].lp);
    }
    tk_free(r->choices);
    tk_free(r->t_last_ns);
    tk_free(r->text_pos);
    srv_buf_free(&r->out);
    free(r->final_body);
}

/* ---- events ---- */

static void fail(srv_req *r, int status, const char *msg) {
    if (r->failed) return;
    r->failed = true;
    srv_err(&r->err, status, "", "%s", msg);
}

static void finish_request(srv_req *r) {
    srv_server *s = r->srv;
    srv_hist_observe(&s->metrics.e2e, (double)(uv_hrtime() - r->t0_ns) * 1e-9);
    srv_req_unregister(r);
    if (r->stream) {
        if (r->failed) {
            srv_sse_error(&r->out, &r->err);
        } else {
            if (r->include_usage) srv_sse_usage(&r->fmt, &r->out, &r->usage);
            srv_sse_done(&r->out);
        }
        r->out_end = true;
    } else if (!r->failed) {
        r->final_body = srv_response_json(&r->fmt, r->choices, r->n, &r->usage);
        if (!r->final_body) fail(r, 500, "out of memory building the response");
    }
    srv_req_wake(r);
}

/* Text (and logprobs) of one event into the choice's stream or accumulated response. */
static void add_text(srv_req *r, int32_t c, const char *text, size_t len, const eng_token_logprob *lps, int32_t n_lp) {
    void *lp = NULL;
    if (n_lp > 0 && (lp = r->stream ? srv_logprobs_new(r->fmt.endpoint)
                                    : (r->choices[c].lp ? r->choices[c].lp
                                                        : (r->choices[c].lp = srv_logprobs_new(r->fmt.endpoint)))))
        srv_logprobs_add(&r->fmt, lp, lps, n_lp - 1, r->text_pos[c]);
    r->text_pos[c] += len;
    if (!r->stream) {
        srv_buf_append(&r->choices[c].text, text, len);
        return;
    }
    if (len || lp) {
        srv_sse_chunk(&r->fmt, &r->out, c, text, len, false, lp, NULL, r->include_usage);
        srv_req_wake(r);
    }
}

static void on_token(srv_req *r, const srv_ev *ev, const char *bytes) {
    srv_metrics *m = &r->srv->metrics;
    uint64_t now = uv_hrtime();
    int32_t c = ev->choice;
    if (!r->got_first) {
        r->got_first = true;
        srv_hist_observe(&m->ttft, (double)(now - r->t0_ns) * 1e-9);
    }
    if (r->t_last_ns[c]) srv_hist_observe(&m->itl, (double)(now - r->t_last_ns[c]) * 1e-9);
    r->t_last_ns[c] = now;
    eng_token_logprob lps[32];
    int32_t n_lp = ev->n_lp > 32 ? 32 : ev->n_lp;
    if (n_lp) memcpy(lps, bytes + ev->lp_off, (size_t)n_lp * sizeof *lps);
    add_text(r, c, bytes + ev->text_off, ev->text_len, lps, n_lp);
}

static void on_finish(srv_req *r, const srv_ev *ev, const char *bytes) {
    int32_t c = ev->choice;
    if (ev->text_len) add_text(r, c, bytes + ev->text_off, ev->text_len, NULL, 0);
    const char *fr = srv_finish_reason(ev->finish);
    if (ev->finish == SCHED_FINISH_ABORT)
        fail(r, 503, r->shutdown_abort ? "the server is shutting down" : "the request was aborted");
    else if (!fr)
        fail(r, 500, "generation failed");
    r->usage.prompt_tokens = ev->n_prompt;
    r->usage.cached_tokens = ev->n_cached;
    r->usage.completion_tokens += ev->n_gen;
    r->choices[c].finish = fr;
    if (r->stream && !r->failed) {
        srv_sse_chunk(&r->fmt, &r->out, c, NULL, 0, false, NULL, fr, r->include_usage);
        srv_req_wake(r);
    }
    if (++r->n_finished >= r->n) finish_request(r);
}

void srv_gen_event(srv_req *r, const srv_ev *ev, const char *bytes) {
    if (ev->kind != SCHED_EV_ERROR && (ev->choice < 0 || ev->choice >= r->n)) {
        TK_WARN("serve: event for request %llu has choice %d of %d", (unsigned long long)r->id, ev->choice, r->n);
        return;
    }
    switch (ev->kind) {
    case SCHED_EV_TOKEN: on_token(r, ev, bytes); break;
    case SCHED_EV_FINISH: on_finish(r, ev, bytes); break;
    case SCHED_EV_ERROR: {
        char msg[300];
        snprintf(msg, sizeof msg, "generation failed: %.*s", (int)(ev->text_len < 256 ? ev->text_len : 256),
                 bytes + ev->text_off);
        fail(r, 500, msg);
        finish_request(r);
        break;
    }
    default: break;
    }
}
