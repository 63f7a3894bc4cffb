/* gguf reader (see engine/gguf.h for the contract).
 *
 * gguf_open maps the file read-only and hands the image to gguf__open_mem, the parser the
 * fuzz target also drives. Parsing is one forward pass with a bounds-checked cursor: header,
 * key/values, tensor infos, then the data section at the next multiple of general.alignment.
 * Every count is capped by the bytes that remain before anything is allocated for it, so a
 * hostile count fails fast instead of asking for terabytes; every multiplication that sizes
 * a tensor is checked. Values stay in the map: a kv records where its value starts, string
 * arrays get an index of element pointers at open, and keys and tensor names are copied
 * (NUL-terminated) into hash tables for O(1) lookup and duplicate detection.
 *
 * Errors read "<path>: <field>: <problem>"; the cursor keeps the current field name so
 * low-level readers can say which field ran off the end of the file. */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tk_mem.h"
#include "engine/gguf_internal.h"
#include "kernels/kern.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian fields with memcpy; add byte swapping for this host"
#endif

#define GGUF_MAX_ARR_DEPTH 8 /* nesting limit for arrays of arrays */
#define GGUF_MIN_KV_BYTES 13 /* key length 8 + type 4 + smallest value 1 */
#define GGUF_MIN_TENSOR_BYTES 24 /* name length 8 + n_dims 4 + type 4 + offset 8 */

/* One key/value. Invariants after open: key is a NUL-free, NUL-terminated copy; val points
 * into the image at the value (STRING: at its u64 length; ARRAY: at the first element) and
 * every byte it implies is inside the image. For arrays of strings strs holds arr_n pointers,
 * each at an element's u64 length; it is NULL otherwise. */
typedef struct {
    char *key;
    gguf_type type;
    gguf_type arr_type; /* ARRAY only */
    uint64_t arr_n;     /* ARRAY only */
    const uint8_t *val;
    const uint8_t **strs;
} gguf__kv;

/* An opened file. Invariants: kv[0..n_kv) and tensors[0..n_tensors) are fully validated;
 * kv_idx/t_idx are open-addressing tables (capacity a power of two, -1 = empty) mapping
 * names to indices; map is non-NULL only when gguf_open mapped the image itself. */
struct gguf_file {
    char *path;
    uint32_t version;
    size_t alignment;
    const uint8_t *base; /* image */
    size_t size;
    void *map;
    size_t map_len;
    int64_t n_kv;
    gguf__kv *kv;
    int64_t n_tensors;
    gguf_tensor *tensors;
    int64_t *kv_idx;
    size_t kv_cap;
    int64_t *t_idx;
    size_t t_cap;
    size_t data_start; /* absolute offset of the tensor data section */
};

/* Parse cursor: image p[0..size), position pos <= size, and the field being read. */
typedef struct {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *name;
    char field[192];
    char *err;
    size_t errlen;
} gguf__rd;

/* ---------------------------------------------------------------- types */

static const char *const type_names[GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};
static const uint8_t type_sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_type_name(gguf_type t) {
    return (unsigned)t < GGUF_TYPE_COUNT ? type_names[t] : "unknown";
}

size_t gguf__type_size(gguf_type t) { return (unsigned)t < GGUF_TYPE_COUNT ? type_sizes[t] : 0; }

/* Names of ggml tensor types, including ones kern/ does not support, so that an error can
 * say "Q5_0" rather than "6". */
static const char *ggml_type_name(uint32_t type) {
    static const char *const names[] = {
        [4] = "Q4_2 (removed)", [5] = "Q4_3 (removed)", [6] = "Q5_0", [7] = "Q5_1",
        [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K", [15] = "Q8_K", [16] = "IQ2_XXS",
        [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",
        [22] = "IQ2_S", [23] = "IQ4_XS", [24] = "I8", [25] = "I16", [26] = "I32",
        [27] = "I64", [28] = "F64", [29] = "IQ1_M", [34] = "TQ1_0", [35] = "TQ2_0",
    };
    if (kern_type_supported(type)) return kern_type_name(type);
    if (type < sizeof names / sizeof names[0] && names[type]) return names[type];
    return "unknown";
}

/* --------------------------------------------------------------- cursor */

static void rd_field(gguf__rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rd_field(gguf__rd *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->field, sizeof r->field, fmt, ap);
    va_end(ap);
}

static int rd_fail(gguf__rd *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int rd_fail(gguf__rd *r, int code, const char *fmt, ...) {
    if (!r->err || !r->errlen) return code;
    int n = snprintf(r->err, r->errlen, "%s: %s: ", r->name, r->field);
    if (n < 0 || (size_t)n >= r->errlen) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

static size_t rd_left(const gguf__rd *r) { return r->size - r->pos; }

/* Advance past n bytes that must be inside the image; `what` names them in the error. */
static int rd_skip(gguf__rd *r, uint64_t n, const char *what) {
    if (n > rd_left(r))
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "%s (%" PRIu64 " bytes) at offset %zu beyond end of file (size %zu)", what,
                       n, r->pos, r->size);
    r->pos += (size_t)n;
    return 0;
}

static int rd_u32(gguf__rd *r, uint32_t *v, const char *what) {
    const uint8_t *q = r->p + r->pos;
    int rc = rd_skip(r, 4, what);
    if (rc) return rc;
    memcpy(v, q, 4);
    return 0;
}

static int rd_u64(gguf__rd *r, uint64_t *v, const char *what) {
    const uint8_t *q = r->p + r->pos;
    int rc = rd_skip(r, 8, what);
    if (rc) return rc;
    memcpy(v, q, 8);
    return 0;
}

/* A GGUF string (u64 length + bytes). elem: array element index for the message, or
 * UINT64_MAX for a plain string. The message is only formatted on failure (this runs once
 * per vocab entry). */
static int rd_str(gguf__rd *r, const char **s, uint64_t *len, uint64_t elem) {
    size_t left = rd_left(r);
    if (left >= 8) {
        memcpy(len, r->p + r->pos, 8);
        if (*len <= left - 8) {
            *s = (const char *)r->p + r->pos + 8;
            r->pos += 8 + (size_t)*len;
            return 0;
        }
    }
    char what[64] = "string length";
    if (elem != UINT64_MAX) snprintf(what, sizeof what, "element %" PRIu64 ": string length", elem);
    if (left < 8) return rd_skip(r, 8, what);
    return rd_fail(r, GGUF_ERR_FORMAT, "%s %" PRIu64 " at offset %zu beyond end of file (size %zu)",
                   what, *len, r->pos + 8, r->size);
}

/* A key or tensor name: no embedded NUL (lookups are by C string). Returns a copy. */
static int rd_name(gguf__rd *r, char **out) {
    const char *s = NULL;
    uint64_t len = 0;
    int rc = rd_str(r, &s, &len, UINT64_MAX);
    if (rc) return rc;
    if (memchr(s, '\0', (size_t)len))
        return rd_fail(r, GGUF_ERR_FORMAT, "name contains a NUL byte");
    *out = tk_strndup(s, (size_t)len);
    return *out ? 0 : rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
}

/* ---------------------------------------------------------- name tables */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static const char *name_at(const gguf_file *f, int tensors, int64_t i) {
    return tensors ? f->tensors[i].name : f->kv[i].key;
}

/* Slot holding `name`, or the empty slot where it would go. The table is never full
 * (capacity >= 2 * entries). */
static size_t idx_slot(const gguf_file *f, int tensors, const char *name) {
    const int64_t *tab = tensors ? f->t_idx : f->kv_idx;
    size_t mask = (tensors ? f->t_cap : f->kv_cap) - 1;
    size_t s = (size_t)hash_str(name) & mask;
    while (tab[s] >= 0 && strcmp(name_at(f, tensors, tab[s]), name) != 0) s = (s + 1) & mask;
    return s;
}

static int idx_alloc(int64_t **tab, size_t *cap, uint64_t n) {
    size_t c = 8;
    while (c < 2 * n) c *= 2; /* n is capped by the file size, so this cannot overflow */
    *tab = tk_calloc(c, sizeof **tab);
    if (!*tab) return GGUF_ERR_NOMEM;
    for (size_t i = 0; i < c; i++) (*tab)[i] = -1;
    *cap = c;
    return 0;
}

/* Insert entry i (already named); returns the index of an earlier entry with the same
 * name, or -1 after inserting. */
static int64_t idx_insert(gguf_file *f, int tensors, int64_t i) {
    size_t s = idx_slot(f, tensors, name_at(f, tensors, i));
    int64_t *tab = tensors ? f->t_idx : f->kv_idx;
    if (tab[s] >= 0) return tab[s];
    tab[s] = i;
    return -1;
}

/* --------------------------------------------------------------- header */

static int parse_header(gguf__rd *r, gguf_file *f, uint64_t *n_tensors, uint64_t *n_kv) {
    rd_field(r, "magic");
    int rc = rd_skip(r, 4, "magic");
    if (rc) return rc;
    if (memcmp(r->p, "GGUF", 4) != 0)
        return rd_fail(r, GGUF_ERR_FORMAT, "bad magic %02x %02x %02x %02x (expected \"GGUF\")",
                       r->p[0], r->p[1], r->p[2], r->p[3]);
    rd_field(r, "version");
    if ((rc = rd_u32(r, &f->version, "version"))) return rc;
    if (f->version != 2 && f->version != 3)
        return rd_fail(r, GGUF_ERR_FORMAT, "unsupported version %" PRIu32 " (expected 3)",
                       f->version);
    rd_field(r, "tensor count");
    if ((rc = rd_u64(r, n_tensors, "tensor count"))) return rc;
    rd_field(r, "kv count");
    if ((rc = rd_u64(r, n_kv, "kv count"))) return rc;
    if (*n_kv > rd_left(r) / GGUF_MIN_KV_BYTES)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "kv count %" PRIu64 " (at least %d bytes each) beyond end of file "
                       "(%zu bytes left)",
                       *n_kv, GGUF_MIN_KV_BYTES, rd_left(r));
    rd_field(r, "tensor count");
    if (*n_tensors > rd_left(r) / GGUF_MIN_TENSOR_BYTES)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "tensor count %" PRIu64 " (at least %d bytes each) beyond end of file "
                       "(%zu bytes left)",
                       *n_tensors, GGUF_MIN_TENSOR_BYTES, rd_left(r));
    return 0;
}

/* ---------------------------------------------------------------- values */

/* Checks that `count` elements of at least `min_size` bytes each can fit. */
static int check_count(gguf__rd *r, uint64_t count, gguf_type et, size_t min_size) {
    if (count <= rd_left(r) / min_size) return 0;
    return rd_fail(r, GGUF_ERR_FORMAT,
                   "array count %" PRIu64 " of %s (%s%zu bytes each) beyond end of file "
                   "(%zu bytes left)",
                   count, gguf_type_name(et), gguf__type_size(et) ? "" : "at least ", min_size,
                   rd_left(r));
}

/* Skips `count` elements of type et (arrays of arrays allowed up to GGUF_MAX_ARR_DEPTH).
 * Terminates in O(file size): every element consumes at least one byte. */
static int skip_elems(gguf__rd *r, gguf_type et, uint64_t count, int depth) {
    size_t sz = gguf__type_size(et);
    int rc = check_count(r, count, et, sz ? sz : et == GGUF_TYPE_STRING ? 8 : 12);
    if (rc) return rc;
    if (sz) return rd_skip(r, count * sz, "array data");
    for (uint64_t j = 0; j < count; j++) {
        const char *s;
        uint64_t len, n;
        uint32_t t;
        if (et == GGUF_TYPE_STRING) {
            if ((rc = rd_str(r, &s, &len, j))) return rc;
            continue;
        }
        if (depth >= GGUF_MAX_ARR_DEPTH)
            return rd_fail(r, GGUF_ERR_FORMAT, "arrays nested deeper than %d",
                           GGUF_MAX_ARR_DEPTH);
        if ((rc = rd_u32(r, &t, "nested array element type"))) return rc;
        if (t >= GGUF_TYPE_COUNT)
            return rd_fail(r, GGUF_ERR_FORMAT, "unknown nested array element type %" PRIu32, t);
        if ((rc = rd_u64(r, &n, "nested array count"))) return rc;
        if ((rc = skip_elems(r, (gguf_type)t, n, depth + 1))) return rc;
    }
    return 0;
}

/* Array of strings: record a pointer to each element's length for O(1) access. */
static int index_strs(gguf__rd *r, gguf__kv *kv) {
    int rc = check_count(r, kv->arr_n, GGUF_TYPE_STRING, 8);
    if (rc) return rc;
    kv->strs = tk_calloc(kv->arr_n, sizeof *kv->strs);
    if (!kv->strs) return rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
    for (uint64_t j = 0; j < kv->arr_n; j++) {
        const char *s;
        uint64_t len;
        kv->strs[j] = r->p + r->pos;
        if ((rc = rd_str(r, &s, &len, j))) return rc;
    }
    return 0;
}

static int parse_array(gguf__rd *r, gguf__kv *kv) {
    uint32_t et;
    int rc = rd_u32(r, &et, "array element type");
    if (rc) return rc;
    if (et >= GGUF_TYPE_COUNT)
        return rd_fail(r, GGUF_ERR_FORMAT, "unknown array element type %" PRIu32, et);
    if ((rc = rd_u64(r, &kv->arr_n, "array count"))) return rc;
    kv->arr_type = (gguf_type)et;
    kv->val = r->p + r->pos;
    if (et == GGUF_TYPE_STRING) return index_strs(r, kv);
    return skip_elems(r, kv->arr_type, kv->arr_n, 1);
}

static int parse_value(gguf__rd *r, gguf__kv *kv) {
    uint32_t t;
    int rc = rd_u32(r, &t, "value type");
    if (rc) return rc;
    if (t >= GGUF_TYPE_COUNT) return rd_fail(r, GGUF_ERR_FORMAT, "unknown value type %" PRIu32, t);
    kv->type = (gguf_type)t;
    kv->val = r->p + r->pos;
    if (t == GGUF_TYPE_ARRAY) return parse_array(r, kv);
    if (t == GGUF_TYPE_STRING) {
        const char *s;
        uint64_t len;
        return rd_str(r, &s, &len, UINT64_MAX);
    }
    char what[32];
    snprintf(what, sizeof what, "%s value", type_names[t]);
    return rd_skip(r, type_sizes[t], what);
}

static int parse_kvs(gguf__rd *r, gguf_file *f, uint64_t n_kv) {
    f->kv = tk_calloc(n_kv, sizeof *f->kv);
    if (!f->kv) return rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
    f->n_kv = (int64_t)n_kv; /* entries past the failing one stay zeroed for gguf_close */
    if (idx_alloc(&f->kv_idx, &f->kv_cap, n_kv)) return rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < (int64_t)n_kv; i++) {
        gguf__kv *kv = &f->kv[i];
        rd_field(r, "kv[%" PRId64 "] key", i);
        int rc = rd_name(r, &kv->key);
        if (rc) return rc;
        rd_field(r, "kv[%" PRId64 "] key '%.120s'", i, kv->key);
        if ((rc = parse_value(r, kv))) return rc;
        int64_t prev = idx_insert(f, 0, i);
        if (prev >= 0)
            return rd_fail(r, GGUF_ERR_FORMAT, "duplicate key (first at kv[%" PRId64 "])", prev);
    }
    return 0;
}

static int set_alignment(gguf__rd *r, gguf_file *f) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = gguf_find_key(f, "general.alignment");
    if (i < 0) return 0;
    rd_field(r, "kv[%" PRId64 "] key 'general.alignment'", i);
    if (f->kv[i].type != GGUF_TYPE_UINT32)
        return rd_fail(r, GGUF_ERR_FORMAT, "type %s, expected uint32",
                       gguf_type_name(f->kv[i].type));
    uint32_t a;
    memcpy(&a, f->kv[i].val, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return rd_fail(r, GGUF_ERR_FORMAT, "alignment %" PRIu32 " is not a nonzero power of two",
                       a);
    f->alignment = a;
    return 0;
}

/* --------------------------------------------------------------- tensors */

static int parse_tensor_info(gguf__rd *r, gguf_file *f, int64_t i) {
    gguf_tensor *t = &f->tensors[i];
    char *name = NULL;
    rd_field(r, "tensor[%" PRId64 "] name", i);
    int rc = rd_name(r, &name);
    t->name = name;
    if (rc) return rc;
    rd_field(r, "tensor '%.120s'", t->name);
    if ((rc = rd_u32(r, &t->n_dims, "n_dims"))) return rc;
    if (t->n_dims > GGUF_MAX_DIMS)
        return rd_fail(r, GGUF_ERR_FORMAT, "n_dims %" PRIu32 " exceeds the maximum %d",
                       t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && (rc = rd_u64(r, &t->ne[d], "ne"))) return rc;
        if (t->ne[d] > INT64_MAX)
            return rd_fail(r, GGUF_ERR_FORMAT, "ne[%" PRIu32 "] = %" PRIu64 " is too large", d,
                           t->ne[d]);
    }
    if ((rc = rd_u32(r, &t->type, "type"))) return rc;
    if ((rc = rd_u64(r, &t->offset, "data offset"))) return rc;
    int64_t prev = idx_insert(f, 1, i);
    if (prev >= 0)
        return rd_fail(r, GGUF_ERR_FORMAT, "duplicate tensor name (first at tensor[%" PRId64 "])",
                       prev);
    return 0;
}

/* nbytes = row bytes * ne[1] * ne[2] * ne[3], every step checked for overflow. */
static int tensor_nbytes(gguf__rd *r, const gguf_tensor *t, size_t *nbytes) {
    size_t be = kern_type_block_elems(t->type), bb = kern_type_block_bytes(t->type);
    if (t->ne[0] % be)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "ne[0] = %" PRIu64 " is not a multiple of the %s block size %zu",
                       t->ne[0], kern_type_name(t->type), be);
    uint64_t elems = t->ne[0], n = t->ne[0] / be;
    int zero = t->ne[0] == 0;
    if (n > SIZE_MAX / bb) goto overflow;
    size_t bytes = (size_t)n * bb;
    for (int d = 1; d < GGUF_MAX_DIMS; d++) {
        uint64_t ne = t->ne[d];
        zero |= ne == 0;
        if (ne && bytes > SIZE_MAX / ne) goto overflow;
        if (ne && !zero && elems > INT64_MAX / ne) goto overflow;
        bytes *= (size_t)ne;
        elems = zero ? 0 : elems * ne;
    }
    *nbytes = bytes;
    return 0;
overflow:
    return rd_fail(r, GGUF_ERR_FORMAT,
                   "size of ne {%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64 "} overflows",
                   t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
}

static int check_tensor(gguf__rd *r, gguf_file *f, gguf_tensor *t) {
    rd_field(r, "tensor '%.120s'", t->name);
    if (!kern_type_supported(t->type))
        return rd_fail(r, GGUF_ERR_FORMAT, "unsupported tensor type %" PRIu32 " (%s)", t->type,
                       ggml_type_name(t->type));
    int rc = tensor_nbytes(r, t, &t->nbytes);
    if (rc) return rc;
    if (t->offset % f->alignment)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "data offset %" PRIu64 " is not a multiple of the alignment %zu",
                       t->offset, f->alignment);
    size_t data_size = f->size - f->data_start;
    if (t->offset > data_size || t->nbytes > data_size - (size_t)t->offset)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "data offset %" PRIu64 " + %zu bytes beyond end of file (size %zu)",
                       t->offset, t->nbytes, f->size);
    t->data = f->base + f->data_start + t->offset;
    return 0;
}

static int parse_tensors(gguf__rd *r, gguf_file *f, uint64_t n_tensors) {
    rd_field(r, "tensor count");
    if (n_tensors > rd_left(r) / GGUF_MIN_TENSOR_BYTES)
        return rd_fail(r, GGUF_ERR_FORMAT,
                       "tensor count %" PRIu64 " (at least %d bytes each) beyond end of file "
                       "(%zu bytes left)",
                       n_tensors, GGUF_MIN_TENSOR_BYTES, rd_left(r));
    f->tensors = tk_calloc(n_tensors, sizeof *f->tensors);
    if (!f->tensors) return rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
    f->n_tensors = (int64_t)n_tensors;
    if (idx_alloc(&f->t_idx, &f->t_cap, n_tensors))
        return rd_fail(r, GGUF_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < f->n_tensors; i++) {
        int rc = parse_tensor_info(r, f, i);
        if (rc) return rc;
    }
    /* The data section starts at the next multiple of the alignment. A file without
     * tensors may end before that padding. */
    size_t pad = (f->alignment - r->pos % f->alignment) % f->alignment;
    f->data_start = r->pos + pad;
    if (pad > rd_left(r)) {
        f->data_start = r->size;
        if (n_tensors) {
            rd_field(r, "tensor data");
            return rd_fail(r, GGUF_ERR_FORMAT,
                           "section at offset %zu beyond end of file (size %zu)",
                           r->pos + pad, r->size);
        }
    }
    for (int64_t i = 0; i < f->n_tensors; i++) {
        int rc = check_tensor(r, f, &f->tensors[i]);
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ open/close */

int gguf__open_mem(const void *buf, size_t n, const char *name, gguf_file **out, char *err,
                   size_t errlen) {
    static const uint8_t empty[1];
    gguf__rd r = {.p = buf ? buf : empty, .size = buf ? n : 0,
                  .name = name ? name : "<memory>", .err = err, .errlen = errlen};
    uint64_t n_tensors = 0, n_kv = 0;
    int rc = GGUF_ERR_NOMEM;
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    rd_field(&r, "open");
    gguf_file *f = tk_calloc(1, sizeof *f);
    if (!f || !(f->path = tk_strndup(r.name, strlen(r.name)))) {
        rc = rd_fail(&r, GGUF_ERR_NOMEM, "out of memory");
        goto fail;
    }
    f->base = r.p;
    f->size = r.size;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if ((rc = parse_header(&r, f, &n_tensors, &n_kv))) goto fail;
    if ((rc = parse_kvs(&r, f, n_kv))) goto fail;
    if ((rc = set_alignment(&r, f))) goto fail;
    if ((rc = parse_tensors(&r, f, n_tensors))) goto fail;
    *out = f;
    return 0;
fail:
    gguf_close(f);
    return rc;
}

static int io_fail(const char *path, const char *what, int e, char *err, size_t errlen) {
    if (err && errlen) snprintf(err, errlen, "%s: %s: %s", path, what, strerror(e));
    return GGUF_ERR_IO;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen) {
    struct stat st;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_fail(path, "open", errno, err, errlen);
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return io_fail(path, "stat", e, err, errlen);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return io_fail(path, "open", EINVAL, err, errlen);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return io_fail(path, "mmap", e, err, errlen);
        }
    }
    close(fd); /* the mapping stays valid */
    int rc = gguf__open_mem(map, size, path, out, err, errlen);
    if (rc) {
        if (map) munmap(map, size);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_len = size;
    return 0;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    for (int64_t i = 0; f->kv && i < f->n_kv; i++) {
        tk_free(f->kv[i].key);
        tk_free(f->kv[i].strs);
    }
    for (int64_t i = 0; f->tensors && i < f->n_tensors; i++) tk_free((char *)f->tensors[i].name);
    tk_free(f->kv);
    tk_free(f->tensors);
    tk_free(f->kv_idx);
    tk_free(f->t_idx);
    if (f->map) munmap(f->map, f->map_len);
    tk_free(f->path);
    tk_free(f);
}

/* --------------------------------------------------------------- getters */

const char *gguf_path(const gguf_file *f) { return f->path; }
uint32_t gguf_version(const gguf_file *f) { return f->version; }
size_t gguf_alignment(const gguf_file *f) { return f->alignment; }
int64_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }

static const gguf__kv *kv_at(const gguf_file *f, int64_t i) {
    return i >= 0 && i < f->n_kv ? &f->kv[i] : NULL;
}

const char *gguf_kv_key(const gguf_file *f, int64_t i) {
    const gguf__kv *kv = kv_at(f, i);
    return kv ? kv->key : NULL;
}

int64_t gguf_find_key(const gguf_file *f, const char *key) {
    if (!key || !f->kv_idx) return -1;
    return f->kv_idx[idx_slot(f, 0, key)];
}

/* GGUF_TYPE_COUNT for an index out of range (and, for the arr_ getters, a non-array). */
gguf_type gguf_kv_type(const gguf_file *f, int64_t i) {
    const gguf__kv *kv = kv_at(f, i);
    return kv ? kv->type : GGUF_TYPE_COUNT;
}

gguf_type gguf_kv_arr_type(const gguf_file *f, int64_t i) {
    const gguf__kv *kv = kv_at(f, i);
    return kv && kv->type == GGUF_TYPE_ARRAY ? kv->arr_type : GGUF_TYPE_COUNT;
}

uint64_t gguf_kv_arr_n(const gguf_file *f, int64_t i) {
    const gguf__kv *kv = kv_at(f, i);
    return kv && kv->type == GGUF_TYPE_ARRAY ? kv->arr_n : 0;
}

/* A numeric value widened: kind says which member holds it. */
typedef struct {
    enum { NUM_SIGNED, NUM_UNSIGNED, NUM_FLOAT, NUM_BOOL, NUM_NONE } kind;
    int64_t i;
    uint64_t u;
    double d;
} gguf__num;

static gguf__num load_num(gguf_type t, const uint8_t *p) {
    gguf__num n = {.kind = NUM_NONE};
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
    float f32;
    switch (t) {
    case GGUF_TYPE_UINT8: memcpy(&u8, p, 1); n.kind = NUM_UNSIGNED; n.u = u8; break;
    case GGUF_TYPE_INT8: memcpy(&i8, p, 1); n.kind = NUM_SIGNED; n.i = i8; break;
    case GGUF_TYPE_UINT16: memcpy(&u16, p, 2); n.kind = NUM_UNSIGNED; n.u = u16; break;
    case GGUF_TYPE_INT16: memcpy(&i16, p, 2); n.kind = NUM_SIGNED; n.i = i16; break;
    case GGUF_TYPE_UINT32: memcpy(&u32, p, 4); n.kind = NUM_UNSIGNED; n.u = u32; break;
    case GGUF_TYPE_INT32: memcpy(&i32, p, 4); n.kind = NUM_SIGNED; n.i = i32; break;
    case GGUF_TYPE_UINT64: memcpy(&n.u, p, 8); n.kind = NUM_UNSIGNED; break;
    case GGUF_TYPE_INT64: memcpy(&n.i, p, 8); n.kind = NUM_SIGNED; break;
    case GGUF_TYPE_FLOAT32: memcpy(&f32, p, 4); n.kind = NUM_FLOAT; n.d = f32; break;
    case GGUF_TYPE_FLOAT64: memcpy(&n.d, p, 8); n.kind = NUM_FLOAT; break;
    case GGUF_TYPE_BOOL: n.kind = NUM_BOOL; n.u = p[0] != 0; break;
    default: break;
    }
    return n;
}

/* Integer in [lo, hi] (floats only when integral, bools as 0/1 when allow_bool). */
static int num_to_int(gguf__num n, int64_t lo, uint64_t hi, bool allow_float, bool allow_bool,
                      int64_t *si, uint64_t *ui) {
    switch (n.kind) {
    case NUM_BOOL:
        if (!allow_bool) return GGUF_ERR_TYPE;
        /* fall through */
    case NUM_UNSIGNED:
        if (n.u > hi) return GGUF_ERR_TYPE;
        *ui = n.u;
        *si = (int64_t)(n.u & INT64_MAX);
        return 0;
    case NUM_SIGNED:
        if (n.i < lo || (n.i >= 0 && (uint64_t)n.i > hi)) return GGUF_ERR_TYPE;
        *si = n.i;
        *ui = (uint64_t)n.i;
        return 0;
    case NUM_FLOAT:
        /* The range test also rejects NaN; the bounds keep the cast defined. */
        if (!allow_float || !(n.d >= (double)lo && n.d <= (double)hi) || n.d >= 0x1p63 ||
            n.d < -0x1p63 || (double)(int64_t)n.d != n.d)
            return GGUF_ERR_TYPE;
        *si = (int64_t)n.d;
        *ui = (uint64_t)*si;
        return 0;
    default: return GGUF_ERR_TYPE;
    }
}

static int num_to_f32(gguf__num n, bool allow_bool, float *out) {
    switch (n.kind) {
    case NUM_SIGNED: *out = (float)n.i; return 0;
    case NUM_UNSIGNED: *out = (float)n.u; return 0;
    case NUM_BOOL:
        if (!allow_bool) return GGUF_ERR_TYPE;
        *out = (float)n.u;
        return 0;
    case NUM_FLOAT:
        if (isfinite(n.d) && (n.d > FLT_MAX || n.d < -FLT_MAX)) return GGUF_ERR_TYPE;
        *out = (float)n.d;
        return 0;
    default: return GGUF_ERR_TYPE;
    }
}

static int find_kv(const gguf_file *f, const char *key, const gguf__kv **kv) {
    *kv = kv_at(f, gguf_find_key(f, key));
    return *kv ? 0 : GGUF_ERR_NOTFOUND;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    const gguf__kv *kv;
    int64_t si;
    uint64_t ui;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    rc = num_to_int(load_num(kv->type, kv->val), 0, UINT32_MAX, false, false, &si, &ui);
    if (!rc) *out = (uint32_t)ui;
    return rc;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out) {
    const gguf__kv *kv;
    int64_t si;
    uint64_t ui;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    rc = num_to_int(load_num(kv->type, kv->val), INT64_MIN, INT64_MAX, false, false, &si, &ui);
    if (!rc) *out = si;
    return rc;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf__kv *kv;
    int rc = find_kv(f, key, &kv);
    return rc ? rc : num_to_f32(load_num(kv->type, kv->val), false, out);
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out) {
    const gguf__kv *kv;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_TYPE_BOOL) return GGUF_ERR_TYPE;
    *out = kv->val[0] != 0;
    return 0;
}

/* The string whose u64 length is at p (validated at open). */
static void str_at(const uint8_t *p, const char **s, size_t *len) {
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len) {
    const gguf__kv *kv;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_TYPE_STRING) return GGUF_ERR_TYPE;
    str_at(kv->val, s, len);
    return 0;
}

/* *n (may be NULL) gets the element count. GGUF_ERR_TYPE unless an array of strings. */
int gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t *n) {
    const gguf__kv *kv;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING) return GGUF_ERR_TYPE;
    if (n) *n = kv->arr_n;
    return 0;
}

/* GGUF_ERR_NOTFOUND also when i >= the element count. */
int gguf_arr_str_at(const gguf_file *f, const char *key, uint64_t i, const char **s,
                    size_t *len) {
    const gguf__kv *kv;
    int rc = find_kv(f, key, &kv);
    if (rc) return rc;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING) return GGUF_ERR_TYPE;
    if (i >= kv->arr_n) return GGUF_ERR_NOTFOUND;
    str_at(kv->strs[i], s, len);
    return 0;
}

/* Numeric array (element type with a fixed size, not an array) or GGUF_ERR_TYPE. */
static int numeric_arr(const gguf_file *f, const char *key, const gguf__kv **kv, size_t *esz) {
    int rc = find_kv(f, key, kv);
    if (rc) return rc;
    if ((*kv)->type != GGUF_TYPE_ARRAY) return GGUF_ERR_TYPE;
    *esz = gguf__type_size((*kv)->arr_type);
    return *esz ? 0 : GGUF_ERR_TYPE;
}

/* Copies min(n, count) elements. Integers must fit int32, floats must be integral and fit;
 * bools read as 0/1. On GGUF_ERR_TYPE the elements before the bad one have been written. */
int gguf_get_arr_i32(const gguf_file *f, const char *key, int32_t *out, uint64_t n) {
    const gguf__kv *kv;
    size_t esz;
    int rc = numeric_arr(f, key, &kv, &esz);
    if (rc) return rc;
    for (uint64_t j = 0; j < n && j < kv->arr_n; j++) {
        int64_t si;
        uint64_t ui;
        gguf__num v = load_num(kv->arr_type, kv->val + j * esz);
        if ((rc = num_to_int(v, INT32_MIN, INT32_MAX, true, true, &si, &ui))) return rc;
        out[j] = (int32_t)si;
    }
    return 0;
}

/* Copies min(n, count) elements converted to float (float64 out of float range is
 * GGUF_ERR_TYPE; bools read as 0/1). */
int gguf_get_arr_f32(const gguf_file *f, const char *key, float *out, uint64_t n) {
    const gguf__kv *kv;
    size_t esz;
    int rc = numeric_arr(f, key, &kv, &esz);
    if (rc) return rc;
    if (kv->arr_type == GGUF_TYPE_FLOAT32) { /* the common case: plain copy */
        size_t m = (size_t)(n < kv->arr_n ? n : kv->arr_n);
        if (m) memcpy(out, kv->val, m * 4);
        return 0;
    }
    for (uint64_t j = 0; j < n && j < kv->arr_n; j++)
        if ((rc = num_to_f32(load_num(kv->arr_type, kv->val + j * esz), true, &out[j]))) return rc;
    return 0;
}

int64_t gguf_n_tensors(const gguf_file *f) { return f->n_tensors; }

const gguf_tensor *gguf_tensor_at(const gguf_file *f, int64_t i) {
    return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    if (!name || !f->t_idx) return NULL;
    int64_t i = f->t_idx[idx_slot(f, 1, name)];
    return i >= 0 ? &f->tensors[i] : NULL;
}
