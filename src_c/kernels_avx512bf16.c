/* The bfloat16 products with AVX512-BF16: VDPBF16PS multiplies a pair of bf16 weights by a
 * pair of bf16 activations and adds both products into an fp32 lane.
 *   split:   activations as two bf16 halves (x = hi + lo to ~16 significant bits): ~2^-16
 *            relative error per activation, far below the weights' own 2^-9 rounding; two
 *            VDPBF16PS per weight pair (streaming, small batches).
 *   rounded: activations rounded to one bf16 (~2^-9, like the weights): one VDPBF16PS per
 *            pair, twice the fp32 FMA throughput (whole sequences at larger batches, where
 *            the products are compute-bound; see recurrent_driver.c). */
#include "bf16_split_avx512.h"
#include "simd_vocab_avx512.h"

#define BF16_DOT 1
#define V_DPBF16(acc, w, x) _mm512_dpbf16_ps((acc), (__m512bh)(w), (__m512bh)(x))
#define BF_NAME(x) x##_avx512bf16
#include "simd_matvec_bf16_template.h"
#undef BF16_DOT
#undef BF_NAME

#define BF16_DOT 2
#define BF_NAME(x) x##_avx512bf16_rounded
#include "simd_matvec_bf16_template.h"

void li_matvec_bf16_avx512bf16(const void *packed, int K, int G, int blk0, int blk1,
                               const li_rows *x, int rows, const float *bias,
                               const float *scale, const int32_t *rowsum, int bgs, float *out,
                               int ogs, int ldo) {
    matvec_bf16_avx512bf16(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs, out,
                           ogs, ldo);
}

/* Row layout: hi[K2 * 2] then lo[K2 * 2] (K2 = ceil(K / 2)), zero padded. */
void li_prepare_bf16_avx512bf16(const float *x, int ldx, int rows, int K, void *q, int ldq,
                                float *scale) {
    (void)scale;
    const int Kp = (K + 1) / 2 * 2;
    for (int b = 0; b < rows; ++b) {
        const float *xb = x + (size_t)b * ldx;
        uint16_t *hi = (uint16_t *)((char *)q + (size_t)b * ldq), *lo = hi + Kp;
        int k = 0;
        for (; k + VW <= K; k += VW) {
            __m256i h, l;
            split_bf16(_mm512_loadu_ps(xb + k), &h, &l);
            _mm256_storeu_si256((__m256i *)(hi + k), h);
            _mm256_storeu_si256((__m256i *)(lo + k), l);
        }
        if (k < K) {
            const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
            __m256i h, l;
            split_bf16(_mm512_maskz_loadu_ps(m, xb + k), &h, &l);
            _mm256_mask_storeu_epi16(hi + k, m, h);
            _mm256_mask_storeu_epi16(lo + k, m, l);
        }
        for (int p = K; p < Kp; ++p) hi[p] = lo[p] = 0;
    }
}

void li_matvec_bf16_rounded_avx512bf16(const void *packed, int K, int G, int blk0, int blk1,
                                       const li_rows *x, int rows, const float *bias,
                                       const float *scale, const int32_t *rowsum, int bgs,
                                       float *out, int ogs, int ldo) {
    matvec_bf16_avx512bf16_rounded(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs,
                                   out, ogs, ldo);
}

/* Row layout: bf16(x)[K2 * 2] (K2 = ceil(K / 2)), rounded to nearest even, zero padded. NaN
 * stays NaN and infinities stay infinite (VCVTNEPS2BF16). */
void li_prepare_bf16_rounded_avx512bf16(const float *x, int ldx, int rows, int K, void *q,
                                        int ldq, float *scale) {
    (void)scale;
    const int Kp = (K + 1) / 2 * 2;
    for (int b = 0; b < rows; ++b) {
        const float *xb = x + (size_t)b * ldx;
        uint16_t *hi = (uint16_t *)((char *)q + (size_t)b * ldq);
        int k = 0;
        for (; k + VW <= K; k += VW)
            _mm256_storeu_si256((__m256i *)(hi + k),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xb + k)));
        if (k < K) {
            const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
            _mm256_mask_storeu_epi16(hi + k, m,
                                     (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, xb + k)));
        }
        if (Kp > K) hi[K] = 0;
    }
}
