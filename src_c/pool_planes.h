/*
 * Windowed max / sum pooling of planes (channels-first maps), shared by the whole-sequence
 * MaxPool / AveragePool ops (lstm_infer._engine.pool2d) and the step program's POOL record.
 */
#ifndef LI_POOL_PLANES_H
#define LI_POOL_PLANES_H

#include <stddef.h>
#include <stdint.h>

#include "li_kernels.h"

/* For p < planes, oh < OH, ow < OW:
 *   y[(p*OH + oh)*OW + ow] = reduce_{i < KH, j < KW} x[p*xps + (oh*sh + i*dh)*xrs + ow*sw + j*dw]
 * reduce = max (a NaN in a window gives NaN, as np.maximum) or, with is_sum, the sum (the
 * taps added in row-major order). The input is already padded: every index the formula
 * reaches must be inside x; y is contiguous and does not overlap x. 2 x 2 max windows at
 * stride 2 run on kern's vector kernel where it has one. */
void li_pool_planes(const li_kernels *kern, const float *x, size_t xps, size_t xrs,
                    int64_t planes, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
                    int64_t sw, int64_t dh, int64_t dw, int is_sum, float *y);

#endif
