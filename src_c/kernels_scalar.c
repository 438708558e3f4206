/*
 * The portable scalar ISA: the fallback on any CPU and the oracle the SIMD variants are
 * tested against. Pointwise updates are the generic ones (exact libm activations).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "int8_row_scale.h"
#include "li_kernels.h"

static float bf16_to_float(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* out = bias + W x for float32 ([K][G][16]) or bfloat16 ([K/2][G][16][2]) blocks; with xq
 * not NULL the activations are the bfloat16 rows there (ldq bytes apart) instead of x. */
static inline void matvec_scalar(int bf16, const void *packed, int K, int G, int blk0,
                                 int blk1, const float *x, int ldx, const uint16_t *xq, int ldq,
                                 int rows, const float *bias, int bgs, float *out, int ogs,
                                 int ldo) {
    const int Kp = bf16 ? (K + 1) / 2 * 2 : K;
    const size_t block_elems = (size_t)Kp * G * LI_BLOCK;
    for (int blk = blk0; blk < blk1; ++blk) {
        const int u0 = blk * LI_BLOCK;
        for (int b = 0; b < rows; ++b) {
            float acc[4][LI_BLOCK]; /* G <= 4 */
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) acc[g][l] = 0.0f;
            const float *xb = x + (size_t)b * ldx;
            const uint16_t *qb = xq ? (const uint16_t *)((const char *)xq + (size_t)b * ldq) : 0;
            for (int k = 0; k < K; ++k)
                for (int g = 0; g < G; ++g)
                    for (int l = 0; l < LI_BLOCK; ++l) {
                        float w;
                        if (bf16) {
                            const size_t e = (((size_t)(k / 2) * G + g) * LI_BLOCK + l) * 2 + k % 2;
                            w = bf16_to_float(((const uint16_t *)packed)[blk * block_elems + e]);
                        } else {
                            w = ((const float *)packed)[blk * block_elems +
                                                        ((size_t)k * G + g) * LI_BLOCK + l];
                        }
                        acc[g][l] += w * (qb ? bf16_to_float(qb[k]) : xb[k]);
                    }
            float *ob = out + (size_t)b * ldo + u0;
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l)
                    ob[(size_t)g * ogs + l] = (bias ? bias[(size_t)g * bgs + u0 + l] : 0.0f) +
                                              acc[g][l];
        }
    }
}

static void matvec_f32_scalar(const void *packed, int K, int G, int blk0, int blk1,
                              const float *x, int ldx, int rows, const float *bias,
                              int bgs, float *out, int ogs, int ldo) {
    matvec_scalar(0, packed, K, G, blk0, blk1, x, ldx, 0, 0, rows, bias, bgs, out, ogs, ldo);
}

static void matvec_bf16_scalar(const void *packed, int K, int G, int blk0, int blk1,
                               const li_rows *x, int rows, const float *bias, const float *scale,
                               const int32_t *rowsum, int bgs, float *out, int ogs, int ldo) {
    (void)scale;
    (void)rowsum;
    matvec_scalar(1, packed, K, G, blk0, blk1, x->x, x->ldx, 0, 0, rows, bias, bgs, out, ogs,
                  ldo);
}

/* Round to nearest even bfloat16 by the bits, as VCVTNEPS2BF16 does: NaN stays a (quiet)
 * NaN, and a denormal input counts as a zero of its sign (the instruction ignores MXCSR). */
static uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    if ((bits & 0x7f800000u) == 0) return (uint16_t)((bits >> 16) & 0x8000u);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

void li_prepare_bf16_rounded_scalar(const float *x, int ldx, int rows, int K, void *q, int ldq,
                                    float *scale) {
    (void)scale;
    for (int b = 0; b < rows; ++b) {
        uint16_t *qb = (uint16_t *)((char *)q + (size_t)b * ldq);
        for (int k = 0; k < K; ++k) qb[k] = float_to_bf16(x[(size_t)b * ldx + k]);
        if (K % 2) qb[K] = 0;
    }
}

void li_matvec_bf16_rounded_scalar(const void *packed, int K, int G, int blk0, int blk1,
                                   const li_rows *x, int rows, const float *bias,
                                   const float *scale, const int32_t *rowsum, int bgs,
                                   float *out, int ogs, int ldo) {
    (void)scale;
    (void)rowsum;
    matvec_scalar(1, packed, K, G, blk0, blk1, x->x, x->ldx, (const uint16_t *)x->q, x->ldq,
                  rows, bias, bgs, out, ogs, ldo);
}

/* The reference quantizer every ISA matches bit for bit: one scalar division per row, then
 * float multiply and round-to-nearest-even (lrintf under the default rounding mode, as the
 * SIMD conversions). */
static void prepare_i8_scalar(const float *x, int ldx, int rows, int K, void *q, int ldq,
                              float *scale) {
    for (int b = 0; b < rows; ++b) {
        const float *xb = x + (size_t)b * ldx;
        int8_t *qb = (int8_t *)q + (size_t)b * ldq;
        float peak = 0.0f, finite = 0.0f;
        for (int k = 0; k < K; ++k) {
            const float a = fabsf(xb[k]);
            peak = a > peak ? a : peak;
            finite += xb[k] * 0.0f; /* NaN once any input is NaN or infinite */
        }
        const float inv = int8_row_inverse(peak, finite, qb, K, &scale[b]);
        if (inv == 0.0f) continue;
        for (int k = 0; k < K; ++k) qb[k] = (int8_t)lrintf(xb[k] * inv);
    }
}

static void matvec_i8_scalar(const void *packed, int K, int G, int blk0, int blk1,
                             const li_rows *x, int rows, const float *bias, const float *scale,
                             const int32_t *rowsum, int bgs, float *out, int ogs, int ldo) {
    (void)rowsum;
    const int Kq = (K + 3) / 4;
    const size_t block_bytes = (size_t)Kq * G * LI_BLOCK * 4;
    for (int blk = blk0; blk < blk1; ++blk) {
        const int8_t *wb = (const int8_t *)packed + (size_t)blk * block_bytes;
        const int u0 = blk * LI_BLOCK;
        for (int b = 0; b < rows; ++b) {
            const int8_t *xq = (const int8_t *)x->q + (size_t)b * x->ldq;
            float *ob = out + (size_t)b * ldo + u0;
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) {
                    int32_t acc = 0;
                    for (int kq = 0; kq < Kq; ++kq)
                        for (int j = 0; j < 4; ++j)
                            acc += (int32_t)wb[(((size_t)kq * G + g) * LI_BLOCK + l) * 4 + j] *
                                   xq[kq * 4 + j];
                    const size_t at = (size_t)g * bgs + u0 + l;
                    ob[(size_t)g * ogs + l] =
                        fmaf((float)acc, scale[at] * x->scale[b], bias ? bias[at] : 0.0f);
                }
        }
    }
}

static void activation_array_scalar(int kind, const float *x, float *y, size_t n) {
    const li_activation act = {kind, 1.0f, 0.0f};
    for (size_t i = 0; i < n; ++i) y[i] = li_activation_scalar(&act, x[i]);
}

/* The reference softmax: the formula of li_softmax_rows_fn with libm's expf / logf and a
 * double sum (one float sum over 8,210 classes drifted by 4.5e-6; the SIMD tables keep VW
 * float partial sums, which measured 1e-7). */
static void softmax_rows_scalar(float *y, size_t rows, size_t n, size_t ld, int log_softmax) {
    for (size_t r = 0; r < rows; ++r) {
        float *row = y + r * ld;
        float m = -INFINITY;
        for (size_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
        double sum = 0.0; /* a NaN skipped by the max above reaches it through expf */
        for (size_t j = 0; j < n; ++j) {
            const float e = expf(row[j] - m);
            sum += e;
            if (!log_softmax) row[j] = e;
        }
        const float s = (float)sum;
        if (log_softmax) {
            const float log_s = logf(s); /* (y - m) - log s: m + log s would round at |m| */
            for (size_t j = 0; j < n; ++j) row[j] = (row[j] - m) - log_s;
        } else {
            const float inv = 1.0f / s;
            for (size_t j = 0; j < n; ++j) row[j] *= inv;
        }
    }
}

/* The reference convolution: li_conv2d_fn's formula term by term (rows is unused). */
static void conv2d_scalar(const float *x, size_t xcs, size_t xrs, int C, int KH, int KW, int sh,
                          int dh, int dw, int OH, int OW, const float *wpack, int M,
                          const float *bias, float *y, size_t ldy, int relu,
                          const float **rows) {
    (void)rows;
    const size_t K = (size_t)C * KH * KW;
    for (int m = 0; m < M; ++m) {
        const float *wm = wpack + (size_t)(m / LI_CONV_MR) * K * LI_CONV_MR + m % LI_CONV_MR;
        for (int oh = 0; oh < OH; ++oh)
            for (int ow = 0; ow < OW; ++ow) {
                float acc = bias ? bias[m] : 0.0f;
                size_t k = 0;
                for (int c = 0; c < C; ++c)
                    for (int kh = 0; kh < KH; ++kh)
                        for (int kw = 0; kw < KW; ++kw, ++k)
                            acc = fmaf(wm[k * LI_CONV_MR],
                                       x[(size_t)c * xcs + (size_t)(oh * sh + kh * dh) * xrs +
                                         (size_t)(ow + kw * dw)],
                                       acc);
                y[(size_t)m * ldy + (size_t)oh * OW + ow] = relu && acc < 0.0f ? 0.0f : acc;
            }
    }
}

/* NaN wins: an unordered compare picks the new value, and a NaN already held stays (no
 * ordered compare replaces it). */
static inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

/* The reference 2 x 2 max pool: li_max_pool_2x2_fn's formula, window by window. */
static void max_pool_2x2_scalar(const float *x, size_t xps, size_t xrs, int planes, int OH,
                                int OW, float *y) {
    for (int p = 0; p < planes; ++p)
        for (int oh = 0; oh < OH; ++oh) {
            const float *r0 = x + (size_t)p * xps + (size_t)(2 * oh) * xrs, *r1 = r0 + xrs;
            float *out = y + ((size_t)p * OH + oh) * OW;
            for (int ow = 0; ow < OW; ++ow) {
                float m = r0[2 * ow];
                m = max_nan(m, r0[2 * ow + 1]);
                m = max_nan(m, r1[2 * ow]);
                out[ow] = max_nan(m, r1[2 * ow + 1]);
            }
        }
}

/* The reference layer norm: li_layernorm_rows_fn's formula with float64 statistics. */
static void layernorm_rows_scalar(const float *x, float *y, size_t rows, size_t n,
                                  const float *scale, const float *bias, float eps) {
    for (size_t r = 0; r < rows; ++r) {
        const float *a = x + r * n;
        float *out = y + r * n;
        double mean = 0.0, var = 0.0;
        for (size_t j = 0; j < n; ++j) mean += a[j];
        mean /= (double)n;
        for (size_t j = 0; j < n; ++j) var += (a[j] - mean) * (a[j] - mean);
        var /= (double)n;
        const float inv = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        for (size_t j = 0; j < n; ++j) {
            float v = (a[j] - m) * inv;
            if (scale) v *= scale[j];
            if (bias) v += bias[j];
            out[j] = v;
        }
    }
}

/* The reference energies: libm's tanh and a double sum per key row. */
static void tanh_energies_scalar(const float *q, const float *k, size_t ldk, size_t n,
                                 size_t A, const float *v, float *e) {
    for (size_t j = 0; j < n; ++j) {
        const float *kj = k + j * ldk;
        double sum = 0.0;
        for (size_t i = 0; i < A; ++i)
            sum += (double)v[i] * tanh((double)((q ? q[i] : 0.0f) + kj[i]));
        e[j] = (float)sum;
    }
}

const li_kernels li_kernels_scalar = {
    "scalar",
    matvec_f32_scalar,
    matvec_bf16_scalar,
    0,
    matvec_i8_scalar,
    prepare_i8_scalar,
    0,
    li_rnn_pointwise_generic,
    li_lstm_pointwise_generic,
    li_gru_gates_generic,
    li_gru_output_generic,
    activation_array_scalar,
    softmax_rows_scalar,
    conv2d_scalar,
    .matvec_f32_rows = {0, 1, 1, 1, 1}, /* matvec_scalar: one row at a time */
    .max_pool_2x2 = max_pool_2x2_scalar,
    .layernorm_rows = layernorm_rows_scalar,
    .tanh_energies = tanh_energies_scalar,
};
