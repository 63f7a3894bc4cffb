/* generate: run one request to completion on an engine context — prefill in chunks of the
 * context's max_tokens, then decode token by token with the request's sampler, incremental
 * detokenisation and stop strings. This is what `tokd generate` and the model tests use; the
 * serving scheduler (continuous batching) drives the same engine calls for many sequences.
 * Thread: the engine thread that owns ctx. */
#ifndef SCHEDULER_GENERATE_H
#define SCHEDULER_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/sampler.h"

enum { SCHED_FINISH_LENGTH = 0, SCHED_FINISH_STOP = 1 };

typedef struct {
    const int32_t *prompt;
    size_t n_prompt;
    eng_sampling_params sampling;
    int32_t max_tokens;
    const char *const *stops;
    size_t n_stops;
    bool ignore_eos;
    /* Called with each piece of generated text as soon as it is final (never a broken UTF-8
     * sequence, never text that a stop string may still claim). May be NULL. */
    void (*on_text)(void *ud, const char *text, size_t len);
    void *ud;
    /* Optional: per generated token, its logprob entry (1 + top_logprobs) copied here. */
    eng_token_logprob *logprobs; /* (max_tokens, 1 + top_logprobs) or NULL */
} sched_gen_request;

typedef struct {
    int32_t n_prompt;
    int32_t n_gen;
    int finish; /* SCHED_FINISH_* */
    double prefill_s, decode_s;
} sched_gen_result;

/* tokens (cap max_tokens) receives the generated ids. Returns 0 or a negative error with a
 * message in err. */
int sched_generate(eng_ctx *ctx, const eng_model *m, const sched_gen_request *rq,
                   int32_t *tokens, sched_gen_result *res, char *err, size_t errlen);

#endif
