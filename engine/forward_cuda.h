/* Internal interface of the CUDA forward pass (engine/forward_cuda.c, built with TOKD_CUDA):
 * the device state behind an eng_ctx whose params say device = 1. engine/forward.c validates
 * the batch (batch_prepare) and hands it over; tests/gpu uses eng__cuda_new_random to time a
 * model whose weights are generated on the GPU. Thread: the engine thread that owns the eng_ctx. */
#ifndef ENGINE_FORWARD_CUDA_H
#define ENGINE_FORWARD_CUDA_H

#include "engine/model_internal.h"

typedef struct eng_cuda eng_cuda;

/* Uploads the model's weights (quantised formats stay quantised) and allocates the device KV
 * cache and activations for p (already completed by eng_ctx_new: max_ctx, n_blocks, max_logits). */
int eng__cuda_new(const eng_model *m, const eng_ctx_params *p, eng_cuda **out, char *err, size_t errlen);
/* A model of shape hp/tr whose matrices are `wtype` (norms 1, embeddings and matrices random),
 * generated on the device: nothing is read from disk. */
int eng__cuda_new_random(const eng_hparams *hp, const eng_traits *tr, uint32_t wtype, const eng_ctx_params *p,
                         uint64_t seed, eng_cuda **out, char *err, size_t errlen);
void eng__cuda_destroy(eng_cuda *g);

/* Runs a batch already checked against the context's limits; logit_rows[0..n_rows) are the
 * batch token indices whose logits are wanted (written to logits, n_vocab floats each, host).
 * Returns n_rows or ENG_ERR_DEVICE / ENG_ERR_INVALID with a message in err. */
int eng__cuda_forward(eng_cuda *g, const eng_batch *b, const int32_t *logit_rows, int n_rows, float *logits, char *err,
                      size_t errlen);
int eng__cuda_kv_copy_block(eng_cuda *g, int32_t src, int32_t dst, char *err, size_t errlen);
/* Device bytes of the weights, and of everything (weights + KV + activations + scratch). */
size_t eng__cuda_weight_bytes(const eng_cuda *g);
size_t eng__cuda_total_bytes(const eng_cuda *g);
/* Steps replayed from a captured CUDA graph so far. */
uint64_t eng__cuda_graph_replays(const eng_cuda *g);

#endif
