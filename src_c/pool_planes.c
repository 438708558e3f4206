/*
 * li_pool_planes (pool_planes.h): the portable loop, one output row at a time, a whole row
 * per kernel tap (the compiler vectorises the unit-stride case); MaxPool2d(2), the CNN front
 * ends' pool, goes to the kernel table's vector kernel.
 */
#include "pool_planes.h"

/* NaN wins, as in np.maximum (an unordered compare picks the new value). */
static inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

void li_pool_planes(const li_kernels *kern, const float *x, size_t xps, size_t xrs,
                    int64_t planes, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                    int64_t sw, int64_t dh, int64_t dw, int is_sum, float *y) {
    if (!is_sum && kern != NULL && kern->max_pool_2x2 != NULL && KH == 2 && KW == 2 &&
        sh == 2 && sw == 2 && dh == 1 && dw == 1 && planes <= INT32_MAX && OH <= INT32_MAX &&
        OW <= INT32_MAX) {
        kern->max_pool_2x2(x, xps, xrs, (int)planes, (int)OH, (int)OW, y);
        return;
    }
    for (int64_t p = 0; p < planes; p++) {
        const float *plane = x + (size_t)p * xps;
        for (int64_t oh = 0; oh < OH; oh++) {
            float *out = y + (size_t)(p * OH + oh) * (size_t)OW;
            for (int64_t i = 0; i < KH; i++) {
                const float *row = plane + (size_t)(oh * sh + i * dh) * xrs;
                for (int64_t j = 0; j < KW; j++) {
                    const float *in = row + j * dw;
                    if (i == 0 && j == 0) {
                        for (int64_t ow = 0; ow < OW; ow++)
                            out[ow] = in[ow * sw];
                    } else if (is_sum) {
                        for (int64_t ow = 0; ow < OW; ow++)
                            out[ow] += in[ow * sw];
                    } else {
                        for (int64_t ow = 0; ow < OW; ow++)
                            out[ow] = max_nan(out[ow], in[ow * sw]);
                    }
                }
            }
        }
    }
}
