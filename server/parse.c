/* parse: OpenAI request bodies -> plain C request structs (srv_gen_req), with validation.
 *
 * Unknown fields are ignored; a JSON null counts as absent. Wrong types and out-of-range values
 * are 400 invalid_request_error naming the parameter in "param" (as OpenAI does). Every string
 * that reaches the tokenizer or the stop matcher is checked to be valid UTF-8. cJSON's nesting
 * limit (CJSON_NESTING_LIMIT, 1000) makes deeply nested bodies a parse error, not a stack
 * overflow. Nothing here knows about the model beyond the limits passed in.
 * Thread: pure functions (loop thread). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/tk_mem.h"
#include "server/srv_internal.h"

bool srv_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* Present and not null. */
static const cJSON *field(const cJSON *root, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int get_number(const cJSON *root, const char *name, double lo, double hi, float *out, srv_error *e) {
    const cJSON *v = field(root, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v)) return srv_err(e, 400, name, "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi)
        return srv_err(e, 400, name, "'%s' must be a number in [%g, %g]", name, lo, hi);
    *out = (float)d;
    return 0;
}

static int get_int(const cJSON *root, const char *name, double lo, double hi, int64_t *out, bool *given,
                   srv_error *e) {
    const cJSON *v = field(root, name);
    if (given) *given = v != NULL;
    if (!v) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!cJSON_IsNumber(v) || !isfinite(d) || d != floor(d))
        return srv_err(e, 400, name, "'%s' must be an integer", name);
    if (d < lo || d > hi) return srv_err(e, 400, name, "'%s' must be an integer in [%.0f, %.0f]", name, lo, hi);
    *out = (int64_t)d;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *out, srv_error *e) {
    const cJSON *v = field(root, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return srv_err(e, 400, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Copies a JSON string checked for UTF-8; param names it in errors. */
static int dup_string(const cJSON *v, const char *param, char **out, srv_error *e) {
    if (!cJSON_IsString(v) || !v->valuestring) return srv_err(e, 400, param, "'%s' must be a string", param);
    size_t n = strlen(v->valuestring);
    if (!srv_utf8_valid(v->valuestring, n)) return srv_err(e, 400, param, "'%s' is not valid UTF-8", param);
    if (!(*out = tk_strndup(v->valuestring, n))) return srv_err(e, 500, "", "out of memory");
    return 0;
}

static int parse_stop(const cJSON *root, srv_gen_req *r, srv_error *e) {
    const cJSON *v = field(root, "stop");
    if (!v) return 0;
    if (cJSON_IsString(v)) return dup_string(v, "stop", &r->stops[r->n_stops++], e);
    if (!cJSON_IsArray(v)) return srv_err(e, 400, "stop", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(v) > SRV_MAX_STOPS)
        return srv_err(e, 400, "stop", "'stop' may hold at most %d strings", SRV_MAX_STOPS);
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (dup_string(s, "stop", &r->stops[r->n_stops], e)) return -1;
        r->n_stops++;
    }
    return 0;
}

static int parse_logit_bias(const cJSON *root, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    const cJSON *v = field(root, "logit_bias");
    if (!v) return 0;
    if (!cJSON_IsObject(v)) return srv_err(e, 400, "logit_bias", "'logit_bias' must be an object");
    int n = cJSON_GetArraySize(v);
    if (n > 1024) return srv_err(e, 400, "logit_bias", "'logit_bias' may hold at most 1024 entries");
    if (n == 0) return 0;
    if (!(r->bias = tk_calloc((size_t)n, sizeof *r->bias))) return srv_err(e, 500, "", "out of memory");
    const cJSON *b;
    cJSON_ArrayForEach(b, v) {
        char *end;
        long id = strtol(b->string, &end, 10);
        if (end == b->string || *end || id < 0 || id >= lim->n_vocab)
            return srv_err(e, 400, "logit_bias", "'logit_bias' key '%.32s' is not a token id in [0, %d)",
                           b->string, lim->n_vocab);
        if (!cJSON_IsNumber(b) || !isfinite(b->valuedouble) || fabs(b->valuedouble) > 100)
            return srv_err(e, 400, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
        r->bias[r->n_bias++] = (eng_logit_bias){(int32_t)id, (float)b->valuedouble};
    }
    r->sp.logit_bias = r->bias;
    r->sp.n_logit_bias = r->n_bias;
    return 0;
}

static int parse_prompt(const cJSON *root, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    const cJSON *v = field(root, "prompt");
    if (!v) return srv_err(e, 400, "prompt", "'prompt' is required");
    if (cJSON_IsString(v)) return dup_string(v, "prompt", &r->prompt, e);
    if (!cJSON_IsArray(v)) return srv_err(e, 400, "prompt", "'prompt' must be a string or an array of token ids");
    int n = cJSON_GetArraySize(v);
    if (n == 0) return srv_err(e, 400, "prompt", "'prompt' must not be empty");
    const cJSON *first = cJSON_GetArrayItem(v, 0);
    if (cJSON_IsString(first) && n == 1) return dup_string(first, "prompt", &r->prompt, e);
    if (!cJSON_IsNumber(first))
        return srv_err(e, 400, "prompt", "'prompt' as a list of strings or of token lists (batched prompts) is not "
                                         "supported: send one prompt per request");
    if (!(r->prompt_ids = tk_calloc((size_t)n, sizeof(int32_t)))) return srv_err(e, 500, "", "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, v) {
        double d = cJSON_IsNumber(t) ? t->valuedouble : -1;
        if (d != floor(d) || d < 0 || d >= lim->n_vocab)
            return srv_err(e, 400, "prompt", "'prompt' token ids must be integers in [0, %d)", lim->n_vocab);
        r->prompt_ids[r->n_prompt_ids++] = (int32_t)d;
    }
    return 0;
}

/* content: a string, null (empty), or an array of {"type":"text","text":...} parts. */
static int parse_content(const cJSON *c, char **out, srv_error *e) {
    if (!c || cJSON_IsNull(c)) return (*out = tk_strndup("", 0)) ? 0 : srv_err(e, 500, "", "out of memory");
    if (cJSON_IsString(c)) return dup_string(c, "messages", out, e);
    if (!cJSON_IsArray(c))
        return srv_err(e, 400, "messages", "message 'content' must be a string or an array of text parts");
    srv_buf b = {0};
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
            srv_buf_free(&b);
            return srv_err(e, 400, "messages", "only content parts of type \"text\" with a \"text\" string are supported");
        }
        if (!srv_utf8_valid(text->valuestring, strlen(text->valuestring))) {
            srv_buf_free(&b);
            return srv_err(e, 400, "messages", "message content is not valid UTF-8");
        }
        if (srv_buf_append(&b, text->valuestring, strlen(text->valuestring))) {
            srv_buf_free(&b);
            return srv_err(e, 500, "", "out of memory");
        }
    }
    *out = b.p ? b.p : tk_strndup("", 0);
    return *out ? 0 : srv_err(e, 500, "", "out of memory");
}

static int parse_messages(const cJSON *root, srv_gen_req *r, srv_error *e) {
    const cJSON *v = field(root, "messages");
    if (!v) return srv_err(e, 400, "messages", "'messages' is required");
    if (!cJSON_IsArray(v)) return srv_err(e, 400, "messages", "'messages' must be an array");
    int n = cJSON_GetArraySize(v);
    if (n == 0) return srv_err(e, 400, "messages", "'messages' must not be empty");
    if (!(r->msgs = tk_calloc((size_t)n, sizeof *r->msgs))) return srv_err(e, 500, "", "out of memory");
    const cJSON *m;
    cJSON_ArrayForEach(m, v) {
        if (!cJSON_IsObject(m)) return srv_err(e, 400, "messages", "each message must be an object");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role)) return srv_err(e, 400, "messages", "each message needs a 'role' string");
        const char *rs = role->valuestring;
        if (strcmp(rs, "developer") == 0) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return srv_err(e, 400, "messages", "unknown message role '%.40s' (system, user, assistant)",
                           role->valuestring);
        srv_msg *out = &r->msgs[r->n_msgs++];
        if (!(out->role = tk_strndup(rs, strlen(rs)))) return srv_err(e, 500, "", "out of memory");
        if (parse_content(cJSON_GetObjectItemCaseSensitive(m, "content"), &out->content, e)) return -1;
    }
    return 0;
}

static int parse_logprobs(const cJSON *root, srv_gen_req *r, srv_error *e) {
    int64_t v = 0;
    bool given;
    if (r->endpoint == SRV_EP_COMPLETIONS) {
        const cJSON *lp = field(root, "logprobs");
        if (lp && cJSON_IsBool(lp)) { /* some clients send true: the chosen token only */
            r->logprobs = cJSON_IsTrue(lp);
            return 0;
        }
        if (get_int(root, "logprobs", 0, 5, &v, &given, e)) return -1;
        r->logprobs = given;
        r->sp.top_logprobs = (int32_t)v;
        return 0;
    }
    if (get_bool(root, "logprobs", &r->logprobs, e)) return -1;
    if (get_int(root, "top_logprobs", 0, 20, &v, &given, e)) return -1;
    if (given && v > 0 && !r->logprobs)
        return srv_err(e, 400, "top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    r->sp.top_logprobs = (int32_t)v;
    return 0;
}

static int parse_sampling(const cJSON *root, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    int64_t v;
    bool given;
    if (get_number(root, "temperature", 0, 100, &r->sp.temperature, e) ||
        get_number(root, "top_p", 0, 1, &r->sp.top_p, e) || get_number(root, "min_p", 0, 1, &r->sp.min_p, e) ||
        get_number(root, "presence_penalty", -2, 2, &r->sp.presence_penalty, e) ||
        get_number(root, "frequency_penalty", -2, 2, &r->sp.frequency_penalty, e) ||
        get_number(root, "repetition_penalty", 0.01, 10, &r->sp.repetition_penalty, e))
        return -1;
    if (field(root, "top_p") && r->sp.top_p <= 0)
        return srv_err(e, 400, "top_p", "'top_p' must be in (0, 1]");
    v = 0;
    if (get_int(root, "top_k", -1, 1e9, &v, NULL, e)) return -1;
    r->sp.top_k = v < 0 ? 0 : (int32_t)v;
    const cJSON *seed = field(root, "seed");
    if (seed) { /* any 64-bit integer; negative seeds wrap as in two's complement */
        double d = cJSON_IsNumber(seed) ? seed->valuedouble : NAN;
        if (!isfinite(d) || d != floor(d) || d < -9.2e18 || d > 1.8e19)
            return srv_err(e, 400, "seed", "'seed' must be a 64-bit integer");
        r->sp.seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
    }
    v = 1;
    if (get_int(root, "n", 1, lim->max_n, &v, NULL, e)) return -1;
    r->n = (int32_t)v;
    double hi = lim->max_tokens_limit > 0 ? lim->max_tokens_limit : 1e9;
    const char *names[2] = {"max_completion_tokens", "max_tokens"};
    for (int i = 0; i < 2; i++) {
        if (get_int(root, names[i], 1, hi, &v, &given, e)) return -1;
        if (given && r->max_tokens < 0) {
            r->max_tokens = (int32_t)v;
            r->max_tokens_param = names[i];
        }
    }
    return parse_logit_bias(root, lim, r, e) || parse_logprobs(root, r, e) ? -1 : 0;
}

static int parse_options(const cJSON *root, srv_gen_req *r, srv_error *e) {
    if (get_bool(root, "stream", &r->stream, e) || get_bool(root, "ignore_eos", &r->ignore_eos, e)) return -1;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return srv_err(e, 400, "stream_options", "'stream_options' must be an object");
        if (get_bool(so, "include_usage", &r->include_usage, e)) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            return -1;
        }
    }
    const cJSON *user = field(root, "user");
    if (user && !cJSON_IsString(user)) return srv_err(e, 400, "user", "'user' must be a string");
    const cJSON *model = field(root, "model");
    if (model && dup_string(model, "model", &r->model, e)) return -1;
    return 0;
}

int srv_parse_gen(const char *body, size_t len, int endpoint, const srv_limits *lim, srv_gen_req *r,
                  srv_error *e) {
    memset(r, 0, sizeof *r);
    r->endpoint = endpoint;
    r->max_tokens = -1;
    r->n = 1;
    eng_sampling_params_default(&r->sp);
    r->sp.penalty_last_n = -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return srv_err(e, 400, "", "the request body is not valid JSON (or nested too deeply)");
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        srv_err(e, 400, "", "the request body must be a JSON object");
        goto done;
    }
    if (parse_options(root, r, e) || parse_sampling(root, lim, r, e) || parse_stop(root, r, e)) goto done;
    if (endpoint == SRV_EP_CHAT ? parse_messages(root, r, e) : parse_prompt(root, lim, r, e)) goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) srv_gen_req_free(r);
    return rc;
}

void srv_gen_req_free(srv_gen_req *r) {
    tk_free(r->model);
    tk_free(r->prompt);
    tk_free(r->prompt_ids);
    for (size_t i = 0; i < r->n_msgs; i++) {
        tk_free(r->msgs[i].role);
        tk_free(r->msgs[i].content);
    }
    tk_free(r->msgs);
    tk_free(r->bias);
    for (size_t i = 0; i < r->n_stops; i++) tk_free(r->stops[i]);
    memset(r, 0, sizeof *r);
}

int srv_parse_tokenize(const char *body, size_t len, srv_tokenize_req *out, srv_error *e) {
    memset(out, 0, sizeof *out);
    out->add_special = true;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return srv_err(e, 400, "", "the request body is not valid JSON (or nested too deeply)");
    int rc = -1;
    const cJSON *c = field(root, "content");
    const char *name = "content";
    if (!c) c = field(root, "prompt"), name = "prompt";
    if (!cJSON_IsObject(root)) srv_err(e, 400, "", "the request body must be a JSON object");
    else if (!c) srv_err(e, 400, "content", "'content' is required");
    else if (!get_bool(root, "add_special", &out->add_special, e) && !dup_string(c, name, &out->content, e))
        rc = 0;
    cJSON_Delete(root);
    return rc;
}

int srv_parse_detokenize(const char *body, size_t len, int32_t n_vocab, int32_t **ids, size_t *n, srv_error *e) {
    *ids = NULL;
    *n = 0;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return srv_err(e, 400, "", "the request body is not valid JSON (or nested too deeply)");
    int rc = -1;
    const cJSON *t = field(root, "tokens"), *it;
    if (!cJSON_IsArray(t)) {
        srv_err(e, 400, "tokens", "'tokens' must be an array of token ids");
        goto done;
    }
    if (!(*ids = tk_calloc((size_t)cJSON_GetArraySize(t) + 1, sizeof(int32_t)))) {
        srv_err(e, 500, "", "out of memory");
        goto done;
    }
    cJSON_ArrayForEach(it, t) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (d != floor(d) || d < 0 || d >= n_vocab) {
            srv_err(e, 400, "tokens", "'tokens' must hold integers in [0, %d)", n_vocab);
            goto done;
        }
        (*ids)[(*n)++] = (int32_t)d;
    }
    rc = 0;
done:
    if (rc) {
        tk_free(*ids);
        *ids = NULL;
    }
    cJSON_Delete(root);
    return rc;
}
