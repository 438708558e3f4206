/* The vector vocabulary for AVX-512 (F + DQ + BW + VL): 16-lane zmm registers. Included by
 * every translation unit compiled for an AVX-512 table (see simd_kernels_template.h for what
 * each name means). */
#ifndef LI_SIMD_VOCAB_AVX512_H
#define LI_SIMD_VOCAB_AVX512_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "li_kernels.h"

typedef __m512 vf;
typedef __m512i vi;
#define VW 16
#define V_PER_BLOCK (LI_BLOCK / VW)
#define v_load(p) _mm512_loadu_ps(p)
#define v_store(p, v) _mm512_storeu_ps((p), (v))
#define v_lane_mask(n) ((__mmask16)((1u << (n)) - 1u))
#define v_load_n(p, n) _mm512_maskz_loadu_ps(v_lane_mask(n), (p))
#define v_store_n(p, v, n) _mm512_mask_storeu_ps((p), v_lane_mask(n), (v))
#define v_set1 _mm512_set1_ps
#define v_zero _mm512_setzero_ps
#define v_add _mm512_add_ps
#define v_sub _mm512_sub_ps
#define v_mul _mm512_mul_ps
#define v_div _mm512_div_ps
#define v_min _mm512_min_ps
#define v_max _mm512_max_ps
#define v_abs _mm512_abs_ps
/* max(a, b) with a NaN on either side giving NaN (vmaxps alone returns b when either is). */
static inline vf v_max_nan(vf a, vf b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_max_ps(a, b), a);
}
/* The even and the odd lanes of the 2*VW floats lo, hi, in order (lane i of the index picks
 * lo[2i] / lo[2i+1] for i < 8, hi's for the rest). */
static inline vf v_evens(vf lo, vf hi) {
    const __m512i idx =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
}
static inline vf v_odds(vf lo, vf hi) {
    const __m512i idx =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_permutex2var_ps(lo, idx, hi);
}
#define v_fmadd _mm512_fmadd_ps
#define v_fnmadd _mm512_fnmadd_ps
#define v_round(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* One instruction, where building 2^n in the exponent bits and multiplying takes four: exp
 * sits five times in every LSTM unit's update. */
#define v_ldexp(x, n) _mm512_scalef_ps((x), (n))
/* Integer-valued floats in [-127, 127] -> VW int8 at p. */
static inline void v_store_i8(int8_t *p, vf v) {
    _mm_storeu_si128((__m128i *)p, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
}

/* Integer lanes (one int32 per unit). */
#define vi_zero _mm512_setzero_si512
#define vi_load(p) _mm512_loadu_si512((const void *)(p))
#define vi_set1 _mm512_set1_epi32
#define vi_add _mm512_add_epi32
#define vi_sub _mm512_sub_epi32
#define vi_slli _mm512_slli_epi32
#define vi_to_vf _mm512_cvtepi32_ps
#define vi_as_vf _mm512_castsi512_ps
#define vi_and _mm512_and_si512

/* 32 zmm registers hold G*R accumulators plus the G weight vectors of one input (x is
 * broadcast straight from memory): R = 6 rows at G = 4, 8 rows at G <= 2. At G = 3, 8 rows
 * (24 accumulators) measured 25% slower than 7 (GRU input projection, gcc 12): 7. */
/* Accumulator registers a tile may use when it splits k in two (see the matvec). */
#define MV_ACC_BUDGET 16
#define MV_MAX_ROWS(G) ((G) >= 4 ? 6 : (G) == 3 ? 7 : 8)

#endif
