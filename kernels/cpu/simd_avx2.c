/* AVX2 + FMA + F16C kernels: simd_tmpl.h with 8-lane vectors; integer block dots with
 * vpmaddubsw + vpmaddwd. Compiled for that target by a pragma so the rest of the build stays
 * baseline x86-64; dispatch.c only calls in after checking the CPU. */
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#include <immintrin.h>

#define VL 8
#define TMAX 3 /* 4 rows x 3 tokens: 12 accumulators of the 16 ymm registers */
#define MK_CASES MK_CASE(1) MK_CASE(2) MK_CASE(3)
#define VF __m256
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vload_h(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vstore_h(p, v) _mm_storeu_si128((__m128i *)(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define vset1(a) _mm256_set1_ps(a)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vadd(a, b) _mm256_add_ps(a, b)
#define vsub(a, b) _mm256_sub_ps(a, b)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vdiv(a, b) _mm256_div_ps(a, b)
#define vmin(a, b) _mm256_min_ps(a, b)
#define vmax(a, b) _mm256_max_ps(a, b)
#define vround(a) _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vpow2i(n) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23))
#define vcvt_u8(v) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)) /* low 8 bytes */
#define vcvt_i8(v) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
#define vload_bf16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define vfms(a, b, c) _mm256_fmsub_ps(a, b, c)
#define vand(a, b) _mm256_and_ps(a, b)
#define vand_mask() _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))
#define vround_h(v) _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT))
#define IDOT32(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))

/* fixed tree: halves, then pairs, then neighbours */
static inline float vhsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float vhmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#include "kernels/cpu/simd_tmpl.h"

static const kern__ops ops = SIMD_OPS_TABLE("avx2");
const kern__ops *kern__ops_avx2(void) { return &ops; }

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
