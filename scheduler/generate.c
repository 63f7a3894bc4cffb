/* generate: one request, prefill then decode, on an engine context (see generate.h). */
#include "common/tk_time.h"
#include "scheduler/generate.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/tk_mem.h"
#include "scheduler/kv_block.h"

typedef struct {
    const sched_gen_request *rq;
    char *text;      /* generated text so far, (cap) bytes */
    size_t len, cap;
    size_t emitted;  /* bytes already passed to on_text */
    bool stopped;
} text_state;

/* Appends bytes, checks stop strings, and emits what is final. */
static int text_append(text_state *ts, const char *s, size_t n) {
    if (ts->len + n + 1 > ts->cap) {
        size_t cap = (ts->len + n + 1) * 2;
        char *p = tk_realloc(ts->text, cap);
        if (!p) return -1;
        ts->text = p;
        ts->cap = cap;
    }
    memcpy(ts->text + ts->len, s, n);
    ts->len += n;
    size_t safe = ts->len;
    if (ts->rq->n_stops) {
        long at = eng_stop_find(ts->text, ts->len, ts->rq->stops, ts->rq->n_stops, &safe);
        if (at >= 0) {
            ts->len = safe = (size_t)at;
            ts->stopped = true;
        }
    }
    if (safe > ts->emitted && ts->rq->on_text) ts->rq->on_text(ts->rq->ud, ts->text + ts->emitted, safe - ts->emitted);
    if (safe > ts->emitted) ts->emitted = safe;
    return 0;
}

static int ensure_blocks(kv_block_mgr *bm, int32_t *table, int32_t *n_have, int32_t n_pos, int32_t bs) {
    while (*n_have * bs < n_pos) {
        int32_t id = kv_block_alloc(bm);
        if (id < 0) return -1;
        table[(*n_have)++] = id;
    }
    return 0;
}

int sched_generate(eng_ctx *ctx, const eng_model *m, const sched_gen_request *rq,
                   int32_t *tokens, sched_gen_result *res, char *err, size_t errlen) {
    const eng_ctx_params *cp = eng_ctx_params_get(ctx);
    const eng_hparams *hp = eng_model_hparams(m);
    const tok_vocab *voc = eng_model_vocab(m);
    memset(res, 0, sizeof *res);
    res->n_prompt = (int32_t)rq->n_prompt;
    if (rq->n_prompt == 0 || rq->n_prompt + (size_t)rq->max_tokens > (size_t)cp->max_ctx) {
        snprintf(err, errlen, "prompt of %zu tokens + max_tokens %d does not fit the context (%d)",
                 rq->n_prompt, rq->max_tokens, cp->max_ctx);
        return ENG_ERR_INVALID;
    }
    int rc = ENG_ERR_NOMEM;
    size_t n_hist_cap = rq->n_prompt + (size_t)rq->max_tokens + 1;
    int32_t *table = tk_calloc((size_t)cp->n_blocks, sizeof(int32_t));
    int32_t *hist = tk_calloc(n_hist_cap, sizeof(int32_t));
    float *logits = tk_calloc(hp->n_vocab, sizeof(float));
    kv_block_mgr *bm = kv_block_mgr_new(cp->n_blocks);
    eng_sampler *smp = eng_sampler_new(&rq->sampling, (int32_t)hp->n_vocab);
    text_state ts = {rq, NULL, 0, 0, 0, false};
    int32_t n_blk = 0, n_hist = 0;
    if (!table || !hist || !logits || !bm || !smp) {
        snprintf(err, errlen, smp || !bm ? "out of memory" : "bad sampling parameters");
        goto done;
    }
    memcpy(hist, rq->prompt, rq->n_prompt * sizeof(int32_t));
    n_hist = (int32_t)rq->n_prompt;
    double t0 = tk_now_s();
    /* prefill in chunks; only the last chunk asks for logits */
    for (int32_t done_n = 0; done_n < n_hist;) {
        int32_t n = n_hist - done_n < cp->max_tokens ? n_hist - done_n : cp->max_tokens;
        if (ensure_blocks(bm, table, &n_blk, done_n + n, cp->block_size)) goto no_blocks;
        eng_seq_step sq = {table, done_n, n, done_n + n == n_hist ? ENG_LOGITS_LAST : ENG_LOGITS_NONE};
        eng_batch b = {hist + done_n, n, &sq, 1};
        if ((rc = eng_forward(ctx, &b, logits)) < 0) goto engine_err;
        done_n += n;
    }
    res->prefill_s = tk_now_s() - t0;
    t0 = tk_now_s();
    tok_detok dt;
    tok_detok_init(&dt);
    char piece[256];
    int32_t tpl = rq->sampling.top_logprobs;
    for (;;) {
        eng_token_logprob *lp = rq->logprobs ? rq->logprobs + (size_t)res->n_gen * (size_t)(1 + tpl) : NULL;
        int32_t id = eng_sampler_sample(smp, logits, hist, (size_t)n_hist, lp);
        if (!rq->ignore_eos && tok_is_eog(voc, id)) {
            res->finish = SCHED_FINISH_STOP;
            break;
        }
        tokens[res->n_gen++] = id;
        hist[n_hist++] = id;
        int n = tok_detok_push(voc, &dt, id, piece, sizeof piece);
        if (n > 0 && text_append(&ts, piece, (size_t)n < sizeof piece ? (size_t)n : sizeof piece)) goto oom;
        if (ts.stopped) {
            res->finish = SCHED_FINISH_STOP;
            break;
        }
        if (res->n_gen >= rq->max_tokens) {
            res->finish = SCHED_FINISH_LENGTH;
            break;
        }
        if (ensure_blocks(bm, table, &n_blk, n_hist, cp->block_size)) goto no_blocks;
        eng_seq_step sq = {table, n_hist - 1, 1, ENG_LOGITS_LAST};
        eng_batch b = {&hist[n_hist - 1], 1, &sq, 1};
        if ((rc = eng_forward(ctx, &b, logits)) < 0) goto engine_err;
    }
    if (!ts.stopped) {
        int n = tok_detok_flush(&dt, piece, sizeof piece);
        if (n > 0 && text_append(&ts, piece, (size_t)n)) goto oom;
        if (ts.len > ts.emitted && rq->on_text) rq->on_text(rq->ud, ts.text + ts.emitted, ts.len - ts.emitted);
    }
    res->decode_s = tk_now_s() - t0;
    rc = 0;
    goto done;
no_blocks:
    snprintf(err, errlen, "KV cache too small: %d blocks of %d tokens for %d positions", cp->n_blocks,
             cp->block_size, n_hist);
    rc = ENG_ERR_INVALID;
    goto done;
engine_err:
    snprintf(err, errlen, "%s", eng_ctx_last_error(ctx));
    goto done;
oom:
    snprintf(err, errlen, "out of memory");
    rc = ENG_ERR_NOMEM;
done:
    tk_free(ts.text);
    eng_sampler_destroy(smp);
    kv_block_mgr_destroy(bm);
    tk_free(logits);
    tk_free(hist);
    tk_free(table);
    return rc;
}
