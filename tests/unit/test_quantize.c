/* Tests of engine/quantize (model quantization, random-weight models) and the bench's
 * bandwidth function:
 *  - round trip: a random F32 model quantized to each type loads, its tensors have the
 *    expected types, and its logits on a few tokens agree with the F32 model's within a
 *    per-type bound on correlation and relative RMS error (the figures are printed);
 *  - the fallback for widths that are not a multiple of the block, metadata copied byte for
 *    byte, clear errors for bad types and already-quantized inputs;
 *  - mkmodel writes a loadable model of a custom small shape for each architecture (one with
 *    the shared llama vocab), deterministically, whatever the thread count;
 *  - kern_membw_* read the whole buffer and give a positive figure (no timing assertions). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/quantize.h"
#include "engine/tokenizer.h"
#include "kernels/kern.h"
#include "tests/unit/testutil.h"

static void tmp_path(char *buf, size_t cap, const char *tag) {
    snprintf(buf, cap, "%s/tokd_test_quantize_%d_%s.gguf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(),
             tag);
}

/* A tiny llama whose widths are multiples of 256, so every type applies as is. */
static void tiny_spec(eng_mkmodel_spec *s, uint32_t type) {
    eng_mkmodel_spec_default(s);
    s->n_embd = 256;
    s->n_layer = 2;
    s->n_head = 4;
    s->n_head_kv = 2;
    s->n_ff = 512;
    s->n_vocab = 300;
    s->type = type;
    s->std = 0.02f;
    s->seed = 7;
    s->n_threads = 2;
}

static void write_or_fail(const eng_mkmodel_spec *s, const char *path) {
    char err[512] = "";
    int rc = eng_mkmodel_write(s, path, err, sizeof err);
    ck_assert_msg(rc == 0, "mkmodel %s: %s", path, err);
}

static eng_model *load_or_fail(const char *path) {
    char err[512] = "";
    eng_model *m = NULL;
    ck_assert_msg(eng_model_load(path, &m, err, sizeof err) == 0, "load %s: %s", path, err);
    return m;
}

/* Logits of n tokens (every row) with exact f32 activations. Caller frees. */
static float *run_logits(const eng_model *m, const int32_t *toks, int32_t n) {
    eng_ctx_params p;
    eng_ctx_params_default(&p);
    p.max_tokens = n;
    p.max_ctx = 64;
    p.n_threads = 2;
    eng_ctx *c = NULL;
    char err[256] = "";
    ck_assert_msg(eng_ctx_new(m, &p, &c, err, sizeof err) == 0, "ctx: %s", err);
    int32_t blocks[4] = {0, 1, 2, 3};
    eng_seq_step sq = {blocks, 0, n, ENG_LOGITS_ALL};
    eng_batch b = {toks, n, &sq, 1};
    size_t nv = eng_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)n * nv * sizeof(float));
    ck_assert_int_eq(eng_forward(c, &b, logits), n);
    eng_ctx_destroy(c);
    return logits;
}

typedef struct {
    uint32_t type;
    double max_w_rel;            /* relative RMS error of any re-encoded matrix */
    double min_corr, max_rel_rms; /* of the logits */
} rt_case;

/* Logit bounds sit 2-3x outside what each type gives on this model (the test prints them):
 * random layers amplify weight error 2-3x by the logits. The weight bounds follow from the
 * formats: the step of a block's grid over a N(0,1)-like block. */
static const rt_case rt_cases[] = {
    {KERN_TYPE_F16, 0.001, 0.9999, 0.003}, {KERN_TYPE_BF16, 0.005, 0.9995, 0.015},
    {KERN_TYPE_Q8_0, 0.01, 0.999, 0.04},   {KERN_TYPE_Q6_K, 0.04, 0.995, 0.1},
    {KERN_TYPE_Q5_K, 0.08, 0.98, 0.2},     {KERN_TYPE_Q4_K, 0.15, 0.95, 0.35},
    {KERN_TYPE_Q4_1, 0.15, 0.95, 0.35},    {KERN_TYPE_Q4_0, 0.2, 0.95, 0.4},
};

/* Relative RMS error of matrix b (re-encoded) against a (the F32 original). */
static double weight_rel_err(const gguf_tensor *a, const gguf_tensor *b) {
    size_t n = (size_t)a->ne[0], ra = kern_row_bytes(a->type, n), rb = kern_row_bytes(b->type, n);
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    double se = 0, ss = 0;
    for (uint64_t r = 0; r < a->ne[1]; r++) {
        kern_dequant_row_ref(a->type, (const uint8_t *)a->data + r * ra, x, n);
        kern_dequant_row_ref(b->type, (const uint8_t *)b->data + r * rb, y, n);
        for (size_t i = 0; i < n; i++) se += (double)(x[i] - y[i]) * (x[i] - y[i]), ss += (double)x[i] * x[i];
    }
    free(x);
    free(y);
    return sqrt(se / ss);
}

static uint32_t expected_type(uint32_t type, const gguf_tensor *t) {
    if (t->n_dims == 1) return KERN_TYPE_F32;
    bool low = type == KERN_TYPE_Q4_0 || type == KERN_TYPE_Q4_1 || type == KERN_TYPE_Q4_K || type == KERN_TYPE_Q5_K;
    if (strcmp(t->name, "output.weight") == 0 && low) return KERN_TYPE_Q6_K;
    return type;
}

START_TEST(test_quantize_round_trip) {
    const rt_case *rc = &rt_cases[_i];
    char src[256], dst[256], err[512] = "";
    tmp_path(src, sizeof src, "f32");
    tmp_path(dst, sizeof dst, kern_type_name(rc->type));
    eng_mkmodel_spec s;
    tiny_spec(&s, KERN_TYPE_F32);
    write_or_fail(&s, src);
    eng_quant_params qp;
    eng_quant_params_default(&qp, rc->type);
    qp.n_threads = 2;
    eng_quant_stats st;
    ck_assert_msg(eng_quantize_file(src, dst, &qp, &st, err, sizeof err) == 0, "quantize: %s", err);
    ck_assert_int_eq(st.n_fallback, 0);
    ck_assert_int_eq(st.n_converted, rc->type == KERN_TYPE_F32 ? 0 : 2 + 7 * s.n_layer);

    eng_model *mf = load_or_fail(src), *mq = load_or_fail(dst);
    const gguf_file *gf = eng_model_gguf(mf), *gq = eng_model_gguf(mq);
    ck_assert_int_eq(gguf_n_tensors(gf), gguf_n_tensors(gq));
    double w_err = 0;
    for (int64_t i = 0; i < gguf_n_tensors(gq); i++) {
        const gguf_tensor *t = gguf_tensor_at(gq, i), *t0 = gguf_tensor_at(gf, i);
        ck_assert_str_eq(t->name, t0->name);
        ck_assert_msg(t->type == expected_type(rc->type, t0), "%s: %s, expected %s", t->name, kern_type_name(t->type),
                      kern_type_name(expected_type(rc->type, t0)));
        if (t->type == rc->type && t0->n_dims == 2) {
            double e = weight_rel_err(t0, t);
            w_err = e > w_err ? e : w_err;
        }
    }
    ck_assert_msg(w_err > 0 && w_err < rc->max_w_rel, "%s: weight relative error %f (bound %f)",
                  kern_type_name(rc->type), w_err, rc->max_w_rel);
    uint32_t ft = 99;
    ck_assert_int_eq(gguf_get_u32(gq, "general.file_type", &ft), 0);
    ck_assert_uint_eq(ft, eng_quant_file_type(rc->type));

    int32_t toks[6] = {1, 17, 200, 5, 299, 42};
    float *lf = run_logits(mf, toks, 6), *lq = run_logits(mq, toks, 6);
    size_t n = 6 * (size_t)eng_model_hparams(mf)->n_vocab;
    double mf_ = 0, mq_ = 0, sff = 0, sqq = 0, sfq = 0, se = 0;
    for (size_t i = 0; i < n; i++) mf_ += lf[i], mq_ += lq[i];
    mf_ /= (double)n, mq_ /= (double)n;
    for (size_t i = 0; i < n; i++) {
        double a = lf[i] - mf_, b = lq[i] - mq_;
        sff += a * a, sqq += b * b, sfq += a * b;
        se += (double)(lf[i] - lq[i]) * (lf[i] - lq[i]);
    }
    double corr = sfq / sqrt(sff * sqq), rel = sqrt(se / sff);
    printf("quantize %-5s: weights rel. RMS error <= %.5f; logits correlation %.6f, rel. RMS error %.5f; "
           "%llu -> %llu bytes\n", kern_type_name(rc->type), w_err, corr, rel, (unsigned long long)st.bytes_in,
           (unsigned long long)st.bytes_out);
    ck_assert_msg(corr > rc->min_corr, "%s: correlation %f <= %f", kern_type_name(rc->type), corr, rc->min_corr);
    ck_assert_msg(rel < rc->max_rel_rms, "%s: relative RMS %f >= %f", kern_type_name(rc->type), rel, rc->max_rel_rms);
    free(lf);
    free(lq);
    eng_model_destroy(mf);
    eng_model_destroy(mq);
    unlink(src);
    unlink(dst);
}
END_TEST

/* Widths that are not a multiple of 256 fall back to Q8_0 (multiple of 32) for K-quants. */
START_TEST(test_quantize_fallback) {
    char src[256], dst[256], err[512] = "";
    tmp_path(src, sizeof src, "fb_f16");
    tmp_path(dst, sizeof dst, "fb_q4k");
    eng_mkmodel_spec s;
    tiny_spec(&s, KERN_TYPE_F16);
    s.n_embd = 96; /* 3 x 32 */
    s.n_head = 3;
    s.n_head_kv = 1;
    s.n_ff = 256;
    write_or_fail(&s, src);
    eng_quant_params qp;
    eng_quant_params_default(&qp, KERN_TYPE_Q4_K);
    eng_quant_stats st;
    ck_assert_msg(eng_quantize_file(src, dst, &qp, &st, err, sizeof err) == 0, "quantize: %s", err);
    eng_model *m = load_or_fail(dst);
    const gguf_file *g = eng_model_gguf(m);
    ck_assert_uint_eq(gguf_find_tensor(g, "blk.0.attn_q.weight")->type, KERN_TYPE_Q8_0);
    ck_assert_uint_eq(gguf_find_tensor(g, "output.weight")->type, KERN_TYPE_Q8_0);
    ck_assert_uint_eq(gguf_find_tensor(g, "blk.1.ffn_down.weight")->type, KERN_TYPE_Q4_K); /* width 256 */
    ck_assert_uint_eq(gguf_find_tensor(g, "blk.1.ffn_norm.weight")->type, KERN_TYPE_F32);
    ck_assert_int_eq(st.n_fallback, 2 + 6 * s.n_layer);
    eng_model_destroy(m);
    unlink(src);
    unlink(dst);
}
END_TEST

/* Every key but the rewritten ones survives with its type; --pure and the overrides apply. */
START_TEST(test_quantize_metadata_and_overrides) {
    char src[256], dst[256], err[512] = "", vocab[512];
    tmp_path(src, sizeof src, "md_src");
    tmp_path(dst, sizeof dst, "md_dst");
    eng_mkmodel_spec s;
    tiny_spec(&s, KERN_TYPE_BF16);
    s.n_vocab = 0;
    s.vocab_from = tu_shared_path("testdata/tokenizer/ggml-vocab-llama-spm.gguf", vocab, sizeof vocab);
    s.n_embd = 64;
    s.n_ff = 128;
    write_or_fail(&s, src);
    eng_quant_params qp;
    eng_quant_params_default(&qp, KERN_TYPE_Q4_0);
    qp.pure = true;
    qp.embd_type = KERN_TYPE_F16;
    ck_assert_msg(eng_quantize_file(src, dst, &qp, NULL, err, sizeof err) == 0, "quantize: %s", err);
    gguf_file *a = NULL, *b = NULL;
    ck_assert_int_eq(gguf_open(src, &a, err, sizeof err), 0);
    ck_assert_int_eq(gguf_open(dst, &b, err, sizeof err), 0);
    ck_assert_int_eq(gguf_n_kv(a), gguf_n_kv(b));
    for (int64_t i = 0; i < gguf_n_kv(a); i++) {
        int64_t j = gguf_find_key(b, gguf_kv_key(a, i));
        ck_assert_msg(j >= 0, "key %s lost", gguf_kv_key(a, i));
        ck_assert_int_eq(gguf_kv_type(a, i), gguf_kv_type(b, j));
    }
    uint64_t na = 0, nb = 0;
    const char *sa, *sb;
    size_t la, lb;
    ck_assert_int_eq(gguf_get_arr_str(b, "tokenizer.ggml.tokens", &nb), 0);
    ck_assert_int_eq(gguf_get_arr_str(a, "tokenizer.ggml.tokens", &na), 0);
    ck_assert_uint_eq(na, 32000);
    ck_assert_uint_eq(nb, na);
    ck_assert_int_eq(gguf_arr_str_at(b, "tokenizer.ggml.tokens", 31999, &sb, &lb), 0);
    ck_assert_int_eq(gguf_arr_str_at(a, "tokenizer.ggml.tokens", 31999, &sa, &la), 0);
    ck_assert(la == lb && memcmp(sa, sb, la) == 0);
    ck_assert_uint_eq(gguf_find_tensor(b, "token_embd.weight")->type, KERN_TYPE_F16);
    ck_assert_uint_eq(gguf_find_tensor(b, "output.weight")->type, KERN_TYPE_Q4_0); /* pure: no Q6_K */
    ck_assert_uint_eq(gguf_find_tensor(b, "blk.0.ffn_up.weight")->type, KERN_TYPE_Q4_0);
    gguf_close(a);
    gguf_close(b);
    eng_model_destroy(load_or_fail(dst)); /* the tokenizer loads too */
    unlink(src);
    unlink(dst);
}
END_TEST

START_TEST(test_quantize_errors) {
    char src[256], dst[256], err[512] = "";
    uint32_t t;
    ck_assert_int_eq(eng_quant_type_parse("Q3_K", &t), ENG_ERR_INVALID);
    ck_assert_int_eq(eng_quant_type_parse("q4_k", &t), 0);
    ck_assert_uint_eq(t, KERN_TYPE_Q4_K);
    tmp_path(src, sizeof src, "err_q41");
    tmp_path(dst, sizeof dst, "err_out");
    eng_mkmodel_spec s;
    tiny_spec(&s, KERN_TYPE_Q4_1);
    write_or_fail(&s, src);
    eng_quant_params qp;
    eng_quant_params_default(&qp, KERN_TYPE_Q8_0);
    int rc = eng_quantize_file(src, dst, &qp, NULL, err, sizeof err);
    ck_assert_int_eq(rc, ENG_ERR_FORMAT);
    ck_assert_msg(strstr(err, "token_embd.weight") && strstr(err, "Q4_1"), "message: %s", err);
    ck_assert_int_eq(access(dst, F_OK), -1); /* no half-written file */
    qp.allow_requantize = true;
    ck_assert_msg(eng_quantize_file(src, dst, &qp, NULL, err, sizeof err) == 0, "requantize: %s", err);
    eng_model_destroy(load_or_fail(dst));
    ck_assert_int_eq(eng_quantize_file(src, src, &qp, NULL, err, sizeof err), ENG_ERR_INVALID); /* in place */
    eng_model_destroy(load_or_fail(src));
    qp.type = 1000;
    ck_assert_int_eq(eng_quantize_file(src, dst, &qp, NULL, err, sizeof err), ENG_ERR_INVALID);
    eng_quant_params_default(&qp, KERN_TYPE_Q8_0);
    ck_assert_int_eq(eng_quantize_file("/nonexistent/x.gguf", dst, &qp, NULL, err, sizeof err), ENG_ERR_IO);
    ck_assert_msg(strstr(err, "/nonexistent/x.gguf"), "message: %s", err);
    unlink(src);
    unlink(dst);
}
END_TEST

/* ---------- mkmodel ---------- */

static const char *const archs[] = {"llama", "qwen2", "qwen3"};

START_TEST(test_mkmodel_arch) {
    char path[256], vocab[512], err[512] = "";
    tmp_path(path, sizeof path, archs[_i]);
    eng_mkmodel_spec s;
    eng_mkmodel_spec_default(&s);
    s.arch = archs[_i];
    s.n_embd = 128;
    s.n_layer = 2;
    s.n_head = 4;
    s.n_head_kv = 2;
    s.n_ff = 96;
    s.head_dim = _i == 2 ? 64 : 0; /* qwen3: explicit head size != n_embd / n_head */
    s.tied = _i == 1;
    s.n_threads = 2;
    if (_i == 0) { /* the shared 32000-token llama vocab: the model tokenizes real text */
        s.vocab_from = tu_shared_path("testdata/tokenizer/ggml-vocab-llama-spm.gguf", vocab, sizeof vocab);
        s.n_vocab = 0;
    } else {
        s.n_vocab = 400;
    }
    write_or_fail(&s, path);
    eng_model *m = load_or_fail(path);
    const eng_hparams *hp = eng_model_hparams(m);
    ck_assert_str_eq(eng_model_traits(m)->arch_name, archs[_i]);
    ck_assert_uint_eq(hp->n_embd, 128);
    ck_assert_uint_eq(hp->n_layer, 2);
    ck_assert_uint_eq(hp->n_head_kv, 2);
    ck_assert_uint_eq(hp->head_dim, _i == 2 ? 64 : 32);
    ck_assert_uint_eq(hp->n_vocab, _i == 0 ? 32000 : 400);
    ck_assert(eng_model_traits(m)->tied_embd == (_i == 1));
    if (_i == 0) {
        int32_t ids[64];
        size_t n = 0;
        ck_assert_int_eq(tok_encode(eng_model_vocab(m), "Hello world", 11, true, false, ids, 64, &n), 0);
        ck_assert_uint_ge(n, 3);
        ck_assert_int_eq(ids[0], 1);
    }
    int32_t toks[3] = {1, 2, 300};
    float *lg = run_logits(m, toks, 3);
    for (size_t i = 0; i < 3 * (size_t)hp->n_vocab; i++) ck_assert(isfinite(lg[i]));
    /* the parameter count matches the file */
    const gguf_file *g = eng_model_gguf(m);
    uint64_t n_el = 0;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        n_el += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    ck_assert_uint_eq(n_el, eng_mkmodel_n_params(&s));
    free(lg);
    eng_model_destroy(m);
    unlink(path);
    (void)err;
}
END_TEST

START_TEST(test_mkmodel_deterministic) {
    char a[256], b[256];
    tmp_path(a, sizeof a, "det_a");
    tmp_path(b, sizeof b, "det_b");
    eng_mkmodel_spec s;
    tiny_spec(&s, KERN_TYPE_Q4_K);
    s.n_threads = 1;
    write_or_fail(&s, a);
    s.n_threads = 3;
    write_or_fail(&s, b);
    size_t la = 0, lb = 0;
    char *da = tu_read_file(a, &la), *db = tu_read_file(b, &lb);
    ck_assert(da && db);
    ck_assert_uint_eq(la, lb);
    ck_assert(memcmp(da, db, la) == 0);
    free(db);
    s.seed = 8;
    write_or_fail(&s, b);
    db = tu_read_file(b, &lb);
    ck_assert(la == lb && memcmp(da, db, la) != 0);
    free(da);
    free(db);
    unlink(a);
    unlink(b);
}
END_TEST

START_TEST(test_mkmodel_shapes_and_errors) {
    eng_mkmodel_spec s;
    eng_mkmodel_spec_default(&s);
    ck_assert_int_eq(eng_mkmodel_shape("s135", &s), 0);
    ck_assert_uint_eq(s.n_embd, 576);
    ck_assert_uint_eq(s.n_head_kv, 3);
    ck_assert_int_eq(eng_mkmodel_shape("S1B", &s), 0);
    ck_assert_uint_eq(s.n_ff, 5632);
    uint64_t p1b = eng_mkmodel_n_params(&s);
    ck_assert_msg(p1b > 1000000000ull && p1b < 1200000000ull, "S1B params %llu", (unsigned long long)p1b);
    ck_assert_int_eq(eng_mkmodel_shape("LLAMA8B", &s), 0);
    ck_assert_uint_eq(s.n_vocab, 128256);
    ck_assert_int_eq(eng_mkmodel_shape("S7", &s), ENG_ERR_INVALID);

    char path[256], err[512] = "";
    tmp_path(path, sizeof path, "bad");
    tiny_spec(&s, KERN_TYPE_Q8_0);
    s.n_head_kv = 3;
    ck_assert_int_eq(eng_mkmodel_write(&s, path, err, sizeof err), ENG_ERR_INVALID);
    ck_assert_msg(strstr(err, "n_head_kv"), "message: %s", err);
    tiny_spec(&s, KERN_TYPE_Q8_0);
    s.arch = "gemma9";
    ck_assert_int_eq(eng_mkmodel_write(&s, path, err, sizeof err), ENG_ERR_INVALID);
    ck_assert_msg(strstr(err, "gemma9"), "message: %s", err);
    tiny_spec(&s, KERN_TYPE_Q8_0);
    s.n_vocab = 100; /* below the built-in vocab's 259 tokens */
    ck_assert_int_eq(eng_mkmodel_write(&s, path, err, sizeof err), ENG_ERR_INVALID);
    ck_assert_int_eq(access(path, F_OK), -1);
}
END_TEST

/* ---------- bandwidth ---------- */

START_TEST(test_membw_positive) {
    size_t bytes = (4u << 20) + 12; /* not a multiple of 8: the tail is ignored by the reader */
    uint8_t *buf = malloc(bytes);
    kern_pool *p = kern_pool_new(2);
    kern_membw_touch(p, buf, bytes, 1);
    for (size_t i = 0; i < bytes; i++) ck_assert_int_eq(buf[i], 1);
    uint64_t want = (uint64_t)(bytes / 8) * 0x0101010101010101ull;
    ck_assert_uint_eq(kern_membw_read(p, buf, bytes), want);
    ck_assert_uint_eq(kern_membw_read(NULL, buf, bytes), want);
    double gbs = kern_membw_measure(p, buf, bytes, 3);
    printf("membw: %.1f GB/s on a %zu-byte buffer (in cache; not a DRAM figure)\n", gbs, bytes);
    ck_assert(gbs > 0);
    ck_assert(kern_membw_measure(p, buf, 4, 3) == 0);
    kern_pool_destroy(p);
    free(buf);
}
END_TEST

static Suite *quantize_suite(void) {
    Suite *s = suite_create("quantize");
    TCase *tq = tcase_create("quantize");
    tcase_set_timeout(tq, 120);
    tcase_add_loop_test(tq, test_quantize_round_trip, 0, (int)(sizeof rt_cases / sizeof rt_cases[0]));
    tcase_add_test(tq, test_quantize_fallback);
    tcase_add_test(tq, test_quantize_metadata_and_overrides);
    tcase_add_test(tq, test_quantize_errors);
    suite_add_tcase(s, tq);
    TCase *tm = tcase_create("mkmodel");
    tcase_set_timeout(tm, 120);
    tcase_add_loop_test(tm, test_mkmodel_arch, 0, 3);
    tcase_add_test(tm, test_mkmodel_deterministic);
    tcase_add_test(tm, test_mkmodel_shapes_and_errors);
    suite_add_tcase(s, tm);
    TCase *tb = tcase_create("membw");
    tcase_set_timeout(tb, 60);
    tcase_add_test(tb, test_membw_positive);
    suite_add_tcase(s, tb);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(quantize_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
