/*
 * The cell registry (li_cells.h): one row per kind, and the helpers every kind uses (the
 * input projection on packed matvec or sgemm, layer norm, the chunk size). Portable C: the
 * heavy work reaches the per-ISA code through the kernel table and sgemm.
 */
#include "li_cells.h"

#include <math.h>
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
    return ops->check(cell);
}

size_t li_rcell_scratch_floats(const li_rcell *cell, int T, int B) {
    const rcell_ops *ops = ops_of(cell);
    if (ops == NULL || T <= 0 || B <= 0)
        return 0;
    return ops->scratch(cell, T, B);
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
    return ops->run(cell, kern, sgemm, io);
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
 * chunks of rows whose inputs stay in L1) or that have few rows in all. */
#define RCELL_PACKED_MAX_ROWS 1024
#define RCELL_XPROJ_PACKED_MAX_BYTES ((size_t)1 << 20)
#define RCELL_XPROJ_FEW_ROWS 48
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

void li_rcell_project(const li_kernels *kern, li_sgemm_fn sgemm, const float *w_pad,
                      const void *w_packed, int G, int Hp, int K, const float *bias_pad,
                      const float *x, int ldx, int rows, float *out) {
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
        kern->matvec_f32(w_packed, K, G, 0, Hp / LI_BLOCK, x + (size_t)r0 * ldx, ldx, n,
                         bias_pad, Hp, out + (size_t)r0 * ldo, Hp, ldo);
    }
}

void li_rcell_recurrent(const li_kernels *kern, li_sgemm_fn sgemm, const float *r_pad,
                        const void *r_packed, int G, int Hp, int K, const float *h, int ldh,
                        int rows, float *out) {
    if (rows > RCELL_PACKED_MAX_ROWS)
        sgemm_rows(sgemm, r_pad, G * Hp, K, h, ldh, rows, NULL, out);
    else
        kern->matvec_f32(r_packed, K, G, 0, Hp / LI_BLOCK, h, ldh, rows, NULL, Hp, out, Hp,
                         G * Hp);
}

void li_rcell_layer_norm(const float *x, int n, const float *w, const float *b, float eps,
                         float *y) {
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < n; i++)
        sum += x[i];
    const double mean = sum / n;
    for (int i = 0; i < n; i++) {
        const double d = x[i] - mean;
        sq += d * d;
    }
    const float inv = (float)(1.0 / sqrt(sq / n + (double)eps));
    const float m = (float)mean;
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - m) * inv * w[i] + b[i];
}
