/*
 * Standalone test of the C kernels: every ISA this CPU and OS can run, against the scalar
 * table and against naive C references written here (double accumulation, plain libm).
 *
 * Built and run by tests/test_c_kernels_sanitized.py with
 *   gcc -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
 * linking every src_c/ .c file directly (each per-ISA file with its own -m flags, as setup.py does).
 * Every buffer handed to a kernel is allocated at exactly the size the kernel's contract
 * allows, so AddressSanitizer turns any out-of-bounds access into a report; regions a kernel
 * must not write are filled with a canary and checked afterwards.
 *
 * Covered:
 *   products             every weight format (f32, bf16, int8 + per-row scales), G 1..4,
 *                        rows 1..9, awkward K and H, block sub-ranges, strides, bias; many
 *                        row tiles over > 1 MB of weights (next-block prefetch)
 *   rnn/lstm/gru kernels default activations; peephole, clip, input_forget, lbr, NaN
 *   li_run_direction     RNN/LSTM/GRU (+ peephole, clip, CIFG, lbr, projection, custom
 *                        activations), every weight format, ragged lens incl. 0, reverse,
 *                        strided x and y, the packed and the sgemm (very large batch)
 *                        recurrent paths, the packed (chunked) and the sgemm input
 *                        projections; the sgemm is a naive one written here
 *   li_stack_step        a 4-layer mixed stack over several steps, every weight format
 *   li_stack_step_rows   rows of a slab stepped = li_stack_step on them; others untouched
 *   prepare_i8/_bf16     int8 activation codes bit-identical to the reference quantizer
 *                        (ties, zero / NaN / Inf rows); bf16 halves summing back to x;
 *                        rounded bf16 bit-identical to the scalar reference
 *   rounded bf16         the rounded products against naive references on rounded
 *                        activations, and the drivers' rounded paths (batch >= 8) on every
 *                        table that has them plus the scalar table with the scalar ones
 *   token tables         tokens through cell->token_table == embedding rows through W
 * Every usable kernel table is tested, the dot-product ones (avx2vnni, avx512vnni,
 * avx512bf16) included. int8 references multiply the same activation codes.
 * Quantized weights are drawn exactly representable in their format (bf16-exact floats;
 * int8 codes times a per-row scale), so the float references see the same weights.
 * Exit status: 0 when everything matches, 1 on any mismatch (details on stderr).
 *
 * One file of ~1,500 lines because it is one program that tests/test_c_kernels_sanitized.py
 * compiles and links with the kernels under the sanitizers; its helpers (packing, canaries,
 * the naive references) serve every section. Splitting it into per-area files with a shared
 * test header is planned.
 */
#include <float.h>
#include <pthread.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "li_kernels.h"

static int g_failures = 0;
/* 1 while the bf16 products under test are the table's rounded ones (see test_matvec). */
static int g_rounded = 0;
static int g_checks = 0;
static const char *g_isa = "?";
static const float CANARY = -12345.678f;

#define FAIL(...)                                                                              \
    do {                                                                                       \
        if (g_failures < 40) {                                                                 \
            fprintf(stderr, "FAIL [%s] %s:%d: ", g_isa, __func__, __LINE__);                 \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
        ++g_failures;                                                                          \
    } while (0)

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

/* Uniform in [lo, hi): xorshift64*, deterministic across runs. */
static float frand(float lo, float hi) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    const uint64_t r = g_rng * 2685821657736338717ull;
    return lo + (hi - lo) * (float)((r >> 40) / (double)(1ull << 24));
}

static float *alloc_floats(size_t n) {
    /* n == 0 still returns a unique pointer ASan tracks (any access is an overflow). */
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static float *random_floats(size_t n, float lo, float hi) {
    float *p = alloc_floats(n);
    for (size_t i = 0; i < n; ++i) p[i] = frand(lo, hi);
    return p;
}

static float *copy_floats(const float *src, size_t n) {
    float *p = alloc_floats(n);
    memcpy(p, src, n * sizeof(float));
    return p;
}

static void fill(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; ++i) p[i] = v;
}

static int round_up(int n) { return (n + LI_BLOCK - 1) / LI_BLOCK * LI_BLOCK; }

/* |got - want| <= atol + rtol * |want|, NaN only where NaN is expected. */
static int close_enough(float got, double want, double atol, double rtol) {
    ++g_checks;
    if (isnan(want)) return isnan(got);
    if (isnan(got)) return 0;
    return fabs((double)got - want) <= atol + rtol * fabs(want);
}

static const char *const FORMAT_NAMES[LI_WEIGHT_FORMAT_COUNT] = {"f32", "bf16", "i8"};
static const size_t FORMAT_BYTES[LI_WEIGHT_FORMAT_COUNT] = {4, 2, 1};

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* A (rows, K) matrix of weights exactly representable in `format`. For int8, `row_scale`
 * receives one scale per row and every value is (code * scale) with an integer code. */
static float *random_weights(int format, int rows, int K, float lo, float hi,
                             float **row_scale) {
    float *m = random_floats((size_t)rows * K, lo, hi);
    *row_scale = 0;
    if (format == LI_WEIGHTS_BF16) {
        for (size_t i = 0; i < (size_t)rows * K; ++i)
            m[i] = bits_float(float_bits(m[i]) & 0xFFFF0000u);
    } else if (format == LI_WEIGHTS_I8) {
        *row_scale = alloc_floats((size_t)rows);
        for (int r = 0; r < rows; ++r) {
            const float scale = frand(0.5f, 1.0f) * (hi - lo) / 254.0f;
            (*row_scale)[r] = scale;
            for (int k = 0; k < K; ++k) {
                const float code = nearbyintf(frand(-127.0f, 127.0f));
                m[(size_t)r * K + k] = code * scale;
            }
        }
    }
    return m;
}

/* Inputs side by side in a packed block: 1 (f32), 2 (bf16), 4 (int8). */
static const int FORMAT_PAIR[LI_WEIGHT_FORMAT_COUNT] = {1, 2, 4};

/* Pack a (G*H, K) row-major matrix as [ceil(H/16)][ceil(K/P)][G][16][P] elements of `format`
 * (P = FORMAT_PAIR), zero padded (as _plan.py does). For int8 also build the [G][Hp] scale
 * array from row_scale and the [G][Hp] sums of each row's codes. */
static void *pack_gate_blocks(const float *m, int G, int H, int K, int format,
                              const float *row_scale, float **scale_out, int32_t **rowsum_out) {
    const int Hp = round_up(H), nblk = Hp / LI_BLOCK, P = FORMAT_PAIR[format];
    const int Kp = (K + P - 1) / P * P;
    const size_t n = (size_t)nblk * Kp * G * LI_BLOCK;
    unsigned char *p = malloc(n * FORMAT_BYTES[format] + (n == 0));
    if (!p) exit(2);
    for (int blk = 0; blk < nblk; ++blk)
        for (int k = 0; k < Kp; ++k)
            for (int g = 0; g < G; ++g)
                for (int l = 0; l < LI_BLOCK; ++l) {
                    const int u = blk * LI_BLOCK + l;
                    const size_t at =
                        ((((size_t)blk * (Kp / P) + k / P) * G + g) * LI_BLOCK + l) * P + k % P;
                    const float v = u < H && k < K ? m[((size_t)g * H + u) * K + k] : 0.0f;
                    if (format == LI_WEIGHTS_F32) {
                        memcpy(p + at * 4, &v, 4);
                    } else if (format == LI_WEIGHTS_BF16) {
                        const uint16_t top = (uint16_t)(float_bits(v) >> 16);
                        memcpy(p + at * 2, &top, 2);
                    } else {
                        const float scale = u < H ? row_scale[(size_t)g * H + u] : 1.0f;
                        ((int8_t *)p)[at] = (int8_t)lrintf(v / scale);
                    }
                }
    if (scale_out) *scale_out = 0;
    if (rowsum_out) *rowsum_out = 0;
    if (format == LI_WEIGHTS_I8 && scale_out && rowsum_out) {
        *scale_out = alloc_floats((size_t)G * Hp);
        *rowsum_out = malloc(sizeof(int32_t) * G * Hp);
        if (!*rowsum_out) exit(2);
        for (int g = 0; g < G; ++g)
            for (int u = 0; u < Hp; ++u) {
                const float scale = u < H ? row_scale[(size_t)g * H + u] : 1.0f;
                int32_t sum = 0;
                for (int k = 0; u < H && k < K; ++k)
                    sum += (int32_t)lrintf(m[((size_t)g * H + u) * K + k] / scale);
                (*scale_out)[(size_t)g * Hp + u] = scale;
                (*rowsum_out)[(size_t)g * Hp + u] = sum;
            }
    }
    return p;
}

/* One product through the kernel table, activations prepared as the driver does. */
static void run_product(const li_kernels *kern, int format, const void *packed, int K, int G,
                        int blk0, int blk1, const float *x, int ldx, int rows,
                        const float *bias, const float *scale, const int32_t *rowsum, int bgs,
                        float *out, int ogs, int ldo) {
    if (format == LI_WEIGHTS_F32) {
        kern->matvec_f32(packed, K, G, blk0, blk1, x, ldx, rows, bias, bgs, out, ogs, ldo);
        return;
    }
    const li_prepare_fn prep = format == LI_WEIGHTS_I8 ? kern->prepare_i8
                               : g_rounded            ? kern->prepare_bf16_rounded
                                                      : kern->prepare_bf16;
    const int ldq = (int)LI_PREPARED_ROW_BYTES(K);
    void *q = malloc((size_t)rows * ldq + 1);
    float *qscale = alloc_floats((size_t)rows);
    li_rows xr = {x, ldx, 0, 0, 0};
    if (prep) {
        prep(x, ldx, rows, K, q, ldq, qscale);
        xr.q = q;
        xr.ldq = ldq;
        xr.scale = qscale;
    }
    if (format == LI_WEIGHTS_I8)
        kern->matvec_i8(packed, K, G, blk0, blk1, &xr, rows, bias, scale, rowsum, bgs, out, ogs,
                        ldo);
    else
        (g_rounded ? kern->matvec_bf16_rounded : kern->matvec_bf16)(
            packed, K, G, blk0, blk1, &xr, rows, bias, 0, 0, bgs, out, ogs, ldo);
    free(q);
    free(qscale);
}

/* The int8 activation codes of one row, as every ISA must produce them (float32 peak,
 * 127 / peak, multiply, round half to even); returns the row's scale. */
static float ref_quantize_row(const float *x, int K, int8_t *codes) {
    float peak = 0.0f;
    int finite = 1;
    for (int k = 0; k < K; ++k) {
        if (!isfinite(x[k])) finite = 0;
        if (fabsf(x[k]) > peak) peak = fabsf(x[k]);
    }
    if (!finite || peak == 0.0f) {
        for (int k = 0; k < K; ++k) codes[k] = 0;
        return finite ? 0.0f : NAN;
    }
    const float inv = 127.0f / peak;
    if (!(inv <= FLT_MAX)) { /* a peak so small that 127 / peak overflows: all-zero codes */
        for (int k = 0; k < K; ++k) codes[k] = 0;
        return 0.0f;
    }
    for (int k = 0; k < K; ++k) codes[k] = (int8_t)nearbyintf(x[k] * inv);
    return peak / 127.0f;
}

/* v[0:n] replaced by what the int8 products see: code * scale (from float32 values). */
static void ref_int8_activations(double *v, int n) {
    float *f = alloc_floats((size_t)n);
    int8_t *codes = malloc((size_t)n + 1);
    for (int i = 0; i < n; ++i) f[i] = (float)v[i];
    const float scale = ref_quantize_row(f, n, codes);
    for (int i = 0; i < n; ++i) v[i] = (double)codes[i] * scale;
    free(f);
    free(codes);
}

/* ---- naive references --------------------------------------------------------------------- */

static double ref_act(const li_activation *a, double x) {
    switch (a->kind) {
    case LI_ACT_RELU: return x > 0 ? x : 0;
    case LI_ACT_TANH: return tanh(x);
    case LI_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case LI_ACT_AFFINE: return a->alpha * x + a->beta;
    case LI_ACT_LEAKY_RELU: return x >= 0 ? x : a->alpha * x;
    case LI_ACT_THRESHOLDED_RELU: return x > a->alpha ? x : 0;
    case LI_ACT_SCALED_TANH: return a->alpha * tanh(a->beta * x);
    case LI_ACT_HARD_SIGMOID: {
        const double y = a->alpha * x + a->beta;
        return y < 0 ? 0 : (y > 1 ? 1 : y);
    }
    case LI_ACT_ELU: return x >= 0 ? x : a->alpha * (exp(x) - 1);
    case LI_ACT_SOFTSIGN: return x / (1 + fabs(x));
    case LI_ACT_SOFTPLUS: return log1p(exp(x));
    default: return NAN;
    }
}

static double ref_clip(const li_cell *cell, double v) {
    if (cell->clip > 0) {
        if (v > cell->clip) return cell->clip;
        if (v < -cell->clip) return -cell->clip;
    }
    return v;
}

/* Column-major Fortran sgemm, the subset the driver uses: C = alpha op(A) op(B) + beta C. */
static void naive_sgemm(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                        float *a, int *lda, float *b, int *ldb, float *beta, float *c, int *ldc) {
    const int ta = *transa == 'T' || *transa == 't', tb = *transb == 'T' || *transb == 't';
    for (int j = 0; j < *n; ++j)
        for (int i = 0; i < *m; ++i) {
            double acc = 0;
            for (int p = 0; p < *k; ++p) {
                const float av = ta ? a[p + (size_t)i * *lda] : a[i + (size_t)p * *lda];
                const float bv = tb ? b[j + (size_t)p * *ldb] : b[p + (size_t)j * *ldb];
                acc += (double)av * bv;
            }
            float *cij = c + i + (size_t)j * *ldc;
            /* BLAS: beta == 0 means C is not read (it may hold NaN). */
            *cij = (float)(*alpha * acc + (*beta == 0.0f ? 0.0 : (double)*beta * *cij));
        }
}

/* A test cell: the unpacked weights (internal gate order) plus the packed li_cell. */
typedef struct {
    li_cell c;
    float *w, *r, *bias, *bias_rn, *peephole, *proj; /* unpacked fp32, owned */
    void *w_packed, *r_packed, *rn_packed, *proj_packed; /* in the cell's format, owned */
    float *bias_packed, *w_scale, *r_scale, *rn_scale, *proj_scale; /* owned (scales: int8) */
    int32_t *w_rowsum, *r_rowsum, *rn_rowsum, *proj_rowsum;         /* owned (int8) */
} test_cell;

typedef struct {
    int cell, I, H, proj; /* proj: 0 or the projected state size */
    int peephole, input_forget, lbr, relu;
    float clip;
    int custom_acts; /* 1: non-default activations (generic path on every ISA) */
} cell_config;

static test_cell make_cell(const cell_config *cfg, int format) {
    test_cell t;
    memset(&t, 0, sizeof t);
    const int G = cfg->cell == LI_CELL_LSTM ? 4 : cfg->cell == LI_CELL_GRU ? 3 : 1;
    const int H = cfg->H, I = cfg->I, Hr = cfg->proj ? cfg->proj : H, Hp = round_up(H);
    li_cell *c = &t.c;
    c->cell = cfg->cell;
    c->gates = G;
    c->input_size = I;
    c->hidden_size = H;
    c->state_size = Hr;
    c->hidden_padded = Hp;
    c->weight_format = format;
    c->clip = cfg->clip;
    c->input_forget = cfg->input_forget;
    c->linear_before_reset = cfg->lbr;
    c->default_activations = !cfg->custom_acts;

    float *w_rows = 0, *r_rows = 0, *proj_rows = 0;
    t.w = random_weights(format, G * H, I, -0.5f, 0.5f, &w_rows);
    t.r = random_weights(format, G * H, Hr, -0.5f, 0.5f, &r_rows);
    t.bias = random_floats((size_t)G * H, -0.3f, 0.3f);
    t.w_packed = pack_gate_blocks(t.w, G, H, I, format, w_rows, &t.w_scale, &t.w_rowsum);
    if (cfg->cell == LI_CELL_GRU) {
        t.r_packed = pack_gate_blocks(t.r, 2, H, Hr, format, r_rows, &t.r_scale, &t.r_rowsum);
        t.rn_packed = pack_gate_blocks(t.r + (size_t)2 * H * Hr, 1, H, Hr, format,
                                       r_rows ? r_rows + 2 * H : 0, &t.rn_scale, &t.rn_rowsum);
        if (cfg->lbr) t.bias_rn = random_floats((size_t)H, -0.3f, 0.3f);
    } else {
        t.r_packed = pack_gate_blocks(t.r, G, H, Hr, format, r_rows, &t.r_scale, &t.r_rowsum);
    }
    t.bias_packed = alloc_floats((size_t)G * Hp);
    fill(t.bias_packed, (size_t)G * Hp, 0.0f);
    for (int g = 0; g < G; ++g)
        memcpy(t.bias_packed + (size_t)g * Hp, t.bias + (size_t)g * H, sizeof(float) * H);
    if (cfg->peephole) t.peephole = random_floats((size_t)3 * H, -0.5f, 0.5f);
    if (cfg->proj) {
        t.proj = random_weights(format, Hr, H, -0.5f, 0.5f, &proj_rows);
        t.proj_packed = pack_gate_blocks(t.proj, 1, Hr, H, format, proj_rows, &t.proj_scale,
                                         &t.proj_rowsum);
    }
    free(w_rows);
    free(r_rows);
    free(proj_rows);
    c->w = t.w;
    c->w_packed = t.w_packed;
    c->r = t.r;
    c->r_packed = t.r_packed;
    c->rn_packed = t.rn_packed;
    c->w_scale = t.w_scale;
    c->r_scale = t.r_scale;
    c->rn_scale = t.rn_scale;
    c->proj_scale = t.proj_scale;
    c->w_rowsum = t.w_rowsum;
    c->r_rowsum = t.r_rowsum;
    c->rn_rowsum = t.rn_rowsum;
    c->proj_rowsum = t.proj_rowsum;
    c->bias = t.bias;
    c->bias_packed = t.bias_packed;
    c->bias_rn = t.bias_rn;
    c->peephole = t.peephole;
    c->proj = t.proj;
    c->proj_packed = t.proj_packed;

    if (cfg->cell == LI_CELL_RNN) {
        c->act[0] = (li_activation){cfg->relu ? LI_ACT_RELU : LI_ACT_TANH, 0, 0};
        if (cfg->custom_acts) c->act[0] = (li_activation){LI_ACT_LEAKY_RELU, 0.1f, 0};
    } else if (cfg->custom_acts) {
        c->act[0] = (li_activation){LI_ACT_HARD_SIGMOID, 0.2f, 0.5f};
        c->act[1] = (li_activation){LI_ACT_SCALED_TANH, 1.5f, 0.7f};
        c->act[2] = (li_activation){LI_ACT_SOFTSIGN, 0, 0};
    } else {
        c->act[0] = (li_activation){LI_ACT_SIGMOID, 0, 0};
        c->act[1] = (li_activation){LI_ACT_TANH, 0, 0};
        c->act[2] = (li_activation){LI_ACT_TANH, 0, 0};
    }
    return t;
}

static void free_cell(test_cell *t) {
    void *all[] = {t->w,        t->r,          t->bias,        t->bias_rn,  t->peephole,
                   t->proj,     t->w_packed,   t->r_packed,    t->rn_packed, t->proj_packed,
                   t->bias_packed, t->w_scale, t->r_scale,     t->rn_scale, t->proj_scale,
                   t->w_rowsum,  t->r_rowsum,  t->rn_rowsum, t->proj_rowsum};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) free(all[i]);
}

/* v[0:n] replaced by what the rounded bf16 products see: bf16 round to nearest even of the
 * float32 value (a denormal counts as zero, as VCVTNEPS2BF16 has it). */
static void ref_bf16_activations(double *v, int n) {
    for (int i = 0; i < n; ++i) {
        const float f = (float)v[i];
        uint32_t bits = float_bits(f);
        if ((bits & 0x7f800000u) == 0)
            bits &= 0x80000000u;
        else if (isfinite(f))
            bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
        float r;
        memcpy(&r, &bits, sizeof r);
        v[i] = r;
    }
}

/* One timestep of one row, straight from the equations. x [I], h [Hr], c [H] updated.
 * int8 cells see their activations quantized as the products do (x, h, r * h and the
 * unprojected h); with bf16_rounded, bf16 cells see the same activations rounded to bf16
 * (whole sequences at batch >= LI_BF16_ROUNDED_MIN_ROWS on tables with the rounded
 * products). */
static void ref_cell_step(const test_cell *t, const float *x, double *h, double *c,
                          int bf16_rounded) {
    const li_cell *cell = &t->c;
    const int G = cell->gates, H = cell->hidden_size, I = cell->input_size;
    const int Hr = cell->state_size;
    const int int8 = cell->weight_format == LI_WEIGHTS_I8;
    const int rnd = bf16_rounded && cell->weight_format == LI_WEIGHTS_BF16;
    double *xp = calloc((size_t)G * H, sizeof(double));
    double *rec = calloc((size_t)G * H, sizeof(double));
    double *hfull = calloc((size_t)H, sizeof(double));
    double *rh = calloc((size_t)Hr, sizeof(double));
    double *xa = calloc((size_t)I + 1, sizeof(double)), *hq = calloc((size_t)Hr, sizeof(double));
    for (int k = 0; k < I; ++k) xa[k] = x[k];
    for (int k = 0; k < Hr; ++k) hq[k] = h[k];
    if (int8) {
        ref_int8_activations(xa, I);
        ref_int8_activations(hq, Hr);
    }
    if (rnd) {
        ref_bf16_activations(xa, I);
        ref_bf16_activations(hq, Hr);
    }
    for (int j = 0; j < G * H; ++j) {
        double a = t->bias[j], b = 0;
        for (int k = 0; k < I; ++k) a += (double)t->w[(size_t)j * I + k] * xa[k];
        for (int k = 0; k < Hr; ++k) b += (double)t->r[(size_t)j * Hr + k] * hq[k];
        xp[j] = a;
        rec[j] = b;
    }
    const li_activation *fa = &cell->act[0], *ga = &cell->act[1], *ha = &cell->act[2];
    if (cell->cell == LI_CELL_RNN) {
        for (int u = 0; u < H; ++u) hfull[u] = ref_act(fa, ref_clip(cell, xp[u] + rec[u]));
    } else if (cell->cell == LI_CELL_LSTM) {
        const float *p = t->peephole;
        for (int u = 0; u < H; ++u) {
            double pi = xp[u] + rec[u], pf = xp[H + u] + rec[H + u];
            const double pg = xp[2 * H + u] + rec[2 * H + u];
            double po = xp[3 * H + u] + rec[3 * H + u];
            if (p) {
                pi += p[u] * c[u];
                pf += p[H + u] * c[u];
            }
            const double i = ref_act(fa, ref_clip(cell, pi));
            const double f = cell->input_forget ? 1 - i : ref_act(fa, ref_clip(cell, pf));
            const double g = ref_act(ga, ref_clip(cell, pg));
            const double cn = f * c[u] + i * g;
            if (p) po += p[2 * H + u] * cn;
            const double o = ref_act(fa, ref_clip(cell, po));
            c[u] = cn;
            hfull[u] = o * ref_act(ha, cn);
        }
    } else { /* GRU */
        double *z = calloc((size_t)H, sizeof(double)), *r = calloc((size_t)H, sizeof(double));
        for (int u = 0; u < H; ++u) {
            z[u] = ref_act(fa, ref_clip(cell, xp[u] + rec[u]));
            r[u] = ref_act(fa, ref_clip(cell, xp[H + u] + rec[H + u]));
            rh[u] = r[u] * h[u];
        }
        for (int u = 0; u < H; ++u) {
            double pre;
            if (cell->linear_before_reset) {
                pre = xp[2 * H + u] + r[u] * (rec[2 * H + u] + (t->bias_rn ? t->bias_rn[u] : 0));
            } else {
                double acc = 0;
                if (int8 && u == 0) ref_int8_activations(rh, Hr);
                if (rnd && u == 0) ref_bf16_activations(rh, Hr);
                for (int k = 0; k < Hr; ++k)
                    acc += (double)t->r[(size_t)(2 * H + u) * Hr + k] * rh[k];
                pre = xp[2 * H + u] + acc;
            }
            const double n = ref_act(ga, ref_clip(cell, pre));
            hfull[u] = (1 - z[u]) * n + z[u] * h[u];
        }
        free(z);
        free(r);
    }
    if (t->proj) {
        if (int8) ref_int8_activations(hfull, H);
        if (rnd) ref_bf16_activations(hfull, H);
        for (int j = 0; j < Hr; ++j) {
            double acc = 0;
            for (int u = 0; u < H; ++u) acc += (double)t->proj[(size_t)j * H + u] * hfull[u];
            h[j] = acc;
        }
    } else {
        for (int u = 0; u < H; ++u) h[u] = hfull[u];
    }
    free(xp);
    free(rec);
    free(hfull);
    free(rh);
    free(xa);
    free(hq);
}

/* ---- matvec_packed ------------------------------------------------------------------------ */

static void check_matvec_case(const li_kernels *kern, int format, int G, int H, int K,
                              int rows, int blk0, int blk1, int use_bias, int ldx_pad,
                              int ogs_pad, int ldo_pad) {
    const int Hp = round_up(H);
    const int ldx = K + ldx_pad, ogs = Hp + ogs_pad, ldo = G * ogs + ldo_pad, bgs = Hp;
    float *row_scale = 0, *scale = 0;
    int32_t *rowsum = 0;
    float *m = random_weights(format, G * H, K, -1.0f, 1.0f, &row_scale);
    void *packed = pack_gate_blocks(m, G, H, K, format, row_scale, &scale, &rowsum);
    /* Exactly the bytes the contract lets the kernel read / write. */
    const size_t x_len = (size_t)(rows - 1) * ldx + K, out_len = (size_t)(rows - 1) * ldo + G * ogs;
    float *x = random_floats(x_len, -1.0f, 1.0f);
    float *bias = use_bias ? random_floats((size_t)G * bgs, -1.0f, 1.0f) : 0;
    float *out = alloc_floats(out_len);
    fill(out, out_len, CANARY);
    run_product(kern, format, packed, K, G, blk0, blk1, x, ldx, rows, bias, scale, rowsum, bgs,
                out, ogs, ldo);
    /* int8: the reference multiplies the same activation codes (exact integer sums). */
    int8_t *codes = malloc((size_t)rows * K + 1);
    float *code_scale = alloc_floats((size_t)rows);
    for (int b = 0; b < rows; ++b)
        code_scale[b] = ref_quantize_row(x + (size_t)b * ldx, K, codes + (size_t)b * K);
    for (int b = 0; b < rows; ++b)
        for (int g = 0; g < G; ++g)
            for (int u = 0; u < ogs; ++u) {
                const float got = out[(size_t)b * ldo + (size_t)g * ogs + u];
                if (u < blk0 * LI_BLOCK || u >= blk1 * LI_BLOCK) {
                    ++g_checks;
                    if (got != CANARY)
                        FAIL("%s G=%d H=%d K=%d rows=%d blocks[%d,%d): wrote outside its "
                             "blocks at b=%d g=%d u=%d",
                             FORMAT_NAMES[format], G, H, K, rows, blk0, blk1, b, g, u);
                    continue;
                }
                double want = bias ? bias[(size_t)g * bgs + u] : 0.0, mag = fabs(want);
                if (u < H)
                    for (int k = 0; k < K; ++k) {
                        double xk = format == LI_WEIGHTS_I8
                                        ? (double)codes[(size_t)b * K + k] * code_scale[b]
                                        : x[(size_t)b * ldx + k];
                        if (g_rounded && format == LI_WEIGHTS_BF16) ref_bf16_activations(&xk, 1);
                        const double term = (double)m[((size_t)g * H + u) * K + k] * xk;
                        want += term;
                        mag += fabs(term);
                    }
                if (!close_enough(got, want, 1e-5 * (1.0 + mag), 0.0))
                    FAIL("%s G=%d H=%d K=%d rows=%d bias=%d: out[%d][%d][%d] = %.8g, want %.8g",
                         FORMAT_NAMES[format], G, H, K, rows, use_bias, b, g, u, got, want);
            }
    /* Padding between rows (ldo_pad) must be untouched too. */
    for (int b = 0; b + 1 < rows; ++b)
        for (int j = G * ogs; j < ldo; ++j) {
            ++g_checks;
            if (out[(size_t)b * ldo + j] != CANARY) FAIL("wrote into the row padding");
        }
    free(m);
    free(row_scale);
    free(scale);
    free(rowsum);
    free(packed);
    free(x);
    free(bias);
    free(out);
    free(codes);
    free(code_scale);
}

static void test_matvec(const li_kernels *kern) {
    static const int Hs[] = {1, 5, 16, 17, 33};
    static const int Ks[] = {1, 3, 16, 19, 40};
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format)
        for (int G = 1; G <= 4; ++G)
            for (int rows = 1; rows <= 9; ++rows)
                for (size_t hi = 0; hi < sizeof Hs / sizeof Hs[0]; ++hi)
                    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ++ki) {
                        const int H = Hs[hi], K = Ks[ki], nblk = round_up(H) / LI_BLOCK;
                        const int variant = (int)(rows + hi + ki) % 4;
                        check_matvec_case(kern, format, G, H, K, rows, 0, nblk, variant != 0,
                                          variant == 2 ? 3 : 0, variant == 3 ? 16 : 0,
                                          variant == 1 ? 5 : 0);
                        if (nblk > 1) /* a sub-range of blocks, as the recurrence calls it */
                            check_matvec_case(kern, format, G, H, K, rows, 1, nblk, 1, 1, 0, 2);
                    }
    /* Many row tiles over more than a megabyte of weights: the path that prefetches each
     * next block (fp32 here); K not a multiple of the 16-input prefetch chunks. */
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format) {
        check_matvec_case(kern, format, 4, 65, 1027, 33, 0, 5, 1, 0, 0, 0);
        check_matvec_case(kern, format, 4, 65, 1024, 27, 1, 5, 1, 2, 0, 3);
        check_matvec_case(kern, format, 1, 260, 1031, 33, 0, 17, 0, 0, 0, 0);
    }
    if (!kern->matvec_bf16_rounded) return;
    /* The rounded bf16 product: the same cases, the reference on bf16-rounded activations. */
    g_rounded = 1;
    for (int G = 1; G <= 4; ++G)
        for (int rows = 1; rows <= 9; ++rows)
            for (size_t hi = 0; hi < sizeof Hs / sizeof Hs[0]; ++hi)
                for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ++ki) {
                    const int H = Hs[hi], K = Ks[ki], nblk = round_up(H) / LI_BLOCK;
                    const int variant = (int)(rows + hi + ki) % 4;
                    check_matvec_case(kern, LI_WEIGHTS_BF16, G, H, K, rows, 0, nblk,
                                      variant != 0, variant == 2 ? 3 : 0, variant == 3 ? 16 : 0,
                                      variant == 1 ? 5 : 0);
                    if (nblk > 1)
                        check_matvec_case(kern, LI_WEIGHTS_BF16, G, H, K, rows, 1, nblk, 1, 1,
                                          0, 2);
                }
    check_matvec_case(kern, LI_WEIGHTS_BF16, 4, 65, 1027, 33, 0, 5, 1, 0, 0, 0);
    check_matvec_case(kern, LI_WEIGHTS_BF16, 3, 40, 301, 20, 1, 3, 1, 2, 0, 3);
    g_rounded = 0;
}

#ifdef LI_HAVE_X86_KERNELS
/* The int8 tile product (exact int32 sums, then the vector kernel's scaling) must give the
 * VPDPBUSD product's floats bit for bit: a row's result may not depend on the batch size
 * that sends it to tiles or not. */
static void check_i8_tiles_match_vector(const li_kernels *kern, int G, int H, int K, int rows) {
    li_kernels vector = *kern;
    vector.matvec_i8 = li_matvec_i8_avx512vnni;
    const int Hp = round_up(H), ldo = G * Hp;
    float *row_scale = 0, *scale = 0;
    int32_t *rowsum = 0;
    float *m = random_weights(LI_WEIGHTS_I8, G * H, K, -1.0f, 1.0f, &row_scale);
    void *packed = pack_gate_blocks(m, G, H, K, LI_WEIGHTS_I8, row_scale, &scale, &rowsum);
    float *x = random_floats((size_t)rows * K, -1.0f, 1.0f);
    float *bias = random_floats((size_t)G * Hp, -1.0f, 1.0f);
    float *got = alloc_floats((size_t)rows * ldo), *want = alloc_floats((size_t)rows * ldo);
    run_product(kern, LI_WEIGHTS_I8, packed, K, G, 0, Hp / LI_BLOCK, x, K, rows, bias, scale,
                rowsum, Hp, got, Hp, ldo);
    run_product(&vector, LI_WEIGHTS_I8, packed, K, G, 0, Hp / LI_BLOCK, x, K, rows, bias, scale,
                rowsum, Hp, want, Hp, ldo);
    ++g_checks;
    if (memcmp(got, want, sizeof(float) * (size_t)rows * ldo) != 0)
        FAIL("i8 G=%d H=%d K=%d rows=%d: tile product differs from VPDPBUSD's", G, H, K, rows);
    free(m);
    free(row_scale);
    free(scale);
    free(rowsum);
    free(packed);
    free(x);
    free(bias);
    free(got);
    free(want);
}
#endif

/* The shapes of the tile products (amx table: 16-row tiles, K in chunks of 32 bf16 / 64
 * int8 inputs): whole row tiles, partial ones after them, a K of whole chunks only (the
 * path alternating two weight tiles) and one with a tail. Every table runs them (the
 * vector products at these batch sizes). */
static void test_tile_product_shapes(const li_kernels *kern) {
    /* Its own random stream: the tests after it keep the data they always drew (the int8
     * sequence checks' tolerance covers a code landing one off on a rounding tie once in a
     * while, not a cascade of them over 5 steps, which other data can produce). */
    const uint64_t outer_rng = g_rng;
    g_rng = 0x5DEECE66Dull;
    static const int rows_list[] = {4, 15, 16, 17, 32, 35};
    static const int Ks[] = {32, 64, 100, 128, 256};
    for (int G = 1; G <= 4; ++G)
        for (size_t ri = 0; ri < sizeof rows_list / sizeof rows_list[0]; ++ri)
            for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ++ki) {
                const int rows = rows_list[ri], K = Ks[ki];
                const int variant = (int)(ri + ki + G) % 3;
                /* H = 33: three blocks, the last one partial; blocks [1, 3) as well. */
                check_matvec_case(kern, LI_WEIGHTS_I8, G, 33, K, rows, 0, 3, variant != 0,
                                  variant == 1 ? 3 : 0, 0, variant == 2 ? 5 : 0);
                check_matvec_case(kern, LI_WEIGHTS_I8, G, 33, K, rows, 1, 3, 1, 0, 16, 0);
                if (!kern->matvec_bf16_rounded) continue;
                g_rounded = 1;
                check_matvec_case(kern, LI_WEIGHTS_BF16, G, 33, K, rows, 0, 3, variant != 0,
                                  variant == 1 ? 3 : 0, 0, variant == 2 ? 5 : 0);
                check_matvec_case(kern, LI_WEIGHTS_BF16, G, 33, K, rows, 1, 3, 1, 0, 16, 0);
                g_rounded = 0;
            }
#ifdef LI_HAVE_X86_KERNELS
    if (kern->matvec_i8 == li_matvec_i8_amx)
        for (int G = 1; G <= 4; ++G)
            for (size_t ri = 0; ri < sizeof rows_list / sizeof rows_list[0]; ++ri)
                for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ++ki)
                    check_i8_tiles_match_vector(kern, G, 40, Ks[ki], rows_list[ri]);
#endif
    g_rng = outer_rng;
}

/* ---- activation preparation ---------------------------------------------------------------- */

/* Every ISA's int8 codes and scales equal the reference quantizer's bit for bit (ties at .5
 * round to even, zero / NaN / Inf rows), padding codes are zero; the bf16 halves sum back to
 * the input within 2^-16 relative. */
static void test_prepare(const li_kernels *kern) {
    static const int Ks[] = {1, 3, 4, 15, 16, 17, 33, 70};
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ++ki) {
        const int K = Ks[ki], rows = 6, ldx = K + 1, ldq = (int)LI_PREPARED_ROW_BYTES(K);
        float *x = random_floats((size_t)rows * ldx, -3.0f, 3.0f);
        for (int k = 0; k < K; ++k) x[ldx + k] = 0.0f;                    /* row 1: zeros */
        x[2 * ldx + K / 2] = NAN;                                         /* row 2: NaN */
        x[3 * ldx + K - 1] = -INFINITY;                                   /* row 3: -Inf */
        for (int k = 0; k < K; ++k) x[4 * ldx + k] = (float)(k % 5) - 2.5f; /* row 4: ties */
        x[4 * ldx] = 127.0f; /* peak 127: scale 1, so the ties stay ties */
        for (int k = 0; k < K; ++k) x[5 * ldx + k] = k % 2 ? 1e-38f : -2e-39f; /* row 5: tiny */
        unsigned char *q = malloc((size_t)rows * ldq);
        float *scale = alloc_floats(rows);
        memset(q, 0x5A, (size_t)rows * ldq);
        kern->prepare_i8(x, ldx, rows, K, q, ldq, scale);
        int8_t codes[80];
        for (int b = 0; b < rows; ++b) {
            const float want_scale = ref_quantize_row(x + (size_t)b * ldx, K, codes);
            ++g_checks;
            if (!(scale[b] == want_scale || (isnan(scale[b]) && isnan(want_scale))))
                FAIL("prepare_i8 K=%d row %d: scale %.9g, want %.9g", K, b, scale[b], want_scale);
            const int8_t *got = (const int8_t *)(q + (size_t)b * ldq);
            for (int k = 0; k < (K + 3) / 4 * 4; ++k) {
                ++g_checks;
                const int8_t want = k < K ? codes[k] : 0;
                if (got[k] != want) {
                    FAIL("prepare_i8 K=%d row %d: code[%d] = %d, want %d", K, b, k, got[k], want);
                    break;
                }
            }
        }
        if (kern->prepare_bf16) {
            kern->prepare_bf16(x, ldx, 1, K, q, ldq, scale);
            const uint16_t *hi = (const uint16_t *)q, *lo = hi + (K + 1) / 2 * 2;
            for (int k = 0; k < K; ++k) {
                const double sum = (double)bits_float((uint32_t)hi[k] << 16) +
                                   (double)bits_float((uint32_t)lo[k] << 16);
                if (!close_enough((float)sum, x[k], 0.0, 1.0 / 65536))
                    FAIL("prepare_bf16 K=%d: hi + lo = %.9g, want %.9g", K, sum, x[k]);
            }
        }
        if (kern->prepare_bf16_rounded) {
            /* Every row (zeros, NaN, -Inf, ties, denormals): the bits of the scalar reference,
             * the value of the independent rounding, and a zero in the odd K's padding. */
            unsigned char *want = malloc((size_t)rows * ldq);
            memset(q, 0x5A, (size_t)rows * ldq);
            memset(want, 0x5A, (size_t)rows * ldq);
            kern->prepare_bf16_rounded(x, ldx, rows, K, q, ldq, scale);
            li_prepare_bf16_rounded_scalar(x, ldx, rows, K, want, ldq, scale);
            for (int b = 0; b < rows; ++b) {
                const uint16_t *got = (const uint16_t *)(q + (size_t)b * ldq);
                const uint16_t *ref = (const uint16_t *)(want + (size_t)b * ldq);
                for (int k = 0; k < (K + 1) / 2 * 2; ++k) {
                    ++g_checks;
                    const float g = bits_float((uint32_t)got[k] << 16);
                    double v = k < K ? x[(size_t)b * ldx + k] : 0.0;
                    ref_bf16_activations(&v, 1);
                    const int same_nan = isnan(g) && isnan(v) && isnan(bits_float(
                                             (uint32_t)ref[k] << 16));
                    if (!same_nan && (got[k] != ref[k] || g != v)) {
                        FAIL("prepare_bf16_rounded K=%d row %d: [%d] = 0x%04x, scalar 0x%04x, "
                             "want %.9g", K, b, k, got[k], ref[k], v);
                        break;
                    }
                }
            }
            free(want);
        }
        free(x);
        free(q);
        free(scale);
    }
}

/* ---- pointwise kernels -------------------------------------------------------------------- */

static void compare_arrays(const char *what, const float *got, const float *want, size_t n,
                           double tol) {
    for (size_t i = 0; i < n; ++i)
        if (!close_enough(got[i], want[i], tol, tol)) {
            FAIL("%s[%zu] = %.8g, scalar says %.8g", what, i, got[i], want[i]);
            return;
        }
}

static const int POINTWISE_RANGES[][2] = {{0, 1}, {0, 7}, {0, 16}, {0, 23}, {16, 33}, {3, 40}};
#define N_RANGES (sizeof POINTWISE_RANGES / sizeof POINTWISE_RANGES[0])

static void test_rnn_pointwise(const li_kernels *kern) {
    for (int relu = 0; relu <= 1; ++relu)
        for (int clipped = 0; clipped <= 1; ++clipped)
            for (size_t ri = 0; ri < N_RANGES; ++ri) {
                const int u0 = POINTWISE_RANGES[ri][0], u1 = POINTWISE_RANGES[ri][1];
                cell_config cfg = {LI_CELL_RNN, 3, u1, 0, 0, 0, 0, relu, clipped ? 0.7f : 0.0f,
                                   0};
                test_cell t = make_cell(&cfg, LI_WEIGHTS_F32);
                float *xp = random_floats((size_t)u1, -3, 3), *rec = random_floats(u1, -3, 3);
                if (u1 > u0 + 1) xp[u0 + 1] = NAN; /* NaN must propagate, not crash */
                float *h_simd = alloc_floats(u1), *h_ref = alloc_floats(u1);
                fill(h_simd, u1, CANARY);
                fill(h_ref, u1, CANARY);
                kern->rnn_pointwise(&t.c, u0, u1, xp, rec, h_simd);
                li_kernels_scalar.rnn_pointwise(&t.c, u0, u1, xp, rec, h_ref);
                compare_arrays("rnn h", h_simd, h_ref, u1, 2e-6);
                free(xp);
                free(rec);
                free(h_simd);
                free(h_ref);
                free_cell(&t);
            }
}

static void test_lstm_pointwise(const li_kernels *kern) {
    for (int flags = 0; flags < 8; ++flags)
        for (size_t ri = 0; ri < N_RANGES; ++ri) {
            const int u0 = POINTWISE_RANGES[ri][0], u1 = POINTWISE_RANGES[ri][1];
            const int peep = flags & 1, cifg = (flags >> 1) & 1, clipped = (flags >> 2) & 1;
            const int H = u1, xgs = H + 2, rgs = round_up(H);
            cell_config cfg = {LI_CELL_LSTM, 2, H, 0, peep, cifg, 0, 0, clipped ? 1.1f : 0.0f,
                               0};
            test_cell t = make_cell(&cfg, LI_WEIGHTS_F32);
            /* Gate o of the last unit is the furthest element the kernel may read. */
            float *xp = random_floats((size_t)3 * xgs + H, -3, 3);
            float *rec = random_floats((size_t)3 * rgs + H, -3, 3);
            if (u1 > u0 + 2) rec[u0 + 2] = NAN;
            float *c_simd = random_floats(H, -2, 2), *c_ref = copy_floats(c_simd, H);
            float *h_simd = alloc_floats(H), *h_ref = alloc_floats(H);
            fill(h_simd, H, CANARY);
            fill(h_ref, H, CANARY);
            kern->lstm_pointwise(&t.c, u0, u1, xp, xgs, rec, rgs, c_simd, h_simd);
            li_kernels_scalar.lstm_pointwise(&t.c, u0, u1, xp, xgs, rec, rgs, c_ref, h_ref);
            compare_arrays("lstm c", c_simd, c_ref, H, 2e-6);
            compare_arrays("lstm h", h_simd, h_ref, H, 2e-6);
            free(xp);
            free(rec);
            free(c_simd);
            free(c_ref);
            free(h_simd);
            free(h_ref);
            free_cell(&t);
        }
}

static void test_gru_pointwise(const li_kernels *kern) {
    for (int flags = 0; flags < 4; ++flags)
        for (size_t ri = 0; ri < N_RANGES; ++ri) {
            const int u0 = POINTWISE_RANGES[ri][0], u1 = POINTWISE_RANGES[ri][1];
            const int lbr = flags & 1, clipped = (flags >> 1) & 1;
            const int H = u1, xgs = H + 1, rgs = round_up(H) + 16;
            cell_config cfg = {LI_CELL_GRU, 2, H, 0, 0, 0, lbr, 0, clipped ? 0.9f : 0.0f, 0};
            test_cell t = make_cell(&cfg, LI_WEIGHTS_F32);
            float *xp = random_floats((size_t)2 * xgs + H, -3, 3);
            float *rec = random_floats((size_t)rgs + H, -3, 3);
            float *h_prev = random_floats(H, -1, 1);
            if (u1 > u0 + 1) h_prev[u0 + 1] = NAN;
            float *zr_simd = alloc_floats((size_t)2 * H), *zr_ref = alloc_floats((size_t)2 * H);
            float *rh_simd = alloc_floats(H), *rh_ref = alloc_floats(H);
            fill(zr_simd, 2 * H, CANARY);
            fill(zr_ref, 2 * H, CANARY);
            fill(rh_simd, H, CANARY);
            fill(rh_ref, H, CANARY);
            kern->gru_gates(&t.c, u0, u1, xp, xgs, rec, rgs, h_prev, zr_simd, rh_simd);
            li_kernels_scalar.gru_gates(&t.c, u0, u1, xp, xgs, rec, rgs, h_prev, zr_ref, rh_ref);
            compare_arrays("gru zr", zr_simd, zr_ref, 2 * H, 2e-6);
            compare_arrays("gru rh", rh_simd, rh_ref, H, 2e-6);
            /* Phase 2 from the same (scalar) gates so only the output kernel differs. */
            float *rec_n = random_floats(H, -3, 3);
            float *h_simd = alloc_floats(H), *h_ref = alloc_floats(H);
            fill(h_simd, H, CANARY);
            fill(h_ref, H, CANARY);
            kern->gru_output(&t.c, u0, u1, xp + 2 * xgs, rec_n, zr_ref, h_prev, h_simd);
            li_kernels_scalar.gru_output(&t.c, u0, u1, xp + 2 * xgs, rec_n, zr_ref, h_prev,
                                         h_ref);
            compare_arrays("gru h", h_simd, h_ref, H, 2e-6);
            free(xp);
            free(rec);
            free(h_prev);
            free(zr_simd);
            free(zr_ref);
            free(rh_simd);
            free(rh_ref);
            free(rec_n);
            free(h_simd);
            free(h_ref);
            free_cell(&t);
        }
}

static void test_activation_array(const li_kernels *kern) {
    static const size_t sizes[] = {1, 7, 8, 15, 16, 17, 100};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; ++si) {
        const size_t n = sizes[si];
        float *x = random_floats(n, -20, 20), *y = alloc_floats(n);
        x[0] = si % 2 ? INFINITY : -INFINITY;
        for (int kind = LI_ACT_TANH; kind <= LI_ACT_SIGMOID; ++kind) {
            const li_activation act = {kind, 0, 0};
            kern->activation_array(kind, x, y, n);
            for (size_t i = 0; i < n; ++i)
                if (!close_enough(y[i], ref_act(&act, x[i]), 5e-7, 0.0))
                    FAIL("activation %d at x=%g: %.9g vs %.9g", kind, x[i], y[i],
                         ref_act(&act, x[i]));
        }
        free(x);
        free(y);
    }
}

/* ---- li_conv2d_fn ------------------------------------------------------------------------ */

/* Against a double reference of its formula: odd output widths (partial tiles; a row's
 * last span recomputed over the one before), channel counts around LI_CONV_MR, strides/dilations, a 1-D case; the input allocated to exactly
 * the extent the windows reach (ASan sees any read past it) and canaries in y's row gaps and
 * past its last row (nothing else written). */
static void test_conv2d(const li_kernels *kern) {
    static const int cases[][9] = {
        /* C, KH, KW, sh, dh, dw, OH, OW, M */
        {1, 3, 3, 1, 1, 1, 4, 64, 6},  {3, 3, 3, 1, 1, 1, 5, 70, 7},  {2, 2, 3, 2, 2, 1, 3, 17, 5},
        {4, 1, 3, 1, 1, 2, 1, 125, 13}, {5, 1, 1, 1, 1, 1, 1, 9, 1},  {2, 3, 2, 1, 1, 3, 2, 33, 12},
        {1, 1, 5, 1, 1, 1, 1, 7, 19},
        /* a row one vector past a span (the last span overlaps the one before), a row of
         * whole vectors short of a span, rows just past one and two spans */
        {3, 2, 2, 1, 1, 1, 2, 124, 8}, {2, 1, 3, 1, 1, 1, 3, 48, 6},  {1, 3, 3, 1, 1, 1, 2, 65, 6},
        {2, 1, 1, 1, 1, 1, 1, 129, 7},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const int *k = cases[ci];
        const int C = k[0], KH = k[1], KW = k[2], sh = k[3], dh = k[4], dw = k[5], OH = k[6],
                  OW = k[7], M = k[8];
        const int Hp = (OH - 1) * sh + (KH - 1) * dh + 1, Wp = OW + (KW - 1) * dw;
        const int K = C * KH * KW, tiles = (M + LI_CONV_MR - 1) / LI_CONV_MR;
        const size_t ldy = (size_t)OH * OW + 3;
        float *x = random_floats((size_t)C * Hp * Wp, -1, 1);
        float *w = random_floats((size_t)M * K, -1, 1), *bias = random_floats((size_t)M, -1, 1);
        float *wpack = alloc_floats((size_t)tiles * K * LI_CONV_MR);
        fill(wpack, (size_t)tiles * K * LI_CONV_MR, 0.0f);
        for (int m = 0; m < M; ++m)
            for (int j = 0; j < K; ++j)
                wpack[((size_t)(m / LI_CONV_MR) * K + j) * LI_CONV_MR + m % LI_CONV_MR] =
                    w[(size_t)m * K + j];
        float *y = alloc_floats(ldy * (M + 1));
        const float **rows = malloc(sizeof(float *) * (size_t)K);
        for (int variant = 0; variant < 3; ++variant) {
            const int with_bias = variant > 0, relu = variant == 2;
            fill(y, ldy * (M + 1), CANARY);
            kern->conv2d(x, (size_t)Hp * Wp, (size_t)Wp, C, KH, KW, sh, dh, dw, OH, OW, wpack, M,
                         with_bias ? bias : 0, y, ldy, relu, rows);
            for (int m = 0; m < M; ++m)
                for (int p = 0; p < OH * OW; ++p) {
                    const int oh = p / OW, ow = p % OW;
                    double want = with_bias ? bias[m] : 0.0;
                    for (int c = 0; c < C; ++c)
                        for (int kh = 0; kh < KH; ++kh)
                            for (int kw = 0; kw < KW; ++kw)
                                want += (double)w[(size_t)m * K + (c * KH + kh) * KW + kw] *
                                        x[((size_t)c * Hp + oh * sh + kh * dh) * Wp + ow +
                                          kw * dw];
                    if (relu && want < 0) want = 0;
                    if (!close_enough(y[(size_t)m * ldy + p], want, 1e-5, 1e-5))
                        FAIL("conv2d case %zu m=%d p=%d: %.9g vs %.9g", ci, m, p,
                             y[(size_t)m * ldy + p], want);
                }
            for (int m = 0; m <= M; ++m)
                for (size_t p = m < M ? (size_t)OH * OW : 0; p < ldy; ++p)
                    if (y[(size_t)m * ldy + p] != CANARY) FAIL("conv2d case %zu wrote m=%d p=%zu", ci, m, p);
        }
        free(x);
        free(w);
        free(bias);
        free(wpack);
        free(y);
        free((void *)rows);
    }
}

/* ---- li_run_direction --------------------------------------------------------------------- */

static void check_run_direction(const li_kernels *kern, const cell_config *cfg, int format,
                                int T, int B, int reverse, int ragged) {
    test_cell t = make_cell(cfg, format);
    const li_cell *cell = &t.c;
    const int I = cell->input_size, H = cell->hidden_size, Hr = cell->state_size;
    const int lstm = cell->cell == LI_CELL_LSTM;
    const int ldx = I + 2;
    /* y laid out like one direction of a (T, B, 2, Hr) bidirectional output. */
    const ptrdiff_t y_bs = 2 * Hr, y_ts = (ptrdiff_t)B * y_bs;
    const size_t x_len = (size_t)(T * B - 1) * ldx + I, y_len = (size_t)T * y_ts;
    float *x = random_floats(x_len, -1.5f, 1.5f);
    int *lens = malloc(sizeof(int) * B);
    for (int b = 0; b < B; ++b) lens[b] = ragged ? (b * 7 + 3) % (T + 1) : T;
    if (ragged && B > 1) lens[1] = 0; /* an empty row keeps its initial state */
    if (ragged) lens[0] = T;
    float *h = random_floats((size_t)B * Hr, -0.5f, 0.5f);
    float *c = lstm ? random_floats((size_t)B * H, -0.5f, 0.5f) : 0;
    double *h_ref = malloc(sizeof(double) * B * Hr), *c_ref = malloc(sizeof(double) * B * H);
    for (int i = 0; i < B * Hr; ++i) h_ref[i] = h[i];
    for (int i = 0; i < B * H; ++i) c_ref[i] = lstm ? c[i] : 0;
    float *y = alloc_floats(y_len);
    fill(y, y_len, CANARY);
    double *y_ref = malloc(sizeof(double) * y_len);
    for (size_t i = 0; i < y_len; ++i) y_ref[i] = CANARY;

    const int rounded = format == LI_WEIGHTS_BF16 && kern->matvec_bf16_rounded &&
                        B >= LI_BF16_ROUNDED_MIN_ROWS;
    float *scratch = alloc_floats(li_direction_scratch_floats(cell, T, B));
    const int rc = li_run_direction(cell, kern, naive_sgemm, T, B, x, ldx, 0, ragged ? lens : 0,
                                    reverse, h, c, y, y_ts, y_bs, scratch);
    if (rc != 0) FAIL("li_run_direction returned %d", rc);

    for (int b = 0; b < B; ++b)
        for (int s = 0; s < lens[b]; ++s) {
            const int tt = reverse ? lens[b] - 1 - s : s;
            ref_cell_step(&t, x + (size_t)(tt * B + b) * ldx, h_ref + (size_t)b * Hr,
                          c_ref + (size_t)b * H, rounded);
            for (int j = 0; j < Hr; ++j) y_ref[tt * y_ts + b * y_bs + j] = h_ref[b * Hr + j];
        }
    /* int8 and rounded bf16: the reference quantizes its own float64 state, so a code can
     * land one off on a rounding tie (~1e-3 once in a while); everything else agrees to float
     * rounding. (The rounded products themselves are checked exactly in test_products.) */
    const double tol = format == LI_WEIGHTS_I8 || rounded ? 4e-3 : 5e-5;
    for (size_t i = 0; i < y_len; ++i)
        if (!close_enough(y[i], y_ref[i], tol, tol)) {
            FAIL("%s cell=%d T=%d B=%d rev=%d ragged=%d proj=%d acts=%d: y[%zu] = %.8g, "
                 "want %.8g",
                 FORMAT_NAMES[format], cell->cell, T, B, reverse, ragged, cfg->proj,
                 cfg->custom_acts, i, y[i], y_ref[i]);
            break;
        }
    for (int i = 0; i < B * Hr; ++i)
        if (!close_enough(h[i], h_ref[i], tol, tol)) {
            FAIL("%s cell=%d T=%d B=%d: final h[%d] = %.8g, want %.8g", FORMAT_NAMES[format],
                 cell->cell, T, B, i, h[i], h_ref[i]);
            break;
        }
    for (int i = 0; lstm && i < B * H; ++i)
        if (!close_enough(c[i], c_ref[i], tol, tol)) {
            FAIL("T=%d B=%d: final c[%d] = %.8g, want %.8g", T, B, i, c[i], c_ref[i]);
            break;
        }
    free(x);
    free(lens);
    free(h);
    free(c);
    free(h_ref);
    free(c_ref);
    free(y);
    free(y_ref);
    free(scratch);
    free_cell(&t);
}

static void test_run_direction(const li_kernels *kern) {
    /* cell, I, H, proj, peephole, input_forget, lbr, relu, clip, custom_acts */
    const cell_config configs[] = {
        {LI_CELL_RNN, 3, 5, 0, 0, 0, 0, 0, 0.0f, 0},
        {LI_CELL_RNN, 4, 17, 0, 0, 0, 0, 1, 0.0f, 0},
        {LI_CELL_RNN, 2, 9, 0, 0, 0, 0, 0, 0.0f, 1},
        {LI_CELL_LSTM, 3, 7, 0, 0, 0, 0, 0, 0.0f, 0},
        {LI_CELL_LSTM, 5, 18, 0, 1, 0, 0, 0, 0.8f, 0},
        {LI_CELL_LSTM, 4, 9, 0, 1, 1, 0, 0, 0.0f, 0},
        {LI_CELL_LSTM, 3, 20, 6, 0, 0, 0, 0, 0.0f, 0},
        {LI_CELL_LSTM, 3, 6, 0, 1, 0, 0, 0, 2.0f, 1},
        {LI_CELL_GRU, 3, 7, 0, 0, 0, 0, 0, 0.0f, 0},
        {LI_CELL_GRU, 4, 17, 0, 0, 0, 1, 0, 0.0f, 0},
        {LI_CELL_GRU, 2, 5, 0, 0, 0, 1, 0, 0.6f, 1},
        {LI_CELL_GRU, 3, 33, 0, 0, 0, 0, 0, 0.0f, 1},
    };
    static const int batches[] = {1, 3, 9, 11}; /* row tiles of 1..8 and their remainders */
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format)
        for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ++ci)
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; ++bi)
                for (int variant = 0; variant < 3; ++variant)
                    check_run_direction(kern, &configs[ci], format, 5, batches[bi], variant == 1,
                                        variant == 2 || (variant == 1 && bi % 2));
    /* A batch large enough that the recurrence goes through sgemm, not the packed matvec
     * (the driver's LI_PACKED_MAX_ROWS; well above any plausible setting). */
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci += 3)
        check_run_direction(kern, &configs[ci], (int)(ci % LI_WEIGHT_FORMAT_COUNT), 3, 1100,
                            ci % 2, 1);
    /* A wide input: the packed input projection runs in chunks of
     * LI_XPROJ_CHUNK_FLOATS / I = 11 rows here, 45 rows in all (a partial last chunk). */
    const cell_config wide[] = {
        {LI_CELL_LSTM, 1100, 7, 0, 1, 0, 0, 0, 0.0f, 0},
        {LI_CELL_GRU, 1100, 17, 0, 0, 0, 1, 0, 0.0f, 0},
    };
    for (size_t ci = 0; ci < sizeof wide / sizeof wide[0]; ++ci)
        check_run_direction(kern, &wide[ci], LI_WEIGHTS_F32, 5, 9, (int)ci, 1);
    /* Edge cases: T = 0 writes nothing; bad lens are refused before any state changes. */
    test_cell t = make_cell(&configs[3], LI_WEIGHTS_F32);
    float h[7] = {0}, c[7] = {0}, y[7], x[3] = {0}, scratch[4096];
    int bad_len = 9;
    if (li_run_direction(&t.c, kern, naive_sgemm, 0, 1, x, 3, 0, 0, 0, h, c, y, 7, 7, scratch))
        FAIL("T=0 must succeed");
    if (li_run_direction(&t.c, kern, naive_sgemm, 1, 1, x, 3, 0, &bad_len, 0, h, c, y, 7, 7,
                         scratch) >= 0)
        FAIL("a length past T must be refused");
    if (li_run_direction(&t.c, kern, naive_sgemm, 1, 1, x, 3, 0, 0, 0, h, 0, y, 7, 7, scratch) >= 0)
        FAIL("an LSTM without a cell state must be refused");
    for (int i = 0; i < 7; ++i)
        if (h[i] != 0.0f || c[i] != 0.0f) FAIL("a refused call changed the state");
    free_cell(&t);
}

/* ---- li_run_direction_part (unit split) on real threads --------------------------------- */

typedef struct {
    const li_cell *cell;
    const li_kernels *kern;
    int T, B, ldx, reverse, part, rc;
    const float *x;
    const int *lens;
    float *h, *c, *y, *shared, *scratch;
    ptrdiff_t y_ts, y_bs;
    li_split_sync *sync;
} split_job;

static void *run_split_job(void *arg) {
    split_job *j = arg;
    j->rc = li_run_direction_part(j->cell, j->kern, naive_sgemm, j->T, j->B, j->x, j->ldx, 0,
                                  j->lens, j->reverse, j->h, j->c, j->y, j->y_ts, j->y_bs,
                                  j->sync, j->part, j->shared, j->scratch);
    return 0;
}

/* The unit split over `parts` pthreads gives exactly li_run_direction's h, c and y. */
static void check_run_direction_parts(const li_kernels *kern, const cell_config *cfg, int format,
                                      int T, int B, int reverse, int ragged, int parts) {
    test_cell t = make_cell(cfg, format);
    const li_cell *cell = &t.c;
    const int I = cell->input_size, H = cell->hidden_size;
    const int lstm = cell->cell == LI_CELL_LSTM;
    const int ldx = I + 1;
    const ptrdiff_t y_bs = H + 3, y_ts = (ptrdiff_t)B * y_bs;
    const size_t y_len = (size_t)T * y_ts;
    float *x = random_floats((size_t)T * B * ldx, -1.5f, 1.5f);
    int *lens = malloc(sizeof(int) * B);
    for (int b = 0; b < B; ++b) lens[b] = ragged ? (b * 5 + 2) % (T + 1) : T;
    float *h[2], *c[2] = {0, 0}, *y[2];
    h[0] = random_floats((size_t)B * H, -0.5f, 0.5f);
    h[1] = alloc_floats((size_t)B * H);
    memcpy(h[1], h[0], sizeof(float) * B * H);
    if (lstm) {
        c[0] = random_floats((size_t)B * H, -0.5f, 0.5f);
        c[1] = alloc_floats((size_t)B * H);
        memcpy(c[1], c[0], sizeof(float) * B * H);
    }
    for (int k = 0; k < 2; ++k) {
        y[k] = alloc_floats(y_len);
        fill(y[k], y_len, CANARY);
    }
    const int *lp = ragged ? lens : 0;
    float *scratch = alloc_floats(li_direction_scratch_floats(cell, T, B));
    if (li_run_direction(cell, kern, naive_sgemm, T, B, x, ldx, 0, lp, reverse, h[0], c[0],
                         y[0], y_ts, y_bs, scratch))
        FAIL("li_run_direction failed");

    li_split_sync sync = {parts, 0, 0};
    float *shared = alloc_floats(li_unit_split_shared_floats(cell, T, B, 0, ragged));
    split_job jobs[4];
    pthread_t threads[4];
    for (int p = 0; p < parts; ++p) {
        jobs[p] = (split_job){cell, kern, T, B, ldx, reverse, p, -99, x, lp, h[1], c[1], y[1],
                              shared, alloc_floats(li_unit_split_part_floats(cell, B)), y_ts,
                              y_bs, &sync};
        if (pthread_create(&threads[p], 0, run_split_job, &jobs[p])) FAIL("pthread_create");
    }
    for (int p = 0; p < parts; ++p) {
        pthread_join(threads[p], 0);
        if (jobs[p].rc != 0) FAIL("li_run_direction_part %d returned %d", p, jobs[p].rc);
        free(jobs[p].scratch);
    }
    for (size_t i = 0; i < y_len; ++i)
        if (memcmp(&y[0][i], &y[1][i], sizeof(float))) {
            FAIL("%s cell=%d H=%d T=%d B=%d rev=%d ragged=%d parts=%d: y[%zu] = %.9g, want %.9g",
                 FORMAT_NAMES[format], cell->cell, H, T, B, reverse, ragged, parts, i, y[1][i],
                 y[0][i]);
            break;
        }
    if (memcmp(h[0], h[1], sizeof(float) * B * H)) FAIL("parts=%d: final h differs", parts);
    if (lstm && memcmp(c[0], c[1], sizeof(float) * B * H))
        FAIL("parts=%d: final c differs", parts);
    free(x);
    free(lens);
    for (int k = 0; k < 2; ++k) {
        free(h[k]);
        free(c[k]);
        free(y[k]);
    }
    free(scratch);
    free(shared);
    free_cell(&t);
}

static void test_run_direction_parts(const li_kernels *kern) {
    /* cell, I, H, proj, peephole, input_forget, lbr, relu, clip, custom_acts */
    const cell_config configs[] = {
        {LI_CELL_RNN, 4, 17, 0, 0, 0, 0, 1, 0.0f, 0},
        {LI_CELL_LSTM, 5, 18, 0, 1, 0, 0, 0, 0.8f, 0},
        {LI_CELL_LSTM, 3, 40, 0, 0, 1, 0, 0, 0.0f, 1},
        {LI_CELL_GRU, 4, 17, 0, 0, 0, 1, 0, 0.0f, 0},
        {LI_CELL_GRU, 3, 33, 0, 0, 0, 0, 0, 0.0f, 1},
        {LI_CELL_GRU, 1100, 40, 0, 0, 0, 0, 0, 0.0f, 0}, /* sgemm input projection per part */
    };
    static const int batches[] = {1, 3, 9};
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format)
        for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ++ci)
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; ++bi)
                for (int parts = 2; parts <= 3; ++parts) {
                    const int blocks = (configs[ci].H + LI_BLOCK - 1) / LI_BLOCK;
                    if (parts > blocks) continue;
                    check_run_direction_parts(kern, &configs[ci], format, 1 + (int)bi * 3,
                                              batches[bi], (int)(ci + bi) % 2, bi > 0, parts);
                }
    /* Shared-argument errors: every part returns the same code before any barrier (one
     * thread, parts = 2: a part that waited would hang here). */
    test_cell t = make_cell(&configs[1], LI_WEIGHTS_F32);
    float h[18] = {0}, c[18] = {0}, y[18], x[5] = {0}, shared[4096], scratch[4096];
    int bad_len = 9;
    li_split_sync sync = {2, 0, 0};
    if (li_run_direction_part(&t.c, kern, naive_sgemm, 1, 1, x, 5, 0, &bad_len, 0, h, c, y, 18,
                              18, &sync, 0, shared, scratch) >= 0)
        FAIL("unit split: a length past T must be refused");
    if (li_run_direction_part(&t.c, kern, naive_sgemm, 1, 1, x, 5, 0, 0, 0, h, 0, y, 18, 18,
                              &sync, 1, shared, scratch) >= 0)
        FAIL("unit split: an LSTM without a cell state must be refused");
    if (li_run_direction_part(&t.c, kern, naive_sgemm, 0, 1, x, 5, 0, 0, 0, h, c, y, 18, 18,
                              &sync, 0, shared, scratch))
        FAIL("unit split: T=0 must succeed");
    if (sync.arrived != 0 || sync.generation != 0) FAIL("unit split: refused call waited");
    free_cell(&t);
}

/* ---- token tables (first layer after an embedding) ---------------------------------------- */

/* A run / a step fed token ids through cell->token_table must equal the same run fed the
 * embedding rows through W: the table is W emb[v] + bias, padded per gate. */
static void check_token_table(const li_kernels *kern, const cell_config *cfg, int format) {
    enum { V = 6, T = 4, B = 3 };
    test_cell t = make_cell(cfg, format);
    li_cell *cell = &t.c;
    const int G = cell->gates, H = cell->hidden_size, I = cell->input_size;
    const int Hp = cell->hidden_padded, Hr = cell->state_size;
    const int lstm = cell->cell == LI_CELL_LSTM;
    float *emb = random_floats((size_t)V * I, -1.0f, 1.0f);
    float *table = alloc_floats((size_t)V * G * Hp);
    fill(table, (size_t)V * G * Hp, 0.0f);
    for (int v = 0; v < V; ++v)
        for (int g = 0; g < G; ++g)
            for (int u = 0; u < H; ++u) {
                double acc = t.bias[g * H + u];
                for (int k = 0; k < I; ++k)
                    acc += (double)t.w[(size_t)(g * H + u) * I + k] * emb[v * I + k];
                table[(size_t)v * G * Hp + g * Hp + u] = (float)acc;
            }
    int64_t tokens[T * B];
    float *x = alloc_floats((size_t)T * B * I);
    for (int i = 0; i < T * B; ++i) {
        tokens[i] = (i * 5 + 1) % V;
        memcpy(x + (size_t)i * I, emb + tokens[i] * I, sizeof(float) * I);
    }
    float *h_tok = random_floats((size_t)B * Hr, -0.5f, 0.5f), *h_x = alloc_floats(B * Hr);
    float *c_tok = random_floats((size_t)B * H, -0.5f, 0.5f), *c_x = alloc_floats(B * H);
    memcpy(h_x, h_tok, sizeof(float) * B * Hr);
    memcpy(c_x, c_tok, sizeof(float) * B * H);
    float *y_tok = alloc_floats((size_t)T * B * Hr), *y_x = alloc_floats((size_t)T * B * Hr);
    float *scratch = alloc_floats(li_direction_scratch_floats(cell, T, B));
    int rc = li_run_direction(cell, kern, naive_sgemm, T, B, x, I, 0, 0, 0, h_x,
                              lstm ? c_x : 0, y_x, B * Hr, Hr, scratch);
    if (li_run_direction(cell, kern, naive_sgemm, T, B, 0, I, tokens, 0, 0, h_tok,
                         lstm ? c_tok : 0, y_tok, B * Hr, Hr, scratch) != -1)
        FAIL("tokens without a token table must be refused");
    cell->token_table = table;
    cell->vocab_size = V;
    rc |= li_run_direction(cell, kern, naive_sgemm, T, B, 0, I, tokens, 0, 0, h_tok,
                           lstm ? c_tok : 0, y_tok, B * Hr, Hr, scratch);
    if (rc != 0) FAIL("li_run_direction with tokens returned %d", rc);
    /* int8: W x quantizes x, the table does not: they agree to the int8 activation error
     * (up to ~6e-3 after four steps measured), not to float rounding. */
    const double step_tol = format == LI_WEIGHTS_I8 ? 1.5e-2 : 2e-5;
    for (int i = 0; i < T * B * Hr; ++i)
        if (!close_enough(y_tok[i], y_x[i], step_tol, step_tol)) {
            FAIL("%s cell=%d tokens: y[%d] = %.8g, via W x %.8g", FORMAT_NAMES[format],
                 cell->cell, i, y_tok[i], y_x[i]);
            break;
        }
    /* One streaming step from the same state, then a refused out-of-range id. */
    const li_cell *ptrs[1] = {cell};
    float *hp_tok[1] = {h_tok}, *hp_x[1] = {h_x};
    float *cp_tok[1] = {lstm ? c_tok : 0}, *cp_x[1] = {lstm ? c_x : 0};
    float *step_scratch = alloc_floats(li_stack_step_scratch_floats(ptrs, 1, B));
    rc = li_stack_step(ptrs, 1, kern, B, 0, tokens, hp_tok, cp_tok, y_tok, step_scratch);
    rc |= li_stack_step(ptrs, 1, kern, B, x, 0, hp_x, cp_x, y_x, step_scratch);
    if (rc != 0) FAIL("li_stack_step with tokens returned %d", rc);
    for (int i = 0; i < B * Hr; ++i)
        if (!close_enough(y_tok[i], y_x[i], step_tol, step_tol)) {
            FAIL("%s cell=%d step with tokens: y[%d] = %.8g, via W x %.8g",
                 FORMAT_NAMES[format], cell->cell, i, y_tok[i], y_x[i]);
            break;
        }
    memcpy(h_x, h_tok, sizeof(float) * B * Hr);
    const int64_t bad[B] = {0, V, 1};
    if (li_stack_step(ptrs, 1, kern, B, 0, bad, hp_tok, cp_tok, y_tok, step_scratch) != -4)
        FAIL("a token id past the table must be refused");
    if (memcmp(h_x, h_tok, sizeof(float) * B * Hr) != 0) FAIL("a refused step changed h");
    const int64_t negative[T * B] = {-1};
    if (li_run_direction(cell, kern, naive_sgemm, T, B, 0, I, negative, 0, 0, h_tok,
                         lstm ? c_tok : 0, y_tok, B * Hr, Hr, scratch) != -4)
        FAIL("a negative token id must be refused");
    if (memcmp(h_x, h_tok, sizeof(float) * B * Hr) != 0) FAIL("a refused run changed h");
    free(emb);
    free(table);
    free(x);
    free(h_tok);
    free(h_x);
    free(c_tok);
    free(c_x);
    free(y_tok);
    free(y_x);
    free(scratch);
    free(step_scratch);
    cell->token_table = 0;
    free_cell(&t);
}

static void test_token_tables(const li_kernels *kern) {
    const cell_config configs[] = {
        {LI_CELL_LSTM, 5, 18, 0, 1, 0, 0, 0, 0.0f, 0},
        {LI_CELL_GRU, 3, 7, 0, 0, 0, 1, 0, 0.0f, 0},
        {LI_CELL_RNN, 4, 17, 0, 0, 0, 0, 1, 0.0f, 0},
    };
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format)
        for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ++ci)
            check_token_table(kern, &configs[ci], format);
}

/* ---- li_stack_step ------------------------------------------------------------------------ */

static void check_stack_step(const li_kernels *kern, int format) {
    /* LSTM with peephole + projection -> GRU (lbr) -> RNN relu, then a custom-act GRU. */
    const cell_config cfgs[] = {
        {LI_CELL_LSTM, 5, 19, 7, 1, 0, 0, 0, 0.0f, 0},
        {LI_CELL_GRU, 7, 12, 0, 0, 0, 1, 0, 0.0f, 0},
        {LI_CELL_RNN, 12, 17, 0, 0, 0, 0, 1, 3.0f, 0},
        {LI_CELL_GRU, 17, 4, 0, 0, 0, 0, 0, 0.0f, 1},
    };
    enum { L = sizeof cfgs / sizeof cfgs[0], STEPS = 4 };
    const double tol = format == LI_WEIGHTS_I8 ? 4e-3 : 5e-5; /* see check_run_direction */
    static const int batches[] = {1, 4, 9};
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; ++bi) {
        const int B = batches[bi];
        test_cell cells[L];
        const li_cell *ptrs[L];
        float *h[L], *c[L];
        double *h_ref[L], *c_ref[L];
        for (int l = 0; l < L; ++l) {
            cells[l] = make_cell(&cfgs[l], format);
            ptrs[l] = &cells[l].c;
            const int Hr = cells[l].c.state_size, H = cells[l].c.hidden_size;
            h[l] = random_floats((size_t)B * Hr, -0.5f, 0.5f);
            c[l] = cells[l].c.cell == LI_CELL_LSTM ? random_floats((size_t)B * H, -1, 1) : 0;
            h_ref[l] = malloc(sizeof(double) * B * Hr);
            c_ref[l] = calloc((size_t)B * H, sizeof(double));
            for (int i = 0; i < B * Hr; ++i) h_ref[l][i] = h[l][i];
            for (int i = 0; c[l] && i < B * H; ++i) c_ref[l][i] = c[l][i];
        }
        const int I0 = cfgs[0].I, out_size = cells[L - 1].c.state_size;
        float *scratch = alloc_floats(li_stack_step_scratch_floats(ptrs, L, B));
        float *x = alloc_floats((size_t)B * I0), *y = alloc_floats((size_t)B * out_size);
        float xin[32];
        for (int step = 0; step < STEPS; ++step) {
            for (int i = 0; i < B * I0; ++i) x[i] = frand(-1.5f, 1.5f);
            const int rc = li_stack_step(ptrs, L, kern, B, x, 0, h, c, y, scratch);
            if (rc != 0) FAIL("li_stack_step returned %d", rc);
            for (int b = 0; b < B; ++b) {
                for (int i = 0; i < I0; ++i) xin[i] = x[b * I0 + i];
                for (int l = 0; l < L; ++l) {
                    const int Hr = cells[l].c.state_size, H = cells[l].c.hidden_size;
                    ref_cell_step(&cells[l], xin, h_ref[l] + (size_t)b * Hr,
                                  c_ref[l] + (size_t)b * H, 0);
                    for (int j = 0; j < Hr; ++j) xin[j] = (float)h_ref[l][b * Hr + j];
                }
                for (int j = 0; j < out_size; ++j)
                    if (!close_enough(y[b * out_size + j], xin[j], tol, tol)) {
                        FAIL("%s B=%d step %d: y[%d][%d] = %.8g, want %.8g",
                             FORMAT_NAMES[format], B, step, b, j, y[b * out_size + j], xin[j]);
                        break;
                    }
            }
            for (int l = 0; l < L; ++l) {
                const int Hr = cells[l].c.state_size, H = cells[l].c.hidden_size;
                for (int i = 0; i < B * Hr; ++i)
                    if (!close_enough(h[l][i], h_ref[l][i], tol, tol)) {
                        FAIL("B=%d step %d layer %d: h[%d] = %.8g, want %.8g", B, step, l, i,
                             h[l][i], h_ref[l][i]);
                        break;
                    }
                for (int i = 0; c[l] && i < B * H; ++i)
                    if (!close_enough(c[l][i], c_ref[l][i], tol, tol)) {
                        FAIL("B=%d step %d layer %d: c[%d] mismatch", B, step, l, i);
                        break;
                    }
                /* Resynchronise so errors cannot compound over steps. */
                for (int i = 0; i < B * Hr; ++i) h_ref[l][i] = h[l][i];
                for (int i = 0; c[l] && i < B * H; ++i) c_ref[l][i] = c[l][i];
            }
        }
        for (int l = 0; l < L; ++l) {
            free(h[l]);
            free(c[l]);
            free(h_ref[l]);
            free(c_ref[l]);
            free_cell(&cells[l]);
        }
        free(scratch);
        free(x);
        free(y);
    }
}

static void test_stack_step(const li_kernels *kern) {
    for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; ++format) check_stack_step(kern, format);
}

/* ---- li_stack_step_rows -------------------------------------------------------------------- */

/* Rows {3, 0} of a 5-row slab: equal to li_stack_step on those rows copied out, bit for bit;
 * the other rows untouched; a bad row index or count changes nothing. */
static void test_stack_step_rows(const li_kernels *kern) {
    const cell_config cfgs[] = {
        {LI_CELL_LSTM, 5, 19, 7, 1, 0, 0, 0, 0.0f, 0},
        {LI_CELL_GRU, 7, 12, 0, 0, 0, 1, 0, 0.0f, 0},
    };
    enum { L = 2, CAP = 5, N = 2 };
    const int32_t rows[N] = {3, 0}, bad[N] = {1, CAP};
    test_cell cells[L];
    const li_cell *ptrs[L];
    float *slab_h[L], *slab_c[L], *copy_h[L], *copy_c[L], *bh[L], *bc[L], *hrows[L], *crows[L];
    size_t nh[L], nc[L];
    for (int l = 0; l < L; ++l) {
        cells[l] = make_cell(&cfgs[l], LI_WEIGHTS_F32);
        ptrs[l] = &cells[l].c;
        const int Hr = cells[l].c.state_size, H = cells[l].c.hidden_size;
        const int lstm = cells[l].c.cell == LI_CELL_LSTM;
        nh[l] = (size_t)CAP * Hr;
        nc[l] = lstm ? (size_t)CAP * H : 0;
        slab_h[l] = random_floats(nh[l], -0.5f, 0.5f);
        slab_c[l] = lstm ? random_floats(nc[l], -1, 1) : 0;
        copy_h[l] = copy_floats(slab_h[l], nh[l]);
        copy_c[l] = lstm ? copy_floats(slab_c[l], nc[l]) : 0;
        bh[l] = alloc_floats((size_t)N * Hr);
        bc[l] = lstm ? alloc_floats((size_t)N * H) : 0;
        for (int i = 0; i < N; ++i) {
            memcpy(bh[l] + (size_t)i * Hr, slab_h[l] + (size_t)rows[i] * Hr, sizeof(float) * Hr);
            if (lstm)
                memcpy(bc[l] + (size_t)i * H, slab_c[l] + (size_t)rows[i] * H, sizeof(float) * H);
        }
    }
    const int out = cells[L - 1].c.state_size;
    float *x = random_floats((size_t)N * cfgs[0].I, -1.5f, 1.5f);
    float *y = alloc_floats((size_t)N * out), *y_want = alloc_floats((size_t)N * out);
    float *scratch = alloc_floats(li_stack_step_rows_scratch_floats(ptrs, L, CAP));
    float *want_scratch = alloc_floats(li_stack_step_scratch_floats(ptrs, L, N));
    int rc = li_stack_step_rows(ptrs, L, kern, CAP, N, bad, x, 0, slab_h, slab_c, hrows, crows,
                                y, scratch);
    if (rc != -5) FAIL("li_stack_step_rows with a row outside the slab returned %d", rc);
    rc = li_stack_step_rows(ptrs, L, kern, CAP, CAP + 1, rows, x, 0, slab_h, slab_c, hrows,
                            crows, y, scratch);
    if (rc != -1) FAIL("li_stack_step_rows with more rows than the slab returned %d", rc);
    for (int l = 0; l < L; ++l)
        if (memcmp(slab_h[l], copy_h[l], sizeof(float) * nh[l]) ||
            (nc[l] && memcmp(slab_c[l], copy_c[l], sizeof(float) * nc[l])))
            FAIL("a rejected li_stack_step_rows changed layer %d's slab", l);
    rc = li_stack_step(ptrs, L, kern, N, x, 0, bh, bc, y_want, want_scratch);
    rc |= li_stack_step_rows(ptrs, L, kern, CAP, N, rows, x, 0, slab_h, slab_c, hrows, crows, y,
                             scratch);
    if (rc != 0) FAIL("li_stack_step(_rows) returned %d", rc);
    ++g_checks;
    if (memcmp(y, y_want, sizeof(float) * N * out)) FAIL("li_stack_step_rows: y differs");
    for (int l = 0; l < L; ++l) {
        const int Hr = cells[l].c.state_size, H = cells[l].c.hidden_size;
        for (int r = 0; r < CAP; ++r) {
            const int i = r == rows[0] ? 0 : r == rows[1] ? 1 : -1;
            const float *hw = i >= 0 ? bh[l] + (size_t)i * Hr : copy_h[l] + (size_t)r * Hr;
            if (memcmp(slab_h[l] + (size_t)r * Hr, hw, sizeof(float) * Hr))
                FAIL("li_stack_step_rows: layer %d row %d of h is wrong", l, r);
            if (!nc[l]) continue;
            const float *cw = i >= 0 ? bc[l] + (size_t)i * H : copy_c[l] + (size_t)r * H;
            if (memcmp(slab_c[l] + (size_t)r * H, cw, sizeof(float) * H))
                FAIL("li_stack_step_rows: layer %d row %d of c is wrong", l, r);
        }
        free(slab_h[l]);
        free(slab_c[l]);
        free(copy_h[l]);
        free(copy_c[l]);
        free(bh[l]);
        free(bc[l]);
        free_cell(&cells[l]);
    }
    free(x);
    free(y);
    free(y_want);
    free(scratch);
    free(want_scratch);
}

/* ---- main --------------------------------------------------------------------------------- */

int main(void) {
    static const char *names[LI_ISA_COUNT] = {"scalar", "avx2", "avx512"};
    const unsigned usable = li_usable_isas();
    int tested = 0;
    for (int isa = 0; isa < LI_ISA_COUNT; ++isa) {
        const li_kernels *kern = li_kernels_for(isa);
        if (!(usable & (1u << isa)) || !kern) {
            printf("%-7s skipped (not usable here)\n", names[isa]);
            continue;
        }
        g_isa = kern->name;
        const int before = g_failures, checks_before = g_checks;
        test_matvec(kern);
        test_tile_product_shapes(kern);
        test_prepare(kern);
        test_rnn_pointwise(kern);
        test_lstm_pointwise(kern);
        test_gru_pointwise(kern);
        test_run_direction_parts(kern);
        test_activation_array(kern);
        test_conv2d(kern);
        test_run_direction(kern);
        test_token_tables(kern);
        test_stack_step(kern);
        test_stack_step_rows(kern);
        printf("%-7s %s (%d checks, %d failures)\n", kern->name,
               g_failures == before ? "ok" : "FAILED", g_checks - checks_before,
               g_failures - before);
        ++tested;
    }
    /* The scalar table with the scalar references of the rounded bf16 products: the
     * drivers' rounded paths (whole sequences at batch >= LI_BF16_ROUNDED_MIN_ROWS) on every
     * machine, with or without a bf16 dot product. */
    li_kernels scalar_rounded = li_kernels_scalar;
    scalar_rounded.name = "scalar+rounded-bf16";
    scalar_rounded.matvec_bf16_rounded = li_matvec_bf16_rounded_scalar;
    scalar_rounded.prepare_bf16_rounded = li_prepare_bf16_rounded_scalar;
    g_isa = scalar_rounded.name;
    const int before = g_failures, checks_before = g_checks;
    test_matvec(&scalar_rounded);
    test_tile_product_shapes(&scalar_rounded);
    test_run_direction_parts(&scalar_rounded);
    test_run_direction(&scalar_rounded);
    printf("%-7s %s (%d checks, %d failures)\n", scalar_rounded.name,
           g_failures == before ? "ok" : "FAILED", g_checks - checks_before,
           g_failures - before);
    printf("tested %d ISA(s): %s\n", tested, g_failures ? "FAILED" : "all ok");
    return g_failures ? 1 : 0;
}
