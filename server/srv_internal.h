/* srv_internal: types shared by the files of the HTTP front end (server/). Never included from
 * outside server/ (and tests/unit/test_server.c).
 *
 *   parse.c   JSON request body -> srv_gen_req (plain C: token ids or text, sampling params),
 *             validation with OpenAI-style errors naming the parameter
 *   stream.c  byte buffers, error JSON, SSE framing, OpenAI response / chunk objects
 *   metrics.c Prometheus text from the front end's timings and sched_get_stats
 *   http.c    the libuv loop + libmicrohttpd glue, the engine->loop event queue, drain
 *   api.c     routing, auth, handlers, per-request state driven by scheduler events
 *   cli_serve.c `tokd serve`: config, model, scheduler, run
 * Thread: everything here runs on the loop thread except srv_evq_push (engine thread). */
#ifndef SERVER_SRV_INTERNAL_H
#define SERVER_SRV_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "scheduler/sched.h"

/* ---- byte buffer (stream.c) ---- */
typedef struct {
    char *p;    /* NUL-terminated when non-NULL */
    size_t len; /* bytes used, excluding the NUL */
    size_t cap;
} srv_buf;

int srv_buf_append(srv_buf *b, const void *data, size_t n); /* 0 or -1 (out of memory) */
int srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_free(srv_buf *b);

/* ---- errors ---- */
typedef struct {
    int status;        /* HTTP status */
    const char *type;  /* "invalid_request_error", ... (static string) */
    const char *code;  /* NULL or a static string ("model_not_found", "invalid_api_key") */
    char param[64];    /* "" when no parameter is at fault */
    char message[384];
} srv_error;

/* Fills e and returns -1, so callers can `return srv_err(...)`. */
int srv_err(srv_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* {"error":{"message","type","param","code"}}; NULL on OOM. Caller frees with free(). */
char *srv_error_json(const srv_error *e);

/* ---- parsed generation request (parse.c) ---- */
enum { SRV_EP_COMPLETIONS = 1, SRV_EP_CHAT = 2 };
#define SRV_MAX_STOPS 4

typedef struct {
    char *role;    /* "system", "user", "assistant" ("developer" is mapped to "system") */
    char *content; /* text parts concatenated */
} srv_msg;

/* Everything owned; free with srv_gen_req_free. */
typedef struct {
    int endpoint;           /* SRV_EP_* */
    char *model;            /* NULL when absent */
    char *prompt;           /* completions with a string prompt */
    int32_t *prompt_ids;    /* completions with a token-id prompt */
    size_t n_prompt_ids;
    srv_msg *msgs;          /* chat */
    size_t n_msgs;
    int32_t max_tokens;     /* -1: not given (the server's default applies) */
    const char *max_tokens_param; /* which name gave it ("max_tokens" / "max_completion_tokens") */
    eng_sampling_params sp; /* sp.logit_bias points into bias */
    eng_logit_bias *bias;
    size_t n_bias;
    char *stops[SRV_MAX_STOPS];
    size_t n_stops;
    int32_t n;
    bool logprobs;          /* completions: logprobs given (top = sp.top_logprobs); chat: logprobs true */
    bool stream, include_usage, ignore_eos;
} srv_gen_req;

typedef struct {
    int32_t max_n;            /* largest n */
    int32_t max_tokens_limit; /* largest max_tokens */
    int32_t n_vocab;          /* token ids (prompt, logit_bias) must be below it */
} srv_limits;

/* Parses and validates a request body for `endpoint`. 0, or -1 with e filled (status 400). */
int srv_parse_gen(const char *body, size_t len, int endpoint, const srv_limits *lim, srv_gen_req *out,
                  srv_error *e);
void srv_gen_req_free(srv_gen_req *r);
/* True when s[0..n) is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
bool srv_utf8_valid(const char *s, size_t n);

/* /tokenize and /detokenize bodies. */
typedef struct {
    char *content;
    bool add_special;
} srv_tokenize_req;
int srv_parse_tokenize(const char *body, size_t len, srv_tokenize_req *out, srv_error *e);
int srv_parse_detokenize(const char *body, size_t len, int32_t n_vocab, int32_t **ids, size_t *n,
                         srv_error *e);

/* ---- response formatting (stream.c) ---- */
typedef struct {
    int endpoint;          /* SRV_EP_* */
    const char *id;        /* "cmpl-..." / "chatcmpl-..." */
    int64_t created;       /* unix seconds */
    const char *model;
    const tok_vocab *vocab; /* token text for logprobs; NULL: "<id>" placeholders (tests) */
} srv_fmt;

typedef struct {
    int32_t prompt_tokens, completion_tokens, cached_tokens;
} srv_usage;

const char *srv_finish_reason(int sched_finish); /* "stop", "length" or NULL */

/* Logprobs object for one or more tokens, built incrementally:
 * completions: {"tokens","token_logprobs","top_logprobs","text_offset"}; chat: {"content":[...]}. */
void *srv_logprobs_new(int endpoint);          /* a cJSON*; NULL on OOM */
int srv_logprobs_add(const srv_fmt *f, void *lp, const eng_token_logprob *lps, int32_t n_top,
                     size_t text_offset);
/* One streaming chunk, as "data: {json}\n\n" appended to out. text may be NULL (no text),
 * role adds the chat delta role, lp (consumed) may be NULL, finish NULL while unfinished,
 * with_usage adds "usage": null (include_usage). */
int srv_sse_chunk(const srv_fmt *f, srv_buf *out, int32_t index, const char *text, size_t len, bool role,
                  void *lp, const char *finish, bool with_usage);
/* The final usage chunk (choices: []). */
int srv_sse_usage(const srv_fmt *f, srv_buf *out, const srv_usage *u);
int srv_sse_done(srv_buf *out);
int srv_sse_error(srv_buf *out, const srv_error *e);

/* Non-streaming body. Per choice: text (NUL-terminated), lp (cJSON* consumed, may be NULL),
 * finish reason. Returns a malloc'd JSON string or NULL. */
typedef struct {
    srv_buf text;
    void *lp;
    const char *finish;
} srv_choice_out;
char *srv_response_json(const srv_fmt *f, srv_choice_out *choices, int32_t n, const srv_usage *u);

/* ---- metrics (metrics.c) ---- */
#define SRV_HIST_MAX 24
typedef struct {
    int n_bounds;
    double bounds[SRV_HIST_MAX]; /* upper bounds, ascending; +Inf implied */
    uint64_t counts[SRV_HIST_MAX + 1]; /* per bucket (not cumulative); last: above all bounds */
    double sum;
    uint64_t count;
} srv_hist;

#define SRV_STATUS_SLOTS 16
typedef struct {
    int codes[SRV_STATUS_SLOTS];      /* 0 = unused slot */
    uint64_t counts[SRV_STATUS_SLOTS];
    srv_hist ttft, itl, e2e;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_hist_observe(srv_hist *h, double v);
void srv_metrics_count_status(srv_metrics *m, int status);
/* Appends the Prometheus text exposition (version 0.0.4) to out. */
int srv_metrics_render(const srv_metrics *m, const sched_stats *st, srv_buf *out);


/* ---- the running server (http.c, api.c, cli_serve.c) ---- */
#include <pthread.h>
#include <sys/types.h>

#include <microhttpd.h>
#include <uv.h>

#include "config/config.h"
#include "engine/chat.h"

/* One scheduler event copied off the engine thread. Text and logprobs live in the batch's
 * byte arena at text_off / lp_off (logprobs: n_lp entries, chosen token first). */
typedef struct {
    int kind; /* SCHED_EV_* */
    uint64_t id;
    int32_t choice, token, finish;
    int32_t n_prompt, n_gen, n_cached;
    size_t text_off, text_len, lp_off;
    int32_t n_lp;
} srv_ev;

typedef struct {
    srv_ev *ev;
    size_t n, cap;
    char *bytes;
    size_t nbytes, capbytes;
} srv_evbatch;

/* Engine -> loop queue. Invariant: `cur` is only touched under mu; the loop thread swaps it
 * with its own empty batch and processes the events outside the lock. */
typedef struct {
    pthread_mutex_t mu;
    srv_evbatch cur;
    bool lost;   /* an event could not be queued (out of memory) */
    bool closed; /* the loop is gone: events are dropped */
} srv_evq;

typedef struct srv_req srv_req;
#define SRV_ID_BUCKETS 1024

typedef struct {
    const cfg_config *cfg;
    const eng_model *model;
    const tok_vocab *vocab;
    chat_tmpl tmpl;
    sched *sched;
    int32_t max_ctx;
    srv_limits limits;
    char model_id[256];
    int64_t started; /* unix seconds */

    uv_loop_t *loop;
    uv_poll_t poll;
    uv_timer_t timer, drain_timer;
    uv_async_t async;
    uv_signal_t sig_term, sig_int;
    struct MHD_Daemon *mhd;
    uint16_t port;

    srv_evq evq;
    srv_evbatch work; /* the loop thread's batch being processed */
    srv_metrics metrics;

    srv_req *open;                      /* every HTTP request not yet completed (list) */
    srv_req *by_id[SRV_ID_BUCKETS];     /* generation requests in flight, by id */
    uint64_t next_id;
    int n_open, n_gen;
    bool draining, aborted_all, closed;
    uint64_t drain_deadline_ms;
} srv_server;

/* One HTTP request (MHD's *con_cls), from its first handler call to NOTIFY_COMPLETED.
 * Invariants: in_flight <=> linked in srv->by_id and counted in n_gen (events still expected);
 * suspended <=> we called MHD_suspend_connection and not yet MHD_resume_connection. */
struct srv_req {
    srv_server *srv;
    struct MHD_Connection *conn;
    srv_req *prev, *next; /* srv->open */
    srv_req *hnext;       /* by_id chain */
    int route;
    uint64_t t0_ns;       /* arrival (uv_hrtime) */
    srv_buf body;
    bool too_large, processed, suspended, responded;
    int status;           /* HTTP status queued (metrics) */
    /* generation */
    uint64_t id;
    bool in_flight, stream, include_usage, shutdown_abort, got_first, failed;
    int32_t n, n_finished;
    char oid[48];
    srv_fmt fmt;
    srv_choice_out *choices; /* [n] */
    uint64_t *t_last_ns;     /* [n] last token time per choice */
    size_t *text_pos;        /* [n] bytes of text so far (completions text_offset) */
    srv_usage usage;
    srv_error err;           /* when failed */
    srv_buf out;             /* streaming: SSE bytes not yet taken by MHD */
    size_t out_off;
    bool out_end;            /* the stream's last bytes are in out */
    char *final_body;        /* non-streaming: the response once every choice finished */
};

/* api.c helpers used by gen.c */
enum MHD_Result srv_respond(srv_req *r, int status, const char *body, size_t len, const char *ctype,
                            const char *hname, const char *hvalue);
enum MHD_Result srv_respond_error(srv_req *r, const srv_error *e);
void srv_req_register(srv_req *r);
void srv_req_unregister(srv_req *r);
int srv_utf8_sanitize(srv_buf *out, const char *s, size_t n); /* stream.c: invalid bytes -> U+FFFD */

/* gen.c: POST /v1/completions and /v1/chat/completions once the body is complete. */
enum MHD_Result srv_gen_handle(srv_req *r, int endpoint);
/* The resumed handler call of a non-streaming request. */
enum MHD_Result srv_gen_resumed(srv_req *r);
void srv_gen_free(srv_req *r);
void srv_gen_event(srv_req *r, const srv_ev *ev, const char *bytes);

/* http.c */
int srv_http_start(srv_server *s, char *err, size_t errlen);
void srv_http_stop(srv_server *s); /* after uv_run returned */
void srv_emit(void *ud, const sched_event *ev); /* sched_emit_fn; engine thread */
void srv_drain_begin(srv_server *s);
void srv_req_wake(srv_req *r); /* resume the request's connection if suspended */

/* api.c */
enum MHD_Result srv_api_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *version, const char *upload, size_t *upload_size, void **con_cls);
void srv_api_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe);
void srv_api_event(srv_server *s, const srv_ev *ev, const char *bytes);
void srv_api_abort_all(srv_server *s); /* drain timeout: abort in-flight generation */
void srv_api_resume_all(srv_server *s);

#endif
