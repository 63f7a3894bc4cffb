/* Unit tests of the HTTP front end's pure parts (no sockets, no model): request parsing and
 * validation (JSON -> srv_gen_req; each bad parameter -> status + "param"), the error object,
 * SSE framing and OpenAI chunk / response shapes, logprobs shapes, and the Prometheus text. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/tk_mem.h"
#include "server/srv_internal.h"

static const srv_limits LIM = {.max_n = 8, .max_tokens_limit = 4096, .n_vocab = 1000};

static int parse(const char *body, int ep, srv_gen_req *r, srv_error *e) {
    return srv_parse_gen(body, strlen(body), ep, &LIM, r, e);
}

START_TEST(test_parse_completions_full) {
    srv_gen_req r;
    srv_error e;
    const char *body = "{\"model\":\"m\",\"prompt\":\"hello\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
                       "\"top_k\":40,\"min_p\":0.05,\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
                       "\"repetition_penalty\":1.1,\"seed\":-1,\"stop\":[\"a\",\"bc\"],\"n\":3,\"logprobs\":2,"
                       "\"logit_bias\":{\"5\":-100,\"7\":3.5},\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"ignore_eos\":true,\"user\":\"u\",\"unknown_field\":[1,{}]}";
    ck_assert_int_eq(parse(body, SRV_EP_COMPLETIONS, &r, &e), 0);
    ck_assert_str_eq(r.model, "m");
    ck_assert_str_eq(r.prompt, "hello");
    ck_assert_int_eq(r.max_tokens, 7);
    ck_assert_float_eq_tol(r.sp.temperature, 0.5, 1e-6);
    ck_assert_float_eq_tol(r.sp.top_p, 0.9, 1e-6);
    ck_assert_int_eq(r.sp.top_k, 40);
    ck_assert_float_eq_tol(r.sp.repetition_penalty, 1.1, 1e-6);
    ck_assert_uint_eq(r.sp.seed, UINT64_MAX);
    ck_assert_uint_eq(r.n_stops, 2);
    ck_assert_str_eq(r.stops[1], "bc");
    ck_assert_int_eq(r.n, 3);
    ck_assert(r.logprobs);
    ck_assert_int_eq(r.sp.top_logprobs, 2);
    ck_assert_uint_eq(r.n_bias, 2);
    ck_assert_ptr_eq(r.sp.logit_bias, r.bias);
    ck_assert_int_eq(r.bias[1].id, 7);
    ck_assert(r.stream && r.include_usage && r.ignore_eos);
    srv_gen_req_free(&r);
}
END_TEST

START_TEST(test_parse_defaults_and_token_prompt) {
    srv_gen_req r;
    srv_error e;
    ck_assert_int_eq(parse("{\"prompt\":[1,2,999],\"temperature\":null}", SRV_EP_COMPLETIONS, &r, &e), 0);
    ck_assert_ptr_null(r.prompt);
    ck_assert_uint_eq(r.n_prompt_ids, 3);
    ck_assert_int_eq(r.prompt_ids[2], 999);
    ck_assert_int_eq(r.max_tokens, -1);
    ck_assert_int_eq(r.n, 1);
    ck_assert(!r.stream && !r.logprobs);
    ck_assert_float_eq_tol(r.sp.temperature, 1.0, 1e-6);
    srv_gen_req_free(&r);
    ck_assert_int_eq(parse("{\"prompt\":[\"one string\"],\"max_completion_tokens\":9}", SRV_EP_COMPLETIONS, &r, &e), 0);
    ck_assert_str_eq(r.prompt, "one string");
    ck_assert_int_eq(r.max_tokens, 9);
    ck_assert_str_eq(r.max_tokens_param, "max_completion_tokens");
    srv_gen_req_free(&r);
}
END_TEST

START_TEST(test_parse_chat) {
    srv_gen_req r;
    srv_error e;
    const char *body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null}],\"logprobs\":true,\"top_logprobs\":5}";
    ck_assert_int_eq(parse(body, SRV_EP_CHAT, &r, &e), 0);
    ck_assert_uint_eq(r.n_msgs, 3);
    ck_assert_str_eq(r.msgs[0].role, "system");
    ck_assert_str_eq(r.msgs[1].content, "ab");
    ck_assert_str_eq(r.msgs[2].content, "");
    ck_assert(r.logprobs);
    ck_assert_int_eq(r.sp.top_logprobs, 5);
    srv_gen_req_free(&r);
}
END_TEST

/* Each bad body and the status and "param" it must give. */
static const struct {
    int ep;
    const char *body, *param;
} BAD[] = {
    {SRV_EP_COMPLETIONS, "{", ""},
    {SRV_EP_COMPLETIONS, "[1]", ""},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":NaN}", ""},
    {SRV_EP_COMPLETIONS, "{}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":5}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":[]}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"]}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":[[1,2]]}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":[1,1000]}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":[1,-1]}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"\xff\"}", "prompt"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"\xed\xa0\x80\"}", "prompt"}, /* UTF-8 encoded surrogate */
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"model\":3}", "model"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":5000}", "max_tokens"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"max_completion_tokens\":2.5}", "max_completion_tokens"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":-0.1}", "temperature"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":1e999}", "temperature"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":0}", "top_p"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"min_p\":2}", "min_p"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"frequency_penalty\":-3}", "frequency_penalty"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":1.5}", "seed"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"n\":0}", "n"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"n\":9}", "n"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":5}", "stop"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":6}", "logprobs"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":[]}", "logit_bias"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"x\":1}}", "logit_bias"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"1000\":1}}", "logit_bias"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":-101}}", "logit_bias"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":1}", "stream"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":\"y\"}}", "stream_options.include_usage"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"user\":1}", "user"},
    {SRV_EP_COMPLETIONS, "{\"prompt\":\"x\",\"ignore_eos\":\"no\"}", "ignore_eos"},
    {SRV_EP_CHAT, "{}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":{}}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[1]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}", "messages"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":2}", "logprobs"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", "top_logprobs"},
    {SRV_EP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}",
     "top_logprobs"},
};

START_TEST(test_parse_bad) {
    srv_gen_req r;
    srv_error e;
    memset(&e, 0, sizeof e);
    int rc = parse(BAD[_i].body, BAD[_i].ep, &r, &e);
    ck_assert_msg(rc == -1, "accepted: %s", BAD[_i].body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.type, "invalid_request_error");
    ck_assert_msg(strcmp(e.param, BAD[_i].param) == 0, "%s: param '%s', want '%s'", BAD[_i].body, e.param,
                  BAD[_i].param);
    ck_assert(e.message[0]);
}
END_TEST

START_TEST(test_parse_deep_nesting) {
    size_t n = 10000;
    char *body = malloc(2 * n + 1);
    memset(body, '[', n);
    memset(body + n, ']', n);
    body[2 * n] = 0;
    srv_gen_req r;
    srv_error e;
    ck_assert_int_eq(parse(body, SRV_EP_COMPLETIONS, &r, &e), -1);
    ck_assert_int_eq(e.status, 400);
    free(body);
}
END_TEST

START_TEST(test_parse_oom_cleans_up) {
    const char *body = "{\"prompt\":\"hello\",\"stop\":[\"a\",\"b\"],\"logit_bias\":{\"5\":1}}";
    for (long k = 0; k < 40; k++) {
        srv_gen_req r;
        srv_error e;
        tk_mem_fail_after(k);
        int rc = parse(body, SRV_EP_COMPLETIONS, &r, &e);
        tk_mem_fail_after(-1);
        if (rc == 0) srv_gen_req_free(&r);
        else ck_assert_int_ge(e.status, 400);
    }
}
END_TEST

START_TEST(test_tokenize_bodies) {
    srv_tokenize_req t;
    srv_error e;
    const char *b = "{\"prompt\":\"hi\",\"add_special\":false}";
    ck_assert_int_eq(srv_parse_tokenize(b, strlen(b), &t, &e), 0);
    ck_assert_str_eq(t.content, "hi");
    ck_assert(!t.add_special);
    tk_free(t.content);
    ck_assert_int_eq(srv_parse_tokenize("{}", 2, &t, &e), -1);
    ck_assert_str_eq(e.param, "content");
    int32_t *ids;
    size_t n;
    b = "{\"tokens\":[1,2,3]}";
    ck_assert_int_eq(srv_parse_detokenize(b, strlen(b), 10, &ids, &n, &e), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[2], 3);
    tk_free(ids);
    b = "{\"tokens\":[1,20]}";
    ck_assert_int_eq(srv_parse_detokenize(b, strlen(b), 10, &ids, &n, &e), -1);
    ck_assert_str_eq(e.param, "tokens");
}
END_TEST

START_TEST(test_utf8) {
    ck_assert(srv_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
    ck_assert(!srv_utf8_valid("\xc0\xaf", 2));         /* overlong */
    ck_assert(!srv_utf8_valid("\xe2\x82", 2));         /* truncated */
    ck_assert(!srv_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    srv_buf b = {0};
    ck_assert_int_eq(srv_utf8_sanitize(&b, "a\xffz", 3), 0);
    ck_assert_str_eq(b.p, "a\xef\xbf\xbdz");
    srv_buf_free(&b);
}
END_TEST

START_TEST(test_error_json) {
    srv_error e;
    srv_err(&e, 400, "temperature", "'%s' must be a number", "temperature");
    char *s = srv_error_json(&e);
    cJSON *j = cJSON_Parse(s), *o = cJSON_GetObjectItem(j, "error");
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(cJSON_GetArraySize(o), 4);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "message")->valuestring, "'temperature' must be a number");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "type")->valuestring, "invalid_request_error");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "param")->valuestring, "temperature");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "code")));
    cJSON_Delete(j);
    free(s);
    srv_err(&e, 401, NULL, "bad key");
    e.code = "invalid_api_key";
    s = srv_error_json(&e);
    j = cJSON_Parse(s);
    o = cJSON_GetObjectItem(j, "error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "param")));
    ck_assert_str_eq(cJSON_GetObjectItem(o, "code")->valuestring, "invalid_api_key");
    ck_assert_str_eq(cJSON_GetObjectItem(o, "type")->valuestring, "authentication_error");
    cJSON_Delete(j);
    free(s);
}
END_TEST

/* Splits SSE text into its data payloads; checks the framing on the way. */
static int sse_split(const char *text, char out[][1024], int max) {
    int n = 0;
    while (*text) {
        ck_assert_msg(strncmp(text, "data: ", 6) == 0, "bad frame: %s", text);
        const char *end = strstr(text, "\n\n");
        ck_assert_ptr_nonnull(end);
        ck_assert_int_lt(n, max);
        size_t len = (size_t)(end - text - 6);
        memcpy(out[n], text + 6, len);
        out[n++][len] = 0;
        text = end + 2;
    }
    return n;
}

START_TEST(test_sse_chat_stream) {
    srv_fmt f = {SRV_EP_CHAT, "chatcmpl-1", 1700000000, "m", NULL};
    srv_buf b = {0};
    srv_sse_chunk(&f, &b, 0, "", 0, true, NULL, NULL, true);
    srv_sse_chunk(&f, &b, 0, "Hi \"x\"\n", 7, false, NULL, NULL, true);
    srv_sse_chunk(&f, &b, 0, NULL, 0, false, NULL, "stop", true);
    srv_usage u = {5, 3, 2};
    srv_sse_usage(&f, &b, &u);
    srv_sse_done(&b);
    char ev[8][1024];
    int n = sse_split(b.p, ev, 8);
    ck_assert_int_eq(n, 5);
    ck_assert_str_eq(ev[4], "[DONE]");
    cJSON *j = cJSON_Parse(ev[0]);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion.chunk");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, "chatcmpl-1");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "role")->valuestring, "assistant");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    cJSON_Delete(j);
    j = cJSON_Parse(ev[1]);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "content")->valuestring, "Hi \"x\"\n");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
    cJSON_Delete(j);
    j = cJSON_Parse(ev[2]);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(c0, "delta")), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON_Delete(j);
    j = cJSON_Parse(ev[3]);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 0);
    cJSON *us = cJSON_GetObjectItem(j, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(us, "total_tokens")->valueint, 8);
    cJSON_Delete(j);
    srv_buf_free(&b);
}
END_TEST

START_TEST(test_sse_error_and_completion_chunk) {
    srv_fmt f = {SRV_EP_COMPLETIONS, "cmpl-1", 1, "m", NULL};
    srv_buf b = {0};
    void *lp = srv_logprobs_new(SRV_EP_COMPLETIONS);
    eng_token_logprob lps[3] = {{7, -0.5f}, {7, -0.5f}, {9, -1.5f}};
    srv_logprobs_add(&f, lp, lps, 2, 4);
    srv_sse_chunk(&f, &b, 1, "ab", 2, false, lp, NULL, false);
    srv_error e;
    srv_err(&e, 503, "", "shutting down");
    srv_sse_error(&b, &e);
    char ev[4][1024];
    ck_assert_int_eq(sse_split(b.p, ev, 4), 2);
    cJSON *j = cJSON_Parse(ev[0]);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "usage"));
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(c, "index")->valueint, 1);
    ck_assert_str_eq(cJSON_GetObjectItem(c, "text")->valuestring, "ab");
    cJSON *l = cJSON_GetObjectItem(c, "logprobs");
    ck_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "tokens"), 0)->valuestring, "<7>");
    ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "text_offset"), 0)->valueint, 4);
    cJSON *top = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 0);
    ck_assert_int_eq(cJSON_GetArraySize(top), 2);
    ck_assert_double_eq_tol(cJSON_GetObjectItem(top, "<9>")->valuedouble, -1.5, 1e-6);
    cJSON_Delete(j);
    j = cJSON_Parse(ev[1]);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message")->valuestring, "shutting down");
    cJSON_Delete(j);
    srv_buf_free(&b);
}
END_TEST

START_TEST(test_response_json) {
    srv_fmt f = {SRV_EP_CHAT, "chatcmpl-2", 1, "m", NULL};
    srv_choice_out ch[2] = {0};
    srv_buf_append(&ch[0].text, "Paris", 5);
    ch[0].finish = "stop";
    ch[1].finish = "length";
    ch[1].lp = srv_logprobs_new(SRV_EP_CHAT);
    eng_token_logprob lps[2] = {{3, -0.1f}, {3, -0.1f}};
    srv_logprobs_add(&f, ch[1].lp, lps, 1, 0);
    srv_usage u = {10, 4, 0};
    char *s = srv_response_json(&f, ch, 2, &u);
    cJSON *j = cJSON_Parse(s);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *m = cJSON_GetObjectItem(c0, "message");
    ck_assert_str_eq(cJSON_GetObjectItem(m, "role")->valuestring, "assistant");
    ck_assert_str_eq(cJSON_GetObjectItem(m, "content")->valuestring, "Paris");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "logprobs")));
    cJSON *c1 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1);
    ck_assert_str_eq(cJSON_GetObjectItem(c1, "finish_reason")->valuestring, "length");
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c1, "logprobs"), "content");
    cJSON *e0 = cJSON_GetArrayItem(content, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(e0, "token")->valuestring, "<3>");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "bytes")), 3);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "top_logprobs")), 1);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint, 14);
    cJSON_Delete(j);
    free(s);
    srv_buf_free(&ch[0].text);
    srv_buf_free(&ch[1].text);
}
END_TEST

START_TEST(test_finish_reason) {
    ck_assert_str_eq(srv_finish_reason(SCHED_FINISH_STOP_EOS), "stop");
    ck_assert_str_eq(srv_finish_reason(SCHED_FINISH_STOP_STRING), "stop");
    ck_assert_str_eq(srv_finish_reason(SCHED_FINISH_LENGTH_LIMIT), "length");
    ck_assert_ptr_null(srv_finish_reason(SCHED_FINISH_ABORT));
}
END_TEST

/* Value of the first sample line that starts with `prefix` (name plus labels). */
static double sample(const char *text, const char *prefix) {
    size_t n = strlen(prefix);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, prefix, n) == 0 && l[n] == ' ') return strtod(l + n + 1, NULL);
    ck_abort_msg("no sample %s", prefix);
    return NAN;
}

START_TEST(test_metrics_text) {
    srv_metrics m;
    srv_metrics_init(&m);
    srv_metrics_count_status(&m, 200);
    srv_metrics_count_status(&m, 200);
    srv_metrics_count_status(&m, 400);
    srv_hist_observe(&m.ttft, 0.003);
    srv_hist_observe(&m.ttft, 0.2);
    srv_hist_observe(&m.ttft, 1000);
    sched_stats st = {0};
    st.running = 3;
    st.waiting = 1;
    st.kv_blocks_total = 100;
    st.kv_blocks_free = 25;
    st.steps = 10;
    st.steps_multi_seq = 4;
    st.step_tokens_hist[0] = 6; /* 1 token */
    st.step_tokens_hist[3] = 3; /* 5..8 */
    st.step_tokens_hist[11] = 1; /* > 1024 */
    st.step_tokens_sum = 2000;
    st.prefix_hits = 32;
    st.preemptions = 2;
    srv_buf b = {0};
    ck_assert_int_eq(srv_metrics_render(&m, &st, &b), 0);
    const char *t = b.p;
    ck_assert_double_eq(sample(t, "tokd_requests_total{status=\"200\"}"), 2);
    ck_assert_double_eq(sample(t, "tokd_requests_total{status=\"400\"}"), 1);
    ck_assert_double_eq(sample(t, "tokd_time_to_first_token_seconds_bucket{le=\"0.005\"}"), 1);
    ck_assert_double_eq(sample(t, "tokd_time_to_first_token_seconds_bucket{le=\"0.25\"}"), 2);
    ck_assert_double_eq(sample(t, "tokd_time_to_first_token_seconds_bucket{le=\"80\"}"), 2);
    ck_assert_double_eq(sample(t, "tokd_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 3);
    ck_assert_double_eq(sample(t, "tokd_time_to_first_token_seconds_count"), 3);
    ck_assert_double_eq_tol(sample(t, "tokd_time_to_first_token_seconds_sum"), 1000.203, 1e-6);
    ck_assert_double_eq(sample(t, "tokd_inter_token_latency_seconds_count"), 0);
    ck_assert_double_eq(sample(t, "tokd_e2e_request_latency_seconds_count"), 0);
    ck_assert_double_eq(sample(t, "tokd_requests_running"), 3);
    ck_assert_double_eq(sample(t, "tokd_requests_waiting"), 1);
    ck_assert_double_eq_tol(sample(t, "tokd_kv_cache_usage_ratio"), 0.75, 1e-9);
    ck_assert_double_eq(sample(t, "tokd_prefix_cache_hits_total"), 32);
    ck_assert_double_eq(sample(t, "tokd_prefix_cache_queries_total"), 0);
    ck_assert_double_eq(sample(t, "tokd_preemptions_total"), 2);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_bucket{le=\"1\"}"), 6);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_bucket{le=\"4\"}"), 6);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_bucket{le=\"8\"}"), 9);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_bucket{le=\"1024\"}"), 9);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_bucket{le=\"+Inf\"}"), 10);
    ck_assert_double_eq(sample(t, "tokd_step_batch_tokens_sum"), 2000);
    ck_assert_double_eq(sample(t, "tokd_steps_total"), 10);
    ck_assert_double_eq(sample(t, "tokd_steps_multi_seq_total"), 4);
    ck_assert_double_eq(sample(t, "tokd_prompt_tokens_total"), 0);
    ck_assert_double_eq(sample(t, "tokd_generation_tokens_total"), 0);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE tokd_time_to_first_token_seconds histogram\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE tokd_steps_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE tokd_requests_running gauge\n"));
    /* every line is a comment or "name{labels} value" */
    for (const char *l = t; *l; l = strchr(l, '\n') + 1) {
        if (*l == '#') continue;
        ck_assert_msg(strncmp(l, "tokd_", 5) == 0, "bad line: %.60s", l);
        const char *sp = strchr(l, ' '), *nl = strchr(l, '\n');
        ck_assert(sp && nl && sp < nl);
    }
    srv_buf_free(&b);
}
END_TEST

static Suite *server_suite(void) {
    Suite *s = suite_create("server");
    TCase *tp = tcase_create("parse");
    tcase_add_test(tp, test_parse_completions_full);
    tcase_add_test(tp, test_parse_defaults_and_token_prompt);
    tcase_add_test(tp, test_parse_chat);
    tcase_add_loop_test(tp, test_parse_bad, 0, (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_test(tp, test_parse_deep_nesting);
    tcase_add_test(tp, test_parse_oom_cleans_up);
    tcase_add_test(tp, test_tokenize_bodies);
    tcase_add_test(tp, test_utf8);
    suite_add_tcase(s, tp);
    TCase *tf = tcase_create("format");
    tcase_add_test(tf, test_error_json);
    tcase_add_test(tf, test_sse_chat_stream);
    tcase_add_test(tf, test_sse_error_and_completion_chunk);
    tcase_add_test(tf, test_response_json);
    tcase_add_test(tf, test_finish_reason);
    tcase_add_test(tf, test_metrics_text);
    suite_add_tcase(s, tf);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(server_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
