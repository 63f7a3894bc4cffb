/* sampler: turn a row of logits into the next token, as OpenAI's and llama.cpp's sampling
 * parameters describe, plus stop-string matching over generated text.
 *
 * Order of operations (llama.cpp's default chain): logit_bias -> repetition / presence /
 * frequency penalties over the sequence's tokens -> (temperature <= 0: argmax) -> top_k ->
 * temperature -> softmax -> top_p -> min_p -> draw with the per-sequence RNG.
 * Logprobs are of the raw distribution: log-softmax of the logits exactly as the model produced
 * them, before logit_bias, penalties, temperature and truncation (llama-server's default). We
 * chose this over the final distribution because the filtered one gives -inf to every token
 * top_k/top_p removed and 0 to a forced token, which tells the client nothing. Each sequence has its own sampler, so a seed gives the same tokens
 * whatever else is in the batch. No allocation after eng_sampler_new.
 * Thread: a sampler belongs to one sequence; use it from one thread at a time. */
#ifndef ENGINE_SAMPLER_H
#define ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t id;
    float bias;
} eng_logit_bias;

typedef struct {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repetition_penalty; /* 1: off; llama.cpp rule: logit>0 ? /p : *p */
    float presence_penalty;   /* 0: off (OpenAI: -= p if token appeared) */
    float frequency_penalty;  /* 0: off (OpenAI: -= f * count) */
    int32_t penalty_last_n;   /* window of recent tokens for penalties; <0: whole sequence */
    uint64_t seed;
    const eng_logit_bias *logit_bias; /* copied by eng_sampler_new */
    size_t n_logit_bias;
    int32_t top_logprobs; /* 0..20: how many alternatives to report */
} eng_sampling_params;

/* Defaults: temperature 1, top_k 0, top_p 1, min_p 0, penalties off, last_n 64, seed 0. */
void eng_sampling_params_default(eng_sampling_params *p);

typedef struct {
    int32_t id;
    float logprob;
} eng_token_logprob;

typedef struct eng_sampler eng_sampler;

/* NULL on OOM or bad params (e.g. top_logprobs > 20, logit_bias id out of range). */
eng_sampler *eng_sampler_new(const eng_sampling_params *p, int32_t n_vocab);
void eng_sampler_destroy(eng_sampler *s);

/* Samples from logits (n_vocab values; modified in place). history: the sequence's tokens so
 * far (prompt + generated) for penalties. If lp is non-NULL, writes the chosen token's logprob
 * to lp[0] and the top_logprobs most likely tokens to lp[1..top_logprobs]. */
int32_t eng_sampler_sample(eng_sampler *s, float *logits, const int32_t *history,
                           size_t n_history, eng_token_logprob *lp);

/* ---- stop strings ----
 * Empty stop strings are ignored. On a match, *safe_len is the match offset; with several
 * matches the earliest start wins.
 * Scans generated text for any of the stop strings. Returns the byte offset where the first
 * stop string starts (text is cut there), or -1 if none matched; *safe_len is how many bytes
 * of text can be emitted now (text that might be the start of a stop string is held back). */
long eng_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops,
                   size_t *safe_len);

#endif
