/* kv_block: the KV cache block manager. The engine's KV storage is a pool of n_blocks blocks
 * (eng_ctx_params); this module decides which block holds what: a free list plus a reference
 * count per block, so forked sequences (n > 1) and the prefix cache can share blocks.
 *
 * Prefix cache: a full block whose KV has been computed can be registered under a hash of
 * (parent block's hash, the block's token ids) (kv_block_hash). A later sequence with the same
 * prefix finds it with kv_block_cache_get, which takes a reference. A cached block whose last
 * reference is released is not freed: it moves to an LRU list of evictable blocks and keeps its
 * contents; kv_block_alloc takes the least recently released one (and forgets its hash) only
 * when the free list is empty. Hashes are 64-bit and trusted (a collision needs ~2^32 blocks).
 *
 * Invariant (kv_block_check_invariants): every block is in exactly one of three states —
 * free (on the free list, ref 0, not cached), evictable (on the LRU list, ref 0, cached), or
 * in use (ref > 0, cached or not); the free and LRU lists have no duplicates; the hash table
 * holds exactly the cached blocks, each under its own hash, and no hash twice.
 * Thread: owned by the engine thread. */
#ifndef SCHEDULER_KV_BLOCK_H
#define SCHEDULER_KV_BLOCK_H

#include <stdbool.h>
#include <stdint.h>

typedef struct kv_block_mgr kv_block_mgr;

kv_block_mgr *kv_block_mgr_new(int32_t n_blocks); /* NULL on OOM */
void kv_block_mgr_destroy(kv_block_mgr *m);

/* Takes a free block (ref 1), evicting the least recently used cached block with no
 * references when the free list is empty; -1 when neither exists. */
int32_t kv_block_alloc(kv_block_mgr *m);
/* Adds a reference to an allocated block (ref > 0). */
void kv_block_ref(kv_block_mgr *m, int32_t id);
/* Drops a reference; at zero the block returns to the free list, or, if cached, to the tail
 * of the evictable LRU list. */
void kv_block_release(kv_block_mgr *m, int32_t id);
int32_t kv_block_refcount(const kv_block_mgr *m, int32_t id);
int32_t kv_block_n_free(const kv_block_mgr *m); /* on the free list (not counting evictable) */
int32_t kv_block_n_total(const kv_block_mgr *m);
int32_t kv_block_n_evictable(const kv_block_mgr *m); /* cached with no references */
bool kv_block_check_invariants(const kv_block_mgr *m);

/* ---- prefix cache ---- */
/* Hash of a block: its parent's hash (0 for the first block) chained with its token ids. */
uint64_t kv_block_hash(uint64_t parent, const int32_t *tokens, int32_t n);
/* The cached block registered under hash, with a reference taken (leaving the LRU list if it
 * had none); -1 when absent. */
int32_t kv_block_cache_get(kv_block_mgr *m, uint64_t hash);
/* Registers an in-use block (ref > 0) under hash. Returns false (and changes nothing) when the
 * block is already cached or another block holds that hash. */
bool kv_block_cache_put(kv_block_mgr *m, int32_t id, uint64_t hash);
bool kv_block_is_cached(const kv_block_mgr *m, int32_t id);
uint64_t kv_block_n_evictions(const kv_block_mgr *m);

#endif
