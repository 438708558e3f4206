/*
 * lstm_infer C kernels: the one header shared by every translation unit and by the Cython
 * wrapper. Plain C99, no Python.h. All matrices are row-major float32.
 *
 * Internal gate orders (the importers convert to these once, at load time):
 *   LSTM: i, f, g (the "cell" candidate), o      GRU: z, r, n      RNN: one gate.
 *
 * Packed weight layout ("gate-interleaved blocks"): a matrix of G gates x H units x K inputs
 * is stored as [nblk][K / P][G][LI_BLOCK][P] with nblk = ceil(H / LI_BLOCK), zero padded in
 * units and inputs. P consecutive inputs of one unit sit together: P = 1 for float32, 2 for
 * bfloat16 and 4 for int8, the widths the dot-product instructions (VDPBF16PS, VPDPBUSD)
 * consume, so one vector load holds whole units x P inputs. One pass over a block
 * reads every gate of LI_BLOCK units for every input, so a kernel computes the
 * pre-activations of a whole block of units in registers and hands them straight to the
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

/* Element type of the packed weights. bfloat16 products accumulate in fp32 (widened weights,
 * or VDPBF16PS on activations split into two bfloat16 halves). int8 carries one fp32 scale
 * and one integer row sum per output row (gate x unit), laid out [G][Hp] like biases; its
 * activations are quantized per row and step (li_prepare_fn) and the dot products are exact
 * int32, so every ISA computes the same integers. */
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
    const int32_t *w_rowsum;    /* int8 only: sum of each row's codes, laid out like w_scale */
    const int32_t *r_rowsum;    /* int8 only: like r_scale */
    const int32_t *rn_rowsum;   /* int8 only: like rn_scale */
    const int32_t *proj_rowsum; /* int8 only: like proj_scale */
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

/* out[b][g*ogs + u] = (bias ? bias[g*bgs + u] : 0) + sum_k x[b*ldx + k] * W[g][u][k]
 * for the units of blocks [blk0, blk1), rows b in [0, rows), float32 weights. Stores whole
 * blocks (padding lanes included), so ogs must be >= the padded unit count. */
typedef void (*li_matvec_packed_fn)(const void *packed, int K, int G, int blk0, int blk1,
                                    const float *x, int ldx, int rows, const float *bias,
                                    int bgs, float *out, int ogs, int ldo);

/* A batch of activation rows as the product kernels read them: always the fp32 rows, plus,
 * when the table's prepare function for the weight format is not NULL, its output. */
typedef struct {
    const float *x;     /* [rows][ldx] */
    int ldx;
    const void *q;      /* prepared rows, ldq bytes apart: int8 codes (K rounded up to 4,
                         * zero padded) or bfloat16 high halves then low halves (K rounded
                         * up to 2 each) */
    int ldq;
    const float *scale; /* int8: [rows] the scale of each row's codes */
} li_rows;

/* Prepare `rows` rows of K activations for a format's product (into q, ldq bytes apart, and
 * scale). int8: code = round-to-nearest-even(x * 127 / max|row|), scale = max|row| / 127 (a
 * row holding NaN or Inf gets scale NaN, so its products are NaN). */
typedef void (*li_prepare_fn)(const float *x, int ldx, int rows, int K, void *q, int ldq,
                              float *scale);
/* Bytes between prepared rows of K activations, any format: room for 4 bytes per input,
 * rounded up to a cache line. */
#define LI_PREPARED_ROW_BYTES(K) ((size_t)(((K) + 15) / 16) * 64)

/* Like li_matvec_packed_fn for bfloat16 and int8 weights, activations in x. int8:
 * out = bias + scale[row] * x->scale[b] * sum_k code_w * code_x (exact in int32; rowsum lets
 * unsigned-times-signed instructions remove their offset). */
typedef void (*li_product_fn)(const void *packed, int K, int G, int blk0, int blk1,
                              const li_rows *x, int rows, const float *bias, const float *scale,
                              const int32_t *rowsum, int bgs, float *out, int ogs, int ldo);

/* Whole-sequence input projection for bfloat16 weights, every unit of every block:
 * out[r][g*ogs + u] = bias[g*bgs + u] + sum_k x[r*ldx + k] W[g][u][k], rows r in [0, rows),
 * whole blocks stored. Returns 0, or nonzero (nothing usable written) so the caller falls
 * back to sgemm. */
typedef int (*li_project_fn)(const void *packed, int K, int G, int nblk, const float *x,
                             int ldx, int rows, const float *bias, int bgs, float *out,
                             int ogs, int ldo);

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
/* Softmax (log_softmax = 0) or log-softmax (log_softmax = 1) of each of `rows` rows of n floats,
 * in place; row r starts at y + r * ld:
 *   m = max_j y_j;  s = sum_j exp(y_j - m);  softmax_j = exp(y_j - m) / s;
 *   log_softmax_j = y_j - m - log(s).
 * Three passes over a row (max, exp-sum, write), no scratch. A NaN anywhere in a row makes
 * that whole row NaN, as does +inf (inf - inf), like numpy's and PyTorch's formulas. */
typedef void (*li_softmax_rows_fn)(float *y, size_t rows, size_t n, size_t ld, int log_softmax);
/* Direct convolution of one group, stride 1 along the last spatial dim, as an indirect GEMM
 * (no im2col copy): for output row oh the K = C*KH*KW input rows it reads are listed as
 * pointers (into `rows`, K entries of caller scratch) and the packed weights multiply them in
 * register tiles of LI_CONV_MR output channels by a few vectors of positions:
 *   y[m][oh*OW + ow] = bias[m] + sum_{c,kh,kw} w[m][c][kh][kw] * x[c][oh*sh + kh*dh][ow + kw*dw]
 * with k = (c*KH + kh)*KW + kw summed in increasing order (one fma per term).
 * x: the padded input of the group, element [c][r][i] at x[c*xcs + r*xrs + i]; every index
 * the formula reaches must be inside it. wpack: [ceil(M/MR)][K][MR], w[m][k] at
 * [m / MR][k][m % MR], zero past M. bias: M floats or NULL. y: M rows ldy floats apart.
 * relu: y = max(y, 0) as it is stored (NaN stays NaN). A 1-D convolution is KH = OH = 1. */
#define LI_CONV_MR 6
typedef void (*li_conv2d_fn)(const float *x, size_t xcs, size_t xrs, int C, int KH, int KW,
                             int sh, int dh, int dw, int OH, int OW, const float *wpack, int M,
                             const float *bias, float *y, size_t ldy, int relu,
                             const float **rows);
/* Max pooling over 2 x 2 windows at stride 2 (the CNN front ends' MaxPool2d(2)):
 *   y[(p*OH + oh)*OW + ow] = max_{i,j < 2} x[p*xps + (2*oh + i)*xrs + 2*ow + j]
 * for p < planes; a NaN anywhere in a window gives NaN, as np.max does. Every index the
 * formula reaches must be inside x; y is contiguous and does not overlap x. */
typedef void (*li_max_pool_2x2_fn)(const float *x, size_t xps, size_t xrs, int planes, int OH,
                                   int OW, float *y);
/* Layer normalisation of contiguous rows (graph LayerNormalization, both paths): for
 * r < rows, with m and v the mean and population variance of x[r*n .. r*n + n),
 *   y[r*n + j] = (x[r*n + j] - m) / sqrt(v + eps) * scale[j] + bias[j]
 * (scale / bias NULL: 1 / 0). Two passes over a row for the statistics (the mean, then the
 * squares about it), so a large common offset costs no precision. y may be x. */
typedef void (*li_layernorm_rows_fn)(const float *x, float *y, size_t rows, size_t n,
                                     const float *scale, const float *bias, float eps);
/* Additive attention energies (the decoders' scores, one row of the batch): for j < n,
 *   e[j] = sum_{i < A} v[i] * tanh(q[i] + k[j*ldk + i])
 * (q NULL: 0). One pass over each key row: the sum q + k and its tanh stay in registers
 * instead of two S x A arrays written and read back. */
typedef void (*li_tanh_energies_fn)(const float *q, const float *k, size_t ldk, size_t n,
                                    size_t A, const float *v, float *e);

typedef struct {
    const char *name;
    li_matvec_packed_fn matvec_f32;
    li_product_fn matvec_bf16;
    li_prepare_fn prepare_bf16; /* NULL: matvec_bf16 reads the fp32 rows */
    li_product_fn matvec_i8;
    li_prepare_fn prepare_i8;
    li_project_fn project_bf16; /* NULL: sgemm over the dequantized fp32 weights */
    li_rnn_pointwise_fn rnn_pointwise;
    li_lstm_pointwise_fn lstm_pointwise;
    li_gru_gates_fn gru_gates;
    li_gru_output_fn gru_output;
    li_activation_array_fn activation_array; /* kinds: LI_ACT_SIGMOID, LI_ACT_TANH */
    li_softmax_rows_fn softmax_rows;         /* dense heads' softmax / log-softmax */
    li_conv2d_fn conv2d;                     /* graph Conv, stride 1 along the last dim */
    /* bfloat16 products on activations rounded to one bfloat16 (one dot instruction per
     * weight pair): whole sequences at batch >= LI_BF16_ROUNDED_MIN_ROWS use them for the
     * input projection and the recurrence. NULL on tables without a bf16 dot product, which
     * keep matvec_bf16 (fp32-accurate activations) everywhere. */
    li_product_fn matvec_bf16_rounded;
    li_prepare_fn prepare_bf16_rounded;
    /* Rows of one register tile of matvec_f32 at G gates, [G] for G = 1..4: how many rows
     * share each weight load. The whole-sequence input projection goes through the packed
     * matvec only where that reuse is high enough to beat sgemm (recurrent_driver.c). */
    unsigned char matvec_f32_rows[5];
    li_max_pool_2x2_fn max_pool_2x2; /* graph MaxPool 2 x 2 / stride 2 */
    li_layernorm_rows_fn layernorm_rows; /* graph LayerNormalization */
    li_tanh_energies_fn tanh_energies;   /* attention decoders' additive scores */
} li_kernels;

/* Batch rows from which a whole sequence of bf16 weights runs on the rounded products: the
 * work is compute-bound there (one row streams weights from cache and is bandwidth-bound;
 * the split product keeps it fp32-accurate). The rounding adds ~2^-9 relative error per
 * activation, the size of the weights' own rounding (oneDNN and OpenVINO round activations
 * the same way). */
#define LI_BF16_ROUNDED_MIN_ROWS 8

extern const li_kernels li_kernels_scalar;
/* Scalar references of the rounded bf16 product (the C tests' oracle; the scalar table keeps
 * fp32 activations): prepare rounds each activation to nearest-even bf16, row layout as
 * li_prepare_bf16_rounded_avx512bf16; the product multiplies those by the bf16 weights. */
void li_prepare_bf16_rounded_scalar(const float *x, int ldx, int rows, int K, void *q, int ldq,
                                    float *scale);
void li_matvec_bf16_rounded_scalar(const void *packed, int K, int G, int blk0, int blk1,
                                   const li_rows *x, int rows, const float *bias,
                                   const float *scale, const int32_t *rowsum, int bgs,
                                   float *out, int ogs, int ldo);
#ifdef LI_HAVE_X86_KERNELS
extern const li_kernels li_kernels_avx2;
extern const li_kernels li_kernels_avx512;
#endif

/* Scalar pointwise updates for arbitrary ONNX activations: the exact reference of every
 * cell update (libm per element). Same contracts as the table entries. */
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

/* The same updates at array speed (cell_update_mixed.c): what the driver runs whenever a
 * cell's activations are not the defaults, on every ISA. Sigmoid / tanh through the table's
 * activation_array, the other kinds in vectorisable loops; otherwise as the generic ones. */
void li_rnn_pointwise_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                            const float *xp, const float *rec, float *h_out);
void li_lstm_pointwise_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                             const float *xp, int xgs, const float *rec, int rgs, float *c,
                             float *h_out);
void li_gru_gates_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                        const float *xp, int xgs, const float *rec, int rgs,
                        const float *h_prev, float *zr, float *rh);
void li_gru_output_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                         const float *xp_n, const float *rec_n, const float *zr,
                         const float *h_prev, float *h_out);

/* ---- CPU dispatch (cpu_dispatch.c) ------------------------------------------------------ */

/* Kernel tables, lowest first; each implies the ones before it on real CPUs:
 *   avx2        AVX2 + FMA                      avx2vnni    + AVX-VNNI (int8 dot products)
 *   avx512      AVX-512 F/DQ/BW/VL              avx512vnni  + AVX512-VNNI
 *   avx512bf16  + AVX512-VNNI + AVX512-BF16 (bfloat16 dot products)
 *   amx         avx512vnni + AMX tiles for batched whole sequences: bf16 input
 *               projections (split activations), the rounded bf16 products and, with
 *               AMX-INT8, the int8 products (needs AVX512-BF16 too; the OS permission for
 *               tile data is requested on first use, and without it the products fall back
 *               to the vector kernels and the projection to sgemm)
 * The derived tables are their base table with the quantized products replaced. */
enum {
    LI_ISA_SCALAR = 0,
    LI_ISA_AVX2 = 1,
    LI_ISA_AVX2VNNI = 2,
    LI_ISA_AVX512 = 3,
    LI_ISA_AVX512VNNI = 4,
    LI_ISA_AVX512BF16 = 5,
    LI_ISA_AMX = 6,
    LI_ISA_COUNT = 7
};
/* Bit set (1 << LI_ISA_*) of the tables this CPU and OS can run: CPUID, and XGETBV for the
 * register state. */
unsigned li_usable_isas(void);
const li_kernels *li_kernels_for(int isa); /* NULL when not compiled in */
/* The CPU's vendor (CPUID leaf 0), for choices that measured differently per family. */
enum { LI_VENDOR_OTHER = 0, LI_VENDOR_INTEL = 1, LI_VENDOR_AMD = 2 };
int li_cpu_vendor(void);

#ifdef LI_HAVE_X86_KERNELS
/* The replacement products of the dot-product tables (kernels_*vnni.c, kernels_avx512bf16.c). */
void li_matvec_i8_avx2vnni(const void *packed, int K, int G, int blk0, int blk1,
                           const li_rows *x, int rows, const float *bias, const float *scale,
                           const int32_t *rowsum, int bgs, float *out, int ogs, int ldo);
void li_matvec_i8_avx512vnni(const void *packed, int K, int G, int blk0, int blk1,
                             const li_rows *x, int rows, const float *bias, const float *scale,
                             const int32_t *rowsum, int bgs, float *out, int ogs, int ldo);
void li_matvec_bf16_avx512bf16(const void *packed, int K, int G, int blk0, int blk1,
                               const li_rows *x, int rows, const float *bias,
                               const float *scale, const int32_t *rowsum, int bgs, float *out,
                               int ogs, int ldo);
void li_prepare_bf16_avx512bf16(const float *x, int ldx, int rows, int K, void *q, int ldq,
                                float *scale);
void li_matvec_bf16_rounded_avx512bf16(const void *packed, int K, int G, int blk0, int blk1,
                                       const li_rows *x, int rows, const float *bias,
                                       const float *scale, const int32_t *rowsum, int bgs,
                                       float *out, int ogs, int ldo);
void li_prepare_bf16_rounded_avx512bf16(const float *x, int ldx, int rows, int K, void *q,
                                        int ldq, float *scale);
int li_project_bf16_amx(const void *packed, int K, int G, int nblk, const float *x, int ldx,
                        int rows, const float *bias, int bgs, float *out, int ogs, int ldo);
/* Tile products (kernels_amx.c): the rounded bf16 and the int8 product on TDPBF16PS /
 * TDPBSSD from AMX_MIN_ROWS rows, the vector products (avx512bf16 rounded, avx512vnni)
 * below that or when the OS refuses tile state. The int8 one needs AMX-INT8
 * (the amx table takes it only then) and gives the vector product's floats bit for bit. */
void li_matvec_bf16_rounded_amx(const void *packed, int K, int G, int blk0, int blk1,
                                const li_rows *x, int rows, const float *bias,
                                const float *scale, const int32_t *rowsum, int bgs, float *out,
                                int ogs, int ldo);
void li_matvec_i8_amx(const void *packed, int K, int G, int blk0, int blk1, const li_rows *x,
                      int rows, const float *bias, const float *scale, const int32_t *rowsum,
                      int bgs, float *out, int ogs, int ldo);
#endif

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

/* Unit split: several threads (parts) run one layer-direction together, each part the units
 * of its own share of the blocks, stepping through time in lockstep (one barrier per step,
 * two for a GRU with linear_before_reset = 0). Zero the struct and set parts before the
 * parts start; it is shared by all of them. */
typedef struct {
    int parts;      /* number of parts that call li_run_direction_part */
    int arrived;    /* barrier: parts arrived in the current generation */
    int generation; /* barrier: incremented each time every part has arrived */
} li_split_sync;

/* Floats of the buffer all parts share, and of each part's own scratch. */
size_t li_unit_split_shared_floats(const li_cell *cell, int T, int B, int has_tokens,
                                   int has_lens);
size_t li_unit_split_part_floats(const li_cell *cell, int B);

/*
 * Part `part` of li_run_direction split by units: the same arguments and results, with
 * sync, shared (li_unit_split_shared_floats) the same for every part and scratch
 * (li_unit_split_part_floats) its own. Each part writes only its units of h, c and y.
 * Every part must be running at the same time (each waits for the others every step). Cells
 * with a projection are not supported (-5). Invalid shared arguments make every part return
 * the same negative code before the first barrier.
 */
int li_run_direction_part(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                          int T, int B, const float *x, int ldx, const int64_t *tokens,
                          const int *lens, int reverse, float *h, float *c, float *y,
                          ptrdiff_t y_ts, ptrdiff_t y_bs, li_split_sync *sync, int part,
                          float *shared, float *scratch);

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

/* Scratch floats li_stack_step_rows needs for up to B rows. */
size_t li_stack_step_rows_scratch_floats(const li_cell *const *cells, int n_layers, int B);

/*
 * One timestep of li_stack_step for n of the `capacity` rows of a state slab (serving).
 *   rows:   [n] distinct row indices in [0, capacity) (-5 otherwise)
 *   x / tokens: [n][I0] inputs / [n] token ids, in the order of rows
 *   h_slab[l], c_slab[l]: per layer [capacity][Hr_l], [capacity][H_l] (c NULL for RNN/GRU)
 *   h_rows, c_rows: [n_layers] pointer arrays the function fills (caller-owned, no data)
 *   y:      [n][Hr_last] output, in the order of rows
 *   scratch: li_stack_step_rows_scratch_floats(cells, n_layers, n) floats or more
 * The listed rows are gathered, stepped as one batch and scattered back; on any error no
 * row of the slab changes. No allocation.
 */
int li_stack_step_rows(const li_cell *const *cells, int n_layers, const li_kernels *kern,
                       int capacity, int n, const int32_t *rows, const float *x,
                       const int64_t *tokens, float *const *h_slab, float *const *c_slab,
                       float **h_rows, float **c_rows, float *y, float *scratch);

#ifdef __cplusplus
}
#endif
#endif /* LI_KERNELS_H */
