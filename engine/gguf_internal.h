/* gguf internals: the in-memory parser entry point (used by gguf_open after mmap and by the
 * fuzz target), a type-name helper, and writer extensions the tests use to emit every value
 * type, raw (possibly hostile) values and non-default alignments, and the file-writing helpers
 * that engine/quantize.c's streaming writer shares. Only engine/gguf*.c, engine/quantize.c and
 * the gguf tests/fuzzer include this header. */
#ifndef ENGINE_GGUF_INTERNAL_H
#define ENGINE_GGUF_INTERNAL_H

#include <stdio.h>

#include "engine/gguf.h"

/* Parse and validate the GGUF image buf[0..n). `name` is used in error messages in place of
 * the path (and becomes gguf_path). The buffer is borrowed, not copied: it must outlive *out.
 * buf may be NULL when n is 0. Errors as gguf_open. */
int gguf__open_mem(const void *buf, size_t n, const char *name, gguf_file **out, char *err,
                   size_t errlen);

/* "uint32", "string", ...; "unknown" for ids outside the enum. */
const char *gguf_type_name(gguf_type t);
/* Encoded size of one scalar of type t (1, 2, 4 or 8); 0 for STRING, ARRAY and unknown ids. */
size_t gguf__type_size(gguf_type t);

/* ---- writer extensions ----
 * Keys are written in the order added; duplicates are NOT rejected (tests need them). */

/* Scalar of any fixed-size type (not STRING/ARRAY); *v holds gguf__type_size(type) bytes in
 * host order. 0, GGUF_ERR_NOMEM, or GGUF_ERR_TYPE for a non-scalar type. */
int gguf_writer_add_scalar(gguf_writer *w, const char *key, gguf_type type, const void *v);
/* Array of n fixed-size scalars of elem_type (v holds n * gguf__type_size bytes). */
int gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *v,
                        uint64_t n);
/* Key of value type `type` followed by the raw encoded value bytes val[0..n) exactly as
 * given: nested arrays, hostile lengths, anything. */
int gguf_writer_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *val,
                        size_t n);
/* Data alignment (a power of two); when set, a general.alignment u32 key is written first. */
int gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment);

/* Little-endian file writing shared by the writer (gguf_write.c) and the streaming writer of
 * engine/quantize.c: each returns false on a short write. */
size_t gguf__align_up(size_t x, size_t a);
bool gguf__put(FILE *fp, const void *p, size_t n);
bool gguf__put_u32(FILE *fp, uint32_t v);
bool gguf__put_u64(FILE *fp, uint64_t v);
bool gguf__put_zeros(FILE *fp, size_t n);

#endif
