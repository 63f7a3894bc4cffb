/* tk_mem: the one allocation wrapper. Every heap allocation in tokd goes through these
 * functions so that tests can make the n-th allocation fail (tk_mem_fail_after) and check
 * that each constructor cleans up and reports an error instead of crashing. */
#ifndef TK_MEM_H
#define TK_MEM_H
#include <stddef.h>

void *tk_malloc(size_t n);
void *tk_calloc(size_t count, size_t size); /* checks count*size for overflow */
void *tk_realloc(void *p, size_t n);
void tk_free(void *p);
char *tk_strndup(const char *s, size_t n); /* always NUL-terminates */

/* Tests only: after n more successful allocations, every allocation fails (returns NULL).
 * n < 0 disables the failure injection. Not thread-safe; call from single-threaded tests. */
void tk_mem_fail_after(long n);

#endif
