/*
 * The step program executor (src_c/step_program.c) against naive references, record kind by
 * record kind, under AddressSanitizer and UBSan (tests/test_c_kernels_sanitized.py builds and
 * runs it). Every buffer is allocated to exactly the extent its record may reach, so a record
 * that reads or writes one element too far is a sanitizer report. The kinds that call into a
 * kernel table (SOFTMAX, CONV, POOL's 2x2 max) run on every usable table; GEMM on a naive
 * column-major sgemm of the Fortran interface the executor calls; GROUPED_CONV (portable C)
 * once.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "li_kernels.h"
#include "step_program.h"

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

static float *floats(size_t n, unsigned seed) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = ((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f) * 4.0f;
    }
    return p;
}

static int close_to(float a, float b, float tol) {
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return fabsf(a - b) <= tol * (1.0f + fabsf(b));
}

static void run1(const li_step_op *op, const li_kernels *kern, li_sgemm_fn sgemm) {
    int rc = li_step_program_run(op, 1, kern, sgemm);
    CHECK(rc == 0, "record kind %d returned %d", op->kind, rc);
}

/* Column-major sgemm of the BLAS interface: C = alpha op(A) op(B) + beta C. */
static void naive_sgemm(char *ta, char *tb, int *m, int *n, int *k, float *alpha, float *a,
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

static void test_copy_gather_fill(const li_kernels *kern) {
    /* a transpose of a (3, 4, 5) block: y[k][i][j] = a[i][j][k] */
    float *a = floats(60, 1), *y = malloc(60 * sizeof(float));
    li_step_op op = {0};
    op.kind = LI_STEP_COPY;
    op.rank = 3;
    int64_t shape[3] = {5, 3, 4}, sy[3] = {12, 4, 1}, sa[3] = {1, 20, 5};
    memcpy(op.shape, shape, sizeof shape);
    memcpy(op.sy, sy, sizeof sy);
    memcpy(op.sa, sa, sizeof sa);
    op.a = a;
    op.y = y;
    run1(&op, kern, NULL);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 5; k++)
                CHECK(y[k * 12 + i * 4 + j] == a[i * 20 + j * 5 + k], "copy at %d %d %d", i, j, k);
    /* a gather with fills */
    int32_t idx[7] = {59, -1, 0, 3, -1, 17, 58};
    float *g = malloc(7 * sizeof(float));
    li_step_op gop = {0};
    gop.kind = LI_STEP_GATHER;
    gop.n[0] = 7;
    gop.f[0] = 2.5f;
    gop.a = a;
    gop.y = g;
    gop.aux = idx;
    run1(&gop, kern, NULL);
    for (int i = 0; i < 7; i++)
        CHECK(g[i] == (idx[i] >= 0 ? a[idx[i]] : 2.5f), "gather %d", i);
    /* fill every other element of y (stride 2) */
    li_step_op fop = {0};
    fop.kind = LI_STEP_FILL;
    fop.rank = 1;
    fop.shape[0] = 30;
    fop.sy[0] = 2;
    fop.f[0] = -1.0f;
    fop.y = y;
    run1(&fop, kern, NULL);
    for (int i = 0; i < 60; i += 2)
        CHECK(y[i] == -1.0f, "fill %d", i);
    free(a);
    free(y);
    free(g);
}

static void test_unary_binary(const li_kernels *kern) {
    const int n = 37;
    float *a = floats(n, 2), *y = malloc(n * sizeof(float));
    a[3] = NAN;
    int kinds[] = {LI_UNARY_RELU, LI_UNARY_SIGMOID, LI_UNARY_TANH, LI_UNARY_ABS,
                   LI_UNARY_SQUARE, LI_UNARY_CLIP, LI_UNARY_ELU, LI_UNARY_GELU};
    for (size_t t = 0; t < sizeof kinds / sizeof kinds[0]; t++) {
        li_step_op op = {0};
        op.kind = LI_STEP_UNARY;
        op.op = kinds[t];
        op.n[0] = n;
        op.f[0] = kinds[t] == LI_UNARY_CLIP ? -0.5f : 1.0f;
        op.f[1] = 0.75f;
        op.a = a;
        op.y = y;
        run1(&op, kern, NULL);
        for (int i = 0; i < n; i++) {
            float x = a[i], want;
            switch (kinds[t]) {
            case LI_UNARY_RELU: want = isnan(x) ? x : (x > 0 ? x : 0); break;
            case LI_UNARY_SIGMOID: want = 1.0f / (1.0f + expf(-x)); break;
            case LI_UNARY_TANH: want = tanhf(x); break;
            case LI_UNARY_ABS: want = fabsf(x); break;
            case LI_UNARY_SQUARE: want = x * x; break;
            case LI_UNARY_CLIP: want = isnan(x) ? x : fminf(fmaxf(x, -0.5f), 0.75f); break;
            case LI_UNARY_ELU: want = x >= 0 ? x : expf(x) - 1.0f; break;
            default: want = 0.5f * x * (1.0f + erff(x / sqrtf(2.0f)));
            }
            CHECK(close_to(y[i], want, 1e-6f), "unary %d at %d: %g vs %g", kinds[t], i, y[i], want);
        }
    }
    /* broadcast (4, 1, 3) + (1, 5, 3) -> (4, 5, 3), strides 0 on the broadcast dims */
    float *b = floats(12, 3), *c = floats(15, 4), *z = malloc(60 * sizeof(float));
    li_step_op op = {0};
    op.kind = LI_STEP_BINARY;
    op.op = LI_BINARY_SUB;
    op.rank = 3;
    int64_t shape[3] = {4, 5, 3}, sy[3] = {15, 3, 1}, sa[3] = {3, 0, 1}, sb[3] = {0, 3, 1};
    memcpy(op.shape, shape, sizeof shape);
    memcpy(op.sy, sy, sizeof sy);
    memcpy(op.sa, sa, sizeof sa);
    memcpy(op.sb, sb, sizeof sb);
    op.a = b;
    op.b = c;
    op.y = z;
    run1(&op, kern, NULL);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 5; j++)
            for (int k = 0; k < 3; k++)
                CHECK(z[i * 15 + j * 3 + k] == b[i * 3 + k] - c[j * 3 + k], "binary %d %d %d", i,
                      j, k);
    free(a);
    free(y);
    free(b);
    free(c);
    free(z);
}

static void test_reduce_norm_softmax(const li_kernels *kern) {
    const int outer = 3, n = 7, inner = 2;
    float *a = floats(outer * n * inner, 5), *y = malloc(outer * inner * sizeof(float));
    for (int kind = 0; kind < LI_REDUCE_COUNT; kind++) {
        li_step_op op = {0};
        op.kind = LI_STEP_REDUCE;
        op.op = kind;
        op.n[0] = outer;
        op.n[1] = n;
        op.n[2] = inner;
        op.a = a;
        op.y = y;
        run1(&op, kern, NULL);
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++) {
                double s = 0, sq = 0, l1 = 0, p = 1, mx = -INFINITY, mn = INFINITY, lse = 0;
                for (int j = 0; j < n; j++) {
                    double v = a[(o * n + j) * inner + i];
                    s += v, sq += v * v, l1 += fabs(v), p *= v;
                    mx = fmax(mx, v), mn = fmin(mn, v);
                }
                for (int j = 0; j < n; j++)
                    lse += exp(a[(o * n + j) * inner + i] - mx);
                double want[LI_REDUCE_COUNT] = {s, s / n, mx, mn, p, l1, sqrt(sq), sq,
                                                mx + log(lse)};
                CHECK(close_to(y[o * inner + i], (float)want[kind], 1e-5f), "reduce %d", kind);
            }
    }
    /* layer norm of 3 rows of 14, then softmax of the result in place */
    float *x = floats(42, 6), *ln = malloc(42 * sizeof(float)), *g = floats(14, 7);
    li_step_op op = {0};
    op.kind = LI_STEP_LAYERNORM;
    op.n[0] = 3;
    op.n[1] = 14;
    op.f[0] = 1e-5f;
    op.a = x;
    op.y = ln;
    op.aux = g;
    run1(&op, kern, NULL);
    for (int r = 0; r < 3; r++) {
        double m = 0, v = 0;
        for (int j = 0; j < 14; j++)
            m += x[r * 14 + j];
        m /= 14;
        for (int j = 0; j < 14; j++)
            v += (x[r * 14 + j] - m) * (x[r * 14 + j] - m);
        v /= 14;
        for (int j = 0; j < 14; j++) {
            float want = (float)((x[r * 14 + j] - m) / sqrt(v + 1e-5) * g[j]);
            CHECK(close_to(ln[r * 14 + j], want, 1e-5f), "layernorm %d %d", r, j);
        }
    }
    li_step_op sm = {0};
    sm.kind = LI_STEP_SOFTMAX;
    sm.n[0] = 3;
    sm.n[1] = 14;
    sm.a = ln;
    sm.y = ln;
    float before[42];
    memcpy(before, ln, sizeof before);
    run1(&sm, kern, NULL);
    for (int r = 0; r < 3; r++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < 14; j++)
            mx = fmax(mx, before[r * 14 + j]);
        for (int j = 0; j < 14; j++)
            s += exp(before[r * 14 + j] - mx);
        for (int j = 0; j < 14; j++)
            CHECK(close_to(ln[r * 14 + j], (float)(exp(before[r * 14 + j] - mx) / s), 1e-5f),
                  "softmax %d %d", r, j);
    }
    free(a);
    free(y);
    free(x);
    free(ln);
    free(g);
}

static void test_pool_gemm(const li_kernels *kern) {
    /* max and sum pools over 2 planes of 7x9: kernel 3x2, stride (2, 1), dilation (1, 2);
     * and the 2x2 / stride 2 window the executor runs on its own path, with a NaN */
    const int windows[2][6] = {{3, 2, 2, 1, 1, 2}, {2, 2, 2, 2, 1, 1}};
    const int P = 2, H = 7, W = 9;
    for (int c = 0; c < 2; c++) {
        const int KH = windows[c][0], KW = windows[c][1], sh = windows[c][2], sw = windows[c][3];
        const int dh = windows[c][4], dw = windows[c][5];
        const int OH = (H - (KH - 1) * dh - 1) / sh + 1, OW = (W - (KW - 1) * dw - 1) / sw + 1;
        float *x = floats(P * H * W, 8), *y = malloc(P * OH * OW * sizeof(float));
        x[W + 1] = NAN;
        for (int kind = 0; kind < 2; kind++) {
            li_step_op op = {0};
            op.kind = LI_STEP_POOL;
            op.op = kind;
            op.n[0] = P, op.n[1] = KH, op.n[2] = KW, op.n[3] = OH, op.n[4] = OW;
            op.shape[0] = sh, op.shape[1] = sw, op.shape[2] = dh, op.shape[3] = dw;
            op.sa[0] = H * W, op.sa[1] = W;
            op.a = x;
            op.y = y;
            run1(&op, kern, NULL);
            for (int p = 0; p < P; p++)
                for (int oh = 0; oh < OH; oh++)
                    for (int ow = 0; ow < OW; ow++) {
                        float acc = kind ? 0.0f : -INFINITY;
                        for (int i = 0; i < KH; i++)
                            for (int j = 0; j < KW; j++) {
                                const float *row = x + p * H * W + (oh * sh + i * dh) * W;
                                float v = row[ow * sw + j * dw];
                                acc = kind ? acc + v : ((v > acc || v != v) ? v : acc);
                            }
                        CHECK(close_to(y[(p * OH + oh) * OW + ow], acc, 1e-6f), "pool %d %d", c,
                              kind);
                    }
        }
        free(x);
        free(y);
    }
    /* gemm: y (R x N) = A^T-stored (K x R) times B (N x K)^T, + bias_col + relu, 2 entries */
    const int R = 5, N = 7, K = 6, E = 2;
    float *A = floats(E * K * R, 9), *B = floats(N * K, 10), *bias = floats(N, 11);
    float *Y = malloc(E * R * N * sizeof(float));
    li_step_op op = {0};
    op.kind = LI_STEP_GEMM;
    op.op = LI_UNARY_RELU;
    op.flags = 3;
    op.n[0] = R, op.n[1] = N, op.n[2] = K, op.n[3] = E, op.n[4] = K * R, op.n[5] = 0,
    op.n[6] = R * N;
    op.sa[0] = R, op.sb[0] = K, op.sy[0] = N;
    op.f[0] = 1.0f;
    op.a = A;
    op.b = B;
    op.y = Y;
    op.aux = bias;
    run1(&op, kern, naive_sgemm);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < R; r++)
            for (int j = 0; j < N; j++) {
                double acc = bias[j];
                for (int k = 0; k < K; k++)
                    acc += (double)A[e * K * R + k * R + r] * B[j * K + k];
                float want = acc > 0 ? (float)acc : 0.0f;
                CHECK(close_to(Y[e * R * N + r * N + j], want, 1e-5f), "gemm %d %d %d", e, r, j);
            }
    free(A);
    free(B);
    free(bias);
    free(Y);
}

static void test_conv(const li_kernels *kern) {
    /* one group, C = 3 -> M = 8, 3x3, stride (2, 1), dilation (1, 2), on an 9 x 21 input */
    const int C = 3, M = 8, KH = 3, KW = 3, sh = 2, dh = 1, dw = 2, H = 9, W = 21;
    const int OH = (H - (KH - 1) * dh - 1) / sh + 1, OW = W - (KW - 1) * dw;
    const int K = C * KH * KW, tiles = (M + LI_CONV_MR - 1) / LI_CONV_MR;
    float *x = floats(C * H * W, 12), *w = floats(M * K, 13), *bias = floats(M, 14);
    float *pack = calloc((size_t)tiles * K * LI_CONV_MR, sizeof(float));
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++)
            pack[((m / LI_CONV_MR) * K + k) * LI_CONV_MR + m % LI_CONV_MR] = w[m * K + k];
    float *y = malloc((size_t)M * OH * OW * sizeof(float));
    const float **rows = malloc(K * sizeof(float *));
    li_step_op op = {0};
    op.kind = LI_STEP_CONV;
    op.n[0] = C, op.n[1] = KH, op.n[2] = KW, op.n[3] = OH, op.n[4] = OW, op.n[5] = M,
    op.n[6] = 1;
    op.shape[0] = sh, op.shape[1] = dh, op.shape[2] = dw;
    op.sa[0] = H * W, op.sa[1] = W, op.sy[0] = OH * OW;
    op.a = x;
    op.b = pack;
    op.y = y;
    op.aux = bias;
    op.aux2 = rows;
    run1(&op, kern, NULL);
    for (int m = 0; m < M; m++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                double acc = bias[m];
                for (int c = 0; c < C; c++)
                    for (int i = 0; i < KH; i++)
                        for (int j = 0; j < KW; j++)
                            acc += (double)w[m * K + (c * KH + i) * KW + j] *
                                   x[c * H * W + (oh * sh + i * dh) * W + ow + j * dw];
                float want = acc > 0 ? (float)acc : 0.0f;
                CHECK(close_to(y[m * OH * OW + oh * OW + ow], want, 1e-4f), "conv %d %d %d",
                      m, oh, ow);
            }
    free(x);
    free(w);
    free(bias);
    free(pack);
    free(y);
    free(rows);
}

/* GROUPED_CONV (portable C, no table): grouped 2-D with strides and dilations, depthwise
 * 1-D of k = 5 (silero v4's), depthwise with a channel multiplier strided along the row;
 * the input allocated to exactly the last element its windows reach (padded rows and
 * planes), NaN in one window, relu on and off, with and without a bias. */
static void test_grouped_conv(void) {
    /* G, CG, MG, KH, KW, sh, sw, dh, dw, OH, OW, relu, bias */
    static const int cases[][13] = {
        {3, 2, 2, 2, 3, 2, 1, 1, 2, 3, 5, 1, 1},
        {7, 1, 1, 1, 5, 1, 1, 1, 1, 1, 9, 0, 1},
        {4, 1, 3, 3, 2, 1, 2, 2, 1, 2, 6, 1, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int *k = cases[ci];
        const int G = k[0], CG = k[1], MG = k[2], KH = k[3], KW = k[4], sh = k[5], sw = k[6];
        const int dh = k[7], dw = k[8], OH = k[9], OW = k[10], relu = k[11];
        const int64_t ih = (OH - 1) * sh + (KH - 1) * dh + 1, iw = (OW - 1) * sw + (KW - 1) * dw + 1;
        const int64_t rs = iw + (int64_t)(ci % 2), ps = ih * rs + (int64_t)ci;
        const size_t extent = (size_t)((G * CG - 1) * ps + (ih - 1) * rs + iw);
        const int M = G * MG, taps = CG * KH * KW;
        float *x = floats(extent, 50 + (unsigned)ci), *w = floats((size_t)M * taps, 60);
        float *bias = k[12] ? floats((size_t)M, 70) : NULL;
        float *y = malloc((size_t)M * OH * OW * sizeof(float));
        x[extent / 2] = NAN;
        li_step_op op = {0};
        op.kind = LI_STEP_GROUPED_CONV;
        op.n[0] = G, op.n[1] = KH, op.n[2] = KW, op.n[3] = OH, op.n[4] = OW, op.n[5] = MG,
        op.n[6] = relu;
        op.shape[0] = sh, op.shape[1] = sw, op.shape[2] = dh, op.shape[3] = dw, op.shape[4] = CG;
        op.sa[0] = ps, op.sa[1] = rs;
        op.a = x;
        op.b = w;
        op.y = y;
        op.aux = bias;
        run1(&op, li_kernels_for(0), NULL);
        for (int q = 0; q < M; q++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double acc = bias ? bias[q] : 0.0;
                    for (int c = 0; c < CG; c++)
                        for (int i = 0; i < KH; i++)
                            for (int j = 0; j < KW; j++)
                                acc += (double)w[(q * CG + c) * KH * KW + i * KW + j] *
                                       x[((q / MG) * CG + c) * ps + (oh * sh + i * dh) * rs +
                                         ow * sw + j * dw];
                    float want = (float)acc;
                    if (relu && want < 0.0f)
                        want = 0.0f; /* (NaN stays NaN) */
                    CHECK(close_to(y[(q * OH + oh) * OW + ow], want, 1e-5f),
                          "grouped conv case %zu q=%d oh=%d ow=%d: %g vs %g", ci, q, oh, ow,
                          y[(q * OH + oh) * OW + ow], want);
                }
        free(x);
        free(w);
        free(bias);
        free(y);
    }
}

/* li_max_pool_2x2_fn on its own: widths around the vector widths (the vector part and the
 * scalar tail), padded rows and planes, NaN in each window position and in vector lanes,
 * -inf and +inf; x allocated to exactly the last element the formula reaches. */
static void test_max_pool_2x2(const li_kernels *kern) {
    static const int widths[] = {1, 3, 7, 8, 9, 15, 16, 17, 24, 33};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int OW = widths[wi], OH = 3, planes = 3;
        const size_t xrs = 2 * (size_t)OW + (wi % 3), xps = 2 * OH * xrs + (wi % 2) * 5;
        const size_t extent = (planes - 1) * xps + (2 * OH - 1) * xrs + 2 * (size_t)OW;
        float *x = floats(extent, 40 + (unsigned)wi);
        float *y = malloc(planes * OH * OW * sizeof(float));
        for (size_t i = 0; i < extent; i += 7 + wi)
            x[i] = NAN; /* every window slot and lane, over the widths */
        x[extent - 1] = -INFINITY;
        x[xrs + 1] = INFINITY;
        kern->max_pool_2x2(x, xps, xrs, planes, OH, OW, y);
        for (int p = 0; p < planes; p++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    float want = -INFINITY;
                    int nan = 0;
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 2; j++) {
                            const float v = x[p * xps + (2 * oh + i) * xrs + 2 * ow + j];
                            nan |= v != v;
                            want = v > want ? v : want;
                        }
                    const float got = y[(p * OH + oh) * OW + ow];
                    CHECK(nan ? got != got : got == want, "max_pool_2x2 OW=%d p=%d oh=%d ow=%d: "
                          "%g vs %s%g", OW, p, oh, ow, got, nan ? "NaN, not " : "", want);
                }
        free(x);
        free(y);
    }
}

int main(void) {
    static const char *names[LI_ISA_COUNT] = {"scalar", "avx2", "avx2vnni", "avx512",
                                              "avx512vnni", "avx512bf16", "amx"};
    unsigned usable = li_usable_isas();
    for (int isa = 0; isa < LI_ISA_COUNT; isa++) {
        const li_kernels *kern = li_kernels_for(isa);
        if (kern == NULL || !(usable & (1u << isa)))
            continue;
        int before = failures;
        test_copy_gather_fill(kern);
        test_unary_binary(kern);
        test_reduce_norm_softmax(kern);
        test_pool_gemm(kern);
        test_conv(kern);
        test_max_pool_2x2(kern);
        printf("%-10s %s\n", names[isa], failures == before ? "ok" : "FAILED");
    }
    int before = failures;
    test_grouped_conv();
    printf("%-10s %s\n", "portable", failures == before ? "ok" : "FAILED");
    li_step_op bad = {0};
    bad.kind = LI_STEP_KIND_COUNT;
    CHECK(li_step_program_run(&bad, 1, li_kernels_for(0), NULL) == -1, "an unknown kind fails");
    if (failures == 0)
        printf("all ok\n");
    return failures != 0;
}
