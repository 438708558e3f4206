/* AVX2 + FMA kernels: the vector vocabulary for 8-lane ymm registers. */
#include <immintrin.h>
#include <stdint.h>

#include "li_kernels.h"

typedef __m256 vf;
#define VW 8
#define v_load(p) _mm256_loadu_ps(p)
#define v_store(p, v) _mm256_storeu_ps((p), (v))
/* Lane masks for partial loads: 8 - n leading all-ones entries read from a sliding window. */
static const int lane_mask_window[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define v_lane_mask(n) _mm256_loadu_si256((const __m256i *)(lane_mask_window + 8 - (n)))
#define v_load_n(p, n) _mm256_maskload_ps((p), v_lane_mask(n))
#define v_store_n(p, v, n) _mm256_maskstore_ps((p), v_lane_mask(n), (v))
#define v_set1 _mm256_set1_ps
#define v_zero _mm256_setzero_ps
#define v_add _mm256_add_ps
#define v_sub _mm256_sub_ps
#define v_mul _mm256_mul_ps
#define v_div _mm256_div_ps
#define v_min _mm256_min_ps
#define v_max _mm256_max_ps
#define v_fmadd _mm256_fmadd_ps
#define v_fnmadd _mm256_fnmadd_ps
#define v_round(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vf v_ldexp(vf x, vf n) { /* 2^n built in the exponent bits */
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(x, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}
static inline vf v_load_bf16(const uint16_t *p) { /* bf16 is the top half of an f32 */
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
static inline vf v_load_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
/* 16 ymm registers: a tile needs 2*G*R accumulators + R broadcasts + 1 weight. */
/* Accumulator registers a tile may use when it splits k in two (see the matvec). */
#define MV_ACC_BUDGET 8
#define MV_MAX_ROWS(G) ((G) >= 4 ? 1 : (G) >= 2 ? 2 : 4)

#include "simd_kernels_template.h"

const li_kernels li_kernels_avx2 = LI_SIMD_TABLE("avx2");
