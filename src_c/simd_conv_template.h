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

/* One tile: positions [p0, p0 + (nv - 1) * VW + tail) of an output row, channels [0, mr)
 * of the tile whose packed weights are wp ([K][LI_CONV_MR]); nv (1..CONV_NV) vectors, the
 * last one tail (1..VW) lanes wide. Inlined with nv constant at every call, so each width
 * gets its own fully unrolled loop (the accumulators stay in registers) and a narrow tile
 * (a streamed chunk of a few frames) does the fmas of its own vectors only. */
static inline __attribute__((always_inline)) void conv_tile_nv(
    const float *const *rows, int K, const float *wp, int p0, const int nv, const int tail,
    const float *bias, int mr, float *y, size_t ldy, int relu) {
    vf acc[LI_CONV_MR][CONV_NV];
    for (int i = 0; i < LI_CONV_MR; ++i) {
        const vf b = v_set1(bias && i < mr ? bias[i] : 0.0f);
        for (int j = 0; j < nv; ++j) acc[i][j] = b;
    }
    for (int k = 0; k < K; ++k) {
        const float *src = rows[k] + p0;
        const float *w = wp + (size_t)k * LI_CONV_MR;
        vf xv[CONV_NV];
        for (int j = 0; j < nv - 1; ++j) xv[j] = v_load(src + j * VW);
        /* the last vector reads tail lanes only: nothing past the row's end is touched */
        xv[nv - 1] = tail == VW ? v_load(src + (nv - 1) * VW)
                                : v_load_n(src + (nv - 1) * VW, tail);
        for (int i = 0; i < LI_CONV_MR; ++i) {
            const vf wv = v_set1(w[i]);
            for (int j = 0; j < nv; ++j) acc[i][j] = v_fmadd(wv, xv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nv; ++j) {
            /* max(0, acc): x86 max returns its second operand when one is NaN */
            const vf v = relu ? v_max(v_zero(), acc[i][j]) : acc[i][j];
            st(y + (size_t)i * ldy + p0 + j * VW, v, j < nv - 1 ? VW : tail);
        }
}

/* One tile of np (1..CONV_NV * VW) positions: the full width, or a row's last, partial
 * tile, each on its own unrolled copy of the loop. */
static void conv_tile_simd(const float *const *rows, int K, const float *wp, int p0, int np,
                           const float *bias, int mr, float *y, size_t ldy, int relu) {
    if (np == CONV_NV * VW) {
        conv_tile_nv(rows, K, wp, p0, CONV_NV, VW, bias, mr, y, ldy, relu);
        return;
    }
    const int nv = (np + VW - 1) / VW, tail = np - (nv - 1) * VW;
    switch (nv) {
    case 1: conv_tile_nv(rows, K, wp, p0, 1, tail, bias, mr, y, ldy, relu); break;
#if CONV_NV >= 2
    case 2: conv_tile_nv(rows, K, wp, p0, 2, tail, bias, mr, y, ldy, relu); break;
#endif
#if CONV_NV >= 3
    case 3: conv_tile_nv(rows, K, wp, p0, 3, tail, bias, mr, y, ldy, relu); break;
#endif
#if CONV_NV >= 4
    case 4: conv_tile_nv(rows, K, wp, p0, 4, tail, bias, mr, y, ldy, relu); break;
#endif
    default: break; /* np <= CONV_NV * VW by the caller */
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
            for (int p0 = 0; p0 < OW; p0 += P) {
                int np = OW - p0 < P ? OW - p0 : P;
                /* A row's partial last span, in a row at least one span wide, runs as the
                 * full span ending at the row's end: the positions it shares with the span
                 * before are computed again, to the same bits (same terms, same order), and
                 * stored again. Measured on Zen 5: the masked loads of a partial span ran
                 * it at a third of the fma rate (a row of 124 took twice as long as 128). */
                if (np < P && OW >= P) {
                    p0 = OW - P;
                    np = P;
                }
                conv_tile_simd(rows, K, wp, p0, np, bias ? bias + m0 : 0, mr, yt, ldy, relu);
            }
        }
    }
}
