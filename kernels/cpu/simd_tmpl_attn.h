/* simd_tmpl_attn.h: the attention half of simd_tmpl.h (included from it, at this point, with the
 * same VL/VF definitions and vexp): paged attention over an f16 or Q8_0 KV cache, its KV
 * prefetch and the segment (flash-decoding) path. Split out along that seam to keep each file
 * readable. */

/* ---- attention over an f16 or Q8_0 KV cache (a tile of queries of one sequence; kern__attn_tile) ----
 * One template, compiled once per cache type (attn_f16, attn_q8: `type` is a constant in each).
 * Per query the arithmetic is fixed, whatever else is in the tile (kern__attn_tile's invariant):
 *   f16: K is stored dimension-major, so a vector holds one value of VL positions; per position
 *        four fused chains over d mod 4 (attn_scores_h); Q8_0: q's Q8_0 blocks meet K's in
 *        integers (attn_scores_q8); either way bitwise the scalar reference's scores;
 *   softmax_w over its n_ctx scores (vexp, f32 sum; for an f16 cache the weights are then
 *   rounded to f16 through F16C, bitwise the scalar kern_f32_to_f16 rounding for finite values);
 *   out[d..d+VL) = fma(a[p], V[p][d..d+VL), out) over p = 0 .. n_ctx-1 in order, from zero, with
 *   a = w and V widened (f16), or a = w * the block's d and V its int8 values (Q8_0), so each
 *   path computes its scalar reference's sums (ops.c, pv_scalar) in another order only.
 * Past KERN__ATTN_SEG positions the same goes segment by segment (attn_tile_seg).
 * The tile only shares loads. Its queries are cut into chunks of consecutive queries with one
 * kv head: a K vector is widened once per chunk of up to SCH_R queries (f16), a Q8_0 K block
 * once per chunk of up to SC_R; a V row once per chunk of up to PV_R. The scores pass walks the
 * cache 16 slots at a time, every chunk taking its kv head from those slots; the V pass then
 * walks a segment (or the whole context) once per chunk and output part, its sums in registers.
 * Either way the arithmetic of a query is its own. */

#define SC_R 4                   /* queries per score chunk (Q8_0) */
#define SCH_R (VL == 16 ? 4 : 3) /* queries per score chunk (F16): 4 * SCH_R accumulators */
#define PV_R (VL == 16 ? 4 : 2)  /* queries per V chunk: PV_R x 4 accumulators */
#define AG 16                    /* slots per step of the walk; a multiple of VL */

/* Byte offset of value e in a cache row of `type` (F16, or Q8_0 with e a multiple of 32) */
static inline size_t kv_bytes(uint32_t type, size_t e) { return type == KERN_TYPE_Q8_0 ? e / KERN_QK * 34 : 2 * e; }

/* lane 0 of x in every lane */
#if VL == 8
#define vbroadcast0(x) _mm256_broadcastss_ps(x)
#else
#define vbroadcast0(x) _mm512_broadcastss_ps(x)
#endif

/* VL bytes at p, in the low bytes of a 128-bit register */
static inline __m128i ld_vl_bytes(const uint8_t *p) {
#if VL == 8
    return _mm_loadl_epi64((const __m128i *)p);
#else
    return ld128(p);
#endif
}

/* Values [e, e + VL) of a cache row as f32, p at a value that starts a Q8_0 block (e a constant
 * once inlined, so the block's scale is read once for all its vectors). Q8_0: d * (float)k for
 * each int8 k, exact in f32 (d has 11 significant bits, k 7). */
static inline __attribute__((always_inline)) VF kv_vec(uint32_t type, const uint8_t *p, int e) {
    if (type == KERN_TYPE_F16) return vload_h((const uint16_t *)p + e);
    const uint8_t *b = p + 34 * (e / KERN_QK);
    /* d: the block's first 8 bytes widened as halves (lane 0 is d), then broadcast */
    const VF d = vbroadcast0(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)b)));
    return vmul(vcvt_i8(ld_vl_bytes(b + 2 + e % KERN_QK)), d);
}

/* Slot rows of positions [c, c + AG) of a K or V cache (kv head 0); positions from n on (past the
 * longest context of the tile) get row c's, which is never used. */
static inline __attribute__((always_inline)) void attn_rows(uint32_t type, const kern_kv_view *kv, const void *base,
                                                            size_t c, size_t n, const uint8_t *rp[AG]) {
    const size_t bs = kv->block_size, row = kv_bytes(type, kv->n_kv_head * kv->head_dim);
    const uint8_t *b = base;
    if (bs % AG == 0) { /* the AG slots lie in one block */
        const uint8_t *r0 = b + ((size_t)kv->block_table[c / bs] * bs + c % bs) * row;
        for (int j = 0; j < AG; j++) rp[j] = r0 + (size_t)j * row;
        return;
    }
    for (size_t j = 0, p = c; j < AG; j++, p++)
        rp[j] = p < n ? b + ((size_t)kv->block_table[p / bs] * bs + p % bs) * row : rp[0];
}

/* KV prefetch. Past a few sequences or a long context the cache streams from L3 or DRAM, and
 * attention is bound by how many lines are in flight rather than by its arithmetic: the
 * scores pass prefetches the K of the group ATTN_PF groups of AG positions ahead, the V pass
 * likewise its V. (Also prefetching V into L2 during the scores pass was 7% faster from DRAM
 * but 14% slower with the KV in cache; measured, dropped.) Only for block_size a multiple of
 * AG (a group lies in one block). */
#define ATTN_PF 2

/* Value 0 of position p, kv head h, in a dimension-major F16 K (kern.h); value d lies d *
 * block_size halves further */
static inline const uint16_t *kt_at(const kern_kv_view *kv, size_t p, size_t h) {
    const size_t bs = kv->block_size, hd = kv->head_dim;
    return (const uint16_t *)kv->k + ((size_t)kv->block_table[p / bs] * kv->n_kv_head + h) * hd * bs + p % bs;
}

/* Prefetches an F16 K's values at positions [c, c + AG) of kv head h: value d's AG halves are
 * one 32-byte piece, block_size halves after value d - 1's. */
static inline __attribute__((always_inline)) void attn_pf_kt(const kern_kv_view *kv, size_t c, size_t h) {
    const size_t bs = kv->block_size, step = bs >= 32 ? 1 : 32 / bs;
    const uint16_t *k = kt_at(kv, c, h);
    for (size_t d = 0; d < kv->head_dim; d += step) _mm_prefetch((const char *)(k + d * bs), _MM_HINT_T0);
}

/* Prefetches bytes [off, off + n) of the rows at positions [c, c + AG) of a slot-major cache
 * (V, or a Q8_0 K) */
static inline __attribute__((always_inline)) void attn_pf_rows(uint32_t type, const kern_kv_view *kv, const void *base,
                                                               size_t c, size_t off, size_t n) {
    const size_t bs = kv->block_size;
    size_t row = kv_bytes(type, kv->n_kv_head * kv->head_dim);
    const uint8_t *r = (const uint8_t *)base + ((size_t)kv->block_table[c / bs] * bs + c % bs) * row + off;
    if (n == row) n = AG * row, row = 0; /* whole rows: one range */
    for (size_t j = 0; j < (row ? AG : 1); j++, r += row)
        for (size_t b = 0; b < n; b += 64) _mm_prefetch((const char *)(r + b), _MM_HINT_T0);
}

/* An F16 K's values at positions [c, c + AG) of kv head h, dimension-major (kern.h): value d of
 * position c + j at kt[d * ks + j]. With block_size a multiple of AG they lie in one block
 * (ks = block_size); else they are gathered into tmp (hd * AG halves; ks = AG), positions from
 * n on zero. */
static inline __attribute__((always_inline)) const uint16_t *attn_kt(const kern_kv_view *kv, size_t c, size_t n, size_t h,
                                                                   uint16_t *tmp, size_t *ks) {
    const size_t bs = kv->block_size, hd = kv->head_dim;
    if (bs % AG == 0) {
        *ks = bs;
        return kt_at(kv, c, h);
    }
    *ks = AG;
    for (size_t j = 0, p = c; j < AG; j++, p++) {
        const uint16_t *kp = kt_at(kv, p < n ? p : c, h);
        for (size_t d = 0; d < hd; d++) tmp[d * AG + j] = p < n ? kp[d * bs] : 0;
    }
    return tmp;
}

/* Scores at positions [c, c + AG) of queries [i0, i0 + R) over an F16 K, one kv head (R <= SCH_R,
 * a constant once inlined), kt/ks as attn_kt gives them. Lanes are positions: per query four
 * chains c_u = fma(K[p][d], q[d], c_u) over d = u mod 4, then ((c_0 + c_1) + (c_2 + c_3)) * scale,
 * the scalar reference's arithmetic; each d meets VL positions in one vector. Scores of positions
 * past a query's context are written too (its score row has room up to a multiple of 16) and
 * never read. */
static inline __attribute__((always_inline)) void attn_scores_h(const kern__attn_tile *t, size_t i0, const int R,
                                                                const uint16_t *kt, size_t ks, size_t c) {
    const size_t hd = t->kv->head_dim;
    const float *q[SCH_R];
    size_t n_max = 0;
    for (int r = 0; r < R; r++) {
        q[r] = t->q[i0 + r];
        n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    }
    const VF sv = vset1(t->scale);
    for (size_t h = 0; h < AG && c + h < n_max; h += VL) {
        VF acc[SCH_R][4]; /* registers: the loops over them are unrolled */
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) acc[r][u] = vzero();
        const uint16_t *kp = kt + h;
        for (size_t d = 0; d < hd; d += 4, kp += 4 * ks)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) {
                const VF k = vload_h(kp + (size_t)u * ks);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][u] = vfma(k, vset1(q[r][d + (size_t)u]), acc[r][u]);
            }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            vstore(t->sc[i0 + r] + c + h, vmul(vadd(vadd(acc[r][0], acc[r][1]), vadd(acc[r][2], acc[r][3])), sv));
    }
}

/* Scores at positions [c, c + AG) of queries [i0, i0 + R) over a Q8_0 K, one kv head (R <= SC_R,
 * a constant once inlined): the query's Q8_0 blocks meet the cache's in integers. Lane j of the
 * running sum is position j's own chain of kern_vec_dot_act (Q8_0): per block the exact integer
 * dot, then sum = fma((float)isum, d_k * d_q, sum), so the scores are bitwise the scalar
 * reference's. AVX-512: a zmm holds one block of two positions as unsigned bytes (k + 128, gw_w2),
 * shared by the R queries; vpdpbusd against the query block, started from -128 * (its 4-byte
 * sums) so the offset cancels lane by lane, and gw_reduce16 leaves position j's sum in lane j.
 * AVX2: 8 positions at a time, |k| against q * sign(k) (gv_block's arithmetic). */
static inline __attribute__((always_inline)) void attn_scores_q8(const kern__attn_tile *t, size_t i0, const int R,
                                                                 const uint8_t *const kr[AG], size_t c) {
    const size_t nb = t->kv->head_dim / KERN_QK, off = t->kvh[i0] * nb * 34;
    size_t n_max = 0;
    for (int r = 0; r < R; r++) n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    if (c >= n_max) return;
    float s[SC_R][AG];
#if VL == 16
    __m512 sum[SC_R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) sum[r] = _mm512_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const size_t ob = off + b * 34;
        __m512i kz[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) kz[k] = gw_w2(KERN_TYPE_Q8_0, kr[gw_row(k)] + ob, kr[gw_row(k) + 4] + ob);
        const __m256i dh = _mm256_setr_epi16(ld16(kr[0] + ob), ld16(kr[1] + ob), ld16(kr[2] + ob), ld16(kr[3] + ob),
                                             ld16(kr[4] + ob), ld16(kr[5] + ob), ld16(kr[6] + ob), ld16(kr[7] + ob),
                                             ld16(kr[8] + ob), ld16(kr[9] + ob), ld16(kr[10] + ob), ld16(kr[11] + ob),
                                             ld16(kr[12] + ob), ld16(kr[13] + ob), ld16(kr[14] + ob), ld16(kr[15] + ob));
        const __m512 dk = _mm512_cvtph_ps(dh);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *xb = t->qq[i0 + r] + b * 34;
            const __m512i xx = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 2)));
            const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(),
                                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), xx));
            __m512i p[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) p[k] = _mm512_dpbusd_epi32(init, kz[k], xx);
            const __m512 sf = _mm512_cvtepi32_ps(gw_reduce16(p, 0));
            sum[r] = _mm512_fmadd_ps(sf, _mm512_mul_ps(dk, _mm512_set1_ps(h2f(xb))), sum[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) _mm512_storeu_ps(s[r], _mm512_mul_ps(sum[r], _mm512_set1_ps(t->scale)));
#else
    for (int h = 0; h < AG / 8; h++) {
        const uint8_t *const *kp = kr + 8 * h;
        __m256 sum[SC_R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) sum[r] = _mm256_setzero_ps();
        for (size_t b = 0; b < nb; b++) {
            const size_t ob = off + b * 34;
            __m256i u[8], ws[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) unpack_w(KERN_TYPE_Q8_0, kp[j] + ob, &u[j], &ws[j]);
            const __m128i dh = _mm_setr_epi16(ld16(kp[0] + ob), ld16(kp[1] + ob), ld16(kp[2] + ob), ld16(kp[3] + ob),
                                              ld16(kp[4] + ob), ld16(kp[5] + ob), ld16(kp[6] + ob), ld16(kp[7] + ob));
            const __m256 dk = _mm256_cvtph_ps(dh);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *xb = t->qq[i0 + r] + b * 34;
                const __m256i x = _mm256_loadu_si256((const __m256i *)(xb + 2));
                __m256i p[8];
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) p[j] = IDOT32(u[j], _mm256_sign_epi8(x, ws[j]));
                const __m256 sf = _mm256_cvtepi32_ps(gv_reduce8(p));
                sum[r] = _mm256_fmadd_ps(sf, _mm256_mul_ps(dk, _mm256_set1_ps(h2f(xb))), sum[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) _mm256_storeu_ps(s[r] + 8 * h, _mm256_mul_ps(sum[r], _mm256_set1_ps(t->scale)));
    }
#endif
    for (int r = 0; r < R; r++) {
        const size_t n = t->n_ctx[i0 + r];
        if (c + AG <= n)
#pragma GCC unroll 2
            for (int h = 0; h < AG; h += VL) vstore(t->sc[i0 + r] + c + h, vload(s[r] + h));
        else if (c < n)
            for (size_t h = 0; h < n - c; h++) t->sc[i0 + r][c + h] = s[r][h];
    }
}

/* Output vectors [d0, d0 + NVC*VL) of queries [i0, i0 + R), one kv head, over positions
 * [c_lo, c_hi) (c_lo a multiple of AG): the running sums start from zero at c_lo = t->c0, else
 * from out, stay in registers over the range and go back to out (R <= PV_R, NVC <= 4; constants
 * once inlined, or NVC 0: nv vectors, chosen at run time). d0 is a multiple of 4 * VL, so it
 * starts a Q8_0 block. Each output value's chain is its own, whatever values are computed with
 * it. */
static inline __attribute__((always_inline)) void attn_pv(uint32_t type, const kern__attn_tile *t, size_t i0, const int R,
                                                          const int NVC, int nv, size_t d0, size_t c_lo, size_t c_hi,
                                                          int pf) {
    const int nvv = NVC ? NVC : nv, q8 = type == KERN_TYPE_Q8_0;
    const size_t off = kv_bytes(type, t->kvh[i0] * t->kv->head_dim + d0);
    const float *w[PV_R];
    float *o[PV_R];
    size_t n_min = SIZE_MAX, n_max = 0;
    for (int r = 0; r < R; r++) {
        w[r] = t->sc[i0 + r];
        o[r] = t->out[i0 + r] + d0;
        n_min = t->n_ctx[i0 + r] < n_min ? t->n_ctx[i0 + r] : n_min;
        n_max = t->n_ctx[i0 + r] > n_max ? t->n_ctx[i0 + r] : n_max;
    }
    if (c_lo >= n_max) return;
    if (c_hi > n_max) c_hi = n_max;
    VF acc[PV_R][4], v[4]; /* registers: the loops over them are unrolled */
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            acc[r][k] = c_lo != t->c0 && k < nvv ? vload(o[r] + VL * k) : vzero();
    for (size_t c = c_lo; c < c_hi; c += AG) {
        const uint8_t *vr[AG];
        if (pf && c + ATTN_PF * AG < c_hi && t->kv->block_size % AG == 0)
            attn_pf_rows(type, t->kv, t->kv->v, c + ATTN_PF * AG, off, kv_bytes(type, (size_t)nvv * VL));
        attn_rows(type, t->kv, t->kv->v, c, n_max, vr);
        /* Q8_0: the weights of the AG positions times each position's block scale, w[p] * d_b, for
         * the (at most 2) blocks of [d0, d0 + nvv*VL); the block's int8 values then meet them as
         * they are. Weight slots past n_ctx hold scratch, never used. */
        enum { NBL = 4 * VL / KERN_QK };
        float wd[q8 ? PV_R : 1][q8 ? NBL : 1][AG];
        if (q8)
#pragma GCC unroll 2
            for (int bl = 0; bl < NBL; bl++) {
                if (bl * KERN_QK >= nvv * VL) break;
                const uint8_t *const *vb = vr;
                const size_t ob = off + (size_t)bl * 34;
#pragma GCC unroll 2
                for (int h = 0; h < AG; h += VL) {
#if VL == 16
                    const VF dv = _mm512_cvtph_ps(_mm256_setr_epi16(
                        ld16(vb[h] + ob), ld16(vb[h + 1] + ob), ld16(vb[h + 2] + ob), ld16(vb[h + 3] + ob),
                        ld16(vb[h + 4] + ob), ld16(vb[h + 5] + ob), ld16(vb[h + 6] + ob), ld16(vb[h + 7] + ob),
                        ld16(vb[h + 8] + ob), ld16(vb[h + 9] + ob), ld16(vb[h + 10] + ob), ld16(vb[h + 11] + ob),
                        ld16(vb[h + 12] + ob), ld16(vb[h + 13] + ob), ld16(vb[h + 14] + ob), ld16(vb[h + 15] + ob)));
#else
                    const VF dv =
                        _mm256_cvtph_ps(_mm_setr_epi16(ld16(vb[h] + ob), ld16(vb[h + 1] + ob), ld16(vb[h + 2] + ob),
                                                       ld16(vb[h + 3] + ob), ld16(vb[h + 4] + ob), ld16(vb[h + 5] + ob),
                                                       ld16(vb[h + 6] + ob), ld16(vb[h + 7] + ob)));
#endif
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++)
                        vstore(wd[q8 ? r : 0][q8 ? bl : 0] + h, vmul(vload(w[r] + c + h), dv));
                }
            }
        const size_t e = c + AG < c_hi ? c + AG : c_hi, m = n_min < e ? n_min : e;
#define PV_LOAD(k)                                                                                                     \
    (q8 ? vcvt_i8(ld_vl_bytes(vp + 34 * (VL * (k) / KERN_QK) + 2 + VL * (k) % KERN_QK)) : kv_vec(type, vp, VL * (k)))
#define PV_W(r, k) (q8 ? vset1(wd[q8 ? r : 0][q8 ? VL * (k) / KERN_QK : 0][p - c]) : vset1(w[r][p]))
        size_t p = c;
        for (; p < m; p++) { /* positions every query of the chunk reaches */
            const uint8_t *vp = vr[p - c] + off;
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                if (k < nvv) v[k] = PV_LOAD(k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    if (k < nvv) acc[r][k] = vfma(PV_W(r, k), v[k], acc[r][k]);
        }
        for (; p < e; p++) { /* the causal tail: only the queries that reach p */
            const uint8_t *vp = vr[p - c] + off;
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                if (k < nvv) v[k] = PV_LOAD(k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                if (p >= t->n_ctx[i0 + r]) continue;
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    if (k < nvv) acc[r][k] = vfma(PV_W(r, k), v[k], acc[r][k]);
            }
        }
#undef PV_LOAD
#undef PV_W
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            if (k < nvv) vstore(o[r] + VL * k, acc[r][k]);
}

/* Scores at positions [c, c + AG) of every chunk of a tile (chunk k: queries [ci[k], ci[k] +
 * cr[k]), one kv head); n: the tile's longest context */
static inline __attribute__((always_inline)) void attn_k_group(uint32_t type, const kern__attn_tile *t, size_t c, size_t n,
                                                               const size_t *ci, const int *cr, int nc) {
    const size_t cp = c + ATTN_PF * AG, hd = t->kv->head_dim;
    const bool pf = cp < n && t->kv->block_size % AG == 0;
    if (type == KERN_TYPE_Q8_0) {
        const uint8_t *rp[AG];
        if (pf) attn_pf_rows(type, t->kv, t->kv->k, cp, 0, kv_bytes(type, t->kv->n_kv_head * hd)); /* whole rows */
        attn_rows(type, t->kv, t->kv->k, c, n, rp);
        for (int k = 0; k < nc; k++) switch (cr[k]) {
            case 1: attn_scores_q8(t, ci[k], 1, rp, c); break;
            case 2: attn_scores_q8(t, ci[k], 2, rp, c); break;
            case 3: attn_scores_q8(t, ci[k], 3, rp, c); break;
            default: attn_scores_q8(t, ci[k], 4, rp, c); break;
            }
        return;
    }
    uint16_t tmp[t->kv->block_size % AG ? hd * AG : 1]; /* head_dim <= 1024 */
    for (int k = 0; k < nc; k++) {
        size_t ks;
        if (pf && (k == 0 || t->kvh[ci[k]] != t->kvh[ci[k - 1]])) {
            attn_pf_kt(t->kv, cp, t->kvh[ci[k]]);
        }
        const uint16_t *kt = attn_kt(t->kv, c, n, t->kvh[ci[k]], tmp, &ks);
        switch (cr[k]) {
        case 1: attn_scores_h(t, ci[k], 1, kt, ks, c); break;
        case 2: attn_scores_h(t, ci[k], 2, kt, ks, c); break;
#if SCH_R > 3
        case 3: attn_scores_h(t, ci[k], 3, kt, ks, c); break;
#endif
        default: attn_scores_h(t, ci[k], SCH_R, kt, ks, c); break;
        }
    }
}

/* attn_pv with R and NVC constants: R queries (1..PV_R), NV vectors (2 or 4) */
#if PV_R > 2
#define PV_SWITCH(NV)                                                                                                  \
    switch (R) {                                                                                                       \
    case 1: attn_pv(type, t, i0, 1, NV, NV, d0, c_lo, c_hi, pf); break;                                                         \
    case 2: attn_pv(type, t, i0, 2, NV, NV, d0, c_lo, c_hi, pf); break;                                                         \
    case 3: attn_pv(type, t, i0, 3, NV, NV, d0, c_lo, c_hi, pf); break;                                                         \
    default: attn_pv(type, t, i0, PV_R, NV, NV, d0, c_lo, c_hi, pf); break;                                                     \
    }
#else
#define PV_SWITCH(NV)                                                                                                  \
    if (R == 1) attn_pv(type, t, i0, 1, NV, NV, d0, c_lo, c_hi, pf);                                                            \
    else attn_pv(type, t, i0, PV_R, NV, NV, d0, c_lo, c_hi, pf);
#endif

static inline __attribute__((always_inline)) void attn_pv_any(uint32_t type, const kern__attn_tile *t, size_t i0, int R,
                                                              int nv, size_t d0, size_t c_lo, size_t c_hi, int pf) {
    if (nv == 4) {
        PV_SWITCH(4)
    } else if (nv == 2) { /* a head's last 2 vectors (head_dim 96 or 160 on AVX-512, 48 on AVX2) */
        PV_SWITCH(2)
    } else { /* head_dim not a multiple of 2 vectors: its last part, one query at a time */
        for (int r = 0; r < R; r++) attn_pv(type, t, i0 + (size_t)r, 1, 0, nv, d0, c_lo, c_hi, pf && r == 0);
    }
}
#undef PV_SWITCH

/* Cuts the tile into chunks of consecutive queries with one kv head, at most rmax each:
 * chunk k is queries [i0[k], i0[k] + nr[k]). Returns the number of chunks. */
static int attn_chunks(const kern__attn_tile *t, int rmax, size_t i0[KERN__ATTN_QT], int nr[KERN__ATTN_QT]) {
    int n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (n && t->kvh[i] == t->kvh[i0[n - 1]] && nr[n - 1] < rmax) nr[n - 1]++;
        else i0[n] = i, nr[n++] = 1;
    }
    return n;
}

/* The largest of n scores */
static inline __attribute__((always_inline)) float scores_max(const float *x, size_t n) {
    VF m = vset1(-INFINITY);
    size_t i = 0;
    for (; i + VL <= n; i += VL) m = vmax(m, vload(x + i));
    float mx = vhmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* Softmax of n scores in place; round_h: the weights then rounded to f16 (an f16 cache's V) */
static inline __attribute__((always_inline)) void softmax_w(float *x, size_t n, const int round_h) {
    const float mx = scores_max(x, n);
    size_t i;
    VF sv = vzero(), mv = vset1(mx);
    for (i = 0; i + VL <= n; i += VL) {
        VF e = vexp(vsub(vload(x + i), mv));
        vstore(x + i, e);
        sv = vadd(sv, e);
    }
    double sum = vhsum(sv);
    for (; i < n; i++) sum += x[i] = expf(x[i] - mx);
    const float inv = (float)(1.0 / sum);
    const VF iv = vset1(inv);
    for (i = 0; i + VL <= n; i += VL) vstore(x + i, round_h ? vround_h(vmul(vload(x + i), iv)) : vmul(vload(x + i), iv));
    for (; i < n; i++) x[i] = round_h ? _cvtsh_ss(kern_f32_to_f16(x[i] * inv)) : x[i] * inv;
}

/* One segment's softmax pieces over its n scores x: m = their max, x[p] = exp(x[p] - m) (then
 * rounded to f16 for an f16 cache, as softmax_w), l = the sum of the unrounded exponentials */
static inline __attribute__((always_inline)) void softmax_seg(float *x, size_t n, const int round_h, float *m_out,
                                                              float *l_out) {
    const float mx = scores_max(x, n);
    size_t i;
    VF sv = vzero(), mv = vset1(mx);
    for (i = 0; i + VL <= n; i += VL) {
        VF e = vexp(vsub(vload(x + i), mv));
        sv = vadd(sv, e);
        vstore(x + i, round_h ? vround_h(e) : e);
    }
    float sum = vhsum(sv);
    for (; i < n; i++) {
        const float e = expf(x[i] - mx);
        sum += e;
        x[i] = round_h ? _cvtsh_ss(kern_f32_to_f16(e)) : e;
    }
    *m_out = mx, *l_out = sum;
}

/* A tile of queries at contexts over KERN__ATTN_SEG: segment by segment, the scores, their
 * softmax pieces and the weighted V sums (into ot), each query's result independent of the
 * others as in attn_tile; then stored as partials (pt) or folded into out in segment order. */
static inline __attribute__((always_inline)) void attn_tile_seg(uint32_t type, const kern__attn_tile *t) {
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim;
    size_t n_max = 0, ci[KERN__ATTN_QT];
    int cr[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) n_max = t->n_ctx[i] > n_max ? t->n_ctx[i] : n_max;
    kern__attn_tile u = *t; /* V sums into ot */
    for (size_t i = 0; i < t->n; i++) u.out[i] = t->ot[i];
    float M[KERN__ATTN_QT], L[KERN__ATTN_QT], m[KERN__ATTN_QT], l[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) M[i] = -INFINITY, L[i] = 0;
    const int nsc = attn_chunks(t, type == KERN_TYPE_F16 ? SCH_R : SC_R, ci, cr);
    size_t pi[KERN__ATTN_QT];
    int pr[KERN__ATTN_QT];
    const int npv = attn_chunks(t, PV_R, pi, pr);
    for (size_t sg = t->s_lo; sg < t->s_hi && sg * KERN__ATTN_SEG < n_max; sg++) {
        const size_t s0 = sg * KERN__ATTN_SEG, s1 = s0 + KERN__ATTN_SEG < n_max ? s0 + KERN__ATTN_SEG : n_max;
        u.c0 = s0;
        for (size_t c = s0; c < s1; c += AG) attn_k_group(type, &u, c, n_max, ci, cr, nsc);
        for (size_t i = 0; i < t->n; i++)
            if (t->n_ctx[i] > s0)
                softmax_seg(t->sc[i] + s0, (t->n_ctx[i] < s1 ? t->n_ctx[i] : s1) - s0, type == KERN_TYPE_F16, &m[i], &l[i]);
        for (int k = 0; k < npv; k++)
            for (size_t d0 = 0; d0 < hd; d0 += 4 * VL)
                attn_pv_any(type, &u, pi[k], pr[k], hd - d0 < 4 * VL ? (int)((hd - d0) / VL) : 4, d0, s0, s1,
                            k == 0 || t->kvh[pi[k]] != t->kvh[pi[k - 1]]);
        for (size_t i = 0; i < t->n; i++) {
            if (t->n_ctx[i] <= s0) continue;
            if (t->pt[i]) {
                float *pp = t->pt[i] + sg * (hd + 2);
                memcpy(pp, t->ot[i], hd * sizeof(float));
                pp[hd] = m[i], pp[hd + 1] = l[i];
            } else {
                kern__attn_fold(t->out[i], &M[i], &L[i], t->ot[i], m[i], l[i], hd);
            }
        }
    }
    for (size_t i = 0; i < t->n; i++)
        if (!t->pt[i]) kern__attn_fold_end(t->out[i], L[i], hd);
}

static inline __attribute__((always_inline)) void attn_tile(uint32_t type, const kern__attn_tile *t) {
    if (t->n_ctx[0] > KERN__ATTN_SEG) {
        attn_tile_seg(type, t);
        return;
    }
    const kern_kv_view *kv = t->kv;
    const size_t hd = kv->head_dim;
    size_t n_max = 0, ci[KERN__ATTN_QT];
    int cr[KERN__ATTN_QT];
    for (size_t i = 0; i < t->n; i++) n_max = t->n_ctx[i] > n_max ? t->n_ctx[i] : n_max;
    int nc = attn_chunks(t, type == KERN_TYPE_F16 ? SCH_R : SC_R, ci, cr);
    for (size_t c = 0; c < n_max; c += AG) attn_k_group(type, t, c, n_max, ci, cr, nc);
    for (size_t i = 0; i < t->n; i++) softmax_w(t->sc[i], t->n_ctx[i], type == KERN_TYPE_F16);
    nc = attn_chunks(t, PV_R, ci, cr);
    for (int k = 0; k < nc; k++)
        for (size_t d0 = 0; d0 < hd; d0 += 4 * VL)
            attn_pv_any(type, t, ci[k], cr[k], hd - d0 < 4 * VL ? (int)((hd - d0) / VL) : 4, d0, 0, n_max,
                        k == 0 || t->kvh[ci[k]] != t->kvh[ci[k - 1]]);
}

static void attn_f16(const kern__attn_tile *t) {
    if (t->kv->head_dim % VL || t->kv->head_dim > 1024) kern__ops_scalar.attn_f16(t);
    else attn_tile(KERN_TYPE_F16, t);
}

static void attn_q8(const kern__attn_tile *t) {
    if (t->kv->head_dim % KERN_QK || t->kv->head_dim > 1024) kern__ops_scalar.attn_q8(t);
    else attn_tile(KERN_TYPE_Q8_0, t);
}
