/* AVX-512 (F + DQ + BW + VL) kernels. Without VNNI the int8 dot product multiplies |w| (as
 * unsigned bytes) by x carrying w's sign (VPMADDUBSW: |w| * x fits int16, and a pair sum
 * stays under 2 * 127 * 127 < 32768, so nothing saturates), then VPMADDWD adds the pairs. */
#include "simd_vocab_avx512.h"

static inline vi dot_i8_avx512(vi acc, vi w, vi x) {
    const __mmask64 negative = _mm512_movepi8_mask(w);
    const vi x_signed = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
    const vi pairs = _mm512_maddubs_epi16(_mm512_abs_epi8(w), x_signed);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
}
#define V_DOT_I8(acc, w, x) dot_i8_avx512((acc), (w), (x))
#define V_DOT_I8_PREP(x) (x)
#define V_DOT_I8_OFFSET 0

#include "simd_kernels_template.h"

const li_kernels li_kernels_avx512 = LI_SIMD_TABLE("avx512");
