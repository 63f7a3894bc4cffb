/* kv_block: free list + reference counts over the KV block pool (see kv_block.h). */
#include "scheduler/kv_block.h"

#include <stdlib.h>

#include "common/tk_mem.h"

struct kv_block_mgr {
    int32_t n_blocks;
    int32_t n_free;
    int32_t *free_list; /* stack of free block ids, n_free valid */
    int32_t *ref;       /* (n_blocks) reference counts */
};

kv_block_mgr *kv_block_mgr_new(int32_t n_blocks) {
    if (n_blocks <= 0) return NULL;
    kv_block_mgr *m = tk_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->free_list = tk_calloc((size_t)n_blocks, sizeof(int32_t));
    m->ref = tk_calloc((size_t)n_blocks, sizeof(int32_t));
    if (!m->free_list || !m->ref) {
        kv_block_mgr_destroy(m);
        return NULL;
    }
    m->n_blocks = n_blocks;
    /* pop order 0, 1, 2, ...: the stack holds the highest id at the bottom */
    for (int32_t i = 0; i < n_blocks; i++) m->free_list[i] = n_blocks - 1 - i;
    m->n_free = n_blocks;
    return m;
}

void kv_block_mgr_destroy(kv_block_mgr *m) {
    if (!m) return;
    tk_free(m->free_list);
    tk_free(m->ref);
    tk_free(m);
}

int32_t kv_block_alloc(kv_block_mgr *m) {
    if (m->n_free == 0) return -1;
    int32_t id = m->free_list[--m->n_free];
    m->ref[id] = 1;
    return id;
}

void kv_block_ref(kv_block_mgr *m, int32_t id) {
    if (id < 0 || id >= m->n_blocks || m->ref[id] <= 0) abort(); /* broken invariant */
    m->ref[id]++;
}

void kv_block_release(kv_block_mgr *m, int32_t id) {
    if (id < 0 || id >= m->n_blocks || m->ref[id] <= 0) abort(); /* broken invariant */
    if (--m->ref[id] == 0) m->free_list[m->n_free++] = id;
}

int32_t kv_block_refcount(const kv_block_mgr *m, int32_t id) {
    return id >= 0 && id < m->n_blocks ? m->ref[id] : -1;
}

int32_t kv_block_n_free(const kv_block_mgr *m) { return m->n_free; }
int32_t kv_block_n_total(const kv_block_mgr *m) { return m->n_blocks; }

bool kv_block_check_invariants(const kv_block_mgr *m) {
    if (m->n_free < 0 || m->n_free > m->n_blocks) return false;
    int32_t n_zero = 0;
    for (int32_t i = 0; i < m->n_blocks; i++) {
        if (m->ref[i] < 0) return false;
        n_zero += m->ref[i] == 0;
    }
    if (n_zero != m->n_free) return false;
    for (int32_t i = 0; i < m->n_free; i++) { /* each free entry has ref 0 and appears once */
        int32_t id = m->free_list[i];
        if (id < 0 || id >= m->n_blocks || m->ref[id] != 0) return false;
        for (int32_t j = i + 1; j < m->n_free; j++)
            if (m->free_list[j] == id) return false;
    }
    return true;
}
