/* gguf: reader and writer for GGUF v3 model files.
 *
 * The reader memory-maps the file, parses the header, every metadata key/value (all value
 * types, nested arrays) and the tensor infos, and checks every count, length and offset
 * against the file size before use. A truncated or hostile file gives an error that names
 * the file and the field, never a crash. Tensor data is exposed as pointers into the map.
 *
 * The writer builds a GGUF file in memory (metadata + tensors) and writes it out; the
 * tests use it to make random tiny models and corrupted files.
 *
 * Thread: a gguf_file is immutable after gguf_open and may be read from any thread. */
#ifndef ENGINE_GGUF_H
#define ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as in the GGUF spec. */
typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

/* Error codes (negative returns). */
enum {
    GGUF_ERR_IO = -1,       /* open/stat/mmap/write failed */
    GGUF_ERR_FORMAT = -2,   /* bad magic, version, truncated or inconsistent field */
    GGUF_ERR_NOMEM = -3,
    GGUF_ERR_NOTFOUND = -4, /* key or tensor absent */
    GGUF_ERR_TYPE = -5,     /* key present with an incompatible type */
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct gguf_file gguf_file;

/* One tensor. `type` is the ggml tensor type id (see kernels/kern.h, KERN_TYPE_*). ne[0] is
 * the innermost (contiguous) dimension; unused dims are 1. `data` points into the map and
 * `nbytes` bytes from it are inside the file (checked at open). */
typedef struct {
    const char *name; /* NUL-terminated copy owned by the gguf_file */
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t offset; /* relative to the start of the tensor data section */
    size_t nbytes;
    const void *data;
} gguf_tensor;

/* Open and validate `path`. On error returns a negative GGUF_ERR_* code and writes a message
 * naming the file and field into err (may be NULL). The caller owns *out (gguf_close). */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
void gguf_close(gguf_file *f);

const char *gguf_path(const gguf_file *f);
uint32_t gguf_version(const gguf_file *f);
size_t gguf_alignment(const gguf_file *f);

/* Metadata. Keys are looked up by exact name. */
int64_t gguf_n_kv(const gguf_file *f);
const char *gguf_kv_key(const gguf_file *f, int64_t i);
int64_t gguf_find_key(const gguf_file *f, const char *key); /* -1 when absent */
gguf_type gguf_kv_type(const gguf_file *f, int64_t i);
/* For arrays: the element type and count. */
gguf_type gguf_kv_arr_type(const gguf_file *f, int64_t i);
uint64_t gguf_kv_arr_n(const gguf_file *f, int64_t i);

/* Typed getters: 0 on success, GGUF_ERR_NOTFOUND when absent, GGUF_ERR_TYPE when the value
 * cannot be represented (e.g. a negative int read as u32, a string read as a number).
 * Integer getters accept any integer type whose value fits; float getters accept
 * FLOAT32/FLOAT64 and integers. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out);
/* String: pointer into the map (not NUL-terminated) and its length. */
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len);

/* Array of strings: element i as pointer+length into the map (indexed at open, O(1)). */
int gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t *n);
int gguf_arr_str_at(const gguf_file *f, const char *key, uint64_t i, const char **s, size_t *len);
/* Numeric arrays: copy up to n elements converted to the requested C type. The element count
 * is gguf_kv_arr_n. Returns GGUF_ERR_TYPE for non-numeric arrays. */
int gguf_get_arr_i32(const gguf_file *f, const char *key, int32_t *out, uint64_t n);
int gguf_get_arr_f32(const gguf_file *f, const char *key, float *out, uint64_t n);

/* Tensors. */
int64_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL if absent */

/* ---- writer ---- */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void); /* NULL on OOM */
void gguf_writer_destroy(gguf_writer *w);
/* Each add copies its inputs. Return 0 or GGUF_ERR_NOMEM. */
int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v);
int gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n);
int gguf_writer_add_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
int gguf_writer_add_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n);
/* Tensor of ggml type `type` with dims ne[0..n_dims-1]; `data` holds the bytes of the whole
 * tensor (kern_row_bytes(type, ne[0]) * rows). */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, size_t nbytes);
/* Write the file (header, kv, tensor infos, padding to alignment, data). */
int gguf_writer_write(const gguf_writer *w, const char *path, char *err, size_t errlen);

#endif
