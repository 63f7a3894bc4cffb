/* kv_block: the KV cache block manager. The engine's KV storage is a pool of n_blocks blocks
 * (eng_ctx_params); this module decides which block holds what: a free list plus a reference
 * count per block, so forked sequences (n > 1) and, later, the prefix cache can share blocks.
 * Invariant (kv_block_check_invariants): every block is either on the free list with ref 0,
 * or off it with ref > 0; the free list has no duplicates.
 * Thread: owned by the engine thread. */
#ifndef SCHEDULER_KV_BLOCK_H
#define SCHEDULER_KV_BLOCK_H

#include <stdbool.h>
#include <stdint.h>

typedef struct kv_block_mgr kv_block_mgr;

kv_block_mgr *kv_block_mgr_new(int32_t n_blocks); /* NULL on OOM */
void kv_block_mgr_destroy(kv_block_mgr *m);

/* Takes a free block (ref 1); -1 when none is free. */
int32_t kv_block_alloc(kv_block_mgr *m);
/* Adds a reference to an allocated block. */
void kv_block_ref(kv_block_mgr *m, int32_t id);
/* Drops a reference; the block returns to the free list at zero. */
void kv_block_release(kv_block_mgr *m, int32_t id);
int32_t kv_block_refcount(const kv_block_mgr *m, int32_t id);
int32_t kv_block_n_free(const kv_block_mgr *m);
int32_t kv_block_n_total(const kv_block_mgr *m);
bool kv_block_check_invariants(const kv_block_mgr *m);

#endif
