/*
 * The step program executor (step_program.h): one switch per record, each kind a plain loop
 * or a call into the active kernel table / BLAS. Portable C, no -m flags: the heavy records
 * (GEMM, RECURRENT, SOFTMAX) reach the per-ISA code through the kernel table and sgemm; the
 * others are glue over a few hundred floats per step, where a scalar loop the compiler
 * vectorises is as fast as anything.
 */
#include "step_program.h"

#include "pool_planes.h"

#include <math.h>
#include <string.h>

/* Walks the multi-index of shape[0..rank) in row-major order, the last dim innermost, and
 * calls body(offset_y, offset_a, offset_b, inner) once per run of the last dim. */
typedef struct {
    int rank;
    int64_t idx[LI_STEP_MAX_RANK];
    int64_t oy, oa, ob;
} strided_walk;

static int walk_next(strided_walk *w, const li_step_op *op) {
    /* advance every dim but the last; returns 0 when the walk is over */
    for (int d = w->rank - 2; d >= 0; d--) {
        w->idx[d]++;
        w->oy += op->sy[d];
        w->oa += op->sa[d];
        w->ob += op->sb[d];
        if (w->idx[d] < op->shape[d])
            return 1;
        w->oy -= op->sy[d] * op->shape[d];
        w->oa -= op->sa[d] * op->shape[d];
        w->ob -= op->sb[d] * op->shape[d];
        w->idx[d] = 0;
    }
    return 0;
}

static int walk_empty(const li_step_op *op) {
    for (int d = 0; d < op->rank; d++)
        if (op->shape[d] <= 0)
            return 1;
    return 0;
}

static void run_fill(const li_step_op *op) {
    if (walk_empty(op))
        return;
    strided_walk w = {op->rank, {0}, 0, 0, 0};
    const int64_t inner = op->shape[op->rank - 1], sy = op->sy[op->rank - 1];
    const float v = op->f[0];
    do {
        float *y = op->y + w.oy;
        for (int64_t i = 0; i < inner; i++)
            y[i * sy] = v;
    } while (walk_next(&w, op));
}

static void run_copy(const li_step_op *op) {
    if (walk_empty(op))
        return;
    strided_walk w = {op->rank, {0}, 0, 0, 0};
    const int64_t inner = op->shape[op->rank - 1];
    const int64_t sy = op->sy[op->rank - 1], sa = op->sa[op->rank - 1];
    do {
        float *y = op->y + w.oy;
        const float *a = op->a + w.oa;
        if (sy == 1 && sa == 1) {
            memcpy(y, a, (size_t)inner * sizeof(float));
        } else {
            for (int64_t i = 0; i < inner; i++)
                y[i * sy] = a[i * sa];
        }
    } while (walk_next(&w, op));
}

static void run_gather(const li_step_op *op) {
    const int32_t *idx = (const int32_t *)op->aux;
    const float fill = op->f[0];
    for (int64_t i = 0; i < op->n[0]; i++)
        op->y[i] = idx[i] >= 0 ? op->a[idx[i]] : fill;
}

/* ONNX's Round: halves to even (the default floating-point rounding mode). */
static float round_half_even(float x) { return nearbyintf(x); }

static float unary_value(int kind, float x, float p0, float p1) {
    switch (kind) {
    case LI_UNARY_RELU: return x > 0.0f ? x : (x == x ? 0.0f : x);
    case LI_UNARY_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case LI_UNARY_TANH: return tanhf(x);
    case LI_UNARY_EXP: return expf(x);
    case LI_UNARY_LOG: return logf(x);
    case LI_UNARY_SQRT: return sqrtf(x);
    case LI_UNARY_ABS: return fabsf(x);
    case LI_UNARY_NEG: return -x;
    case LI_UNARY_SQUARE: return x * x;
    case LI_UNARY_RECIPROCAL: return 1.0f / x;
    case LI_UNARY_LEAKY_RELU: return x >= 0.0f ? x : p0 * x;
    case LI_UNARY_ELU: return x >= 0.0f ? x : p0 * (expf(x) - 1.0f);
    case LI_UNARY_SELU: return p1 * (x > 0.0f ? x : p0 * (expf(x) - 1.0f));
    case LI_UNARY_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    case LI_UNARY_HARD_SIGMOID: { /* comparisons, not fminf/fmaxf: NaN stays NaN */
        const float v = p0 * x + p1;
        return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    }
    case LI_UNARY_CLIP: return x < p0 ? p0 : (x > p1 ? p1 : x);
    case LI_UNARY_ERF: return erff(x);
    case LI_UNARY_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case LI_UNARY_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case LI_UNARY_FLOOR: return floorf(x);
    case LI_UNARY_CEIL: return ceilf(x);
    case LI_UNARY_ROUND: return round_half_even(x);
    case LI_UNARY_POW: return powf(x, p0);
    case LI_UNARY_SOFTSIGN: return x / (1.0f + fabsf(x));
    case LI_UNARY_AFFINE: return p0 * x + p1;
    default: return x; /* LI_UNARY_NONE */
    }
}

static void unary_array(int kind, const float *a, float *y, int64_t n, float p0, float p1) {
    /* The common cases as their own loops, which the compiler vectorises. */
    switch (kind) {
    case LI_UNARY_NONE:
        if (y != a)
            memmove(y, a, (size_t)n * sizeof(float));
        return;
    case LI_UNARY_RELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] > 0.0f ? a[i] : (a[i] == a[i] ? 0.0f : a[i]);
        return;
    case LI_UNARY_SQUARE:
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] * a[i];
        return;
    case LI_UNARY_SQRT:
        for (int64_t i = 0; i < n; i++)
            y[i] = sqrtf(a[i]);
        return;
    case LI_UNARY_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] >= 0.0f ? a[i] : p0 * a[i];
        return;
    case LI_UNARY_AFFINE:
        for (int64_t i = 0; i < n; i++)
            y[i] = p0 * a[i] + p1;
        return;
    default:
        for (int64_t i = 0; i < n; i++)
            y[i] = unary_value(kind, a[i], p0, p1);
    }
}

static float binary_value(int kind, float a, float b) {
    switch (kind) {
    case LI_BINARY_ADD: return a + b;
    case LI_BINARY_SUB: return a - b;
    case LI_BINARY_MUL: return a * b;
    case LI_BINARY_DIV: return a / b;
    /* numpy's maximum / minimum: a NaN on either side gives NaN */
    case LI_BINARY_MAX: return (a != a || b != b) ? a + b : (a > b ? a : b);
    case LI_BINARY_MIN: return (a != a || b != b) ? a + b : (a < b ? a : b);
    case LI_BINARY_POW: return powf(a, b);
    default: return a;
    }
}

static void run_binary(const li_step_op *op) {
    if (walk_empty(op))
        return;
    strided_walk w = {op->rank, {0}, 0, 0, 0};
    const int last = op->rank - 1;
    const int64_t inner = op->shape[last];
    const int64_t sy = op->sy[last], sa = op->sa[last], sb = op->sb[last];
    const int kind = op->op;
    do {
        float *y = op->y + w.oy;
        const float *a = op->a + w.oa, *b = op->b + w.ob;
        if (sy == 1 && sa == 1 && sb == 1 && kind == LI_BINARY_ADD) {
            for (int64_t i = 0; i < inner; i++)
                y[i] = a[i] + b[i];
        } else if (sy == 1 && sa == 1 && sb == 1 && kind == LI_BINARY_MUL) {
            for (int64_t i = 0; i < inner; i++)
                y[i] = a[i] * b[i];
        } else if (sy == 1 && sa == 1 && sb == 0 && kind == LI_BINARY_ADD) {
            const float bv = b[0];
            for (int64_t i = 0; i < inner; i++)
                y[i] = a[i] + bv;
        } else if (sy == 1 && sa == 1 && sb == 0 && kind == LI_BINARY_MUL) {
            const float bv = b[0];
            for (int64_t i = 0; i < inner; i++)
                y[i] = a[i] * bv;
        } else {
            for (int64_t i = 0; i < inner; i++)
                y[i * sy] = binary_value(kind, a[i * sa], b[i * sb]);
        }
    } while (walk_next(&w, op));
}

static void run_gemm(const li_step_op *op, li_sgemm_fn sgemm) {
    int R = (int)op->n[0], N = (int)op->n[1], K = (int)op->n[2];
    int lda = (int)op->sa[0], ldb = (int)op->sb[0], ldy = (int)op->sy[0];
    const float *bias_col = (const float *)op->aux, *bias_row = (const float *)op->aux2;
    float alpha = op->f[0];
    if (R <= 0 || N <= 0)
        return;
    for (int64_t e = 0; e < op->n[3]; e++) {
        const float *a = op->a + e * op->n[4];
        const float *b = op->b + e * op->n[5];
        float *y = op->y + e * op->n[6];
        int has_bias = bias_col != NULL || bias_row != NULL;
        for (int r = 0; has_bias && r < R; r++) {
            float *row = y + (int64_t)r * ldy;
            const float rb = bias_row ? bias_row[r] : 0.0f;
            for (int j = 0; j < N; j++)
                row[j] = rb + (bias_col ? bias_col[j] : 0.0f);
        }
        if (K > 0) {
            /* Row-major Y = opA(A) opB(B) is column-major Y^T = opB(B)^T opA(A)^T: the
             * Fortran call takes B first. */
            char ta = (op->flags & 2) ? 'T' : 'N', tb = (op->flags & 1) ? 'T' : 'N';
            float beta = has_bias ? 1.0f : 0.0f;
            sgemm(&ta, &tb, &N, &R, &K, &alpha, (float *)b, &ldb, (float *)a, &lda, &beta, y,
                  &ldy);
        } else if (!has_bias) {
            for (int r = 0; r < R; r++)
                memset(y + (int64_t)r * ldy, 0, (size_t)N * sizeof(float));
        }
        if (op->op != LI_UNARY_NONE)
            for (int r = 0; r < R; r++)
                unary_array(op->op, y + (int64_t)r * ldy, y + (int64_t)r * ldy, N, op->f[1],
                            op->f[2]);
    }
}

static int run_recurrent(const li_step_op *op, const li_kernels *kern, li_sgemm_fn sgemm) {
    const li_step_recurrent *r = (const li_step_recurrent *)op->aux;
    for (int d = 0; d < 2 && r->cell[d] != NULL; d++) {
        float *y = r->y ? r->y + d * r->y_ds : NULL;
        int rc = li_run_direction(r->cell[d], kern, sgemm, r->T, r->B, r->x, r->ldx, NULL,
                                  NULL, r->reverse[d], r->h[d], r->c[d], y, r->y_ts, r->y_bs,
                                  r->scratch);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void run_reduce(const li_step_op *op) {
    const int64_t outer = op->n[0], n = op->n[1], inner = op->n[2];
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const float *a = op->a + o * n * inner + i;
            double acc;
            switch (op->op) {
            case LI_REDUCE_MAX:
            case LI_REDUCE_MIN: {
                float m = n > 0 ? a[0] : (op->op == LI_REDUCE_MAX ? -INFINITY : INFINITY);
                for (int64_t j = 1; j < n; j++) {
                    float v = a[j * inner];
                    if (v != v || m != m)
                        m = m + v; /* NaN propagates */
                    else if (op->op == LI_REDUCE_MAX ? v > m : v < m)
                        m = v;
                }
                op->y[o * inner + i] = m;
                continue;
            }
            case LI_REDUCE_PROD:
                acc = 1.0;
                for (int64_t j = 0; j < n; j++)
                    acc *= a[j * inner];
                break;
            case LI_REDUCE_LOG_SUM_EXP: {
                float m = -INFINITY;
                for (int64_t j = 0; j < n; j++)
                    m = fmaxf(m, a[j * inner]);
                acc = 0.0;
                for (int64_t j = 0; j < n; j++)
                    acc += exp((double)a[j * inner] - m);
                acc = isinf(m) ? (double)m : m + log(acc);
                break;
            }
            default:
                acc = 0.0;
                for (int64_t j = 0; j < n; j++) {
                    double v = a[j * inner];
                    acc += op->op == LI_REDUCE_L1 ? fabs(v)
                           : (op->op == LI_REDUCE_L2 || op->op == LI_REDUCE_SUM_SQUARE) ? v * v
                                                                                     : v;
                }
                if (op->op == LI_REDUCE_MEAN)
                    acc = n > 0 ? acc / (double)n : NAN;
                else if (op->op == LI_REDUCE_L2)
                    acc = sqrt(acc);
            }
            op->y[o * inner + i] = (float)acc;
        }
    }
}

static void run_grouped_conv(const li_step_op *op) {
    const int64_t G = op->n[0], KH = op->n[1], KW = op->n[2], OH = op->n[3], OW = op->n[4];
    const int64_t MG = op->n[5], CG = op->shape[4];
    const int64_t sh = op->shape[0], sw = op->shape[1], dh = op->shape[2], dw = op->shape[3];
    const int64_t taps = CG * KH * KW;
    const float *bias = (const float *)op->aux;
    for (int64_t q = 0; q < G * MG; q++) {
        const float *w = op->b + q * taps;
        const float *x = op->a + (q / MG) * CG * op->sa[0];
        const float b0 = bias ? bias[q] : 0.0f;
        for (int64_t oh = 0; oh < OH; oh++) {
            float *y = op->y + (q * OH + oh) * OW;
            for (int64_t ow = 0; ow < OW; ow++)
                y[ow] = b0;
            for (int64_t c = 0; c < CG; c++)
                for (int64_t i = 0; i < KH; i++) {
                    const float *row = x + c * op->sa[0] + (oh * sh + i * dh) * op->sa[1];
                    for (int64_t j = 0; j < KW; j++) {
                        const float wv = w[(c * KH + i) * KW + j];
                        const float *xs = row + j * dw;
                        if (sw == 1)
                            for (int64_t ow = 0; ow < OW; ow++)
                                y[ow] += wv * xs[ow];
                        else
                            for (int64_t ow = 0; ow < OW; ow++)
                                y[ow] += wv * xs[ow * sw];
                    }
                }
            if (op->n[6])
                for (int64_t ow = 0; ow < OW; ow++)
                    y[ow] = y[ow] < 0.0f ? 0.0f : y[ow];
        }
    }
}

int li_step_program_run(const li_step_op *ops, int n, const li_kernels *kern,
                        li_sgemm_fn sgemm) {
    for (int i = 0; i < n; i++) {
        const li_step_op *op = &ops[i];
        switch (op->kind) {
        case LI_STEP_FILL: run_fill(op); break;
        case LI_STEP_COPY: run_copy(op); break;
        case LI_STEP_GATHER: run_gather(op); break;
        case LI_STEP_UNARY:
            /* sigmoid on the table's vector kernel (the recurrent gates' own, relative error
             * ~1e-7; a scalar expf per element costs ~4 ns). Not tanh: the kernels' tanh is
             * accurate in absolute terms only, which a tanh of tiny values would show. */
            if (op->op == LI_UNARY_SIGMOID && kern->activation_array)
                kern->activation_array(LI_ACT_SIGMOID, op->a, op->y,
                                       (size_t)(op->n[0] > 0 ? op->n[0] : 0));
            else
                unary_array(op->op, op->a, op->y, op->n[0], op->f[0], op->f[1]);
            break;
        case LI_STEP_BINARY: run_binary(op); break;
        case LI_STEP_GEMM: run_gemm(op, sgemm); break;
        case LI_STEP_RECURRENT:
            if (run_recurrent(op, kern, sgemm) != 0)
                return -1 - i;
            break;
        case LI_STEP_REDUCE: run_reduce(op); break;
        case LI_STEP_SOFTMAX:
            if (op->y != op->a)
                memmove(op->y, op->a, (size_t)(op->n[0] * op->n[1]) * sizeof(float));
            if (op->n[0] > 0 && op->n[1] > 0)
                kern->softmax_rows(op->y, (size_t)op->n[0], (size_t)op->n[1], (size_t)op->n[1],
                                   op->op);
            break;
        case LI_STEP_LAYERNORM:
            kern->layernorm_rows(op->a, op->y, (size_t)op->n[0], (size_t)op->n[1],
                                 (const float *)op->aux, (const float *)op->aux2, op->f[0]);
            break;
        case LI_STEP_POOL:
            li_pool_planes(kern, op->a, (size_t)op->sa[0], (size_t)op->sa[1], op->n[0], op->n[1],
                           op->n[2], op->n[3], op->n[4], op->shape[0], op->shape[1],
                           op->shape[2], op->shape[3], op->op == 1, op->y);
            break;
        case LI_STEP_CELL: {
            const li_step_cell *rc = (const li_step_cell *)op->aux;
            if (rc == NULL || li_rcell_run(rc->cell, kern, sgemm, &rc->io) != 0)
                return -1 - i;
            break;
        }
        case LI_STEP_CONV:
            kern->conv2d(op->a, (size_t)op->sa[0], (size_t)op->sa[1], (int)op->n[0], (int)op->n[1],
                         (int)op->n[2], (int)op->shape[0], (int)op->shape[1], (int)op->shape[2],
                         (int)op->n[3], (int)op->n[4], op->b, (int)op->n[5],
                         (const float *)op->aux, op->y, (size_t)op->sy[0], (int)op->n[6],
                         (const float **)op->aux2);
            break;
        case LI_STEP_GROUPED_CONV: run_grouped_conv(op); break;
        case LI_STEP_MATVEC: {
            const int blocks = (int)op->n[3];
            if (op->n[0] > 0 && blocks > 0)
                kern->matvec_f32(op->b, (int)op->n[1], (int)op->n[2], 0, blocks, op->a,
                                 (int)op->sa[0], (int)op->n[0], (const float *)op->aux,
                                 blocks * LI_BLOCK, op->y, blocks * LI_BLOCK, (int)op->sy[0]);
            break;
        }
        default: return -1 - i;
        }
    }
    return 0;
}
