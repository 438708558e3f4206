/*
 * What the sanitized tests of the cells (tests/c/test_cell_*.c) share: deterministic random
 * floats, a tolerance check, the naive column-major sgemm of the BLAS interface the cells
 * call, and the packed gate-block layouts of lstm_infer/_plan.py pack_gate_blocks (float32)
 * and lstm_infer/cells/base.py packed (bf16, int8).
 */
#ifndef CELL_TEST_COMMON_H
#define CELL_TEST_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "li_cells.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            failures++;                                                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                     \
            printf(__VA_ARGS__);                                                            \
            printf("\n");                                                                   \
        }                                                                                   \
    } while (0)

/* n floats in [-scale, scale), the same for the same seed. */
static float *test_floats(size_t n, unsigned seed, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = ((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f) * 2.0f * scale;
    }
    return p;
}

static int test_close(double got, double want, double tol) {
    return fabs(got - want) <= tol * (1.0 + fabs(want));
}

/* Column-major sgemm of the BLAS interface: C = alpha op(A) op(B) + beta C. */
static void test_sgemm(char *ta, char *tb, int *m, int *n, int *k, float *alpha, float *a,
                       int *lda, float *b, int *ldb, float *beta, float *c, int *ldc) {
    for (int j = 0; j < *n; j++)
        for (int i = 0; i < *m; i++) {
            double acc = 0.0;
            for (int p = 0; p < *k; p++) {
                float av = (*ta == 'N') ? a[i + p * *lda] : a[p + i * *lda];
                float bv = (*tb == 'N') ? b[p + j * *ldb] : b[j + p * *ldb];
                acc += (double)av * bv;
            }
            float *cv = &c[i + j * *ldc];
            *cv = (float)(*alpha * acc + (*beta != 0.0f ? *beta * *cv : 0.0f));
        }
}

/* m: (G*H, K) row-major -> [ceil(H/BLOCK)][K][G][BLOCK], zero padded; *len its floats. */
static float *test_pack(const float *m, int G, int H, int K, int64_t *len) {
    const int nblk = (H + LI_BLOCK - 1) / LI_BLOCK;
    *len = (int64_t)nblk * K * G * LI_BLOCK;
    float *p = calloc((size_t)*len, sizeof(float));
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++)
            for (int k = 0; k < K; k++)
                p[(((size_t)(u / LI_BLOCK) * K + k) * G + g) * LI_BLOCK + u % LI_BLOCK] =
                    m[((size_t)g * H + u) * K + k];
    return p;
}

/* m: (G*H, K) -> (G*Hp, K), each gate's rows zero padded to whole blocks. */
static float *test_pad_rows(const float *m, int G, int H, int K, int64_t *len) {
    const int Hp = li_rcell_padded(H);
    *len = (int64_t)G * Hp * K;
    float *p = calloc((size_t)*len, sizeof(float));
    for (int g = 0; g < G; g++)
        memcpy(p + (size_t)g * Hp * K, m + (size_t)g * H * K, (size_t)H * K * sizeof(float));
    return p;
}

/* v: (G*H) -> (G*Hp) zero padded. */
static float *test_pad_vector(const float *v, int G, int H, int64_t *len) {
    const int Hp = li_rcell_padded(H);
    *len = (int64_t)G * Hp;
    float *p = calloc((size_t)*len, sizeof(float));
    for (int g = 0; g < G; g++)
        memcpy(p + (size_t)g * Hp, v + (size_t)g * H, (size_t)H * sizeof(float));
    return p;
}

/* The packed matrix in a quantized weight format (li_cells.h "Weight formats", as
 * lstm_infer/cells/base.py packed writes it), *len its bytes, 64-byte aligned. m is replaced
 * first by the weights the format holds (bf16: the top halves; int8: code * its row's scale,
 * the scale peak / 127) so a reference reading m computes the quantized model.
 * bf16: [nblk][ceil(K/2)][G][BLOCK][2] uint16; int8: [nblk][ceil(K/4)][G][BLOCK][4] codes,
 * then from the next 64 bytes the [G][Hp] float scales and int32 code sums. */
static void *test_pack_format(float *m, int G, int H, int K, int format, int64_t *len) {
    const int Hp = li_rcell_padded(H), nblk = Hp / LI_BLOCK, P = format == LI_WEIGHTS_I8 ? 4 : 2;
    const int Kp = (K + P - 1) / P * P;
    float *scale = calloc((size_t)G * Hp, sizeof(float));
    int32_t *sum = calloc((size_t)G * Hp, sizeof(int32_t));
    for (size_t i = 0; i < (size_t)G * Hp; i++)
        scale[i] = 1.0f; /* padding rows */
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++) {
            float *row = m + ((size_t)g * H + u) * K;
            float peak = 0;
            for (int k = 0; k < K; k++)
                peak = fabsf(row[k]) > peak ? fabsf(row[k]) : peak;
            const float sc = peak > 0 ? peak / 127.0f : 1.0f;
            scale[(size_t)g * Hp + u] = sc;
            for (int k = 0; k < K; k++) {
                if (format == LI_WEIGHTS_I8) {
                    const float code = nearbyintf(row[k] / sc);
                    sum[(size_t)g * Hp + u] += (int32_t)code;
                    row[k] = code * sc;
                } else {
                    uint32_t bits;
                    memcpy(&bits, &row[k], 4);
                    bits &= 0xFFFF0000u;
                    memcpy(&row[k], &bits, 4);
                }
            }
        }
    const size_t n = (size_t)nblk * Kp * G * LI_BLOCK, el = format == LI_WEIGHTS_I8 ? 1 : 2;
    const size_t codes = (n * el + 63) / 64 * 64;
    *len = format == LI_WEIGHTS_I8 ? (int64_t)(codes + (size_t)G * Hp * 8) : (int64_t)(n * el);
    unsigned char *p = aligned_alloc(64, ((size_t)*len + 63) / 64 * 64);
    memset(p, 0, ((size_t)*len + 63) / 64 * 64);
    for (int blk = 0; blk < nblk; blk++)
        for (int k = 0; k < K; k++)
            for (int g = 0; g < G; g++)
                for (int l = 0; l < LI_BLOCK; l++) {
                    const int u = blk * LI_BLOCK + l;
                    if (u >= H)
                        continue;
                    const size_t at =
                        ((((size_t)blk * (Kp / P) + k / P) * G + g) * LI_BLOCK + l) * P + k % P;
                    const float v = m[((size_t)g * H + u) * K + k];
                    if (format == LI_WEIGHTS_I8) {
                        ((int8_t *)p)[at] = (int8_t)lrintf(v / scale[(size_t)g * Hp + u]);
                    } else {
                        uint32_t bits;
                        memcpy(&bits, &v, 4);
                        const uint16_t top = (uint16_t)(bits >> 16);
                        memcpy(p + at * 2, &top, 2);
                    }
                }
    if (format == LI_WEIGHTS_I8) {
        memcpy(p + codes, scale, (size_t)G * Hp * 4);
        memcpy(p + codes + (size_t)G * Hp * 4, sum, (size_t)G * Hp * 4);
    }
    free(scale), free(sum);
    return p;
}

static double test_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

static const char *const TEST_ISA_NAMES[LI_ISA_COUNT] = {
    "scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "avx512bf16", "amx"};

#endif /* CELL_TEST_COMMON_H */
