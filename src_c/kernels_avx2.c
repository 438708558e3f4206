/* AVX2 + FMA kernels. Without VNNI the int8 dot product multiplies |w| (as unsigned bytes) by
 * x carrying w's sign (VPSIGNB, then VPMADDUBSW: |w| * x fits int16 and a pair sum stays
 * under 2 * 127 * 127 < 32768, so nothing saturates), then VPMADDWD adds the pairs. */
#include "simd_vocab_avx2.h"

static inline vi dot_i8_avx2(vi acc, vi w, vi x) {
    const vi pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#define V_DOT_I8(acc, w, x) dot_i8_avx2((acc), (w), (x))
#define V_DOT_I8_PREP(x) (x)
#define V_DOT_I8_OFFSET 0

#include "simd_kernels_template.h"

const li_kernels li_kernels_avx2 = LI_SIMD_TABLE("avx2");
