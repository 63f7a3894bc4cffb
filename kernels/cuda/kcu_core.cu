/* CUDA backend core: the thread's last error, device selection and properties, device and
 * pinned buffers, and weights (allocation, upload with repacking of the 32-block formats into
 * the quant/scale planes described in kern_cuda.h, random fill on the device for benchmarks). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kcu_internal.cuh"

static thread_local char kcu_err[512];

int kcu__fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kcu_err, sizeof kcu_err, fmt, ap);
    va_end(ap);
    return code;
}

extern "C" const char *kcu_last_error(void) { return kcu_err; }

extern "C" int kcu_init(int dev, kcu_device_info *info) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return kcu__fail(KCU_ERR_CUDA, "no usable NVIDIA GPU (is the driver installed and a GPU visible?): %s",
                         cudaGetErrorString(e));
    }
    if (dev < 0 || dev >= n) return kcu__fail(KCU_ERR_INVALID, "CUDA device %d does not exist (%d found)", dev, n);
    KCU_TRY(cudaSetDevice(dev), "cudaSetDevice");
    if (!info) return 0;
    memset(info, 0, sizeof *info);
    cudaDeviceProp p;
    KCU_TRY(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->sm_count = p.multiProcessorCount;
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->smem_optin = p.sharedMemPerBlockOptin;
    int clk_khz = 0, bus_bits = 0;
    KCU_TRY(cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, dev), "cudaDeviceGetAttribute");
    KCU_TRY(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev), "cudaDeviceGetAttribute");
    info->hbm_gbs = 2.0 * (double)clk_khz * 1e3 * (double)bus_bits / 8.0 / 1e9; /* double data rate */
    KCU_TRY(cudaMemGetInfo(&info->free_mem, &info->total_mem), "cudaMemGetInfo");
    return 0;
}

extern "C" int kcu_alloc(void **p, size_t bytes) {
    *p = NULL;
    if (bytes == 0) bytes = 16;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError(); /* clear the sticky-free error so later launches do not report it */
        return kcu__fail(KCU_ERR_NOMEM, "cudaMalloc(%zu bytes): %s", bytes, cudaGetErrorString(e));
    }
    /* zeroed before returning: a plain cudaMemset runs on the legacy default stream, which does
     * not order against the non-blocking streams the engine uses, and could land after them */
    KCU_TRY(cudaMemsetAsync(*p, 0, bytes, 0), "cudaMemset");
    KCU_TRY(cudaStreamSynchronize(0), "cudaMemset");
    return 0;
}

extern "C" void kcu_free(void *p) {
    if (p) cudaFree(p);
}

extern "C" int kcu_host_alloc(void **p, size_t bytes) {
    *p = NULL;
    cudaError_t e = cudaMallocHost(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return kcu__fail(KCU_ERR_NOMEM, "cudaMallocHost(%zu bytes): %s", bytes, cudaGetErrorString(e));
    }
    return 0;
}

extern "C" void kcu_host_free(void *p) {
    if (p) cudaFreeHost(p);
}

extern "C" int kcu_h2d(void *dst, const void *src, size_t bytes, cudaStream_t st) {
    KCU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st), "copy to device");
    return 0;
}

extern "C" int kcu_d2h(void *dst, const void *src, size_t bytes, cudaStream_t st) {
    KCU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st), "copy to host");
    return 0;
}

extern "C" int kcu_d2d(void *dst, const void *src, size_t bytes, cudaStream_t st) {
    KCU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st), "copy on device");
    return 0;
}

extern "C" int kcu_sync(cudaStream_t st) {
    KCU_TRY(cudaStreamSynchronize(st), "stream synchronize");
    KCU_TRY(cudaGetLastError(), "after synchronize");
    return 0;
}

/* ---- weights ---- */

extern "C" bool kcu_type_supported(uint32_t type) { return kcu__q_row_bytes(type, 256) != 0; }

static uint64_t block_elems(uint32_t type) {
    switch (type) {
    case KERN_TYPE_Q8_0:
    case KERN_TYPE_Q4_0:
    case KERN_TYPE_Q4_1: return 32;
    case KERN_TYPE_Q4_K:
    case KERN_TYPE_Q5_K:
    case KERN_TYPE_Q6_K: return 256;
    default: return 1;
    }
}

/* Bytes of the scale plane per 32-block (Q6_K: per super-block, see s_plane_bytes). */
static uint64_t scale_bytes(uint32_t type) {
    return type == KERN_TYPE_Q8_0 || type == KERN_TYPE_Q4_0 ? 2 : type == KERN_TYPE_Q4_1 ? 4 : 0;
}

/* Bytes of the whole scale plane of an (n_in, n_out) matrix. */
static uint64_t s_plane_bytes(uint32_t type, uint64_t n_in, uint64_t n_out) {
    if (type == KERN_TYPE_Q6_K) return n_in / 256 * 18 * n_out; /* 16 int8 scales, then the f16 d of every block */
    return n_in / 32 * scale_bytes(type) * n_out;
}

int kcu__check_weight(const kcu_weight *w, const char *what) {
    if (!w || !kcu_type_supported(w->type))
        return kcu__fail(KCU_ERR_INVALID, "%s: unsupported weight type %u", what, w ? w->type : 0u);
    if (w->n_in == 0 || w->n_out == 0 || w->n_in % block_elems(w->type) || !w->q ||
        (s_plane_bytes(w->type, 256, 1) && !w->s))
        return kcu__fail(KCU_ERR_INVALID, "%s: bad weight (%s, %llu x %llu)", what, kern_type_name(w->type),
                         (unsigned long long)w->n_in, (unsigned long long)w->n_out);
    return 0;
}

extern "C" int kcu_weight_alloc(kcu_weight *w, uint32_t type, uint64_t n_in, uint64_t n_out) {
    memset(w, 0, sizeof *w);
    if (!kcu_type_supported(type) || n_in == 0 || n_out == 0 || n_in % block_elems(type))
        return kcu__fail(KCU_ERR_INVALID, "weight: %s of %llu x %llu is not supported on CUDA", kern_type_name(type),
                         (unsigned long long)n_in, (unsigned long long)n_out);
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    size_t qb = (size_t)kcu__q_row_bytes(type, n_in) * n_out, sb = (size_t)s_plane_bytes(type, n_in, n_out);
    int rc = kcu_alloc(&w->q, qb);
    if (rc == 0 && sb) rc = kcu_alloc(&w->s, sb);
    if (rc) {
        kcu_weight_free(w);
        return rc;
    }
    w->bytes = qb + sb;
    return 0;
}

extern "C" void kcu_weight_free(kcu_weight *w) {
    if (!w) return;
    kcu_free(w->q);
    kcu_free(w->s);
    memset(w, 0, sizeof *w);
}

/* Splits `rows` rows of ggml 32-blocks into the quant plane q and the scale plane s. */
static void repack_rows(uint32_t type, const uint8_t *src, uint64_t n_in, uint64_t rows, uint8_t *q, uint8_t *s) {
    uint64_t nb = n_in / 32, bb = type == KERN_TYPE_Q8_0 ? 34 : type == KERN_TYPE_Q4_0 ? 18 : 20;
    uint64_t hb = type == KERN_TYPE_Q4_1 ? 4 : 2, qb = bb - hb, sb = scale_bytes(type);
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + (r * nb + b) * bb;
            memcpy(s + (r * nb + b) * sb, blk, hb);
            memcpy(q + (r * nb + b) * qb, blk + hb, qb);
        }
}

/* Q6_K: each 210-byte block's ql|qh (192 bytes) to the quant plane, its 16 scales and its d to the
 * two parts of the scale plane (all blocks of the matrix, in chunks through a host buffer). */
static int upload_q6k(kcu_weight *w, const uint8_t *host) {
    const uint64_t nb = w->n_in / 256, n_blk = nb * w->n_out;
    const uint64_t chunk = ((uint64_t)4 << 20) / 210 + 1; /* blocks per copy */
    uint8_t *buf = (uint8_t *)malloc((size_t)(chunk * 210));
    if (!buf) return kcu__fail(KCU_ERR_NOMEM, "weight upload: out of host memory");
    uint8_t *q = (uint8_t *)w->q, *sc = (uint8_t *)w->s, *d = sc + n_blk * 16;
    for (uint64_t b0 = 0; b0 < n_blk; b0 += chunk) {
        const uint64_t n = n_blk - b0 < chunk ? n_blk - b0 : chunk;
        uint8_t *bq = buf, *bs = buf + n * 192, *bd = bs + n * 16;
        for (uint64_t b = 0; b < n; b++) {
            const uint8_t *src = host + (b0 + b) * 210;
            memcpy(bq + b * 192, src, 192);
            memcpy(bs + b * 16, src + 192, 16);
            memcpy(bd + b * 2, src + 208, 2);
        }
        cudaError_t e = cudaMemcpy(q + b0 * 192, bq, (size_t)(n * 192), cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(sc + b0 * 16, bs, (size_t)(n * 16), cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(d + b0 * 2, bd, (size_t)(n * 2), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            free(buf);
            return kcu__fail(KCU_ERR_CUDA, "weight upload: %s", cudaGetErrorString(e));
        }
    }
    free(buf);
    KCU_TRY(cudaDeviceSynchronize(), "weight upload");
    return 0;
}

extern "C" int kcu_weight_upload(kcu_weight *w, uint32_t type, const void *host, uint64_t n_in, uint64_t n_out) {
    int rc = kcu_weight_alloc(w, type, n_in, n_out);
    if (rc) return rc;
    if (type == KERN_TYPE_Q6_K) {
        if ((rc = upload_q6k(w, (const uint8_t *)host))) kcu_weight_free(w);
        return rc;
    }
    if (!scale_bytes(type)) {
        cudaError_t e = cudaMemcpy(w->q, host, w->bytes, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            kcu_weight_free(w);
            return kcu__fail(KCU_ERR_CUDA, "weight upload: %s", cudaGetErrorString(e));
        }
        KCU_TRY(cudaDeviceSynchronize(), "weight upload"); /* as below */
        return 0;
    }
    /* repack in chunks of rows through a host buffer */
    uint64_t nb = n_in / 32, qrow = kcu__q_row_bytes(type, n_in), srow = nb * scale_bytes(type);
    uint64_t src_row = nb * (type == KERN_TYPE_Q8_0 ? 34 : type == KERN_TYPE_Q4_0 ? 18 : 20);
    uint64_t chunk = ((uint64_t)16 << 20) / (qrow + srow) + 1;
    uint8_t *buf = (uint8_t *)malloc((size_t)(chunk * (qrow + srow)));
    if (!buf) {
        kcu_weight_free(w);
        return kcu__fail(KCU_ERR_NOMEM, "weight upload: out of host memory");
    }
    for (uint64_t r0 = 0; r0 < n_out; r0 += chunk) {
        uint64_t rows = n_out - r0 < chunk ? n_out - r0 : chunk;
        repack_rows(type, (const uint8_t *)host + r0 * src_row, n_in, rows, buf, buf + rows * qrow);
        cudaError_t e = cudaMemcpy((uint8_t *)w->q + r0 * qrow, buf, (size_t)(rows * qrow), cudaMemcpyHostToDevice);
        if (e == cudaSuccess)
            e = cudaMemcpy((uint8_t *)w->s + r0 * srow, buf + rows * qrow, (size_t)(rows * srow), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            free(buf);
            kcu_weight_free(w);
            return kcu__fail(KCU_ERR_CUDA, "weight upload: %s", cudaGetErrorString(e));
        }
    }
    free(buf);
    /* cudaMemcpy from pageable memory may return before its DMA ends; later work goes to
     * non-blocking streams that do not wait for the legacy stream */
    KCU_TRY(cudaDeviceSynchronize(), "weight upload");
    return 0;
}

/* ---- random fill (splitmix64 of seed ^ index) ---- */

__device__ __forceinline__ uint64_t kcu_hash(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__device__ __forceinline__ float kcu_unit(uint64_t seed, uint64_t i) { /* [0, 1) */
    return (float)(kcu_hash(seed * 0x100000001b3ull ^ i) >> 40) * (1.0f / 16777216.0f);
}

__global__ void k_fill_f32(float *p, size_t n, uint64_t seed, float lo, float hi) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = lo + (hi - lo) * kcu_unit(seed, i);
}

__global__ void k_fill_const(float *p, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

/* Bytes: random bits; for F16/BF16 a value in [-scale, scale) per 2 bytes. */
__global__ void k_fill_bytes(uint8_t *p, size_t n, uint64_t seed, uint32_t type, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (type == KERN_TYPE_F16 || type == KERN_TYPE_BF16) {
            if (i % 2) continue;
            float v = scale * (2.0f * kcu_unit(seed, i) - 1.0f);
            uint16_t h = type == KERN_TYPE_F16 ? __half_as_ushort(__float2half(v)) : __bfloat16_as_ushort(__float2bfloat16(v));
            p[i] = (uint8_t)(h & 0xff);
            p[i + 1] = (uint8_t)(h >> 8);
        } else if (type == KERN_TYPE_F32) {
            if (i % 4) continue;
            *(float *)(p + i) = scale * (2.0f * kcu_unit(seed, i) - 1.0f);
        } else {
            uint8_t b = (uint8_t)(kcu_hash(seed ^ (i * 0x9e3779b97f4a7c15ull)) >> 56);
            if (type == KERN_TYPE_Q8_0 && b == 0x80) b = 0x81; /* keep int8 quants in [-127, 127] */
            p[i] = b;
        }
    }
}

/* Scale plane: d = scale / qmax (Q8_0: 127, Q4_0: 8); Q4_1 (d, m) = (2 scale / 15, -scale). */
__global__ void k_fill_scales(uint16_t *s, size_t n, uint32_t type, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = type == KERN_TYPE_Q8_0 ? scale / 127.0f
                  : type == KERN_TYPE_Q4_0 ? scale / 8.0f
                  : (i % 2 == 0 ? 2.0f * scale / 15.0f : -scale);
        s[i] = __half_as_ushort(__float2half(v));
    }
}

/* K-quants: random bytes with each super-block's f16 scales overwritten by sane values. */
__global__ void k_fix_kquant_scales(uint8_t *q, size_t n_blocks, uint32_t type, float scale) {
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < n_blocks; b += (size_t)gridDim.x * blockDim.x) {
        if (type == KERN_TYPE_Q6_K) { /* q: the scale plane's d part */
            reinterpret_cast<uint16_t *>(q)[b] = __half_as_ushort(__float2half(scale / (32.0f * 64.0f)));
        } else {
            uint8_t *blk = q + b * (type == KERN_TYPE_Q4_K ? 144 : 176);
            float qmax = type == KERN_TYPE_Q4_K ? 15.0f : 31.0f;
            *(uint16_t *)blk = __half_as_ushort(__float2half(2.0f * scale / (qmax * 63.0f)));
            *(uint16_t *)(blk + 2) = __half_as_ushort(__float2half(scale / 63.0f));
        }
    }
}

extern "C" int kcu_weight_fill_random(kcu_weight *w, uint64_t seed, float scale, cudaStream_t st) {
    int rc = kcu__check_weight(w, "kcu_weight_fill_random");
    if (rc) return rc;
    size_t qb = (size_t)kcu__q_row_bytes(w->type, w->n_in) * w->n_out;
    k_fill_bytes<<<kcu__blocks(qb, 256) > 65536 ? 65536 : kcu__blocks(qb, 256), 256, 0, st>>>((uint8_t *)w->q, qb, seed,
                                                                                            w->type, scale);
    KCU_LAUNCHED("fill weight");
    if (w->s && w->type == KERN_TYPE_Q6_K) { /* random int8 scales (not -128) */
        size_t ns = (size_t)(w->n_in / 256) * w->n_out * 16;
        k_fill_bytes<<<kcu__blocks(ns, 256) > 65536 ? 65536 : kcu__blocks(ns, 256), 256, 0, st>>>((uint8_t *)w->s, ns, seed + 1,
                                                                                                KERN_TYPE_Q8_0, scale);
        KCU_LAUNCHED("fill scales");
    } else if (w->s) {
        size_t ns = (size_t)(w->n_in / 32) * w->n_out * (w->type == KERN_TYPE_Q4_1 ? 2 : 1);
        k_fill_scales<<<kcu__blocks(ns, 256) > 65536 ? 65536 : kcu__blocks(ns, 256), 256, 0, st>>>((uint16_t *)w->s, ns,
                                                                                                 w->type, scale);
        KCU_LAUNCHED("fill scales");
    }
    if (w->type == KERN_TYPE_Q4_K || w->type == KERN_TYPE_Q5_K || w->type == KERN_TYPE_Q6_K) {
        size_t nbk = (size_t)(w->n_in / 256) * w->n_out;
        uint8_t *base = w->type == KERN_TYPE_Q6_K ? (uint8_t *)w->s + nbk * 16 : (uint8_t *)w->q;
        k_fix_kquant_scales<<<kcu__blocks(nbk, 256) > 65536 ? 65536 : kcu__blocks(nbk, 256), 256, 0, st>>>(base, nbk, w->type,
                                                                                                          scale);
        KCU_LAUNCHED("fill k-quant scales");
    }
    return 0;
}

extern "C" int kcu_fill_random_f32(float *p, size_t n, uint64_t seed, float lo, float hi, cudaStream_t st) {
    if (!p && n) return kcu__fail(KCU_ERR_INVALID, "kcu_fill_random_f32: NULL buffer");
    if (n == 0) return 0;
    unsigned g = kcu__blocks(n, 256);
    k_fill_f32<<<g > 65536 ? 65536 : g, 256, 0, st>>>(p, n, seed, lo, hi);
    KCU_LAUNCHED("kcu_fill_random_f32");
    return 0;
}

extern "C" int kcu_fill_f32(float *p, size_t n, float value, cudaStream_t st) {
    if (!p && n) return kcu__fail(KCU_ERR_INVALID, "kcu_fill_f32: NULL buffer");
    if (n == 0) return 0;
    unsigned g = kcu__blocks(n, 256);
    k_fill_const<<<g > 65536 ? 65536 : g, 256, 0, st>>>(p, n, value);
    KCU_LAUNCHED("kcu_fill_f32");
    return 0;
}
