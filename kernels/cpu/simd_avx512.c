/* AVX-512 (F, BW, VL, VNNI) kernels: simd_tmpl.h with 16-lane vectors for the f32 FMAs and
 * vpdpbusd for the integer block dots. Compiled for that target by a pragma; dispatch.c only
 * calls in after checking the CPU. */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#include <immintrin.h>

#define VL 16
#define TMAX 6 /* 4 rows x 6 tokens: 24 accumulators of the 32 zmm registers */
#define MK_CASES MK_CASE(1) MK_CASE(2) MK_CASE(3) MK_CASE(4) MK_CASE(5) MK_CASE(6)
#define VF __m512
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vload_h(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vstore_h(p, v) _mm256_storeu_si256((__m256i *)(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define vset1(a) _mm512_set1_ps(a)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vadd(a, b) _mm512_add_ps(a, b)
#define vsub(a, b) _mm512_sub_ps(a, b)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vdiv(a, b) _mm512_div_ps(a, b)
#define vmin(a, b) _mm512_min_ps(a, b)
#define vmax(a, b) _mm512_max_ps(a, b)
#define vround(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vpow2i(n) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
#define vcvt_u8(v) _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)) /* 16 bytes */
#define vcvt_i8(v) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
#define vload_bf16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define vfms(a, b, c) _mm512_fmsub_ps(a, b, c)
#define vand(a, b) _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)))
#define vand_mask() _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff))
#define vhmax(v) _mm512_reduce_max_ps(v)
#define vround_h(v) _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define IDOT32(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)

/* fixed tree: 256-bit halves, then the AVX2 tree */
static inline float vhsum(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#include "kernels/cpu/simd_tmpl.h"

static const kern__ops ops = SIMD_OPS_TABLE("avx512");
const kern__ops *kern__ops_avx512(void) { return &ops; }

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
