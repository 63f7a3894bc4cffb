/* Timing of the CUDA forward pass on a random-weight model of Llama-3-8B's shape, in BF16 and
 * Q8_0. The weights are generated on the GPU (kcu_weight_fill_random), nothing is read from disk.
 * Prints prefill and decode tokens/s beside two floors:
 *  - HBM: every decode step reads all the matrices once: weight bytes / bandwidth, with the
 *    bandwidth both from the device (memory clock x bus width) and H100 SXM's 3.35 TB/s;
 *  - FLOP/s: prefill needs 2 x matrix params x tokens (+ causal attention) FLOPs; the dense
 *    tensor-core peak is 989 TFLOP/s on sm_90 (H100/H200 SXM, bf16/f16), 312 on sm_80.
 * Usage: test_cuda_perf [bf16|q8_0 ...] (default both). Exit status: 0 unless something failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/forward_cuda.h"
#include "kernels/cuda/kern_cuda.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { PREFILL = 512, DECODE_STEPS = 64, NSEQ = 8, BS = 16, MAX_CTX = 1024 };

static int run(eng_cuda *g, const eng_batch *b, float *logits, int want) {
    char err[512] = "";
    int32_t rows[NSEQ] = {b->n_tokens - 1}; /* one row: the last token; NSEQ rows: one per decoding sequence */
    for (int i = 0; want == NSEQ && i < NSEQ; i++) rows[i] = i;
    int rc = eng__cuda_forward(g, b, rows, want, logits, err, sizeof err);
    if (rc < 0) fprintf(stderr, "forward: %s\n", err);
    return rc;
}

static int bench(uint32_t wtype, const kcu_device_info *info, bool graphs) {
    eng_hparams hp = {.n_vocab = 128256, .n_embd = 4096, .n_layer = 32, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                      .n_ff = 14336, .n_rot = 128, .n_ctx_train = 8192, .rope_freq_base = 500000.0f, .rms_eps = 1e-5f};
    eng_traits tr = {.arch = ENG_ARCH_LLAMA, .arch_name = "llama"};
    eng_ctx_params p;
    eng_ctx_params_default(&p);
    p.device = 1;
    p.cuda_graphs = graphs;
    p.max_tokens = PREFILL;
    p.max_logits = NSEQ;
    p.max_ctx = MAX_CTX;
    p.block_size = BS;
    p.n_blocks = NSEQ * (MAX_CTX / BS);
    eng_cuda *g = NULL;
    char err[512] = "";
    double t0 = now();
    if (eng__cuda_new_random(&hp, &tr, wtype, &p, 42, &g, err, sizeof err)) {
        fprintf(stderr, "FAIL %s: %s\n", kern_type_name(wtype), err);
        return 1;
    }
    double t_init = now() - t0;
    size_t wb = eng__cuda_weight_bytes(g);
    int32_t *toks = malloc(PREFILL * sizeof(int32_t)), tables[NSEQ][MAX_CTX / BS];
    for (int i = 0; i < PREFILL; i++) toks[i] = (int32_t)((i * 7919u + 13u) % hp.n_vocab);
    for (int s = 0; s < NSEQ; s++)
        for (int b = 0; b < MAX_CTX / BS; b++) tables[s][b] = s * (MAX_CTX / BS) + b;
    float *logits = malloc((size_t)NSEQ * hp.n_vocab * sizeof(float));
    int rc = 0;
    /* prefill: one sequence of PREFILL tokens, best of 3 after a warm-up */
    eng_seq_step sq = {tables[0], 0, PREFILL, ENG_LOGITS_LAST};
    eng_batch pb = {toks, PREFILL, &sq, 1};
    double best_pre = 1e30;
    for (int r = 0; r < 4 && rc >= 0; r++) {
        double t = now();
        rc = run(g, &pb, logits, 1);
        if (r > 0 && now() - t < best_pre) best_pre = now() - t;
    }
    /* decode, batch 1: DECODE_STEPS tokens after the prefilled context */
    double t_dec1 = 0;
    for (int i = 0; i < DECODE_STEPS && rc >= 0; i++) {
        eng_seq_step d = {tables[0], PREFILL + i, 1, ENG_LOGITS_LAST};
        eng_batch db = {toks + i, 1, &d, 1};
        double t = now();
        rc = run(g, &db, logits, 1);
        if (i > 0) t_dec1 += now() - t; /* step 0 is a warm-up */
    }
    /* decode, batch NSEQ: sequences of 128 cached tokens (filled by a prefill each) */
    double t_decn = 0;
    for (int s = 1; s < NSEQ && rc >= 0; s++) {
        eng_seq_step ps = {tables[s], 0, 128, ENG_LOGITS_LAST};
        eng_batch b = {toks, 128, &ps, 1};
        rc = run(g, &b, logits, 1);
    }
    for (int i = 0; i < DECODE_STEPS && rc >= 0; i++) {
        eng_seq_step d[NSEQ];
        for (int s = 0; s < NSEQ; s++) d[s] = (eng_seq_step){tables[s], (s == 0 ? PREFILL + DECODE_STEPS : 128) + i, 1, ENG_LOGITS_LAST};
        eng_batch db = {toks + 8 * (i % 32), NSEQ, d, NSEQ};
        double t = now();
        rc = run(g, &db, logits, NSEQ);
        if (i > 0) t_decn += now() - t;
    }
    uint64_t replays = eng__cuda_graph_replays(g);
    printf("decode steps replayed from CUDA graphs: %llu\n", (unsigned long long)replays);
    if (rc >= 0 && (!graphs ? replays != 0 : replays < 2 * (DECODE_STEPS - 1))) {
        fprintf(stderr, "FAIL %s: %llu graph replays with graphs %s\n", kern_type_name(wtype), (unsigned long long)replays,
                graphs ? "on" : "off");
        rc = -1;
    }
    if (rc < 0) {
        fprintf(stderr, "FAIL %s: forward failed\n", kern_type_name(wtype));
        eng__cuda_destroy(g);
        return 1;
    }
    double params = (double)hp.n_layer * ((double)hp.n_embd * (hp.n_head * hp.head_dim * 2 + 2 * hp.n_head_kv * hp.head_dim) +
                                          3.0 * hp.n_embd * hp.n_ff) +
                    (double)hp.n_embd * hp.n_vocab;
    double attn_flops = 4.0 * hp.n_layer * hp.n_head * hp.head_dim * (double)PREFILL * PREFILL / 2;
    double pre_flops = 2.0 * params * PREFILL + attn_flops;
    double peak = info->cc_major >= 9 ? 989e12 : 312e12;
    double floor_dev = (double)wb / (info->hbm_gbs * 1e9), floor_spec = (double)wb / 3.35e12;
    double dec1 = (DECODE_STEPS - 1) / t_dec1, decn = NSEQ * (DECODE_STEPS - 1) / t_decn;
    printf("\n== Llama-3-8B shape, %s weights (random, generated on the GPU in %.1f s)%s ==\n", kern_type_name(wtype), t_init,
           graphs ? ", decode steps replayed from CUDA graphs" : "");
    printf("weights read per step %.2f GB; device memory in use %.2f GB\n", wb / 1e9, eng__cuda_total_bytes(g) / 1e9);
    printf("prefill %d tokens   : %8.1f tok/s  (%.1f ms)   FLOP floor %.1f ms = %.0f tok/s at %.0f TFLOP/s -> %.0f%% of peak\n",
           PREFILL, PREFILL / best_pre, best_pre * 1e3, pre_flops / peak * 1e3, PREFILL / (pre_flops / peak), peak / 1e12,
           100.0 * (pre_flops / peak) / best_pre);
    printf("decode batch 1      : %8.1f tok/s  (%.2f ms/step)  HBM floor %.2f ms (device %.0f GB/s) / %.2f ms (3.35 TB/s) -> %.0f%% of device BW\n",
           dec1, 1e3 / dec1, floor_dev * 1e3, info->hbm_gbs, floor_spec * 1e3, 100.0 * floor_dev * dec1);
    printf("decode batch %d      : %8.1f tok/s  (%.2f ms/step)  same floor per step -> %.0f%% of device BW\n", NSEQ, decn,
           1e3 * NSEQ / decn, 100.0 * floor_dev * decn / NSEQ);
    printf("PERF %s%s prefill_tok_s=%.1f decode1_tok_s=%.1f decode%d_tok_s=%.1f bw_frac=%.2f\n", kern_type_name(wtype),
           graphs ? "-graphs" : "", PREFILL / best_pre, dec1, NSEQ, decn, floor_dev * dec1);
    free(toks);
    free(logits);
    eng__cuda_destroy(g);
    return 0;
}

/* ---- per-kernel breakdown (device time from CUDA events) ---- */

static float ev_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

#define REPS 20

/* Every matmul of one Llama-3-8B layer and the logits, alone: device time per call, GB/s. Returns
 * the summed time of one decode step's matmuls (32 layers + logits) at n_tok tokens, ms. */
static double matmul_breakdown(uint32_t wtype, int n_tok, const kcu_device_info *info, kcu_blas *blas) {
    static const struct { const char *name; int n_in, n_out, per_step; } sh[] = {
        {"q/o 4096x4096", 4096, 4096, 64}, {"k/v 4096x1024", 4096, 1024, 64}, {"gate/up 4096x14336", 4096, 14336, 64},
        {"down 14336x4096", 14336, 4096, 32}, {"logits 4096x128256", 4096, 128256, 1}};
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float *x, *y;
    if (kcu_alloc((void **)&x, (size_t)n_tok * 14336 * 4) || kcu_alloc((void **)&y, (size_t)n_tok * 128256 * 4)) return -1;
    kcu_fill_random_f32(x, (size_t)n_tok * 14336, 7, -1.0f, 1.0f, 0);
    double step_ms = 0;
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        kcu_weight w;
        if (kcu_weight_alloc(&w, wtype, (uint64_t)sh[i].n_in, (uint64_t)sh[i].n_out) || kcu_weight_fill_random(&w, 3 + i, 0.02f, 0))
            return -1;
        kcu_matmul(blas, &w, x, y, n_tok, KCU_GEMM_HALF, 0); /* warm-up */
        cudaEventRecord(e0, 0);
        for (int r = 0; r < REPS; r++) kcu_matmul(blas, &w, x, y, n_tok, KCU_GEMM_HALF, 0);
        cudaEventRecord(e1, 0);
        double ms = ev_ms(e0, e1) / REPS;
        step_ms += ms * sh[i].per_step;
        printf("  matmul %-5s T=%-3d %-20s %8.1f us  %6.0f GB/s of weights (%3.0f%% of %.0f)  %6.1f TFLOP/s\n",
               kern_type_name(wtype), n_tok, sh[i].name, ms * 1e3, w.bytes / (ms * 1e-3) / 1e9,
               100.0 * w.bytes / (ms * 1e-3) / 1e9 / info->hbm_gbs, info->hbm_gbs,
               2.0 * sh[i].n_in * sh[i].n_out * n_tok / (ms * 1e-3) / 1e12);
        kcu_weight_free(&w);
    }
    printf("  matmuls of one decode step (T=%d): %.2f ms\n", n_tok, step_ms);
    kcu_free(x), kcu_free(y);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return step_ms;
}

/* Decode attention of one layer (32 heads, 8 kv heads, head_dim 128) for n_seq sequences of ctx keys.
 * The repeats cycle through NCOPY separate caches (as a step's layers do), so that the KV is read
 * from HBM, not from the 50-60 MB L2. */
#define NCOPY 8
static void attn_breakdown(int n_seq, int ctx) {
    const int bs = 16, hd = 128, nh = 32, nkv = 8, kv_row = nkv * hd, nblk = (ctx + bs - 1) / bs;
    const size_t n_bt = (size_t)nblk * n_seq * NCOPY;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    void *kc, *vc;
    float *q, *o, *scr;
    int32_t *bt_h = malloc(sizeof(int32_t) * n_bt), *bt;
    kcu_attn_tile *t_h = malloc(sizeof(kcu_attn_tile) * (size_t)n_seq * NCOPY), *t;
    for (size_t i = 0; i < n_bt; i++) bt_h[i] = (int32_t)i;
    for (int c = 0; c < NCOPY; c++)
        for (int s = 0; s < n_seq; s++) t_h[c * n_seq + s] = (kcu_attn_tile){s, 1, ctx - 1, (c * n_seq + s) * nblk};
    size_t scr_n = kcu_attn_decode_scratch_floats(n_seq, nh, hd);
    if (kcu_alloc(&kc, n_bt * bs * kv_row * 2) || kcu_alloc(&vc, n_bt * bs * kv_row * 2) ||
        kcu_alloc((void **)&q, (size_t)n_seq * nh * hd * 4) || kcu_alloc((void **)&o, (size_t)n_seq * nh * hd * 4) ||
        kcu_alloc((void **)&scr, scr_n * 4) || kcu_alloc((void **)&bt, sizeof(int32_t) * n_bt) ||
        kcu_alloc((void **)&t, sizeof(kcu_attn_tile) * (size_t)n_seq * NCOPY))
        return;
    kcu_h2d(bt, bt_h, sizeof(int32_t) * n_bt, 0);
    kcu_h2d(t, t_h, sizeof(kcu_attn_tile) * (size_t)n_seq * NCOPY, 0);
    kcu_fill_random_f32(q, (size_t)n_seq * nh * hd, 5, -1.0f, 1.0f, 0);
    kcu_attn_args a = {kc, vc, bt, nh, nkv, hd, bs, 0.088f};
    kcu_attn_decode(o, q, &a, t, n_seq, ctx, scr, scr_n, 0);
    cudaEventRecord(e0, 0);
    for (int r = 0; r < REPS; r++) kcu_attn_decode(o, q, &a, t + (r % NCOPY) * n_seq, n_seq, ctx, scr, scr_n, 0);
    cudaEventRecord(e1, 0);
    double ms = ev_ms(e0, e1) / REPS, bytes = 2.0 * n_seq * ctx * kv_row * 2;
    printf("  decode attention %d seq x %5d keys: %7.1f us per layer (%5.0f GB/s of KV), %.2f ms per 32-layer step\n", n_seq,
           ctx, ms * 1e3, bytes / (ms * 1e-3) / 1e9, ms * 32);
    kcu_free(kc), kcu_free(vc), kcu_free(q), kcu_free(o), kcu_free(scr), kcu_free(bt), kcu_free(t);
    free(bt_h), free(t_h);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
}

/* Prefill attention of one layer: one sequence of n tokens from position 0, tiles of KCU_ATTN_QT. */
static void attn_prefill_breakdown(int n) {
    const int bs = 16, hd = 128, nh = 32, nkv = 8, kv_row = nkv * hd, nblk = (n + bs - 1) / bs, nt = (n + KCU_ATTN_QT - 1) / KCU_ATTN_QT;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    void *kc, *vc;
    float *q, *o;
    int32_t *bt_h = malloc(sizeof(int32_t) * (size_t)nblk), *bt;
    kcu_attn_tile *t_h = malloc(sizeof(kcu_attn_tile) * (size_t)nt), *t;
    for (int i = 0; i < nblk; i++) bt_h[i] = i;
    for (int i = 0; i < nt; i++)
        t_h[i] = (kcu_attn_tile){i * KCU_ATTN_QT, n - i * KCU_ATTN_QT < KCU_ATTN_QT ? n - i * KCU_ATTN_QT : KCU_ATTN_QT, i * KCU_ATTN_QT, 0};
    if (kcu_alloc(&kc, (size_t)nblk * bs * kv_row * 2) || kcu_alloc(&vc, (size_t)nblk * bs * kv_row * 2) ||
        kcu_alloc((void **)&q, (size_t)n * nh * hd * 4) || kcu_alloc((void **)&o, (size_t)n * nh * hd * 4) ||
        kcu_alloc((void **)&bt, sizeof(int32_t) * (size_t)nblk) || kcu_alloc((void **)&t, sizeof(kcu_attn_tile) * (size_t)nt))
        return;
    kcu_h2d(bt, bt_h, sizeof(int32_t) * (size_t)nblk, 0);
    kcu_h2d(t, t_h, sizeof(kcu_attn_tile) * (size_t)nt, 0);
    kcu_fill_random_f32(q, (size_t)n * nh * hd, 5, -1.0f, 1.0f, 0);
    kcu_attn_args a = {kc, vc, bt, nh, nkv, hd, bs, 0.088f};
    kcu_attn_prefill(o, q, &a, t, nt, 0);
    cudaEventRecord(e0, 0);
    for (int r = 0; r < REPS; r++) kcu_attn_prefill(o, q, &a, t, nt, 0);
    cudaEventRecord(e1, 0);
    double ms = ev_ms(e0, e1) / REPS, flops = 4.0 * nh * hd * (double)n * n / 2;
    printf("  prefill attention 1 seq x %d tokens: %7.1f us per layer (%.1f TFLOP/s), %.2f ms per 32 layers\n", n, ms * 1e3,
           flops / (ms * 1e-3) / 1e12, ms * 32);
    kcu_free(kc), kcu_free(vc), kcu_free(q), kcu_free(o), kcu_free(bt), kcu_free(t);
    free(bt_h), free(t_h);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
}

/* Launch cost: back-to-back tiny kernels, device time per launch and host time per call. */
static void launch_breakdown(void) {
    float *x;
    if (kcu_alloc((void **)&x, 1024)) return;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    kcu_add(x, x, 1, 0);
    double t = now();
    cudaEventRecord(e0, 0);
    for (int r = 0; r < 1000; r++) kcu_add(x, x, 1, 0);
    cudaEventRecord(e1, 0);
    double host = now() - t, dev = ev_ms(e0, e1);
    printf("  1000 tiny launches: %.2f us each on the device, %.2f us each on the host\n", dev, host * 1e3);
    kcu_free(x);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
}

static void breakdown(const kcu_device_info *info) {
    kcu_blas *blas;
    if (kcu_blas_new(&blas, 512, 14336)) return;
    printf("\n== kernel breakdown (device time, CUDA events, mean of %d) ==\n", REPS);
    launch_breakdown();
    const uint32_t types[] = {KERN_TYPE_BF16, KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_K, KERN_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) matmul_breakdown(types[i], 1, info, blas);
    matmul_breakdown(KERN_TYPE_BF16, 8, info, blas);
    matmul_breakdown(KERN_TYPE_Q8_0, 8, info, blas);
    matmul_breakdown(KERN_TYPE_BF16, 512, info, blas);
    for (int mb = 64; mb >= 8; mb /= 2) {
        printf("  dequantised GEMM tile %d MiB:\n", mb);
        kcu_blas_set_tile(blas, (size_t)mb << 20);
        matmul_breakdown(KERN_TYPE_Q8_0, 512, info, blas);
    }
    kcu_blas_set_tile(blas, KCU_GEMM_TILE_BYTES);
    attn_breakdown(1, 512);
    attn_breakdown(1, 4096);
    attn_breakdown(8, 512);
    attn_breakdown(8, 4096);
    attn_prefill_breakdown(512);
    kcu_blas_destroy(blas);
}

int main(int argc, char **argv) {
    kcu_device_info info;
    if (kcu_init(0, &info)) {
        fprintf(stderr, "FAIL: %s\n", kcu_last_error());
        return 1;
    }
    printf("device: %s, sm_%d%d, %d SMs, %.1f GB total, peak HBM %.0f GB/s (memory clock x bus width)\n", info.name,
           info.cc_major, info.cc_minor, info.sm_count, info.total_mem / 1e9, info.hbm_gbs);
    int fails = 0;
    if (argc < 2 || strcmp(argv[1], "breakdown") == 0) breakdown(&info);
    if (argc > 1 && strcmp(argv[1], "breakdown") == 0) return 0;
    if (argc < 2) {
        fails += bench(KERN_TYPE_BF16, &info, false);
        fails += bench(KERN_TYPE_Q8_0, &info, false);
        fails += bench(KERN_TYPE_Q8_0, &info, true);
        fails += bench(KERN_TYPE_BF16, &info, true);
    }
    for (int i = 1; i < argc; i++)
        fails += bench(strcmp(argv[i], "bf16") == 0 ? KERN_TYPE_BF16 : KERN_TYPE_Q8_0, &info, false);
    return fails ? 1 : 0;
}
