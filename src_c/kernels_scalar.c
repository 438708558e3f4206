/*
 * The portable scalar ISA: the fallback on any CPU and the oracle the SIMD variants are
 * tested against. Pointwise updates are the generic ones (exact libm activations).
 */
#include <math.h>

#include "li_kernels.h"

static void matvec_packed_scalar(const float *packed, int K, int G, int blk0, int blk1,
                                 const float *x, int ldx, int rows, const float *bias, int bgs,
                                 float *out, int ogs, int ldo) {
    const size_t block_floats = (size_t)K * G * LI_BLOCK;
    for (int blk = blk0; blk < blk1; ++blk) {
        const float *wb = packed + (size_t)blk * block_floats;
        const int u0 = blk * LI_BLOCK;
        for (int b = 0; b < rows; ++b) {
            float acc[4][LI_BLOCK]; /* G <= 4 */
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l)
                    acc[g][l] = bias ? bias[(size_t)g * bgs + u0 + l] : 0.0f;
            const float *xb = x + (size_t)b * ldx;
            for (int k = 0; k < K; ++k) {
                const float xk = xb[k];
                const float *wk = wb + (size_t)k * G * LI_BLOCK;
                for (int g = 0; g < G; ++g)
                    for (int l = 0; l < LI_BLOCK; ++l) acc[g][l] += wk[g * LI_BLOCK + l] * xk;
            }
            float *ob = out + (size_t)b * ldo + u0;
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) ob[(size_t)g * ogs + l] = acc[g][l];
        }
    }
}

static void activation_array_scalar(int kind, const float *x, float *y, size_t n) {
    const li_activation act = {kind, 1.0f, 0.0f};
    for (size_t i = 0; i < n; ++i) y[i] = li_activation_scalar(&act, x[i]);
}

const li_kernels li_kernels_scalar = {
    "scalar",
    matvec_packed_scalar,
    li_rnn_pointwise_generic,
    li_lstm_pointwise_generic,
    li_gru_gates_generic,
    li_gru_output_generic,
    activation_array_scalar,
};
