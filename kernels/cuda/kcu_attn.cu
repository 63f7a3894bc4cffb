/* CUDA attention over the paged f16 KV cache (layout K[block][slot][kv_head][head_dim], as the
 * CPU's kern_attn_paged reads it). Two kernels: k_attn_dec for decode (one query per sequence:
 * memory-bound, it has to stream the cache at close to HBM speed) and k_attn_pre for prefill tiles.
 *
 * Decode, k_attn_dec<L, W, GC>: one block of 128 threads per (tile, kv head, chunk of GC <= 4 of
 * that kv head's q heads, key split).
 *  - GQA: the block computes all the heads of its chunk, so each K/V row is read once per step
 *    instead of once per q head. Larger groups are cut into chunks (16 -> 4 x 4, 6 -> 3 + 3); the
 *    blocks of a kv head's chunks read the same rows, the second time mostly from L2.
 *  - Lanes split a row: a sub-warp of L lanes (8, 16, 32 for head_dim up to 64, 128, 256) takes one
 *    key; each lane holds 8 halves of its K row and of its V row: one 16-byte load each (W = 8)
 *    when rows are 16-byte aligned (head_dim % 8 == 0 and aligned caches), else four 4-byte loads
 *    (W = 2, L = 32). A sub-warp takes U = dec_u(W) keys per round (keys base + u*NSUB + sub-warp,
 *    so that a short split still spreads over all sub-warps) and issues its 2*U loads before
 *    using any: 256 bytes in flight per lane. The slots of the next round's keys (block table
 *    loads, page found with a multiply-shift instead of a division) are fetched one round ahead,
 *    one key per lane, and handed out with shuffles.
 *  - Scores: q is held in registers (the lane's 8 dims of each head, rounded to f16 as the CPU
 *    does, times scale*log2(e)). The V = U*GC partial dot products of a lane are summed over the
 *    sub-warp by a reduce-scatter (each xor step halves the values a lane carries), so that each
 *    lane ends with B = V/L (at least 1) whole scores for about V shuffles per lane instead of
 *    V*log2(L); the round's per-head max is an xor max over the sub-warp; each score's p is
 *    computed once, by its lane, and the sub-warp reads all V of them back from shared memory
 *    (pbuf, behind __syncwarp) for the P.V update.
 *  - Online softmax per head in log2 units (ex2.approx): running max m and sum l; the f32 output
 *    accumulators (8 dims x GC heads per lane, registers) are rescaled once per round, then the
 *    round's p*V is added. Scores, softmax and accumulation are f32.
 *  - End: the sub-warps' (m, l, O) meet in shared memory (comb: 1024*GC floats, 16 KB at GC = 4,
 *    whatever head_dim; pbuf adds NSUB*V floats, 1 KB at head_dim 128) and the block writes the
 *    normalised output when it has the whole context (one split), else a partial (O, m, l) per
 *    head that k_attn_merge combines with a log-sum-exp (an empty split writes O = 0, m = -inf,
 *    l = 0 and gets weight 0).
 *  - Split count (dec_splits): a block's time hardly depends on how many of a round's keys are
 *    valid, so splits hold whole rounds; as many splits as fill one wave of resident blocks (SMs x
 *    blocks per SM from the occupancy calculator), at most DEC_MAX_KEYS keys each once the GPU is
 *    full anyway, at most KCU_ATTN_MAX_SPLITS and what the scratch holds (none: one split).
 *  Registers: launch bounds ask for 3 blocks per SM (<= 168 registers) at 3-4 heads per block, 4
 *  (<= 128) at 1-2; no spills on sm_80/sm_90 with CUDA 13 (168 for head_dim 128 at 4 heads).
 *
 * Prefill, k_attn_pre<QT, KT>: one block of 128 threads per (tile of up to QT query tokens of one
 * sequence, head). It walks the keys in tiles of KT: K and V rows are gathered from their physical
 * blocks into shared memory (f16, K rows padded by 2 halves so that threads reading different
 * keys hit different banks), scores q.k * scale for every (query, key) with the causal mask (key
 * position <= query position), then an online softmax per query (running max m and sum l; old
 * output rescaled by exp(m_old - m_new)) and the P.V update of the f32 output held in shared
 * memory, normalised at the end. Shared memory per block (floats/halves): Qs QT*hd f32, O QT*hd
 * f32, S QT*KT f32, m/l/alpha 3*QT f32, Ks KT*(hd+2) f16, Vs KT*hd f16: 35 KB for the prefill
 * tile at hd 128; above 48 KB (hd 256) the launcher opts in to more. */
#include <math.h>
#include <mma.h>

#include "kernels/cuda/kcu_internal.cuh"

#define KCU_ATTN_THREADS 128
#define ATTN_LOG2E 1.4426950408889634f

/* ------------------------------------------------------------------------------------------ */
/* Decode                                                                                      */
/* ------------------------------------------------------------------------------------------ */

#define DEC_THREADS 128
#define DEC_GC_MAX 4     /* q heads per block; larger groups are cut into chunks */
#define DEC_MAX_KEYS 256 /* most keys per split even when the GPU is already full */

/* Keys per sub-warp per round (2x that many loads in flight per lane): 8 with 16-byte loads, 4 with
 * the four 4-byte loads per row of the fallback. A block's round covers (128 / L) * dec_u(W) keys. */
__host__ __device__ constexpr int dec_u(int w) { return w == 8 ? 8 : 4; }

/* Everything k_attn_dec reads; one split when n_splits == 1 (part unused). */
struct dec_args {
    const __half *k, *v;           /* (n_slots, n_kv_head, hd) f16 each */
    const int32_t *bt;             /* concatenated block tables */
    const float *q;                /* (T, n_head*hd) */
    float *out;                    /* (T, n_head*hd) */
    float *part;                   /* (n_tiles, n_head, n_splits, hd + 2): O, m (log2 units), l */
    const kcu_attn_tile *tiles;    /* (n_tiles) one-token tiles */
    int n_head, group, n_chunks;   /* group = n_head / n_kv_head; n_chunks * GC >= group */
    int hd, bs, kv_row;            /* head_dim, block_size, n_kv_head * head_dim */
    int n_splits, kps;             /* split s holds keys [s*kps, (s+1)*kps), the last one the rest */
    uint32_t bs_mul;               /* p / bs == (umulhi(p, bs_mul) + p) >> bs_shift for 0 <= p < 2^31 */
    int bs_shift;
    float qscale;                  /* scale * log2(e) */
};

/* Page (block table index) of key p. */
__device__ __forceinline__ int dec_page(int p, const dec_args &a) {
    return (int)((__umulhi((uint32_t)p, a.bs_mul) + (uint32_t)p) >> a.bs_shift);
}

/* The lane's 8 halves of a K or V row as 4 half2 words: word i holds dims (c*L + sub)*W + j of
 * chunk c = 2i/W, j = 2i%W and +1. Zeros for a key past the split or dims past hd. */
template <int L, int W>
__device__ __forceinline__ void dec_load(const __half *row, uint32_t w[4], bool valid, int hd, int sub) {
    if constexpr (W == 8) {
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (valid && sub * 8 < hd) x = __ldg(reinterpret_cast<const uint4 *>(row + sub * 8));
        w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
    } else {
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int d0 = (c * L + sub) * 2;
            w[c] = (valid && d0 < hd) ? __ldg(reinterpret_cast<const unsigned int *>(row + d0)) : 0u;
        }
    }
}

/* Halving steps of a reduce-scatter of v values over l lanes: while v is even, > 1 and lanes are left. */
__host__ __device__ constexpr int dec_halvings(int v, int l) {
    int h = 0;
    while (l > 1 && v % 2 == 0 && v > 1) v /= 2, l /= 2, h++;
    return h;
}

/* STEPS halving steps of the score reduction over n values x[0..N): with MASK's bit set a lane keeps
 * the upper half, else the lower one, and adds the partner's copy of it; x[0..N/2) is what is kept.
 * A recursion so that every index is a constant (a loop over the steps left x in local memory). */
template <int N, int MASK, int STEPS>
__device__ __forceinline__ void dec_halve(float *x, int sub) {
    if constexpr (STEPS > 0) {
        const bool up = (sub & MASK) != 0;
#pragma unroll
        for (int i = 0; i < N / 2; i++) {
            const float send = up ? x[i] : x[i + N / 2], keep = up ? x[i + N / 2] : x[i];
            x[i] = keep + __shfl_xor_sync(0xffffffffu, send, MASK);
        }
        dec_halve<N / 2, MASK / 2, STEPS - 1>(x, sub);
    }
}

/* 2^x with one MUFU.EX2 (relative error ~2^-22; 0 for x = -inf, subnormal results flushed to 0). */
__device__ __forceinline__ float dec_exp2(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

__device__ __forceinline__ void dec_unpack(const uint32_t w[4], float f[8]) {
#pragma unroll
    for (int i = 0; i < 4; i++) f[2 * i] = kcu__h2f(w[i]), f[2 * i + 1] = kcu__h2f(w[i] >> 16);
}

/* Occupancy target: 3 blocks per SM (<= 168 registers) with 3-4 heads per block, 4 (<= 128) with
 * 1-2; ptxas fits every instantiation without spills (sm_80, sm_90). */
template <int L, int W, int GC>
__global__ void __launch_bounds__(DEC_THREADS, GC <= 2 ? 4 : 3) k_attn_dec(const dec_args a) {
    constexpr int NSUB = DEC_THREADS / L; /* sub-warps: keys in flight per load step */
    constexpr int DW = 8 * L;             /* row width the L lanes cover (>= hd) */
    constexpr int U = dec_u(W), STEP = NSUB * U;
    constexpr int V = U * GC;                /* scores per sub-warp per round */
    constexpr int H = dec_halvings(V, L);    /* halving steps of the score reduction */
    constexpr int B = V >> H;                /* scores each lane ends with */
    static_assert(W == 8 || (W == 2 && L == 32), "lanes hold 8 halves: one 16-byte or four 4-byte chunks");
    static_assert(V % 4 == 0, "pbuf rows are read as float4");
    /* per sub-warp: the round's p (pbuf); at the end the partial output, its max/sum, the weights */
    __shared__ __align__(16) float pbuf[NSUB * V];
    __shared__ __align__(16) float comb[NSUB * GC * DW];
    __shared__ float sm_m[NSUB * GC], sm_l[NSUB * GC], wgt[NSUB * GC], fin_m[GC], fin_l[GC];

    const int tid = threadIdx.x, sw = tid / L, sub = tid % L, hd = a.hd;
    const kcu_attn_tile tl = a.tiles[blockIdx.x];
    const int kvh = blockIdx.y / a.n_chunks, chunk = blockIdx.y % a.n_chunks;
    const int h0 = kvh * a.group + chunk * GC, ng = min(GC, a.group - chunk * GC);
    const int split = blockIdx.z, n_keys = tl.pos0 + 1; /* the query at pos0 sees keys [0, pos0] */
    const int k_begin = split * a.kps;
    const int k_end = split == a.n_splits - 1 ? n_keys : min(n_keys, k_begin + a.kps);
    const int32_t *bt = a.bt + tl.bt_off;
    const size_t kv_off = (size_t)kvh * hd;

    /* Slots of a round's keys: lane sub < U of a sub-warp finds the slot of the sub-warp's key u =
     * sub (block table entry pgx, offset in the page remx), one round ahead so that the table load
     * overlaps the previous round; the sub-warp reads them with shuffles. First round here: its
     * table loads overlap the q loads below. */
    int pgx = 0, remx = 0;
    if (sub < U && k_begin + sub * NSUB + sw < k_end) {
        const int p = k_begin + sub * NSUB + sw, blk = dec_page(p, a);
        pgx = bt[blk], remx = p - blk * a.bs;
    }
    const int lane0 = (tid & 31) & ~(L - 1); /* first lane of the sub-warp */
    const int j0 = B * (sub / (L >> H));     /* the lane's first score after the reduction */
    /* q of the chunk's heads, the lane's 8 dims, rounded to f16 as the CPU does with an f16 cache */
    float qf[GC][8];
    const float *qrow = a.q + (size_t)tl.t0 * a.n_head * hd + (size_t)h0 * hd;
#pragma unroll
    for (int g = 0; g < GC; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int d = ((e / W) * L + sub) * W + e % W;
            float x = 0.0f;
            if (g < ng && d < hd) x = __half2float(__float2half(qrow[(size_t)g * hd + d])) * a.qscale;
            qf[g][e] = x;
        }

    float o[GC][8], m[GC], l[GC];
#pragma unroll
    for (int g = 0; g < GC; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) o[g][e] = 0.0f;
    }

    for (int base = k_begin; base < k_end; base += STEP) { /* block-uniform trip count */
        uint32_t kw[U][4], vw[U][4];
        bool valid[U];
        const int my_slot = pgx * a.bs + remx;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int slot = __shfl_sync(0xffffffffu, my_slot, lane0 + u);
            valid[u] = base + u * NSUB + sw < k_end;
            const size_t row = (size_t)slot * a.kv_row + kv_off;
            dec_load<L, W>(a.k + row, kw[u], valid[u], hd, sub);
            dec_load<L, W>(a.v + row, vw[u], valid[u], hd, sub);
        }
        /* next round's slots, in flight while this round is computed */
        pgx = 0, remx = 0;
        if (sub < U && base + STEP + sub * NSUB + sw < k_end) {
            const int p = base + STEP + sub * NSUB + sw, blk = dec_page(p, a);
            pgx = bt[blk], remx = p - blk * a.bs;
        }
        /* scores in log2 units: partial dot products over the lane's dims, x[u*GC + g] */
        float x[V];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            dec_unpack(kw[u], kf);
#pragma unroll
            for (int g = 0; g < GC; g++) {
                float acc = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc = fmaf(qf[g][e], kf[e], acc);
                x[u * GC + g] = acc;
            }
        }
        /* Sum over the sub-warp, scattering: at each of the H halving steps (masks L/2, L/4, ..) a
         * lane keeps one half of its values, sends the other half to its partner and adds what it
         * gets, then plain xor steps for the masks left. The lane ends with the full scores
         * j0 .. j0+B-1, about V/L shuffles per lane instead of V*log2(L). */
        dec_halve<V, L / 2, H>(x, sub);
#pragma unroll
        for (int mask = L >> (H + 1); mask > 0; mask >>= 1)
#pragma unroll
            for (int i = 0; i < B; i++) x[i] += __shfl_xor_sync(0xffffffffu, x[i], mask);
        /* the round's max per head over the valid keys, then the new running max */
        float mg[GC];
#pragma unroll
        for (int g = 0; g < GC; g++) mg[g] = -INFINITY;
#pragma unroll
        for (int i = 0; i < B; i++) {
            const int j = j0 + i, gi = j % GC;
            if (base + j / GC * NSUB + sw < k_end)
#pragma unroll
                for (int g = 0; g < GC; g++)
                    if (g == gi) mg[g] = fmaxf(mg[g], x[i]);
        }
        float alpha[GC];
#pragma unroll
        for (int g = 0; g < GC; g++) {
#pragma unroll
            for (int mask = L / 2; mask > 0; mask >>= 1)
                mg[g] = fmaxf(mg[g], __shfl_xor_sync(0xffffffffu, mg[g], mask));
            const float mx = fmaxf(m[g], mg[g]);
            /* mx == -inf only while the sub-warp has seen no key: then O and l are 0 */
            alpha[g] = m[g] == -INFINITY ? 0.0f : dec_exp2(m[g] - mx);
            m[g] = mx;
        }
        /* p of the lane's scores, to the sub-warp's row of pbuf (one writer per score), and back as
         * all V of them */
        float *pb = pbuf + sw * V;
        __syncwarp(); /* the previous round's reads of pb are done */
        if ((sub & ((L >> H) - 1)) == 0)
#pragma unroll
            for (int i = 0; i < B; i++) {
                const int j = j0 + i, gi = j % GC;
                float mi = m[0];
#pragma unroll
                for (int g = 1; g < GC; g++)
                    if (g == gi) mi = m[g];
                pb[j] = base + j / GC * NSUB + sw < k_end ? dec_exp2(x[i] - mi) : 0.0f;
            }
        __syncwarp();
        float pv[V];
#pragma unroll
        for (int i = 0; i < V / 4; i++) {
            const float4 t = reinterpret_cast<const float4 *>(pb)[i];
            pv[4 * i] = t.x, pv[4 * i + 1] = t.y, pv[4 * i + 2] = t.z, pv[4 * i + 3] = t.w;
        }
#pragma unroll
        for (int g = 0; g < GC; g++) {
            float sum = 0.0f;
#pragma unroll
            for (int u = 0; u < U; u++) sum += pv[u * GC + g];
            l[g] = l[g] * alpha[g] + sum;
#pragma unroll
            for (int e = 0; e < 8; e++) o[g][e] *= alpha[g];
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[8];
            dec_unpack(vw[u], vf);
#pragma unroll
            for (int g = 0; g < GC; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) o[g][e] = fmaf(pv[u * GC + g], vf[e], o[g][e]);
        }
    }

    /* merge the sub-warps: (m, l, O) to shared memory (each sub-warp its own rows) */
#pragma unroll
    for (int g = 0; g < GC; g++) {
        float *dst = comb + (sw * GC + g) * DW;
        if constexpr (W == 8) {
            reinterpret_cast<float4 *>(dst + sub * 8)[0] = make_float4(o[g][0], o[g][1], o[g][2], o[g][3]);
            reinterpret_cast<float4 *>(dst + sub * 8)[1] = make_float4(o[g][4], o[g][5], o[g][6], o[g][7]);
        } else {
#pragma unroll
            for (int c = 0; c < 4; c++)
                *reinterpret_cast<float2 *>(dst + (c * L + sub) * 2) = make_float2(o[g][2 * c], o[g][2 * c + 1]);
        }
        if (sub == 0) sm_m[sw * GC + g] = m[g], sm_l[sw * GC + g] = l[g];
    }
    __syncthreads();
    if (tid < GC) { /* per head: the block's max, sum and the sub-warps' weights */
        const int g = tid;
        float mx = -INFINITY, den = 0.0f;
        for (int i = 0; i < NSUB; i++) mx = fmaxf(mx, sm_m[i * GC + g]);
        for (int i = 0; i < NSUB; i++) {
            const float mi = sm_m[i * GC + g], e = mi == -INFINITY ? 0.0f : dec_exp2(mi - mx);
            wgt[i * GC + g] = e;
            den += e * sm_l[i * GC + g];
        }
        if (a.n_splits == 1) { /* normalised output; den > 0 since the block saw key 0 */
            const float r = den > 0.0f ? 1.0f / den : 0.0f;
            for (int i = 0; i < NSUB; i++) wgt[i * GC + g] *= r;
        }
        fin_m[g] = mx, fin_l[g] = den;
    }
    __syncthreads();
    for (int g = 0; g < ng; g++) {
        const int h = h0 + g;
        float *dst = a.n_splits == 1
                         ? a.out + (size_t)tl.t0 * a.n_head * hd + (size_t)h * hd
                         : a.part + (((size_t)blockIdx.x * a.n_head + h) * a.n_splits + split) * (size_t)(hd + 2);
        for (int d = tid; d < hd; d += DEC_THREADS) {
            float acc = 0.0f;
#pragma unroll 4
            for (int i = 0; i < NSUB; i++) acc = fmaf(wgt[i * GC + g], comb[(i * GC + g) * DW + d], acc);
            dst[d] = acc;
        }
        if (a.n_splits > 1 && tid == 0) dst[hd] = fin_m[g], dst[hd + 1] = fin_l[g];
    }
}

/* out row of (tile, head) = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s over the splits. */
__global__ void __launch_bounds__(128)
    k_attn_merge(float *out, const kcu_attn_tile *tiles, const float *part, int n_head, int hd, int n_splits) {
    __shared__ float w[KCU_ATTN_MAX_SPLITS];
    const int h = blockIdx.y, tid = threadIdx.x;
    const size_t stride = (size_t)hd + 2;
    const float *pp = part + ((size_t)blockIdx.x * n_head + h) * n_splits * stride;
    if (tid < 32) { /* one warp: the splits' weights (n_splits <= 32) */
        float ms = -INFINITY, ls = 0.0f;
        if (tid < n_splits) ms = pp[tid * stride + hd], ls = pp[tid * stride + hd + 1];
        float mx = ms;
        for (int x = 16; x > 0; x >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, x));
        const float e = ms == -INFINITY ? 0.0f : exp2f(ms - mx); /* an empty split has O = 0, l = 0 */
        float den = e * ls;
        for (int x = 16; x > 0; x >>= 1) den += __shfl_xor_sync(0xffffffffu, den, x);
        w[tid] = den > 0.0f ? e / den : 0.0f;
    }
    __syncthreads();
    float *dst = out + (size_t)tiles[blockIdx.x].t0 * n_head * hd + (size_t)h * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 8
        for (int s = 0; s < n_splits; s++) acc = fmaf(w[s], pp[s * stride + d], acc);
        dst[d] = acc;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Prefill                                                                                     */
/* ------------------------------------------------------------------------------------------ */

struct attn_dev {
    const __half *k, *v;
    const int32_t *bt;
    int n_head, group, hd, bs, kv_row;
    float scale;
};

static size_t attn_smem(int qt, int kt, int hd) {
    return (size_t)(2 * qt * hd + qt * kt + 3 * qt) * 4 + (size_t)kt * (hd + 2) * 2 + (size_t)kt * hd * 2;
}

template <int QT, int KT>
__global__ void __launch_bounds__(KCU_ATTN_THREADS)
    k_attn_pre(float *out, const float *q, attn_dev a, const kcu_attn_tile *tiles) {
    extern __shared__ float4 smem4[]; /* float4: 16-byte alignment of the base */
    float *smem = reinterpret_cast<float *>(smem4);
    const int hd = a.hd, tid = threadIdx.x, hs = hd + 2; /* hs: padded K row, in halves */
    float *Qs = smem, *O = Qs + QT * hd, *S = O + QT * hd, *M = S + QT * KT, *L = M + QT, *AL = L + QT;
    __half *Ks = reinterpret_cast<__half *>(AL + QT), *Vs = Ks + KT * hs;
    const kcu_attn_tile tl = tiles[blockIdx.x];
    const int h = blockIdx.y, kvh = h / a.group;
    const size_t q_stride = (size_t)a.n_head * hd;
    const int n_keys = tl.pos0 + tl.n_q; /* keys seen by the tile's last query */
    for (int i = tid; i < QT * hd; i += blockDim.x) {
        int qi = i / hd, d = i % hd;
        float v = 0.0f;
        if (qi < tl.n_q) v = __half2float(__float2half(q[(size_t)(tl.t0 + qi) * q_stride + (size_t)h * hd + d]));
        Qs[i] = v; /* q rounded to f16 as the CPU does with an f16 cache */
        O[i] = 0.0f;
    }
    if (tid < QT) M[tid] = -INFINITY, L[tid] = 0.0f;
    __syncthreads();
    const int hd2 = hd / 2;
    for (int kb = 0; kb < n_keys; kb += KT) {
        const int nk = min(KT, n_keys - kb);
        /* gather K/V rows of keys kb .. kb+nk-1 (half2 granularity: hd even, rows 4-byte aligned) */
        for (int i = tid; i < KT * hd2; i += blockDim.x) {
            int kk = i / hd2, d2 = i % hd2;
            __half2 kv = __float2half2_rn(0.0f), vv = kv;
            if (kk < nk) {
                int p = kb + kk;
                size_t slot = (size_t)a.bt[tl.bt_off + p / a.bs] * a.bs + p % a.bs;
                size_t off = slot * a.kv_row + (size_t)kvh * hd + 2 * d2;
                kv = *reinterpret_cast<const __half2 *>(a.k + off);
                vv = *reinterpret_cast<const __half2 *>(a.v + off);
            }
            reinterpret_cast<__half2 *>(Ks + kk * hs)[d2] = kv;
            reinterpret_cast<__half2 *>(Vs + kk * hd)[d2] = vv;
        }
        __syncthreads();
        /* scores with the causal mask */
        for (int i = tid; i < QT * KT; i += blockDim.x) {
            int qi = i / KT, kk = i % KT;
            float s = -INFINITY;
            if (qi < tl.n_q && kk < nk && kb + kk <= tl.pos0 + qi) {
                const float *qr = Qs + qi * hd;
                const __half2 *kr = reinterpret_cast<const __half2 *>(Ks + kk * hs);
                float acc = 0.0f;
                for (int d2 = 0; d2 < hd2; d2++) {
                    float2 kf = __half22float2(kr[d2]);
                    acc += kf.x * qr[2 * d2] + kf.y * qr[2 * d2 + 1];
                }
                s = acc * a.scale;
            }
            S[i] = s;
        }
        __syncthreads();
        /* online softmax: one warp per query row */
        for (int qi = tid / 32; qi < QT; qi += blockDim.x / 32) {
            const int lane = tid & 31;
            float mx = -INFINITY;
            for (int kk = lane; kk < KT; kk += 32) mx = fmaxf(mx, S[qi * KT + kk]);
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_old = M[qi], m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            for (int kk = lane; kk < KT; kk += 32) {
                float s = S[qi * KT + kk];
                float p = (s == -INFINITY) ? 0.0f : expf(s - m_new);
                S[qi * KT + kk] = p;
                sum += p;
            }
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            __syncwarp(); /* every lane has read M[qi] before lane 0 replaces it */
            if (lane == 0) {
                float alpha = (m_new == -INFINITY || m_old == -INFINITY) ? (m_old == -INFINITY ? 0.0f : 1.0f) : expf(m_old - m_new);
                AL[qi] = alpha;
                L[qi] = L[qi] * alpha + sum;
                M[qi] = m_new;
            }
        }
        __syncthreads();
        /* O = O * alpha + P V */
        for (int i = tid; i < QT * hd; i += blockDim.x) {
            int qi = i / hd, d = i % hd;
            const float *p = S + qi * KT;
            float acc = O[i] * AL[qi];
            for (int kk = 0; kk < nk; kk++) acc += p[kk] * __half2float(Vs[kk * hd + d]);
            O[i] = acc;
        }
        __syncthreads();
    }
    for (int i = tid; i < QT * hd; i += blockDim.x) {
        int qi = i / hd, d = i % hd;
        if (qi >= tl.n_q) continue;
        float l = L[qi];
        out[(size_t)(tl.t0 + qi) * q_stride + (size_t)h * hd + d] = l > 0.0f ? O[i] / l : 0.0f;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Host side                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int check_args(const kcu_attn_args *a, const void *out, const void *q, const void *tiles, int n_tiles,
                      const char *what) {
    if (!a || !out || !q || !tiles || !a->k_d || !a->v_d || !a->block_tables_d || n_tiles < 0 || a->n_head <= 0 ||
        a->n_kv_head <= 0 || a->n_head % a->n_kv_head || a->head_dim <= 0 || a->head_dim % 2 ||
        a->head_dim > KCU_ATTN_MAX_HEAD_DIM || a->block_size <= 0 || n_tiles > 0x7fffffff || a->n_head > 65535)
        return kcu__fail(KCU_ERR_INVALID, "%s: bad shape (%d tiles, %d heads, %d kv heads, head_dim %d (even, <= %d), block %d)",
                         what, n_tiles, a ? a->n_head : 0, a ? a->n_kv_head : 0, a ? a->head_dim : 0,
                         KCU_ATTN_MAX_HEAD_DIM, a ? a->block_size : 0);
    if (((uintptr_t)a->k_d | (uintptr_t)a->v_d) % 4)
        return kcu__fail(KCU_ERR_INVALID, "%s: K/V caches not 4-byte aligned", what);
    return 0;
}

static attn_dev to_dev(const kcu_attn_args *a) {
    attn_dev d;
    d.k = (const __half *)a->k_d;
    d.v = (const __half *)a->v_d;
    d.bt = a->block_tables_d;
    d.n_head = a->n_head;
    d.group = a->n_head / a->n_kv_head;
    d.hd = a->head_dim;
    d.bs = a->block_size;
    d.kv_row = a->n_kv_head * a->head_dim;
    d.scale = a->scale;
    return d;
}

typedef void (*dec_kernel)(dec_args);

struct dec_pick_t {
    dec_kernel fn;
    int step; /* keys per block per round */
};

template <int L, int W>
static dec_pick_t dec_pick_gc(int gc) {
    const int step = DEC_THREADS / L * dec_u(W);
    switch (gc) {
    case 1: return {k_attn_dec<L, W, 1>, step};
    case 2: return {k_attn_dec<L, W, 2>, step};
    case 3: return {k_attn_dec<L, W, 3>, step};
    default: return {k_attn_dec<L, W, 4>, step};
    }
}

/* The decode kernel for this head_dim, alignment and heads per block (gc <= DEC_GC_MAX). */
static dec_pick_t dec_pick(int hd, bool vec16, int gc) {
    if (!vec16) return dec_pick_gc<32, 2>(gc);
    if (hd <= 64) return dec_pick_gc<8, 8>(gc);
    if (hd <= 128) return dec_pick_gc<16, 8>(gc);
    return dec_pick_gc<32, 8>(gc);
}

/* Blocks of k that fit in one wave on the current device (SMs x resident blocks per SM), cached per
 * host thread since the device and the kernels rarely change. */
static int dec_wave(dec_kernel k) {
    static thread_local int dev_cached = -1, sms = 0;
    static thread_local struct {
        dec_kernel k;
        int per_sm;
    } occ[32];
    static thread_local int n_occ = 0;
    int dev;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (dev != dev_cached) {
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 0;
        dev_cached = dev, n_occ = 0;
    }
    for (int i = 0; i < n_occ; i++)
        if (occ[i].k == k) return sms * occ[i].per_sm;
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, DEC_THREADS, 0) != cudaSuccess) per_sm = 1;
    if (n_occ < 32) occ[n_occ].k = k, occ[n_occ].per_sm = per_sm, n_occ++;
    return sms * per_sm;
}

/* Split count. A block's cost is about the same for any number of keys up to one round (step), and
 * beyond that grows by rounds, so splits hold whole rounds: enough splits to fill one wave of
 * blocks, but none shorter than a round; at most DEC_MAX_KEYS keys when the GPU is full anyway;
 * at most KCU_ATTN_MAX_SPLITS and what the scratch holds. Sets *kps (keys per split, a multiple of
 * step). */
static int dec_splits(size_t blocks, int wave, int max_keys, size_t by_scratch, int step, int *kps) {
    size_t n = wave > 0 && blocks < (size_t)wave ? (size_t)wave / blocks : 1;
    const size_t by_len = ((size_t)max_keys + DEC_MAX_KEYS - 1) / DEC_MAX_KEYS;
    const size_t most = ((size_t)max_keys + step - 1) / step;
    if (n < by_len) n = by_len;
    if (n > most) n = most;
    if (n > KCU_ATTN_MAX_SPLITS) n = KCU_ATTN_MAX_SPLITS;
    if (n > by_scratch) n = by_scratch;
    if (n < 1) n = 1;
    int k = (int)(((size_t)max_keys + n - 1) / n);
    k = (k + step - 1) / step * step;
    *kps = k;
    return (max_keys + k - 1) / k;
}

extern "C" size_t kcu_attn_decode_scratch_floats(int n_tiles, int n_head, int head_dim) {
    return (size_t)n_tiles * n_head * KCU_ATTN_MAX_SPLITS * (size_t)(head_dim + 2);
}

/* The decode kernel for these arguments and its arguments, all but the split count (set to one).
 * Groups of more than DEC_GC_MAX heads are cut into even chunks (6 -> 3 + 3, 7 -> 4 + 3).
 * Host only, no CUDA calls. */
static dec_pick_t dec_setup(dec_args *d, const kcu_attn_args *a, const float *q, float *out, const kcu_attn_tile *tiles,
                            float *scratch) {
    d->k = (const __half *)a->k_d, d->v = (const __half *)a->v_d;
    d->bt = a->block_tables_d, d->q = q, d->out = out, d->part = scratch, d->tiles = tiles;
    d->n_head = a->n_head, d->group = a->n_head / a->n_kv_head;
    d->n_chunks = (d->group + DEC_GC_MAX - 1) / DEC_GC_MAX;
    const int gc = (d->group + d->n_chunks - 1) / d->n_chunks;
    d->hd = a->head_dim, d->bs = a->block_size, d->kv_row = a->n_kv_head * a->head_dim;
    int shift = 0;
    while ((1u << shift) < (uint32_t)d->bs) shift++; /* ceil(log2 bs) */
    d->bs_shift = shift;
    d->bs_mul = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << shift) - (uint64_t)d->bs)) / (uint64_t)d->bs + 1);
    d->qscale = a->scale * ATTN_LOG2E;
    d->n_splits = 1, d->kps = 0;
    const bool vec16 = d->hd % 8 == 0 && ((uintptr_t)a->k_d | (uintptr_t)a->v_d) % 16 == 0;
    return dec_pick(d->hd, vec16, gc);
}

extern "C" int kcu_attn_decode(float *out, const float *q, const kcu_attn_args *a, const kcu_attn_tile *tiles, int n_tiles,
                               int max_keys, float *scratch, size_t scratch_floats, cudaStream_t st) {
    int rc = check_args(a, out, q, tiles, n_tiles, "kcu_attn_decode");
    if (rc) return rc;
    if (max_keys < 1) return kcu__fail(KCU_ERR_INVALID, "kcu_attn_decode: max_keys %d", max_keys);
    if (n_tiles == 0) return 0;
    dec_args d;
    const dec_pick_t k = dec_setup(&d, a, q, out, tiles, scratch);
    const size_t blocks = (size_t)n_tiles * a->n_kv_head * d.n_chunks;
    const size_t per_split = (size_t)n_tiles * a->n_head * (d.hd + 2);
    const size_t by_scratch = scratch ? scratch_floats / per_split : 1;
    d.n_splits = dec_splits(blocks, dec_wave(k.fn), max_keys, by_scratch, k.step, &d.kps);
    dim3 grid((unsigned)n_tiles, (unsigned)(a->n_kv_head * d.n_chunks), (unsigned)d.n_splits);
    k.fn<<<grid, DEC_THREADS, 0, st>>>(d);
    KCU_LAUNCHED("decode attention");
    if (d.n_splits > 1) {
        dim3 mgrid((unsigned)n_tiles, (unsigned)a->n_head);
        k_attn_merge<<<mgrid, 128, 0, st>>>(out, tiles, scratch, a->n_head, d.hd, d.n_splits);
        KCU_LAUNCHED("decode attention merge");
    }
    return 0;
}

/* Prefill on tensor cores (head_dim HD a multiple of 16, up to 128): one warp per (tile of up to
 * 16 queries, q head), flash-attention style. For each 16 keys: their K and V rows are gathered
 * into shared memory with 16-byte loads, S = Q K^T (f16 operands: q rounded to f16 as on the CPU,
 * f32 accumulation, wmma 16x16x16), the causal mask and an online softmax per query row in f32,
 * P rounded to f16 (the CPU also meets V with f16 weights) and O = O * alpha + P V, O held in f32
 * in shared memory between the wmma steps. */
template <int HD>
__global__ void __launch_bounds__(32) k_attn_pre_tc(float *out, const float *q, attn_dev a, const kcu_attn_tile *tiles) {
    using namespace nvcuda;
    __shared__ __align__(32) __half Qs[16 * HD], Ks[16 * HD], Vs[16 * HD], Ps[16 * 16];
    __shared__ __align__(32) float Os[16 * HD], Ss[16 * 16];
    __shared__ float M[16], L[16], AL[16];
    const kcu_attn_tile tl = tiles[blockIdx.x];
    const int h = blockIdx.y, kvh = h / a.group, lane = threadIdx.x;
    const size_t q_stride = (size_t)a.n_head * HD;
    for (int i = lane; i < 16 * HD; i += 32) {
        const int qi = i / HD, d = i % HD;
        Qs[i] = __float2half(qi < tl.n_q ? q[(size_t)(tl.t0 + qi) * q_stride + (size_t)h * HD + d] : 0.0f);
        Os[i] = 0.0f;
    }
    if (lane < 16) M[lane] = -INFINITY, L[lane] = 0.0f;
    __syncwarp();
    const int n_keys = tl.pos0 + tl.n_q;
    constexpr int C8 = HD / 8; /* 16-byte chunks per row */
    for (int kb = 0; kb < n_keys; kb += 16) {
        const int nk = min(16, n_keys - kb);
        for (int i = lane; i < 16 * C8; i += 32) {
            const int kk = i / C8, c = i % C8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (kk < nk) {
                const int p = kb + kk;
                const size_t slot = (size_t)a.bt[tl.bt_off + p / a.bs] * a.bs + p % a.bs;
                const size_t off = slot * a.kv_row + (size_t)kvh * HD + 8 * c;
                kv = *reinterpret_cast<const uint4 *>(a.k + off);
                vv = *reinterpret_cast<const uint4 *>(a.v + off);
            }
            reinterpret_cast<uint4 *>(Ks)[i] = kv;
            reinterpret_cast<uint4 *>(Vs)[i] = vv;
        }
        __syncwarp();
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
        wmma::fill_fragment(sf, 0.0f);
#pragma unroll
        for (int c = 0; c < HD / 16; c++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> af;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bf;
            wmma::load_matrix_sync(af, Qs + 16 * c, HD);
            wmma::load_matrix_sync(bf, Ks + 16 * c, HD); /* K^T: key kk's row is column kk */
            wmma::mma_sync(sf, af, bf, sf);
        }
        wmma::store_matrix_sync(Ss, sf, 16, wmma::mem_row_major);
        __syncwarp();
        if (lane < 16) { /* one query row per lane */
            const int qi = lane;
            const float m_old = M[qi];
            float mx = -INFINITY, srow[16];
#pragma unroll
            for (int kk = 0; kk < 16; kk++) {
                const bool ok = qi < tl.n_q && kk < nk && kb + kk <= tl.pos0 + qi;
                srow[kk] = ok ? Ss[qi * 16 + kk] * a.scale : -INFINITY;
                mx = fmaxf(mx, srow[kk]);
            }
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 16; kk++) {
                const float p = srow[kk] == -INFINITY ? 0.0f : expf(srow[kk] - m_new);
                Ps[qi * 16 + kk] = __float2half(p);
                sum += p;
            }
            const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            AL[qi] = alpha;
            L[qi] = L[qi] * alpha + sum;
            M[qi] = m_new;
        }
        __syncwarp();
        for (int i = lane; i < 16 * HD; i += 32) Os[i] *= AL[i / HD];
        __syncwarp();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pf;
        wmma::load_matrix_sync(pf, Ps, 16);
#pragma unroll
        for (int c = 0; c < HD / 16; c++) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vf;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
            wmma::load_matrix_sync(vf, Vs + 16 * c, HD);
            wmma::load_matrix_sync(of, Os + 16 * c, HD, wmma::mem_row_major);
            wmma::mma_sync(of, pf, vf, of);
            wmma::store_matrix_sync(Os + 16 * c, of, HD, wmma::mem_row_major);
        }
        __syncwarp();
    }
    for (int i = lane; i < 16 * HD; i += 32) {
        const int qi = i / HD;
        if (qi < tl.n_q) out[(size_t)(tl.t0 + qi) * q_stride + (size_t)h * HD + i % HD] = L[qi] > 0.0f ? Os[i] / L[qi] : 0.0f;
    }
}

extern "C" int kcu_attn_prefill(float *out, const float *q, const kcu_attn_args *a, const kcu_attn_tile *tiles,
                                int n_tiles, cudaStream_t st) {
    int rc = check_args(a, out, q, tiles, n_tiles, "kcu_attn_prefill");
    if (rc) return rc;
    if (n_tiles == 0) return 0;
    static_assert(KCU_ATTN_QT == 16, "the tensor-core prefill takes tiles of 16 queries");
    const bool al16 = (((uintptr_t)a->k_d | (uintptr_t)a->v_d) & 15) == 0;
    if (al16 && (a->head_dim == 64 || a->head_dim == 80 || a->head_dim == 96 || a->head_dim == 128)) {
        dim3 grid((unsigned)n_tiles, (unsigned)a->n_head);
        const attn_dev d = to_dev(a);
        switch (a->head_dim) {
        case 64: k_attn_pre_tc<64><<<grid, 32, 0, st>>>(out, q, d, tiles); break;
        case 80: k_attn_pre_tc<80><<<grid, 32, 0, st>>>(out, q, d, tiles); break;
        case 96: k_attn_pre_tc<96><<<grid, 32, 0, st>>>(out, q, d, tiles); break;
        default: k_attn_pre_tc<128><<<grid, 32, 0, st>>>(out, q, d, tiles); break;
        }
        KCU_LAUNCHED("prefill attention");
        return 0;
    }
    constexpr int QT = KCU_ATTN_QT, KT = 32;
    size_t smem = attn_smem(QT, KT, a->head_dim);
    static thread_local size_t opted = 48 * 1024;
    if (smem > opted) {
        KCU_TRY(cudaFuncSetAttribute(k_attn_pre<QT, KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                "attention: shared memory opt-in");
        opted = smem;
    }
    dim3 grid((unsigned)n_tiles, (unsigned)a->n_head);
    k_attn_pre<QT, KT><<<grid, KCU_ATTN_THREADS, smem, st>>>(out, q, to_dev(a), tiles);
    KCU_LAUNCHED("prefill attention");
    return 0;
}
