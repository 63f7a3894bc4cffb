/* CUDA attention over the paged f16 KV cache (layout K[block][slot][kv_head][head_dim], as the
 * CPU's kern_attn_paged reads it).
 *
 * k_attn<QT, KT>: one block of 128 threads per (tile of up to QT query tokens of one sequence,
 * head, key split). It walks the split's keys in tiles of KT: K and V rows are gathered from
 * their physical blocks into shared memory (f16, K rows padded by 2 halves so that threads
 * reading different keys hit different banks), scores q.k * scale for every (query, key) with
 * the causal mask (key position <= query position), then an online softmax per query (running
 * max m and sum l; old output rescaled by exp(m_old - m_new)) and the P.V update of the f32
 * output held in shared memory. With one split the output is normalised and written in place;
 * with several, the unnormalised output and (m, l) go to scratch and k_attn_merge combines them
 * with a log-sum-exp. Decode uses <1, 64> with splits; prefill <KCU_ATTN_QT, 32>, one split.
 * Shared memory per block (floats/halves): Qs QT*hd f32, O QT*hd f32, S QT*KT f32, m/l/alpha
 * 3*QT f32, Ks KT*(hd+2) f16, Vs KT*hd f16: 35 KB for the prefill tile at hd 128; above 48 KB
 * (hd 256) the launcher opts in to more. */
#include <math.h>

#include "kernels/cuda/kcu_internal.cuh"

#define KCU_ATTN_THREADS 128

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
    k_attn(float *out, const float *q, attn_dev a, const kcu_attn_tile *tiles, int keys_per_split, int n_splits, float *part) {
    extern __shared__ float4 smem4[]; /* float4: 16-byte alignment of the base */
    float *smem = reinterpret_cast<float *>(smem4);
    const int hd = a.hd, tid = threadIdx.x, hs = hd + 2; /* hs: padded K row, in halves */
    float *Qs = smem, *O = Qs + QT * hd, *S = O + QT * hd, *M = S + QT * KT, *L = M + QT, *AL = L + QT;
    __half *Ks = reinterpret_cast<__half *>(AL + QT), *Vs = Ks + KT * hs;
    const kcu_attn_tile tl = tiles[blockIdx.x];
    const int h = blockIdx.y, split = blockIdx.z, kvh = h / a.group;
    const size_t q_stride = (size_t)a.n_head * hd;
    const int n_keys = tl.pos0 + tl.n_q; /* keys seen by the tile's last query */
    const int k_begin = split * keys_per_split;
    const int k_end = min(n_keys, k_begin + keys_per_split);
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
    for (int kb = k_begin; kb < k_end; kb += KT) {
        const int nk = min(KT, k_end - kb);
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
        if (n_splits == 1) {
            float l = L[qi];
            out[(size_t)(tl.t0 + qi) * q_stride + (size_t)h * hd + d] = l > 0.0f ? O[i] / l : 0.0f;
        } else { /* QT == 1 here */
            float *pp = part + (((size_t)blockIdx.x * a.n_head + h) * n_splits + split) * (size_t)(hd + 2);
            pp[d] = O[i];
            if (d == 0) pp[hd] = M[qi], pp[hd + 1] = L[qi];
        }
    }
}

/* out row of (tile, head) = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s. */
__global__ void k_attn_merge(float *out, const kcu_attn_tile *tiles, const float *part, int n_head, int hd, int n_splits) {
    const int h = blockIdx.y;
    const kcu_attn_tile tl = tiles[blockIdx.x];
    const float *pp = part + ((size_t)blockIdx.x * n_head + h) * n_splits * (size_t)(hd + 2);
    float mx = -INFINITY;
    for (int s = 0; s < n_splits; s++) mx = fmaxf(mx, pp[(size_t)s * (hd + 2) + hd]);
    float den = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        float m = pp[(size_t)s * (hd + 2) + hd];
        if (m != -INFINITY) den += expf(m - mx) * pp[(size_t)s * (hd + 2) + hd + 1];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < n_splits; s++) {
            float m = pp[(size_t)s * (hd + 2) + hd];
            if (m != -INFINITY) num += expf(m - mx) * pp[(size_t)s * (hd + 2) + d];
        }
        out[(size_t)tl.t0 * n_head * hd + (size_t)h * hd + d] = den > 0.0f ? num / den : 0.0f;
    }
}

static int check_args(const kcu_attn_args *a, const void *out, const void *q, const void *tiles, int n_tiles,
                      const char *what) {
    if (!a || !out || !q || !tiles || !a->k_d || !a->v_d || !a->block_tables_d || n_tiles < 0 || a->n_head <= 0 ||
        a->n_kv_head <= 0 || a->n_head % a->n_kv_head || a->head_dim <= 0 || a->head_dim % 2 ||
        a->head_dim > KCU_ATTN_MAX_HEAD_DIM || a->block_size <= 0 || n_tiles > 0x7fffffff || a->n_head > 65535)
        return kcu__fail(KCU_ERR_INVALID, "%s: bad shape (%d tiles, %d heads, %d kv heads, head_dim %d (even, <= %d), block %d)",
                         what, n_tiles, a ? a->n_head : 0, a ? a->n_kv_head : 0, a ? a->head_dim : 0,
                         KCU_ATTN_MAX_HEAD_DIM, a ? a->block_size : 0);
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

/* Launches k_attn<QT, KT>, opting in to more than 48 KB of shared memory when needed. */
template <int QT, int KT>
static int attn_launch(float *out, const float *q, const kcu_attn_args *a, const kcu_attn_tile *tiles, int n_tiles,
                       int keys_per_split, int n_splits, float *part, cudaStream_t st) {
    size_t smem = attn_smem(QT, KT, a->head_dim);
    static thread_local size_t opted = 48 * 1024;
    if (smem > opted) {
        KCU_TRY(cudaFuncSetAttribute(k_attn<QT, KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                "attention: shared memory opt-in");
        opted = smem;
    }
    dim3 grid((unsigned)n_tiles, (unsigned)a->n_head, (unsigned)n_splits);
    k_attn<QT, KT><<<grid, KCU_ATTN_THREADS, smem, st>>>(out, q, to_dev(a), tiles, keys_per_split, n_splits, part);
    KCU_LAUNCHED("attention");
    return 0;
}

#define DECODE_KT 64
#define DECODE_MIN_KEYS 256 /* fewest keys worth a split of their own */

extern "C" size_t kcu_attn_decode_scratch_floats(int n_tiles, int n_head, int head_dim) {
    return (size_t)n_tiles * n_head * KCU_ATTN_MAX_SPLITS * (size_t)(head_dim + 2);
}

extern "C" int kcu_attn_decode(float *out, const float *q, const kcu_attn_args *a, const kcu_attn_tile *tiles, int n_tiles,
                               int max_keys, float *scratch, size_t scratch_floats, cudaStream_t st) {
    int rc = check_args(a, out, q, tiles, n_tiles, "kcu_attn_decode");
    if (rc) return rc;
    if (max_keys < 1) return kcu__fail(KCU_ERR_INVALID, "kcu_attn_decode: max_keys %d", max_keys);
    if (n_tiles == 0) return 0;
    /* splits: enough blocks to fill the GPU (~512), each at least DECODE_MIN_KEYS keys, within scratch */
    size_t per_split = (size_t)n_tiles * a->n_head * (a->head_dim + 2);
    int want = (int)((512 + (size_t)n_tiles * a->n_head - 1) / ((size_t)n_tiles * a->n_head));
    int by_keys = (max_keys + DECODE_MIN_KEYS - 1) / DECODE_MIN_KEYS;
    int by_scratch = scratch ? (int)(scratch_floats / per_split) : 1;
    int n_splits = want < by_keys ? want : by_keys;
    if (n_splits > by_scratch) n_splits = by_scratch;
    if (n_splits > KCU_ATTN_MAX_SPLITS) n_splits = KCU_ATTN_MAX_SPLITS;
    if (n_splits < 1) n_splits = 1;
    int kps = (max_keys + n_splits - 1) / n_splits;
    kps = (kps + DECODE_KT - 1) / DECODE_KT * DECODE_KT;
    n_splits = (max_keys + kps - 1) / kps;
    if ((rc = attn_launch<1, DECODE_KT>(out, q, a, tiles, n_tiles, kps, n_splits, scratch, st))) return rc;
    if (n_splits > 1) {
        dim3 grid((unsigned)n_tiles, (unsigned)a->n_head);
        k_attn_merge<<<grid, 128, 0, st>>>(out, tiles, scratch, a->n_head, a->head_dim, n_splits);
        KCU_LAUNCHED("attention merge");
    }
    return 0;
}

extern "C" int kcu_attn_prefill(float *out, const float *q, const kcu_attn_args *a, const kcu_attn_tile *tiles,
                                int n_tiles, cudaStream_t st) {
    int rc = check_args(a, out, q, tiles, n_tiles, "kcu_attn_prefill");
    if (rc) return rc;
    if (n_tiles == 0) return 0;
    return attn_launch<KCU_ATTN_QT, 32>(out, q, a, tiles, n_tiles, 0x7fffffff, 1, NULL, st);
}
