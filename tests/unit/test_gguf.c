/* Unit tests for engine/gguf: the real shared model and vocab files, a writer round trip of
 * every value type and several tensor types, every truncation of a small file, hostile
 * values in each header/kv/tensor field (the error must name the field), random byte
 * corruption, and allocation failure at every allocation of gguf_open.
 *
 * Run with TOKD_SHARED pointing at the shared dir (default "../shared"). Each test writes
 * its files under $TMPDIR (default /tmp) and removes them. */
#include <check.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/tk_mem.h"
#include "engine/gguf.h"
#include "engine/gguf_internal.h"
#include "kernels/kern.h"

/* ------------------------------------------------------------- helpers */

typedef struct {
    uint8_t *p;
    size_t n;
} blob;

static const char *shared_dir(void) {
    const char *s = getenv("TOKD_SHARED");
    return s && *s ? s : "../shared";
}

static void shared_path(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/testdata/%s", shared_dir(), rel);
}

static void tmp_path(char *buf, size_t n) {
    const char *d = getenv("TMPDIR");
    snprintf(buf, n, "%s/test_gguf_XXXXXX", d && *d ? d : "/tmp");
    int fd = mkstemp(buf);
    ck_assert_msg(fd >= 0, "mkstemp %s failed", buf);
    close(fd);
}

static blob read_all(const char *path) {
    blob b = {0};
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    b.n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    b.p = malloc(b.n ? b.n : 1);
    ck_assert(b.p != NULL);
    ck_assert(fread(b.p, 1, b.n, fp) == b.n);
    fclose(fp);
    return b;
}

static void write_all(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert(fp != NULL);
    ck_assert(n == 0 || fwrite(p, 1, n, fp) == n);
    ck_assert(fclose(fp) == 0);
}

static uint32_t rng_state = 12345;
static uint32_t rng(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

static void fill_random(void *p, size_t n) {
    for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)rng();
}

/* Offset of the encoded string s (u64 length + bytes) in b; fails the test if absent. */
static size_t find_str(const blob *b, const char *s) {
    uint64_t len = strlen(s);
    for (size_t i = 0; i + 8 + len <= b->n; i++)
        if (memcmp(b->p + i, &len, 8) == 0 && memcmp(b->p + i + 8, s, len) == 0) return i;
    ck_abort_msg("string '%s' not in file", s);
    return 0;
}

static void put32(blob *b, size_t off, uint32_t v) { memcpy(b->p + off, &v, 4); }
static void put64(blob *b, size_t off, uint64_t v) { memcpy(b->p + off, &v, 8); }

/* Parse b from an exact-size heap copy (so ASan sees any over-read). */
static int open_exact(const uint8_t *p, size_t n, gguf_file **f, char *err, size_t errlen) {
    uint8_t *copy = malloc(n ? n : 1);
    ck_assert(copy != NULL);
    if (n) memcpy(copy, p, n);
    int rc = gguf__open_mem(n ? copy : NULL, n, "mem.gguf", f, err, errlen);
    if (rc == 0) gguf_close(*f);
    free(copy);
    *f = NULL;
    return rc;
}

/* The small model most tests corrupt: a few kvs and tensors of several types. */
#define SMALL_NE_Q8 64
static void build_small(const char *path, uint32_t alignment) {
    gguf_writer *w = gguf_writer_new();
    ck_assert(w != NULL);
    if (alignment) ck_assert_int_eq(gguf_writer_set_alignment(w, alignment), 0);
    static const int32_t ai[3] = {1, 2, 3};
    static const char *const as[3] = {"a", "bc", ""};
    ck_assert_int_eq(gguf_writer_add_u32(w, "s.u32", 7), 0);
    ck_assert_int_eq(gguf_writer_add_str(w, "s.str", "hello"), 0);
    ck_assert_int_eq(gguf_writer_add_arr_i32(w, "s.arr_i32", ai, 3), 0);
    ck_assert_int_eq(gguf_writer_add_arr_str(w, "s.arr_str", as, 3), 0);
    ck_assert_int_eq(gguf_writer_add_f32(w, "s.f32", 0.5f), 0);
    struct {
        const char *name;
        uint32_t type, n_dims;
        uint64_t ne[4];
    } ts[] = {
        {"t.f32", KERN_TYPE_F32, 2, {8, 2, 1, 1}},
        {"t.q8", KERN_TYPE_Q8_0, 2, {SMALL_NE_Q8, 3, 1, 1}},
        {"t.q4k", KERN_TYPE_Q4_K, 1, {256, 1, 1, 1}},
        {"t.f16", KERN_TYPE_F16, 1, {5, 1, 1, 1}},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        size_t nb = kern_row_bytes(ts[i].type, ts[i].ne[0]) * ts[i].ne[1];
        uint8_t *d = malloc(nb);
        fill_random(d, nb);
        ck_assert_int_eq(gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims,
                                                ts[i].ne, d, nb), 0);
        free(d);
    }
    char err[256];
    ck_assert_msg(gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    gguf_writer_destroy(w);
}

static blob small_blob(void) {
    char path[256];
    tmp_path(path, sizeof path);
    build_small(path, 0);
    blob b = read_all(path);
    unlink(path);
    return b;
}

/* Open the corrupted image both from a file and from memory; both must fail with `code`
 * and a message naming the file and containing each of the needles. */
static void expect_err(const blob *b, int code, const char *n1, const char *n2) {
    char path[256], err[512], err2[512];
    gguf_file *f = NULL;
    tmp_path(path, sizeof path);
    write_all(path, b->p, b->n);
    int rc = gguf_open(path, &f, err, sizeof err);
    unlink(path);
    ck_assert_msg(rc == code, "rc %d, want %d (%s)", rc, code, rc ? err : "opened");
    ck_assert(f == NULL);
    if (getenv("GGUF_TEST_VERBOSE")) fprintf(stderr, "%s\n", err);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0, "message lacks path: %s", err);
    if (n1) ck_assert_msg(strstr(err, n1), "message lacks '%s': %s", n1, err);
    if (n2) ck_assert_msg(strstr(err, n2), "message lacks '%s': %s", n2, err);
    ck_assert_int_eq(open_exact(b->p, b->n, &f, err2, sizeof err2), code);
    ck_assert_str_eq(err2 + strlen("mem.gguf"), err + strlen(path));
}

/* Offsets of a tensor info's fields, found by its name. */
typedef struct {
    size_t n_dims, ne, type, offset;
} tinfo_off;

static tinfo_off tensor_fields(const blob *b, const char *name, uint32_t n_dims) {
    tinfo_off o;
    o.n_dims = find_str(b, name) + 8 + strlen(name);
    o.ne = o.n_dims + 4;
    o.type = o.ne + 8 * n_dims;
    o.offset = o.type + 4;
    return o;
}

/* Offset of the value of key `key` (just after its type). */
static size_t value_off(const blob *b, const char *key) {
    return find_str(b, key) + 8 + strlen(key) + 4;
}

/* ------------------------------------------------------- real files */

START_TEST(test_stories260k) {
    char path[512], err[512];
    gguf_file *f = NULL;
    shared_path(path, sizeof path, "models/stories260K.gguf");
    ck_assert_msg(gguf_open(path, &f, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(gguf_version(f), 3);
    ck_assert_uint_eq(gguf_alignment(f), 32);
    uint32_t u;
    ck_assert_int_eq(gguf_get_u32(f, "llama.block_count", &u), 0);
    ck_assert_uint_eq(u, 5);
    ck_assert_int_eq(gguf_get_u32(f, "llama.embedding_length", &u), 0);
    ck_assert_uint_eq(u, 64);
    float eps;
    ck_assert_int_eq(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    ck_assert_float_eq_tol(eps, 1e-5f, 1e-9f);
    const char *s;
    size_t len;
    ck_assert_int_eq(gguf_get_str(f, "general.architecture", &s, &len), 0);
    ck_assert(len == 5 && memcmp(s, "llama", 5) == 0);
    ck_assert_int_eq(gguf_n_tensors(f), 48);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    ck_assert(t != NULL);
    ck_assert_uint_eq(t->type, KERN_TYPE_F32);
    ck_assert_uint_eq(t->n_dims, 2);
    ck_assert(t->ne[0] == 64 && t->ne[1] == 512 && t->ne[2] == 1 && t->ne[3] == 1);
    ck_assert_uint_eq(t->nbytes, 64 * 512 * 4);
    ck_assert(t == gguf_tensor_at(f, 0));
    uint64_t n = 0;
    ck_assert_int_eq(gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n), 0);
    ck_assert_uint_eq(n, 512);
    ck_assert_int_eq(gguf_arr_str_at(f, "tokenizer.ggml.tokens", 1, &s, &len), 0);
    ck_assert(len == 3 && memcmp(s, "<s>", 3) == 0);
    ck_assert_int_eq(gguf_arr_str_at(f, "tokenizer.ggml.tokens", 512, &s, &len),
                     GGUF_ERR_NOTFOUND);
    float scores[512];
    int32_t types[512];
    ck_assert_uint_eq(gguf_kv_arr_n(f, gguf_find_key(f, "tokenizer.ggml.scores")), 512);
    ck_assert_int_eq(gguf_get_arr_f32(f, "tokenizer.ggml.scores", scores, 512), 0);
    ck_assert_int_eq(gguf_get_arr_i32(f, "tokenizer.ggml.token_type", types, 512), 0);
    ck_assert_int_eq(types[0], 2); /* <unk> is UNKNOWN */
    /* Every tensor's data is inside the file and aligned relative to the first. */
    const uint8_t *base = gguf_tensor_at(f, 0)->data;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        t = gguf_tensor_at(f, i);
        ck_assert_ptr_eq(gguf_find_tensor(f, t->name), t);
        ck_assert_uint_eq(((const uint8_t *)t->data - base) % 32, 0);
    }
    ck_assert_ptr_null(gguf_tensor_at(f, 48));
    ck_assert_ptr_null(gguf_find_tensor(f, "nope"));
    gguf_close(f);
}
END_TEST

START_TEST(test_gpt2_vocab) {
    char path[512], err[512];
    gguf_file *f = NULL;
    shared_path(path, sizeof path, "tokenizer/ggml-vocab-gpt-2.gguf");
    ck_assert_msg(gguf_open(path, &f, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(gguf_n_tensors(f), 0);
    uint64_t n = 0;
    ck_assert_int_eq(gguf_get_arr_str(f, "tokenizer.ggml.merges", &n), 0);
    ck_assert_uint_eq(n, 50000);
    ck_assert_int_eq(gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n), 0);
    ck_assert_uint_eq(n, 50257);
    const char *s;
    size_t len;
    ck_assert_int_eq(gguf_arr_str_at(f, "tokenizer.ggml.merges", 0, &s, &len), 0);
    ck_assert(len == 4 && memcmp(s, "\xc4\xa0 t", 4) == 0); /* "Ġ t" */
    uint32_t bos;
    ck_assert_int_eq(gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos), 0);
    ck_assert_uint_eq(bos, 50256);
    ck_assert_int_eq(gguf_get_u32(f, "tokenizer.ggml.model", &bos), GGUF_ERR_TYPE);
    gguf_close(f);
}
END_TEST

/* ------------------------------------------------------- round trip */

/* The round trip writes one value of every scalar type, arrays of every numeric type,
 * strings, a nested array, empty arrays, and tensors of every supported type in 1-4 dims. */
static const float rt_af[4] = {0.5f, -1.0f, 3.0f, 1e30f};
static const uint32_t rt_types[] = {KERN_TYPE_F32,  KERN_TYPE_F16,  KERN_TYPE_BF16,
                                    KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1,
                                    KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};
enum { NT = sizeof rt_types / sizeof rt_types[0] };

typedef struct {
    uint8_t *data[NT];
    size_t nbytes[NT];
    uint64_t ne[NT][4];
} rt_tensors;

static void rt_write_values(gguf_writer *w) {
    char key[64];
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -30000;
    uint32_t u32 = 4000000000u; int32_t i32 = -2000000000; float f32 = 1.5f; uint8_t bo = 1;
    uint64_t u64 = 1ull << 40; int64_t i64 = -(1ll << 40); double f64 = 0.1;
    const void *vals[GGUF_TYPE_COUNT] = {&u8, &i8, &u16, &i16, &u32, &i32, &f32, &bo, NULL, NULL,
                                         &u64, &i64, &f64};
    for (int t = 0; t < GGUF_TYPE_COUNT; t++) {
        if (!vals[t]) continue;
        snprintf(key, sizeof key, "v.%s", gguf_type_name((gguf_type)t));
        ck_assert_int_eq(gguf_writer_add_scalar(w, key, (gguf_type)t, vals[t]), 0);
        uint8_t arr[5 * 8];
        fill_random(arr, sizeof arr);
        if (t == GGUF_TYPE_BOOL) memset(arr, 1, sizeof arr);
        if (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64) memset(arr, 0, sizeof arr);
        snprintf(key, sizeof key, "a.%s", gguf_type_name((gguf_type)t));
        ck_assert_int_eq(gguf_writer_add_arr(w, key, (gguf_type)t, arr, 5), 0);
    }
    ck_assert_int_eq(gguf_writer_add_str(w, "v.string", "h\xc3\xa9llo"), 0);
    ck_assert_int_eq(gguf_writer_add_str(w, "v.empty", ""), 0);
    ck_assert_int_eq(gguf_writer_add_arr_str(w, "a.empty", NULL, 0), 0);
    ck_assert_int_eq(gguf_writer_add_u32(w, "w.u32", 9), 0);
    ck_assert_int_eq(gguf_writer_add_i32(w, "w.i32", -9), 0);
    ck_assert_int_eq(gguf_writer_add_u64(w, "w.u64", UINT64_MAX), 0);
    ck_assert_int_eq(gguf_writer_add_f32(w, "w.f32", -2.25f), 0);
    ck_assert_int_eq(gguf_writer_add_bool(w, "w.bool", false), 0);
    ck_assert_int_eq(gguf_writer_add_arr_f32(w, "w.arr_f32", rt_af, 4), 0);
    const int32_t ai[2] = {INT32_MIN, INT32_MAX};
    ck_assert_int_eq(gguf_writer_add_arr_i32(w, "w.arr_i32", ai, 2), 0);
    const char *as[3] = {"x", "", "z\xe2\x96\x81"};
    ck_assert_int_eq(gguf_writer_add_arr_str(w, "w.arr_str", as, 3), 0);
    /* array of 2 arrays: [u8 {1,2}], [string {"q"}] */
    uint8_t nested[64], *p = nested;
    uint32_t ty = GGUF_TYPE_ARRAY, et;
    uint64_t cnt = 2;
    memcpy(p, &ty, 4), p += 4, memcpy(p, &cnt, 8), p += 8;
    et = GGUF_TYPE_UINT8, memcpy(p, &et, 4), p += 4, memcpy(p, &cnt, 8), p += 8;
    *p++ = 1, *p++ = 2;
    et = GGUF_TYPE_STRING, cnt = 1, memcpy(p, &et, 4), p += 4, memcpy(p, &cnt, 8), p += 8;
    memcpy(p, &cnt, 8), p += 8, *p++ = 'q';
    ck_assert_int_eq(gguf_writer_add_raw(w, "w.nested", GGUF_TYPE_ARRAY, nested,
                                         (size_t)(p - nested)), 0);
}

static void rt_write_tensors(gguf_writer *w, rt_tensors *rt) {
    char key[64];
    for (int i = 0; i < NT; i++) {
        uint32_t nd = 1 + (uint32_t)i % 4;
        uint64_t *ne = rt->ne[i];
        ne[0] = kern_type_block_elems(rt_types[i]) * (1 + i % 3);
        ne[1] = 2, ne[2] = 3, ne[3] = 1 + (uint64_t)(i % 2);
        for (uint32_t d = nd; d < 4; d++) ne[d] = 1;
        rt->nbytes[i] = kern_row_bytes(rt_types[i], ne[0]) * ne[1] * ne[2] * ne[3];
        rt->data[i] = malloc(rt->nbytes[i]);
        fill_random(rt->data[i], rt->nbytes[i]);
        snprintf(key, sizeof key, "tensor.%s", kern_type_name(rt_types[i]));
        ck_assert_int_eq(
            gguf_writer_add_tensor(w, key, rt_types[i], nd, ne, rt->data[i], rt->nbytes[i]), 0);
    }
    ck_assert_int_eq(gguf_writer_add_tensor(w, "tensor.empty", KERN_TYPE_F32, 2,
                                            (uint64_t[]){0, 3}, NULL, 0), 0);
    /* the writer refuses inconsistent tensors */
    ck_assert_int_eq(gguf_writer_add_tensor(w, "bad", KERN_TYPE_F32, 1, rt->ne[0], rt->data[0], 1),
                     GGUF_ERR_FORMAT);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "bad", 99, 1, rt->ne[0], rt->data[0], 4),
                     GGUF_ERR_FORMAT);
    const uint64_t ne65[1] = {65};
    ck_assert_int_eq(gguf_writer_add_tensor(w, "bad", KERN_TYPE_Q8_0, 1, ne65, rt->data[0], 68),
                     GGUF_ERR_FORMAT);
}

/* Scalars through the typed getters, including the conversions they refuse. */
static void rt_check_scalars(const gguf_file *f) {
    uint32_t gu;
    int64_t gi;
    float gf;
    bool gb;
    ck_assert_int_eq(gguf_get_u32(f, "v.uint8", &gu), 0);
    ck_assert_uint_eq(gu, 200);
    ck_assert_int_eq(gguf_get_u32(f, "v.int8", &gu), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_i64(f, "v.int8", &gi), 0);
    ck_assert_int_eq(gi, -5);
    ck_assert_int_eq(gguf_get_u32(f, "v.uint16", &gu), 0);
    ck_assert_uint_eq(gu, 60000);
    ck_assert_int_eq(gguf_get_i64(f, "v.int16", &gi), 0);
    ck_assert_int_eq(gi, -30000);
    ck_assert_int_eq(gguf_get_u32(f, "v.uint32", &gu), 0);
    ck_assert_uint_eq(gu, 4000000000u);
    ck_assert_int_eq(gguf_get_i64(f, "v.int32", &gi), 0);
    ck_assert_int_eq(gi, -2000000000);
    ck_assert_int_eq(gguf_get_f32(f, "v.float32", &gf), 0);
    ck_assert(gf == 1.5f);
    ck_assert_int_eq(gguf_get_u32(f, "v.float32", &gu), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_bool(f, "v.bool", &gb), 0);
    ck_assert(gb);
    ck_assert_int_eq(gguf_get_u32(f, "v.bool", &gu), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_u32(f, "v.uint64", &gu), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_i64(f, "v.uint64", &gi), 0);
    ck_assert_int_eq(gi, 1ll << 40);
    ck_assert_int_eq(gguf_get_i64(f, "v.int64", &gi), 0);
    ck_assert_int_eq(gi, -(1ll << 40));
    ck_assert_int_eq(gguf_get_f32(f, "v.float64", &gf), 0);
    ck_assert(gf == 0.1f);
    ck_assert_int_eq(gguf_get_f32(f, "v.int64", &gf), 0);
    ck_assert(gf == -(float)(1ll << 40));
    ck_assert_int_eq(gguf_get_u32(f, "w.u32", &gu), 0);
    ck_assert_uint_eq(gu, 9);
    ck_assert_int_eq(gguf_get_i64(f, "w.i32", &gi), 0);
    ck_assert_int_eq(gi, -9);
    ck_assert_int_eq(gguf_get_i64(f, "w.u64", &gi), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_f32(f, "w.f32", &gf), 0);
    ck_assert(gf == -2.25f);
    ck_assert_int_eq(gguf_get_bool(f, "w.bool", &gb), 0);
    ck_assert(!gb);
    ck_assert_int_eq(gguf_get_bool(f, "w.u32", &gb), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_u32(f, "missing", &gu), GGUF_ERR_NOTFOUND);
    ck_assert_int_eq(gguf_get_str(f, "missing", NULL, NULL), GGUF_ERR_NOTFOUND);
    const char *s;
    size_t len;
    ck_assert_int_eq(gguf_get_str(f, "v.string", &s, &len), 0);
    ck_assert(len == 6 && memcmp(s, "h\xc3\xa9llo", 6) == 0);
    ck_assert_int_eq(gguf_get_str(f, "v.empty", &s, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(gguf_get_str(f, "w.u32", &s, &len), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_u32(f, "v.string", &gu), GGUF_ERR_TYPE);
}

static void rt_check_arrays(const gguf_file *f) {
    const char *s;
    size_t len;
    int64_t k = gguf_find_key(f, "a.uint16");
    ck_assert(k >= 0 && gguf_kv_type(f, k) == GGUF_TYPE_ARRAY);
    ck_assert_int_eq(gguf_kv_arr_type(f, k), GGUF_TYPE_UINT16);
    ck_assert_uint_eq(gguf_kv_arr_n(f, k), 5);
    int32_t oi[5];
    float of[5];
    ck_assert_int_eq(gguf_get_arr_i32(f, "a.uint16", oi, 5), 0);
    ck_assert_int_eq(gguf_get_arr_i32(f, "a.float64", oi, 5), 0);
    ck_assert_int_eq(oi[4], 0);
    ck_assert_int_eq(gguf_get_arr_f32(f, "a.bool", of, 5), 0);
    ck_assert(of[2] == 1.0f);
    ck_assert_int_eq(gguf_get_arr_f32(f, "w.arr_f32", of, 4), 0);
    ck_assert(memcmp(of, rt_af, sizeof rt_af) == 0);
    ck_assert_int_eq(gguf_get_arr_i32(f, "w.arr_f32", oi, 4), GGUF_ERR_TYPE); /* 0.5 */
    ck_assert_int_eq(gguf_get_arr_f32(f, "w.arr_i32", of, 2), 0);
    ck_assert(of[0] == (float)INT32_MIN);
    ck_assert_int_eq(gguf_get_arr_i32(f, "w.arr_i32", oi, 1), 0);
    ck_assert_int_eq(oi[0], INT32_MIN);
    ck_assert_int_eq(gguf_get_arr_i32(f, "w.arr_str", oi, 1), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_get_arr_i32(f, "w.u32", oi, 1), GGUF_ERR_TYPE);
    uint64_t n;
    ck_assert_int_eq(gguf_get_arr_str(f, "w.arr_str", &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(gguf_arr_str_at(f, "w.arr_str", 2, &s, &len), 0);
    ck_assert(len == 4 && memcmp(s, "z\xe2\x96\x81", 4) == 0);
    ck_assert_int_eq(gguf_arr_str_at(f, "w.arr_str", 1, &s, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(gguf_get_arr_str(f, "a.empty", &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(gguf_get_arr_str(f, "w.arr_i32", &n), GGUF_ERR_TYPE);
    k = gguf_find_key(f, "w.nested");
    ck_assert_int_eq(gguf_kv_arr_type(f, k), GGUF_TYPE_ARRAY);
    ck_assert_uint_eq(gguf_kv_arr_n(f, k), 2);
    ck_assert_int_eq(gguf_get_arr_i32(f, "w.nested", oi, 2), GGUF_ERR_TYPE);
    ck_assert_int_eq(gguf_kv_type(f, gguf_n_kv(f)), GGUF_TYPE_COUNT);
    ck_assert_ptr_null(gguf_kv_key(f, -1));
}

static void rt_check_tensors(const gguf_file *f, rt_tensors *rt) {
    ck_assert_int_eq(gguf_n_tensors(f), NT + 1);
    for (int i = 0; i < NT; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        ck_assert_uint_eq(t->type, rt_types[i]);
        ck_assert_uint_eq(t->n_dims, 1 + (uint32_t)i % 4);
        ck_assert(memcmp(t->ne, rt->ne[i], sizeof rt->ne[i]) == 0);
        ck_assert_uint_eq(t->nbytes, rt->nbytes[i]);
        ck_assert_uint_eq(t->offset % gguf_alignment(f), 0);
        ck_assert_uint_eq((uintptr_t)t->data % gguf_alignment(f), 0);
        ck_assert(memcmp(t->data, rt->data[i], rt->nbytes[i]) == 0);
        free(rt->data[i]);
    }
    const gguf_tensor *t = gguf_find_tensor(f, "tensor.empty");
    ck_assert(t && t->nbytes == 0 && t->ne[0] == 0 && t->ne[1] == 3);
}

static void roundtrip(uint32_t align) {
    char path[256], err[512];
    rt_tensors rt;
    tmp_path(path, sizeof path);
    gguf_writer *w = gguf_writer_new();
    ck_assert(w != NULL);
    if (align) ck_assert_int_eq(gguf_writer_set_alignment(w, align), 0);
    rt_write_values(w);
    rt_write_tensors(w, &rt);
    ck_assert_msg(gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    gguf_writer_destroy(w);
    gguf_file *f = NULL;
    ck_assert_msg(gguf_open(path, &f, err, sizeof err) == 0, "%s", err);
    unlink(path);
    ck_assert_uint_eq(gguf_alignment(f), align ? align : 32);
    ck_assert_str_eq(gguf_path(f), path);
    ck_assert_str_eq(gguf_kv_key(f, align ? 1 : 0), "v.uint8"); /* keys keep their order */
    rt_check_scalars(f);
    rt_check_arrays(f);
    rt_check_tensors(f, &rt);
    gguf_close(f);
}

START_TEST(test_roundtrip) { roundtrip(0); }
END_TEST

START_TEST(test_roundtrip_align64) { roundtrip(64); }
END_TEST

/* ---------------------------------------------------------- truncation */

START_TEST(test_truncation) {
    blob b = small_blob();
    char path[256], err[512];
    gguf_file *f = NULL;
    tmp_path(path, sizeof path);
    int fd = open(path, O_RDWR);
    ck_assert(fd >= 0);
    for (size_t len = 0; len <= b.n; len++) {
        ck_assert(ftruncate(fd, 0) == 0);
        ck_assert(pwrite(fd, b.p, len, 0) == (ssize_t)len);
        int rc = gguf_open(path, &f, err, sizeof err);
        if (len == b.n) {
            ck_assert_msg(rc == 0, "full file: %s", err);
            gguf_close(f);
            break;
        }
        ck_assert_msg(rc == GGUF_ERR_FORMAT, "len %zu: rc %d", len, rc);
        ck_assert_msg(strstr(err, "beyond end of file"), "len %zu: %s", len, err);
        ck_assert_int_eq(open_exact(b.p, len, &f, err, sizeof err), GGUF_ERR_FORMAT);
    }
    close(fd);
    unlink(path);
    free(b.p);
}
END_TEST

/* A vocab-only file (no tensors) may end right after its key/values, without padding. */
START_TEST(test_no_tensors_no_padding) {
    char path[256], err[512];
    tmp_path(path, sizeof path);
    gguf_writer *w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_add_str(w, "k", "abc"), 0); /* 24 + 8+1+4+8+3 = 48 bytes */
    ck_assert_int_eq(gguf_writer_add_u32(w, "kk", 1), 0);   /* + 8+2+4+4 = 66 */
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
    gguf_writer_destroy(w);
    blob b = read_all(path);
    unlink(path);
    ck_assert_uint_eq(b.n, 96); /* padded to 32 */
    gguf_file *f;
    ck_assert_int_eq(open_exact(b.p, 66, &f, err, sizeof err), 0);
    ck_assert_int_eq(open_exact(b.p, 65, &f, err, sizeof err), GGUF_ERR_FORMAT);
    free(b.p);
}
END_TEST

/* Mid-file truncations of the real model: the header region byte by byte, the data region
 * at a few hundred points. */
START_TEST(test_truncation_real) {
    char path[512], err[512];
    gguf_file *f;
    shared_path(path, sizeof path, "models/stories260K.gguf");
    blob b = read_all(path);
    for (size_t len = 0; len < 14176 + 64; len += 1)
        ck_assert_int_eq(open_exact(b.p, len, &f, err, sizeof err), GGUF_ERR_FORMAT);
    for (size_t len = 14176; len < b.n; len += 3001 + rng() % 4096)
        ck_assert_int_eq(open_exact(b.p, len, &f, err, sizeof err), GGUF_ERR_FORMAT);
    ck_assert_int_eq(open_exact(b.p, b.n - 1, &f, err, sizeof err), GGUF_ERR_FORMAT);
    ck_assert_int_eq(open_exact(b.p, b.n, &f, err, sizeof err), 0);
    free(b.p);
}
END_TEST

/* ------------------------------------------------------- hostile fields */

START_TEST(test_bad_header) {
    blob b = small_blob();
    blob c = {malloc(b.n), b.n};
    memcpy(c.p, b.p, b.n), c.p[0] = 'X';
    expect_err(&c, GGUF_ERR_FORMAT, ": magic: bad magic", "\"GGUF\"");
    memcpy(c.p, b.p, b.n), put32(&c, 4, 1);
    expect_err(&c, GGUF_ERR_FORMAT, ": version: unsupported version 1", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, 4, 4);
    expect_err(&c, GGUF_ERR_FORMAT, "version 4", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, 4, 2); /* v2 has the same layout */
    gguf_file *f;
    char err[512];
    ck_assert_int_eq(open_exact(c.p, c.n, &f, err, sizeof err), 0);
    memcpy(c.p, b.p, b.n), put64(&c, 8, 1ull << 62);
    expect_err(&c, GGUF_ERR_FORMAT, ": tensor count: tensor count 4611686018427387904", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, 8, UINT64_MAX);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor count", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, 16, 1ull << 62);
    expect_err(&c, GGUF_ERR_FORMAT, ": kv count: kv count 4611686018427387904", NULL);
    free(c.p);
    free(b.p);
}
END_TEST

START_TEST(test_bad_kv) {
    blob b = small_blob();
    blob c = {malloc(b.n), b.n};
    memcpy(c.p, b.p, b.n), put64(&c, value_off(&c, "s.str"), UINT64_MAX);
    expect_err(&c, GGUF_ERR_FORMAT, "kv[1] key 's.str': string length 18446744073709551615",
               "beyond end of file");
    memcpy(c.p, b.p, b.n), put64(&c, find_str(&c, "s.u32"), UINT64_MAX);
    expect_err(&c, GGUF_ERR_FORMAT, "kv[0] key: string length 18446744073709551615", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, value_off(&c, "s.arr_i32") + 4, 1ull << 62);
    expect_err(&c, GGUF_ERR_FORMAT, "kv[2] key 's.arr_i32': array count 4611686018427387904",
               NULL);
    memcpy(c.p, b.p, b.n), put64(&c, value_off(&c, "s.arr_str") + 4, 1ull << 62);
    expect_err(&c, GGUF_ERR_FORMAT, "'s.arr_str': array count 4611686018427387904", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, value_off(&c, "s.arr_str") + 12 + 9, 1ull << 40);
    expect_err(&c, GGUF_ERR_FORMAT, "'s.arr_str': element 1: string length 1099511627776", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, value_off(&c, "s.f32") - 4, 13);
    expect_err(&c, GGUF_ERR_FORMAT, "'s.f32': unknown value type 13", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, value_off(&c, "s.arr_i32"), 0xffffffffu);
    expect_err(&c, GGUF_ERR_FORMAT, "'s.arr_i32': unknown array element type 4294967295", NULL);
    memcpy(c.p, b.p, b.n), c.p[find_str(&c, "s.f32") + 9] = '\0';
    expect_err(&c, GGUF_ERR_FORMAT, "kv[4] key: name contains a NUL byte", NULL);
    memcpy(c.p, b.p, b.n), memcpy(c.p + find_str(&c, "s.f32") + 8, "s.u32", 5);
    expect_err(&c, GGUF_ERR_FORMAT, "kv[4] key 's.u32': duplicate key (first at kv[0])", NULL);
    free(c.p);
    free(b.p);
}
END_TEST

START_TEST(test_bad_tensor) {
    blob b = small_blob();
    blob c = {malloc(b.n), b.n};
    tinfo_off q8 = tensor_fields(&b, "t.q8", 2), f16 = tensor_fields(&b, "t.f16", 1);
    memcpy(c.p, b.p, b.n), put32(&c, q8.n_dims, 5);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': n_dims 5", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, q8.type, 99);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': unsupported tensor type 99", NULL);
    memcpy(c.p, b.p, b.n), put32(&c, q8.type, 6);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': unsupported tensor type 6 (Q5_0)", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, q8.offset, 32 * 1 + 1);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': data offset 33 is not a multiple of the "
               "alignment 32", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, f16.offset, 1ull << 40);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.f16': data offset 1099511627776 + 10 bytes "
               "beyond end of file", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, f16.offset, UINT64_MAX - 31);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.f16': data offset", "beyond end of file");
    memcpy(c.p, b.p, b.n), put64(&c, q8.ne, SMALL_NE_Q8 + 1);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': ne[0] = 65 is not a multiple of the Q8_0 "
               "block size 32", NULL);
    memcpy(c.p, b.p, b.n), put64(&c, q8.ne + 8, 1ull << 62);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': size of ne {64, 4611686018427387904",
               "overflows");
    memcpy(c.p, b.p, b.n), put64(&c, q8.ne + 8, 1ull << 40);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8'", "beyond end of file");
    memcpy(c.p, b.p, b.n), put64(&c, q8.ne + 8, UINT64_MAX);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q8': ne[1] = 18446744073709551615 is too large",
               NULL);
    memcpy(c.p, b.p, b.n), put64(&c, find_str(&c, "t.f16"), 1ull << 50);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor[3] name: string length 1125899906842624", NULL);
    memcpy(c.p, b.p, b.n), memcpy(c.p + find_str(&c, "t.f16") + 8, "t.q4k", 5);
    expect_err(&c, GGUF_ERR_FORMAT, "tensor 't.q4k': duplicate tensor name (first at tensor[2])",
               NULL);
    free(c.p);
    free(b.p);
}
END_TEST

START_TEST(test_duplicate_tensor) {
    char path[256], err[512];
    tmp_path(path, sizeof path);
    gguf_writer *w = gguf_writer_new();
    float d[4] = {0};
    const uint64_t ne[1] = {4};
    ck_assert_int_eq(gguf_writer_add_tensor(w, "same", KERN_TYPE_F32, 1, ne, d, 16), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "same", KERN_TYPE_F32, 1, ne, d, 16), 0);
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
    gguf_writer_destroy(w);
    blob b = read_all(path);
    unlink(path);
    expect_err(&b, GGUF_ERR_FORMAT, "tensor 'same': duplicate tensor name (first at tensor[0])",
               NULL);
    free(b.p);
}
END_TEST

/* general.alignment: wrong value, wrong type; duplicate keys written by the writer. */
START_TEST(test_bad_alignment_and_dup) {
    char path[256], err[512];
    struct {
        int what;
        const char *n1, *n2;
    } cases[] = {
        {0, "key 'general.alignment': alignment 3 is not a nonzero power of two", NULL},
        {1, "key 'general.alignment': alignment 0", NULL},
        {2, "key 'general.alignment': type string, expected uint32", NULL},
        {3, "kv[1] key 'dup': duplicate key (first at kv[0])", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tmp_path(path, sizeof path);
        gguf_writer *w = gguf_writer_new();
        if (cases[i].what == 0) gguf_writer_add_u32(w, "general.alignment", 3);
        if (cases[i].what == 1) gguf_writer_add_u32(w, "general.alignment", 0);
        if (cases[i].what == 2) gguf_writer_add_str(w, "general.alignment", "32");
        if (cases[i].what == 3) gguf_writer_add_u32(w, "dup", 1), gguf_writer_add_u32(w, "dup", 2);
        ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
        gguf_writer_destroy(w);
        blob b = read_all(path);
        unlink(path);
        expect_err(&b, GGUF_ERR_FORMAT, cases[i].n1, cases[i].n2);
        free(b.p);
    }
}
END_TEST

/* A file whose one key is an array nested `levels` deep, innermost [u8 42]. */
static blob nested_file(int levels) {
    char path[256], err[512];
    uint8_t val[32 * 12 + 1], *p = val;
    const uint64_t one = 1;
    for (int d = 0; d < levels; d++) {
        uint32_t et = d + 1 < levels ? GGUF_TYPE_ARRAY : GGUF_TYPE_UINT8;
        memcpy(p, &et, 4), p += 4;
        memcpy(p, &one, 8), p += 8;
    }
    *p++ = 42;
    tmp_path(path, sizeof path);
    gguf_writer *w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_add_raw(w, "nest", GGUF_TYPE_ARRAY, val, (size_t)(p - val)), 0);
    ck_assert_int_eq(gguf_writer_add_u32(w, "after", 5), 0);
    ck_assert_int_eq(gguf_writer_write(w, path, err, sizeof err), 0);
    gguf_writer_destroy(w);
    blob b = read_all(path);
    unlink(path);
    return b;
}

START_TEST(test_nested_depth) {
    char err[512];
    gguf_file *f;
    for (int levels = 1; levels <= 8; levels++) {
        blob b = nested_file(levels);
        ck_assert_msg(gguf__open_mem(b.p, b.n, "n.gguf", &f, err, sizeof err) == 0, "%s", err);
        int64_t k = gguf_find_key(f, "nest");
        ck_assert_int_eq(gguf_kv_arr_type(f, k), levels > 1 ? GGUF_TYPE_ARRAY : GGUF_TYPE_UINT8);
        uint32_t v;
        ck_assert_int_eq(gguf_get_u32(f, "after", &v), 0);
        ck_assert_uint_eq(v, 5);
        gguf_close(f);
        free(b.p);
    }
    blob b = nested_file(9);
    expect_err(&b, GGUF_ERR_FORMAT, "kv[0] key 'nest': arrays nested deeper than 8", NULL);
    free(b.p);
    b = nested_file(3);
    size_t inner = value_off(&b, "nest") + 12; /* the level-2 array's element type */
    put32(&b, inner, 77);
    expect_err(&b, GGUF_ERR_FORMAT, "'nest': unknown nested array element type 77", NULL);
    put32(&b, inner, GGUF_TYPE_ARRAY), put64(&b, inner + 4, 1ull << 60);
    expect_err(&b, GGUF_ERR_FORMAT, "'nest': array count 1152921504606846976 of array",
               "beyond end of file");
    free(b.p);
}
END_TEST

/* ------------------------------------------------- random corruption */

START_TEST(test_random_corruption) {
    blob b = small_blob();
    uint8_t *c = malloc(b.n);
    char err[512];
    gguf_file *f;
    int ok = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(c, b.p, b.n);
        int flips = 1 + (int)(rng() % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = rng() % (iter % 2 ? b.n : 200); /* bias toward the header region */
            c[at] = (rng() % 3 == 0) ? 0xff : (uint8_t)rng();
        }
        int rc = open_exact(c, b.n, &f, err, sizeof err);
        ck_assert_msg(rc == 0 || rc == GGUF_ERR_FORMAT, "iter %d rc %d", iter, rc);
        if (rc) ck_assert_msg(strncmp(err, "mem.gguf: ", 10) == 0, "%s", err);
        ok += rc == 0;
    }
    ck_assert(ok > 0); /* data-region flips still open */
    free(c);
    free(b.p);
}
END_TEST

/* --------------------------------------------------- allocation failure */

START_TEST(test_alloc_failure) {
    char path[256], err[512];
    tmp_path(path, sizeof path);
    build_small(path, 64);
    int succeeded = 0;
    long n;
    for (n = 0; n < 10000 && succeeded < 3; n++) {
        gguf_file *f = NULL;
        tk_mem_fail_after(n);
        int rc = gguf_open(path, &f, err, sizeof err);
        tk_mem_fail_after(-1);
        ck_assert_msg(rc == 0 || rc == GGUF_ERR_NOMEM, "n=%ld rc=%d %s", n, rc, err);
        if (rc == 0) {
            uint32_t v;
            ck_assert_int_eq(gguf_get_u32(f, "s.u32", &v), 0);
            gguf_close(f);
            succeeded++;
        } else {
            ck_assert_ptr_null(f);
            ck_assert_msg(strstr(err, "out of memory"), "%s", err);
        }
    }
    ck_assert_int_eq(succeeded, 3);
    ck_assert(n > 5); /* it did fail several distinct allocations */
    unlink(path);
    /* the writer: each add either succeeds or returns NOMEM, and destroy frees all */
    for (n = 0; n < 64; n++) {
        tk_mem_fail_after(n);
        gguf_writer *w = gguf_writer_new();
        if (w) {
            const char *as[2] = {"x", "y"};
            const uint64_t ne[1] = {4};
            float d[4] = {0};
            int rc = gguf_writer_add_str(w, "a", "b");
            ck_assert(rc == 0 || rc == GGUF_ERR_NOMEM);
            rc = gguf_writer_add_arr_str(w, "b", as, 2);
            ck_assert(rc == 0 || rc == GGUF_ERR_NOMEM);
            rc = gguf_writer_add_tensor(w, "t", KERN_TYPE_F32, 1, ne, d, sizeof d);
            ck_assert(rc == 0 || rc == GGUF_ERR_NOMEM);
        }
        tk_mem_fail_after(-1);
        gguf_writer_destroy(w);
    }
}
END_TEST

/* ------------------------------------------------------------- misc */

START_TEST(test_io_errors) {
    char err[512];
    gguf_file *f = (gguf_file *)&err; /* must be reset to NULL */
    ck_assert_int_eq(gguf_open("/nonexistent/x.gguf", &f, err, sizeof err), GGUF_ERR_IO);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err, "/nonexistent/x.gguf: open:"), "%s", err);
    ck_assert_int_eq(gguf_open("/tmp", &f, err, sizeof err), GGUF_ERR_IO);
    ck_assert_int_eq(gguf_open("/nonexistent/x.gguf", &f, NULL, 0), GGUF_ERR_IO);
    gguf_writer *w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_write(w, "/nonexistent/y.gguf", err, sizeof err), GGUF_ERR_IO);
    ck_assert_msg(strstr(err, "/nonexistent/y.gguf"), "%s", err);
    gguf_writer_destroy(w);
    /* a tiny error buffer truncates, never overflows */
    char small[8];
    blob b = small_blob();
    b.p[0] = 'Z';
    ck_assert_int_eq(gguf__open_mem(b.p, b.n, "a-long-file-name.gguf", &f, small, sizeof small),
                     GGUF_ERR_FORMAT);
    ck_assert_uint_eq(strlen(small), 7);
    free(b.p);
}
END_TEST

static Suite *gguf_suite(void) {
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_stories260k);
    tcase_add_test(tc, test_gpt2_vocab);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_roundtrip_align64);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_no_tensors_no_padding);
    tcase_add_test(tc, test_truncation_real);
    tcase_add_test(tc, test_bad_header);
    tcase_add_test(tc, test_bad_kv);
    tcase_add_test(tc, test_bad_tensor);
    tcase_add_test(tc, test_duplicate_tensor);
    tcase_add_test(tc, test_bad_alignment_and_dup);
    tcase_add_test(tc, test_nested_depth);
    tcase_add_test(tc, test_random_corruption);
    tcase_add_test(tc, test_alloc_failure);
    tcase_add_test(tc, test_io_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(gguf_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
