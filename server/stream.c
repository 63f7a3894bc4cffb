/* stream: what the front end writes back — byte buffers, the OpenAI error object, SSE framing
 * ("data: {json}\n\n", "data: [DONE]\n\n"), streaming chunks and whole responses for
 * /v1/completions (object "text_completion") and /v1/chat/completions ("chat.completion",
 * "chat.completion.chunk"), and logprobs in each endpoint's shape:
 *   completions: {"tokens":[..],"token_logprobs":[..],"top_logprobs":[{tok:lp}],"text_offset":[..]}
 *   chat:        {"content":[{"token","logprob","bytes":[..],"top_logprobs":[{"token","logprob","bytes"}]}]}
 * Token strings in JSON are made valid UTF-8 (a token may be half a character); chat's "bytes"
 * carries the raw bytes. Thread: loop thread (pure functions). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/tk_mem.h"
#include "server/srv_internal.h"

int srv_buf_append(srv_buf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = tk_realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return srv_buf_append(b, tmp, (size_t)n);
    char *big = tk_malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = srv_buf_append(b, big, (size_t)n);
    tk_free(big);
    return rc;
}

void srv_buf_free(srv_buf *b) {
    tk_free(b->p);
    memset(b, 0, sizeof *b);
}

static const char *error_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int srv_err(srv_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = error_type(status);
    e->code = NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static cJSON *error_object(const srv_error *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : error_type(e->status));
    if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
    else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code);
    else cJSON_AddNullToObject(o, "code");
    return root;
}

char *srv_error_json(const srv_error *e) {
    cJSON *root = error_object(e);
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

const char *srv_finish_reason(int f) {
    switch (f) {
    case SCHED_FINISH_STOP_EOS:
    case SCHED_FINISH_STOP_STRING: return "stop";
    case SCHED_FINISH_LENGTH_LIMIT: return "length";
    default: return NULL;
    }
}

int srv_utf8_sanitize(srv_buf *out, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t k = 1;
        while (k <= 4 && i + k <= n && !srv_utf8_valid(s + i, k)) k++;
        bool ok = k <= 4 && i + k <= n && s[i] != 0;
        if (ok ? srv_buf_append(out, s + i, k) : srv_buf_append(out, "\xEF\xBF\xBD", 3)) return -1;
        i += ok ? k : 1;
    }
    return out->p ? 0 : srv_buf_append(out, "", 0);
}

/* Token text for logprobs: raw bytes into raw (returns length), and a valid-UTF-8 copy in *txt
 * (caller frees with srv_buf_free). */
static size_t token_text(const srv_fmt *f, int32_t id, char *raw, size_t cap, srv_buf *txt) {
    int n = f->vocab ? tok_token_to_bytes(f->vocab, id, true, raw, cap - 1) : snprintf(raw, cap, "<%d>", id);
    if (n < 0) n = 0;
    if ((size_t)n >= cap) n = (int)cap - 1;
    srv_utf8_sanitize(txt, raw, (size_t)n);
    return (size_t)n;
}

void *srv_logprobs_new(int endpoint) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (endpoint == SRV_EP_CHAT) {
        cJSON_AddArrayToObject(o, "content");
    } else {
        cJSON_AddArrayToObject(o, "tokens");
        cJSON_AddArrayToObject(o, "token_logprobs");
        cJSON_AddArrayToObject(o, "top_logprobs");
        cJSON_AddArrayToObject(o, "text_offset");
    }
    return o;
}

static cJSON *chat_entry(const srv_fmt *f, const eng_token_logprob *lp) {
    char raw[256];
    srv_buf txt = {0};
    size_t n = token_text(f, lp->id, raw, sizeof raw, &txt);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "token", txt.p ? txt.p : "");
    srv_buf_free(&txt);
    cJSON_AddNumberToObject(e, "logprob", lp->logprob);
    cJSON *bytes = cJSON_AddArrayToObject(e, "bytes");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)raw[i]));
    return e;
}

int srv_logprobs_add(const srv_fmt *f, void *lpv, const eng_token_logprob *lps, int32_t n_top, size_t text_offset) {
    cJSON *o = lpv;
    char raw[256];
    srv_buf txt = {0};
    if (f->endpoint == SRV_EP_CHAT) {
        cJSON *e = chat_entry(f, &lps[0]), *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int32_t i = 1; i <= n_top; i++) cJSON_AddItemToArray(top, chat_entry(f, &lps[i]));
        cJSON_AddItemToArray(cJSON_GetObjectItem(o, "content"), e);
        return 0;
    }
    token_text(f, lps[0].id, raw, sizeof raw, &txt);
    cJSON_AddItemToArray(cJSON_GetObjectItem(o, "tokens"), cJSON_CreateString(txt.p ? txt.p : ""));
    cJSON_AddItemToArray(cJSON_GetObjectItem(o, "token_logprobs"), cJSON_CreateNumber(lps[0].logprob));
    cJSON_AddItemToArray(cJSON_GetObjectItem(o, "text_offset"), cJSON_CreateNumber((double)text_offset));
    cJSON *top = cJSON_CreateObject();
    for (int32_t i = 1; i <= n_top; i++) {
        txt.len = 0;
        token_text(f, lps[i].id, raw, sizeof raw, &txt);
        const char *k = txt.p ? txt.p : "";
        if (!cJSON_GetObjectItemCaseSensitive(top, k)) cJSON_AddNumberToObject(top, k, lps[i].logprob);
    }
    srv_buf_free(&txt);
    cJSON_AddItemToArray(cJSON_GetObjectItem(o, "top_logprobs"), top);
    return 0;
}

static cJSON *envelope(const srv_fmt *f, bool chunk) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", f->id);
    cJSON_AddStringToObject(root, "object",
                            f->endpoint == SRV_EP_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                       : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)f->created);
    cJSON_AddStringToObject(root, "model", f->model);
    return root;
}

static cJSON *usage_object(const srv_usage *u) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
    return o;
}

static int sse_emit(srv_buf *out, cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s) return -1;
    int rc = srv_buf_append(out, "data: ", 6) || srv_buf_append(out, s, strlen(s)) || srv_buf_append(out, "\n\n", 2);
    free(s);
    return rc ? -1 : 0;
}

static cJSON *add_str_n(cJSON *obj, const char *name, const char *s, size_t n) {
    char *tmp = tk_strndup(s ? s : "", s ? n : 0);
    cJSON *it = cJSON_AddStringToObject(obj, name, tmp ? tmp : "");
    tk_free(tmp);
    return it;
}

int srv_sse_chunk(const srv_fmt *f, srv_buf *out, int32_t index, const char *text, size_t len, bool role,
                  void *lp, const char *finish, bool with_usage) {
    cJSON *root = envelope(f, true), *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", index);
    if (f->endpoint == SRV_EP_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text || role) add_str_n(d, "content", text, len);
    } else {
        add_str_n(c, "text", text, len);
    }
    if (lp) cJSON_AddItemToObject(c, "logprobs", lp);
    else cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    if (with_usage) cJSON_AddNullToObject(root, "usage");
    return sse_emit(out, root);
}

int srv_sse_usage(const srv_fmt *f, srv_buf *out, const srv_usage *u) {
    cJSON *root = envelope(f, true);
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", usage_object(u));
    return sse_emit(out, root);
}

int srv_sse_done(srv_buf *out) { return srv_buf_append(out, "data: [DONE]\n\n", 14); }

int srv_sse_error(srv_buf *out, const srv_error *e) { return sse_emit(out, error_object(e)); }

char *srv_response_json(const srv_fmt *f, srv_choice_out *ch, int32_t n, const srv_usage *u) {
    cJSON *root = envelope(f, false), *choices = cJSON_AddArrayToObject(root, "choices");
    for (int32_t i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, c);
        cJSON_AddNumberToObject(c, "index", i);
        if (f->endpoint == SRV_EP_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            add_str_n(m, "content", ch[i].text.p, ch[i].text.len);
        } else {
            add_str_n(c, "text", ch[i].text.p, ch[i].text.len);
        }
        if (ch[i].lp) cJSON_AddItemToObject(c, "logprobs", ch[i].lp);
        else cJSON_AddNullToObject(c, "logprobs");
        ch[i].lp = NULL;
        if (ch[i].finish) cJSON_AddStringToObject(c, "finish_reason", ch[i].finish);
        else cJSON_AddNullToObject(c, "finish_reason");
    }
    cJSON_AddItemToObject(root, "usage", usage_object(u));
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}
