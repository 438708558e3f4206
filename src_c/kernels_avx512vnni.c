/* The int8 product with AVX512-VNNI: VPDPBUSD adds four unsigned x signed byte products per
 * int32 lane in one instruction. Activation codes are made unsigned by adding 128 (XOR 0x80
 * on the broadcast); the template removes 128 * (row sum of the weight codes) at the end. */
#include "simd_vocab_avx512.h"

#define V_DOT_I8(acc, w, x) _mm512_dpbusd_epi32((acc), (x), (w))
#define V_DOT_I8_PREP(x) _mm512_xor_si512((x), _mm512_set1_epi32((int32_t)0x80808080u))
#define V_DOT_I8_OFFSET 128
#define I8_NAME(x) x##_avx512vnni
/* The offset broadcasts take a register each (the XOR cannot fold into VPDPBUSD): at G = 4,
 * 6 rows would need 24 accumulators + 6 broadcasts + the weights + the 0x80 constant, and gcc
 * spilled accumulators in the inner loop; 5 rows measured faster (LSTM-256 int8 sequences,
 * batch 16, Zen 4). */
#define I8_MAX_ROWS(G) ((G) >= 4 ? 5 : MV_MAX_ROWS(G))
#include "simd_matvec_i8_template.h"

void li_matvec_i8_avx512vnni(const void *packed, int K, int G, int blk0, int blk1,
                             const li_rows *x, int rows, const float *bias, const float *scale,
                             const int32_t *rowsum, int bgs, float *out, int ogs, int ldo) {
    matvec_i8_avx512vnni(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs, out, ogs,
                         ldo);
}
