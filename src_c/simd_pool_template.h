/*
 * li_max_pool_2x2_fn over the vector vocabulary of simd_kernels_template.h (included from
 * there). A MaxPool2d(2) after a convolution reads a few MB per call (the zoo's CRNN: 128
 * planes of 32 x 128), where a scalar loop spends its time on the compares: here each step
 * takes VW outputs from 2*VW floats of both rows, the vertical max first (contiguous), then
 * the max of each even / odd lane pair. The last OW % VW outputs of a row use the scalar
 * formula.
 */
static inline float max_nan_1(float m, float v) { return (v > m || v != v) ? v : m; }

static void max_pool_2x2_simd(const float *x, size_t xps, size_t xrs, int planes, int OH,
                              int OW, float *y) {
    const int full = OW - OW % VW;
    for (int p = 0; p < planes; ++p)
        for (int oh = 0; oh < OH; ++oh) {
            const float *r0 = x + (size_t)p * xps + (size_t)(2 * oh) * xrs, *r1 = r0 + xrs;
            float *out = y + ((size_t)p * OH + oh) * OW;
            for (int ow = 0; ow < full; ow += VW) {
                const vf lo = v_max_nan(v_load(r0 + 2 * ow), v_load(r1 + 2 * ow));
                const vf hi = v_max_nan(v_load(r0 + 2 * ow + VW), v_load(r1 + 2 * ow + VW));
                v_store(out + ow, v_max_nan(v_evens(lo, hi), v_odds(lo, hi)));
            }
            for (int ow = full; ow < OW; ++ow) {
                float m = r0[2 * ow];
                m = max_nan_1(m, r0[2 * ow + 1]);
                m = max_nan_1(m, r1[2 * ow]);
                out[ow] = max_nan_1(m, r1[2 * ow + 1]);
            }
        }
}
