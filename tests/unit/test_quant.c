/* test_quant: the quantized row formats (kernels/cpu/quant_ref.c, quant.c, types.c).
 *
 * Reference values come from tests/data/quant_vectors.bin, written by
 * tests/data/gen_quant_vectors.py with the PyPI gguf package (gguf.quants) and numpy, so
 * they are independent of our code: gguf-py's quantized bytes and dequantized floats, a
 * float64 dot, rows of a real SmolLM2 tensor, and numpy's f32 -> f16 / bf16 conversions.
 * The data directory is tests/data relative to the working directory (the repo root) or
 * $TOKD_TESTDATA. If $TOKD_MODEL names a GGUF file, its first rows are checked too. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/kern.h"

enum { KIND_QUANT = 0, KIND_RAW = 1, KIND_MODEL = 2, KIND_CONV = 3 };
#define MAX_RECORDS 64

typedef struct {
    char label[33];
    uint32_t kind, type, n_rows, n;
    const float *input;  /* (n_rows, n) for KIND_QUANT, else NULL */
    const uint8_t *q;    /* (n_rows, row_bytes) */
    const float *deq;    /* (n_rows, n) */
    const float *x;      /* (n) */
    const double *dot;   /* (n_rows) */
    const uint16_t *f16, *bf16; /* KIND_CONV: (n) each; input holds the f32 values */
} vec_record;

static uint8_t *data_buf;
static vec_record recs[MAX_RECORDS];
static size_t n_recs;
static void *copies[8 * MAX_RECORDS]; /* aligned copies of the arrays, freed on unload */
static size_t n_copies;

/* ---- data file ---- */

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)sz))) {
            if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)sz;
        }
    }
    fclose(f);
    return buf;
}

/* Takes `bytes` from the cursor; NULL if the file is too short. Arrays follow odd-sized
 * quantized rows in the file, so each is copied to (malloc-aligned) memory of its own. */
static const void *take(size_t *pos, size_t len, size_t bytes) {
    if (bytes > len - *pos || n_copies == sizeof copies / sizeof copies[0]) return NULL;
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    memcpy(p, data_buf + *pos, bytes);
    *pos += bytes;
    copies[n_copies++] = p;
    return p;
}

static int parse_record(size_t *pos, size_t len, vec_record *r) {
    const uint8_t *h = take(pos, len, 48);
    if (!h) return -1;
    memcpy(r->label, h, 32);
    r->label[32] = 0;
    memcpy(&r->kind, h + 32, 4);
    memcpy(&r->type, h + 36, 4);
    memcpy(&r->n_rows, h + 40, 4);
    memcpy(&r->n, h + 44, 4);
    size_t cnt = (size_t)r->n_rows * r->n;
    if (r->kind == KIND_CONV) {
        r->input = (const float *)take(pos, len, 4 * (size_t)r->n);
        r->f16 = (const uint16_t *)take(pos, len, 2 * (size_t)r->n);
        r->bf16 = (const uint16_t *)take(pos, len, 2 * (size_t)r->n);
        return r->input && r->f16 && r->bf16 ? 0 : -1;
    }
    size_t rb = kern_row_bytes(r->type, r->n);
    if (rb == 0 || r->kind > KIND_MODEL) return -1;
    r->input = r->kind == KIND_QUANT ? (const float *)take(pos, len, 4 * cnt) : NULL;
    r->q = take(pos, len, rb * r->n_rows);
    r->deq = (const float *)take(pos, len, 4 * cnt);
    r->x = (const float *)take(pos, len, 4 * (size_t)r->n);
    r->dot = (const double *)take(pos, len, 8 * (size_t)r->n_rows);
    return (r->kind != KIND_QUANT || r->input) && r->q && r->deq && r->x && r->dot ? 0 : -1;
}

static void load_vectors(void) {
    const char *dir = getenv("TOKD_TESTDATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/quant_vectors.bin", dir ? dir : "tests/data");
    size_t len = 0;
    data_buf = read_file(path, &len);
    ck_assert_msg(data_buf != NULL, "cannot read %s (run from the repo root)", path);
    ck_assert(len >= 12 && memcmp(data_buf, "TKQV0001", 8) == 0);
    uint32_t n;
    memcpy(&n, data_buf + 8, 4);
    ck_assert_uint_le(n, MAX_RECORDS);
    size_t pos = 12;
    for (n_recs = 0; n_recs < n; n_recs++)
        ck_assert_msg(parse_record(&pos, len, &recs[n_recs]) == 0, "record %zu bad", n_recs);
    ck_assert_uint_eq(pos, len);
}

static void unload_vectors(void) {
    while (n_copies) free(copies[--n_copies]);
    free(data_buf);
    data_buf = NULL;
    n_recs = 0;
}

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) { return (float)((rng_next() >> 40) * (1.0 / 16777216.0)); }

static float rng_gauss(void) {
    float u = rng_uniform() + 1e-7f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Bitwise float comparison (so -0.0 != 0.0 and the test is truly exact). */
static size_t count_bit_diffs(const float *a, const float *b, size_t n, size_t *first) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (f32_bits(a[i]) != f32_bits(b[i]) && !bad++) *first = i;
    }
    return bad;
}

static double sum_abs_prod(const float *w, const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i] * x[i]);
    return s;
}

#define REC_FOR_EACH(r) for (const vec_record *r = recs; r < recs + n_recs; r++)

/* ---- tests against gguf-py ---- */

static void check_dequant(int dispatched) {
    size_t checked = 0;
    REC_FOR_EACH(r) {
        if (r->kind == KIND_CONV) continue;
        size_t rb = kern_row_bytes(r->type, r->n);
        float *out = malloc(sizeof(float) * r->n);
        ck_assert_ptr_nonnull(out);
        for (uint32_t i = 0; i < r->n_rows; i++) {
            const void *row = r->q + i * rb;
            if (dispatched) kern_dequant_row(r->type, row, out, r->n);
            else kern_dequant_row_ref(r->type, row, out, r->n);
            size_t first = 0, bad = count_bit_diffs(out, r->deq + (size_t)i * r->n, r->n, &first);
            ck_assert_msg(bad == 0, "%s row %u: %zu of %u differ, first [%zu] %a vs gguf-py %a",
                          r->label, i, bad, r->n, first, (double)out[first],
                          (double)r->deq[(size_t)i * r->n + first]);
            checked++;
        }
        free(out);
    }
    ck_assert_uint_gt(checked, 40);
}

START_TEST(test_dequant_ref_matches_gguf) { check_dequant(0); }
END_TEST

START_TEST(test_dequant_matches_gguf) { check_dequant(1); }
END_TEST

START_TEST(test_quantize_ref_matches_gguf) {
    size_t checked = 0;
    REC_FOR_EACH(r) {
        if (r->kind != KIND_QUANT) continue;
        size_t rb = kern_row_bytes(r->type, r->n);
        uint8_t *q = malloc(rb);
        ck_assert_ptr_nonnull(q);
        for (uint32_t i = 0; i < r->n_rows; i++) {
            ck_assert_int_eq(kern_quantize_row_ref(r->type, r->input + (size_t)i * r->n, q, r->n), 0);
            const uint8_t *want = r->q + i * rb;
            size_t bad = 0, first = 0;
            for (size_t j = 0; j < rb; j++)
                if (q[j] != want[j] && !bad++) first = j;
            ck_assert_msg(bad == 0, "%s row %u: %zu of %zu bytes differ, first at %zu: %02x vs %02x",
                          r->label, i, bad, rb, first, q[first], want[first]);
            checked++;
        }
        free(q);
    }
    ck_assert_uint_ge(checked, 6 * 5);
}
END_TEST

/* kern_dot_ref (double accumulation) must match the float64 dot to float rounding;
 * kern_dot (float lanes) to a few ulps of sum |w*x| per element summed. */
START_TEST(test_dot_matches_f64) {
    double worst_ref = 0, worst = 0;
    REC_FOR_EACH(r) {
        if (r->kind == KIND_CONV) continue;
        size_t rb = kern_row_bytes(r->type, r->n);
        for (uint32_t i = 0; i < r->n_rows; i++) {
            const void *row = r->q + i * rb;
            double want = r->dot[i];
            double scale = sum_abs_prod(r->deq + (size_t)i * r->n, r->x, r->n) + 1e-30;
            double e_ref = fabs(kern_dot_ref(r->type, row, r->x, r->n) - want) / scale;
            double e = fabs(kern_dot(r->type, row, r->x, r->n) - want) / scale;
            ck_assert_msg(e_ref < 1e-6, "%s row %u: dot_ref rel err %g", r->label, i, e_ref);
            ck_assert_msg(e < 1e-5, "%s row %u: dot rel err %g", r->label, i, e);
            worst_ref = fmax(worst_ref, e_ref);
            worst = fmax(worst, e);
        }
    }
    printf("dot vs float64 (relative to sum|w*x|): ref max %.3g, dispatched max %.3g\n",
           worst_ref, worst);
}
END_TEST

/* ---- f16 / bf16 conversions ---- */

START_TEST(test_conv_matches_numpy) {
    size_t checked = 0;
    REC_FOR_EACH(r) {
        if (r->kind != KIND_CONV) continue;
        for (uint32_t i = 0; i < r->n; i++) {
            float v = r->input[i];
            ck_assert_msg(kern_f32_to_f16(v) == r->f16[i], "f16(%a) = %04x, numpy %04x",
                          (double)v, kern_f32_to_f16(v), r->f16[i]);
            ck_assert_msg(kern_f32_to_bf16(v) == r->bf16[i], "bf16(%a) = %04x, gguf-py %04x",
                          (double)v, kern_f32_to_bf16(v), r->bf16[i]);
            checked++;
        }
    }
    ck_assert_uint_gt(checked, 2000);
}
END_TEST

START_TEST(test_f16_exhaustive) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_f16_to_f32((uint16_t)h);
        uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
        if (exp == 0x1f && man) {
            ck_assert_msg(isnan(f), "%04x must be nan", h);
            ck_assert(isnan(kern_f16_to_f32(kern_f32_to_f16(f))));
            continue;
        }
        double want = exp == 0x1f ? INFINITY
                      : exp == 0  ? ldexp(man, -24)
                                  : ldexp(1024 + man, (int)exp - 25);
        if (h & 0x8000) want = -want;
        ck_assert_msg((double)f == want && !!signbit(f) == !!(h & 0x8000), "%04x -> %a", h,
                      (double)f);
        ck_assert_msg(kern_f32_to_f16(f) == h, "%04x round trip -> %04x", h, kern_f32_to_f16(f));
        /* the dispatched dequant has its own branch-free converter: same results */
        uint8_t b[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
        float g;
        kern_dequant_row(KERN_TYPE_F16, b, &g, 1);
        ck_assert_msg(f32_bits(g) == f32_bits(f), "%04x: dispatched %a", h, (double)g);
    }
}
END_TEST

START_TEST(test_f16_cases) {
    ck_assert_uint_eq(kern_f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie -> even (down) */
    ck_assert_uint_eq(kern_f32_to_f16(1.0f + 0x3p-11f), 0x3c02); /* tie -> even (up) */
    ck_assert_uint_eq(kern_f32_to_f16(0x1p-24f), 0x0001);        /* smallest subnormal */
    ck_assert_uint_eq(kern_f32_to_f16(0x1p-25f), 0x0000);        /* subnormal tie -> 0 */
    ck_assert_uint_eq(kern_f32_to_f16(0x3p-25f), 0x0002);        /* subnormal tie -> even */
    ck_assert_uint_eq(kern_f32_to_f16(0x1.ffcp-15f), 0x0400);    /* tie -> even: normal */
    ck_assert_uint_eq(kern_f32_to_f16(0x1.ff8p-15f), 0x03ff);    /* largest subnormal */
    ck_assert_uint_eq(kern_f32_to_f16(-0x1p-26f), 0x8000);       /* underflow keeps sign */
    ck_assert_uint_eq(kern_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(kern_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(kern_f32_to_f16(65520.0f), 0x7c00); /* tie at the top -> inf */
    ck_assert_uint_eq(kern_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(kern_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t nan = kern_f32_to_f16(NAN);
    ck_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
    ck_assert(isnan(kern_f16_to_f32(nan)));
    ck_assert(isnan(kern_f16_to_f32(kern_f32_to_f16(bits_f32(0x7f800001u))))); /* snan */
}
END_TEST

START_TEST(test_bf16) {
    ck_assert_uint_eq(kern_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80); /* tie -> even (down) */
    ck_assert_uint_eq(kern_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82); /* tie -> even (up) */
    ck_assert_uint_eq(kern_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(kern_f32_to_bf16(0x1.fffffep127f), 0x7f80); /* rounds to inf */
    ck_assert_uint_eq(kern_f32_to_bf16(bits_f32(0x00010000u)), 0x0001); /* subnormal */
    ck_assert(isnan(kern_bf16_to_f32(kern_f32_to_bf16(bits_f32(0x7f800001u))))); /* snan */
    ck_assert(isnan(kern_bf16_to_f32(kern_f32_to_bf16(NAN))));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_bf16_to_f32((uint16_t)h);
        ck_assert(f32_bits(f) == h << 16);
        if (!isnan(f)) ck_assert_uint_eq(kern_f32_to_bf16(f), h);
        uint8_t b[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
        float g;
        kern_dequant_row(KERN_TYPE_BF16, b, &g, 1);
        ck_assert(f32_bits(g) == f32_bits(f));
    }
}
END_TEST

/* ---- round trips and dispatched vs reference on random data ---- */

/* Relative RMS error of quantize_ref -> dequant_ref over rows of gaussian data, with a
 * different scale per 32 (heavier-tailed like real weight rows). */
static double roundtrip_rmse(uint32_t type, size_t n, int rows) {
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint8_t *q = malloc(kern_row_bytes(type, n));
    ck_assert(x && y && q);
    double se = 0, ss = 0;
    for (int r = 0; r < rows; r++) {
        float block_scale = 1;
        for (size_t i = 0; i < n; i++) {
            if (i % 32 == 0) block_scale = 0.02f * expf(rng_uniform() * 2 - 1);
            x[i] = rng_gauss() * block_scale + (r == 1 ? 0.01f : 0.0f);
        }
        ck_assert_int_eq(kern_quantize_row_ref(type, x, q, n), 0);
        kern_dequant_row_ref(type, q, y, n);
        for (size_t i = 0; i < n; i++) {
            se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            ss += (double)x[i] * x[i];
        }
    }
    free(x);
    free(y);
    free(q);
    return sqrt(se / ss);
}

START_TEST(test_quantize_roundtrip) {
    /* Bounds sit just above the floor set by the step size: a 32-value gaussian block spans
     * ~4.1 sigma, so a 16-level grid has a step of ~0.28 sigma and an rms error of
     * step/sqrt(12) ~ 0.08 sigma (Q4_1 measures 0.077, Q4_K with its clipping search 0.070);
     * 32 levels give ~0.039 (Q5_K 0.037); Q6_K's 64 levels over a 16-value block ~0.019
     * (measures 0.017). Targets like 0.06 for Q4_K are below that floor for gaussian data. */
    static const struct { uint32_t type; double max; } cases[] = {
        {KERN_TYPE_Q4_K, 0.085}, {KERN_TYPE_Q5_K, 0.042}, {KERN_TYPE_Q6_K, 0.022},
        {KERN_TYPE_Q8_0, 0.006}, {KERN_TYPE_Q4_0, 0.12},  {KERN_TYPE_Q4_1, 0.10},
        {KERN_TYPE_F16, 1e-3},   {KERN_TYPE_BF16, 4e-3},  {KERN_TYPE_F32, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double e = roundtrip_rmse(cases[c].type, 1024, 8);
        printf("round trip %-5s: relative rmse %.4f (bound %.4f)\n", kern_type_name(cases[c].type),
               e, cases[c].max);
        ck_assert_msg(e <= cases[c].max, "%s rmse %g", kern_type_name(cases[c].type), e);
    }
}
END_TEST

/* Random blocks in the layout of `type`: random bytes with sane f16 scales, or values
 * produced by quantize_ref (realistic), alternating per block. */
static void random_row(uint32_t type, uint8_t *row, size_t n) {
    size_t be = kern_type_block_elems(type), bb = kern_type_block_bytes(type);
    float tmp[KERN_QK_K];
    for (size_t b = 0; b < n / be; b++) {
        uint8_t *p = row + b * bb;
        if (be == 1 || (b & 1)) {
            for (size_t i = 0; i < be; i++) tmp[i] = rng_gauss() * 0.1f;
            ck_assert_int_eq(kern_quantize_row_ref(type, tmp, p, be), 0);
            continue;
        }
        for (size_t i = 0; i < bb; i++) p[i] = (uint8_t)rng_next();
        uint16_t s0 = kern_f32_to_f16(0.001f + 0.01f * rng_uniform());
        uint16_t s1 = kern_f32_to_f16(-(0.001f + 0.01f * rng_uniform()));
        uint8_t *sp = type == KERN_TYPE_Q6_K ? p + bb - 2 : p;
        sp[0] = (uint8_t)s0, sp[1] = (uint8_t)(s0 >> 8);
        if (type == KERN_TYPE_Q4_1 || type == KERN_TYPE_Q4_K || type == KERN_TYPE_Q5_K)
            p[2] = (uint8_t)s1, p[3] = (uint8_t)(s1 >> 8);
    }
}

static const uint32_t all_types[] = {KERN_TYPE_F32,  KERN_TYPE_F16,  KERN_TYPE_BF16,
                                     KERN_TYPE_Q8_0, KERN_TYPE_Q4_0, KERN_TYPE_Q4_1,
                                     KERN_TYPE_Q4_K, KERN_TYPE_Q5_K, KERN_TYPE_Q6_K};

START_TEST(test_dispatch_vs_ref) {
    static const size_t blocks[] = {1, 2, 3, 7, 33}; /* K: 256..8448, small: 32..1056 */
    for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) {
        uint32_t type = all_types[t];
        double worst = 0;
        for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
            size_t be = kern_type_block_elems(type);
            size_t n = be == 1 ? 33 * blocks[k] : be * blocks[k]; /* plain types: odd n */
            size_t rb = kern_row_bytes(type, n), n_rows = 3;
            uint8_t *rows = malloc(rb * n_rows);
            float *x = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n);
            float *b = malloc(sizeof(float) * n), out[3];
            ck_assert(rows && x && a && b);
            for (size_t r = 0; r < n_rows; r++) random_row(type, rows + r * rb, n);
            for (size_t i = 0; i < n; i++) x[i] = rng_gauss();
            kern_dot_rows(type, rows, rb, n_rows, x, n, out);
            for (size_t r = 0; r < n_rows; r++) {
                const uint8_t *row = rows + r * rb;
                kern_dequant_row_ref(type, row, a, n);
                kern_dequant_row(type, row, b, n);
                size_t first = 0;
                ck_assert_msg(count_bit_diffs(a, b, n, &first) == 0, "%s n=%zu dequant [%zu]",
                              kern_type_name(type), n, first);
                double scale = sum_abs_prod(a, x, n) + 1e-30;
                double ref = kern_dot_ref(type, row, x, n), got = kern_dot(type, row, x, n);
                double e = fabs(got - ref) / scale;
                ck_assert_msg(e < 1e-5, "%s n=%zu: dot %g vs ref %g", kern_type_name(type), n, got, ref);
                ck_assert_msg(fabs(out[r] - got) <= 1e-6 * scale, "%s dot_rows", kern_type_name(type));
                worst = fmax(worst, e);
            }
            free(rows), free(x), free(a), free(b);
        }
        printf("dispatched vs ref %-5s: max dot error %.3g (relative to sum|w*x|)\n",
               kern_type_name(type), worst);
    }
}
END_TEST

START_TEST(test_quantize_bad_args) {
    float x[64] = {0};
    uint8_t q[256];
    ck_assert_int_eq(kern_quantize_row_ref(KERN_TYPE_Q8_0, x, q, 33), -EINVAL);
    ck_assert_int_eq(kern_quantize_row_ref(KERN_TYPE_Q4_K, x, q, 64), -EINVAL);
    ck_assert_int_eq(kern_quantize_row_ref(7, x, q, 64), -EINVAL); /* Q5_1: not supported */
    ck_assert_int_eq(kern_quantize_row_ref(1000, x, q, 64), -EINVAL);
    ck_assert_int_eq(kern_quantize_row_ref(KERN_TYPE_Q4_0, x, q, 0), 0);
}
END_TEST

/* ---- a real model ---- */

START_TEST(test_model_rows_stored) {
    size_t checked = 0;
    REC_FOR_EACH(r) {
        if (r->kind != KIND_MODEL) continue;
        ck_assert(r->type == KERN_TYPE_Q4_1 || r->type == KERN_TYPE_Q8_0);
        checked++; /* dequant and dot equality are checked with every record above */
    }
    ck_assert_uint_eq(checked, 2);
}
END_TEST

/* Minimal GGUF v3 walk to a tensor's data (test only: bounds-checked, no metadata kept). */
typedef struct {
    const uint8_t *p;
    size_t len, pos;
    int bad;
} gguf_cur;

static uint64_t cur_u(gguf_cur *c, size_t bytes) {
    uint64_t v = 0;
    if (c->bad || bytes > c->len - c->pos) {
        c->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < bytes; i++) v |= (uint64_t)c->p[c->pos + i] << (8 * i);
    c->pos += bytes;
    return v;
}

static void cur_skip(gguf_cur *c, uint64_t bytes) {
    if (c->bad || bytes > c->len - c->pos) c->bad = 1;
    else c->pos += (size_t)bytes;
}

static void skip_value(gguf_cur *c, uint32_t vt, int depth) {
    static const uint8_t size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (vt == 8) cur_skip(c, cur_u(c, 8));
    else if (vt == 9 && depth == 0) {
        uint32_t et = (uint32_t)cur_u(c, 4);
        uint64_t cnt = cur_u(c, 8);
        if (et < 13 && size[et]) cur_skip(c, cnt > c->len ? c->len + 1 : cnt * size[et]);
        else for (uint64_t i = 0; i < cnt && !c->bad; i++) skip_value(c, et, 1);
    } else if (vt < 13 && size[vt]) cur_skip(c, size[vt]);
    else c->bad = 1;
}

/* Finds `want`; returns its data pointer (NULL on a malformed file or no such tensor). */
static const uint8_t *gguf_find(const uint8_t *map, size_t len, const char *want,
                                uint32_t *type, uint64_t *ne0) {
    gguf_cur c = {map, len, 0, 0};
    if (cur_u(&c, 4) != 0x46554747u || cur_u(&c, 4) != 3) return NULL; /* "GGUF", v3 */
    uint64_t n_tensors = cur_u(&c, 8), n_kv = cur_u(&c, 8), align = 32, off = UINT64_MAX;
    for (uint64_t i = 0; i < n_kv && !c.bad; i++) {
        uint64_t kl = cur_u(&c, 8);
        int is_align = kl == 17 && kl <= len - c.pos && !memcmp(map + c.pos, "general.alignment", 17);
        cur_skip(&c, kl);
        uint32_t vt = (uint32_t)cur_u(&c, 4);
        if (is_align && vt == 4) align = cur_u(&c, 4);
        else skip_value(&c, vt, 0);
    }
    for (uint64_t i = 0; i < n_tensors && !c.bad; i++) {
        uint64_t nl = cur_u(&c, 8);
        int match = nl == strlen(want) && nl <= len - c.pos && !memcmp(map + c.pos, want, nl);
        cur_skip(&c, nl);
        uint32_t nd = (uint32_t)cur_u(&c, 4);
        for (uint32_t d = 0; d < nd && d < 8; d++) {
            uint64_t ne = cur_u(&c, 8);
            if (match && d == 0) *ne0 = ne;
        }
        uint32_t t = (uint32_t)cur_u(&c, 4);
        uint64_t o = cur_u(&c, 8);
        if (match) *type = t, off = o;
    }
    if (c.bad || off == UINT64_MAX || align == 0) return NULL;
    uint64_t start = (c.pos + align - 1) / align * align;
    return start + off < len ? map + start + off : NULL;
}

START_TEST(test_model_file) {
    const char *path = getenv("TOKD_MODEL");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        printf("TOKD_MODEL not set or missing: model file check skipped\n");
        return;
    }
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    ck_assert(map != MAP_FAILED);
    size_t checked = 0;
    REC_FOR_EACH(r) {
        if (r->kind != KIND_MODEL) continue;
        uint32_t type = 0;
        uint64_t ne0 = 0;
        const uint8_t *t = gguf_find(map, (size_t)st.st_size, r->label, &type, &ne0);
        if (!t) continue; /* a different model: nothing to compare with */
        ck_assert_uint_eq(type, r->type);
        ck_assert_uint_eq(ne0, r->n);
        size_t rb = kern_row_bytes(type, r->n);
        ck_assert_msg(memcmp(t, r->q, rb * r->n_rows) == 0, "%s: stored rows differ", r->label);
        float *a = malloc(sizeof(float) * r->n), *b = malloc(sizeof(float) * r->n);
        ck_assert(a && b);
        for (size_t i = 0; i < 16; i++) { /* a few more rows, ref vs dispatched */
            kern_dequant_row_ref(type, t + i * rb, a, r->n);
            kern_dequant_row(type, t + i * rb, b, r->n);
            size_t first = 0;
            ck_assert(count_bit_diffs(a, b, r->n, &first) == 0);
            for (size_t j = 0; j < r->n; j++) ck_assert(isfinite(a[j]) && fabsf(a[j]) < 100);
        }
        free(a), free(b);
        checked++;
    }
    munmap(map, (size_t)st.st_size);
    close(fd);
    printf("model file %s: %zu tensors checked\n", path, checked);
}
END_TEST

static Suite *quant_suite(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, load_vectors, unload_vectors);
    tcase_add_test(tc, test_dequant_ref_matches_gguf);
    tcase_add_test(tc, test_dequant_matches_gguf);
    tcase_add_test(tc, test_quantize_ref_matches_gguf);
    tcase_add_test(tc, test_dot_matches_f64);
    tcase_add_test(tc, test_conv_matches_numpy);
    tcase_add_test(tc, test_f16_exhaustive);
    tcase_add_test(tc, test_f16_cases);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_quantize_roundtrip);
    tcase_add_test(tc, test_dispatch_vs_ref);
    tcase_add_test(tc, test_quantize_bad_args);
    tcase_add_test(tc, test_model_rows_stored);
    tcase_add_test(tc, test_model_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(quant_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
