/*
 * li_conv2d_fn over the vector vocabulary of simd_kernels_template.h (included from there).
 *
 * Register tile: LI_CONV_MR output channels x CONV_NV vectors of consecutive output positions
 * of one output row. Per input row k of the K = C*KH*KW the row reads, CONV_NV loads of x and
 * LI_CONV_MR broadcast weights feed LI_CONV_MR * CONV_NV fmas: 6 x 4 zmm accumulators on
 * AVX-512 (24 fmas per 10 loads, fma-bound), 6 x 2 ymm on AVX2 (its 16 registers). The tile's
 * K weights (K x 6 floats) stay in L1 across a row's tiles, and the row's input (K x OW
 * floats) in L2 across its channel tiles.
 */
#ifndef CONV_NV
#define CONV_NV (VW == 16 ? 4 : 2)
#endif

/* One tile: positions [p0, p0 + np) of an output row (np <= CONV_NV * VW), channels
 * [0, mr) of the tile whose packed weights are wp ([K][LI_CONV_MR]). */
static void conv_tile_simd(const float *const *rows, int K, const float *wp, int p0, int np,
                           const float *bias, int mr, float *y, size_t ldy, int relu) {
    vf acc[LI_CONV_MR][CONV_NV];
    for (int i = 0; i < LI_CONV_MR; ++i) {
        const vf b = v_set1(bias && i < mr ? bias[i] : 0.0f);
        for (int j = 0; j < CONV_NV; ++j) acc[i][j] = b;
    }
    if (np == CONV_NV * VW) {
        for (int k = 0; k < K; ++k) {
            const float *src = rows[k] + p0;
            const float *w = wp + (size_t)k * LI_CONV_MR;
            vf xv[CONV_NV];
            for (int j = 0; j < CONV_NV; ++j) xv[j] = v_load(src + j * VW);
            for (int i = 0; i < LI_CONV_MR; ++i) {
                const vf wv = v_set1(w[i]);
                for (int j = 0; j < CONV_NV; ++j) acc[i][j] = v_fmadd(wv, xv[j], acc[i][j]);
            }
        }
    } else { /* the row's last, partial tile: masked loads past np (nothing read beyond) */
        for (int k = 0; k < K; ++k) {
            const float *src = rows[k] + p0;
            const float *w = wp + (size_t)k * LI_CONV_MR;
            vf xv[CONV_NV];
            for (int j = 0; j < CONV_NV; ++j) {
                const int n = np - j * VW;
                xv[j] = n >= VW ? v_load(src + j * VW) : n > 0 ? v_load_n(src + j * VW, n)
                                                                : v_zero();
            }
            for (int i = 0; i < LI_CONV_MR; ++i) {
                const vf wv = v_set1(w[i]);
                for (int j = 0; j < CONV_NV; ++j) acc[i][j] = v_fmadd(wv, xv[j], acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < CONV_NV; ++j) {
            const int n = np - j * VW;
            /* max(0, acc): x86 max returns its second operand when one is NaN */
            const vf v = relu ? v_max(v_zero(), acc[i][j]) : acc[i][j];
            if (n > 0) st(y + (size_t)i * ldy + p0 + j * VW, v, n);
        }
}

static void conv2d_simd(const float *x, size_t xcs, size_t xrs, int C, int KH, int KW, int sh,
                        int dh, int dw, int OH, int OW, const float *wpack, int M,
                        const float *bias, float *y, size_t ldy, int relu,
                        const float **rows) {
    const int K = C * KH * KW;
    const int tiles = (M + LI_CONV_MR - 1) / LI_CONV_MR;
    const int P = CONV_NV * VW;
    for (int oh = 0; oh < OH; ++oh) {
        int k = 0;
        for (int c = 0; c < C; ++c)
            for (int kh = 0; kh < KH; ++kh)
                for (int kw = 0; kw < KW; ++kw)
                    rows[k++] = x + (size_t)c * xcs + (size_t)(oh * sh + kh * dh) * xrs +
                                (size_t)kw * dw;
        for (int t = 0; t < tiles; ++t) {
            const int m0 = t * LI_CONV_MR;
            const int mr = M - m0 < LI_CONV_MR ? M - m0 : LI_CONV_MR;
            const float *wp = wpack + (size_t)t * K * LI_CONV_MR;
            float *yt = y + (size_t)m0 * ldy + (size_t)oh * OW;
            for (int p0 = 0; p0 < OW; p0 += P)
                conv_tile_simd(rows, K, wp, p0, OW - p0 < P ? OW - p0 : P,
                               bias ? bias + m0 : 0, mr, yt, ldy, relu);
        }
    }
}
