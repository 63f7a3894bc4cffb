/* sched: the serving scheduler's public face (see sched.h) — construction, the engine thread's
 * loop, the inbox that sched_submit / sched_abort fill, and the stats snapshot. The step itself
 * is in sched_step.c and per-request state in sched_seq.c.
 * The engine thread sleeps on a condition variable whenever it has neither running nor waiting
 * sequences nor inbox entries; every cross-thread datum lives under one mutex, held only to move
 * entries between the inbox and the engine's lists, never during a forward or an emit. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"
#include "scheduler/sched_internal.h"

/* ---- the engine thread ---- */

/* Moves drained inbox requests to the waiting queue (their first choice carries the prompt). */
static void take_requests(sched *s, sched_req *r) {
    while (r) {
        sched_req *next = r->inbox_next;
        r->inbox_next = NULL;
        sched_seq *q = r->seqs[0];
        q->state = SCHED_SEQ_WAITING;
        sched__list_push_tail(&s->waiting, q);
        for (int32_t c = 1; c < r->n; c++)
            r->seqs[c]->state = SCHED_SEQ_IDLE; /* until the fork */
        r = next;
    }
}

static sched_req *find_req(sched *s, uint64_t id) {
    for (sched_seq *q = s->running.head; q; q = q->next)
        if (q->rq->id == id) return q->rq;
    for (sched_seq *q = s->waiting.head; q; q = q->next)
        if (q->rq->id == id) return q->rq;
    return NULL;
}

static void apply_aborts(sched *s, const uint64_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        sched_req *r = find_req(s, ids[i]);
        if (r) sched__req_abort(s, r);
    }
}

static void abort_all(sched *s) {
    while (s->running.head)
        sched__req_abort(s, s->running.head->rq);
    while (s->waiting.head)
        sched__req_abort(s, s->waiting.head->rq);
}

static void publish_stats(sched *s) {
    sched_stats st = s->st;
    st.running = s->running.n;
    st.waiting = s->waiting.n;
    st.kv_blocks_total = kv_block_n_total(s->bm);
    st.kv_blocks_free = kv_block_n_free(s->bm);
    st.kv_blocks_cached = kv_block_n_evictable(s->bm);
    pthread_mutex_lock(&s->mu);
    s->pub = st;
    pthread_mutex_unlock(&s->mu);
}

static bool has_work(const sched *s) { return s->running.n > 0 || s->waiting.n > 0; }

/* Sleeps until there is something to do; takes the inbox and the abort ids. Returns stop. */
static bool wait_for_work(sched *s, sched_req **reqs, uint64_t **ids, size_t *n_ids) {
    pthread_mutex_lock(&s->mu);
    while (!s->stop && !s->inbox_head && !s->n_aborts && !has_work(s))
        pthread_cond_wait(&s->wake, &s->mu);
    *reqs = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    s->pub.waiting += s->inbox_n; /* keeps sched_submit's queue-full check exact until publish */
    s->inbox_n = 0;
    /* swap the abort buffer with the engine's spare: no copy, no allocation */
    uint64_t *buf = s->aborts;
    size_t cap = s->aborts_cap;
    *n_ids = s->n_aborts;
    s->aborts = s->aborts_spare;
    s->aborts_cap = s->aborts_spare_cap;
    s->n_aborts = 0;
    s->aborts_spare = buf;
    s->aborts_spare_cap = cap;
    *ids = buf;
    bool stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static void *engine_main(void *arg) {
    sched *s = arg;
    for (;;) {
        sched_req *reqs;
        uint64_t *ids;
        size_t n_ids;
        bool stop = wait_for_work(s, &reqs, &ids, &n_ids);
        take_requests(s, reqs);
        apply_aborts(s, ids, n_ids);
        if (stop) {
            abort_all(s);
            publish_stats(s);
            return NULL;
        }
        sched__step(s);
        assert(sched_check_invariants(s));
        publish_stats(s);
    }
}

/* ---- construction ---- */

static int check_params(const sched_params *p, char *err, size_t errlen) {
    if (p->max_seqs < 1 || p->max_batched_tokens < 1 || p->max_waiting < 1) {
        if (err)
            snprintf(err, errlen, "scheduler: max_seqs (%d), max_batched_tokens (%d) and max_waiting (%d) must be >= 1",
                     p->max_seqs, p->max_batched_tokens, p->max_waiting);
        return SCHED_ERR_INVALID;
    }
    return 0;
}

static int alloc_buffers(sched *s) {
    const eng_ctx_params *cp = eng_ctx_params_get(s->ctx);
    s->p.engine = *cp; /* completed: n_blocks, max_ctx */
    s->max_blocks = (cp->max_ctx + cp->block_size - 1) / cp->block_size;
    if (!(s->bm = kv_block_mgr_new(cp->n_blocks)) ||
        !(s->b_tokens = tk_calloc((size_t)s->p.max_batched_tokens, sizeof(int32_t))) ||
        !(s->b_seqs = tk_calloc((size_t)s->p.max_seqs, sizeof(eng_seq_step))) ||
        !(s->b_owner = tk_calloc((size_t)s->p.max_seqs, sizeof(sched_seq *))) ||
        !(s->logits = tk_calloc((size_t)s->p.max_seqs * (size_t)s->n_vocab, sizeof(float))) ||
        !(s->scratch = tk_calloc((size_t)s->n_vocab, sizeof(float))) ||
        !(s->check_refs = tk_calloc((size_t)cp->n_blocks, sizeof(int32_t))))
        return SCHED_ERR_NOMEM;
    return 0;
}

static void free_all(sched *s) {
    while (s->inbox_head) { /* only when the thread never ran */
        sched_req *r = s->inbox_head;
        s->inbox_head = r->inbox_next;
        sched__req_free(r);
    }
    eng_ctx_destroy(s->ctx);
    kv_block_mgr_destroy(s->bm);
    tk_free(s->b_tokens);
    tk_free(s->b_seqs);
    tk_free(s->b_owner);
    tk_free(s->logits);
    tk_free(s->scratch);
    tk_free(s->check_refs);
    tk_free(s->aborts);
    tk_free(s->aborts_spare);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    tk_free(s);
}

int sched_new(const eng_model *m, const sched_params *p, sched_emit_fn emit, void *ud, sched **out, char *err,
              size_t errlen) {
    *out = NULL;
    int rc = check_params(p, err, errlen);
    if (rc) return rc;
    sched *s = tk_calloc(1, sizeof *s);
    if (!s) return SCHED_ERR_NOMEM;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->m = m;
    s->p = *p;
    s->emit = emit;
    s->ud = ud;
    s->n_vocab = (int32_t)eng_model_hparams(m)->n_vocab;
    s->p.engine.max_tokens = p->max_batched_tokens;
    s->p.engine.max_logits = p->max_seqs; /* at most one logits row per sequence and step */
    if ((rc = eng_ctx_new(m, &s->p.engine, &s->ctx, err, errlen)) != 0) goto fail;
    if ((rc = alloc_buffers(s)) != 0) {
        if (err) snprintf(err, errlen, "scheduler: out of memory");
        goto fail;
    }
    publish_stats(s); /* the first snapshot, before the thread owns anything */
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        if (err) snprintf(err, errlen, "scheduler: cannot start the engine thread");
        rc = SCHED_ERR_NOMEM;
        goto fail;
    }
    s->thread_started = true;
    *out = s;
    return 0;
fail:
    free_all(s);
    return rc;
}

void sched_destroy(sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    if (s->thread_started) pthread_join(s->thread, NULL);
    free_all(s);
}

/* ---- any thread ---- */

int sched_submit(sched *s, const sched_request *rq, char *err, size_t errlen) {
    sched_req *r = NULL;
    int rc = sched__req_new(s, rq, &r, err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    if (s->stop) {
        rc = SCHED_ERR_STOPPED;
        if (err) snprintf(err, errlen, "scheduler is shutting down");
    } else if (s->pub.waiting + s->inbox_n >= s->p.max_waiting) {
        rc = SCHED_ERR_FULL;
        if (err) snprintf(err, errlen, "too many queued requests (%d)", s->p.max_waiting);
    } else {
        if (s->inbox_tail)
            s->inbox_tail->inbox_next = r;
        else
            s->inbox_head = r;
        s->inbox_tail = r;
        s->inbox_n++;
        pthread_cond_signal(&s->wake);
        r = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    sched__req_free(r);
    return rc;
}

void sched_abort(sched *s, uint64_t id) {
    pthread_mutex_lock(&s->mu);
    if (s->n_aborts == s->aborts_cap) {
        size_t cap = s->aborts_cap ? s->aborts_cap * 2 : 16;
        uint64_t *p = tk_realloc(s->aborts, cap * sizeof *p);
        if (!p) { /* the request will finish on its own; nothing else to do without memory */
            pthread_mutex_unlock(&s->mu);
            return;
        }
        s->aborts = p;
        s->aborts_cap = cap;
    }
    s->aborts[s->n_aborts++] = id;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

void sched_get_stats(sched *s, sched_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->pub;
    pthread_mutex_unlock(&s->mu);
}

int32_t sched_max_ctx(const sched *s) { return s->p.engine.max_ctx; }
