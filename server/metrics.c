/* metrics: the Prometheus text exposition served at GET /metrics.
 *
 * Two sources: the front end's own observations (request outcomes by HTTP status, time to
 * first token, inter-token latency, end-to-end latency — measured on the loop thread when
 * events arrive) and a sched_get_stats snapshot (queue depths, KV usage, token counters,
 * prefix cache, preemptions, step sizes). Histograms keep per-bucket counts and are rendered
 * cumulatively, as Prometheus wants. Thread: loop thread only (no locking). */
#include <stdio.h>
#include <string.h>

#include "server/srv_internal.h"

static const double TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                     0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double ITL_BOUNDS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                    0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0};
static const double E2E_BOUNDS[] = {0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                                    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 300.0};

static void hist_init(srv_hist *h, const double *b, int n) {
    memset(h, 0, sizeof *h);
    h->n_bounds = n;
    memcpy(h->bounds, b, (size_t)n * sizeof *b);
}

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    hist_init(&m->ttft, TTFT_BOUNDS, (int)(sizeof TTFT_BOUNDS / sizeof *TTFT_BOUNDS));
    hist_init(&m->itl, ITL_BOUNDS, (int)(sizeof ITL_BOUNDS / sizeof *ITL_BOUNDS));
    hist_init(&m->e2e, E2E_BOUNDS, (int)(sizeof E2E_BOUNDS / sizeof *E2E_BOUNDS));
}

void srv_hist_observe(srv_hist *h, double v) {
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_count_status(srv_metrics *m, int status) {
    for (int i = 0; i < SRV_STATUS_SLOTS; i++) {
        if (m->codes[i] == status || m->codes[i] == 0) {
            m->codes[i] = status;
            m->counts[i]++;
            return;
        }
    }
    /* more distinct codes than slots: count under the last slot's code rather than drop */
    m->counts[SRV_STATUS_SLOTS - 1]++;
}

static int head(srv_buf *o, const char *name, const char *type, const char *help) {
    return srv_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int hist_render(srv_buf *o, const char *name, const char *help, const srv_hist *h) {
    int rc = head(o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        rc |= srv_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    rc |= srv_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
                         (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
    return rc;
}

static int counter(srv_buf *o, const char *name, const char *help, uint64_t v) {
    return head(o, name, "counter", help) | srv_buf_printf(o, "%s %llu\n", name, (unsigned long long)v);
}

static int gauge(srv_buf *o, const char *name, const char *help, double v) {
    return head(o, name, "gauge", help) | srv_buf_printf(o, "%s %.9g\n", name, v);
}

/* The scheduler's step-size histogram: bucket i holds steps of <= 2^i tokens (i < 11); the
 * rest (the last slots) are above 1024 and only appear in +Inf. */
static int step_hist_render(srv_buf *o, const sched_stats *st) {
    const char *name = "tokd_step_batch_tokens";
    int rc = head(o, name, "histogram", "Tokens in each engine step (decodes + prefill chunks).");
    uint64_t cum = 0;
    for (int i = 0; i <= 10; i++) {
        cum += st->step_tokens_hist[i];
        rc |= srv_buf_printf(o, "%s_bucket{le=\"%d\"} %llu\n", name, 1 << i, (unsigned long long)cum);
    }
    rc |= srv_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %llu\n%s_count %llu\n", name,
                         (unsigned long long)st->steps, name, (unsigned long long)st->step_tokens_sum, name,
                         (unsigned long long)st->steps);
    return rc;
}

int srv_metrics_render(const srv_metrics *m, const sched_stats *st, srv_buf *o) {
    int rc = head(o, "tokd_requests_total", "counter", "Finished HTTP requests by status (499: client went away).");
    for (int i = 0; i < SRV_STATUS_SLOTS && m->codes[i]; i++)
        rc |= srv_buf_printf(o, "tokd_requests_total{status=\"%d\"} %llu\n", m->codes[i],
                             (unsigned long long)m->counts[i]);
    rc |= hist_render(o, "tokd_time_to_first_token_seconds", "Time from request arrival to its first token.", &m->ttft);
    rc |= hist_render(o, "tokd_inter_token_latency_seconds", "Time between consecutive tokens of a choice.", &m->itl);
    rc |= hist_render(o, "tokd_e2e_request_latency_seconds", "Time from request arrival to its last event.", &m->e2e);
    rc |= counter(o, "tokd_prompt_tokens_total", "Prompt tokens of admitted requests.", st->prompt_tokens);
    rc |= counter(o, "tokd_prompt_tokens_computed_total", "Prompt tokens computed (after prefix-cache reuse).",
                  st->computed_prompt_tokens);
    rc |= counter(o, "tokd_generation_tokens_total", "Generated tokens.", st->generated_tokens);
    rc |= gauge(o, "tokd_requests_running", "Sequences being prefilled or decoded.", st->running);
    rc |= gauge(o, "tokd_requests_waiting", "Requests waiting for admission.", st->waiting);
    double used = st->kv_blocks_total > 0
                      ? (double)(st->kv_blocks_total - st->kv_blocks_free) / (double)st->kv_blocks_total
                      : 0.0;
    rc |= gauge(o, "tokd_kv_cache_usage_ratio", "Fraction of KV blocks in use.", used);
    rc |= gauge(o, "tokd_kv_cache_blocks_total", "KV blocks in the pool.", st->kv_blocks_total);
    rc |= counter(o, "tokd_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
                  st->prefix_queries);
    rc |= counter(o, "tokd_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", st->prefix_hits);
    rc |= counter(o, "tokd_preemptions_total", "Sequences preempted for lack of KV blocks.", st->preemptions);
    rc |= step_hist_render(o, st);
    rc |= counter(o, "tokd_steps_total", "Engine steps.", st->steps);
    rc |= counter(o, "tokd_steps_multi_seq_total", "Engine steps that batched more than one sequence.",
                  st->steps_multi_seq);
    return rc ? -1 : 0;
}
