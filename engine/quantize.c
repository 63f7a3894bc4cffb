/* Model quantization and random-weight models (see engine/quantize.h).
 *
 * Three layers, top to bottom:
 *  - a streaming GGUF writer (qz_out): metadata pairs are encoded into one buffer, tensor
 *    infos are declared up front (their offsets follow from type and shape alone), then
 *    qz_begin writes header + metadata + infos + padding and qz_write takes each tensor's bytes
 *    in order, padding between tensors. engine/gguf_write.c copies every tensor into memory,
 *    which a 1-8 GB model cannot afford; the layout written here is the same;
 *  - a row pipeline (qz_write_matrix): a chunk of rows is produced by a fill callback
 *    (dequantise a source row, or draw random values) and quantized on the pool's threads,
 *    then written; a row's bytes depend only on its index, not on the thread split;
 *  - eng_quantize_file and eng_mkmodel_write on top.
 * Metadata copied from another file (all of a model's keys, or a vocab's tokenizer.* keys) is
 * copied as encoded bytes, found by walking the file's key/value section: the public reader
 * gives typed getters only, and re-encoding through them would lose value types. */
#include "engine/quantize.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tk_mem.h"
#include "engine/gguf_internal.h"
#include "engine/model.h"
#include "kernels/kern.h"

#define QZ_CHUNK_ELEMS ((size_t)1 << 22) /* elements quantized per pool job */
#define QZ_MAX_ARR_DEPTH 8

__attribute__((format(printf, 4, 5))) static int qz_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ================================================================ streaming writer */

typedef struct {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    size_t nbytes;
} qz_tensor;

/* Invariants: kv[0..kv_len) holds n_kv encoded pairs (nomem set if an append failed, after
 * which kv is frozen); after qz_begin, tensors [0, cur) are fully written and cur_done bytes
 * of tensor cur; alignment is a power of two. */
typedef struct {
    uint8_t *kv;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    bool nomem;
    qz_tensor *t;
    size_t n_t, cap_t;
    size_t alignment;
    FILE *fp;
    const char *path;
    size_t cur, cur_done;
    char *err;
    size_t errlen;
} qz_out;

static void qz_init(qz_out *o, size_t alignment, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->alignment = alignment;
    o->err = err;
    o->errlen = errlen;
}

static void kv_put(qz_out *o, const void *p, size_t n) {
    if (o->nomem) return;
    if (o->kv_len + n > o->kv_cap) {
        size_t cap = o->kv_cap ? o->kv_cap : 4096;
        while (cap < o->kv_len + n) cap *= 2;
        uint8_t *q = tk_realloc(o->kv, cap);
        if (!q) {
            o->nomem = true;
            return;
        }
        o->kv = q;
        o->kv_cap = cap;
    }
    memcpy(o->kv + o->kv_len, p, n);
    o->kv_len += n;
}

static void kv_u32(qz_out *o, uint32_t v) { kv_put(o, &v, 4); }
static void kv_str(qz_out *o, const char *s, size_t len) {
    uint64_t n = len;
    kv_put(o, &n, 8);
    kv_put(o, s, len);
}

/* Starts a pair: key and value type. */
static void kv_key(qz_out *o, const char *key, uint32_t type) {
    kv_str(o, key, strlen(key));
    kv_u32(o, type);
    o->n_kv++;
}

static void qz_add_u32(qz_out *o, const char *key, uint32_t v) {
    kv_key(o, key, GGUF_TYPE_UINT32);
    kv_u32(o, v);
}

static void qz_add_f32(qz_out *o, const char *key, float v) {
    kv_key(o, key, GGUF_TYPE_FLOAT32);
    kv_put(o, &v, 4);
}

static void qz_add_str(qz_out *o, const char *key, const char *s) {
    kv_key(o, key, GGUF_TYPE_STRING);
    kv_str(o, s, strlen(s));
}

/* Starts an array pair of n elements of elem_type; the caller appends the elements. */
static void qz_add_arr_begin(qz_out *o, const char *key, uint32_t elem_type, uint64_t n) {
    kv_key(o, key, GGUF_TYPE_ARRAY);
    kv_u32(o, elem_type);
    kv_put(o, &n, 8);
}

/* Declares the next tensor. GGUF_ERR_FORMAT-style failure as ENG_ERR_INVALID when ne[0] is
 * not a multiple of the type's block size. */
static int qz_add_tensor(qz_out *o, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne) {
    size_t rb = kern_row_bytes(type, (size_t)ne[0]);
    if (ne[0] && !rb)
        return qz_fail(o->err, o->errlen, ENG_ERR_INVALID, "%s: tensor '%s': width %llu is not a multiple of %s's block",
                       o->path, name, (unsigned long long)ne[0], kern_type_name(type));
    if (o->n_t == o->cap_t) {
        size_t cap = o->cap_t ? o->cap_t * 2 : 64;
        qz_tensor *t = tk_realloc(o->t, cap * sizeof *t);
        if (!t) return qz_fail(o->err, o->errlen, ENG_ERR_NOMEM, "%s: out of memory", o->path);
        o->t = t;
        o->cap_t = cap;
    }
    qz_tensor *t = &o->t[o->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = tk_strndup(name, strlen(name)))) return qz_fail(o->err, o->errlen, ENG_ERR_NOMEM, "%s: out of memory", o->path);
    t->type = type;
    t->n_dims = n_dims;
    t->nbytes = rb;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (d > 0) t->nbytes *= (size_t)t->ne[d];
    }
    o->n_t++;
    return 0;
}


static int io_fail(qz_out *o, const char *what) {
    return qz_fail(o->err, o->errlen, ENG_ERR_IO, "%s: %s: %s", o->path, what, strerror(errno));
}

/* Opens path and writes everything before the tensor data. */
static int qz_begin(qz_out *o, const char *path) {
    o->path = path;
    if (o->nomem) return qz_fail(o->err, o->errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
    if (!(o->fp = fopen(path, "wb"))) return io_fail(o, "open");
    setvbuf(o->fp, NULL, _IOFBF, 1 << 20);
    bool extra = o->alignment != GGUF_DEFAULT_ALIGNMENT;
    bool ok = gguf__put(o->fp, "GGUF", 4) && gguf__put_u32(o->fp, 3) && gguf__put_u64(o->fp, o->n_t) &&
              gguf__put_u64(o->fp, o->n_kv + (extra ? 1 : 0));
    if (ok && extra) {
        static const char key[] = "general.alignment";
        ok = gguf__put_u64(o->fp, sizeof key - 1) && gguf__put(o->fp, key, sizeof key - 1) &&
             gguf__put_u32(o->fp, GGUF_TYPE_UINT32) && gguf__put_u32(o->fp, (uint32_t)o->alignment);
    }
    ok = ok && gguf__put(o->fp, o->kv, o->kv_len);
    size_t off = 0;
    for (size_t i = 0; ok && i < o->n_t; i++) {
        const qz_tensor *t = &o->t[i];
        ok = gguf__put_u64(o->fp, strlen(t->name)) && gguf__put(o->fp, t->name, strlen(t->name)) && gguf__put_u32(o->fp, t->n_dims);
        for (uint32_t d = 0; ok && d < t->n_dims; d++) ok = gguf__put_u64(o->fp, t->ne[d]);
        ok = ok && gguf__put_u32(o->fp, t->type) && gguf__put_u64(o->fp, gguf__align_up(off, o->alignment));
        off = gguf__align_up(off, o->alignment) + t->nbytes;
    }
    long pos = ok ? ftell(o->fp) : -1;
    if (pos < 0 || !gguf__put_zeros(o->fp, gguf__align_up((size_t)pos, o->alignment) - (size_t)pos)) return io_fail(o, "write");
    o->cur = o->cur_done = 0;
    return 0;
}

/* Skips finished (and empty) tensors, padding to the next one's aligned offset. */
static bool qz_advance(qz_out *o) {
    while (o->cur < o->n_t && o->cur_done == o->t[o->cur].nbytes) {
        size_t pad = gguf__align_up(o->t[o->cur].nbytes, o->alignment) - o->t[o->cur].nbytes;
        o->cur++;
        o->cur_done = 0;
        if (o->cur < o->n_t && !gguf__put_zeros(o->fp, pad)) return false;
    }
    return true;
}

/* Appends n bytes of tensor data (they may span tensors). */
static int qz_write(qz_out *o, const void *data, size_t n) {
    const uint8_t *p = data;
    while (n > 0) {
        if (!qz_advance(o)) return io_fail(o, "write");
        if (o->cur >= o->n_t) return qz_fail(o->err, o->errlen, ENG_ERR_INVALID, "%s: more tensor data than declared", o->path);
        size_t take = o->t[o->cur].nbytes - o->cur_done;
        if (take > n) take = n;
        if (!gguf__put(o->fp, p, take)) return io_fail(o, "write");
        o->cur_done += take;
        p += take;
        n -= take;
    }
    return qz_advance(o) ? 0 : io_fail(o, "write");
}

/* Closes the file; rc != 0 (an earlier failure) or missing data removes it. */
static int qz_finish(qz_out *o, int rc) {
    if (o->fp) {
        if (!rc && o->cur < o->n_t)
            rc = qz_fail(o->err, o->errlen, ENG_ERR_INVALID, "%s: tensor '%s' is incomplete", o->path, o->t[o->cur].name);
        if (fclose(o->fp) != 0 && !rc) rc = io_fail(o, "close");
        o->fp = NULL;
        if (rc) unlink(o->path);
    }
    for (size_t i = 0; i < o->n_t; i++) tk_free(o->t[i].name);
    tk_free(o->t);
    tk_free(o->kv);
    o->t = NULL;
    o->kv = NULL;
    return rc;
}

/* ================================================================ raw metadata copy */

static size_t scalar_size(uint32_t t) {
    static const uint8_t sz[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < GGUF_TYPE_COUNT ? sz[t] : 0;
}

/* Bytes of one encoded value of type t at p[0..n); 0 when it does not fit. (gguf_open has
 * validated the file already; this is an independent bounds check of our own walk.) */
static size_t val_len(const uint8_t *p, size_t n, uint32_t t, int depth) {
    uint64_t len;
    if (t == GGUF_TYPE_STRING) {
        if (n < 8) return 0;
        memcpy(&len, p, 8);
        return len <= n - 8 ? 8 + (size_t)len : 0;
    }
    if (t != GGUF_TYPE_ARRAY) return scalar_size(t) <= n ? scalar_size(t) : 0;
    uint32_t et;
    if (depth >= QZ_MAX_ARR_DEPTH || n < 12) return 0;
    memcpy(&et, p, 4);
    memcpy(&len, p + 4, 8);
    size_t pos = 12, es = scalar_size(et);
    if (es) return len <= (n - pos) / es ? pos + (size_t)len * es : 0;
    if (et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY) return 0;
    for (uint64_t i = 0; i < len; i++) {
        size_t l = val_len(p + pos, n - pos, et, depth + 1);
        if (!l) return 0;
        pos += l;
    }
    return pos;
}

typedef bool (*qz_key_filter)(const char *key, size_t len);

/* Appends to o every key/value pair of GGUF file `path` whose key passes keep(). */
static int qz_copy_kvs(qz_out *o, const char *path, qz_key_filter keep) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 24) {
        if (fd >= 0) close(fd);
        return qz_fail(o->err, o->errlen, ENG_ERR_IO, "%s: cannot read metadata", path);
    }
    size_t n = (size_t)st.st_size;
    const uint8_t *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return qz_fail(o->err, o->errlen, ENG_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    uint64_t n_kv, done = 0;
    memcpy(&n_kv, p + 16, 8);
    size_t pos = 24;
    bool magic = memcmp(p, "GGUF", 4) == 0;
    for (; magic && done < n_kv; done++) {
        uint64_t klen;
        uint32_t type;
        size_t start = pos, vl;
        if (n - pos < 12) break;
        memcpy(&klen, p + pos, 8);
        if (klen > n - pos - 12) break;
        const char *key = (const char *)p + pos + 8;
        pos += 8 + (size_t)klen;
        memcpy(&type, p + pos, 4);
        pos += 4;
        if (!(vl = val_len(p + pos, n - pos, type, 0))) break;
        pos += vl;
        if (keep(key, (size_t)klen)) {
            kv_put(o, p + start, pos - start);
            o->n_kv++;
        }
    }
    munmap((void *)p, n);
    if (!magic || done != n_kv) return qz_fail(o->err, o->errlen, ENG_ERR_FORMAT, "%s: metadata section is malformed", path);
    return 0;
}

static bool key_is(const char *key, size_t len, const char *s) { return strlen(s) == len && memcmp(key, s, len) == 0; }

/* quantize: everything but the keys we rewrite. */
static bool keep_model_key(const char *key, size_t len) {
    return !key_is(key, len, "general.file_type") && !key_is(key, len, "general.quantization_version") &&
           !key_is(key, len, "general.alignment");
}

/* mkmodel: the vocab file's tokenizer keys. */
static bool keep_tokenizer_key(const char *key, size_t len) { return len > 10 && memcmp(key, "tokenizer.", 10) == 0; }

/* ================================================================ row pipeline */

/* Writes row `row` (n floats) of the tensor being produced into out. Called on pool threads. */
typedef void (*qz_fill_fn)(const void *ctx, uint64_t row, float *out, size_t n);

typedef struct {
    qz_fill_fn fill;
    const void *fctx;
    uint32_t type;
    size_t n0, rb;
    uint64_t row0;
    size_t n_rows;
    uint8_t *out;   /* (n_rows, rb) */
    float *scratch; /* (n_threads, n0) */
} qz_chunk_job;

static void chunk_worker(void *ctx, int ith, int nth) {
    const qz_chunk_job *j = ctx;
    float *x = j->scratch + (size_t)ith * j->n0;
    size_t lo = j->n_rows * (size_t)ith / (size_t)nth, hi = j->n_rows * (size_t)(ith + 1) / (size_t)nth;
    for (size_t r = lo; r < hi; r++) {
        j->fill(j->fctx, j->row0 + r, x, j->n0);
        kern_quantize_row_ref(j->type, x, j->out + r * j->rb, j->n0); /* width checked by the caller */
    }
}

/* Produces and writes a (n_rows, n0) tensor of `type` as the writer's current tensor. */
static int qz_write_matrix(qz_out *o, kern_pool *pool, uint32_t type, size_t n0, uint64_t n_rows, qz_fill_fn fill,
                           const void *fctx) {
    size_t rb = kern_row_bytes(type, n0);
    size_t chunk = QZ_CHUNK_ELEMS / (n0 ? n0 : 1);
    if (chunk == 0) chunk = 1;
    if (chunk > n_rows) chunk = (size_t)n_rows;
    qz_chunk_job j = {fill, fctx, type, n0, rb, 0, 0, NULL, NULL};
    j.out = tk_malloc(chunk * rb + 1);
    j.scratch = tk_calloc((size_t)kern_pool_size(pool) * n0 + 1, sizeof(float));
    int rc = 0;
    if (!j.out || !j.scratch) rc = qz_fail(o->err, o->errlen, ENG_ERR_NOMEM, "%s: out of memory", o->path);
    for (uint64_t r = 0; !rc && r < n_rows; r += chunk) {
        j.row0 = r;
        j.n_rows = (size_t)(n_rows - r < chunk ? n_rows - r : chunk);
        kern_pool_run(pool, chunk_worker, &j);
        rc = qz_write(o, j.out, j.n_rows * rb);
    }
    tk_free(j.out);
    tk_free(j.scratch);
    return rc;
}

/* ================================================================ types */

static const struct {
    const char *name;
    uint32_t type, ftype;
} qz_types[] = {
    {"F32", KERN_TYPE_F32, 0},    {"F16", KERN_TYPE_F16, 1},    {"BF16", KERN_TYPE_BF16, 32},
    {"Q8_0", KERN_TYPE_Q8_0, 7},  {"Q4_0", KERN_TYPE_Q4_0, 2},  {"Q4_1", KERN_TYPE_Q4_1, 3},
    {"Q4_K", KERN_TYPE_Q4_K, 14}, {"Q5_K", KERN_TYPE_Q5_K, 16}, {"Q6_K", KERN_TYPE_Q6_K, 18},
};
#define QZ_N_TYPES (sizeof qz_types / sizeof qz_types[0])

int eng_quant_type_parse(const char *name, uint32_t *type) {
    for (size_t i = 0; i < QZ_N_TYPES; i++)
        if (strcasecmp(name, qz_types[i].name) == 0) {
            *type = qz_types[i].type;
            return 0;
        }
    return ENG_ERR_INVALID;
}

uint32_t eng_quant_file_type(uint32_t type) {
    for (size_t i = 0; i < QZ_N_TYPES; i++)
        if (qz_types[i].type == type) return qz_types[i].ftype;
    return 0;
}

static bool is_quant_target(uint32_t type) {
    for (size_t i = 0; i < QZ_N_TYPES; i++)
        if (qz_types[i].type == type) return true;
    return false;
}

void eng_quant_params_default(eng_quant_params *p, uint32_t type) {
    *p = (eng_quant_params){.type = type, .output_type = -1, .embd_type = -1, .pure = false,
                            .allow_requantize = false, .n_threads = 0};
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The rule of eng_quant_tensor_type for a matrix `name` of width ne0 in a model with
 * (tied) or without a separate output matrix. */
static uint32_t pick_type(const eng_quant_params *p, const char *name, uint64_t ne0, bool tied, bool *fallback) {
    uint32_t t = p->type;
    bool is_out = strcmp(name, "output.weight") == 0 || (tied && strcmp(name, "token_embd.weight") == 0);
    bool low_bits = t == KERN_TYPE_Q4_0 || t == KERN_TYPE_Q4_1 || t == KERN_TYPE_Q4_K || t == KERN_TYPE_Q5_K;
    if (is_out && !p->pure && low_bits) t = KERN_TYPE_Q6_K;
    if (is_out && p->output_type >= 0) t = (uint32_t)p->output_type;
    if (!is_out && strcmp(name, "token_embd.weight") == 0 && p->embd_type >= 0) t = (uint32_t)p->embd_type;
    bool fb = ne0 % kern_type_block_elems(t) != 0;
    if (fb) t = ne0 % KERN_QK == 0 ? KERN_TYPE_Q8_0 : KERN_TYPE_F16;
    if (fallback) *fallback = fb;
    return t;
}

uint32_t eng_quant_tensor_type(const eng_quant_params *p, const gguf_file *f, const gguf_tensor *t, bool *fallback) {
    if (fallback) *fallback = false;
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (t->n_dims < 2 || rows <= 1 || !ends_with(t->name, "weight")) return t->type;
    bool tied = gguf_find_tensor(f, "output.weight") == NULL;
    return pick_type(p, t->name, t->ne[0], tied, fallback);
}

/* ================================================================ quantize */

typedef struct {
    const uint8_t *data;
    uint32_t type;
    size_t row_bytes;
} qz_src;

static void fill_dequant(const void *ctx, uint64_t row, float *out, size_t n) {
    const qz_src *s = ctx;
    kern_dequant_row(s->type, s->data + (size_t)row * s->row_bytes, out, n);
}

static bool is_float_type(uint32_t t) { return t == KERN_TYPE_F32 || t == KERN_TYPE_F16 || t == KERN_TYPE_BF16; }

/* Declares every tensor with its new type; dst[i] receives tensor i's type. */
static int quant_plan(qz_out *o, const gguf_file *f, const eng_quant_params *p, uint32_t *dst, eng_quant_stats *st,
                      const char *in) {
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        bool fb;
        dst[i] = eng_quant_tensor_type(p, f, t, &fb);
        if (dst[i] != t->type) {
            if (!is_float_type(t->type) && !p->allow_requantize)
                return qz_fail(o->err, o->errlen, ENG_ERR_FORMAT,
                               "%s: tensor '%s' is %s: quantize from an F32, F16 or BF16 model "
                               "(or allow requantizing, which loses precision twice)",
                               in, t->name, kern_type_name(t->type));
            st->n_converted++;
            st->n_fallback += fb;
        }
        int rc = qz_add_tensor(o, t->name, dst[i], t->n_dims, t->ne);
        if (rc) return rc;
        st->bytes_in += t->nbytes;
        st->bytes_out += o->t[o->n_t - 1].nbytes;
    }
    st->n_tensors = (size_t)gguf_n_tensors(f);
    return 0;
}

int eng_quantize_file(const char *in, const char *out, const eng_quant_params *p, eng_quant_stats *st_out, char *err,
                      size_t errlen) {
    eng_quant_stats st = {0};
    if (!is_quant_target(p->type) || (p->output_type >= 0 && !is_quant_target((uint32_t)p->output_type)) ||
        (p->embd_type >= 0 && !is_quant_target((uint32_t)p->embd_type)))
        return qz_fail(err, errlen, ENG_ERR_INVALID, "quantize: unsupported target type (type %s, output %d, embd %d)",
                       kern_type_name(p->type), p->output_type, p->embd_type);
    struct stat si, so;
    if (stat(in, &si) == 0 && stat(out, &so) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
        return qz_fail(err, errlen, ENG_ERR_INVALID, "quantize: %s: the output would overwrite the input", out);
    kern_init();
    gguf_file *f = NULL;
    int rc = gguf_open(in, &f, err, errlen);
    if (rc) return rc == GGUF_ERR_IO ? ENG_ERR_IO : rc == GGUF_ERR_NOMEM ? ENG_ERR_NOMEM : ENG_ERR_FORMAT;
    qz_out o;
    qz_init(&o, gguf_alignment(f), err, errlen);
    o.path = out;
    uint32_t *dst = tk_calloc((size_t)gguf_n_tensors(f) + 1, sizeof(uint32_t));
    kern_pool *pool = kern_pool_new(p->n_threads);
    if (!dst || !pool) {
        rc = qz_fail(err, errlen, ENG_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    if ((rc = qz_copy_kvs(&o, in, keep_model_key))) goto done;
    qz_add_u32(&o, "general.quantization_version", 2);
    qz_add_u32(&o, "general.file_type", eng_quant_file_type(p->type));
    if ((rc = quant_plan(&o, f, p, dst, &st, in)) || (rc = qz_begin(&o, out))) goto done;
    for (int64_t i = 0; !rc && i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (dst[i] == t->type) {
            rc = qz_write(&o, t->data, t->nbytes);
            continue;
        }
        qz_src src = {t->data, t->type, kern_row_bytes(t->type, (size_t)t->ne[0])};
        rc = qz_write_matrix(&o, pool, dst[i], (size_t)t->ne[0], t->ne[1] * t->ne[2] * t->ne[3], fill_dequant, &src);
    }
done:
    rc = qz_finish(&o, rc);
    kern_pool_destroy(pool);
    tk_free(dst);
    gguf_close(f);
    if (st_out) *st_out = st;
    return rc;
}

/* ================================================================ random models */

void eng_mkmodel_spec_default(eng_mkmodel_spec *s) {
    *s = (eng_mkmodel_spec){.arch = "llama", .name = NULL, .n_ctx = 4096, .type = KERN_TYPE_Q8_0, .tied = false,
                            .std = 0.02f, .seed = 42, .vocab_from = NULL, .n_threads = 0};
}

int eng_mkmodel_shape(const char *name, eng_mkmodel_spec *s) {
    static const struct {
        const char *name;
        uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab;
    } shapes[] = {
        {"S135", 576, 30, 9, 3, 1536, 32000},
        {"S1B", 2048, 22, 32, 4, 5632, 32000},
        {"LLAMA8B", 4096, 32, 32, 8, 14336, 128256},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        if (strcasecmp(name, shapes[i].name) != 0) continue;
        s->n_embd = shapes[i].n_embd;
        s->n_layer = shapes[i].n_layer;
        s->n_head = shapes[i].n_head;
        s->n_head_kv = shapes[i].n_head_kv;
        s->n_ff = shapes[i].n_ff;
        s->n_vocab = shapes[i].n_vocab;
        s->head_dim = 0;
        return 0;
    }
    return ENG_ERR_INVALID;
}

static uint32_t spec_head_dim(const eng_mkmodel_spec *s) {
    return s->head_dim ? s->head_dim : s->n_head ? s->n_embd / s->n_head : 0;
}

uint64_t eng_mkmodel_n_params(const eng_mkmodel_spec *s) {
    uint64_t E = s->n_embd, hd = spec_head_dim(s), V = s->n_vocab ? s->n_vocab : 32000;
    uint64_t Q = s->n_head * hd, KV = s->n_head_kv * hd, F = s->n_ff;
    if (!E || !s->n_layer || !Q || !KV || !F) return 0;
    uint64_t layer = 2 * E + E * Q + 2 * E * KV + Q * E + 3 * E * F;
    if (strcmp(s->arch, "qwen2") == 0) layer += Q + 2 * KV;
    if (strcmp(s->arch, "qwen3") == 0) layer += 2 * hd;
    return V * E * (s->tied ? 1 : 2) + E + s->n_layer * layer;
}

/* One tensor of a random model: name, shape, and its value distribution. */
typedef struct {
    char name[64];
    uint64_t ne0, ne1; /* ne1 == 1: a vector (1-D) */
    float mean, std;
} mk_tensor;

typedef struct {
    uint64_t seed;
    float mean, std;
} mk_src;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* mean + std * z with z ~ N(0,1) approximated by Irwin-Hall: four 16-bit uniforms from one
 * 64-bit draw, (sum - 2) * sqrt(3) has mean 0 and variance 1 (tails cut at +-3.46). */
static void fill_random(const void *ctx, uint64_t row, float *out, size_t n) {
    const mk_src *s = ctx;
    uint64_t st = s->seed ^ (row * 0xd1342543de82ef95ull);
    const float k = 1.7320508f / 65536.0f;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = splitmix(&st);
        uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) + (uint32_t)((r >> 32) & 0xffff) +
                       (uint32_t)(r >> 48);
        out[i] = s->mean + s->std * (((float)sum + 2.0f) * k - 2.0f * 1.7320508f);
    }
}

/* The model's tensor list in llama.cpp's order. Returns the count (<= cap). */
static size_t mk_tensors(const eng_mkmodel_spec *s, uint32_t n_vocab, mk_tensor *t, size_t cap) {
    uint64_t E = s->n_embd, hd = spec_head_dim(s), Q = s->n_head * hd, KV = s->n_head_kv * hd, F = s->n_ff;
    size_t n = 0;
#define ADD(a, b, m, sd, ...)                                                   \
    do {                                                                        \
        if (n < cap) {                                                          \
            snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                 \
            t[n].ne0 = (a), t[n].ne1 = (b), t[n].mean = (m), t[n].std = (sd);   \
        }                                                                       \
        n++;                                                                    \
    } while (0)
    float sd = s->std;
    ADD(E, n_vocab, 0, sd, "token_embd.weight");
    ADD(E, 1, 1, 0, "output_norm.weight");
    if (!s->tied) ADD(E, n_vocab, 0, sd, "output.weight");
    bool qwen2 = strcmp(s->arch, "qwen2") == 0, qwen3 = strcmp(s->arch, "qwen3") == 0;
    for (uint32_t l = 0; l < s->n_layer; l++) {
        ADD(E, 1, 1, 0, "blk.%u.attn_norm.weight", l);
        ADD(E, Q, 0, sd, "blk.%u.attn_q.weight", l);
        ADD(E, KV, 0, sd, "blk.%u.attn_k.weight", l);
        ADD(E, KV, 0, sd, "blk.%u.attn_v.weight", l);
        if (qwen2) {
            ADD(Q, 1, 0, sd, "blk.%u.attn_q.bias", l);
            ADD(KV, 1, 0, sd, "blk.%u.attn_k.bias", l);
            ADD(KV, 1, 0, sd, "blk.%u.attn_v.bias", l);
        }
        if (qwen3) {
            ADD(hd, 1, 1, 0, "blk.%u.attn_q_norm.weight", l);
            ADD(hd, 1, 1, 0, "blk.%u.attn_k_norm.weight", l);
        }
        ADD(Q, E, 0, sd, "blk.%u.attn_output.weight", l);
        ADD(E, 1, 1, 0, "blk.%u.ffn_norm.weight", l);
        ADD(E, F, 0, sd, "blk.%u.ffn_gate.weight", l);
        ADD(E, F, 0, sd, "blk.%u.ffn_up.weight", l);
        ADD(F, E, 0, sd, "blk.%u.ffn_down.weight", l);
    }
#undef ADD
    return n;
}

static int mk_check(const eng_mkmodel_spec *s, char *err, size_t errlen) {
    uint32_t hd = spec_head_dim(s);
    if (!s->arch || (strcmp(s->arch, "llama") && strcmp(s->arch, "qwen2") && strcmp(s->arch, "qwen3")))
        return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: unsupported architecture '%s' (llama, qwen2, qwen3)",
                       s->arch ? s->arch : "(null)");
    if (!s->n_embd || !s->n_layer || !s->n_head || !s->n_head_kv || !s->n_ff || s->n_embd > 65536 ||
        s->n_ff > KERN_MATMUL_MAX_IN || s->n_layer > 1024)
        return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: every dim must be set and plausible "
                       "(n_embd %u, n_layer %u, n_head %u, n_head_kv %u, n_ff %u)",
                       s->n_embd, s->n_layer, s->n_head, s->n_head_kv, s->n_ff);
    if (s->n_head % s->n_head_kv)
        return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: n_head %u is not a multiple of n_head_kv %u", s->n_head,
                       s->n_head_kv);
    if (!hd || hd % 2 || hd > 1024 || (!s->head_dim && s->n_embd % s->n_head))
        return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: bad head size (n_embd %u / n_head %u)", s->n_embd,
                       s->n_head);
    if (!is_quant_target(s->type))
        return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: unsupported weight type %s", kern_type_name(s->type));
    if (!(s->std >= 0) || !isfinite(s->std)) return qz_fail(err, errlen, ENG_ERR_INVALID, "mkmodel: bad std");
    return 0;
}

/* Hyper-parameter keys, as llama.cpp's converters write them. */
static void mk_hparams(qz_out *o, const eng_mkmodel_spec *s) {
    char k[128];
    const char *a = s->arch;
    bool qwen = strcmp(a, "llama") != 0;
    qz_add_str(o, "general.architecture", a);
    qz_add_str(o, "general.name", s->name ? s->name : "tokd-random");
    qz_add_u32(o, "general.file_type", eng_quant_file_type(s->type));
    qz_add_u32(o, "general.quantization_version", 2);
#define U32(suffix, v) (snprintf(k, sizeof k, "%s." suffix, a), qz_add_u32(o, k, (v)))
    U32("context_length", s->n_ctx ? s->n_ctx : 4096);
    U32("embedding_length", s->n_embd);
    U32("block_count", s->n_layer);
    U32("feed_forward_length", s->n_ff);
    U32("attention.head_count", s->n_head);
    U32("attention.head_count_kv", s->n_head_kv);
    U32("attention.key_length", spec_head_dim(s));
    U32("attention.value_length", spec_head_dim(s));
    U32("rope.dimension_count", spec_head_dim(s));
#undef U32
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", a);
    qz_add_f32(o, k, qwen ? 1e-6f : 1e-5f);
    snprintf(k, sizeof k, "%s.rope.freq_base", a);
    qz_add_f32(o, k, qwen ? 1000000.0f : 10000.0f);
}

/* A byte-level SentencePiece vocab of n tokens: <unk> <s> </s>, <0x00>..<0xFF>, fillers. */
static void mk_builtin_vocab(qz_out *o, uint32_t n) {
    char buf[32];
    qz_add_str(o, "tokenizer.ggml.model", "llama");
    qz_add_arr_begin(o, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, n);
    for (uint32_t i = 0; i < n; i++) {
        if (i < 3) snprintf(buf, sizeof buf, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i < 259) snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
        else snprintf(buf, sizeof buf, "x%u", i);
        kv_str(o, buf, strlen(buf));
    }
    qz_add_arr_begin(o, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, n);
    for (uint32_t i = 0; i < n; i++) {
        float sc = i < 259 ? 0.0f : -(float)i;
        kv_put(o, &sc, 4);
    }
    qz_add_arr_begin(o, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n);
    for (uint32_t i = 0; i < n; i++) {
        int32_t ty = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1; /* unknown, control, byte, normal */
        kv_put(o, &ty, 4);
    }
    qz_add_u32(o, "tokenizer.ggml.bos_token_id", 1);
    qz_add_u32(o, "tokenizer.ggml.eos_token_id", 2);
    qz_add_u32(o, "tokenizer.ggml.unknown_token_id", 0);
}

/* Adds the tokenizer keys and settles the embedding row count into *n_vocab. */
static int mk_vocab(qz_out *o, const eng_mkmodel_spec *s, uint32_t *n_vocab) {
    if (!s->vocab_from) {
        *n_vocab = s->n_vocab ? s->n_vocab : 512;
        if (*n_vocab < 259)
            return qz_fail(o->err, o->errlen, ENG_ERR_INVALID, "mkmodel: the built-in vocab needs n_vocab >= 259");
        mk_builtin_vocab(o, *n_vocab);
        return 0;
    }
    gguf_file *v = NULL;
    uint64_t n_tok = 0;
    int rc = gguf_open(s->vocab_from, &v, o->err, o->errlen);
    if (rc) return rc == GGUF_ERR_IO ? ENG_ERR_IO : ENG_ERR_FORMAT;
    rc = gguf_get_arr_str(v, "tokenizer.ggml.tokens", &n_tok);
    gguf_close(v);
    if (rc || n_tok == 0 || n_tok > (1u << 24))
        return qz_fail(o->err, o->errlen, ENG_ERR_FORMAT, "%s: no usable tokenizer.ggml.tokens", s->vocab_from);
    *n_vocab = s->n_vocab ? s->n_vocab : (uint32_t)n_tok;
    if (*n_vocab < n_tok)
        return qz_fail(o->err, o->errlen, ENG_ERR_INVALID, "mkmodel: n_vocab %u is smaller than %s's %llu tokens",
                       *n_vocab, s->vocab_from, (unsigned long long)n_tok);
    return qz_copy_kvs(o, s->vocab_from, keep_tokenizer_key);
}

int eng_mkmodel_write(const eng_mkmodel_spec *s, const char *path, char *err, size_t errlen) {
    int rc = mk_check(s, err, errlen);
    if (rc) return rc;
    kern_init();
    qz_out o;
    qz_init(&o, GGUF_DEFAULT_ALIGNMENT, err, errlen);
    o.path = path;
    uint32_t n_vocab = 0;
    eng_quant_params qp;
    eng_quant_params_default(&qp, s->type);
    size_t n_t = mk_tensors(s, 0, NULL, 0);
    mk_tensor *ts = tk_calloc(n_t, sizeof *ts);
    kern_pool *pool = kern_pool_new(s->n_threads);
    uint32_t *types = tk_calloc(n_t, sizeof *types);
    if (!ts || !pool || !types) {
        rc = qz_fail(err, errlen, ENG_ERR_NOMEM, "mkmodel: out of memory");
        goto done;
    }
    mk_hparams(&o, s);
    if ((rc = mk_vocab(&o, s, &n_vocab))) goto done;
    mk_tensors(s, n_vocab, ts, n_t);
    for (size_t i = 0; !rc && i < n_t; i++) {
        uint64_t ne[2] = {ts[i].ne0, ts[i].ne1};
        types[i] = ts[i].ne1 == 1 ? KERN_TYPE_F32 : pick_type(&qp, ts[i].name, ts[i].ne0, s->tied, NULL);
        rc = qz_add_tensor(&o, ts[i].name, types[i], ts[i].ne1 == 1 ? 1 : 2, ne);
    }
    if (rc || (rc = qz_begin(&o, path))) goto done;
    for (size_t i = 0; !rc && i < n_t; i++) {
        uint64_t seed = s->seed * 0x9e3779b97f4a7c15ull + i; /* per tensor, so a tensor's values do not move */
        mk_src src = {splitmix(&seed), ts[i].mean, ts[i].std};
        rc = qz_write_matrix(&o, pool, types[i], (size_t)ts[i].ne0, ts[i].ne1, fill_random, &src);
    }
done:
    rc = qz_finish(&o, rc);
    kern_pool_destroy(pool);
    tk_free(types);
    tk_free(ts);
    return rc;
}
