/* sched_seq: the life of a request and its choices inside the scheduler — validation and setup
 * at submit, block tables (prefix-cache walk, registration of computed blocks, copy-on-write
 * fork for n > 1), and the per-token tail of a step: sample, detokenize, hold back text a stop
 * string may still claim, emit TOKEN / FINISH / ERROR events, release everything at the end.
 * Thread: sched__req_new runs on the submitting thread; everything else on the engine thread. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"
#include "scheduler/sched_internal.h"

#define SCHED_MAX_N 128 /* choices per request */

/* ---- intrusive lists ---- */

void sched__list_push_tail(sched_list *l, sched_seq *q) {
    q->prev = l->tail;
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

void sched__list_push_head(sched_list *l, sched_seq *q) {
    q->prev = NULL;
    q->next = l->head;
    if (l->head)
        l->head->prev = q;
    else
        l->tail = q;
    l->head = q;
    l->n++;
}

void sched__list_remove(sched_list *l, sched_seq *q) {
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    l->n--;
}

/* ---- setup and teardown ---- */

static void seq_free(sched_seq *q) {
    if (!q) return;
    eng_sampler_destroy(q->smp);
    tk_free(q->tokens);
    tk_free(q->table);
    tk_free(q->hashes);
    tk_free(q->text);
    tk_free(q);
}

void sched__req_free(sched_req *r) {
    if (!r) return;
    for (int32_t c = 0; r->seqs && c < r->n; c++)
        seq_free(r->seqs[c]);
    for (size_t i = 0; r->stops && i < r->n_stops; i++)
        tk_free(r->stops[i]);
    tk_free(r->stops);
    tk_free(r->seqs);
    tk_free(r->bias);
    tk_free(r->prompt);
    tk_free(r);
}

/* Names the first bad field; mirrors the sampler's own checks so a 400 can say which. */
static const char *sampling_problem(const eng_sampling_params *p, int32_t n_vocab) {
    if (p->top_logprobs < 0 || p->top_logprobs > 20) return "top_logprobs must be 0..20";
    if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p)) return "temperature/top_p/min_p is NaN";
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty)) return "repetition_penalty must be > 0";
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty)) return "penalties must be finite";
    if (p->n_logit_bias && !p->logit_bias) return "logit_bias missing";
    for (size_t i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id < 0 || p->logit_bias[i].id >= n_vocab || isnan(p->logit_bias[i].bias))
            return "logit_bias token id out of range";
    return NULL;
}

static const char *request_problem(const sched *s, const sched_request *rq, char *buf, size_t cap) {
    int32_t max_ctx = s->p.engine.max_ctx;
    if (!rq->prompt || rq->n_prompt == 0) return "empty prompt";
    if (rq->n < 1 || rq->n > SCHED_MAX_N) return "n must be 1..128";
    if (rq->max_tokens < 1) return "max_tokens must be at least 1";
    if (rq->n_prompt + (size_t)rq->max_tokens > (size_t)max_ctx) {
        snprintf(buf, cap, "prompt of %zu tokens + max_tokens %d exceeds the context (%d)", rq->n_prompt,
                 rq->max_tokens, max_ctx);
        return buf;
    }
    for (size_t i = 0; i < rq->n_prompt; i++)
        if (rq->prompt[i] < 0 || rq->prompt[i] >= s->n_vocab) {
            snprintf(buf, cap, "prompt token %zu is %d, outside the vocabulary (%d)", i, rq->prompt[i], s->n_vocab);
            return buf;
        }
    if (rq->n_stops && !rq->stops) return "stops missing";
    return sampling_problem(&rq->sampling, s->n_vocab);
}

static int copy_stops(sched_req *r, const sched_request *rq) {
    if (!rq->n_stops) return 0;
    if (!(r->stops = tk_calloc(rq->n_stops, sizeof(char *)))) return -1;
    r->n_stops = rq->n_stops;
    for (size_t i = 0; i < rq->n_stops; i++) {
        const char *st = rq->stops[i] ? rq->stops[i] : "";
        size_t len = strlen(st);
        if (!(r->stops[i] = tk_strndup(st, len))) return -1;
        if (len > r->max_stop_len) r->max_stop_len = len;
    }
    return 0;
}

static sched_seq *seq_new(const sched *s, sched_req *r, int32_t choice) {
    sched_seq *q = tk_calloc(1, sizeof *q);
    if (!q) return NULL;
    q->rq = r;
    q->choice = choice;
    q->text_cap = r->max_stop_len + 2 * SCHED_PIECE_CAP;
    eng_sampling_params sp = r->sampling;
    sp.seed += (uint64_t)choice;
    if (!(q->tokens = tk_calloc((size_t)r->n_prompt + (size_t)r->max_tokens, sizeof(int32_t))) ||
        !(q->table = tk_calloc((size_t)s->max_blocks, sizeof(int32_t))) ||
        !(q->hashes = tk_calloc((size_t)s->max_blocks, sizeof(uint64_t))) || !(q->text = tk_malloc(q->text_cap)) ||
        !(q->smp = eng_sampler_new(&sp, s->n_vocab))) {
        seq_free(q);
        return NULL;
    }
    memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    q->n_tokens = r->n_prompt;
    tok_detok_init(&q->dt);
    q->row = -1;
    return q;
}

int sched__req_new(const sched *s, const sched_request *rq, sched_req **out, char *err, size_t errlen) {
    char buf[160];
    *out = NULL;
    const char *why = request_problem(s, rq, buf, sizeof buf);
    if (why) {
        if (err) snprintf(err, errlen, "%s", why);
        return SCHED_ERR_INVALID;
    }
    sched_req *r = tk_calloc(1, sizeof *r);
    if (!r) goto oom;
    r->id = rq->id;
    r->n_prompt = (int32_t)rq->n_prompt;
    r->sampling = rq->sampling;
    r->max_tokens = rq->max_tokens;
    r->n = r->n_live = rq->n;
    r->ignore_eos = rq->ignore_eos;
    r->want_logprobs = rq->want_logprobs;
    if (!(r->prompt = tk_calloc(rq->n_prompt, sizeof(int32_t)))) goto oom;
    memcpy(r->prompt, rq->prompt, rq->n_prompt * sizeof(int32_t));
    if (rq->sampling.n_logit_bias) {
        if (!(r->bias = tk_calloc(rq->sampling.n_logit_bias, sizeof *r->bias))) goto oom;
        memcpy(r->bias, rq->sampling.logit_bias, rq->sampling.n_logit_bias * sizeof *r->bias);
    }
    r->sampling.logit_bias = r->bias;
    if (copy_stops(r, rq) || !(r->seqs = tk_calloc((size_t)r->n, sizeof(sched_seq *)))) goto oom;
    for (int32_t c = 0; c < r->n; c++)
        if (!(r->seqs[c] = seq_new(s, r, c))) goto oom;
    *out = r;
    return 0;
oom:
    sched__req_free(r);
    if (err) snprintf(err, errlen, "out of memory");
    return SCHED_ERR_NOMEM;
}

/* ---- block tables and the prefix cache ---- */

void sched__seq_drop_blocks(sched *s, sched_seq *q) {
    while (q->n_blocks > 0)
        kv_block_release(s->bm, q->table[--q->n_blocks]);
    q->n_computed = 0;
    q->n_registered = 0;
}

bool sched__seq_ensure_blocks(sched *s, sched_seq *q, int32_t n_pos) {
    int32_t bs = s->p.engine.block_size;
    while (q->n_blocks * bs < n_pos) {
        int32_t id = kv_block_alloc(s->bm);
        if (id < 0) return false;
        q->table[q->n_blocks++] = id;
    }
    return true;
}

/* Hash of full block i, extending the known chain as needed. */
static uint64_t seq_block_hash(sched_seq *q, int32_t i, int32_t bs) {
    while (q->n_hashed <= i) {
        int32_t k = q->n_hashed;
        q->hashes[k] = kv_block_hash(k ? q->hashes[k - 1] : 0, q->tokens + (size_t)k * bs, bs);
        q->n_hashed++;
    }
    return q->hashes[i];
}

int32_t sched__seq_prefix_lookup(sched *s, sched_seq *q) {
    int32_t bs = s->p.engine.block_size;
    if (!s->p.prefix_cache || q->n_blocks != 0) return 0;
    int32_t max_full = (q->n_tokens - 1) / bs; /* the last token is always computed: it gives the logits */
    for (int32_t i = 0; i < max_full; i++) {
        int32_t id = kv_block_cache_get(s->bm, seq_block_hash(q, i, bs));
        if (id < 0) break;
        q->table[q->n_blocks++] = id;
    }
    q->n_registered = q->n_blocks;
    q->n_computed = q->n_blocks * bs;
    return q->n_computed;
}

void sched__seq_register_blocks(sched *s, sched_seq *q) {
    int32_t bs = s->p.engine.block_size, full = q->n_computed / bs;
    if (!s->p.prefix_cache) return;
    for (int32_t i = q->n_registered; i < full; i++)
        kv_block_cache_put(s->bm, q->table[i], seq_block_hash(q, i, bs)); /* false: an equal block is cached */
    if (full > q->n_registered) q->n_registered = full;
}

/* Gives choice f the blocks of q (prompt computed): full blocks shared, the partial last block
 * copied. False when no block is left for the copy. */
static bool fork_blocks(sched *s, sched_seq *q, sched_seq *f) {
    int32_t bs = s->p.engine.block_size, full = q->n_computed / bs;
    for (int32_t i = 0; i < full; i++) {
        kv_block_ref(s->bm, q->table[i]);
        f->table[f->n_blocks++] = q->table[i];
    }
    if (q->n_computed % bs) {
        int32_t id = kv_block_alloc(s->bm);
        if (id < 0 || eng_kv_copy_block(s->ctx, q->table[full], id) != 0) {
            if (id >= 0) kv_block_release(s->bm, id);
            sched__seq_drop_blocks(s, f);
            return false;
        }
        f->table[f->n_blocks++] = id;
    }
    memcpy(f->hashes, q->hashes, (size_t)q->n_hashed * sizeof(uint64_t));
    f->n_hashed = q->n_hashed;
    f->n_registered = q->n_registered < full ? q->n_registered : full;
    f->n_computed = q->n_computed;
    return true;
}

void sched__req_fork(sched *s, sched_seq *q) {
    sched_req *r = q->rq;
    r->forked = true;
    for (int32_t c = 1; c < r->n; c++) {
        sched_seq *f = r->seqs[c];
        if (fork_blocks(s, q, f)) {
            f->state = SCHED_SEQ_RUNNING;
            sched__list_push_tail(&s->running, f);
        } else { /* no block for the copy: compute the prompt again later (prefix cache helps) */
            f->state = SCHED_SEQ_WAITING;
            sched__list_push_head(&s->waiting, f);
        }
    }
}

/* ---- events ---- */

static void emit(sched *s, const sched_event *ev) {
    if (s->emit) s->emit(s->ud, ev);
}

/* Adds text to q's held-back window and cuts it at a stop string; *safe is how much of the
 * window is final. Returns true on a stop-string match. */
static bool text_add(sched_seq *q, const char *p, size_t n, size_t *safe) {
    const sched_req *r = q->rq;
    if (n > q->text_cap - q->text_len) n = q->text_cap - q->text_len; /* cannot happen: cap has room */
    memmove(q->text + q->text_len, p, n);
    q->text_len += n;
    *safe = q->text_len;
    if (!r->n_stops) return false;
    long at = eng_stop_find(q->text, q->text_len, (const char *const *)r->stops, r->n_stops, safe);
    if (at < 0) return false;
    q->text_len = *safe = (size_t)at;
    return true;
}

static void text_consume(sched_seq *q, size_t n) {
    memmove(q->text, q->text + n, q->text_len - n);
    q->text_len -= n;
}

void sched__seq_finish(sched *s, sched_seq *q, int reason) {
    sched_req *r = q->rq;
    size_t safe = 0;
    if (reason == SCHED_FINISH_STOP_EOS || reason == SCHED_FINISH_LENGTH_LIMIT) { /* flush what was held back */
        char tail[32];
        int n = tok_detok_flush(&q->dt, tail, sizeof tail);
        if (text_add(q, tail, n > 0 ? (size_t)n : 0, &safe)) reason = SCHED_FINISH_STOP_STRING;
        safe = q->text_len;
    }
    sched_event ev = {.kind = SCHED_EV_FINISH,
                      .id = r->id,
                      .choice = q->choice,
                      .text = q->text,
                      .text_len = safe,
                      .token = -1,
                      .finish_reason = reason,
                      .n_prompt = r->n_prompt,
                      .n_gen = q->n_gen,
                      .n_cached_prompt = r->n_cached_prompt};
    emit(s, &ev);
    sched__seq_drop_blocks(s, q);
    if (q->state == SCHED_SEQ_RUNNING)
        sched__list_remove(&s->running, q);
    else if (q->state == SCHED_SEQ_WAITING)
        sched__list_remove(&s->waiting, q);
    q->state = SCHED_SEQ_DONE;
    if (--r->n_live == 0) sched__req_free(r);
}

void sched__req_abort(sched *s, sched_req *r) {
    for (int32_t c = 0, n = r->n; c < n; c++) {
        sched_seq *q = r->seqs[c];
        if (q->state == SCHED_SEQ_DONE) continue;
        bool last = r->n_live == 1;
        sched__seq_finish(s, q, SCHED_FINISH_ABORT);
        if (last) return; /* r is freed */
    }
}

void sched__req_error(sched *s, sched_req *r, const char *msg) {
    sched_event ev = {.kind = SCHED_EV_ERROR,
                      .id = r->id,
                      .token = -1,
                      .finish_reason = SCHED_FINISH_ERROR,
                      .n_prompt = r->n_prompt,
                      .n_cached_prompt = r->n_cached_prompt,
                      .error = msg};
    emit(s, &ev);
    for (int32_t c = 0; c < r->n; c++) {
        sched_seq *q = r->seqs[c];
        sched__seq_drop_blocks(s, q);
        if (q->state == SCHED_SEQ_RUNNING)
            sched__list_remove(&s->running, q);
        else if (q->state == SCHED_SEQ_WAITING)
            sched__list_remove(&s->waiting, q);
        q->state = SCHED_SEQ_DONE;
    }
    sched__req_free(r);
}

bool sched__seq_sample(sched *s, sched_seq *q, float *row) {
    sched_req *r = q->rq;
    const tok_vocab *voc = eng_model_vocab(s->m);
    eng_token_logprob *lp = r->want_logprobs ? q->lp : NULL;
    int32_t id = eng_sampler_sample(q->smp, row, q->tokens, (size_t)q->n_tokens, lp);
    if (!r->ignore_eos && tok_is_eog(voc, id)) {
        sched__seq_finish(s, q, SCHED_FINISH_STOP_EOS);
        return true;
    }
    q->tokens[q->n_tokens++] = id;
    q->n_gen++;
    s->st.generated_tokens++;
    char piece[SCHED_PIECE_CAP];
    int n = tok_detok_push(voc, &q->dt, id, piece, sizeof piece);
    size_t safe;
    bool stopped = text_add(q, piece, n > 0 ? (size_t)n : 0, &safe);
    sched_event ev = {.kind = SCHED_EV_TOKEN,
                      .id = r->id,
                      .choice = q->choice,
                      .text = q->text,
                      .text_len = safe,
                      .token = id,
                      .logprobs = lp,
                      .n_top = lp ? r->sampling.top_logprobs : 0};
    emit(s, &ev);
    text_consume(q, safe);
    if (stopped || q->n_gen >= r->max_tokens) {
        sched__seq_finish(s, q, stopped ? SCHED_FINISH_STOP_STRING : SCHED_FINISH_LENGTH_LIMIT);
        return true;
    }
    return false;
}
