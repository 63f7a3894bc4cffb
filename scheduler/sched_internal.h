/* sched_internal: the scheduler's data structures, shared by its three files and never
 * included from outside scheduler/:
 *   sched.c       public API, the engine thread, inbox/abort queue, stats snapshot;
 *   sched_step.c  one step: budget, block allocation, preemption, admission, forward, sampling;
 *   sched_seq.c   per-request/sequence state: setup and teardown, forks (n > 1), the prefix
 *                 cache walk, text/stop handling and the events each sequence emits.
 * Thread: everything below the "engine thread only" line belongs to the engine thread. */
#ifndef SCHEDULER_SCHED_INTERNAL_H
#define SCHEDULER_SCHED_INTERNAL_H

#include <pthread.h>

#include "engine/tokenizer.h"
#include "scheduler/kv_block.h"
#include "scheduler/sched.h"

#define SCHED_PIECE_CAP 256 /* bytes of one token's text (tok_detok_push) */

typedef struct sched_seq sched_seq;

/* One submitted request: what its choices share. Owned by the engine thread after the inbox.
 * Invariant: n_live = choices not yet finished; seqs[c]->choice == c. */
typedef struct sched_req {
    uint64_t id;
    int32_t *prompt; /* (n_prompt) owned copy */
    int32_t n_prompt;
    eng_sampling_params sampling; /* logit_bias points at bias */
    eng_logit_bias *bias;         /* owned copy */
    int32_t max_tokens, n;
    char **stops; /* (n_stops) owned NUL-terminated copies */
    size_t n_stops, max_stop_len;
    bool ignore_eos, want_logprobs;
    bool forked;             /* choices 1..n-1 exist as sequences (after the prompt's prefill) */
    bool abort;              /* sched_abort seen: finish at the next step */
    bool counted;            /* prompt stats counted (first admission) */
    bool failed;             /* marked for an ERROR event (engine failure) */
    int32_t n_cached_prompt; /* prompt tokens found in the prefix cache at first admission */
    int32_t n_live;
    sched_seq **seqs; /* (n) the choices; seqs[0] carries the prompt until the fork */
    struct sched_req *inbox_next;
} sched_req;

typedef enum { SCHED_SEQ_IDLE = 0, SCHED_SEQ_WAITING, SCHED_SEQ_RUNNING, SCHED_SEQ_DONE } sched_seq_state;

/* One choice of a request. tokens = prompt + generated; n_computed tokens have their K/V in the
 * blocks of table. A sequence wants tokens n_computed..n_tokens-1 computed; the step that
 * reaches n_tokens asks for logits and samples the next token. Preemption drops the blocks and
 * sets n_computed to 0; tokens, sampler and text state survive, so recompute changes nothing.
 * Invariants: RUNNING: n_blocks * block_size >= n_computed and n_computed <= n_tokens;
 * WAITING/IDLE/DONE: n_blocks == 0; n_registered <= n_blocks, n_registered <= n_hashed;
 * hashes[i] valid for i < n_hashed (they depend only on tokens, so survive preemption). */
struct sched_seq {
    sched_req *rq;
    int32_t choice;
    sched_seq_state state;
    int32_t *tokens; /* (n_prompt + max_tokens) */
    int32_t n_tokens, n_gen, n_computed;
    int32_t *table; /* (max_blocks) physical block ids */
    int32_t n_blocks;
    uint64_t *hashes;     /* (max_blocks) prefix-cache hash of each full block */
    int32_t n_hashed;     /* leading full blocks whose hash is known */
    int32_t n_registered; /* leading blocks already offered to (or found in) the prefix cache */
    eng_sampler *smp;
    tok_detok dt;
    char *text; /* (text_cap) generated text not yet emitted (held back for stop strings) */
    size_t text_len, text_cap;
    eng_token_logprob lp[21];
    sched_seq *prev, *next; /* running or waiting list */
    /* per step: */
    int32_t grant; /* tokens scheduled this step */
    int32_t row;   /* logits row this step, -1 none */
};

typedef struct {
    sched_seq *head, *tail;
    int32_t n;
} sched_list;

struct sched {
    const eng_model *m;
    sched_params p; /* engine params completed by eng_ctx_new */
    sched_emit_fn emit;
    void *ud;
    pthread_t thread;
    bool thread_started;
    int32_t n_vocab, max_blocks; /* blocks one sequence may need: ceil(max_ctx / block_size) */
    /* ---- shared with other threads, under mu ---- */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool stop;
    sched_req *inbox_head, *inbox_tail;
    int32_t inbox_n;
    uint64_t *aborts; /* (aborts_cap) ids from sched_abort */
    size_t n_aborts, aborts_cap;
    uint64_t *aborts_spare; /* the engine's half of the double buffer (swapped under mu) */
    size_t aborts_spare_cap;
    sched_stats pub; /* last published snapshot */
    /* ---- engine thread only ---- */
    eng_ctx *ctx;
    kv_block_mgr *bm;
    sched_list running, waiting;
    sched_stats st;       /* counters being updated */
    int32_t *b_tokens;    /* (max_batched_tokens) */
    eng_seq_step *b_seqs; /* (max_seqs) */
    sched_seq **b_owner;  /* (max_seqs) sequence of each batch entry */
    float *logits;        /* (max_seqs, n_vocab) */
    float *scratch;       /* (n_vocab) one row to sample a fork from */
    int32_t *check_refs;  /* (n_blocks) scratch of sched_check_invariants */
    bool preempted_this_step;
};

/* ---- lists (sched_seq.c) ---- */
void sched__list_push_tail(sched_list *l, sched_seq *q);
void sched__list_push_head(sched_list *l, sched_seq *q);
void sched__list_remove(sched_list *l, sched_seq *q);

/* ---- requests and sequences (sched_seq.c) ---- */
/* Validates rq and builds the request with all its choices (samplers made here, so bad
 * sampling parameters fail at submit). Any thread. 0 or SCHED_ERR_INVALID / SCHED_ERR_NOMEM. */
int sched__req_new(const sched *s, const sched_request *rq, sched_req **out, char *err, size_t errlen);
void sched__req_free(sched_req *r);
/* Releases the sequence's blocks (last first, so the prefix cache evicts leaves first). */
void sched__seq_drop_blocks(sched *s, sched_seq *q);
/* Makes sure q's table covers `n_pos` positions; false when the pool ran dry (blocks taken
 * so far stay in the table). */
bool sched__seq_ensure_blocks(sched *s, sched_seq *q, int32_t n_pos);
/* Takes the longest cached prefix of q's tokens (never all of them) from the prefix cache;
 * returns the tokens found. */
int32_t sched__seq_prefix_lookup(sched *s, sched_seq *q);
/* Registers q's newly completed full blocks in the prefix cache. */
void sched__seq_register_blocks(sched *s, sched_seq *q);
/* Forks choices 1..n-1 off q (choice 0, prompt just computed): shared full blocks, a copied
 * partial block; a choice that cannot get a block waits for recompute instead. */
void sched__req_fork(sched *s, sched_seq *q);
/* Samples from a logits row and handles the token: events, stop, length. Returns true when
 * the sequence finished (its blocks are released and it left the running list). */
bool sched__seq_sample(sched *s, sched_seq *q, float *row);
/* Finishes a live sequence with a reason (flushing held-back text unless reason is a stop
 * string or abort), emits FINISH, releases blocks, unlinks it; frees the request after its
 * last choice. */
void sched__seq_finish(sched *s, sched_seq *q, int reason);
/* Ends a whole request with one ERROR event: every choice unlinked, blocks released, freed. */
void sched__req_error(sched *s, sched_req *r, const char *msg);
/* Finishes every live choice of r with SCHED_FINISH_ABORT (frees r). */
void sched__req_abort(sched *s, sched_req *r);

/* ---- the step (sched_step.c) ---- */
/* One scheduling iteration: schedules, runs eng_forward, samples. Returns the tokens run. */
int32_t sched__step(sched *s);

/* Debug: block refcounts equal the number of sequence tables holding each block, the block
 * manager's own invariants hold, every running sequence's table covers its computed tokens,
 * waiting sequences hold no blocks, list counts match. */
bool sched_check_invariants(const sched *s);

#endif
