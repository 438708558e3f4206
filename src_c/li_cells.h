/*
 * The cells of CELLS.md that no ONNX operator describes (layer-normalised LSTM, depth-gated
 * LSTM, clockwork RNN, grid LSTM), as fused engine ops: one function per kind runs a block of
 * T steps of batch B over its whole stack of layers, its products on the kernel table's packed
 * matvec (few rows) or sgemm (many rows), its pointwise work in one pass per layer and step.
 *
 * A cell is described by li_rcell: its sizes and a list of weight arrays whose order and
 * shapes are the kind's layout, written above the kind's run function (cell_*.c). Python
 * (lstm_infer/cells/) builds the arrays; li_rcell_check verifies every array's length against
 * the sizes before the cell is used, so a caller cannot make the kernels read past an array.
 * Whole-sequence runs and stream steps call the same function (a step is T = 1), so a stream
 * reproduces a run exactly.
 *
 * Weight formats. A cell's packed matrices (the arrays its layout calls *_packed) are in
 * the cell's weight_format: float32 pack_gate_blocks(M, G) (length in floats), or a byte
 * array (length in bytes) of bfloat16 blocks (pair 2) or int8 blocks (pair 4) followed, at
 * the next 64-byte boundary, by the rows' float32 scales [G*Hp] and int32 code sums [G*Hp]
 * (lstm_infer/cells/base.py, packed). li_rcell_packed_len gives the length a layout checks.
 * Every product on them goes through li_rcell_matvec, which prepares the activation rows the
 * table's kernel for the format reads (int8 codes, split bf16) in io->prep. The *_pad
 * arrays stay float32: the dequantized weights, for the sgemm path of many rows (as the
 * recurrent driver projects whole sequences of quantized layers).
 */
#ifndef LI_CELLS_H
#define LI_CELLS_H

#include "li_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

enum li_rcell_kind {
    LI_RCELL_LAYER_NORM_LSTM = 0,
    LI_RCELL_DEPTH_GATED_LSTM = 1,
    LI_RCELL_CLOCKWORK_RNN = 2,
    LI_RCELL_GRID_LSTM = 3,
    LI_RCELL_ATTENTION_DECODER = 4,
    LI_RCELL_KIND_COUNT = 5
};

#define LI_RCELL_MAX_STATES 4
#define LI_RCELL_MAX_MODULES 64 /* clockwork modules */

/* A compiled cell. Every pointer is owned by Python and outlives the cell. */
typedef struct {
    int kind;        /* enum li_rcell_kind */
    int input_size;  /* I */
    int hidden_size; /* H */
    int layers;      /* L (1 for the clockwork RNN) */
    int modules;     /* clockwork: module count (H divisible by it); else 0 */
    float eps;       /* layer norm epsilon (layer-normalised LSTM) */
    int n_arrays;
    const void *const *array;   /* the kind's arrays, in its layout's order */
    const int64_t *array_len;   /* elements of each (float32, or int32 where the layout says) */
    int weight_format; /* enum li_weight_format of the packed matrices (0: float32); last,
                        * so initialisers that predate it read float32 */
} li_rcell;

/* The data of one block of T steps. State s is state[s], laid out as the kind says (read as
 * the state before step 0, updated in place to the state after step T-1). */
typedef struct {
    int T, B;
    const float *x;  /* [T][B] rows of I floats, row r at x + r*ldx */
    int ldx;
    float *y;        /* step t, row b at y + t*y_ts + b*y_bs; NULL: not written */
    ptrdiff_t y_ts, y_bs;
    float *state[LI_RCELL_MAX_STATES];
    float *scratch;  /* li_rcell_scratch_floats(cell, T, B) floats */
    const void *memory; /* attention decoder: its li_attention_memory; NULL for the others */
    void *prep;      /* set by li_rcell_run: room for prepared rows (li_rcell_prep_floats) */
} li_rcell_io;

/* 0 when the cell's sizes are in range and every array has the length its layout needs;
 * else a negative code (nothing may run). */
int li_rcell_check(const li_rcell *cell);
/* Floats of state s (0 <= s < LI_RCELL_MAX_STATES) for B rows; 0: the kind has no state s. */
size_t li_rcell_state_floats(const li_rcell *cell, int s, int B);
/* Floats of scratch li_rcell_run needs for T steps of B rows. */
size_t li_rcell_scratch_floats(const li_rcell *cell, int T, int B);
/* Output floats per step and row (H, or the kind's own: H + Dm for the attention decoder). */
int li_rcell_output_size(const li_rcell *cell);
/* Run the block. Returns 0, or a negative value for invalid arguments (nothing written). */
int li_rcell_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                 const li_rcell_io *io);

/* ---- shared by the kinds (cells_common.c) ----------------------------------------------- */
/* Elements of a packed matrix's array in the cell's weight format (floats for float32,
 * bytes for bfloat16 and int8), G groups of Hp padded rows over K inputs; -1 if the format
 * is unknown. */
int64_t li_rcell_packed_len(const li_rcell *cell, int G, int Hp, int K);
/* Floats of room for the prepared activation rows of any product of the cell (0 for
 * float32 weights); li_rcell_scratch_floats includes them, io->prep points at them. */
size_t li_rcell_prep_floats(const li_rcell *cell);
/* out = bias + W x over blocks [blk0, blk1) as li_matvec_packed_fn says (bias gate stride
 * Hp), W: G groups of Hp padded rows over K inputs packed in the cell's weight format; prep:
 * li_rcell_prep_floats floats (unused for float32). */
void li_rcell_matvec(const li_kernels *kern, const li_rcell *cell, const void *packed, int K,
                     int G, int Hp, int blk0, int blk1, const float *x, int ldx, int rows,
                     const float *bias, float *out, int ogs, int ldo, void *prep);
/* Rows of a block whose input projections are computed together (one sgemm or packed call):
 * about 256 KB of projections, at least one step. */
int li_rcell_chunk_steps(int T, int B, int proj_floats_per_row);
/* An input projection: out[r][g*Hp + u] = bias[g*Hp + u] + sum_k x[r*ldx + k] W[g][u][k]
 * for r < rows, every padded unit (padding lanes get bias + 0). w_pad: [G*Hp][K] fp32
 * (padding rows zero) for sgemm; w_packed: pack_gate_blocks(W, G) for the kernel table;
 * bias_pad: [G*Hp] or NULL. out rows are G*Hp floats apart. The packed matvec where the
 * recurrent driver measured it faster (weights within L2, or few rows), else one sgemm.
 * (Quantized weights: the same choice, by their float32 size.) */
void li_rcell_project(const li_kernels *kern, li_sgemm_fn sgemm, const li_rcell *cell,
                      const float *w_pad, const void *w_packed, int G, int Hp, int K,
                      const float *bias_pad, const float *x, int ldx, int rows, float *out,
                      void *prep);
/* Whether li_rcell_project takes the packed matvec for these sizes (else sgemm); a kind
 * whose projection has more groups than one packed call takes (4) asks before splitting it. */
int li_rcell_projects_packed(int G, int Hp, int K, int rows);
/* A recurrent product, the same layout without bias, over rows of h (ldh apart): the packed
 * matvec up to 1024 rows (weights read once per row tile), sgemm on r_pad beyond. */
void li_rcell_recurrent(const li_kernels *kern, li_sgemm_fn sgemm, const li_rcell *cell,
                        const float *r_pad, const void *r_packed, int G, int Hp, int K,
                        const float *h, int ldh, int rows, float *out, void *prep);
/* The address `elements` elements of the cell's packed format past base (floats for float32,
 * bytes otherwise): where the next of several packed matrices in one array starts. */
static inline const void *li_rcell_packed_at(const li_rcell *cell, const void *base,
                                             int64_t elements) {
    return (const char *)base + elements * (cell->weight_format == LI_WEIGHTS_F32 ? 4 : 1);
}
/* Units of H rounded up to the packed block. */
static inline int li_rcell_padded(int H) { return (H + LI_BLOCK - 1) / LI_BLOCK * LI_BLOCK; }

/* The kinds (one file each). */
int li_layer_norm_lstm_check(const li_rcell *cell);
size_t li_layer_norm_lstm_scratch(const li_rcell *cell, int T, int B);
size_t li_layer_norm_lstm_state(const li_rcell *cell, int s, int B);
int li_layer_norm_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                           const li_rcell_io *io);
int li_clockwork_rnn_check(const li_rcell *cell);
size_t li_clockwork_rnn_scratch(const li_rcell *cell, int T, int B);
size_t li_clockwork_rnn_state(const li_rcell *cell, int s, int B);
int li_clockwork_rnn_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                         const li_rcell_io *io);
int li_depth_gated_lstm_check(const li_rcell *cell);
size_t li_depth_gated_lstm_scratch(const li_rcell *cell, int T, int B);
size_t li_depth_gated_lstm_state(const li_rcell *cell, int s, int B);
int li_depth_gated_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                            const li_rcell_io *io);
int li_grid_lstm_check(const li_rcell *cell);
size_t li_grid_lstm_scratch(const li_rcell *cell, int T, int B);
size_t li_grid_lstm_state(const li_rcell *cell, int s, int B);
int li_grid_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                     const li_rcell_io *io);
int li_attention_decoder_check(const li_rcell *cell);
size_t li_attention_decoder_scratch(const li_rcell *cell, int T, int B);
size_t li_attention_decoder_state(const li_rcell *cell, int s, int B);
int li_attention_decoder_output(const li_rcell *cell);
int li_attention_decoder_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                             const li_rcell_io *io);

#ifdef __cplusplus
}
#endif
#endif /* LI_CELLS_H */
