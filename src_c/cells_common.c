/*
 * The cell registry (li_cells.h): one row per kind, and the helpers every kind uses (the
 * input projection on packed matvec or sgemm, layer norm, the chunk size). Portable C: the
 * heavy work reaches the per-ISA code through the kernel table and sgemm.
 */
#include "li_cells.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int (*check)(const li_rcell *cell);
    size_t (*scratch)(const li_rcell *cell, int T, int B);
    size_t (*state)(const li_rcell *cell, int s, int B);
    int (*run)(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
               const li_rcell_io *io);
    int (*output)(const li_rcell *cell); /* floats per step and row; NULL: H */
} rcell_ops;

/* Indexed by enum li_rcell_kind; a kind not built yet has a row of NULLs and is refused. */
static const rcell_ops RCELL_OPS[LI_RCELL_KIND_COUNT] = {
    [LI_RCELL_LAYER_NORM_LSTM] = {li_layer_norm_lstm_check, li_layer_norm_lstm_scratch,
                                  li_layer_norm_lstm_state, li_layer_norm_lstm_run},
    [LI_RCELL_CLOCKWORK_RNN] = {li_clockwork_rnn_check, li_clockwork_rnn_scratch,
                                li_clockwork_rnn_state, li_clockwork_rnn_run},
    [LI_RCELL_DEPTH_GATED_LSTM] = {li_depth_gated_lstm_check, li_depth_gated_lstm_scratch,
                                   li_depth_gated_lstm_state, li_depth_gated_lstm_run},
    [LI_RCELL_GRID_LSTM] = {li_grid_lstm_check, li_grid_lstm_scratch, li_grid_lstm_state,
                            li_grid_lstm_run},
    [LI_RCELL_ATTENTION_DECODER] = {li_attention_decoder_check, li_attention_decoder_scratch,
                                    li_attention_decoder_state, li_attention_decoder_run,
                                    li_attention_decoder_output},
};

/* Sizes far above any trained cell, low enough that every product below fits an int. */
#define RCELL_MAX_SIZE (1 << 20)
#define RCELL_MAX_LAYERS 64

static const rcell_ops *ops_of(const li_rcell *cell) {
    if (cell == NULL || cell->kind < 0 || cell->kind >= LI_RCELL_KIND_COUNT)
        return NULL;
    const rcell_ops *ops = &RCELL_OPS[cell->kind];
    return ops->run == NULL ? NULL : ops;
}

int li_rcell_check(const li_rcell *cell) {
    const rcell_ops *ops = ops_of(cell);
    if (ops == NULL)
        return -1;
    if (cell->input_size <= 0 || cell->input_size > RCELL_MAX_SIZE || cell->hidden_size <= 0 ||
        cell->hidden_size > RCELL_MAX_SIZE || cell->layers <= 0 ||
        cell->layers > RCELL_MAX_LAYERS || cell->n_arrays < 0 ||
        (cell->n_arrays > 0 && (cell->array == NULL || cell->array_len == NULL)))
        return -2;
    for (int i = 0; i < cell->n_arrays; i++)
        if (cell->array[i] == NULL || cell->array_len[i] < 0)
            return -3;
    if (cell->weight_format != LI_WEIGHTS_F32 && cell->weight_format != LI_WEIGHTS_BF16 &&
        cell->weight_format != LI_WEIGHTS_I8)
        return -4;
    return ops->check(cell);
}

size_t li_rcell_scratch_floats(const li_rcell *cell, int T, int B) {
    const rcell_ops *ops = ops_of(cell);
    if (ops == NULL || T <= 0 || B <= 0)
        return 0;
    return ops->scratch(cell, T, B) + li_rcell_prep_floats(cell);
}

size_t li_rcell_state_floats(const li_rcell *cell, int s, int B) {
    const rcell_ops *ops = ops_of(cell);
    if (ops == NULL || s < 0 || s >= LI_RCELL_MAX_STATES || B <= 0)
        return 0;
    return ops->state(cell, s, B);
}

int li_rcell_output_size(const li_rcell *cell) {
    const rcell_ops *ops = ops_of(cell);
    return ops != NULL && ops->output != NULL ? ops->output(cell) : cell->hidden_size;
}

int li_rcell_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                 const li_rcell_io *io) {
    const rcell_ops *ops = ops_of(cell);
    if (ops == NULL || kern == NULL || sgemm == NULL || io == NULL)
        return -1;
    if (io->T < 0 || io->B < 0 || io->ldx < cell->input_size)
        return -2;
    if (io->T == 0 || io->B == 0)
        return 0;
    if (io->x == NULL || io->scratch == NULL)
        return -2;
    li_rcell_io with_prep = *io; /* the prepared rows after the kind's own scratch */
    with_prep.prep = io->scratch + ops->scratch(cell, io->T, io->B);
    return ops->run(cell, kern, sgemm, &with_prep);
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Projections a chunk holds: 256 KB, the size that stays in L2 on both families (the
 * sanitized tests build with a small one, so short sequences span several chunks). */
#ifndef LI_RCELL_CHUNK_FLOATS
#define LI_RCELL_CHUNK_FLOATS (64 << 10)
#endif
/* The product policy of the recurrent driver (recurrent_driver.c, measured there on both
 * families): the packed matvec reads pre-packed weights once per block per row tile, so it
 * beats OpenBLAS sgemm (which repacks the weights on every call) for recurrent products up
 * to RCELL_PACKED_MAX_ROWS rows, and for input projections whose weights fit in L2 (then in
 * chunks of rows whose inputs stay in L1) or that have few rows in all. A run's chunk of
 * steps holds at most LI_RCELL_CHUNK_FLOATS / (G * Hp) projected rows (64 at H = 256, G = 4),
 * where sgemm spends much of its time repacking W: Zen 3 AVX2, 4H x 2H weights (2 MB) over
 * 64 rows took 0.8 ms packed against 1.1 ms on sgemm (0.6 ms of it in the packing; the grid
 * LSTM's depth blocks). So up to RCELL_XPROJ_FEW_ROWS rows the packed matvec takes any size
 * of W, in one call that reads each block once; only a decoder's memory projection (S * B
 * rows at once) goes beyond it to sgemm. */
#define RCELL_PACKED_MAX_ROWS 1024
#define RCELL_XPROJ_PACKED_MAX_BYTES ((size_t)1 << 20)
#define RCELL_XPROJ_FEW_ROWS 256
#define RCELL_XPROJ_CHUNK_FLOATS 12288

int li_rcell_chunk_steps(int T, int B, int proj_floats_per_row) {
    long per_step = (long)B * (proj_floats_per_row > 0 ? proj_floats_per_row : 1);
    long steps = LI_RCELL_CHUNK_FLOATS / per_step;
    if (steps < 1)
        steps = 1;
    return steps < T ? (int)steps : T;
}

/* out (rows x G*Hp) = x W^T + bias on sgemm: column-major out^T = W x^T. */
static void sgemm_rows(li_sgemm_fn sgemm, const float *w_pad, int n, int K, const float *x,
                       int ldx, int rows, const float *bias_pad, float *out) {
    char ta = 'T', tb = 'N';
    int m = rows, k = K, lda = K, ldb = ldx, ldc = n;
    float one = 1.0f, zero = 0.0f;
    sgemm(&ta, &tb, &n, &m, &k, &one, (float *)w_pad, &lda, (float *)x, &ldb, &zero, out, &ldc);
    if (bias_pad != NULL)
        for (int r = 0; r < rows; r++) {
            float *o = out + (size_t)r * n;
            for (int j = 0; j < n; j++)
                o[j] += bias_pad[j];
        }
}

int li_rcell_projects_packed(int G, int Hp, int K, int rows) {
    const size_t bytes = sizeof(float) * (size_t)G * Hp * K;
    return G <= 4 && (bytes <= RCELL_XPROJ_PACKED_MAX_BYTES || rows <= RCELL_XPROJ_FEW_ROWS);
}

/* ---- weight formats ---------------------------------------------------------------------- */

/* Rows prepared at once for a quantized product: their codes stay in L1 next to the block
 * of weights being read. */
#define RCELL_PREP_ROWS 32

static size_t round_up_64(size_t n) { return (n + 63) / 64 * 64; }

int64_t li_rcell_packed_len(const li_rcell *cell, int G, int Hp, int K) {
    const int64_t rows = (int64_t)G * Hp;
    switch (cell->weight_format) {
    case LI_WEIGHTS_F32:
        return rows * K;
    case LI_WEIGHTS_BF16:
        return rows * ((K + 1) / 2 * 2) * 2;
    case LI_WEIGHTS_I8:
        return (int64_t)round_up_64((size_t)(rows * ((K + 3) / 4 * 4))) + rows * 8;
    default:
        return -1;
    }
}

/* Inputs of the widest product any kind makes (the attention decoder's [ctx ; h] and
 * [h ; ctx] are Dm + H; the others at most I + H or 2H): a bound for the prepared rows. */
static int64_t widest_inputs(const li_rcell *cell) {
    int64_t dm = 0;
    if (cell->kind == LI_RCELL_ATTENTION_DECODER && cell->n_arrays > 0 &&
        cell->array_len[0] >= 2)
        dm = ((const int32_t *)cell->array[0])[1];
    return (int64_t)cell->input_size + 2 * (int64_t)cell->hidden_size + dm;
}

size_t li_rcell_prep_floats(const li_rcell *cell) {
    if (cell->weight_format == LI_WEIGHTS_F32)
        return 0;
    const size_t bytes = (size_t)RCELL_PREP_ROWS * LI_PREPARED_ROW_BYTES(widest_inputs(cell)) +
                         sizeof(float) * RCELL_PREP_ROWS + 64; /* codes, scales, alignment */
    return (bytes + sizeof(float) - 1) / sizeof(float);
}

void li_rcell_matvec(const li_kernels *kern, const li_rcell *cell, const void *packed, int K,
                     int G, int Hp, int blk0, int blk1, const float *x, int ldx, int rows,
                     const float *bias, float *out, int ogs, int ldo, void *prep) {
    if (cell->weight_format == LI_WEIGHTS_F32) {
        kern->matvec_f32(packed, K, G, blk0, blk1, x, ldx, rows, bias, Hp, out, ogs, ldo);
        return;
    }
    const int i8 = cell->weight_format == LI_WEIGHTS_I8;
    const float *scale = NULL;
    const int32_t *rowsum = NULL;
    if (i8) { /* after the codes, at a 64-byte boundary: every padded row's scale, code sum */
        const size_t codes = (size_t)G * Hp * ((K + 3) / 4 * 4);
        scale = (const float *)((const char *)packed + round_up_64(codes));
        rowsum = (const int32_t *)(scale + (size_t)G * Hp);
    }
    const li_prepare_fn prepare = i8 ? kern->prepare_i8 : kern->prepare_bf16;
    li_rows r = {x, ldx, NULL, 0, NULL};
    if (!i8 && prepare == NULL) { /* the table's bf16 product reads the float32 rows */
        kern->matvec_bf16(packed, K, G, blk0, blk1, &r, rows, bias, NULL, NULL, Hp, out, ogs,
                          ldo);
        return;
    }
    const int ldq = (int)LI_PREPARED_ROW_BYTES(K);
    char *q = (char *)(((uintptr_t)prep + 63) & ~(uintptr_t)63);
    float *qscale = (float *)(q + (size_t)RCELL_PREP_ROWS * ldq);
    for (int r0 = 0; r0 < rows; r0 += RCELL_PREP_ROWS) {
        const int n = rows - r0 < RCELL_PREP_ROWS ? rows - r0 : RCELL_PREP_ROWS;
        const float *xr = x + (size_t)r0 * ldx;
        prepare(xr, ldx, n, K, q, ldq, qscale);
        r = (li_rows){xr, ldx, q, ldq, qscale};
        float *o = out + (size_t)r0 * ldo;
        if (i8)
            kern->matvec_i8(packed, K, G, blk0, blk1, &r, n, bias, scale, rowsum, Hp, o, ogs,
                            ldo);
        else
            kern->matvec_bf16(packed, K, G, blk0, blk1, &r, n, bias, NULL, NULL, Hp, o, ogs,
                              ldo);
    }
}

void li_rcell_project(const li_kernels *kern, li_sgemm_fn sgemm, const li_rcell *cell,
                      const float *w_pad, const void *w_packed, int G, int Hp, int K,
                      const float *bias_pad, const float *x, int ldx, int rows, float *out,
                      void *prep) {
    const int ldo = G * Hp;
    const size_t bytes = sizeof(float) * (size_t)ldo * K;
    if (w_packed == NULL || !li_rcell_projects_packed(G, Hp, K, rows)) {
        sgemm_rows(sgemm, w_pad, ldo, K, x, ldx, rows, bias_pad, out);
        return;
    }
    const int per = RCELL_XPROJ_CHUNK_FLOATS / (K > 0 ? K : 1);
    const int chunk = bytes > RCELL_XPROJ_PACKED_MAX_BYTES ? rows : (per > 8 ? per : 8);
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        const int n = rows - r0 < chunk ? rows - r0 : chunk;
        li_rcell_matvec(kern, cell, w_packed, K, G, Hp, 0, Hp / LI_BLOCK, x + (size_t)r0 * ldx,
                        ldx, n, bias_pad, out + (size_t)r0 * ldo, Hp, ldo, prep);
    }
}

void li_rcell_recurrent(const li_kernels *kern, li_sgemm_fn sgemm, const li_rcell *cell,
                        const float *r_pad, const void *r_packed, int G, int Hp, int K,
                        const float *h, int ldh, int rows, float *out, void *prep) {
    if (rows > RCELL_PACKED_MAX_ROWS)
        sgemm_rows(sgemm, r_pad, G * Hp, K, h, ldh, rows, NULL, out);
    else
        li_rcell_matvec(kern, cell, r_packed, K, G, Hp, 0, Hp / LI_BLOCK, h, ldh, rows, NULL,
                        out, Hp, G * Hp, prep);
}
