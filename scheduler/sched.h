/* sched: the serving scheduler. One engine thread owns the model context, the KV block pool
 * and every sequence; the front end talks to it only through sched_submit / sched_abort (an
 * inbox queue) and the emit callback (token events), never sharing sequence state.
 *
 * Every step (continuous batching at iteration level, vLLM-v1 style: "tokens computed" catching
 * up with "tokens wanted" under a token budget):
 *   1. drain the inbox (new requests join the waiting queue; aborts mark sequences);
 *   2. running sequences that are decoding get one token each (up to max_seqs);
 *   3. waiting/prefilling sequences get prompt chunks until max_batched_tokens or max_seqs;
 *      a new sequence first reuses the longest cached prefix of full blocks (prefix cache);
 *   4. when a block cannot be allocated, the newest running sequence is preempted (blocks freed,
 *      requeued at the front for recompute) — no request fails for it;
 *   5. one eng_forward over the ragged batch, then per sequence: sample, detokenize
 *      incrementally, stop strings / EOS / max_tokens, emit events.
 * n > 1: the prompt is prefilled once; the choices fork and share its blocks (ref counts).
 * Thread: sched_new/sched_destroy on the owner thread; sched_submit, sched_abort, sched_stats
 * from any thread; the emit callback runs on the engine thread. */
#ifndef SCHEDULER_SCHED_H
#define SCHEDULER_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/sampler.h"

typedef struct {
    int32_t max_seqs;           /* sequences in one step */
    int32_t max_batched_tokens; /* tokens in one step */
    int32_t max_waiting;        /* queued requests; submit beyond it fails with SCHED_ERR_FULL */
    bool prefix_cache;
    eng_ctx_params engine;      /* n_blocks, block_size, max_ctx, kv_type, n_threads; max_tokens
                                   and max_logits are set from max_batched_tokens / max_seqs */
} sched_params;

enum {
    SCHED_ERR_FULL = -11,    /* waiting queue full: answer 429 */
    SCHED_ERR_INVALID = -7,  /* request does not fit (prompt + max_tokens > context, bad params) */
    SCHED_ERR_NOMEM = -3,
    SCHED_ERR_STOPPED = -12, /* scheduler shutting down */
};

enum { SCHED_FINISH_NONE = 0, SCHED_FINISH_STOP_EOS, SCHED_FINISH_STOP_STRING, SCHED_FINISH_LENGTH_LIMIT,
       SCHED_FINISH_ABORT, SCHED_FINISH_ERROR };

/* A request as the front end builds it (no JSON here). sched_submit copies everything it needs,
 * so the caller may free its copy as soon as submit returns. */
typedef struct {
    uint64_t id;               /* unique per request, chosen by the caller */
    const int32_t *prompt;
    size_t n_prompt;
    eng_sampling_params sampling; /* logit_bias copied; seed used for choice 0, seed+i for choice i */
    int32_t max_tokens;
    int32_t n;                 /* choices (>= 1) */
    const char *const *stops;
    size_t n_stops;
    bool ignore_eos;
    bool want_logprobs;        /* emit the chosen token's logprob (+ sampling.top_logprobs alternatives) */
} sched_request;

typedef enum { SCHED_EV_TOKEN = 1, SCHED_EV_FINISH, SCHED_EV_ERROR } sched_event_kind;

/* Emitted on the engine thread. Pointers are valid only during the callback: copy what you keep. */
typedef struct {
    sched_event_kind kind;
    uint64_t id;
    int32_t choice;
    /* TOKEN: the text this token completes (may be empty while UTF-8 or a possible stop string
     * is held back), the token id, and its logprobs when asked for. */
    const char *text;
    size_t text_len;
    int32_t token;
    const eng_token_logprob *logprobs; /* [0] chosen, [1..n_top] alternatives; NULL unless asked */
    int32_t n_top;
    /* FINISH (once per choice): finish reason; any held-back text is flushed in `text` first. */
    int finish_reason;
    /* usage, on FINISH: */
    int32_t n_prompt, n_gen, n_cached_prompt;
    /* ERROR (once per request, ends all its choices): message */
    const char *error;
} sched_event;

typedef void (*sched_emit_fn)(void *ud, const sched_event *ev);

typedef struct {
    int32_t running, waiting;
    int32_t kv_blocks_total, kv_blocks_free;
    uint64_t steps, steps_multi_seq;      /* steps, and steps with more than one sequence */
    uint64_t prompt_tokens, generated_tokens, computed_prompt_tokens; /* computed: after prefix-cache reuse */
    uint64_t prefix_queries, prefix_hits; /* in tokens: looked up / found cached */
    uint64_t preemptions;
    uint64_t step_tokens_hist[12];        /* steps by batch tokens: bin i counts (2^(i-1), 2^i] for i = 0..10
                                             (bin 0: 1 token), bin 11 counts > 1024 */
    uint64_t step_tokens_sum;
    int32_t kv_blocks_cached;             /* evictable prefix-cache blocks (not in kv_blocks_free) */
} sched_stats;

typedef struct sched sched;

/* Creates the engine context and starts the engine thread. */
int sched_new(const eng_model *m, const sched_params *p, sched_emit_fn emit, void *ud, sched **out,
              char *err, size_t errlen);
/* Stops the thread after in-flight sequences are aborted (emitting FINISH/abort for each) and frees. */
void sched_destroy(sched *s);

/* Any thread. 0, SCHED_ERR_FULL, SCHED_ERR_INVALID (with reason in err), SCHED_ERR_STOPPED. */
int sched_submit(sched *s, const sched_request *rq, char *err, size_t errlen);
/* Any thread. The request's choices finish with SCHED_FINISH_ABORT at the next step and their
 * blocks are freed; unknown ids are ignored. */
void sched_abort(sched *s, uint64_t id);
/* Any thread: a consistent snapshot. */
void sched_get_stats(sched *s, sched_stats *out);
/* Largest prompt + max_tokens a request may have. */
int32_t sched_max_ctx(const sched *s);

#endif
