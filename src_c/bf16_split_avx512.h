/* Splitting fp32 activations into two bfloat16 halves, for the products that multiply bf16
 * pairs (VDPBF16PS, AMX TDPBF16PS). Needs AVX512-BF16. */
#ifndef LI_BF16_SPLIT_AVX512_H
#define LI_BF16_SPLIT_AVX512_H
#include <immintrin.h>
#include <math.h>

/* hi = bf16(x) rounded to nearest even and lo = bf16(x - hi) (x - hi is exact in fp32); lo
 * is 0 where hi is infinite, so an infinite input gives infinite products as when widening. */
static inline void split_bf16(__m512 v, __m256i *hi, __m256i *lo) {
    const __m256bh h = _mm512_cvtneps_pbh(v);
    const __m512 hf =
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(hf), _mm512_set1_ps(INFINITY),
                                                _CMP_NEQ_UQ);
    *hi = (__m256i)h;
    *lo = _mm256_maskz_mov_epi16(finite, (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
}

#endif
