/* AVX-512 (F + DQ + BW + VL) kernels: the vector vocabulary for 16-lane zmm registers. */
#include <immintrin.h>
#include <stdint.h>

#include "li_kernels.h"

typedef __m512 vf;
#define VW 16
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
#define v_fmadd _mm512_fmadd_ps
#define v_fnmadd _mm512_fnmadd_ps
#define v_round(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* One instruction, where building 2^n in the exponent bits and multiplying takes four: exp
 * sits five times in every LSTM unit's update. */
#define v_ldexp(x, n) _mm512_scalef_ps((x), (n))
static inline vf v_load_bf16(const uint16_t *p) { /* bf16 is the top half of an f32 */
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
static inline vf v_load_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
/* 32 zmm registers hold G*R accumulators plus the G weight vectors of one input (x is
 * broadcast straight from memory): R = 6 rows at G = 4, 8 rows at G <= 2. At G = 3, 8 rows
 * (24 accumulators) measured 25% slower than 7 (GRU input projection, gcc 12): 7. */
/* Accumulator registers a tile may use when it splits k in two (see the matvec). */
#define MV_ACC_BUDGET 16
#define MV_MAX_ROWS(G) ((G) >= 4 ? 6 : (G) == 3 ? 7 : 8)

#include "simd_kernels_template.h"

const li_kernels li_kernels_avx512 = LI_SIMD_TABLE("avx512");
