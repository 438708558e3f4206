/*
 * The portable scalar ISA: the fallback on any CPU and the oracle the SIMD variants are
 * tested against. Pointwise updates are the generic ones (exact libm activations).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "li_kernels.h"

/* Weight element e of a packed block, widened to float. */
static inline float weight_at(int format, const void *block, size_t e) {
    switch (format) {
    case LI_WEIGHTS_BF16: {
        const uint32_t bits = (uint32_t)((const uint16_t *)block)[e] << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    case LI_WEIGHTS_I8: return (float)((const int8_t *)block)[e];
    default: return ((const float *)block)[e];
    }
}

static const size_t element_bytes[LI_WEIGHT_FORMAT_COUNT] = {4, 2, 1};

static inline void matvec_packed_scalar(int format, const void *packed, int K, int G, int blk0,
                                        int blk1, const float *x, int ldx, int rows,
                                        const float *bias, const float *scale, int bgs,
                                        float *out, int ogs, int ldo) {
    const size_t block_elems = (size_t)K * G * LI_BLOCK;
    for (int blk = blk0; blk < blk1; ++blk) {
        const char *wb = (const char *)packed + (size_t)blk * block_elems * element_bytes[format];
        const int u0 = blk * LI_BLOCK;
        for (int b = 0; b < rows; ++b) {
            float acc[4][LI_BLOCK]; /* G <= 4 */
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) acc[g][l] = 0.0f;
            const float *xb = x + (size_t)b * ldx;
            for (int k = 0; k < K; ++k) {
                const float xk = xb[k];
                for (int g = 0; g < G; ++g)
                    for (int l = 0; l < LI_BLOCK; ++l)
                        acc[g][l] += weight_at(format, wb, ((size_t)k * G + g) * LI_BLOCK + l) * xk;
            }
            float *ob = out + (size_t)b * ldo + u0;
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) {
                    const size_t at = (size_t)g * bgs + u0 + l;
                    const float s = scale ? scale[at] : 1.0f;
                    ob[(size_t)g * ogs + l] = (bias ? bias[at] : 0.0f) + s * acc[g][l];
                }
        }
    }
}

#define SCALAR_MATVEC(SUFFIX, FORMAT)                                                          \
    static void matvec_packed_##SUFFIX(const void *packed, int K, int G, int blk0, int blk1,   \
                                       const float *x, int ldx, int rows, const float *bias,   \
                                       const float *scale, int bgs, float *out, int ogs,       \
                                       int ldo) {                                              \
        matvec_packed_scalar(FORMAT, packed, K, G, blk0, blk1, x, ldx, rows, bias, scale, bgs, \
                             out, ogs, ldo);                                                   \
    }
SCALAR_MATVEC(f32, LI_WEIGHTS_F32)
SCALAR_MATVEC(bf16, LI_WEIGHTS_BF16)
SCALAR_MATVEC(i8, LI_WEIGHTS_I8)

static void activation_array_scalar(int kind, const float *x, float *y, size_t n) {
    const li_activation act = {kind, 1.0f, 0.0f};
    for (size_t i = 0; i < n; ++i) y[i] = li_activation_scalar(&act, x[i]);
}

const li_kernels li_kernels_scalar = {
    "scalar",
    {matvec_packed_f32, matvec_packed_bf16, matvec_packed_i8},
    li_rnn_pointwise_generic,
    li_lstm_pointwise_generic,
    li_gru_gates_generic,
    li_gru_output_generic,
    activation_array_scalar,
};
