/* sampler: logits -> next token (see sampler.h for the order of operations), and stop-string
 * matching over generated text.
 *
 * The caller's logits row is left as it came (the header allows in-place changes; we do not
 * need them): bias and penalties are applied to a private candidate array, so the raw row is
 * still there for logprobs after the draw. top_k, top_p and min_p never sort the vocabulary:
 * the candidates are turned into a max-heap in O(n) and popped one by one, O(log n) each, only
 * as far as the cut needs. Every buffer is sized in eng_sampler_new; sampling allocates nothing.
 * Thread: a sampler belongs to one sequence; use it from one thread at a time. */
#include "engine/sampler.h"

#include <math.h>
#include <string.h>

#include "common/tk_mem.h"

#define ENG_MAX_TOP_LOGPROBS 20

typedef struct {
    int32_t id;
    float logit;
} cand;

/* Invariants: cands, counts and touched each hold n_vocab entries; counts is all zero between
 * calls (only entries listed in touched are ever non-zero, and they are cleared before return);
 * bias ids are in [0, n_vocab). */
struct eng_sampler {
    eng_sampling_params p; /* p.logit_bias points at bias */
    int32_t n_vocab;
    eng_logit_bias *bias; /* (n_bias) owned copy */
    uint64_t rng[4];      /* xoshiro256** state */
    cand *cands;          /* (n_vocab) working candidates */
    int32_t *counts;      /* (n_vocab) occurrences in the penalty window */
    int32_t *touched;     /* (n_vocab) ids with counts != 0 */
};

/* ---- RNG: xoshiro256**, seeded with splitmix64 so every seed (0 included) gives a good state */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- construction ---- */

void eng_sampling_params_default(eng_sampling_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->penalty_last_n = 64;
    p->seed = 0;
}

static bool params_ok(const eng_sampling_params *p, int32_t n_vocab) {
    if (n_vocab <= 0) return false;
    if (p->top_logprobs < 0 || p->top_logprobs > ENG_MAX_TOP_LOGPROBS) return false;
    if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p)) return false;
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty)) return false;
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty)) return false;
    if (p->n_logit_bias && !p->logit_bias) return false;
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        const eng_logit_bias *b = &p->logit_bias[i];
        if (b->id < 0 || b->id >= n_vocab || isnan(b->bias)) return false;
    }
    return true;
}

eng_sampler *eng_sampler_new(const eng_sampling_params *p, int32_t n_vocab) {
    if (!p || !params_ok(p, n_vocab)) return NULL;
    eng_sampler *s = tk_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    if (p->n_logit_bias) {
        s->bias = tk_calloc(p->n_logit_bias, sizeof *s->bias);
        if (!s->bias) goto fail;
        memcpy(s->bias, p->logit_bias, p->n_logit_bias * sizeof *s->bias);
    }
    s->p.logit_bias = s->bias;
    s->cands = tk_calloc((size_t)n_vocab, sizeof *s->cands);
    s->counts = tk_calloc((size_t)n_vocab, sizeof *s->counts);
    s->touched = tk_calloc((size_t)n_vocab, sizeof *s->touched);
    if (!s->cands || !s->counts || !s->touched) goto fail;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
fail:
    eng_sampler_destroy(s);
    return NULL;
}

void eng_sampler_destroy(eng_sampler *s) {
    if (!s) return;
    tk_free(s->bias);
    tk_free(s->cands);
    tk_free(s->counts);
    tk_free(s->touched);
    tk_free(s);
}

/* ---- logit adjustments ---- */

static void apply_bias(eng_sampler *s) {
    for (size_t i = 0; i < s->p.n_logit_bias; i++) s->cands[s->bias[i].id].logit += s->bias[i].bias;
}

/* llama.cpp's penalties over the last penalty_last_n tokens (0: off, <0: whole history):
 * repetition: logit > 0 ? logit / r : logit * r (once per distinct token), then OpenAI's
 * logit -= count * frequency + (count > 0) * presence. cands must still be indexed by id. */
static void apply_penalties(eng_sampler *s, const int32_t *history, size_t n_history) {
    const eng_sampling_params *p = &s->p;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    if (p->penalty_last_n == 0 || !history || n_history == 0) return;
    size_t window = n_history;
    if (p->penalty_last_n > 0 && (size_t)p->penalty_last_n < n_history) window = (size_t)p->penalty_last_n;
    size_t n_touched = 0;
    for (size_t i = n_history - window; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->n_vocab) continue; /* not ours to judge; ignore */
        if (s->counts[id]++ == 0) s->touched[n_touched++] = id;
    }
    for (size_t i = 0; i < n_touched; i++) {
        int32_t id = s->touched[i];
        float l = s->cands[id].logit;
        if (p->repetition_penalty != 1.0f)
            l = l > 0.0f ? l / p->repetition_penalty : l * p->repetition_penalty;
        l -= (float)s->counts[id] * p->frequency_penalty + p->presence_penalty;
        s->cands[id].logit = l;
        s->counts[id] = 0; /* keep the all-zero invariant */
    }
}

/* ---- max-heap over cands by logit (ties: lower id first, so results do not depend on layout) */

static inline bool cand_gt(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static void sift_down(cand *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_gt(&h[l], &h[m])) m = l;
        if (r < n && cand_gt(&h[r], &h[m])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heapify(cand *h, size_t n) {
    for (size_t i = n / 2; i-- > 0;) sift_down(h, n, i);
}

/* Pops the max of the heap h[0..*n) into h[*n - 1] and shrinks the heap; returns it. */
static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0];
    h[0] = h[--*n];
    h[*n] = top;
    sift_down(h, *n, 0);
    return top;
}

static size_t argmax_index(const cand *c, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (cand_gt(&c[i], &c[best])) best = i;
    return best;
}

static int32_t argmax(const cand *c, size_t n) { return c[argmax_index(c, n)].id; }

/* ---- the draw ---- */

/* Draws from c[0..n) with weights exp((logit - max) / temp); c's logits become the weights. */
static int32_t draw(eng_sampler *s, cand *c, size_t n, float max, float temp) {
    double total = 0.0;
    for (size_t i = 0; i < n; i++) total += (c[i].logit = expf((c[i].logit - max) / temp));
    double u = rng_uniform(s->rng) * total;
    for (size_t i = 0; i < n; i++) {
        u -= c[i].logit;
        if (u < 0.0) return c[i].id;
    }
    return c[n - 1].id; /* rounding left a crumb of u: the last candidate takes it */
}

/* top_p without sorting: candidates are bucketed by x = (logit - max) / temp (bucket 0 holds
 * the best); whole buckets are kept while their mass stays under top_p, and only the bucket
 * where the cumulative mass crosses top_p is ordered, by popping a heap until it does. The
 * kept set equals the sorted nucleus (every token of a better bucket beats every token of a
 * worse one). Moves the kept candidates to c[0..kept) and returns kept (>= 1). */
#define NUCLEUS_BUCKETS 128
#define NUCLEUS_RANGE 20.0f /* x below -20 (weight < 2e-9) shares the last bucket */

static inline int nucleus_bucket(float x) {
    if (!(x > -NUCLEUS_RANGE)) return NUCLEUS_BUCKETS - 1;
    int b = (int)(-x * (NUCLEUS_BUCKETS / NUCLEUS_RANGE));
    return b < NUCLEUS_BUCKETS ? b : NUCLEUS_BUCKETS - 1;
}

static size_t top_p_cut(cand *c, size_t n, float max, float temp, float top_p) {
    double mass[NUCLEUS_BUCKETS] = {0}, z = 0.0;
    for (size_t i = 0; i < n; i++) {
        float x = (c[i].logit - max) / temp;
        double w = expf(x);
        mass[nucleus_bucket(x)] += w;
        z += w;
    }
    const double target = (double)top_p * z;
    double cum = 0.0;
    int j = 0;
    while (j < NUCLEUS_BUCKETS - 1 && cum + mass[j] < target) cum += mass[j++];
    /* partition: buckets < j to the front [0, a), bucket j next [a, a + m) */
    size_t a = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        int bi = nucleus_bucket((c[i].logit - max) / temp);
        if (bi > j) continue;
        cand t = c[i];
        if (bi < j) {
            c[a + m] = c[a]; /* the first of bucket j's run moves to its end */
            c[a++] = t;
        } else {
            c[a + m++] = t;
        }
    }
    cand *h = c + a;
    size_t heap_n = m, popped = 0;
    heapify(h, heap_n);
    while (heap_n > 0 && !(a + popped > 0 && cum >= target)) {
        cand t = heap_pop(h, &heap_n);
        cum += expf((t.logit - max) / temp);
        popped++;
    }
    memmove(c + a, h + heap_n, popped * sizeof *c); /* popped ones sit at the run's end */
    return a + popped;
}

/* min_p: keeps p >= min_p * p_max, i.e. logit >= max + temp * ln(min_p); compacts c. */
static size_t min_p_cut(cand *c, size_t n, float max, float temp, float min_p) {
    float min_logit = max + temp * logf(fminf(min_p, 1.0f));
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (c[i].logit >= min_logit) c[kept++] = c[i];
    return kept; /* >= 1: the max passes */
}

/* The stochastic part of the chain on c[0..n): top_k -> temperature -> softmax -> top_p ->
 * min_p -> draw. (top_p and min_p both keep a best-first prefix, so their order does not
 * matter; min_p is relative to the max, which renormalising does not change.) */
static int32_t sample_dist(eng_sampler *s, cand *c, size_t n) {
    const float temp = s->p.temperature;
    if (s->p.top_k > 0 && (size_t)s->p.top_k < n) {
        size_t heap_n = n, k = (size_t)s->p.top_k;
        heapify(c, heap_n);
        for (size_t i = 0; i < k; i++) heap_pop(c, &heap_n);
        c += n - k; /* the k best */
        n = k;
    }
    float max = c[argmax_index(c, n)].logit;
    if (!isfinite(max)) return argmax(c, n); /* everything banned or broken: best effort */
    if (s->p.top_p < 1.0f) n = top_p_cut(c, n, max, temp, s->p.top_p);
    if (s->p.min_p > 0.0f) n = min_p_cut(c, n, max, temp, s->p.min_p);
    return draw(s, c, n, max, temp);
}

/* ---- logprobs of the raw row ---- */

/* log(sum(exp(logits))) in double; -INFINITY when every logit is -inf. */
static double log_sum_exp(const float *logits, int32_t n) {
    float max = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > max) max = logits[i];
    if (!isfinite(max)) return max;
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    return max + log(sum);
}

/* lp[0]: the chosen token; lp[1..n_top]: the n_top most likely tokens of the raw row, best
 * first (ties: lower id first), kept by insertion into the short sorted list. */
static void fill_logprobs(const eng_sampler *s, const float *logits, int32_t chosen,
                          eng_token_logprob *lp) {
    const int32_t n_top = s->p.top_logprobs;
    double lse = log_sum_exp(logits, s->n_vocab);
    lp[0].id = chosen;
    lp[0].logprob = (float)((double)logits[chosen] - lse);
    eng_token_logprob *top = lp + 1;
    int32_t have = 0;
    for (int32_t i = 0; i < s->n_vocab && n_top > 0; i++) {
        float l = logits[i];
        if (have == n_top && !(l > top[n_top - 1].logprob)) continue;
        int32_t j = have < n_top ? have++ : n_top - 1;
        while (j > 0 && l > top[j - 1].logprob) {
            top[j] = top[j - 1];
            j--;
        }
        top[j].id = i;
        top[j].logprob = l; /* a raw logit until the pass ends */
    }
    for (int32_t i = 0; i < have; i++) top[i].logprob = (float)((double)top[i].logprob - lse);
}

int32_t eng_sampler_sample(eng_sampler *s, float *logits, const int32_t *history,
                           size_t n_history, eng_token_logprob *lp) {
    const size_t n = (size_t)s->n_vocab;
    for (size_t i = 0; i < n; i++) {
        s->cands[i].id = (int32_t)i;
        s->cands[i].logit = logits[i];
    }
    apply_bias(s);
    apply_penalties(s, history, n_history);
    int32_t chosen;
    if (!(s->p.temperature > 0.0f))
        chosen = argmax(s->cands, n);
    else
        chosen = sample_dist(s, s->cands, n);
    if (lp) fill_logprobs(s, logits, chosen, lp);
    return chosen;
}

/* ---- stop strings ---- */

long eng_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops,
                   size_t *safe_len) {
    long first = -1;
    if (!text) len = 0;
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = stops[i] ? strlen(stops[i]) : 0;
        if (sl == 0) continue; /* an empty stop would match everywhere: ignore it */
        const char *m = len >= sl ? memmem(text, len, stops[i], sl) : NULL;
        if (m && (first < 0 || m - text < first)) first = (long)(m - text);
    }
    if (first >= 0) {
        if (safe_len) *safe_len = (size_t)first;
        return first;
    }
    /* Hold back the longest tail of text that is a proper prefix of some stop string. */
    size_t hold = 0;
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = stops[i] ? strlen(stops[i]) : 0;
        size_t k = sl > 0 ? sl - 1 : 0;
        if (k > len) k = len;
        for (; k > hold; k--)
            if (memcmp(text + len - k, stops[i], k) == 0) break;
        if (k > hold) hold = k;
    }
    if (safe_len) *safe_len = len - hold;
    return -1;
}
