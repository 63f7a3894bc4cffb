/* Serving scheduler tests (scheduler/sched.h) on the real stories260K model against llama.cpp's
 * greedy reference: continuous batching, chunked prefill, preemption by recompute, the prefix
 * cache, n > 1 forks, abort, admission errors, stop strings and logprobs (against
 * sched_generate), shutdown with requests in flight; plus the block manager's prefix-cache
 * layer. Events are recorded per request by a collector (mutex + condition variable). */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/tk_mem.h"
#include "scheduler/generate.h"
#include "scheduler/kv_block.h"
#include "scheduler/sched.h"
#include "tests/unit/testutil.h"

enum { NREF = 8, MAXC = 4, MAXTOK = 512, MAXREC = 64 };

/* ---------- reference data ---------- */

typedef struct {
    int32_t prompt[64], gen[32];
    int n_prompt, n_gen;
    char gen_text[512];
} ref_case;

static ref_case refs[NREF];

static void load_refs(void) {
    char path[512], line[65536];
    FILE *f = fopen(tu_shared_path("testdata/reference/stories260K.greedy.jsonl", path, sizeof path), "r");
    ck_assert_msg(f != NULL, "open %s", path);
    int n = 0;
    while (n < NREF && fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        ck_assert_ptr_nonnull(j);
        const cJSON *p = cJSON_GetObjectItem(j, "prompt_ids"), *g = cJSON_GetObjectItem(j, "gen_ids");
        refs[n].n_prompt = cJSON_GetArraySize(p);
        refs[n].n_gen = cJSON_GetArraySize(g);
        for (int i = 0; i < refs[n].n_prompt; i++)
            refs[n].prompt[i] = (int32_t)cJSON_GetArrayItem(p, i)->valuedouble;
        for (int i = 0; i < refs[n].n_gen; i++)
            refs[n].gen[i] = (int32_t)cJSON_GetArrayItem(g, i)->valuedouble;
        snprintf(refs[n].gen_text, sizeof refs[n].gen_text, "%s", cJSON_GetObjectItem(j, "gen_text")->valuestring);
        cJSON_Delete(j);
        n++;
    }
    fclose(f);
    ck_assert_int_eq(n, NREF);
}

static eng_model *model;

static void setup(void) {
    char path[512], err[256] = "";
    load_refs();
    int rc =
        eng_model_load(tu_shared_path("testdata/models/stories260K.gguf", path, sizeof path), &model, err, sizeof err);
    ck_assert_msg(rc == 0, "load: %s", err);
}

static void teardown(void) {
    eng_model_destroy(model);
    model = NULL;
}

/* ---------- the collector ---------- */

typedef struct {
    int32_t n; /* choices expected */
    int32_t toks[MAXC][MAXTOK];
    int32_t n_toks[MAXC];
    char text[MAXC][4096];
    size_t text_len[MAXC];
    float lp[MAXC][MAXTOK]; /* chosen token's logprob */
    int32_t n_top[MAXC];
    int finish[MAXC];
    int32_t u_prompt, u_gen[MAXC], u_cached;
    int n_finished, n_errors, late_events;
    bool done;
    char error[256];
} rec;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec r[MAXREC];
} collector;

static void on_token(rec *r, const sched_event *ev) {
    int c = ev->choice;
    if (r->n_toks[c] < MAXTOK) {
        r->lp[c][r->n_toks[c]] = ev->logprobs ? ev->logprobs[0].logprob : NAN;
        if (ev->logprobs) ck_assert_int_eq(ev->logprobs[0].id, ev->token);
        r->toks[c][r->n_toks[c]++] = ev->token;
    }
    r->n_top[c] = ev->n_top;
}

static void collect(void *ud, const sched_event *ev) {
    collector *col = ud;
    pthread_mutex_lock(&col->mu);
    rec *r = &col->r[ev->id % MAXREC];
    int c = ev->choice;
    if (r->done) r->late_events++;
    if (ev->kind != SCHED_EV_ERROR && (c < 0 || c >= MAXC))
        r->late_events++;
    else if (ev->kind == SCHED_EV_ERROR) {
        r->n_errors++;
        snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "");
        r->done = true;
    } else {
        if (ev->text_len && r->text_len[c] + ev->text_len < sizeof r->text[c]) {
            memcpy(r->text[c] + r->text_len[c], ev->text, ev->text_len);
            r->text_len[c] += ev->text_len;
        }
        if (ev->kind == SCHED_EV_TOKEN && r->finish[c]) r->late_events++; /* TOKEN after FINISH */
        if (ev->kind == SCHED_EV_TOKEN) on_token(r, ev);
        if (ev->kind == SCHED_EV_FINISH) {
            if (r->finish[c]) r->late_events++; /* a second FINISH for one choice */
            r->finish[c] = ev->finish_reason;
            r->u_prompt = ev->n_prompt;
            r->u_gen[c] = ev->n_gen;
            r->u_cached = ev->n_cached_prompt;
            if (++r->n_finished == r->n) r->done = true;
        }
    }
    pthread_cond_broadcast(&col->cv);
    pthread_mutex_unlock(&col->mu);
}

static collector *col_new(void) {
    collector *c = calloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c;
}

static void col_free(collector *c) {
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* Waits until `pred` holds for request id (done, or at least min_tokens on choice 0). */
static bool col_wait(collector *c, uint64_t id, int min_tokens, double timeout_s) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout_s;
    pthread_mutex_lock(&c->mu);
    rec *r = &c->r[id % MAXREC];
    int rc = 0;
    while (rc == 0 && !r->done && (min_tokens <= 0 || r->n_toks[0] < min_tokens))
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    bool ok = r->done || (min_tokens > 0 && r->n_toks[0] >= min_tokens);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* ---------- helpers ---------- */

static sched_params params(int32_t max_seqs, int32_t mbt, int32_t n_blocks, int32_t bs, bool prefix) {
    sched_params p = {.max_seqs = max_seqs, .max_batched_tokens = mbt, .max_waiting = 64, .prefix_cache = prefix};
    eng_ctx_params_default(&p.engine);
    p.engine.n_blocks = n_blocks;
    p.engine.block_size = bs;
    p.engine.max_ctx = 512;
    p.engine.n_threads = 1;
    return p;
}

static sched *mk(const sched_params *p, collector *c) {
    char err[256] = "";
    sched *s = NULL;
    ck_assert_msg(sched_new(model, p, collect, c, &s, err, sizeof err) == 0, "sched_new: %s", err);
    return s;
}

static sched_request greedy_req(uint64_t id, const int32_t *prompt, int n_prompt, int32_t max_tokens) {
    sched_request rq = {
        .id = id, .prompt = prompt, .n_prompt = (size_t)n_prompt, .max_tokens = max_tokens, .n = 1, .ignore_eos = true};
    eng_sampling_params_default(&rq.sampling);
    rq.sampling.temperature = 0;
    return rq;
}

static void submit_ok(sched *s, collector *c, const sched_request *rq) {
    char err[256] = "";
    pthread_mutex_lock(&c->mu);
    memset(&c->r[rq->id % MAXREC], 0, sizeof(rec));
    c->r[rq->id % MAXREC].n = rq->n;
    pthread_mutex_unlock(&c->mu);
    int rc = sched_submit(s, rq, err, sizeof err);
    ck_assert_msg(rc == 0, "submit %llu: %d %s", (unsigned long long)rq->id, rc, err);
}

static void assert_ref_output(collector *c, uint64_t id, int choice, const ref_case *rc) {
    rec *r = &c->r[id % MAXREC];
    ck_assert_msg(r->n_errors == 0, "request %llu: error %s", (unsigned long long)id, r->error);
    ck_assert_int_eq(r->n_toks[choice], rc->n_gen);
    for (int i = 0; i < rc->n_gen; i++)
        ck_assert_msg(r->toks[choice][i] == rc->gen[i], "request %llu choice %d token %d: %d, reference %d",
                      (unsigned long long)id, choice, i, r->toks[choice][i], rc->gen[i]);
    ck_assert_int_eq(r->finish[choice], SCHED_FINISH_LENGTH_LIMIT);
    ck_assert_int_eq(r->u_gen[choice], rc->n_gen);
    ck_assert_int_eq(r->late_events, 0);
}

/* Polls the stats until nothing runs or waits (the snapshot follows the step's events). */
static sched_stats idle_stats(sched *s) {
    sched_stats st;
    for (int i = 0; i < 400; i++) {
        sched_get_stats(s, &st);
        if (st.running == 0 && st.waiting == 0) break;
        usleep(5000);
    }
    return st;
}

/* All 8 reference prompts at once; returns the final stats. */
static sched_stats run_all_refs(const sched_params *p) {
    collector *c = col_new();
    sched *s = mk(p, c);
    for (int i = 0; i < NREF; i++) {
        sched_request rq = greedy_req((uint64_t)i, refs[i].prompt, refs[i].n_prompt, refs[i].n_gen);
        submit_ok(s, c, &rq);
    }
    for (int i = 0; i < NREF; i++)
        ck_assert_msg(col_wait(c, (uint64_t)i, 0, 60), "request %d timed out", i);
    for (int i = 0; i < NREF; i++)
        assert_ref_output(c, (uint64_t)i, 0, &refs[i]);
    sched_stats st = idle_stats(s);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(st.waiting, 0);
    ck_assert_int_eq(st.kv_blocks_free + st.kv_blocks_cached, st.kv_blocks_total);
    sched_destroy(s);
    col_free(c);
    return st;
}

/* ---------- 1-3: batching, chunked prefill, preemption ---------- */

START_TEST(test_all_refs_batched) {
    sched_params p = params(8, 256, 256, 16, true);
    sched_stats st = run_all_refs(&p);
    ck_assert_uint_gt(st.steps_multi_seq, 0);
    ck_assert_uint_eq(st.generated_tokens, NREF * 32);
    ck_assert_uint_eq(st.preemptions, 0);
    uint64_t prompt = 0, hist = 0;
    for (int i = 0; i < NREF; i++)
        prompt += (uint64_t)refs[i].n_prompt;
    for (int i = 0; i < 12; i++)
        hist += st.step_tokens_hist[i];
    ck_assert_uint_eq(st.prompt_tokens, prompt);
    ck_assert_uint_eq(hist, st.steps);
    printf("batched: %llu steps (%llu with >1 sequence), %llu tokens\n", (unsigned long long)st.steps,
           (unsigned long long)st.steps_multi_seq, (unsigned long long)st.step_tokens_sum);
}
END_TEST

START_TEST(test_chunked_prefill) {
    sched_params p = params(8, 8, 256, 16, false);
    sched_stats st = run_all_refs(&p);
    ck_assert_uint_eq(st.step_tokens_hist[4] + st.step_tokens_hist[5], 0); /* never more than 8 tokens */
    ck_assert_uint_gt(st.steps_multi_seq, 0);
}
END_TEST

START_TEST(test_preemption) {
    sched_params p = params(8, 64, 16, 4, true); /* 64 token slots for 8 requests of up to 49 */
    sched_stats st = run_all_refs(&p);
    ck_assert_uint_gt(st.preemptions, 0);
    printf("preemption: %llu preemptions in %llu steps\n", (unsigned long long)st.preemptions,
           (unsigned long long)st.steps);
}
END_TEST

START_TEST(test_too_big_for_pool) {
    sched_params p = params(4, 64, 8, 4, true); /* 32 token slots */
    collector *c = col_new();
    sched *s = mk(&p, c);
    sched_request rq = greedy_req(1, refs[0].prompt, refs[0].n_prompt, 100);
    submit_ok(s, c, &rq);
    sched_request ok = greedy_req(2, refs[1].prompt, refs[1].n_prompt, 20);
    submit_ok(s, c, &ok);
    ck_assert(col_wait(c, 1, 0, 30) && col_wait(c, 2, 0, 30));
    ck_assert_int_eq(c->r[1].n_errors, 1);
    ck_assert_int_eq(c->r[2].n_errors, 0); /* the other request is unaffected */
    ck_assert_int_eq(c->r[2].n_toks[0], 20);
    sched_stats st = idle_stats(s);
    ck_assert_int_eq(st.kv_blocks_free + st.kv_blocks_cached, st.kv_blocks_total);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- 4: prefix cache ---------- */

START_TEST(test_prefix_cache) {
    sched_params p = params(4, 64, 64, 16, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    int32_t prompt[64];
    int n = 0;
    for (int k = 0; k < 2; k++) { /* a 42-token prompt: two reference prompts with 16 tokens of their continuations */
        memcpy(prompt + n, refs[k].prompt, (size_t)refs[k].n_prompt * sizeof(int32_t));
        n += refs[k].n_prompt;
        memcpy(prompt + n, refs[k].gen, 16 * sizeof(int32_t));
        n += 16;
    }
    sched_stats st0, st1, st2;
    sched_get_stats(s, &st0);
    sched_request rq = greedy_req(1, prompt, n, 24);
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 1, 0, 30));
    st1 = idle_stats(s);
    rq.id = 2;
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 2, 0, 30));
    st2 = idle_stats(s);
    ck_assert_int_eq(c->r[1].u_cached, 0);
    ck_assert_int_eq(c->r[2].u_cached, 32); /* two full blocks of 16 */
    ck_assert_uint_eq(st2.prefix_hits - st1.prefix_hits, 32);
    ck_assert_uint_eq(st2.prefix_queries - st1.prefix_queries, (uint64_t)n);
    ck_assert_uint_lt(st2.computed_prompt_tokens - st1.computed_prompt_tokens,
                      st1.computed_prompt_tokens - st0.computed_prompt_tokens);
    ck_assert_int_eq(c->r[2].n_toks[0], 24);
    ck_assert_mem_eq(c->r[1].toks[0], c->r[2].toks[0], 24 * sizeof(int32_t));
    ck_assert_int_gt(st2.kv_blocks_cached, 0);
    ck_assert_int_eq(st2.kv_blocks_free + st2.kv_blocks_cached, st2.kv_blocks_total);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- 5: n > 1 ---------- */

START_TEST(test_n_greedy) {
    sched_params p = params(8, 64, 64, 4, true); /* 5-token prompt: the fork copies a partial block */
    collector *c = col_new();
    sched *s = mk(&p, c);
    sched_request rq = greedy_req(7, refs[0].prompt, refs[0].n_prompt, 32);
    rq.n = 3;
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 7, 0, 30));
    for (int k = 0; k < 3; k++)
        assert_ref_output(c, 7, k, &refs[0]);
    ck_assert_int_eq(c->r[7].u_prompt, refs[0].n_prompt);
    sched_stats st = idle_stats(s);
    ck_assert_uint_eq(st.computed_prompt_tokens, (uint64_t)refs[0].n_prompt); /* prompt computed once */
    ck_assert_int_eq(st.kv_blocks_free + st.kv_blocks_cached, st.kv_blocks_total);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* Runs a temperature-1 request (n choices, seed) and copies its choices' tokens. */
static void run_sampled(const sched_params *p, int32_t n, uint64_t seed, int32_t out[][MAXTOK]) {
    collector *c = col_new();
    sched *s = mk(p, c);
    sched_request rq = greedy_req(3, refs[2].prompt, refs[2].n_prompt, 40);
    rq.sampling.temperature = 1.0f;
    rq.sampling.seed = seed;
    rq.n = n;
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 3, 0, 30));
    for (int k = 0; k < n; k++) {
        ck_assert_int_eq(c->r[3].n_toks[k], 40);
        memcpy(out[k], c->r[3].toks[k], 40 * sizeof(int32_t));
    }
    sched_destroy(s);
    col_free(c);
}

START_TEST(test_n_sampled_reproducible) {
    static int32_t a[MAXC][MAXTOK], b[MAXC][MAXTOK], one[MAXC][MAXTOK];
    sched_params p = params(8, 64, 64, 4, true);
    run_sampled(&p, 3, 42, a);
    run_sampled(&p, 3, 42, b);
    for (int k = 0; k < 3; k++)
        ck_assert_mem_eq(a[k], b[k], 40 * sizeof(int32_t));
    for (int k = 0; k < 3; k++) { /* choice k is the request with seed + k: the fork changes nothing */
        run_sampled(&p, 1, 42 + (uint64_t)k, one);
        ck_assert_mem_eq(a[k], one[0], 40 * sizeof(int32_t));
    }
    bool differ = memcmp(a[0], a[1], 40 * sizeof(int32_t)) || memcmp(a[0], a[2], 40 * sizeof(int32_t));
    ck_assert_msg(differ, "three sampled choices are identical");
}
END_TEST

START_TEST(test_n_with_preemption) {
    sched_params p = params(8, 32, 20, 4, true); /* forks plus 5 more requests in 80 slots */
    collector *c = col_new();
    sched *s = mk(&p, c);
    sched_request rq = greedy_req(10, refs[7].prompt, refs[7].n_prompt, 32);
    rq.n = 3;
    submit_ok(s, c, &rq);
    for (int i = 0; i < 5; i++) {
        sched_request o = greedy_req((uint64_t)i, refs[i].prompt, refs[i].n_prompt, 32);
        submit_ok(s, c, &o);
    }
    ck_assert(col_wait(c, 10, 0, 60));
    for (int i = 0; i < 5; i++)
        ck_assert(col_wait(c, (uint64_t)i, 0, 60));
    for (int k = 0; k < 3; k++)
        assert_ref_output(c, 10, k, &refs[7]);
    for (int i = 0; i < 5; i++)
        assert_ref_output(c, (uint64_t)i, 0, &refs[i]);
    sched_stats st = idle_stats(s);
    ck_assert_uint_gt(st.preemptions, 0);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- 6-7: abort, admission ---------- */

START_TEST(test_abort) {
    sched_params p = params(4, 64, 64, 16, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    sched_request rq = greedy_req(5, refs[0].prompt, refs[0].n_prompt, 400);
    rq.n = 2;
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 5, 4, 30));
    sched_abort(s, 5);
    sched_abort(s, 12345); /* unknown: ignored */
    ck_assert(col_wait(c, 5, 0, 30));
    for (int k = 0; k < 2; k++)
        ck_assert_int_eq(c->r[5].finish[k], SCHED_FINISH_ABORT);
    ck_assert_int_lt(c->r[5].n_toks[0], 400);
    sched_stats st = idle_stats(s);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(st.kv_blocks_free, st.kv_blocks_total - st.kv_blocks_cached);
    sched_abort(s, 5); /* finished: ignored */
    usleep(20000);
    ck_assert_int_eq(c->r[5].late_events, 0);
    sched_destroy(s);
    col_free(c);
}
END_TEST

START_TEST(test_admission_errors) {
    sched_params p = params(1, 64, 64, 16, false);
    p.max_waiting = 2;
    collector *c = col_new();
    sched *s = mk(&p, c);
    ck_assert_int_eq(sched_max_ctx(s), 512);
    char err[256] = "";
    int full_at = -1;
    for (int i = 0; i < 6 && full_at < 0; i++) {
        sched_request rq = greedy_req((uint64_t)(20 + i), refs[0].prompt, refs[0].n_prompt, 400);
        pthread_mutex_lock(&c->mu);
        c->r[(20 + i) % MAXREC].n = 1;
        pthread_mutex_unlock(&c->mu);
        int rc = sched_submit(s, &rq, err, sizeof err);
        if (rc == SCHED_ERR_FULL)
            full_at = i;
        else
            ck_assert_int_eq(rc, 0);
    }
    ck_assert_msg(full_at >= 2 && full_at <= 3, "queue full at submission %d", full_at);
    sched_request bad = greedy_req(40, refs[0].prompt, refs[0].n_prompt, 508); /* 5 + 508 > 512 */
    ck_assert_int_eq(sched_submit(s, &bad, err, sizeof err), SCHED_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "context"));
    bad.max_tokens = 10;
    bad.n = 0;
    ck_assert_int_eq(sched_submit(s, &bad, err, sizeof err), SCHED_ERR_INVALID);
    bad.n = 1;
    bad.sampling.top_logprobs = 50;
    ck_assert_int_eq(sched_submit(s, &bad, err, sizeof err), SCHED_ERR_INVALID);
    bad.sampling.top_logprobs = 0;
    int32_t oov[2] = {1, 100000};
    bad.prompt = oov;
    bad.n_prompt = 2;
    ck_assert_int_eq(sched_submit(s, &bad, err, sizeof err), SCHED_ERR_INVALID);
    bad.n_prompt = 0;
    ck_assert_int_eq(sched_submit(s, &bad, err, sizeof err), SCHED_ERR_INVALID);
    for (int i = 0; i < full_at; i++)
        sched_abort(s, (uint64_t)(20 + i));
    for (int i = 0; i < full_at; i++)
        ck_assert(col_wait(c, (uint64_t)(20 + i), 0, 30));
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- 8: stop strings and logprobs, against sched_generate ---------- */

typedef struct {
    char buf[4096];
    size_t len;
} text_sink;

static void sink(void *ud, const char *t, size_t n) {
    text_sink *ts = ud;
    memcpy(ts->buf + ts->len, t, n);
    ts->len += n;
}

/* The same request through sched_generate: its text, tokens and chosen logprobs. */
static int generate_ref(const sched_request *rq, text_sink *ts, int32_t *toks, eng_token_logprob *lp) {
    eng_ctx_params cp;
    eng_ctx_params_default(&cp);
    cp.max_tokens = 64;
    cp.max_ctx = 512;
    cp.n_blocks = 64;
    cp.n_threads = 1;
    char err[256];
    eng_ctx *ctx = NULL;
    ck_assert_int_eq(eng_ctx_new(model, &cp, &ctx, err, sizeof err), 0);
    sched_gen_request g = {
        rq->prompt, rq->n_prompt, rq->sampling, rq->max_tokens, rq->stops, rq->n_stops, rq->ignore_eos, sink, ts, lp};
    sched_gen_result res;
    ck_assert_msg(sched_generate(ctx, model, &g, toks, &res, err, sizeof err) == 0, "%s", err);
    eng_ctx_destroy(ctx);
    return res.n_gen;
}

static void check_against_generate(sched *s, collector *c, uint64_t id, const char *const *stops, size_t n_stops,
                                   int expect_finish) {
    static eng_token_logprob lp[64 * 6];
    int32_t toks[64];
    text_sink ts = {.len = 0};
    sched_request rq = greedy_req(id, refs[0].prompt, refs[0].n_prompt, 32);
    rq.stops = stops;
    rq.n_stops = n_stops;
    rq.want_logprobs = true;
    rq.sampling.top_logprobs = 5;
    submit_ok(s, c, &rq);
    int n_gen = generate_ref(&rq, &ts, toks, lp);
    ck_assert(col_wait(c, id, 0, 30));
    rec *r = &c->r[id % MAXREC];
    ck_assert_msg(r->text_len[0] == ts.len && memcmp(r->text[0], ts.buf, ts.len) == 0, "text '%.*s' vs '%.*s'",
                  (int)r->text_len[0], r->text[0], (int)ts.len, ts.buf);
    ck_assert_int_eq(r->finish[0], expect_finish);
    ck_assert_int_eq(r->n_toks[0], n_gen);
    ck_assert_int_eq(r->n_top[0], 5);
    for (int i = 0; i < n_gen; i++) {
        ck_assert_int_eq(r->toks[0][i], toks[i]);
        ck_assert_msg(fabsf(r->lp[0][i] - lp[i * 6].logprob) < 1e-5f, "logprob %d: %g vs %g", i, r->lp[0][i],
                      lp[i * 6].logprob);
    }
}

START_TEST(test_stop_and_logprobs) {
    sched_params p = params(4, 64, 64, 16, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    check_against_generate(s, c, 30, NULL, 0, SCHED_FINISH_LENGTH_LIMIT);
    ck_assert_str_eq(c->r[30].text[0], refs[0].gen_text);
    const char *stops1[] = {"girl named", "zzz"}; /* spans the tokens " g" "ir" "l" " named" */
    check_against_generate(s, c, 31, stops1, 2, SCHED_FINISH_STOP_STRING);
    ck_assert_str_eq(c->r[31].text[0], ", there was a little ");
    const char *stops2[] = {"", "park. One"}; /* an empty stop is ignored */
    check_against_generate(s, c, 32, stops2, 2, SCHED_FINISH_STOP_STRING);
    const char *stops3[] = {"saw a big"}; /* a prefix held back at the length limit is flushed */
    check_against_generate(s, c, 33, stops3, 1, SCHED_FINISH_LENGTH_LIMIT);
    ck_assert_str_eq(c->r[33].text[0], refs[0].gen_text);
    sched_destroy(s);
    col_free(c);
}
END_TEST

START_TEST(test_eos_finishes) {
    sched_params p = params(4, 64, 64, 16, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    sched_request rq = greedy_req(8, refs[0].prompt, refs[0].n_prompt, 400);
    rq.ignore_eos = false;
    eng_logit_bias b = {2, 100.0f}; /* force EOS (id 2) as the first token */
    rq.sampling.logit_bias = &b;
    rq.sampling.n_logit_bias = 1;
    submit_ok(s, c, &rq);
    ck_assert(col_wait(c, 8, 0, 30));
    ck_assert_int_eq(c->r[8].finish[0], SCHED_FINISH_STOP_EOS);
    ck_assert_int_eq(c->r[8].n_toks[0], 0);
    ck_assert_int_eq(c->r[8].u_gen[0], 0);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- 9: shutdown with requests in flight ---------- */

START_TEST(test_destroy_in_flight) {
    sched_params p = params(2, 16, 32, 4, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    for (int i = 0; i < NREF; i++) {
        sched_request rq = greedy_req((uint64_t)i, refs[i].prompt, refs[i].n_prompt, 200);
        rq.n = i % 3 + 1;
        submit_ok(s, c, &rq);
    }
    ck_assert(col_wait(c, 0, 3, 30));
    sched_destroy(s);
    for (int i = 0; i < NREF; i++) {
        rec *r = &c->r[i];
        ck_assert_msg(r->done, "request %d has no end (%d of %d choices finished)", i, r->n_finished, r->n);
        ck_assert_int_eq(r->late_events, 0);
        for (int k = 0; r->n_errors == 0 && k < r->n; k++)
            ck_assert_int_ne(r->finish[k], 0);
    }
    col_free(c);
}
END_TEST

START_TEST(test_idle_and_destroy_empty) {
    sched_params p = params(2, 16, 32, 4, true);
    collector *c = col_new();
    sched *s = mk(&p, c);
    usleep(50000); /* the engine sleeps: no steps */
    sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_uint_eq(st.steps, 0);
    ck_assert_int_eq(st.kv_blocks_total, 32);
    ck_assert_int_eq(st.kv_blocks_free, 32);
    sched_destroy(s);
    sched_params bad = p;
    bad.max_seqs = 0;
    char err[256] = "";
    ck_assert_int_eq(sched_new(model, &bad, collect, c, &s, err, sizeof err), SCHED_ERR_INVALID);
    col_free(c);
}
END_TEST

/* Every allocation of sched_new and sched_submit fails in turn: an error, nothing leaked (ASan). */
START_TEST(test_alloc_failures) {
    sched_params p = params(2, 16, 32, 4, true);
    collector *c = col_new();
    char err[256] = "";
    sched *s = NULL;
    int rc = -1;
    for (long n = 0; n < 200 && rc != 0; n++) {
        tk_mem_fail_after(n);
        rc = sched_new(model, &p, collect, c, &s, err, sizeof err);
        tk_mem_fail_after(-1);
        if (rc != 0) ck_assert_ptr_null(s);
    }
    ck_assert_int_eq(rc, 0);
    sched_request rq = greedy_req(1, refs[0].prompt, refs[0].n_prompt, 8);
    rq.n = 2;
    const char *stops[] = {"x", "yz"};
    rq.stops = stops;
    rq.n_stops = 2;
    c->r[1].n = 2;
    rc = -1;
    for (long n = 0; n < 100 && rc != 0; n++) { /* the engine thread is idle: it allocates nothing */
        tk_mem_fail_after(n);
        rc = sched_submit(s, &rq, err, sizeof err);
        tk_mem_fail_after(-1);
        if (rc != 0) ck_assert_int_eq(rc, SCHED_ERR_NOMEM);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert(col_wait(c, 1, 0, 30));
    ck_assert_int_eq(c->r[1].n_toks[1], 8);
    sched_destroy(s);
    col_free(c);
}
END_TEST

/* ---------- the block manager's prefix-cache layer ---------- */

START_TEST(test_kv_cache_lru) {
    kv_block_mgr *m = kv_block_mgr_new(4);
    int32_t toks[4] = {1, 2, 3, 4};
    uint64_t h0 = kv_block_hash(0, toks, 4), h1 = kv_block_hash(h0, toks, 4);
    ck_assert_uint_ne(h0, h1);
    int32_t a = kv_block_alloc(m), b = kv_block_alloc(m);
    ck_assert(kv_block_cache_put(m, a, h0));
    ck_assert(!kv_block_cache_put(m, b, h0)); /* hash taken */
    ck_assert(kv_block_cache_put(m, b, h1));
    kv_block_release(m, b);
    kv_block_release(m, a); /* a released last: b is the least recent */
    ck_assert_int_eq(kv_block_n_free(m), 2);
    ck_assert_int_eq(kv_block_n_evictable(m), 2);
    ck_assert(kv_block_check_invariants(m));
    ck_assert_int_eq(kv_block_cache_get(m, h0), a); /* hit: leaves the LRU */
    ck_assert_int_eq(kv_block_refcount(m, a), 1);
    int32_t x = kv_block_alloc(m), y = kv_block_alloc(m), z = kv_block_alloc(m);
    ck_assert(x >= 0 && y >= 0);
    ck_assert_int_eq(z, b); /* free list dry: b evicted */
    ck_assert_int_eq(kv_block_cache_get(m, h1), -1);
    ck_assert_int_eq(kv_block_alloc(m), -1);
    ck_assert_uint_eq(kv_block_n_evictions(m), 1);
    ck_assert(kv_block_check_invariants(m));
    kv_block_release(m, a);
    kv_block_release(m, x);
    kv_block_release(m, y);
    kv_block_release(m, z);
    ck_assert_int_eq(kv_block_n_free(m) + kv_block_n_evictable(m), 4);
    ck_assert(kv_block_check_invariants(m));
    kv_block_mgr_destroy(m);
}
END_TEST

int main(void) {
    Suite *su = suite_create("sched");
    TCase *tc = tcase_create("sched");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_all_refs_batched);
    tcase_add_test(tc, test_chunked_prefill);
    tcase_add_test(tc, test_preemption);
    tcase_add_test(tc, test_too_big_for_pool);
    tcase_add_test(tc, test_prefix_cache);
    tcase_add_test(tc, test_n_greedy);
    tcase_add_test(tc, test_n_sampled_reproducible);
    tcase_add_test(tc, test_n_with_preemption);
    tcase_add_test(tc, test_abort);
    tcase_add_test(tc, test_admission_errors);
    tcase_add_test(tc, test_stop_and_logprobs);
    tcase_add_test(tc, test_eos_finishes);
    tcase_add_test(tc, test_destroy_in_flight);
    tcase_add_test(tc, test_idle_and_destroy_empty);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(su, tc);
    TCase *tk = tcase_create("kv_cache");
    tcase_add_test(tk, test_kv_cache_lru);
    suite_add_tcase(su, tk);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
