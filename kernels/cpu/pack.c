/* Packed weights (KERN_PACKED): Q8_0, Q4_0 and Q4_1 matrices rearranged in tiles of 16 rows
 * so that the AVX-512 quantised-activation kernels read one contiguous stream per thread and
 * find, in one 64-byte load, the same 4 bytes of all 16 rows (lane r = row r), ready for a
 * vpdpbusd against one broadcast group of 4 activation bytes. No gathers, no transposes, and
 * the transpose-add trees of the plain-row GEMV are gone.
 *
 * Tile t (rows 16t .. 16t+15) occupies the bytes of those 16 plain rows (16 * row_bytes) at
 * the same offset, as three planes over the tile's nb blocks:
 *   Q plane: per block b, G groups of 64 bytes (G = 4 for Q4_0/Q4_1, 8 for Q8_0); group g
 *            holds bytes 4g..4g+3 of block b's quants of row r at 4r. Q8_0 quants are stored
 *            plus 128 (xor 0x80): the unsigned operand of vpdpbusd as it is.
 *   D plane: per block b, the 16 rows' f16 scales (32 bytes).
 *   M plane (Q4_1 only): per block b, the 16 rows' f16 mins.
 * kern_unpack_row inverts it, which is also how the levels without packed kernels run a packed
 * matrix: row by row through the plain-row arithmetic, so results never depend on packing. */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

static size_t qbytes(uint32_t t) { return t == KERN_TYPE_Q8_0 ? 32 : 16; }
static size_t qoff(uint32_t t) { return t == KERN_TYPE_Q4_1 ? 4 : 2; }

bool kern_pack_supported(uint32_t wtype, size_t n_in, size_t n_out) {
    return kern__cur->mm_packed && (wtype == KERN_TYPE_Q8_0 || wtype == KERN_TYPE_Q4_0 || wtype == KERN_TYPE_Q4_1) &&
           n_in > 0 && n_in % KERN_QK == 0 && n_in <= KERN_MATMUL_MAX_IN && n_out > 0 && n_out % KERN_PACK_ROWS == 0;
}

static void pack_tile(uint32_t t, const uint8_t *src, uint8_t *dst, size_t n_in) {
    const size_t nb = n_in / KERN_QK, bb = kern_type_block_bytes(t), rb = nb * bb, qb = qbytes(t), R = KERN_PACK_ROWS;
    uint8_t *Q = dst, *D = dst + nb * R * qb, *M = D + nb * R * 2;
    for (size_t r = 0; r < R; r++)
        for (size_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + r * rb + b * bb;
            memcpy(D + (b * R + r) * 2, blk, 2);
            if (t == KERN_TYPE_Q4_1) memcpy(M + (b * R + r) * 2, blk + 2, 2);
            for (size_t g = 0; g < qb / 4; g++) {
                uint8_t *q = Q + b * R * qb + g * 64 + r * 4;
                memcpy(q, blk + qoff(t) + 4 * g, 4);
                if (t == KERN_TYPE_Q8_0)
                    for (int i = 0; i < 4; i++) q[i] ^= 0x80;
            }
        }
}

void kern_unpack_row(uint32_t wtype, const void *Wp, size_t n_in, size_t row, void *out) {
    const size_t nb = n_in / KERN_QK, bb = kern_type_block_bytes(wtype), rb = nb * bb, qb = qbytes(wtype);
    const size_t R = KERN_PACK_ROWS, r = row % R;
    const uint8_t *tile = (const uint8_t *)Wp + row / R * R * rb;
    const uint8_t *Q = tile, *D = tile + nb * R * qb, *M = D + nb * R * 2;
    uint8_t *o = out;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = o + b * bb;
        memcpy(blk, D + (b * R + r) * 2, 2);
        if (wtype == KERN_TYPE_Q4_1) memcpy(blk + 2, M + (b * R + r) * 2, 2);
        for (size_t g = 0; g < qb / 4; g++) {
            uint8_t *q = blk + qoff(wtype) + 4 * g;
            memcpy(q, Q + b * R * qb + g * 64 + r * 4, 4);
            if (wtype == KERN_TYPE_Q8_0)
                for (int i = 0; i < 4; i++) q[i] ^= 0x80;
        }
    }
}

typedef struct {
    uint32_t type;
    const uint8_t *src;
    uint8_t *dst;
    size_t n_in, tiles, tile_bytes;
} pack_job;

static void pack_worker(void *ctx, int ith, int nth) {
    const pack_job *j = ctx;
    size_t lo = j->tiles * (size_t)ith / (size_t)nth, hi = j->tiles * (size_t)(ith + 1) / (size_t)nth;
    for (size_t t = lo; t < hi; t++) pack_tile(j->type, j->src + t * j->tile_bytes, j->dst + t * j->tile_bytes, j->n_in);
}

int kern_pack(kern_pool *p, uint32_t wtype, const void *W, void *out, size_t n_in, size_t n_out) {
    if (!(wtype == KERN_TYPE_Q8_0 || wtype == KERN_TYPE_Q4_0 || wtype == KERN_TYPE_Q4_1) || n_in == 0 ||
        n_in % KERN_QK || n_out == 0 || n_out % KERN_PACK_ROWS)
        return -1;
    pack_job j = {wtype, W, out, n_in, n_out / KERN_PACK_ROWS, KERN_PACK_ROWS * kern_row_bytes(wtype, n_in)};
    if (p) kern_pool_run(p, pack_worker, &j);
    else pack_worker(&j, 0, 1);
    return 0;
}

/* Rows [lo, hi) of a packed matrix on a level without packed kernels: each row unpacked, then
 * the plain-row arithmetic of that level (so the same bits as the plain matrix there). */
void kern__mm_packed_rows(const kern__mm *j, size_t lo, size_t hi) {
    const uint32_t base = j->wtype & ~KERN_PACKED;
    uint8_t row[KERN_MATMUL_MAX_IN / KERN_QK * 34];
    for (size_t o = lo; o < hi; o++) {
        kern_unpack_row(base, j->W, j->n_in, o, row);
        kern__mm one = *j;
        one.wtype = base, one.W = row, one.Y = j->Y + o; /* row 0 of `one` is row o */
        (one.Xq ? kern__cur->mm_act : kern__cur->mm_f32)(&one, 0, 1);
    }
}
