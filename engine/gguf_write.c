/* gguf writer (see engine/gguf.h and gguf_internal.h).
 *
 * Key/values are encoded into one growing byte buffer as they are added, in the exact
 * on-disk form, so gguf_writer_write only has to emit the header, that buffer, the tensor
 * infos, padding and the tensor data. Tensors are copied. The writer does not reject
 * duplicate keys or odd raw values: the tests use it to make hostile files. It does check
 * tensors (type, shape, byte count), since a wrong nbytes would only make a broken file by
 * accident. Every add is all-or-nothing: space is reserved before anything is written. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/tk_mem.h"
#include "engine/gguf.h"
#include "engine/gguf_internal.h"
#include "kernels/kern.h"

/* One tensor to write; data is an owned copy of nbytes bytes. */
typedef struct {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    void *data;
    size_t nbytes;
} gguf__wtensor;

/* Invariants: kv[0..kv_len) holds n_kv encoded key/values; alignment is a power of two. */
struct gguf_writer {
    uint8_t *kv;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    gguf__wtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
    bool write_alignment;
};

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = tk_calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_destroy(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_t; i++) {
        tk_free(w->t[i].name);
        tk_free(w->t[i].data);
    }
    tk_free(w->t);
    tk_free(w->kv);
    tk_free(w);
}

int gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment) {
    if (alignment == 0 || (alignment & (alignment - 1))) return GGUF_ERR_TYPE;
    w->alignment = alignment;
    w->write_alignment = true;
    return 0;
}

/* Makes room for n more kv bytes. */
static int kv_reserve(gguf_writer *w, size_t n) {
    if (n > SIZE_MAX / 2 - w->kv_len) return GGUF_ERR_NOMEM;
    if (w->kv_len + n <= w->kv_cap) return 0;
    size_t cap = w->kv_cap ? w->kv_cap : 256;
    while (cap < w->kv_len + n) cap *= 2;
    uint8_t *p = tk_realloc(w->kv, cap);
    if (!p) return GGUF_ERR_NOMEM;
    w->kv = p;
    w->kv_cap = cap;
    return 0;
}

/* Appends bytes already reserved. */
static void kv_put(gguf_writer *w, const void *p, size_t n) {
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void kv_put_u32(gguf_writer *w, uint32_t v) { kv_put(w, &v, 4); }
static void kv_put_u64(gguf_writer *w, uint64_t v) { kv_put(w, &v, 8); }

static void kv_put_str(gguf_writer *w, const char *s, size_t len) {
    kv_put_u64(w, len);
    kv_put(w, s, len);
}

/* Reserves the whole pair (key + type + value_bytes) and writes key and type. */
static int kv_begin(gguf_writer *w, const char *key, uint32_t type, size_t value_bytes) {
    size_t klen = strlen(key);
    if (value_bytes > SIZE_MAX / 2 || klen > SIZE_MAX / 4) return GGUF_ERR_NOMEM;
    int rc = kv_reserve(w, 8 + klen + 4 + value_bytes);
    if (rc) return rc;
    kv_put_str(w, key, klen);
    kv_put_u32(w, type);
    w->n_kv++;
    return 0;
}

int gguf_writer_add_scalar(gguf_writer *w, const char *key, gguf_type type, const void *v) {
    size_t sz = gguf__type_size(type);
    if (!sz) return GGUF_ERR_TYPE;
    int rc = kv_begin(w, key, type, sz);
    if (!rc) kv_put(w, v, sz);
    return rc;
}

int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_UINT32, &v);
}

int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_INT32, &v);
}

int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_UINT64, &v);
}

int gguf_writer_add_f32(gguf_writer *w, const char *key, float v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}

int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v) {
    size_t len = strlen(v);
    if (len > SIZE_MAX / 4) return GGUF_ERR_NOMEM;
    int rc = kv_begin(w, key, GGUF_TYPE_STRING, 8 + len);
    if (!rc) kv_put_str(w, v, len);
    return rc;
}

int gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *v,
                        uint64_t n) {
    size_t sz = gguf__type_size(elem_type);
    if (!sz) return GGUF_ERR_TYPE;
    if (n > (SIZE_MAX / 4) / sz) return GGUF_ERR_NOMEM;
    int rc = kv_begin(w, key, GGUF_TYPE_ARRAY, 12 + (size_t)n * sz);
    if (rc) return rc;
    kv_put_u32(w, elem_type);
    kv_put_u64(w, n);
    kv_put(w, v, (size_t)n * sz);
    return 0;
}

int gguf_writer_add_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n) {
    return gguf_writer_add_arr(w, key, GGUF_TYPE_INT32, v, n);
}

int gguf_writer_add_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n) {
    return gguf_writer_add_arr(w, key, GGUF_TYPE_FLOAT32, v, n);
}

int gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++) {
        size_t len = strlen(v[i]);
        if (len > SIZE_MAX / 4 - total) return GGUF_ERR_NOMEM;
        total += 8 + len;
    }
    int rc = kv_begin(w, key, GGUF_TYPE_ARRAY, total);
    if (rc) return rc;
    kv_put_u32(w, GGUF_TYPE_STRING);
    kv_put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) kv_put_str(w, v[i], strlen(v[i]));
    return 0;
}

int gguf_writer_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *val,
                        size_t n) {
    int rc = kv_begin(w, key, type, n);
    if (!rc) kv_put(w, val, n);
    return rc;
}

/* Bytes of a tensor of `type` with shape ne[0..n_dims), or 0 when the shape is invalid for
 * the type (unsupported type, too many dims, ne[0] not a multiple of the block size,
 * overflow). A valid empty tensor also gives 0; *ok tells them apart. */
static size_t tensor_bytes(uint32_t type, uint32_t n_dims, const uint64_t *ne, bool *ok) {
    *ok = false;
    if (!kern_type_supported(type) || n_dims > GGUF_MAX_DIMS) return 0;
    uint64_t n0 = n_dims ? ne[0] : 1;
    if (n0 % kern_type_block_elems(type)) return 0;
    if (n0 / kern_type_block_elems(type) > SIZE_MAX / kern_type_block_bytes(type)) return 0;
    size_t bytes = n0 / kern_type_block_elems(type) * kern_type_block_bytes(type);
    for (uint32_t d = 1; d < n_dims; d++) {
        if (ne[d] && bytes > SIZE_MAX / ne[d]) return 0;
        bytes *= (size_t)ne[d];
    }
    *ok = true;
    return bytes;
}

/* GGUF_ERR_FORMAT when the type/shape is invalid or nbytes does not match it. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, size_t nbytes) {
    bool ok;
    if (tensor_bytes(type, n_dims, ne, &ok) != nbytes || !ok) return GGUF_ERR_FORMAT;
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 8;
        gguf__wtensor *t = tk_realloc(w->t, cap * sizeof *t);
        if (!t) return GGUF_ERR_NOMEM;
        w->t = t;
        w->cap_t = cap;
    }
    gguf__wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = tk_strndup(name, strlen(name));
    t->data = tk_malloc(nbytes);
    if (!t->name || !t->data) {
        tk_free(t->name);
        tk_free(t->data);
        return GGUF_ERR_NOMEM;
    }
    if (nbytes) memcpy(t->data, data, nbytes);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    w->n_t++;
    return 0;
}

/* ---------------------------------------------------------------- output */

/* File-writing helpers, shared with engine/quantize.c's streaming writer (gguf_internal.h). */
size_t gguf__align_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

bool gguf__put(FILE *fp, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, fp) == n; }
bool gguf__put_u32(FILE *fp, uint32_t v) { return gguf__put(fp, &v, 4); }
bool gguf__put_u64(FILE *fp, uint64_t v) { return gguf__put(fp, &v, 8); }

bool gguf__put_zeros(FILE *fp, size_t n) {
    static const uint8_t zeros[256];
    for (; n > sizeof zeros; n -= sizeof zeros)
        if (!gguf__put(fp, zeros, sizeof zeros)) return false;
    return gguf__put(fp, zeros, n);
}

static bool write_header(const gguf_writer *w, FILE *fp) {
    bool ok = gguf__put(fp, "GGUF", 4) && gguf__put_u32(fp, 3) && gguf__put_u64(fp, w->n_t) &&
              gguf__put_u64(fp, w->n_kv + (w->write_alignment ? 1 : 0));
    if (ok && w->write_alignment) {
        static const char key[] = "general.alignment";
        ok = gguf__put_u64(fp, sizeof key - 1) && gguf__put(fp, key, sizeof key - 1) &&
             gguf__put_u32(fp, GGUF_TYPE_UINT32) && gguf__put_u32(fp, w->alignment);
    }
    return ok && gguf__put(fp, w->kv, w->kv_len);
}

/* Tensor infos, then padding, then each tensor's data at its aligned offset. */
static bool write_tensors(const gguf_writer *w, FILE *fp) {
    size_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const gguf__wtensor *t = &w->t[i];
        size_t len = strlen(t->name);
        bool ok = gguf__put_u64(fp, len) && gguf__put(fp, t->name, len) && gguf__put_u32(fp, t->n_dims);
        for (uint32_t d = 0; ok && d < t->n_dims; d++) ok = gguf__put_u64(fp, t->ne[d]);
        ok = ok && gguf__put_u32(fp, t->type) && gguf__put_u64(fp, gguf__align_up(off, w->alignment));
        if (!ok) return false;
        off = gguf__align_up(off, w->alignment) + t->nbytes;
    }
    long pos = ftell(fp);
    if (pos < 0 || !gguf__put_zeros(fp, gguf__align_up((size_t)pos, w->alignment) - (size_t)pos)) return false;
    off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        size_t start = gguf__align_up(off, w->alignment);
        if (!gguf__put_zeros(fp, start - off) || !gguf__put(fp, w->t[i].data, w->t[i].nbytes)) return false;
        off = start + w->t[i].nbytes;
    }
    return true;
}

int gguf_writer_write(const gguf_writer *w, const char *path, char *err, size_t errlen) {
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        if (err && errlen) snprintf(err, errlen, "%s: open: %s", path, strerror(errno));
        return GGUF_ERR_IO;
    }
    bool ok = write_header(w, fp) && write_tensors(w, fp);
    int e = errno;
    if (fclose(fp) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        if (err && errlen) snprintf(err, errlen, "%s: write: %s", path, strerror(e));
        return GGUF_ERR_IO;
    }
    return 0;
}
