/* api: routing and the life of one HTTP request on libmicrohttpd.
 *
 * MHD calls srv_api_handler several times per request: first with no body (we create the
 * srv_req, route it, check the method, the API key and Content-Length against the body limit —
 * errors are answered right there), then with each piece of the body (copied, up to
 * max_body_bytes), then once with no more data, where the request is dispatched. GET endpoints
 * answer on the first call. Generation (gen.c) either suspends the connection until its events
 * arrive or starts a streaming response. srv_api_completed (MHD_OPTION_NOTIFY_COMPLETED) ends
 * every request: a generation still in flight there means the client went away, so it is
 * aborted in the scheduler. Thread: loop thread. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "server/srv_internal.h"

enum { R_HEALTH, R_READY, R_METRICS, R_MODELS, R_COMPLETIONS, R_CHAT, R_TOKENIZE, R_DETOKENIZE, R_COUNT };

static const struct {
    const char *path, *method;
    bool auth;
} ROUTES[R_COUNT] = {
    [R_HEALTH] = {"/health", "GET", false},
    [R_READY] = {"/ready", "GET", false},
    [R_METRICS] = {"/metrics", "GET", false},
    [R_MODELS] = {"/v1/models", "GET", true},
    [R_COMPLETIONS] = {"/v1/completions", "POST", true},
    [R_CHAT] = {"/v1/chat/completions", "POST", true},
    [R_TOKENIZE] = {"/tokenize", "POST", true},
    [R_DETOKENIZE] = {"/detokenize", "POST", true},
};

/* ---- responses ---- */

enum MHD_Result srv_respond(srv_req *r, int status, const char *body, size_t len, const char *ctype,
                            const char *hname, const char *hvalue) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (hname) MHD_add_response_header(resp, hname, hvalue);
    if (r->srv->draining) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->responded = true;
    return ret;
}

enum MHD_Result srv_respond_error(srv_req *r, const srv_error *e) {
    char *json = srv_error_json(e);
    if (!json) return MHD_NO;
    const char *hn = NULL, *hv = NULL;
    if (e->status == 429) hn = "Retry-After", hv = "1";
    if (e->status == 405) hn = "Allow", hv = ROUTES[r->route].method;
    enum MHD_Result ret = srv_respond(r, e->status, json, strlen(json), "application/json", hn, hv);
    free(json);
    return ret;
}

static enum MHD_Result respond_cjson(srv_req *r, int status, cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s) return MHD_NO;
    enum MHD_Result ret = srv_respond(r, status, s, strlen(s), "application/json", NULL, NULL);
    free(s);
    return ret;
}

/* ---- request registry ---- */

void srv_req_register(srv_req *r) {
    srv_req **b = &r->srv->by_id[r->id % SRV_ID_BUCKETS];
    r->hnext = *b;
    *b = r;
    r->in_flight = true;
    r->srv->n_gen++;
}

void srv_req_unregister(srv_req *r) {
    if (!r->in_flight) return;
    for (srv_req **p = &r->srv->by_id[r->id % SRV_ID_BUCKETS]; *p; p = &(*p)->hnext) {
        if (*p == r) {
            *p = r->hnext;
            break;
        }
    }
    r->in_flight = false;
    r->srv->n_gen--;
}

static srv_req *req_by_id(srv_server *s, uint64_t id) {
    for (srv_req *r = s->by_id[id % SRV_ID_BUCKETS]; r; r = r->hnext)
        if (r->id == id) return r;
    return NULL;
}

void srv_req_wake(srv_req *r) {
    if (!r->suspended) return;
    r->suspended = false;
    MHD_resume_connection(r->conn);
}

/* ---- simple endpoints ---- */

static enum MHD_Result handle_get(srv_req *r) {
    srv_server *s = r->srv;
    if (r->route == R_HEALTH) return respond_cjson(r, 200, cJSON_Parse("{\"status\":\"ok\"}"));
    if (r->route == R_READY) {
        bool ok = !s->draining;
        return respond_cjson(r, ok ? 200 : 503, cJSON_Parse(ok ? "{\"status\":\"ready\"}" : "{\"status\":\"draining\"}"));
    }
    if (r->route == R_METRICS) {
        sched_stats st;
        sched_get_stats(s->sched, &st);
        srv_buf b = {0};
        enum MHD_Result ret = MHD_NO;
        if (!srv_metrics_render(&s->metrics, &st, &b))
            ret = srv_respond(r, 200, b.p, b.len, "text/plain; version=0.0.4; charset=utf-8", NULL, NULL);
        srv_buf_free(&b);
        return ret;
    }
    cJSON *root = cJSON_CreateObject(), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "data"), m);
    cJSON_AddStringToObject(m, "id", s->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "tokd");
    cJSON_AddNumberToObject(m, "max_model_len", s->max_ctx);
    return respond_cjson(r, 200, root);
}

static enum MHD_Result handle_tokenize(srv_req *r) {
    srv_server *s = r->srv;
    srv_tokenize_req tq;
    srv_error e;
    if (srv_parse_tokenize(r->body.p, r->body.len, &tq, &e)) return srv_respond_error(r, &e);
    size_t len = strlen(tq.content), n = 0, cap = len + 8;
    int32_t *ids = tk_calloc(cap, sizeof *ids);
    int rc = ids ? tok_encode(s->vocab, tq.content, len, tq.add_special, true, ids, cap, &n) : TOK_ERR_NOMEM;
    tk_free(tq.content);
    if (rc) {
        tk_free(ids);
        srv_err(&e, 500, "", "tokenization failed (%d)", rc);
        return srv_respond_error(r, &e);
    }
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(root, "count", (double)n);
    cJSON_AddNumberToObject(root, "max_model_len", s->max_ctx);
    tk_free(ids);
    return respond_cjson(r, 200, root);
}

static enum MHD_Result handle_detokenize(srv_req *r) {
    srv_server *s = r->srv;
    int32_t *ids;
    size_t n;
    srv_error e;
    if (srv_parse_detokenize(r->body.p, r->body.len, s->limits.n_vocab, &ids, &n, &e)) return srv_respond_error(r, &e);
    int need = tok_decode(s->vocab, ids, n, true, NULL, 0);
    char *raw = need >= 0 ? tk_malloc((size_t)need + 1) : NULL;
    srv_buf txt = {0};
    if (raw) tok_decode(s->vocab, ids, n, true, raw, (size_t)need + 1);
    int rc = raw ? srv_utf8_sanitize(&txt, raw, (size_t)need) : -1;
    tk_free(raw);
    tk_free(ids);
    if (rc) {
        srv_err(&e, 500, "", "detokenization failed");
        return srv_respond_error(r, &e);
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "content", txt.p);
    srv_buf_free(&txt);
    return respond_cjson(r, 200, root);
}

/* ---- MHD callbacks ---- */

static bool auth_ok(srv_server *s, struct MHD_Connection *conn) {
    const char *key = s->cfg->api_key;
    if (!key[0]) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    size_t n = strlen(key), m = strlen(h);
    unsigned char diff = n != m; /* constant time in the key's length */
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < m ? h[i] : 0);
    return diff == 0;
}

/* Checks on the headers. An error is kept in r->err and answered once the request has been
 * read (a response queued on the first call makes MHD close the connection), except 413 with
 * a Content-Length over the limit, answered at once so the body is never read. */
static enum MHD_Result first_call(srv_req *r, const char *url, const char *method) {
    srv_server *s = r->srv;
    srv_error *e = &r->err;
    r->route = -1;
    for (int i = 0; i < R_COUNT; i++)
        if (strcmp(url, ROUTES[i].path) == 0) r->route = i;
    if (r->route < 0) {
        r->failed = true;
        srv_err(e, 404, "", "not found: %.200s", url);
        return MHD_YES;
    }
    const char *want = ROUTES[r->route].method;
    bool get_like = strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0;
    if (strcmp(method, want) != 0 && !get_like) {
        r->failed = true;
        srv_err(e, 405, "", "method %.16s not allowed on %s (use %s)", method, ROUTES[r->route].path, want);
    } else if (ROUTES[r->route].auth && !auth_ok(s, r->conn)) {
        r->failed = true;
        srv_err(e, 401, "", "invalid or missing API key (send 'Authorization: Bearer KEY')");
        e->code = "invalid_api_key";
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg->max_body_bytes) {
        srv_err(e, 413, "", "request body of %.20s bytes is over the limit of %d bytes", cl, s->cfg->max_body_bytes);
        return srv_respond_error(r, e);
    }
    return MHD_YES;
}

static enum MHD_Result dispatch(srv_req *r) {
    srv_error e;
    if (r->failed) return srv_respond_error(r, &r->err);
    if (r->too_large) {
        srv_err(&e, 413, "", "request body is over the limit of %d bytes", r->srv->cfg->max_body_bytes);
        return srv_respond_error(r, &e);
    }
    if (strcmp(ROUTES[r->route].method, "GET") == 0) return handle_get(r);
    if (r->srv->draining) {
        srv_err(&e, 503, "", "the server is shutting down");
        return srv_respond_error(r, &e);
    }
    if (!r->body.p && srv_buf_append(&r->body, "", 0)) return MHD_NO;
    switch (r->route) {
    case R_TOKENIZE: return handle_tokenize(r);
    case R_DETOKENIZE: return handle_detokenize(r);
    case R_COMPLETIONS: return srv_gen_handle(r, SRV_EP_COMPLETIONS);
    default: return srv_gen_handle(r, SRV_EP_CHAT);
    }
}

enum MHD_Result srv_api_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    srv_server *s = cls;
    srv_req *r = *con_cls;
    if (!r) {
        if (!(r = tk_calloc(1, sizeof *r))) return MHD_NO;
        r->srv = s;
        r->conn = conn;
        r->t0_ns = uv_hrtime();
        r->next = s->open;
        if (s->open) s->open->prev = r;
        s->open = r;
        s->n_open++;
        *con_cls = r;
        return first_call(r, url, method);
    }
    if (*upload_size) {
        if (!r->responded && !r->too_large && !r->failed) {
            if (r->body.len + *upload_size > (size_t)s->cfg->max_body_bytes) {
                r->too_large = true;
                srv_buf_free(&r->body);
            } else if (srv_buf_append(&r->body, upload, *upload_size)) {
                return MHD_NO;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->responded) return MHD_YES;
    if (!r->processed) {
        r->processed = true;
        return dispatch(r);
    }
    return srv_gen_resumed(r);
}

void srv_api_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)conn;
    srv_server *s = cls;
    srv_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (r->in_flight) { /* the client went away before its request finished */
        sched_abort(s->sched, r->id);
        srv_req_unregister(r);
    }
    int status = r->status ? r->status : 499;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (!r->out_end || r->out_off < r->out.len)) status = 499;
    srv_metrics_count_status(&s->metrics, status);
    if (r->prev) r->prev->next = r->next;
    else s->open = r->next;
    if (r->next) r->next->prev = r->prev;
    s->n_open--;
    srv_buf_free(&r->body);
    srv_gen_free(r);
    tk_free(r);
}

void srv_api_abort_all(srv_server *s) {
    for (srv_req *r = s->open; r; r = r->next) {
        if (!r->in_flight) continue;
        r->shutdown_abort = true;
        sched_abort(s->sched, r->id);
    }
}

void srv_api_resume_all(srv_server *s) {
    for (srv_req *r = s->open; r; r = r->next) {
        if (!r->suspended) continue;
        if (!r->failed && !r->final_body && !r->out_end) {
            srv_err(&r->err, 503, "", "the server is shutting down");
            r->failed = true;
            if (r->stream) {
                srv_sse_error(&r->out, &r->err);
                r->out_end = true;
            }
        }
        srv_req_wake(r);
    }
}

/* Applies one engine event to its request (unknown ids: the request is gone; dropped). */
void srv_api_event(srv_server *s, const srv_ev *ev, const char *bytes) {
    srv_req *r = req_by_id(s, ev->id);
    if (r) srv_gen_event(r, ev, bytes);
}
