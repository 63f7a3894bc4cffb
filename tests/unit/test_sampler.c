/* Unit tests for engine/sampler: greedy, seeds, the sampled distribution against softmax,
 * top_k / top_p / min_p cuts, logit_bias, the three penalties (at the exact values where a
 * greedy decision flips), logprobs against a double-precision log-softmax, stop strings, and
 * that sampling allocates nothing. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/tk_mem.h"
#include "engine/sampler.h"

/* Deterministic pseudo-random logits in [-4, 4). */
static void fill_logits(float *l, int32_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (int32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        l[i] = (float)((x >> 8) % 80000) / 10000.0f - 4.0f;
    }
}

static int32_t ref_argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static eng_sampler *mk(float temp, uint64_t seed, int32_t n_vocab) {
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.temperature = temp;
    p.seed = seed;
    eng_sampler *s = eng_sampler_new(&p, n_vocab);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Draws `draws` tokens and writes their frequencies to freq[0..n). */
static void histogram(eng_sampler *s, const float *logits, int32_t n, int draws, double *freq) {
    float row[256];
    ck_assert_int_le(n, 256);
    for (int32_t i = 0; i < n; i++) freq[i] = 0.0;
    for (int d = 0; d < draws; d++) {
        memcpy(row, logits, (size_t)n * sizeof *row);
        int32_t t = eng_sampler_sample(s, row, NULL, 0, NULL);
        ck_assert_int_ge(t, 0);
        ck_assert_int_lt(t, n);
        freq[t] += 1.0 / draws;
    }
}

static void softmax_ref(const float *l, int32_t n, double temp, double *p) {
    double max = -INFINITY, sum = 0.0;
    for (int32_t i = 0; i < n; i++) max = fmax(max, l[i]);
    for (int32_t i = 0; i < n; i++) sum += (p[i] = exp((l[i] - max) / temp));
    for (int32_t i = 0; i < n; i++) p[i] /= sum;
}

START_TEST(test_greedy_is_argmax) {
    enum { N = 5000 };
    static float l[N];
    eng_sampler *s = mk(0.0f, 1, N);
    for (uint32_t r = 0; r < 20; r++) {
        fill_logits(l, N, r);
        int32_t want = ref_argmax(l, N);
        ck_assert_int_eq(eng_sampler_sample(s, l, NULL, 0, NULL), want);
    }
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_tiny_temperature_matches_greedy) {
    enum { N = 3000 };
    static float l[N];
    eng_sampler *g = mk(0.0f, 1, N), *t = mk(1e-4f, 7, N);
    for (uint32_t r = 0; r < 20; r++) {
        fill_logits(l, N, 100 + r);
        l[ref_argmax(l, N)] += 0.01f; /* a clear winner: 100 temperatures above the runner-up */
        ck_assert_int_eq(eng_sampler_sample(t, l, NULL, 0, NULL),
                         eng_sampler_sample(g, l, NULL, 0, NULL));
    }
    eng_sampler_destroy(g);
    eng_sampler_destroy(t);
}
END_TEST

START_TEST(test_seed_reproducible) {
    enum { N = 50 };
    float l[N];
    fill_logits(l, N, 3);
    for (int32_t i = 0; i < N; i++) l[i] *= 0.2f; /* flat enough that draws vary */
    eng_sampler *a = mk(1.0f, 42, N), *b = mk(1.0f, 42, N), *c = mk(1.0f, 43, N);
    int differ = 0;
    for (int d = 0; d < 100; d++) {
        int32_t ta = eng_sampler_sample(a, l, NULL, 0, NULL);
        int32_t tb = eng_sampler_sample(b, l, NULL, 0, NULL);
        int32_t tc = eng_sampler_sample(c, l, NULL, 0, NULL);
        ck_assert_int_eq(ta, tb);
        differ += ta != tc;
    }
    ck_assert_int_gt(differ, 10);
    eng_sampler_destroy(a);
    eng_sampler_destroy(b);
    eng_sampler_destroy(c);
}
END_TEST

/* Pearson chi-square of `draws` draws with frequencies freq against probabilities p (cells
 * with p == 0 must have freq == 0). */
static double chi_square(const double *freq, const double *p, int n, int draws) {
    double chi = 0.0;
    for (int i = 0; i < n; i++) {
        if (p[i] == 0.0) {
            ck_assert_double_eq(freq[i], 0.0);
            continue;
        }
        double d = (freq[i] - p[i]) * draws;
        chi += d * d / (p[i] * draws);
    }
    return chi;
}

static void check_distribution(float temp) {
    const float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 2.5f, 0.0f, 1.5f, -3.0f};
    double freq[8], p[8], worst = 0.0;
    eng_sampler *s = mk(temp, 1234, 8);
    histogram(s, l, 8, 20000, freq);
    softmax_ref(l, 8, temp, p);
    for (int i = 0; i < 8; i++) worst = fmax(worst, fabs(freq[i] - p[i]));
    double chi = chi_square(freq, p, 8, 20000);
    /* 24.3: the 0.1% critical value for 7 degrees of freedom */
    ck_assert_msg(chi < 24.3 && worst < 0.012, "temp %.1f: chi2 %.2f, max |freq - p| %.4f", temp,
                  chi, worst);
    eng_sampler_destroy(s);
}

START_TEST(test_distribution_matches_softmax) {
    check_distribution(1.0f);
    check_distribution(2.0f);
    check_distribution(0.5f);
}
END_TEST

START_TEST(test_top_k_one_is_argmax) {
    enum { N = 2000 };
    static float l[N];
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.temperature = 5.0f;
    p.top_k = 1;
    eng_sampler *s = eng_sampler_new(&p, N);
    ck_assert_ptr_nonnull(s);
    for (uint32_t r = 0; r < 50; r++) {
        fill_logits(l, N, 500 + r);
        ck_assert_int_eq(eng_sampler_sample(s, l, NULL, 0, NULL), ref_argmax(l, N));
    }
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_top_k_keeps_k_best) {
    /* probs over the 3 best renormalised; the other tokens never drawn */
    const float l[6] = {0.0f, 3.0f, -1.0f, 2.0f, 2.5f, 1.9f};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.top_k = 3;
    p.seed = 9;
    eng_sampler *s = eng_sampler_new(&p, 6);
    double freq[6], ref[3];
    const float best[3] = {3.0f, 2.0f, 2.5f};
    histogram(s, l, 6, 20000, freq);
    softmax_ref(best, 3, 1.0, ref);
    ck_assert(freq[0] == 0.0 && freq[2] == 0.0 && freq[5] == 0.0);
    ck_assert_double_eq_tol(freq[1], ref[0], 0.01);
    ck_assert_double_eq_tol(freq[3], ref[1], 0.01);
    ck_assert_double_eq_tol(freq[4], ref[2], 0.01);
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_top_p) {
    /* probs 0.5, 0.3, 0.2 (as logits of their logs) */
    const float l[3] = {logf(0.3f), logf(0.5f), logf(0.2f)};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.top_p = 0.01f;
    eng_sampler *s = eng_sampler_new(&p, 3);
    double freq[3];
    histogram(s, l, 3, 500, freq);
    ck_assert_double_eq_tol(freq[1], 1.0, 1e-9);
    eng_sampler_destroy(s);
    /* 0.7: 0.5 alone is not enough, 0.5 + 0.3 is; the 0.2 token is cut */
    p.top_p = 0.7f;
    s = eng_sampler_new(&p, 3);
    histogram(s, l, 3, 20000, freq);
    ck_assert_double_eq(freq[2], 0.0);
    ck_assert_double_eq_tol(freq[1], 0.5 / 0.8, 0.01);
    eng_sampler_destroy(s);
    /* combined with top_k: top_p works on the renormalised top_k set */
    p.top_k = 2;
    p.top_p = 0.6f; /* 0.5/0.8 = 0.625 >= 0.6: only the best */
    s = eng_sampler_new(&p, 3);
    histogram(s, l, 3, 500, freq);
    ck_assert_double_eq_tol(freq[1], 1.0, 1e-9);
    eng_sampler_destroy(s);
}
END_TEST

static int by_prob_desc(const void *a, const void *b) {
    double pa = ((const double *)a)[0], pb = ((const double *)b)[0];
    return pa < pb ? 1 : pa > pb ? -1 : 0;
}

/* top_p and min_p over a spread of 200 logits (many nucleus buckets): the kept set and its
 * renormalised probabilities against a reference that sorts everything in double. */
static void check_cut_reference(float top_p, float min_p, float temp) {
    enum { N = 200, DRAWS = 40000 };
    float l[N];
    double p[N], sorted[N][2], q[N] = {0}, freq[N];
    fill_logits(l, N, 4242);
    softmax_ref(l, N, temp, p);
    for (int i = 0; i < N; i++) sorted[i][0] = p[i], sorted[i][1] = i;
    qsort(sorted, N, sizeof sorted[0], by_prob_desc);
    double cum = 0.0, kept_mass = 0.0;
    for (int i = 0; i < N; i++) {
        if (top_p < 1.0f && cum >= top_p) break;
        if (sorted[i][0] < min_p * sorted[0][0]) break;
        cum += sorted[i][0];
        q[(int)sorted[i][1]] = sorted[i][0];
        kept_mass += sorted[i][0];
    }
    for (int i = 0; i < N; i++) q[i] /= kept_mass;
    eng_sampling_params prm;
    eng_sampling_params_default(&prm);
    prm.top_p = top_p;
    prm.min_p = min_p;
    prm.temperature = temp;
    prm.seed = 5;
    eng_sampler *s = eng_sampler_new(&prm, N);
    histogram(s, l, N, DRAWS, freq);
    int kept = 0;
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        kept += q[i] > 0.0;
        worst = fmax(worst, fabs(freq[i] - q[i]));
        if (q[i] == 0.0) ck_assert_msg(freq[i] == 0.0, "token %d outside the cut was drawn", i);
    }
    ck_assert_msg(kept > 3 && worst < 0.012, "top_p %.2f min_p %.2f: kept %d, max diff %.4f",
                  top_p, min_p, kept, worst);
    eng_sampler_destroy(s);
}

START_TEST(test_cuts_against_sorted_reference) {
    check_cut_reference(0.5f, 0.0f, 1.0f);
    check_cut_reference(0.9f, 0.0f, 0.7f);
    check_cut_reference(0.3f, 0.0f, 3.0f);
    check_cut_reference(1.0f, 0.05f, 1.0f);
    check_cut_reference(0.8f, 0.1f, 1.0f);
}
END_TEST

START_TEST(test_min_p) {
    const float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.min_p = 0.2f; /* threshold 0.1: token 3 cut, token 2 kept */
    eng_sampler *s = eng_sampler_new(&p, 4);
    double freq[4];
    histogram(s, l, 4, 20000, freq);
    ck_assert_double_eq(freq[3], 0.0);
    ck_assert_double_eq_tol(freq[2], 0.15 / 0.95, 0.01);
    eng_sampler_destroy(s);
    p.min_p = 0.7f; /* threshold 0.35: only token 0 */
    s = eng_sampler_new(&p, 4);
    histogram(s, l, 4, 500, freq);
    ck_assert_double_eq_tol(freq[0], 1.0, 1e-9);
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_logit_bias) {
    float l[4] = {1.0f, 3.0f, 0.0f, 2.0f};
    eng_logit_bias ban = {1, -100.0f}, force = {2, 100.0f};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.logit_bias = &ban;
    p.n_logit_bias = 1;
    eng_sampler *s = eng_sampler_new(&p, 4);
    ban.id = 0; /* the sampler copied the list: this must not matter */
    ck_assert_int_eq(eng_sampler_sample(s, l, NULL, 0, NULL), 3);
    ck_assert_float_eq(l[1], 3.0f); /* the caller's row is untouched */
    eng_sampler_destroy(s);
    ban.id = 1;
    p.temperature = 1.0f;
    p.logit_bias = &force;
    s = eng_sampler_new(&p, 4);
    for (int d = 0; d < 200; d++) ck_assert_int_eq(eng_sampler_sample(s, l, NULL, 0, NULL), 2);
    eng_sampler_destroy(s);
}
END_TEST

/* Greedy choice between token 0 (a) and token 1 (b) after penalties over `hist`. */
static int32_t pen_pick(float a, float b, float rep, float pres, float freq, int32_t last_n,
                        const int32_t *hist, size_t n_hist) {
    float l[4] = {a, b, -50.0f, -50.0f};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = rep;
    p.presence_penalty = pres;
    p.frequency_penalty = freq;
    p.penalty_last_n = last_n;
    eng_sampler *s = eng_sampler_new(&p, 4);
    ck_assert_ptr_nonnull(s);
    int32_t t = eng_sampler_sample(s, l, hist, n_hist, NULL);
    /* same call again: the per-vocab counts must have been cleared */
    ck_assert_int_eq(eng_sampler_sample(s, l, hist, n_hist, NULL), t);
    eng_sampler_destroy(s);
    return t;
}

START_TEST(test_repetition_penalty) {
    const int32_t h[] = {0, 0, 2};
    /* positive logit divided: 2 / 1.3 = 1.538 > 1.5, 2 / 1.34 = 1.493 < 1.5 */
    ck_assert_int_eq(pen_pick(2.0f, 1.5f, 1.3f, 0, 0, 64, h, 3), 0);
    ck_assert_int_eq(pen_pick(2.0f, 1.5f, 1.34f, 0, 0, 64, h, 3), 1);
    /* negative logit multiplied: -1 * 1.15 = -1.15 > -1.2, -1 * 1.25 = -1.25 < -1.2 */
    ck_assert_int_eq(pen_pick(-1.0f, -1.2f, 1.15f, 0, 0, 64, h, 3), 0);
    ck_assert_int_eq(pen_pick(-1.0f, -1.2f, 1.25f, 0, 0, 64, h, 3), 1);
    /* once per token, not per occurrence: 2 / 1.3 twice would be 1.18 */
    ck_assert_int_eq(pen_pick(2.0f, 1.5f, 1.3f, 0, 0, 64, h, 3), 0);
}
END_TEST

START_TEST(test_presence_frequency_penalty) {
    const int32_t h[] = {0, 0, 0};
    /* presence: once, whatever the count: 1 - 0.45 = 0.55 > 0.5; 1 - 0.55 = 0.45 < 0.5 */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.45f, 0, 64, h, 3), 0);
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.55f, 0, 64, h, 3), 1);
    /* frequency: count * f: 1 - 3 * 0.15 = 0.55; 1 - 3 * 0.18 = 0.46 */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0, 0.15f, 64, h, 3), 0);
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0, 0.18f, 64, h, 3), 1);
    /* both: 1 - 3 * 0.1 - 0.15 = 0.55; 1 - 3 * 0.1 - 0.25 = 0.45 */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.15f, 0.1f, 64, h, 3), 0);
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.25f, 0.1f, 64, h, 3), 1);
    /* negative presence encourages: token 1 pulled above token 0 */
    const int32_t h1[] = {1};
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, -0.6f, 0, 64, h1, 1), 1);
}
END_TEST

START_TEST(test_penalty_window) {
    const int32_t h[] = {0, 0, 3, 3, 3};
    /* last 3 tokens are all 3: token 0 is outside the window, unpenalised */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.9f, 0, 3, h, 5), 0);
    /* window 5 (and whole history, -1) sees it */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.9f, 0, 5, h, 5), 1);
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.9f, 0, -1, h, 5), 1);
    /* 0: penalties off */
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.9f, 0, 0, h, 5), 0);
    /* out-of-range ids in history are ignored, not a crash */
    const int32_t bad[] = {-1, 99, 0};
    ck_assert_int_eq(pen_pick(1.0f, 0.5f, 1.0f, 0.9f, 0, 64, bad, 3), 1);
}
END_TEST

START_TEST(test_logprobs) {
    enum { N = 1000, K = 20 };
    static float l[N];
    static double ref[N];
    fill_logits(l, N, 77);
    double max = -INFINITY, sum = 0.0;
    for (int i = 0; i < N; i++) max = fmax(max, l[i]);
    for (int i = 0; i < N; i++) sum += exp(l[i] - max);
    for (int i = 0; i < N; i++) ref[i] = l[i] - max - log(sum);
    eng_logit_bias b = {5, 50.0f}; /* biases the draw, not the reported logprobs */
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.top_logprobs = K;
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    eng_sampler *s = eng_sampler_new(&p, N);
    eng_token_logprob lp[K + 1];
    int32_t t = eng_sampler_sample(s, l, NULL, 0, lp);
    ck_assert_int_eq(t, 5);
    ck_assert_int_eq(lp[0].id, 5);
    ck_assert_double_eq_tol(lp[0].logprob, ref[5], 1e-5);
    double mass = 0.0;
    for (int i = 1; i <= K; i++) {
        ck_assert_double_eq_tol(lp[i].logprob, ref[lp[i].id], 1e-5);
        if (i > 1) ck_assert(lp[i].logprob <= lp[i - 1].logprob);
        mass += exp(lp[i].logprob);
    }
    ck_assert(mass <= 1.0 + 1e-5);
    /* the K reported are the K best: nothing left out beats the last one */
    int better = 0;
    for (int i = 0; i < N; i++) better += ref[i] > lp[K].logprob + 1e-6;
    ck_assert_int_le(better, K - 1);
    ck_assert_int_eq(lp[1].id, ref_argmax(l, N));
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_logprobs_full_vocab_sums_to_one) {
    const float l[5] = {0.1f, -2.0f, 3.0f, 1.0f, 1.0f};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.top_logprobs = 5;
    eng_sampler *s = eng_sampler_new(&p, 5);
    eng_token_logprob lp[6];
    ck_assert_int_eq(eng_sampler_sample(s, (float *)l, NULL, 0, lp), 2);
    double mass = 0.0;
    for (int i = 1; i <= 5; i++) mass += exp(lp[i].logprob);
    ck_assert_double_eq_tol(mass, 1.0, 1e-6);
    const int32_t order[5] = {2, 3, 4, 0, 1}; /* ties: lower id first */
    for (int i = 0; i < 5; i++) ck_assert_int_eq(lp[i + 1].id, order[i]);
    ck_assert_float_eq(lp[0].logprob, lp[1].logprob);
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_bad_params_rejected) {
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.top_logprobs = 21;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
    p.top_logprobs = -1;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
    p.top_logprobs = 20;
    eng_sampler *s = eng_sampler_new(&p, 10);
    ck_assert_ptr_nonnull(s);
    eng_sampler_destroy(s);
    eng_logit_bias b = {10, 1.0f};
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
    b.id = -1;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
    p.n_logit_bias = 0;
    ck_assert_ptr_null(eng_sampler_new(&p, 0));
    p.repetition_penalty = 0.0f;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
    p.repetition_penalty = 1.0f;
    p.temperature = NAN;
    ck_assert_ptr_null(eng_sampler_new(&p, 10));
}
END_TEST

START_TEST(test_defaults) {
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    ck_assert_float_eq(p.temperature, 1.0f);
    ck_assert_int_eq(p.top_k, 0);
    ck_assert_float_eq(p.top_p, 1.0f);
    ck_assert_float_eq(p.min_p, 0.0f);
    ck_assert_float_eq(p.repetition_penalty, 1.0f);
    ck_assert_int_eq(p.penalty_last_n, 64);
    ck_assert_uint_eq(p.seed, 0);
    ck_assert_int_eq(p.top_logprobs, 0);
}
END_TEST

START_TEST(test_new_oom_cleans_up) {
    eng_logit_bias b = {1, 1.0f};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    eng_sampler *s = NULL;
    for (long n = 0; n < 20 && !s; n++) {
        tk_mem_fail_after(n);
        s = eng_sampler_new(&p, 100);
        tk_mem_fail_after(-1);
    }
    ck_assert_ptr_nonnull(s);
    eng_sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_does_not_allocate) {
    enum { N = 4000 };
    static float l[N];
    const int32_t h[] = {1, 2, 3, 3};
    eng_sampling_params p;
    eng_sampling_params_default(&p);
    p.top_k = 40;
    p.top_p = 0.9f;
    p.min_p = 0.01f;
    p.presence_penalty = 0.5f;
    p.repetition_penalty = 1.1f;
    p.top_logprobs = 5;
    eng_sampler *s = eng_sampler_new(&p, N);
    eng_token_logprob lp[6];
    tk_mem_fail_after(0); /* any allocation from here on would fail */
    for (uint32_t r = 0; r < 10; r++) {
        fill_logits(l, N, r);
        int32_t t = eng_sampler_sample(s, l, h, 4, lp);
        ck_assert_int_ge(t, 0);
        ck_assert_int_lt(t, N);
        ck_assert_int_eq(lp[0].id, t);
    }
    tk_mem_fail_after(-1);
    eng_sampler_destroy(s);
}
END_TEST

/* ---- stop strings ---- */

static long stop(const char *text, const char *const *stops, size_t n, size_t *safe) {
    return eng_stop_find(text, strlen(text), stops, n, safe);
}

START_TEST(test_stop_match) {
    const char *st[] = {"STOP", "\n\n", "END"};
    size_t safe = 99;
    ck_assert_int_eq(stop("hello STOP world", st, 3, &safe), 6);
    ck_assert_uint_eq(safe, 6);
    ck_assert_int_eq(stop("the END", st, 3, &safe), 4); /* at the very end */
    ck_assert_uint_eq(safe, 4);
    /* several match: the earliest start wins, whatever the list order */
    ck_assert_int_eq(stop("a END b\n\nc STOP", st, 3, &safe), 2);
    ck_assert_int_eq(stop("a\n\nEND", st, 3, &safe), 1);
    ck_assert_int_eq(stop("STOP", st, 3, &safe), 0);
    ck_assert_uint_eq(safe, 0);
}
END_TEST

START_TEST(test_stop_partial_held_back) {
    const char *st[] = {"STOP", "<|end|>"};
    size_t safe = 0;
    ck_assert_int_eq(stop("hello ST", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 6);
    ck_assert_int_eq(stop("hello <|en", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 6);
    ck_assert_int_eq(stop("hello S", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 6);
    /* "STO" then something else: not a prefix any more */
    ck_assert_int_eq(stop("STOx", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 4);
    /* the longest held suffix over all stops: "<" alone vs nothing */
    ck_assert_int_eq(stop("a<", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 1);
    /* whole text a prefix */
    ck_assert_int_eq(stop("<|end|", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 0);
    /* repeated prefix chars: "SSTO" ends with "STO" */
    ck_assert_int_eq(stop("SSTO", st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 1);
}
END_TEST

START_TEST(test_stop_none) {
    size_t safe = 0;
    ck_assert_int_eq(stop("anything", NULL, 0, &safe), -1);
    ck_assert_uint_eq(safe, 8);
    const char *st[] = {"", "zz"};
    ck_assert_int_eq(stop("abc", st, 2, &safe), -1); /* empty stop ignored */
    ck_assert_uint_eq(safe, 3);
    ck_assert_int_eq(eng_stop_find("", 0, st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 0);
    /* len bounds the scan: the match lies past len */
    ck_assert_int_eq(eng_stop_find("abzz", 2, st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 2);
    ck_assert_int_eq(eng_stop_find("abz", 3, st, 2, &safe), -1);
    ck_assert_uint_eq(safe, 2);
}
END_TEST

static Suite *sampler_suite(void) {
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_greedy_is_argmax);
    tcase_add_test(tc, test_tiny_temperature_matches_greedy);
    tcase_add_test(tc, test_seed_reproducible);
    tcase_add_test(tc, test_distribution_matches_softmax);
    tcase_add_test(tc, test_top_k_one_is_argmax);
    tcase_add_test(tc, test_top_k_keeps_k_best);
    tcase_add_test(tc, test_top_p);
    tcase_add_test(tc, test_min_p);
    tcase_add_test(tc, test_cuts_against_sorted_reference);
    tcase_add_test(tc, test_logit_bias);
    tcase_add_test(tc, test_repetition_penalty);
    tcase_add_test(tc, test_presence_frequency_penalty);
    tcase_add_test(tc, test_penalty_window);
    tcase_add_test(tc, test_logprobs);
    tcase_add_test(tc, test_logprobs_full_vocab_sums_to_one);
    tcase_add_test(tc, test_bad_params_rejected);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_new_oom_cleans_up);
    tcase_add_test(tc, test_sample_does_not_allocate);
    suite_add_tcase(s, tc);
    TCase *ts = tcase_create("stop");
    tcase_add_test(ts, test_stop_match);
    tcase_add_test(ts, test_stop_partial_held_back);
    tcase_add_test(ts, test_stop_none);
    suite_add_tcase(s, ts);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(sampler_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
