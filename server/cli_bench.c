/* `tokd bench`: kernel and step micro-benchmarks, each figure printed beside its floor
 * (design.md, Performance method; docs/bench.md explains every column):
 *   bw      memory read bandwidth (kern_membw_measure over a buffer >> L3), N threads and 1
 *   peak    kern_matmul GFLOP/s per weight type on an in-cache problem (the compute ceiling)
 *   matmul  kern_matmul per type at decode (n_tok 1, weights streamed from DRAM through a ring
 *           of copies larger than L3) and prefill (n_tok 64, 512) shapes: GB/s and GFLOP/s as
 *           fractions of bw and peak
 *   attn    kern_attn_paged (beyond 512 positions kern_attn_part + kern_attn_fold) for one token at
 *           context 128..2048 (--kv-type: f16 KV by default)
 *   step    whole eng_forward steps on --model or a random model of --shape: decode at batch
 *           1/8/32 against the floor (weight + KV bytes) / bandwidth, prefill of 512 tokens
 *           against 2 x params x tokens / peak
 * A readable table on stdout, or JSON on stdout with the table on stderr (--json).
 * Thread: the calling thread plus the kern_pool's workers. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/tk_time.h"
#include "common/tk_log.h"
#include "common/tk_mem.h"
#include "engine/model.h"
#include "engine/quantize.h"
#include "kernels/kern.h"
#include "server/cli_tools.h"

#define BENCH_MAX_TYPES 16
#define BENCH_MAX_REPS 512

typedef struct {
    int threads;
    bool quick, json, quant_act, pin;
    unsigned sections; /* bit per section */
    size_t bw_bytes;
    uint32_t types[BENCH_MAX_TYPES];
    int n_types;
    const char *model, *shape;
    uint32_t model_type;
    uint32_t kv_type; /* KV cache of the attn and step sections (KERN_TYPE_F16 by default) */
    int32_t ctx, prefill;
    double min_time;
} bench_opts;

enum { SEC_BW = 1, SEC_PEAK = 2, SEC_MATMUL = 4, SEC_ATTN = 8, SEC_STEP = 16, SEC_ALL = 31 };
static const char *const sec_names[] = {"bw", "peak", "matmul", "attn", "step"};

/* Results shared between sections, and the output sinks. */
typedef struct {
    const bench_opts *o;
    kern_pool *pool;
    FILE *tab;           /* the table: stdout, or stderr with --json */
    cJSON *json;
    uint8_t *buf;        /* bw buffer, reused as the matmul weight ring */
    size_t buf_bytes;
    double bw_gbs;       /* 0: not measured */
    double peak[KERN_TYPE_COUNT]; /* GFLOP/s per type; 0: not measured */
    eng_mkmodel_spec shape;
} bench;

/* Median seconds per call of fn over repeated calls (one warm-up first) lasting about
 * min_time, at least 3 calls unless one call alone exceeds min_time. */
static double time_median(void (*fn)(void *), void *ctx, double min_time) {
    double t[BENCH_MAX_REPS];
    int n = 0;
    fn(ctx);
    double start = tk_now_s();
    while (n < BENCH_MAX_REPS) {
        double t0 = tk_now_s();
        fn(ctx);
        t[n++] = tk_now_s() - t0;
        double spent = tk_now_s() - start;
        if (spent >= min_time && (n >= 3 || spent >= min_time * 2)) break;
    }
    qsort(t, (size_t)n, sizeof t[0], tk_cmp_double);
    return t[n / 2];
}

static uint64_t rng_state = 0x853c49e6748fea9bull;
static float rnd(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(rng_state >> 40) / 8388608.0f - 1.0f;
}

static void fill_rand(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rnd() * scale;
}

static void jnum(cJSON *o, const char *k, double v) { cJSON_AddNumberToObject(o, k, isfinite(v) ? v : 0); }

/* ================================================================ bw */

static void sec_bw(bench *b) {
    const bench_opts *o = b->o;
    int runs = o->quick ? 3 : 5;
    double gbs = kern_membw_measure(b->pool, b->buf, b->buf_bytes, runs);
    double gbs1 = kern_pool_size(b->pool) > 1 ? kern_membw_measure(NULL, b->buf, b->buf_bytes, o->quick ? 1 : 3) : gbs;
    b->bw_gbs = gbs;
    fprintf(b->tab, "\n== memory read bandwidth (%.0f MiB buffer, median of %d)\n", (double)b->buf_bytes / 1048576.0, runs);
    fprintf(b->tab, "  %d threads: %8.1f GB/s\n  1 thread:  %8.1f GB/s\n", kern_pool_size(b->pool), gbs, gbs1);
    cJSON *j = cJSON_AddObjectToObject(b->json, "bandwidth");
    jnum(j, "bytes", (double)b->buf_bytes);
    jnum(j, "threads", kern_pool_size(b->pool));
    jnum(j, "gbs", gbs);
    jnum(j, "gbs_1thread", gbs1);
}

/* ================================================================ matmul helpers */

typedef struct {
    kern_pool *pool;
    uint32_t type;
    const uint8_t *w;  /* first copy */
    size_t w_bytes;    /* one matrix */
    size_t n_copies, next;
    const float *x;
    float *y;
    size_t n_in, n_out, n_tok;
    void *scratch;
} mm_job;

static void mm_call(void *ctx) {
    mm_job *j = ctx;
    const uint8_t *w = j->w + j->next * j->w_bytes;
    j->next = (j->next + 1) % j->n_copies;
    kern_matmul(j->pool, j->type, w, j->x, j->y, j->n_in, j->n_out, j->n_tok, j->scratch);
}

/* Fills dst (n_out rows of `type`, n_in wide) by tiling 16 distinct quantized random rows:
 * quantizing a whole 1 GiB ring with the reference quantizers would take minutes, and the
 * kernels' speed does not depend on which rows repeat. */
static int fill_matrix(uint8_t *dst, uint32_t type, size_t n_in, size_t n_out) {
    size_t rb = kern_row_bytes(type, n_in);
    float *row = tk_malloc(n_in * sizeof(float));
    if (!row || !rb) {
        tk_free(row);
        return -1;
    }
    for (size_t r = 0; r < n_out && r < 16; r++) {
        fill_rand(row, n_in, 0.05f);
        kern_quantize_row_ref(type, row, dst + r * rb, n_in);
    }
    for (size_t r = 16; r < n_out; r++) memcpy(dst + r * rb, dst + (r % 16) * rb, rb);
    tk_free(row);
    return 0;
}

/* ================================================================ peak */

/* The best of three token counts: where a kernel peaks depends on its tiling, and the peak is
 * the ceiling the other figures are divided by. */
static void sec_peak(bench *b) {
    const bench_opts *o = b->o;
    size_t n_in = 1024, n_out = 256, toks[3] = {32, 64, 128}, max_tok = 128;
    float *x = tk_malloc(n_in * max_tok * sizeof(float)), *y = tk_malloc(n_out * max_tok * sizeof(float));
    uint8_t *w = tk_malloc(n_in * n_out * 4);
    void *scratch = o->quant_act ? tk_malloc(kern_matmul_scratch_bytes(n_in, max_tok)) : NULL;
    cJSON *arr = cJSON_AddArrayToObject(b->json, "peak");
    const double fma = kern_fma_peak(b->pool, o->min_time / 2);
    fprintf(b->tab, "\n== compute peak: the cores' f32 FMA throughput (12 independent vector FMA chains a thread, in\n"
                    "   registers), then kern_matmul on an in-cache problem (%zu x %zu weights; best of 32, 64, 128 tokens)\n",
            n_out, n_in);
    fprintf(b->tab, "  f32 FMA %8.1f GFLOP/s  (hardware ceiling of f32 arithmetic, %d threads)\n", fma, kern_pool_size(b->pool));
    jnum(b->json, "fma_peak_gflops", fma);
    if (!x || !y || !w || (o->quant_act && !scratch)) goto done;
    fill_rand(x, n_in * max_tok, 1.0f);
    for (int i = 0; i < o->n_types; i++) {
        uint32_t t = o->types[i];
        if (fill_matrix(w, t, n_in, n_out)) continue;
        double best = 0;
        size_t best_tok = 0;
        for (size_t k = 0; k < 3; k++) {
            mm_job j = {b->pool, t, w, 0, 1, 0, x, y, n_in, n_out, toks[k], scratch};
            double gf = 2.0 * (double)(n_in * n_out * toks[k]) / time_median(mm_call, &j, o->min_time / 2) * 1e-9;
            if (gf > best) best = gf, best_tok = toks[k];
        }
        b->peak[t] = best;
        fprintf(b->tab, "  %-5s %8.1f GFLOP/s  (at %zu tokens)\n", kern_type_name(t), best, best_tok);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "type", kern_type_name(t));
        jnum(e, "gflops", best);
        jnum(e, "n_tok", (double)best_tok);
        cJSON_AddItemToArray(arr, e);
    }
done:
    tk_free(x);
    tk_free(y);
    tk_free(w);
    tk_free(scratch);
}

/* ================================================================ matmul */

static void matmul_row(bench *b, cJSON *arr, mm_job *j, double min_time) {
    double s = time_median(mm_call, j, min_time);
    double gbs = (double)j->w_bytes / s * 1e-9, gf = 2.0 * (double)(j->n_in * j->n_out * j->n_tok) / s * 1e-9;
    const uint32_t base = j->type & ~KERN_PACKED;
    double fbw = b->bw_gbs > 0 ? gbs / b->bw_gbs : NAN, fpk = b->peak[base] > 0 ? gf / b->peak[base] : NAN;
    char name[16];
    snprintf(name, sizeof name, "%s%s", kern_type_name(base), j->type & KERN_PACKED ? "p" : "");
    fprintf(b->tab, "  %-5s %5zu %9.3f %8.1f %7.2f %9.1f %7.2f\n", name, j->n_tok, s * 1e3, gbs, fbw, gf, fpk);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "type", name);
    jnum(e, "n_in", (double)j->n_in);
    jnum(e, "n_out", (double)j->n_out);
    jnum(e, "n_tok", (double)j->n_tok);
    jnum(e, "ms", s * 1e3);
    jnum(e, "gbs", gbs);
    jnum(e, "gflops", gf);
    if (isfinite(fbw)) jnum(e, "frac_bw", fbw);
    if (isfinite(fpk)) jnum(e, "frac_peak", fpk);
    cJSON_AddItemToArray(arr, e);
}

static void sec_matmul(bench *b) {
    const bench_opts *o = b->o;
    size_t n_in = b->shape.n_ff, n_out = b->shape.n_embd; /* ffn_down: n_ff is a multiple of 256 in every shape */
    size_t toks[3] = {1, 64, 512}, n_shapes = o->quick ? 2 : 3, max_tok = toks[n_shapes - 1];
    float *x = tk_malloc(n_in * max_tok * sizeof(float)), *y = tk_malloc(n_out * max_tok * sizeof(float));
    void *scratch = o->quant_act ? tk_malloc(kern_matmul_scratch_bytes(n_in, max_tok)) : NULL;
    cJSON *arr = cJSON_AddArrayToObject(b->json, "matmul");
    fprintf(b->tab, "\n== kern_matmul, ffn_down of %s (%zu -> %zu)%s; n_tok 1 streams a %.0f MiB ring of copies\n",
            o->shape, n_in, n_out, o->quant_act ? ", quantised activations" : "", (double)b->buf_bytes / 1048576.0);
    fprintf(b->tab, "  %-5s %5s %9s %8s %7s %9s %7s\n", "type", "n_tok", "ms", "GB/s", "of bw", "GFLOP/s", "of peak");
    if (!x || !y || (o->quant_act && !scratch)) goto done;
    fill_rand(x, n_in * max_tok, 1.0f);
    for (int i = 0; i < o->n_types; i++) {
        uint32_t t = o->types[i];
        size_t wb = kern_row_bytes(t, n_in) * n_out;
        if (!wb || wb > b->buf_bytes || fill_matrix(b->buf, t, n_in, n_out)) continue;
        size_t n_copies = b->buf_bytes / wb;
        for (size_t c = 1; c < n_copies; c++) memcpy(b->buf + c * wb, b->buf, wb);
        for (size_t s = 0; s < n_shapes; s++) {
            mm_job j = {b->pool, t, b->buf, wb, toks[s] == 1 ? n_copies : 1, 0, x, y, n_in, n_out, toks[s], scratch};
            matmul_row(b, arr, &j, toks[s] == 512 ? o->min_time * 2 : o->min_time);
        }
        /* the packed layout the engine uses with 8-bit activations ("Q4_0p"), where it exists */
        if (!o->quant_act || !kern_pack_supported(t, n_in, n_out)) continue;
        uint8_t *tmp = tk_malloc(wb);
        if (!tmp) continue;
        kern_pack(b->pool, t, b->buf, tmp, n_in, n_out);
        for (size_t c = 0; c < n_copies; c++) memcpy(b->buf + c * wb, tmp, wb);
        tk_free(tmp);
        for (size_t s = 0; s < n_shapes; s++) {
            mm_job j = {b->pool, t | KERN_PACKED, b->buf, wb, toks[s] == 1 ? n_copies : 1, 0, x, y, n_in, n_out, toks[s], scratch};
            matmul_row(b, arr, &j, toks[s] == 512 ? o->min_time * 2 : o->min_time);
        }
    }
done:
    tk_free(x);
    tk_free(y);
    tk_free(scratch);
}

/* ================================================================ attention */

typedef struct {
    float *out, *q, *scratch; /* scratch: (threads, scratch_floats) */
    float *part;              /* segment partials (kern_attn_part) */
    size_t scratch_floats;
    size_t n_head, n_ctx;
    kern_kv_view kv;
} attn_job;

/* As the engine splits a decode step: heads across the threads, or beyond KERN_ATTN_SEG
 * positions the segments (every head of a segment together), folded by the caller */
static void attn_worker(void *ctx, int ith, int nth) {
    attn_job *j = ctx;
    const size_t n_seg = kern_attn_n_seg(j->n_ctx), n = n_seg ? n_seg : j->n_head;
    const size_t a = n * (size_t)ith / (size_t)nth, b = n * (size_t)(ith + 1) / (size_t)nth;
    const float scale = 1.0f / sqrtf((float)j->kv.head_dim);
    float *scratch = j->scratch + (size_t)ith * j->scratch_floats;
    if (a < b && n_seg) kern_attn_part(j->part, j->q, j->n_head, 0, j->n_head, &j->kv, j->n_ctx, a, b, scale, scratch);
    else if (a < b) kern_attn_paged(j->out, j->q, j->n_head, a, b, &j->kv, j->n_ctx, scale, scratch);
}

typedef struct {
    kern_pool *pool;
    attn_job *j;
} attn_call_ctx;

static void attn_call(void *ctx) {
    attn_call_ctx *c = ctx;
    kern_pool_run(c->pool, attn_worker, c->j);
    if (kern_attn_n_seg(c->j->n_ctx))
        kern_attn_fold(c->j->out, c->j->part, 0, c->j->n_head, c->j->kv.head_dim, c->j->n_ctx);
}

static void sec_attn(bench *b) {
    const bench_opts *o = b->o;
    size_t hd = b->shape.n_embd / b->shape.n_head, n_head = b->shape.n_head, n_kv = b->shape.n_head_kv, bs = 16;
    size_t ctxs[5] = {128, 256, 512, 1024, 2048}, max_ctx = 2048, row = n_kv * hd;
    size_t rb = kern_row_bytes(o->kv_type, row), nth = (size_t)kern_pool_size(b->pool);
    uint8_t *k = tk_malloc(max_ctx * rb), *v = tk_malloc(max_ctx * rb);
    float *q = tk_malloc(n_head * hd * sizeof(float)), *out = tk_malloc(n_head * hd * sizeof(float));
    float *kr = tk_malloc(2 * row * sizeof(float));
    float *scratch = tk_malloc(nth * kern_attn_scratch_floats(max_ctx, hd) * sizeof(float));
    float *part = tk_malloc((kern_attn_n_seg(max_ctx) + 1) * n_head * (hd + 2) * sizeof(float));
    int32_t *table = tk_malloc(max_ctx / bs * sizeof(int32_t));
    cJSON *arr = cJSON_AddArrayToObject(b->json, "attention");
    cJSON_AddStringToObject(b->json, "attention_kv_type", eng_kv_type_name(o->kv_type));
    fprintf(b->tab, "\n== kern_attn_paged, one token, %zu heads (%zu KV) x %zu, %s KV in blocks of %zu\n", n_head, n_kv,
            hd, eng_kv_type_name(o->kv_type), bs);
    fprintf(b->tab, "  %6s %9s %8s %9s\n", "ctx", "us", "KV GB/s", "GFLOP/s");
    if (!rb) {
        fprintf(b->tab, "  (skipped: head size %zu is not a multiple of 32)\n", hd);
        goto done;
    }
    if (!k || !v || !q || !out || !kr || !scratch || !table || !part) goto done;
    for (size_t i = 0; i < max_ctx / bs; i++) table[i] = (int32_t)((i * 7) % (max_ctx / bs)); /* scattered blocks */
    for (size_t p = 0; p < max_ctx; p++) { /* random rows, stored as the engine stores them */
        fill_rand(kr, 2 * row, 1.0f);
        kern_kv_store(k, v, o->kv_type, bs, n_kv, hd, table, (int32_t)p, kr, kr + row);
    }
    fill_rand(q, n_head * hd, 1.0f);
    for (size_t c = 0; c < 5; c++) {
        if (o->quick && (c == 1 || c == 3)) continue;
        attn_job j = {out, q, scratch, part, kern_attn_scratch_floats(max_ctx, hd), n_head, ctxs[c],
                      {k, v, o->kv_type, bs, n_kv, hd, table}};
        attn_call_ctx cc = {b->pool, &j};
        double s = time_median(attn_call, &cc, o->min_time / 4);
        double bytes = 2.0 * (double)(ctxs[c] * rb), flops = 4.0 * (double)(n_head * ctxs[c] * hd);
        fprintf(b->tab, "  %6zu %9.1f %8.1f %9.1f\n", ctxs[c], s * 1e6, bytes / s * 1e-9, flops / s * 1e-9);
        cJSON *e = cJSON_CreateObject();
        jnum(e, "ctx", (double)ctxs[c]);
        jnum(e, "us", s * 1e6);
        jnum(e, "kv_gbs", bytes / s * 1e-9);
        jnum(e, "gflops", flops / s * 1e-9);
        cJSON_AddItemToArray(arr, e);
    }
done:
    tk_free(k);
    tk_free(v);
    tk_free(q);
    tk_free(out);
    tk_free(kr);
    tk_free(scratch);
    tk_free(part);
    tk_free(table);
}

/* ================================================================ step */

typedef struct {
    eng_ctx *c;
    eng_batch batch;
    float *logits;
    int rc;
} step_job;

static void step_call(void *ctx) {
    step_job *s = ctx;
    int rc = eng_forward(s->c, &s->batch, s->logits);
    if (rc < 0) s->rc = rc;
}

/* Writes a random model of the bench's shape to a temp file, loads it and unlinks the file
 * (the map keeps the data). */
static eng_model *load_random_model(bench *b, char *err, size_t errlen) {
    const char *dir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/tokd-bench-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(err, errlen, "temp model: %.400s: %s", path, strerror(errno));
        return NULL;
    }
    close(fd);
    eng_mkmodel_spec s = b->shape;
    s.type = b->o->model_type;
    s.n_threads = b->o->threads;
    s.name = b->o->shape;
    double t0 = tk_now_s();
    eng_model *m = NULL;
    if (eng_mkmodel_write(&s, path, err, errlen) == 0 && eng_model_load(path, &m, err, errlen) != 0) m = NULL;
    unlink(path);
    if (m) fprintf(b->tab, "  (random %s %s model written and loaded in %.1f s)\n", b->o->shape,
                   kern_type_name(s.type), tk_now_s() - t0);
    return m;
}

/* Parameters the forward pass multiplies by: every matrix but the embedding lookup, plus
 * the embedding when it doubles as the output matrix; and the dominant matrix type. */
static double model_params(const eng_model *m, uint32_t *main_type) {
    const gguf_file *g = eng_model_gguf(m);
    bool tied = eng_model_traits(m)->tied_embd;
    double n = 0;
    *main_type = KERN_TYPE_F32;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (t->n_dims < 2 || (!tied && strcmp(t->name, "token_embd.weight") == 0)) continue;
        n += (double)t->ne[0] * (double)t->ne[1] * (double)t->ne[2] * (double)t->ne[3];
        if (strcmp(t->name, "blk.0.ffn_down.weight") == 0) *main_type = t->type;
    }
    return n;
}

/* Real KV in every decode sequence's context: sequence 0 prefilled over ctx tokens, chunk tokens
 * a step, and its blocks copied to the other 31. (A cache never written reads as the kernel's
 * one zero page, which stays in L1: the decode steps would not stream their KV.) */
static int step_fill_kv(bench *b, eng_ctx *c, const eng_model *m, float *logits, int32_t *tables,
                        int32_t blocks_per_seq, int32_t chunk) {
    const eng_hparams *hp = eng_model_hparams(m);
    int32_t toks[64];
    double t0 = tk_now_s();
    chunk = chunk > 64 ? 64 : chunk;
    for (int32_t p = 0; p < b->o->ctx; p += chunk) {
        const int32_t n = b->o->ctx - p < chunk ? b->o->ctx - p : chunk;
        for (int32_t i = 0; i < n; i++) toks[i] = (int32_t)(((p + i) * 7919 + 11) % (int32_t)hp->n_vocab);
        eng_seq_step sq = {tables, p, n, ENG_LOGITS_LAST};
        eng_batch bt = {toks, n, &sq, 1};
        int rc = eng_forward(c, &bt, logits);
        if (rc < 0) return rc;
    }
    for (int32_t s = 1; s < 32; s++)
        for (int32_t i = 0; i < blocks_per_seq; i++) {
            int rc = eng_kv_copy_block(c, tables[i], tables[s * blocks_per_seq + i]);
            if (rc < 0) return rc;
        }
    fprintf(b->tab, "  (KV of the 32 decode sequences written: %d-token prefill, blocks copied, %.1f s)\n", b->o->ctx,
            tk_now_s() - t0);
    return 0;
}

static int step_decode(bench *b, eng_ctx *c, const eng_model *m, cJSON *arr, float *logits, int32_t *tables,
                       int32_t blocks_per_seq) {
    const eng_hparams *hp = eng_model_hparams(m);
    int32_t toks[32];
    eng_seq_step seqs[32];
    const size_t kv_token_bytes = eng_kv_token_bytes(m, eng_ctx_params_get(c)->kv_type); /* all layers, K and V */
    int32_t batches[3] = {1, 8, 32};
    for (int bi = 0; bi < 3; bi++) {
        int32_t B = batches[bi];
        for (int32_t s = 0; s < B; s++) {
            toks[s] = (int32_t)((s * 977 + 13) % (int32_t)hp->n_vocab);
            seqs[s] = (eng_seq_step){tables + s * blocks_per_seq, b->o->ctx, 1, ENG_LOGITS_LAST};
        }
        step_job j = {c, {toks, B, seqs, B}, logits, 0};
        double sec = time_median(step_call, &j, b->o->min_time);
        if (j.rc) return j.rc;
        double wb = (double)eng_model_weight_bytes(m);
        double kvb = (double)B * (double)(b->o->ctx + 1) * (double)kv_token_bytes;
        double floor_s = b->bw_gbs > 0 ? (wb + kvb) / (b->bw_gbs * 1e9) : NAN;
        fprintf(b->tab, "  decode batch %2d: %8.2f ms/step %9.1f tok/s %8.1f GB/s   floor %7.2f ms (%.2f of it)\n", B,
                sec * 1e3, B / sec, (wb + kvb) / sec * 1e-9, floor_s * 1e3, floor_s / sec);
        cJSON *e = cJSON_CreateObject();
        jnum(e, "batch", B);
        jnum(e, "ms", sec * 1e3);
        jnum(e, "tok_s", B / sec);
        jnum(e, "weight_bytes", wb);
        jnum(e, "kv_bytes", kvb);
        jnum(e, "gbs", (wb + kvb) / sec * 1e-9);
        if (isfinite(floor_s)) jnum(e, "floor_ms", floor_s * 1e3), jnum(e, "frac_floor", floor_s / sec);
        cJSON_AddItemToArray(arr, e);
    }
    return 0;
}

static int step_prefill(bench *b, eng_ctx *c, const eng_model *m, cJSON *js, float *logits, int32_t *table) {
    int32_t P = b->o->prefill;
    int32_t *toks = tk_malloc((size_t)P * sizeof(int32_t));
    if (!toks) return ENG_ERR_NOMEM;
    for (int32_t i = 0; i < P; i++) toks[i] = (int32_t)((i * 7919 + 3) % (int32_t)eng_model_hparams(m)->n_vocab);
    eng_seq_step sq = {table, 0, P, ENG_LOGITS_LAST};
    step_job j = {c, {toks, P, &sq, 1}, logits, 0};
    double t0 = tk_now_s();
    step_call(&j); /* one run: a prefill takes seconds on a few cores */
    double sec = tk_now_s() - t0;
    if (!j.rc && sec < b->o->min_time) sec = time_median(step_call, &j, b->o->min_time);
    tk_free(toks);
    if (j.rc) return j.rc;
    uint32_t mt;
    double params = model_params(m, &mt), gf = 2.0 * params * P / sec * 1e-9;
    double frac = b->peak[mt] > 0 ? gf / b->peak[mt] : NAN;
    fprintf(b->tab, "  prefill %4d:    %8.1f ms %10.1f tok/s %8.1f GFLOP/s (%.2f of %s peak; 2 x %.1fM params x tokens)\n",
            P, sec * 1e3, P / sec, gf, frac, kern_type_name(mt), params / 1e6);
    cJSON *e = cJSON_AddObjectToObject(js, "prefill");
    jnum(e, "tokens", P);
    jnum(e, "ms", sec * 1e3);
    jnum(e, "tok_s", P / sec);
    jnum(e, "params", params);
    jnum(e, "gflops", gf);
    if (isfinite(frac)) jnum(e, "frac_peak", frac);
    return 0;
}

static int sec_step(bench *b) {
    const bench_opts *o = b->o;
    char err[512] = "";
    eng_model *m = NULL;
    eng_ctx *c = NULL;
    float *logits = NULL;
    int32_t *tables = NULL;
    int status = 1;
    fprintf(b->tab, "\n== whole steps (eng_forward), context %d for decodes, %s KV\n", o->ctx, eng_kv_type_name(o->kv_type));
    if (o->model ? eng_model_load(o->model, &m, err, sizeof err) != 0 : !(m = load_random_model(b, err, sizeof err))) {
        fprintf(stderr, "tokd bench: %s\n", err);
        return 1;
    }
    const eng_hparams *hp = eng_model_hparams(m);
    int32_t bs = 16, per_seq = (o->ctx + 1 + bs - 1) / bs, pre_blocks = (o->prefill + bs - 1) / bs;
    eng_ctx_params p;
    eng_ctx_params_default(&p);
    p.max_tokens = o->prefill > 32 ? o->prefill : 32;
    p.max_logits = 32;
    p.block_size = bs;
    p.max_ctx = (o->ctx + 1 > o->prefill ? o->ctx + 1 : o->prefill);
    p.n_blocks = 32 * per_seq + pre_blocks;
    p.n_threads = o->threads;
    p.quant_act = o->quant_act;
    p.pin_threads = o->pin;
    p.kv_type = o->kv_type;
    if (eng_ctx_new(m, &p, &c, err, sizeof err)) {
        fprintf(stderr, "tokd bench: %s\n", err);
        goto done;
    }
    logits = tk_malloc((size_t)32 * hp->n_vocab * sizeof(float));
    tables = tk_malloc((size_t)p.n_blocks * sizeof(int32_t));
    if (!logits || !tables) goto done;
    for (int32_t i = 0; i < p.n_blocks; i++) tables[i] = i;
    double wb = (double)eng_model_weight_bytes(m);
    fprintf(b->tab, "  model %s: %s, %u layers, n_embd %u, %u/%u heads, vocab %u, %.1f MiB of weights read per step\n",
            eng_model_name(m), eng_model_traits(m)->arch_name, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv,
            hp->n_vocab, wb / 1048576.0);
    cJSON *js = cJSON_AddObjectToObject(b->json, "step");
    cJSON_AddStringToObject(js, "model", o->model ? o->model : o->shape);
    jnum(js, "weight_bytes", wb);
    jnum(js, "ctx", o->ctx);
    cJSON_AddStringToObject(js, "kv_type", eng_kv_type_name(o->kv_type));
    int rc = step_fill_kv(b, c, m, logits, tables, per_seq, p.max_tokens);
    if (!rc) rc = step_decode(b, c, m, cJSON_AddArrayToObject(js, "decode"), logits, tables, per_seq);
    if (!rc) rc = step_prefill(b, c, m, js, logits, tables + 32 * per_seq);
    if (rc) fprintf(stderr, "tokd bench: step: %s\n", eng_ctx_last_error(c));
    status = rc ? 1 : 0;
done:
    tk_free(logits);
    tk_free(tables);
    eng_ctx_destroy(c);
    eng_model_destroy(m);
    return status;
}

/* ================================================================ options */

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: tokd bench [options]        (docs/bench.md explains every figure)\n"
            "  --quick            a run of under ~10 s: smaller buffer and shapes, short timings\n"
            "  --json             JSON on stdout; the table goes to stderr\n"
            "  --only LIST        sections, comma-separated: bw,peak,matmul,attn,step (default: all)\n"
            "  --threads N        compute threads (default: all CPUs)\n"
            "  --bw-bytes N[K|M|G] bandwidth buffer, also the matmul ring (default 1G; --quick 512M);\n"
            "                     keep it several times larger than the last-level cache\n"
            "  --types LIST       weight types (default F32,F16,BF16,Q8_0,Q4_0,Q4_1,Q4_K,Q5_K,Q6_K)\n"
            "  --shape NAME       S135, S1B (default; --quick S135) or LLAMA8B: kernel shapes and the\n"
            "                     random model of the step section\n"
            "  --model PATH       a GGUF model for the step section instead of a random one\n"
            "  --type T           weight type of the random model (default Q8_0)\n"
            "  --ctx N            tokens in context for decode steps (default 128)\n"
            "  --kv-type TYPE     KV cache of the attn and step sections: f16 (default), q8_0, f32\n"
            "  --prefill N        prefill length (default 512; --quick 64)\n"
            "  --min-time S       seconds per measurement (default 0.5; --quick 0.1)\n"
            "  --quant-act        kern_matmul with llama.cpp-style quantised activations\n"
            "  --pin              pin compute thread i to the i-th allowed CPU (as serve's pin_threads)\n");
}

static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = *end == 'K' || *end == 'k' ? 1024.0 : *end == 'M' || *end == 'm' ? 1048576.0
               : *end == 'G' || *end == 'g' ? 1073741824.0 : 1.0;
    if (mul > 1) end++;
    if (errno || end == s || *end || !(v * mul >= 4096) || v * mul > 1e12) return -1;
    *out = (size_t)(v * mul) / 64 * 64;
    return 0;
}

static int parse_list(const char *s, bench_opts *o, bool types) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    if (types) o->n_types = 0;
    else o->sections = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (types) {
            uint32_t t;
            if (eng_quant_type_parse(tok, &t) || o->n_types == BENCH_MAX_TYPES) goto bad;
            o->types[o->n_types++] = t;
            continue;
        }
        size_t i = 0;
        while (i < 5 && strcmp(tok, sec_names[i]) != 0) i++;
        if (i == 5) goto bad;
        o->sections |= 1u << i;
        continue;
    bad:
        fprintf(stderr, "tokd bench: %s: unknown %s '%s'\n", types ? "--types" : "--only", types ? "type" : "section", tok);
        return -1;
    }
    return (types ? o->n_types : (int)o->sections) ? 0 : -1;
}

static int parse_bench(int argc, char **argv, bench_opts *o) {
    static const struct option longs[] = {
        {"quick", 0, 0, 'q'},    {"json", 0, 0, 'J'},      {"only", 1, 0, 'o'},   {"threads", 1, 0, 'j'},
        {"bw-bytes", 1, 0, 'b'}, {"types", 1, 0, 'T'},     {"shape", 1, 0, 's'},  {"model", 1, 0, 'm'},
        {"type", 1, 0, 't'},     {"ctx", 1, 0, 'c'},       {"prefill", 1, 0, 'p'}, {"min-time", 1, 0, 'M'},
        {"quant-act", 0, 0, 'A'}, {"pin", 0, 0, 'P'},      {"kv-type", 1, 0, 'K'},  {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    long v;
    char *end;
    bool have_bw = false, have_shape = false, have_prefill = false, have_time = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        errno = 0;
        switch (c) {
        case 'q': o->quick = true; break;
        case 'J': o->json = true; break;
        case 'A': o->quant_act = true; break;
        case 'P': o->pin = true; break;
        case 'o': if (parse_list(optarg, o, false)) return -1; break;
        case 'T': if (parse_list(optarg, o, true)) return -1; break;
        case 'm': o->model = optarg; break;
        case 's': o->shape = optarg; have_shape = true; break;
        case 'b':
            if (parse_size(optarg, &o->bw_bytes)) {
                fprintf(stderr, "tokd bench: --bw-bytes: '%s' is not a size of at least 4K\n", optarg);
                return -1;
            }
            have_bw = true;
            break;
        case 't':
            if (eng_quant_type_parse(optarg, &o->model_type)) {
                fprintf(stderr, "tokd bench: --type: unknown type '%s'\n", optarg);
                return -1;
            }
            break;
        case 'M':
            o->min_time = strtod(optarg, &end);
            if (*end || !(o->min_time > 0 && o->min_time <= 60)) {
                fprintf(stderr, "tokd bench: --min-time: '%s' is not in (0, 60]\n", optarg);
                return -1;
            }
            have_time = true;
            break;
        case 'j': case 'c': case 'p':
            v = strtol(optarg, &end, 10);
            if (errno || *end || v < 1 || v > (c == 'j' ? 256 : 16384)) {
                fprintf(stderr, "tokd bench: '%s' is not a number in [1, %d]\n", optarg, c == 'j' ? 256 : 16384);
                return -1;
            }
            if (c == 'j') o->threads = (int)v;
            else if (c == 'c') o->ctx = (int32_t)v;
            else o->prefill = (int32_t)v, have_prefill = true;
            break;
        case 'K':
            if (eng_kv_type_parse(optarg, &o->kv_type)) {
                fprintf(stderr, "tokd bench: --kv-type: '%s' is not f16, q8_0 or f32\n", optarg);
                return -1;
            }
            break;
        case 'h': bench_usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "tokd bench: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!have_bw) o->bw_bytes = o->quick ? (size_t)512 << 20 : (size_t)1 << 30;
    if (!have_shape) o->shape = o->quick ? "S135" : "S1B";
    if (!have_prefill) o->prefill = o->quick ? 64 : 512;
    if (!have_time) o->min_time = o->quick ? 0.1 : 0.5;
    return 0;
}

int cli_bench(int argc, char **argv) {
    bench_opts o = {.sections = SEC_ALL, .model_type = KERN_TYPE_Q8_0, .kv_type = KERN_TYPE_F16, .ctx = 128};
    static const uint32_t all_types[] = {KERN_TYPE_F32,  KERN_TYPE_F16,  KERN_TYPE_BF16, KERN_TYPE_Q8_0, KERN_TYPE_Q4_0,
                                         KERN_TYPE_Q4_1, KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
    o.n_types = (int)(sizeof all_types / sizeof all_types[0]);
    memcpy(o.types, all_types, sizeof all_types);
    if (parse_bench(argc, argv, &o)) {
        bench_usage(stderr);
        return 2;
    }
    if (o.sections & (SEC_MATMUL | SEC_STEP)) o.sections |= SEC_BW | SEC_PEAK; /* their floors */
    bench b = {.o = &o, .tab = o.json ? stderr : stdout};
    eng_mkmodel_spec_default(&b.shape);
    if (eng_mkmodel_shape(o.shape, &b.shape)) {
        fprintf(stderr, "tokd bench: --shape: unknown shape '%s' (S135, S1B, LLAMA8B)\n", o.shape);
        return 2;
    }
    tk_log_set_level(TK_LOG_WARN);
    kern_init();
    int status = 1;
    b.json = cJSON_CreateObject();
    b.pool = kern_pool_new_pinned(o.threads, o.pin);
    b.buf_bytes = o.bw_bytes;
    if (o.sections & (SEC_BW | SEC_MATMUL)) b.buf = aligned_alloc(64, b.buf_bytes);
    if (!b.json || !b.pool || ((o.sections & (SEC_BW | SEC_MATMUL)) && !b.buf)) {
        fprintf(stderr, "tokd bench: out of memory (--bw-bytes %zu)\n", b.buf_bytes);
        goto done;
    }
    fprintf(b.tab, "tokd bench: %d threads, shape %s%s\n", kern_pool_size(b.pool), o.shape, o.quick ? ", quick" : "");
    jnum(b.json, "threads", kern_pool_size(b.pool));
    cJSON_AddStringToObject(b.json, "shape", o.shape);
    cJSON_AddBoolToObject(b.json, "quick", o.quick);
    double t0 = tk_now_s();
    if (b.buf) kern_membw_touch(b.pool, b.buf, b.buf_bytes, 1);
    if (o.sections & SEC_BW) sec_bw(&b);
    if (o.sections & SEC_PEAK) sec_peak(&b);
    if (o.sections & SEC_MATMUL) sec_matmul(&b);
    if (o.sections & SEC_ATTN) sec_attn(&b);
    status = (o.sections & SEC_STEP) ? sec_step(&b) : 0;
    jnum(b.json, "seconds", tk_now_s() - t0);
    fprintf(b.tab, "\n(%.1f s)\n", tk_now_s() - t0);
    if (o.json) {
        char *s = cJSON_Print(b.json);
        if (s) printf("%s\n", s);
        free(s);
    }
done:
    free(b.buf);
    kern_pool_destroy(b.pool);
    cJSON_Delete(b.json);
    return status;
}
