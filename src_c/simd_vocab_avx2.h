/* The vector vocabulary for AVX2 + FMA: 8-lane ymm registers. Included by every translation
 * unit compiled for an AVX2 table (see simd_kernels_template.h for what each name means). */
#ifndef LI_SIMD_VOCAB_AVX2_H
#define LI_SIMD_VOCAB_AVX2_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "li_kernels.h"

typedef __m256 vf;
typedef __m256i vi;
#define VW 8
#define V_PER_BLOCK (LI_BLOCK / VW)
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
#define v_abs(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (x))
/* max(a, b) with a NaN on either side giving NaN (vmaxps alone returns b when either is). */
static inline vf v_max_nan(vf a, vf b) {
    return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}
/* The even and the odd lanes of the 2*VW floats lo, hi, in order. vshufps picks within each
 * 128-bit half (l0 l2 h0 h2 | l4 l6 h4 h6); vpermpd puts the 64-bit pairs back in order. */
static inline vf v_in_order(vf v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xd8));
}
#define v_evens(lo, hi) v_in_order(_mm256_shuffle_ps((lo), (hi), 0x88))
#define v_odds(lo, hi) v_in_order(_mm256_shuffle_ps((lo), (hi), 0xdd))
#define v_fmadd _mm256_fmadd_ps
#define v_fnmadd _mm256_fnmadd_ps
#define v_round(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline vf v_ldexp(vf x, vf n) { /* 2^n built in the exponent bits */
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(x, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}
/* Integer-valued floats in [-127, 127] -> VW int8 at p. */
static inline void v_store_i8(int8_t *p, vf v) {
    const __m256i i32 = _mm256_cvtps_epi32(v);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32),
                                        _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packs_epi16(i16, i16));
}

/* Integer lanes (one int32 per unit). */
#define vi_zero _mm256_setzero_si256
#define vi_load(p) _mm256_loadu_si256((const __m256i *)(p))
#define vi_set1 _mm256_set1_epi32
#define vi_add _mm256_add_epi32
#define vi_sub _mm256_sub_epi32
#define vi_slli _mm256_slli_epi32
#define vi_to_vf _mm256_cvtepi32_ps
#define vi_as_vf _mm256_castsi256_ps
#define vi_and _mm256_and_si256

/* 16 ymm registers: a tile needs 2*G*R accumulators + R broadcasts + 1 weight. */
/* Accumulator registers a tile may use when it splits k in two (see the matvec). */
#define MV_ACC_BUDGET 8
#define MV_MAX_ROWS(G) ((G) >= 4 ? 1 : (G) >= 2 ? 2 : 4)
/* Beyond L2 the one-gate tiles take 6 rows (12 accumulators + 2 weights + 1 broadcast, the
 * weights loaded first): each weight fetched from L3 feeds 6 rows instead of 4. Zen 3, LSTM
 * recurrence at batch 12-64, H = 256-1024: 0.85-0.94x the time of 4-row tiles; in L2 (H <= 128)
 * 6 rows measured no faster, so those keep 4 (MV_MAX_ROWS(1)). */
#define MV_SPLIT_ROWS_BEYOND_L2 6
#define MV_F32_WEIGHTS_FIRST(G, R) ((G) * V_PER_BLOCK * (R) + (R) + 1 > 15)

#endif
