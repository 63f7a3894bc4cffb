/* Scheduler tests: the KV block manager's free list, reference counts and invariants. */
#include <check.h>
#include <stdlib.h>

#include "common/tk_mem.h"
#include "scheduler/kv_block.h"

START_TEST(test_alloc_all_then_free) {
    kv_block_mgr *m = kv_block_mgr_new(8);
    int32_t ids[8];
    for (int i = 0; i < 8; i++) {
        ids[i] = kv_block_alloc(m);
        ck_assert_int_eq(ids[i], i); /* lowest ids first */
        ck_assert(kv_block_check_invariants(m));
    }
    ck_assert_int_eq(kv_block_alloc(m), -1);
    ck_assert_int_eq(kv_block_n_free(m), 0);
    for (int i = 0; i < 8; i++) kv_block_release(m, ids[i]);
    ck_assert_int_eq(kv_block_n_free(m), 8);
    ck_assert(kv_block_check_invariants(m));
    kv_block_mgr_destroy(m);
}
END_TEST

START_TEST(test_shared_blocks_refcount) {
    kv_block_mgr *m = kv_block_mgr_new(4);
    int32_t a = kv_block_alloc(m);
    kv_block_ref(m, a); /* a forked sequence shares it */
    ck_assert_int_eq(kv_block_refcount(m, a), 2);
    kv_block_release(m, a);
    ck_assert_int_eq(kv_block_n_free(m), 3); /* still held by the other */
    kv_block_release(m, a);
    ck_assert_int_eq(kv_block_n_free(m), 4);
    ck_assert(kv_block_check_invariants(m));
    kv_block_mgr_destroy(m);
}
END_TEST

START_TEST(test_random_ops_keep_invariants) {
    kv_block_mgr *m = kv_block_mgr_new(32);
    int32_t held[256];
    int n = 0;
    srand(7);
    for (int step = 0; step < 5000; step++) {
        int r = rand() % 3;
        if (r == 0 || n == 0) {
            int32_t id = kv_block_alloc(m);
            if (id >= 0) held[n++] = id;
            else ck_assert_int_eq(kv_block_n_free(m), 0);
        } else if (r == 1 && n < 256) {
            int32_t id = held[rand() % n];
            kv_block_ref(m, id);
            held[n++] = id;
        } else {
            int k = rand() % n;
            kv_block_release(m, held[k]);
            held[k] = held[--n];
        }
        ck_assert(kv_block_check_invariants(m));
    }
    kv_block_mgr_destroy(m);
}
END_TEST

START_TEST(test_alloc_failure) {
    for (long n = 0; n < 3; n++) {
        tk_mem_fail_after(n);
        kv_block_mgr *m = kv_block_mgr_new(16);
        tk_mem_fail_after(-1);
        ck_assert_ptr_null(m);
    }
    ck_assert_ptr_null(kv_block_mgr_new(0));
}
END_TEST

int main(void) {
    Suite *s = suite_create("scheduler");
    TCase *tc = tcase_create("kv_block");
    tcase_add_test(tc, test_alloc_all_then_free);
    tcase_add_test(tc, test_shared_blocks_refcount);
    tcase_add_test(tc, test_random_ops_keep_invariants);
    tcase_add_test(tc, test_alloc_failure);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
