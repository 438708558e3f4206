/* The per-row decisions of int8 activation quantization, shared by the scalar reference and
 * the SIMD quantizers so every table treats the edge cases alike. */
#ifndef LI_INT8_ROW_SCALE_H
#define LI_INT8_ROW_SCALE_H
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/*
 * A row of K activations with largest magnitude `peak` and `probe` = sum of x * 0 (NaN once
 * any input is NaN or infinite). Sets *scale and zeroes the codes past K (up to a multiple
 * of 4). Returns 127 / peak, by which the caller multiplies each input before rounding to
 * nearest even; or 0 when the row is already done: all-zero codes, scale 0 for an all-zero
 * row or one too small for 127 / peak to be finite (peak below ~3.7e-37), NaN for a
 * non-finite one (its products are then NaN).
 */
static inline float int8_row_inverse(float peak, float probe, int8_t *codes, int K,
                                     float *scale) {
    const int padded = (K + 3) / 4 * 4;
    const float inv = probe == 0.0f && peak > 0.0f ? 127.0f / peak : 0.0f;
    if (!(inv > 0.0f && inv <= FLT_MAX)) {
        memset(codes, 0, (size_t)padded);
        *scale = probe != 0.0f ? NAN : 0.0f;
        return 0.0f;
    }
    memset(codes + K, 0, (size_t)(padded - K));
    *scale = peak / 127.0f;
    return inv;
}

#endif
