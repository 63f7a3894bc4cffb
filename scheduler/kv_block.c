/* kv_block: free list + reference counts over the KV block pool, plus the prefix cache's hash
 * table and LRU list of evictable blocks (see kv_block.h). Nothing here allocates after
 * kv_block_mgr_new: the hash table chains and the LRU list are index arrays over block ids. */
#include "scheduler/kv_block.h"

#include <stdlib.h>
#include <string.h>

#include "common/tk_mem.h"

/* Invariants: see kv_block.h. Besides: n_buckets is a power of two >= n_blocks; lru_prev /
 * lru_next / chain are -1 for blocks not on those lists. */
struct kv_block_mgr {
    int32_t n_blocks;
    int32_t n_free;
    int32_t *free_list; /* stack of free block ids, n_free valid */
    int32_t *ref;       /* (n_blocks) reference counts */
    /* prefix cache */
    uint64_t *hash;  /* (n_blocks) hash of a cached block */
    uint8_t *cached; /* (n_blocks) 1 when registered in the hash table */
    int32_t *chain;  /* (n_blocks) next block in the same hash bucket */
    int32_t *bucket; /* (n_buckets) first block of each bucket, -1 empty */
    uint32_t n_buckets;
    int32_t *lru_prev, *lru_next; /* (n_blocks) evictable list, head = least recently released */
    int32_t lru_head, lru_tail, n_lru;
    uint64_t n_evictions;
    uint8_t *mark; /* (n_blocks) scratch of kv_block_check_invariants */
};

kv_block_mgr *kv_block_mgr_new(int32_t n_blocks) {
    if (n_blocks <= 0 || n_blocks > (1 << 28)) return NULL;
    kv_block_mgr *m = tk_calloc(1, sizeof *m);
    if (!m) return NULL;
    size_t n = (size_t)n_blocks;
    m->n_buckets = 1;
    while (m->n_buckets < (uint32_t)n_blocks)
        m->n_buckets <<= 1;
    m->free_list = tk_calloc(n, sizeof(int32_t));
    m->ref = tk_calloc(n, sizeof(int32_t));
    if (!m->free_list || !m->ref || !(m->hash = tk_calloc(n, sizeof(uint64_t))) || !(m->cached = tk_calloc(n, 1)) ||
        !(m->chain = tk_calloc(n, sizeof(int32_t))) || !(m->bucket = tk_calloc(m->n_buckets, sizeof(int32_t))) ||
        !(m->lru_prev = tk_calloc(n, sizeof(int32_t))) || !(m->lru_next = tk_calloc(n, sizeof(int32_t))) ||
        !(m->mark = tk_calloc(n, 1))) {
        kv_block_mgr_destroy(m);
        return NULL;
    }
    m->n_blocks = n_blocks;
    /* pop order 0, 1, 2, ...: the stack holds the highest id at the bottom */
    for (int32_t i = 0; i < n_blocks; i++) {
        m->free_list[i] = n_blocks - 1 - i;
        m->chain[i] = m->lru_prev[i] = m->lru_next[i] = -1;
    }
    for (uint32_t b = 0; b < m->n_buckets; b++)
        m->bucket[b] = -1;
    m->n_free = n_blocks;
    m->lru_head = m->lru_tail = -1;
    return m;
}

void kv_block_mgr_destroy(kv_block_mgr *m) {
    if (!m) return;
    tk_free(m->free_list);
    tk_free(m->ref);
    tk_free(m->hash);
    tk_free(m->cached);
    tk_free(m->chain);
    tk_free(m->bucket);
    tk_free(m->lru_prev);
    tk_free(m->lru_next);
    tk_free(m->mark);
    tk_free(m);
}

/* ---- LRU list of evictable blocks ---- */

static void lru_push_tail(kv_block_mgr *m, int32_t id) {
    m->lru_prev[id] = m->lru_tail;
    m->lru_next[id] = -1;
    if (m->lru_tail >= 0)
        m->lru_next[m->lru_tail] = id;
    else
        m->lru_head = id;
    m->lru_tail = id;
    m->n_lru++;
}

static void lru_remove(kv_block_mgr *m, int32_t id) {
    int32_t p = m->lru_prev[id], n = m->lru_next[id];
    if (p >= 0)
        m->lru_next[p] = n;
    else
        m->lru_head = n;
    if (n >= 0)
        m->lru_prev[n] = p;
    else
        m->lru_tail = p;
    m->lru_prev[id] = m->lru_next[id] = -1;
    m->n_lru--;
}

/* ---- hash table: chained buckets over block ids ---- */

static uint32_t bucket_of(const kv_block_mgr *m, uint64_t h) { return (uint32_t)(h ^ (h >> 32)) & (m->n_buckets - 1); }

static int32_t table_find(const kv_block_mgr *m, uint64_t h) {
    for (int32_t id = m->bucket[bucket_of(m, h)]; id >= 0; id = m->chain[id])
        if (m->hash[id] == h) return id;
    return -1;
}

static void table_remove(kv_block_mgr *m, int32_t id) {
    int32_t *link = &m->bucket[bucket_of(m, m->hash[id])];
    while (*link != id)
        link = &m->chain[*link];
    *link = m->chain[id];
    m->chain[id] = -1;
    m->cached[id] = 0;
}

/* ---- public ---- */

int32_t kv_block_alloc(kv_block_mgr *m) {
    int32_t id;
    if (m->n_free > 0) {
        id = m->free_list[--m->n_free];
    } else if (m->lru_head >= 0) { /* evict the least recently used cached block */
        id = m->lru_head;
        lru_remove(m, id);
        table_remove(m, id);
        m->n_evictions++;
    } else {
        return -1;
    }
    m->ref[id] = 1;
    return id;
}

void kv_block_ref(kv_block_mgr *m, int32_t id) {
    if (id < 0 || id >= m->n_blocks || m->ref[id] <= 0) abort(); /* broken invariant */
    m->ref[id]++;
}

void kv_block_release(kv_block_mgr *m, int32_t id) {
    if (id < 0 || id >= m->n_blocks || m->ref[id] <= 0) abort(); /* broken invariant */
    if (--m->ref[id] > 0) return;
    if (m->cached[id])
        lru_push_tail(m, id);
    else
        m->free_list[m->n_free++] = id;
}

int32_t kv_block_refcount(const kv_block_mgr *m, int32_t id) { return id >= 0 && id < m->n_blocks ? m->ref[id] : -1; }

int32_t kv_block_n_free(const kv_block_mgr *m) { return m->n_free; }
int32_t kv_block_n_total(const kv_block_mgr *m) { return m->n_blocks; }
int32_t kv_block_n_evictable(const kv_block_mgr *m) { return m->n_lru; }
uint64_t kv_block_n_evictions(const kv_block_mgr *m) { return m->n_evictions; }

bool kv_block_is_cached(const kv_block_mgr *m, int32_t id) { return id >= 0 && id < m->n_blocks && m->cached[id]; }

uint64_t kv_block_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    /* FNV-1a style chaining with a splitmix64 finaliser per token: cheap and well mixed */
    uint64_t h = parent ^ 0x9e3779b97f4a7c15ull;
    for (int32_t i = 0; i < n; i++) {
        uint64_t z = h + (uint64_t)(uint32_t)tokens[i] + 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        h = z ^ (z >> 31);
    }
    return h ? h : 1; /* 0 is reserved for "no parent" */
}

int32_t kv_block_cache_get(kv_block_mgr *m, uint64_t hash) {
    int32_t id = table_find(m, hash);
    if (id < 0) return -1;
    if (m->ref[id] == 0) lru_remove(m, id);
    m->ref[id]++;
    return id;
}

bool kv_block_cache_put(kv_block_mgr *m, int32_t id, uint64_t hash) {
    if (id < 0 || id >= m->n_blocks || m->ref[id] <= 0) abort(); /* broken invariant */
    if (m->cached[id] || table_find(m, hash) >= 0) return false;
    uint32_t b = bucket_of(m, hash);
    m->hash[id] = hash;
    m->cached[id] = 1;
    m->chain[id] = m->bucket[b];
    m->bucket[b] = id;
    return true;
}

/* Free list and LRU: right states, no duplicates (a mark per block). */
static bool lists_ok(const kv_block_mgr *m, uint8_t *seen) {
    for (int32_t i = 0; i < m->n_free; i++) { /* each free entry has ref 0, is uncached, appears once */
        int32_t id = m->free_list[i];
        if (id < 0 || id >= m->n_blocks || m->ref[id] != 0 || m->cached[id] || seen[id]) return false;
        seen[id] = 1;
    }
    int32_t n = 0, prev = -1;
    for (int32_t id = m->lru_head; id >= 0; prev = id, id = m->lru_next[id], n++) {
        if (id >= m->n_blocks || n >= m->n_blocks || m->ref[id] != 0 || !m->cached[id] || seen[id] ||
            m->lru_prev[id] != prev)
            return false;
        seen[id] = 1;
    }
    return prev == m->lru_tail && n == m->n_lru;
}

bool kv_block_check_invariants(const kv_block_mgr *m) {
    if (m->n_free < 0 || m->n_free > m->n_blocks || m->n_lru < 0) return false;
    int32_t n_zero = 0, n_cached = 0, n_chained = 0;
    for (int32_t i = 0; i < m->n_blocks; i++) {
        if (m->ref[i] < 0) return false;
        n_zero += m->ref[i] == 0;
        n_cached += m->cached[i];
    }
    if (n_zero != m->n_free + m->n_lru) return false;
    memset(m->mark, 0, (size_t)m->n_blocks);
    bool ok = lists_ok(m, m->mark);
    for (uint32_t b = 0; ok && b < m->n_buckets; b++)
        for (int32_t id = m->bucket[b]; ok && id >= 0; id = m->chain[id], n_chained++)
            ok = n_chained < m->n_blocks && m->cached[id] && bucket_of(m, m->hash[id]) == b &&
                 table_find(m, m->hash[id]) == id;
    return ok && n_chained == n_cached;
}
