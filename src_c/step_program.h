/*
 * Step programs: the per-step work of a whole model graph as a flat array of op records, run
 * by one C call (li_step_program_run) with no Python, no allocation and no GIL.
 *
 * lstm_infer/compile/step_program.py builds the records from a graph specialised to the
 * stream's shapes: every tensor is a region of one float32 arena (or a constant's own array),
 * every size and stride is fixed, every pointer is checked against its array's extent before
 * the program exists. Layout ops that only rename or reshape (Reshape, Squeeze, Identity, a
 * Cast to the same type) are aliases there and cost nothing here.
 *
 * Strides are in elements. A record's output never overlaps its inputs except where the kind
 * says in place is allowed.
 */
#ifndef LI_STEP_PROGRAM_H
#define LI_STEP_PROGRAM_H

#include "li_cells.h"
#include "li_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LI_STEP_MAX_RANK 6

enum li_step_kind {
    /* y[i] = f[0] for the n[0] elements of the strided region (shape, sy). */
    LI_STEP_FILL = 0,
    /* y[sum idx_d * sy_d] = a[sum idx_d * sa_d] over shape[0..rank): slices, transposes,
     * concatenation (a part written into a strided region of y), broadcasts (sa_d = 0),
     * im2col windows (overlapping strides on a padded input). */
    LI_STEP_COPY = 1,
    /* y[i] = idx[i] >= 0 ? a[idx[i]] : f[0] for i < n[0], idx = (const int32_t *)aux:
     * reflect / edge padding and gathers by constant indices. */
    LI_STEP_GATHER = 2,
    /* y[i] = op(a[i]) for i < n[0] (enum li_step_unary; parameters f[0], f[1]); in place
     * allowed (y == a). */
    LI_STEP_UNARY = 3,
    /* y[sum idx_d * sy_d] = op(a[sum idx_d * sa_d], b[sum idx_d * sb_d]) over shape: numpy
     * broadcasting with stride 0 on broadcast dims (enum li_step_binary). */
    LI_STEP_BINARY = 4,
    /* For each of n[3] batch entries e (a += e*n[4], b += e*n[5], y += e*n[6]):
     *   y[r][j] = alpha * sum_k opA(a)[r][k] * opB(b)[k][j] + bias_col[j] + bias_row[r]
     * r < n[0] rows, j < n[1] columns, k < n[2]; opA transposes when flags & 1 (a stored
     * K x R), opB when flags & 2 (b stored N x K); lda / ldb / ldy in sa[0] / sb[0] / sy[0];
     * alpha f[0]; bias_col = aux (n[1] floats) and bias_row = aux2 (n[0] floats), each may
     * be NULL; then op (enum li_step_unary, LI_UNARY_NONE for none) on every stored value. */
    LI_STEP_GEMM = 5,
    /* One recurrent layer over T steps: aux points to a li_step_recurrent. */
    LI_STEP_RECURRENT = 6,
    /* y[o*n2 + i] = reduce_j a[(o*n1 + j)*n2 + i], o < n[0], j < n[1], i < n[2]
     * (enum li_step_reduce). */
    LI_STEP_REDUCE = 7,
    /* y = softmax (op 0) or log-softmax (op 1) of each of n[0] rows of n[1] floats of a
     * (contiguous); in place allowed. */
    LI_STEP_SOFTMAX = 8,
    /* Layer normalisation of n[0] rows of n[1] floats: y = (a - mean) / sqrt(var + f[0]) *
     * scale + bias, scale = aux and bias = aux2 (n[1] floats each; NULL: 1 and 0), on the
     * kernel table's li_layernorm_rows_fn (the whole-sequence op's kernel). In place
     * allowed. */
    LI_STEP_LAYERNORM = 9,
    /* One group of a convolution on the table's direct kernel (li_conv2d_fn): x = a (the
     * padded input, channel stride sa[0], row stride sa[1]), packed weights b, C n[0], KH
     * n[1], KW n[2], OH n[3], OW n[4], M n[5], relu n[6]; sh shape[0], dh shape[1], dw
     * shape[2]; y rows sy[0] apart; bias aux (M floats or NULL); aux2 the kernel's
     * C*KH*KW row pointers of scratch (writable). */
    LI_STEP_CONV = 10,
    /* Max (op 0) or sum (op 1) over every window of n[0] planes of the padded input a
     * (planes sa[0] apart, rows sa[1] apart): y[p][oh][ow] = reduce over i < n[1], j < n[2]
     * of a[p][oh*shape[0] + i*shape[2]][ow*shape[1] + j*shape[3]], OH n[3], OW n[4], y
     * contiguous. NaN propagates through the max. */
    LI_STEP_POOL = 11,
    /* One of CELLS.md's cells over T steps: aux points to a li_step_cell. */
    LI_STEP_CELL = 12,
    /* A grouped convolution with few taps per output (depthwise: one input channel a group),
     * every group in one record, portable C: G n[0] groups of CG shape[4] input and MG n[5]
     * output channels, KH n[1], KW n[2], OH n[3], OW n[4], relu n[6]; sh shape[0], sw
     * shape[1], dh shape[2], dw shape[3]. x = a (the padded input, channel planes sa[0]
     * apart, rows sa[1] apart), weights b (G*MG, CG, KH, KW) contiguous, bias aux (G*MG
     * floats or NULL), y contiguous (G*MG, OH, OW):
     *   y[q][oh][ow] = bias[q] + sum_{c < CG, i < KH, j < KW} b[q][c][i][j] *
     *                  x[(q / MG) * CG + c][oh*sh + i*dh][ow*sw + j*dw]
     * then max(y, 0) when relu (NaN kept). */
    LI_STEP_GROUPED_CONV = 13,
    /* A dense layer over few rows on the table's packed matvec (li_matvec_packed_fn):
     * y[r][j] = bias[j] + sum_k a[r][k] W[j][k] for r < n[0] rows of K n[1] floats (rows
     * sa[0] apart), W packed by pack_gate_blocks in b as n[2] gates of n[3] blocks; bias aux
     * (n[2]*n[3]*LI_BLOCK floats or NULL); y rows sy[0] apart, every row stored in whole
     * blocks (n[2]*n[3]*LI_BLOCK floats, the padding lanes included). */
    LI_STEP_MATVEC = 14,
    LI_STEP_KIND_COUNT = 15
};

enum li_step_unary {
    LI_UNARY_NONE = 0, /* identity (a copy unless in place) */
    LI_UNARY_RELU = 1,
    LI_UNARY_SIGMOID = 2,
    LI_UNARY_TANH = 3,
    LI_UNARY_EXP = 4,
    LI_UNARY_LOG = 5,
    LI_UNARY_SQRT = 6,
    LI_UNARY_ABS = 7,
    LI_UNARY_NEG = 8,
    LI_UNARY_SQUARE = 9,
    LI_UNARY_RECIPROCAL = 10,
    LI_UNARY_LEAKY_RELU = 11, /* alpha f[0] */
    LI_UNARY_ELU = 12,        /* alpha f[0] */
    LI_UNARY_SELU = 13,       /* alpha f[0], gamma f[1] */
    LI_UNARY_SOFTPLUS = 14,
    LI_UNARY_HARD_SIGMOID = 15, /* alpha f[0], beta f[1] */
    LI_UNARY_CLIP = 16,         /* low f[0], high f[1] */
    LI_UNARY_ERF = 17,
    LI_UNARY_GELU = 18,      /* exact: x/2 (1 + erf(x / sqrt 2)) */
    LI_UNARY_GELU_TANH = 19, /* tanh approximation */
    LI_UNARY_FLOOR = 20,
    LI_UNARY_CEIL = 21,
    LI_UNARY_ROUND = 22, /* half to even */
    LI_UNARY_POW = 23,   /* x ** f[0] */
    LI_UNARY_SOFTSIGN = 24,
    LI_UNARY_AFFINE = 25, /* f[0] * x + f[1] */
    LI_UNARY_COUNT = 26
};

enum li_step_binary {
    LI_BINARY_ADD = 0,
    LI_BINARY_SUB = 1,
    LI_BINARY_MUL = 2,
    LI_BINARY_DIV = 3,
    LI_BINARY_MAX = 4,
    LI_BINARY_MIN = 5,
    LI_BINARY_POW = 6,
    LI_BINARY_COUNT = 7
};

enum li_step_reduce {
    LI_REDUCE_SUM = 0,
    LI_REDUCE_MEAN = 1,
    LI_REDUCE_MAX = 2,
    LI_REDUCE_MIN = 3,
    LI_REDUCE_PROD = 4,
    LI_REDUCE_L1 = 5,
    LI_REDUCE_L2 = 6,
    LI_REDUCE_SUM_SQUARE = 7,
    LI_REDUCE_LOG_SUM_EXP = 8,
    LI_REDUCE_COUNT = 9
};

/* One recurrent layer (one or two directions) over a block of T steps, batch B. Direction d
 * runs cell[d] (reverse[d]: from the last step back) on the time-major input x ([T][B] rows
 * of I floats, ldx apart), its state h[d] ([B][Hr]) and c[d] ([B][H], LSTM; else NULL)
 * read and updated in place, and writes step t, row b at y + t*y_ts + b*y_bs + d*y_ds
 * (y NULL: not written). scratch: li_direction_scratch_floats(cell[d], T, B) floats, the
 * largest of both directions. */
typedef struct {
    const li_cell *cell[2]; /* cell[1] NULL for one direction */
    int reverse[2];
    int T, B;
    const float *x;
    int ldx;
    float *h[2];
    float *c[2];
    float *y;
    ptrdiff_t y_ts, y_bs, y_ds;
    float *scratch;
} li_step_recurrent;

/* A CELL record's cell and the block it runs (li_cells.h). */
typedef struct {
    const li_rcell *cell;
    li_rcell_io io;
} li_step_cell;

typedef struct {
    int kind;  /* enum li_step_kind */
    int op;    /* the function of UNARY / BINARY / REDUCE / SOFTMAX, GEMM's activation */
    int rank;  /* COPY / BINARY / FILL: dims of shape used (1..LI_STEP_MAX_RANK) */
    int flags; /* GEMM: bit 0 A transposed, bit 1 B transposed */
    int64_t shape[LI_STEP_MAX_RANK];
    int64_t sy[LI_STEP_MAX_RANK], sa[LI_STEP_MAX_RANK], sb[LI_STEP_MAX_RANK];
    int64_t n[7];  /* sizes, per kind */
    float f[4];    /* parameters, per kind */
    const float *a, *b;
    float *y;
    const void *aux, *aux2;
} li_step_op;

/* Run ops[0..n) in order. Returns 0, or (-1 - i) when record i failed (a recurrent layer
 * refused its arguments, an unknown kind): nothing after it ran. */
int li_step_program_run(const li_step_op *ops, int n, const li_kernels *kern,
                        li_sgemm_fn sgemm);

#ifdef __cplusplus
}
#endif
#endif /* LI_STEP_PROGRAM_H */
