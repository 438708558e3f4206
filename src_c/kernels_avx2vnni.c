/* The int8 product with AVX-VNNI (the VEX-encoded VPDPBUSD on ymm registers, e.g. on CPUs
 * without AVX-512). Activation codes are made unsigned by adding 128 (XOR 0x80 on the
 * broadcast); the template removes 128 * (row sum of the weight codes) at the end. */
#include "simd_vocab_avx2.h"

#define V_DOT_I8(acc, w, x) _mm256_dpbusd_avx_epi32((acc), (x), (w))
#define V_DOT_I8_PREP(x) _mm256_xor_si256((x), _mm256_set1_epi32((int32_t)0x80808080u))
#define V_DOT_I8_OFFSET 128
#define I8_NAME(x) x##_avx2vnni
#include "simd_matvec_i8_template.h"

void li_matvec_i8_avx2vnni(const void *packed, int K, int G, int blk0, int blk1,
                           const li_rows *x, int rows, const float *bias, const float *scale,
                           const int32_t *rowsum, int bgs, float *out, int ogs, int ldo) {
    matvec_i8_avx2vnni(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs, out, ogs,
                       ldo);
}
