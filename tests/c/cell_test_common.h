/*
 * What the sanitized tests of the cells (tests/c/test_cell_*.c) share: deterministic random
 * floats, a tolerance check, the naive column-major sgemm of the BLAS interface the cells
 * call, and the packed gate-block layout of lstm_infer/_plan.py pack_gate_blocks.
 */
#ifndef CELL_TEST_COMMON_H
#define CELL_TEST_COMMON_H

#include <math.h>
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

static double test_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

static const char *const TEST_ISA_NAMES[LI_ISA_COUNT] = {
    "scalar", "avx2", "avx2vnni", "avx512", "avx512vnni", "avx512bf16", "amx"};

#endif /* CELL_TEST_COMMON_H */
