/*
 * lstm_infer C kernels: the one header shared by every translation unit and by the Cython
 * wrapper. Plain C99, no Python.h. All matrices are row-major float32.
 *
 * Internal gate orders (the importers convert to these once, at load time):
 *   LSTM: i, f, g (the "cell" candidate), o      GRU: z, r, n      RNN: one gate.
 *
 * Packed weight layout ("gate-interleaved blocks"): a matrix of G gates x H units x K inputs
 * is stored as [nblk][K][G][LI_BLOCK] with nblk = ceil(H / LI_BLOCK), zero padded. One pass
 * over a block reads every gate of LI_BLOCK units for every input, so a kernel can compute the
 * pre-activations of a whole block of units in registers and hand them straight to the
 * pointwise cell update while they are still in L1.
 */
#ifndef LI_KERNELS_H
#define LI_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LI_BLOCK 16 /* units per packed block: one zmm, two ymm, sixteen scalars */

enum li_cell_kind { LI_CELL_RNN = 0, LI_CELL_LSTM = 1, LI_CELL_GRU = 2 };

/* Element type of the packed weights. Quantized weights are widened to fp32 in registers;
 * int8 carries one fp32 scale per output row (gate x unit), laid out [G][Hp] like biases. */
enum li_weight_format {
    LI_WEIGHTS_F32 = 0,
    LI_WEIGHTS_BF16 = 1,
    LI_WEIGHTS_I8 = 2,
    LI_WEIGHT_FORMAT_COUNT = 3
};

/* The ONNX activation functions, in the order of lstm_infer/_spec.py ACTIVATIONS. */
enum li_activation_kind {
    LI_ACT_RELU = 0,
    LI_ACT_TANH = 1,
    LI_ACT_SIGMOID = 2,
    LI_ACT_AFFINE = 3,
    LI_ACT_LEAKY_RELU = 4,
    LI_ACT_THRESHOLDED_RELU = 5,
    LI_ACT_SCALED_TANH = 6,
    LI_ACT_HARD_SIGMOID = 7,
    LI_ACT_ELU = 8,
    LI_ACT_SOFTSIGN = 9,
    LI_ACT_SOFTPLUS = 10,
    LI_ACT_COUNT = 11
};

typedef struct {
    int kind;    /* enum li_activation_kind */
    float alpha; /* ONNX activation_alpha (already defaulted by the importer) */
    float beta;  /* ONNX activation_beta */
} li_activation;

/* One direction of one recurrent layer, compiled: every pointer is owned by Python (numpy
 * arrays kept alive by the plan) and stays valid while the plan lives. */
typedef struct {
    int cell;          /* enum li_cell_kind */
    int gates;         /* G: RNN 1, LSTM 4, GRU 3 */
    int input_size;    /* I */
    int hidden_size;   /* H: units of the cell state / gates */
    int state_size;    /* Hr: size of the h fed back and emitted (H, or proj_size) */
    int hidden_padded; /* Hp: H rounded up to LI_BLOCK */

    int weight_format;      /* enum li_weight_format of every *_packed matrix */
    const float *w;         /* [G*H][I]   input weights, fp32 (whole-sequence sgemm) */
    const void *w_packed;   /* packed G x H x I  (streaming input projection) */
    const float *r;         /* [G*H][Hr]  recurrent weights, fp32 (large-batch sgemm) */
    const void *r_packed;   /* packed over Hr: all G gates, or z,r only for GRU */
    const void *rn_packed;  /* GRU: packed n gate (1 x H x Hr); NULL otherwise */
    const float *w_scale;   /* int8 only: [G][Hp] per-row scales of w_packed */
    const float *r_scale;   /* int8 only: [G'][Hp] of r_packed (G' = 2 for GRU) */
    const float *rn_scale;  /* int8 only: [Hp] of rn_packed */
    const float *proj_scale; /* int8 only: [Hrp] of proj_packed */
    const float *bias;      /* [G*H] added to the input projection (Wb + Rb folded) */
    const float *bias_packed; /* [G][Hp] the same, padded, for the streaming projection */
    const float *bias_rn;   /* GRU with linear_before_reset: [H] recurrent n bias; or NULL */
    const float *peephole;  /* LSTM: [3][H] for i, f, o; or NULL */
    const float *proj;      /* LSTM projection [Hr][H]; NULL without projection */
    const void *proj_packed; /* packed 1 x Hr x H */
    /* First layer of a model with a token embedding: the input projection of every token,
     * W emb[v] + bias, precomputed as [vocab][G][Hp] (NULL otherwise). A step then copies
     * one row instead of multiplying by W. */
    const float *token_table;
    int vocab_size;

    float clip;              /* |pre-activation| bound; 0 or negative: no clip */
    int input_forget;        /* LSTM: f = 1 - i */
    int linear_before_reset; /* GRU */
    int default_activations; /* 1: sigmoid/tanh(/relu for RNN) -> ISA fast path */
    li_activation act[3];    /* f, g, h (RNN uses f; GRU f, g) */
} li_cell;

/* ---- the per-ISA kernel table ---------------------------------------------------------- */

/* out[b][g*ogs + u] = (bias ? bias[g*bgs + u] : 0)
 *                    + (scale ? scale[g*bgs + u] : 1) * sum_k x[b*ldx + k] * W[g][u][k]
 * for the units of blocks [blk0, blk1), rows b in [0, rows). Stores whole blocks (padding
 * lanes included), so ogs must be >= the padded unit count. One entry per weight format;
 * only the int8 one reads scale. */
typedef void (*li_matvec_packed_fn)(const void *packed, int K, int G, int blk0, int blk1,
                                    const float *x, int ldx, int rows, const float *bias,
                                    const float *scale, int bgs, float *out, int ogs, int ldo);

/* Pointwise cell updates on units [u0, u1) of one batch row, with default activations.
 * xp: input projection incl. bias, gate stride xgs. rec: recurrent product, gate stride rgs. */
typedef void (*li_rnn_pointwise_fn)(const li_cell *cell, int u0, int u1, const float *xp,
                                    const float *rec, float *h_out);
typedef void (*li_lstm_pointwise_fn)(const li_cell *cell, int u0, int u1, const float *xp,
                                     int xgs, const float *rec, int rgs, float *c,
                                     float *h_out);
/* GRU phase 1: z and r activations into zr[0:H] and zr[H:2H]; rh = r * h_prev. */
typedef void (*li_gru_gates_fn)(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                                const float *rec, int rgs, const float *h_prev, float *zr,
                                float *rh);
/* GRU phase 2: rec_n is R_n h (linear_before_reset) or R_n (r * h); writes h_out. */
typedef void (*li_gru_output_fn)(const li_cell *cell, int u0, int u1, const float *xp_n,
                                 const float *rec_n, const float *zr, const float *h_prev,
                                 float *h_out);
/* Vectorised activation over an array (exposed for the accuracy tests). */
typedef void (*li_activation_array_fn)(int kind, const float *x, float *y, size_t n);

typedef struct {
    const char *name;
    li_matvec_packed_fn matvec_packed[LI_WEIGHT_FORMAT_COUNT]; /* by li_weight_format */
    li_rnn_pointwise_fn rnn_pointwise;
    li_lstm_pointwise_fn lstm_pointwise;
    li_gru_gates_fn gru_gates;
    li_gru_output_fn gru_output;
    li_activation_array_fn activation_array; /* kinds: LI_ACT_SIGMOID, LI_ACT_TANH */
} li_kernels;

extern const li_kernels li_kernels_scalar;
#ifdef LI_HAVE_X86_KERNELS
extern const li_kernels li_kernels_avx2;
extern const li_kernels li_kernels_avx512;
#endif

/* Scalar pointwise updates for arbitrary ONNX activations (used whenever a cell's
 * activations are not the defaults, on every ISA). Same contracts as the table entries. */
void li_rnn_pointwise_generic(const li_cell *cell, int u0, int u1, const float *xp,
                              const float *rec, float *h_out);
void li_lstm_pointwise_generic(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                               const float *rec, int rgs, float *c, float *h_out);
void li_gru_gates_generic(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                          const float *rec, int rgs, const float *h_prev, float *zr, float *rh);
void li_gru_output_generic(const li_cell *cell, int u0, int u1, const float *xp_n,
                           const float *rec_n, const float *zr, const float *h_prev,
                           float *h_out);
float li_activation_scalar(const li_activation *act, float x);

/* ---- CPU dispatch (cpu_dispatch.c) ------------------------------------------------------ */

/* Bit set of usable ISAs: bit 0 scalar (always), bit 1 avx2+fma, bit 2 avx512. Checks CPUID
 * and that the OS saves the registers (XGETBV). */
enum { LI_ISA_SCALAR = 0, LI_ISA_AVX2 = 1, LI_ISA_AVX512 = 2, LI_ISA_COUNT = 3 };
unsigned li_usable_isas(void);
const li_kernels *li_kernels_for(int isa); /* NULL when not compiled in */

/* ---- drivers (recurrent_driver.c) -------------------------------------------------------- */

/* Fortran sgemm, as scipy.linalg.cython_blas exports it. */
typedef void (*li_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                            int *ldc);

/* Scratch floats li_run_direction needs for a batch of B rows. */
size_t li_direction_scratch_floats(const li_cell *cell, int T, int B);

/*
 * Run one direction of one layer over a whole sequence.
 *   x:        [T][B] rows of I floats, row stride ldx (time-major); or NULL with tokens
 *   tokens:   [T][B] token ids looked up in cell->token_table instead of x; or NULL
 *   lens:     [B] valid lengths (each in [0, T]) or NULL for all T
 *   reverse:  process each row from its own last valid step back to 0
 *   h, c:     [B][Hr], [B][H] initial state in, final state out (c NULL for RNN/GRU)
 *   y:        output for (t, b) at y + t*y_ts + b*y_bs, Hr floats; NULL to skip. Entries of
 *             steps past a row's length are not written (the caller zeroes them).
 *   scratch:  li_direction_scratch_floats(cell, T, B) floats
 * Returns 0, or a negative value for invalid arguments (-4: a token id outside the table).
 */
int li_run_direction(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm, int T,
                     int B, const float *x, int ldx, const int64_t *tokens, const int *lens,
                     int reverse, float *h, float *c, float *y, ptrdiff_t y_ts, ptrdiff_t y_bs,
                     float *scratch);

/* Scratch floats li_stack_step needs. */
size_t li_stack_step_scratch_floats(const li_cell *const *cells, int n_layers, int B);

/*
 * One timestep through a stack of unidirectional layers, batch B (the streaming path).
 *   x:  [B][I0] input rows (contiguous); or NULL with tokens
 *   tokens: [B] token ids for cells[0]->token_table; or NULL
 *   h[l], c[l]: per layer state [B][Hr_l], [B][H_l] (c[l] NULL for RNN/GRU), updated in place
 *   y:  [B][Hr_last] output of the last layer
 * No allocation; weights are read once per step (packed).
 */
int li_stack_step(const li_cell *const *cells, int n_layers, const li_kernels *kern, int B,
                  const float *x, const int64_t *tokens, float *const *h, float *const *c,
                  float *y, float *scratch);

#ifdef __cplusplus
}
#endif
#endif /* LI_KERNELS_H */
