/* sched_step: one scheduling iteration (see sched.h for the policy). No phases: each running
 * sequence has tokens it wants computed (one for a decode, a chunk for a prompt or a recompute)
 * and the step hands out the token budget — decodes first, then prompt chunks of running
 * sequences, then new admissions from the waiting queue. Blocks are allocated in running-list
 * order; when the pool runs dry the newest running sequence (the list's tail) is preempted, so a
 * victim is never one already placed in this step. Then one eng_forward over the ragged batch,
 * and each sequence that reached its last wanted token samples.
 * Thread: engine thread. Allocates nothing: the batch arrays are sized in sched_new. */
#include <stdio.h>
#include <string.h>

#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "scheduler/sched_internal.h"

static int32_t wanted(const sched_seq *q) { return q->n_tokens - q->n_computed; }

/* Token grants for running sequences: one per decode first, then prompt/recompute chunks. */
static void plan_running(sched *s, int32_t *budget, int32_t *n_sched) {
    for (sched_seq *q = s->running.head; q; q = q->next) {
        q->grant = 0;
        q->row = -1;
    }
    for (sched_seq *q = s->running.head; q && *budget > 0 && *n_sched < s->p.max_seqs; q = q->next)
        if (wanted(q) == 1) {
            q->grant = 1;
            (*budget)--;
            (*n_sched)++;
        }
    for (sched_seq *q = s->running.head; q && *budget > 0 && *n_sched < s->p.max_seqs; q = q->next)
        if (wanted(q) > 1) {
            q->grant = wanted(q) < *budget ? wanted(q) : *budget;
            *budget -= q->grant;
            (*n_sched)++;
        }
}

/* Preemption by recompute: blocks dropped, sequence back at the front of the waiting queue with
 * its tokens, sampler and text state intact. */
static void preempt(sched *s, sched_seq *q, int32_t *budget, int32_t *n_sched) {
    if (q->grant) {
        *budget += q->grant;
        (*n_sched)--;
        q->grant = 0;
    }
    sched__seq_drop_blocks(s, q);
    sched__list_remove(&s->running, q);
    q->state = SCHED_SEQ_WAITING;
    sched__list_push_head(&s->waiting, q);
    s->st.preemptions++;
    s->preempted_this_step = true;
}

static void too_big(sched *s, sched_seq *q) {
    char msg[160];
    snprintf(msg, sizeof msg, "request needs more KV cache than the whole pool (%d blocks of %d tokens)",
             s->p.engine.n_blocks, s->p.engine.block_size);
    sched__req_error(s, q->rq, msg);
}

/* Blocks for every granted running sequence, preempting from the tail when the pool is dry. */
static void alloc_running(sched *s, int32_t *budget, int32_t *n_sched) {
    sched_seq *q = s->running.head;
    while (q) {
        if (q->grant == 0) {
            q = q->next;
            continue;
        }
        while (!sched__seq_ensure_blocks(s, q, q->n_computed + q->grant)) {
            sched_seq *victim = s->running.tail;
            if (victim != q) {
                preempt(s, victim, budget, n_sched);
                continue;
            }
            if (s->running.n == 1)
                too_big(s, q); /* alone and still short: it can never fit */
            else
                preempt(s, q, budget, n_sched);
            return; /* q was the tail: nothing after it */
        }
        q = q->next;
    }
}

/* First admission of a request: its prompt and prefix-cache figures. */
static void count_admission(sched *s, sched_seq *q, int32_t hit) {
    sched_req *r = q->rq;
    if (r->counted) return;
    r->counted = true;
    r->n_cached_prompt = hit;
    s->st.prompt_tokens += (uint64_t)r->n_prompt;
    if (s->p.prefix_cache) {
        s->st.prefix_queries += (uint64_t)r->n_prompt;
        s->st.prefix_hits += (uint64_t)hit;
    }
}

/* Moves waiting sequences to running while budget, max_seqs and blocks allow. No preemption
 * for admissions: a waiting sequence that does not fit waits (and holds nothing). */
static void admit_waiting(sched *s, int32_t *budget, int32_t *n_sched) {
    while (s->waiting.head && *budget > 0 && *n_sched < s->p.max_seqs && s->running.n < s->p.max_seqs) {
        sched_seq *q = s->waiting.head;
        int32_t hit = sched__seq_prefix_lookup(s, q);
        int32_t g = wanted(q) < *budget ? wanted(q) : *budget;
        if (!sched__seq_ensure_blocks(s, q, q->n_computed + g)) {
            if (s->running.n == 0) { /* everything else is free or evictable: it can never fit */
                too_big(s, q);
                continue;
            }
            sched__seq_drop_blocks(s, q);
            return;
        }
        count_admission(s, q, hit);
        sched__list_remove(&s->waiting, q);
        q->state = SCHED_SEQ_RUNNING;
        sched__list_push_tail(&s->running, q);
        q->grant = g;
        q->row = -1;
        *budget -= g;
        (*n_sched)++;
    }
}

/* Lays the granted sequences out as one ragged batch; returns the token count. */
static int32_t build_batch(sched *s, int32_t *n_seqs) {
    int32_t t = 0, n = 0, rows = 0;
    for (sched_seq *q = s->running.head; q; q = q->next) {
        if (q->grant == 0) continue;
        bool last = q->n_computed + q->grant == q->n_tokens; /* only the last chunk asks for logits */
        memcpy(s->b_tokens + t, q->tokens + q->n_computed, (size_t)q->grant * sizeof(int32_t));
        s->b_seqs[n] = (eng_seq_step){q->table, q->n_computed, q->grant, last ? ENG_LOGITS_LAST : ENG_LOGITS_NONE};
        s->b_owner[n++] = q;
        q->row = last ? rows++ : -1;
        t += q->grant;
    }
    *n_seqs = n;
    return t;
}

/* eng_forward failed: every request in the batch ends with an ERROR event. */
static void fail_batch(sched *s, int32_t n_seqs, const char *msg) {
    for (int32_t i = 0; i < n_seqs; i++)
        s->b_owner[i]->rq->failed = true;
    for (bool again = true; again;) { /* erroring frees requests: rescan after each */
        again = false;
        for (sched_seq *q = s->running.head; q; q = q->next)
            if (q->rq->failed) {
                sched__req_error(s, q->rq, msg);
                again = true;
                break;
            }
    }
}

/* After the forward: advance, register full blocks, and sample where logits came back. */
static void finish_batch(sched *s, int32_t n_seqs) {
    for (int32_t i = 0; i < n_seqs; i++) {
        sched_seq *q = s->b_owner[i];
        int32_t n_prompt = q->rq->n_prompt, from = q->n_computed;
        if (from < n_prompt)
            s->st.computed_prompt_tokens +=
                (uint64_t)((from + q->grant < n_prompt ? from + q->grant : n_prompt) - from);
        q->n_computed += q->grant;
        q->grant = 0;
        sched__seq_register_blocks(s, q);
        if (q->row < 0) continue;
        float *row = s->logits + (size_t)q->row * (size_t)s->n_vocab;
        if (q->rq->n > 1 && !q->rq->forked) { /* prompt done: fork the other choices off it */
            sched_req *r = q->rq;
            sched__req_fork(s, q);
            for (int32_t c = 1; c < r->n; c++)
                if (r->seqs[c]->state == SCHED_SEQ_RUNNING) {
                    memcpy(s->scratch, row, (size_t)s->n_vocab * sizeof(float));
                    sched__seq_sample(s, r->seqs[c], s->scratch);
                }
        }
        sched__seq_sample(s, q, row);
    }
}

static void count_step(sched *s, int32_t n_tokens, int32_t n_seqs) {
    int bin = 0;
    while (bin < 11 && (1 << bin) < n_tokens)
        bin++; /* bin i: (2^(i-1), 2^i]; bin 11: > 1024 */
    s->st.steps++;
    s->st.steps_multi_seq += n_seqs > 1;
    s->st.step_tokens_hist[bin]++;
    s->st.step_tokens_sum += (uint64_t)n_tokens;
}

int32_t sched__step(sched *s) {
    int32_t budget = s->p.max_batched_tokens, n_sched = 0, n_seqs = 0;
    s->preempted_this_step = false;
    plan_running(s, &budget, &n_sched);
    alloc_running(s, &budget, &n_sched);
    if (!s->preempted_this_step) admit_waiting(s, &budget, &n_sched);
    int32_t n_tokens = build_batch(s, &n_seqs);
    if (n_tokens == 0) return 0;
    eng_batch b = {s->b_tokens, n_tokens, s->b_seqs, n_seqs};
    int rc = eng_forward(s->ctx, &b, s->logits);
    if (rc < 0) {
        TK_ERROR("sched: forward failed: %s", eng_ctx_last_error(s->ctx));
        fail_batch(s, n_seqs, eng_ctx_last_error(s->ctx));
        return 0;
    }
    count_step(s, n_tokens, n_seqs);
    finish_batch(s, n_seqs);
    return n_tokens;
}

/* ---- debug invariants ---- */

static bool seq_ok(const sched *s, const sched_seq *q, sched_seq_state want) {
    int32_t bs = s->p.engine.block_size;
    if (q->state != want || q->n_blocks > s->max_blocks || q->n_registered > q->n_blocks ||
        q->n_registered > q->n_hashed || q->n_computed > q->n_tokens)
        return false;
    if (want == SCHED_SEQ_WAITING) return q->n_blocks == 0 && q->n_computed == 0;
    if (q->n_blocks * bs < q->n_computed || q->n_computed >= q->n_tokens) return false; /* running: wants a token */
    for (int32_t i = 0; i < q->n_blocks; i++) {
        if (q->table[i] < 0 || q->table[i] >= s->p.engine.n_blocks) return false;
        s->check_refs[q->table[i]]++;
    }
    return true;
}

bool sched_check_invariants(const sched *s) {
    if (!kv_block_check_invariants(s->bm)) return false;
    memset(s->check_refs, 0, (size_t)s->p.engine.n_blocks * sizeof(int32_t));
    int32_t n = 0;
    for (const sched_seq *q = s->running.head; q; q = q->next, n++)
        if (!seq_ok(s, q, SCHED_SEQ_RUNNING) || (q->next && q->next->prev != q)) return false;
    if (n != s->running.n) return false;
    n = 0;
    for (const sched_seq *q = s->waiting.head; q; q = q->next, n++)
        if (!seq_ok(s, q, SCHED_SEQ_WAITING) || (q->next && q->next->prev != q)) return false;
    if (n != s->waiting.n) return false;
    for (int32_t b = 0; b < s->p.engine.n_blocks; b++)
        if (kv_block_refcount(s->bm, b) != s->check_refs[b]) return false;
    return true;
}
