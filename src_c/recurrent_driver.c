/*
 * Drivers: the time loop of one layer-direction over a whole sequence, and one timestep of a
 * stack of layers (streaming). Portable C, no -m flags: all arithmetic goes through the
 * kernel table (or BLAS sgemm), so this file is compiled once for every ISA.
 *
 * Whole sequence: the input projection W x + b is computed for every timestep and batch row
 * at once (the packed matvec over chunks of rows, or one sgemm for large input matrices; see
 * xproj_packed); then each step computes R h with the packed matvec, fused block by block
 * with the pointwise update when the batch is small (block still in L1), every block first
 * at larger batches, or as one sgemm over the batch when it is large enough for BLAS to win.
 * Quantized weights project on their own products (project_prepared), and batched bf16
 * sequences swap in the rounded products (sequence_kernels).
 *
 * Why one file of ~800 lines: the three drivers (li_run_direction, its unit split, and
 * li_stack_step) share ~20 static helpers (step buffers, the product switch, the pointwise
 * row loops, one recurrent step, the input projections); splitting them apart means an
 * internal header exposing all of those, planned as recurrent_step.c + unit_split.c.
 */
#include <sched.h>
#include <string.h>

#include "li_kernels.h"

/* Batches up to this size use the packed matvec for R h; larger ones use sgemm. */
#define LI_PACKED_MAX_ROWS 1024
/* Batches below this size fuse each block's pointwise update with its matvec (see
 * recurrent_step); larger ones multiply every block first. */
#define LI_FUSED_MAX_ROWS 7
/* Input weights up to this size use the packed matvec for the input projection (see
 * xproj_packed), in chunks of rows whose inputs total about LI_XPROJ_CHUNK_FLOATS. */
#ifndef LI_XPROJ_PACKED_MAX_BYTES
#define LI_XPROJ_PACKED_MAX_BYTES ((size_t)1 << 20)
#endif
#define LI_XPROJ_CHUNK_FLOATS 12288
/* Projections of at most this many rows in all (short sequences at batch 1) use the packed
 * matvec whatever the size of W (see xproj_packed). */
#define LI_XPROJ_FEW_ROWS 48
/* Input projections computed ahead of the recurrence, per chunk of steps (li_run_direction). */
#ifndef LI_XPROJ_CHUNK_BYTES
#define LI_XPROJ_CHUNK_BYTES ((size_t)256 << 10)
#endif

static int round_up_block(int n) { return (n + LI_BLOCK - 1) / LI_BLOCK * LI_BLOCK; }

/* Per-step buffers, carved from the caller's scratch. Shapes in comments. */
typedef struct {
    float *rec;   /* [B][G*Hp] recurrent product R h (gate stride Hp or H) */
    float *rec_n; /* [B][Hp]   GRU: R_n h or R_n (r*h) */
    float *zr;    /* [B][2H]   GRU: z and r activations */
    float *rh;    /* [B][Hp]   GRU: r * h_prev */
    float *hfull; /* [B][Hp]   new unprojected h */
    float *hnext; /* [B][Hrp]  new state h (projected when the cell projects) */
    int *row_t;   /* [B]       time index of each row at this step, -1 when inactive */
    float *prep_scale; /* [B]  prepared activations (bf16 / int8 products): row scales */
    void *prep;        /* [B][prep_ld bytes] the prepared rows, 64-byte aligned */
    int prep_ld;
} step_buffers;

/* Widest input any product of the cell reads: I (layer input), Hr (h), Hp (r * h, and the
 * unprojected h read by the projection). */
static int widest_input(const li_cell *cell) {
    int k = cell->input_size > cell->state_size ? cell->input_size : cell->state_size;
    return k > cell->hidden_padded ? k : cell->hidden_padded;
}

static size_t step_buffer_floats(const li_cell *cell, int B) {
    const size_t Hp = (size_t)cell->hidden_padded, Hrp = (size_t)round_up_block(cell->state_size);
    const size_t G = (size_t)cell->gates, H = (size_t)cell->hidden_size;
    const size_t prep = (size_t)B * LI_PREPARED_ROW_BYTES(widest_input(cell)) / sizeof(float);
    return (size_t)B * (G * Hp + Hp + 2 * H + Hp + Hp + Hrp + 2) + prep + 64;
}

/* The first 64-byte boundary at or after p (the buffers above it keep 15 floats of slack). */
static void *align_64(float *p) {
    const size_t at = (size_t)p;
    return (void *)(p + ((64 - at % 64) % 64) / sizeof(float));
}

static step_buffers carve_step_buffers(const li_cell *cell, int B, float *scratch) {
    const size_t Hp = (size_t)cell->hidden_padded, Hrp = (size_t)round_up_block(cell->state_size);
    const size_t G = (size_t)cell->gates, H = (size_t)cell->hidden_size;
    step_buffers s;
    s.rec = scratch;
    s.rec_n = s.rec + B * G * Hp;
    s.zr = s.rec_n + B * Hp;
    s.rh = s.zr + B * 2 * H;
    s.hfull = s.rh + B * Hp;
    s.hnext = s.hfull + B * Hp;
    s.row_t = (int *)(s.hnext + B * Hrp);
    s.prep_scale = s.hnext + B * Hrp + B;
    s.prep_ld = (int)LI_PREPARED_ROW_BYTES(widest_input(cell));
    s.prep = align_64(s.prep_scale + B);
    return s;
}

/* The activation rows a product of this cell reads: prepared (quantized int8, split bf16)
 * into the step's buffer when the weight format's kernel wants them. */
static li_rows prepare_rows(const li_cell *cell, const li_kernels *kern, const float *x, int ldx,
                            int rows, int K, const step_buffers *s) {
    li_rows r = {x, ldx, 0, 0, 0};
    const li_prepare_fn prep = cell->weight_format == LI_WEIGHTS_I8     ? kern->prepare_i8
                               : cell->weight_format == LI_WEIGHTS_BF16 ? kern->prepare_bf16
                                                                        : 0;
    if (prep) {
        prep(x, ldx, rows, K, s->prep, s->prep_ld, s->prep_scale);
        r.q = s->prep;
        r.ldq = s->prep_ld;
        r.scale = s->prep_scale;
    }
    return r;
}

/* out = bias + W x over blocks [blk0, blk1) in the cell's weight format (see li_kernels.h). */
static void product(const li_cell *cell, const li_kernels *kern, const void *packed,
                    const float *scale, const int32_t *rowsum, int K, int G, int blk0, int blk1,
                    const li_rows *x, int rows, const float *bias, int bgs, float *out, int ogs,
                    int ldo) {
    switch (cell->weight_format) {
    case LI_WEIGHTS_I8:
        kern->matvec_i8(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs, out, ogs,
                        ldo);
        break;
    case LI_WEIGHTS_BF16:
        kern->matvec_bf16(packed, K, G, blk0, blk1, x, rows, bias, 0, 0, bgs, out, ogs, ldo);
        break;
    default:
        kern->matvec_f32(packed, K, G, blk0, blk1, x->x, x->ldx, rows, bias, bgs, out, ogs,
                         ldo);
    }
}

/* Where row b's input projection for this step lives. */
typedef struct {
    const float *base; /* xp of row 0 at time 0 */
    ptrdiff_t ts, bs;  /* time stride, row stride (floats) */
    int gs;            /* gate stride */
} xproj_view;

static inline const float *xp_row(const xproj_view *v, int t, int b) {
    return v->base + t * v->ts + b * v->bs;
}

static void sgemm_rows(li_sgemm_fn sgemm, const float *wt, int n_out, int K, const float *x,
                       int ldx, int rows, float *out, int ldo) {
    /* out[b][j] = sum_k W[j][k] x[b][k]: column-major out^T = W^T(op T) x^T. */
    char ta = 'T', tb = 'N';
    float one = 1.0f, zero = 0.0f;
    int m = n_out, n = rows, k = K, lda = K, ldb = ldx, ldc = ldo;
    sgemm(&ta, &tb, &m, &n, &k, &one, (float *)wt, &lda, (float *)x, &ldb, &zero, out, &ldc);
}

/* The pointwise updates (RNN, LSTM) of units [u0, u1) for every row active this step
 * (row_t >= 0): R h in s->rec (rows rrow floats apart, gate stride rgs), the new h into hout
 * (rows hout_ld apart), c updated in place. */
static void cell_rows(const li_cell *cell, const li_kernels *kern, int u0, int u1, int B,
                      const xproj_view *xv, const step_buffers *s, int rgs, int rrow, float *c,
                      float *hout, int hout_ld) {
    const int dflt = cell->default_activations, H = cell->hidden_size;
    for (int b = 0; b < B; ++b) {
        if (s->row_t[b] < 0) continue;
        const float *xp = xp_row(xv, s->row_t[b], b);
        const float *rec = s->rec + (size_t)b * rrow;
        float *hb = hout + (size_t)b * hout_ld;
        if (cell->cell == LI_CELL_LSTM) {
            if (dflt)
                kern->lstm_pointwise(cell, u0, u1, xp, xv->gs, rec, rgs, c + (size_t)b * H, hb);
            else
                li_lstm_pointwise_mixed(kern, cell, u0, u1, xp, xv->gs, rec, rgs,
                                        c + (size_t)b * H, hb);
        } else if (dflt) {
            kern->rnn_pointwise(cell, u0, u1, xp, rec, hb);
        } else {
            li_rnn_pointwise_mixed(kern, cell, u0, u1, xp, rec, hb);
        }
    }
}

/* GRU phase 1 over units [u0, u1) of the active rows: z, r into s->zr, r * h into rh (rows
 * Hp apart); h rows ldh apart, R_zr h in s->rec as in cell_rows. */
static void gru_gate_rows(const li_cell *cell, const li_kernels *kern, int u0, int u1, int B,
                          const xproj_view *xv, const step_buffers *s, int rgs, int rrow,
                          const float *h, int ldh, float *rh) {
    const int H = cell->hidden_size, Hp = cell->hidden_padded;
    const int dflt = cell->default_activations;
    for (int b = 0; b < B; ++b) {
        if (s->row_t[b] < 0) continue;
        const float *xp = xp_row(xv, s->row_t[b], b), *rec = s->rec + (size_t)b * rrow;
        const float *hb = h + (size_t)b * ldh;
        float *zr = s->zr + (size_t)b * 2 * H, *rhb = rh + (size_t)b * Hp;
        if (dflt)
            kern->gru_gates(cell, u0, u1, xp, xv->gs, rec, rgs, hb, zr, rhb);
        else
            li_gru_gates_mixed(kern, cell, u0, u1, xp, xv->gs, rec, rgs, hb, zr, rhb);
    }
}

/* GRU phase 2 over units [u0, u1) of the active rows: R_n product in s->rec_n (rows Hp
 * apart), the new h into hout (rows hout_ld apart). */
static void gru_output_rows(const li_cell *cell, const li_kernels *kern, int u0, int u1, int B,
                            const xproj_view *xv, const step_buffers *s, const float *h,
                            int ldh, float *hout, int hout_ld) {
    const int H = cell->hidden_size, Hp = cell->hidden_padded;
    const int dflt = cell->default_activations;
    for (int b = 0; b < B; ++b) {
        if (s->row_t[b] < 0) continue;
        const float *xp_n = xp_row(xv, s->row_t[b], b) + 2 * xv->gs;
        const float *rn = s->rec_n + (size_t)b * Hp, *zr = s->zr + (size_t)b * 2 * H;
        const float *hb = h + (size_t)b * ldh;
        float *ho = hout + (size_t)b * hout_ld;
        if (dflt)
            kern->gru_output(cell, u0, u1, xp_n, rn, zr, hb, ho);
        else
            li_gru_output_mixed(kern, cell, u0, u1, xp_n, rn, zr, hb, ho);
    }
}

/*
 * One timestep for rows whose row_t >= 0. Reads h (state, [B][Hr]) and c; writes c in place
 * and the new state into s->hnext ([B][Hrp]); the caller commits hnext into h.
 * sgemm NULL selects the packed matvec.
 */
static void recurrent_step(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                           int B, const xproj_view *xv, const float *h, float *c,
                           const step_buffers *s) {
    const int G = cell->gates, H = cell->hidden_size, Hr = cell->state_size;
    const int Hp = cell->hidden_padded, Hrp = round_up_block(Hr);
    const int nblk = Hp / LI_BLOCK;
    const int packed = sgemm == 0;
    const int rgs = packed ? Hp : H; /* gate stride of rec */
    const int rrow = packed ? G * Hp : G * H;
    /* h prepared once per step for every block's product (packed path only). */
    const li_rows hrows = packed ? prepare_rows(cell, kern, h, Hr, B, Hr, s) : (li_rows){0};

    if (cell->cell == LI_CELL_GRU) {
        if (packed)
            product(cell, kern, cell->r_packed, cell->r_scale, cell->r_rowsum, Hr, 2, 0, nblk,
                    &hrows, B, 0, Hp, s->rec, rgs, rrow);
        else
            sgemm_rows(sgemm, cell->r, 2 * H, Hr, h, Hr, B, s->rec, rrow);
        gru_gate_rows(cell, kern, 0, H, B, xv, s, rgs, rrow, h, Hr, s->rh);
        const float *n_in = cell->linear_before_reset ? h : s->rh;
        const int n_ld = cell->linear_before_reset ? Hr : Hp;
        if (packed) {
            const li_rows nrows = prepare_rows(cell, kern, n_in, n_ld, B, Hr, s);
            product(cell, kern, cell->rn_packed, cell->rn_scale, cell->rn_rowsum, Hr, 1, 0, nblk,
                    &nrows, B, 0, Hp, s->rec_n, Hp, Hp);
        } else
            sgemm_rows(sgemm, cell->r + (size_t)2 * H * Hr, H, Hr, n_in, n_ld, B, s->rec_n, Hp);
        gru_output_rows(cell, kern, 0, H, B, xv, s, h, Hr, s->hnext, Hrp);
        return;
    }

    /*
     * RNN and LSTM. A small batch multiplies block by block, each block's pointwise update
     * right after it while its products are still in L1. A larger batch needs several row
     * tiles per block and its products no longer fit L1 anyway; it multiplies every block in
     * one call instead, so the matvec can prefetch each next block's weights while the
     * current one is reused from L2 (the recurrent matrix outgrows L2 from H ~ 512), and the
     * pointwise update then reads each row's input projection in order, which the hardware
     * prefetchers follow (block by block, rows G*H floats apart, they do not).
     */
    float *hout = cell->proj ? s->hfull : s->hnext;
    const int hout_ld = cell->proj ? Hp : Hrp;
    const int step_blocks = packed && B <= LI_FUSED_MAX_ROWS ? 1 : nblk;
    for (int blk = 0; blk < nblk; blk += step_blocks) {
        const int u0 = blk * LI_BLOCK;
        const int u1 = step_blocks == 1 && u0 + LI_BLOCK < H ? u0 + LI_BLOCK : H;
        if (packed)
            product(cell, kern, cell->r_packed, cell->r_scale, cell->r_rowsum, Hr, G, blk,
                    blk + step_blocks, &hrows, B, 0, Hp, s->rec, rgs, rrow);
        else
            sgemm_rows(sgemm, cell->r, G * H, Hr, h, Hr, B, s->rec, rrow);
        cell_rows(cell, kern, u0, u1, B, xv, s, rgs, rrow, c, hout, hout_ld);
    }
    if (cell->proj) {
        /* Rows inactive this step project stale but finite values (hfull starts zeroed);
         * their hnext is never committed. */
        const li_rows prows = prepare_rows(cell, kern, s->hfull, Hp, B, H, s);
        product(cell, kern, cell->proj_packed, cell->proj_scale, cell->proj_rowsum, H, 1, 0,
                Hrp / LI_BLOCK, &prows, B, 0, Hrp, s->hnext, Hrp, Hrp);
    }
}

/*
 * The whole-sequence input projection goes through the packed matvec (bias folded in, rows
 * in chunks) when the fp32 input weights fit in L2: the chunk's inputs then stay in cache
 * while every block's weights are reused from L2, and this beat OpenBLAS sgemm by 10-20% at
 * I = H <= 256 on Sapphire Rapids (sgemm also needs the bias copied into every row first;
 * its blocking is tuned for larger K). Larger matrices keep sgemm, which blocks for them,
 * unless there are few rows in all (LI_XPROJ_FEW_ROWS): then all of them go through the
 * packed matvec in one call, which reads each block of W from memory once; OpenBLAS at
 * n <= 48 measured 2-3x slower (Zen 4: BiLSTM-512, 20 rows, 0.5 -> 0.2 ms a direction).
 * Quantized weights project on their own products instead (project_prepared), except bf16
 * outside the rounded mode, which keeps one fp32 sgemm over the dequantized weights.
 */
static size_t w_bytes_f32(const li_cell *cell) {
    return sizeof(float) * cell->input_size * cell->gates * (size_t)cell->hidden_padded;
}

/* Rows from which the packed matvec's register tile reuses each weight load often enough to
 * project a whole sequence faster than sgemm. The numbers above are AVX-512's tiles (6 rows
 * at 4 gates). AVX2 holds only 1 row at 4 gates (its 16 registers), so batches split into
 * one-gate tiles of 4 rows (6 beyond L2; simd_matvec_template.h), which reuse each weight
 * load as often. The packed path also gives a row the same sums whatever the batch and unit
 * split around it. Few rows in all (LI_XPROJ_FEW_ROWS) keep the packed matvec on every
 * table, as measured above.
 *
 * Where the chunks of rows go (xproj_chunk_rows): rows in chunks whose inputs stay in L1
 * while W stays in L2, else all rows in one call, which reads each block of W from L3 or
 * memory once. The CPUs whose widest table is AVX2 have at most 512 KB of L2 a core (Zen 2
 * and 3; Intel client cores 256 KB), so on those narrow tables W above
 * LI_XPROJ_NARROW_MAX_BYTES already goes in one call. Zen 3 AVX2, the zoo's CRNN BiLSTM
 * (I = 512, H = 128, W = 1 MB, 128 rows a direction): one packed call 0.79 ms, 24-row
 * chunks 0.9-1.0 ms (W from L3 for every chunk), OpenBLAS sgemm 0.95 ms (it repacks W on
 * every call); a run on a shared Zen 4 that had chunked such W showed no gain over sgemm,
 * which is why these tables had kept sgemm above 512 KB. */
#define LI_XPROJ_MIN_TILE_ROWS 4
#define LI_XPROJ_NARROW_MAX_BYTES ((size_t)512 << 10)

static int xproj_packed(const li_cell *cell, size_t total_rows) {
    if (cell->weight_format != LI_WEIGHTS_F32 || cell->input_size <= 0) return 0;
    return total_rows <= LI_XPROJ_FEW_ROWS || w_bytes_f32(cell) <= LI_XPROJ_PACKED_MAX_BYTES;
}

/* Rows per packed-matvec call: chunks whose inputs stay in L1 when W fits in L2, else all of
 * them (see above). */
static size_t xproj_chunk_rows(const li_cell *cell, const li_kernels *kern,
                               size_t total_rows) {
    const size_t l2 = kern->matvec_f32_rows[cell->gates] >= LI_XPROJ_MIN_TILE_ROWS
                          ? LI_XPROJ_PACKED_MAX_BYTES
                          : LI_XPROJ_NARROW_MAX_BYTES;
    if (w_bytes_f32(cell) > l2) return total_rows;
    const int per = LI_XPROJ_CHUNK_FLOATS / cell->input_size;
    return per > 8 ? (size_t)per : 8;
}

/* Rows of layer input prepared at once for a quantized whole-sequence input projection (see
 * project_prepared), and the floats of scratch they take (codes, scales, alignment). */
#define LI_XPREP_ROWS 128
static size_t xprep_floats(const li_cell *cell) {
    return LI_XPREP_ROWS * (LI_PREPARED_ROW_BYTES(cell->input_size) / sizeof(float) + 1) + 16;
}

/* The projection's gate stride is H after sgemm and Hp on the other paths (whole padded
 * blocks): room for Hp either way. */
size_t li_direction_scratch_floats(const li_cell *cell, int T, int B) {
    return (size_t)T * B * cell->gates * cell->hidden_padded + step_buffer_floats(cell, B) +
           xprep_floats(cell);
}

/* Room for LI_XPREP_ROWS prepared rows of layer input (64-byte aligned) and their scales. */
typedef struct {
    void *q;
    int ldq;
    float *scale;
} prepared_chunk;

static prepared_chunk carve_prepared_chunk(const li_cell *cell, float *at) {
    prepared_chunk p;
    p.scale = at;
    p.ldq = (int)LI_PREPARED_ROW_BYTES(cell->input_size);
    p.q = align_64(at + LI_XPREP_ROWS);
    return p;
}

/* The table a whole sequence of B rows runs on: kern, or *rounded (filled here) with the
 * rounded bf16 products swapped in for bf16 weights at batch >= LI_BF16_ROUNDED_MIN_ROWS on
 * tables that have them. Every part of a unit split gets the same answer. */
static const li_kernels *sequence_kernels(const li_cell *cell, const li_kernels *kern, int B,
                                          li_kernels *rounded) {
    if (cell->weight_format != LI_WEIGHTS_BF16 || !kern->matvec_bf16_rounded ||
        !kern->prepare_bf16_rounded || B < LI_BF16_ROUNDED_MIN_ROWS)
        return kern;
    *rounded = *kern;
    rounded->matvec_bf16 = kern->matvec_bf16_rounded;
    rounded->prepare_bf16 = kern->prepare_bf16_rounded;
    return rounded;
}

/* Whether the input projection goes through project_prepared (see there). */
static int projects_prepared(const li_cell *cell, const li_kernels *kern) {
    return cell->input_size > 0 &&
           (cell->weight_format == LI_WEIGHTS_I8 ||
            (cell->weight_format == LI_WEIGHTS_BF16 &&
             kern->matvec_bf16 == kern->matvec_bf16_rounded && kern->matvec_bf16));
}

/*
 * The input projection of quantized weights on their own product: rows prepared (int8
 * codes, rounded bf16) LI_XPREP_ROWS at a time, then the packed product over every block.
 * int8 always takes it: the activation quantization is part of the model's arithmetic, so a
 * whole sequence computes what the stream's steps compute, and VPDPBUSD does 4x the work of
 * an fp32 FMA. bf16 takes it with the rounded products (batched whole sequences on CPUs with
 * a bf16 dot product). Each chunk reads every block of W once; the rows of a chunk are
 * reused from L1/L2 by every block. Writes the units of blocks [blk0, blk1) of rows of
 * G * Hp floats, gate stride Hp.
 */
static void project_prepared(const li_cell *cell, const li_kernels *kern, const float *x,
                             int ldx, size_t rows, int blk0, int blk1,
                             const prepared_chunk *xprep, float *out) {
    const int G = cell->gates, I = cell->input_size, Hp = cell->hidden_padded;
    const int i8 = cell->weight_format == LI_WEIGHTS_I8;
    const li_prepare_fn prep = i8 ? kern->prepare_i8 : kern->prepare_bf16;
    const size_t ld = (size_t)G * Hp;
    for (size_t r0 = 0; r0 < rows; r0 += LI_XPREP_ROWS) {
        const int n = rows - r0 < LI_XPREP_ROWS ? (int)(rows - r0) : LI_XPREP_ROWS;
        prep(x + r0 * ldx, ldx, n, I, xprep->q, xprep->ldq, xprep->scale);
        const li_rows xr = {x + r0 * ldx, ldx, xprep->q, xprep->ldq, xprep->scale};
        product(cell, kern, cell->w_packed, cell->w_scale, cell->w_rowsum, I, G, blk0, blk1,
                &xr, n, cell->bias_packed, Hp, out + r0 * ld, Hp, (int)ld);
    }
}

/* Rows of a token table: the input projections of a batch of token ids, gate stride Hp. */
static int gather_token_rows(const li_cell *cell, const int64_t *tokens, size_t n, float *out) {
    const size_t row = (size_t)cell->gates * cell->hidden_padded;
    for (size_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= cell->vocab_size) return -4;
        memcpy(out + i * row, cell->token_table + (size_t)tokens[i] * row, sizeof(float) * row);
    }
    return 0;
}

/* Input projection of time-major rows [row0, row0 + rows) for the units of blocks
 * [blk0, blk1) only, into out (rows of G * Hp floats, gate stride Hp): token table rows, AMX
 * tiles (bf16), the packed matvec (W in L2), else one sgemm per gate over those units' rows
 * of W. A unit-split part calls it for its own blocks, project_inputs for all of them. */
static void project_part(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                         const float *x, int ldx, const int64_t *tokens, size_t row0,
                         size_t rows, int blk0, int blk1, const prepared_chunk *xprep,
                         float *out) {
    const int G = cell->gates, I = cell->input_size, H = cell->hidden_size;
    const int Hp = cell->hidden_padded;
    const int u0 = blk0 * LI_BLOCK, u1 = blk1 * LI_BLOCK < H ? blk1 * LI_BLOCK : H;
    if (u1 <= u0) return;
    const size_t ld = (size_t)G * Hp;
    if (tokens) {
        for (size_t r = 0; r < rows; ++r) {
            const float *src = cell->token_table + (size_t)tokens[row0 + r] * ld;
            for (int g = 0; g < G; ++g)
                memcpy(out + r * ld + (size_t)g * Hp + u0, src + (size_t)g * Hp + u0,
                       sizeof(float) * (u1 - u0));
        }
        return;
    }
    x += row0 * (size_t)ldx;
    /* bfloat16 blocks are (I + 1) / 2 pairs x G x LI_BLOCK units x 2 entries apart. */
    const size_t bf16_block = (size_t)(I + 1) / 2 * 2 * G * LI_BLOCK;
    /* Quantized products first: in the rounded mode a bf16 projection takes the rounded
     * product (on AMX tiles too, one instruction per weight pair instead of the split
     * projection's two). */
    if (projects_prepared(cell, kern)) {
        project_prepared(cell, kern, x, ldx, rows, blk0, blk1, xprep, out);
        return;
    }
    if (cell->weight_format == LI_WEIGHTS_BF16 && kern->project_bf16 && rows >= 16 &&
        kern->project_bf16((const uint16_t *)cell->w_packed + blk0 * bf16_block, I, G,
                           blk1 - blk0, x, ldx, (int)rows, cell->bias_packed + u0, Hp,
                           out + u0, Hp, (int)ld) == 0)
        return;
    /* With W larger than L2 every call covers the whole sequence (xproj_chunk_steps), so
     * rows is the projection's total. */
    if (xproj_packed(cell, rows)) {
        const size_t chunk = xproj_chunk_rows(cell, kern, rows);
        for (size_t r0 = 0; r0 < rows; r0 += chunk) {
            const int n = rows - r0 < chunk ? (int)(rows - r0) : (int)chunk;
            kern->matvec_f32(cell->w_packed, I, G, blk0, blk1, x + r0 * ldx, ldx, n,
                             cell->bias_packed, Hp, out + r0 * ld, Hp, (int)ld);
        }
        return;
    }
    for (size_t r = 0; r < rows; ++r)
        for (int g = 0; g < G; ++g)
            memcpy(out + r * ld + (size_t)g * Hp + u0, cell->bias + (size_t)g * H + u0,
                   sizeof(float) * (u1 - u0));
    for (int g = 0; g < G; ++g) {
        char ta = 'T', tb = 'N';
        float one = 1.0f;
        int m = u1 - u0, n = (int)rows, k = I, lda = I, ldb = ldx, ldc = (int)ld;
        sgemm(&ta, &tb, &m, &n, &k, &one, (float *)cell->w + ((size_t)g * H + u0) * I, &lda,
              (float *)x, &ldb, &one, out + (size_t)g * Hp + u0, &ldc);
    }
}

/* Input projection of time-major rows [row0, row0 + rows) for every unit, into out; returns
 * the gate stride written: H after the one sgemm over all of W (rows of G * H floats), Hp
 * when project_part's paths apply (token rows, AMX tiles, the packed matvec). */
static int project_inputs(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                          const float *x, int ldx, const int64_t *tokens, size_t row0,
                          size_t rows, const prepared_chunk *xprep, float *out) {
    const int G = cell->gates, I = cell->input_size, Hp = cell->hidden_padded;
    const int amx = cell->weight_format == LI_WEIGHTS_BF16 && kern->project_bf16 && rows >= 16;
    if (tokens || amx || projects_prepared(cell, kern) || xproj_packed(cell, rows)) {
        project_part(cell, kern, sgemm, x, ldx, tokens, row0, rows, 0, Hp / LI_BLOCK, xprep,
                     out);
        return Hp;
    }
    x += row0 * (size_t)ldx;
    const int xld = G * cell->hidden_size;
    for (size_t r = 0; r < rows; ++r) memcpy(out + r * xld, cell->bias, sizeof(float) * xld);
    char ta = 'T', tb = 'N';
    float one = 1.0f;
    int m = xld, n = (int)rows, k = I, lda = I, ldb = ldx, ldc = xld;
    sgemm(&ta, &tb, &m, &n, &k, &one, (float *)cell->w, &lda, (float *)x, &ldb, &one, out, &ldc);
    return cell->hidden_size;
}

/* Lengths in [0, T] and token ids inside the table, checked before any state changes;
 * *max_len gets the longest row. 0, -3 (a length) or -4 (a token id). */
static int check_sequence(const li_cell *cell, int T, int B, const int *lens,
                          const int64_t *tokens, int *max_len) {
    *max_len = 0;
    for (int b = 0; b < B; ++b) {
        const int len = lens ? lens[b] : T;
        if (len < 0 || len > T) return -3;
        if (len > *max_len) *max_len = len;
    }
    for (size_t i = 0; tokens && i < (size_t)T * B; ++i)
        if (tokens[i] < 0 || tokens[i] >= cell->vocab_size) return -4;
    return 0;
}

/*
 * Steps whose input projection (W x + b for every row) is computed ahead of them at once:
 * as many as fit in LI_XPROJ_CHUNK_BYTES of projections (192 KB to 1 MB measured alike;
 * 256 KB), written and read back while still in cache, instead of a T * B * G * H buffer
 * going out to memory and back (26 MB at H = 256, batch 64, T = 100; 0.98 -> 0.77 of
 * onnxruntime's time at H = 64, batch 64). Token rows always chunk; W x only when W fits in
 * L2 (each chunk reads all of it: at H = 1024 chunking doubled the time). With ragged
 * lengths the rows of one step sit at different times: then the whole sequence at once.
 */
static int xproj_chunk_steps(const li_cell *cell, int T, int B, int has_tokens, int has_lens) {
    const size_t per_step = (size_t)B * cell->gates * cell->hidden_padded;
    const size_t w_bytes = sizeof(float) * (size_t)cell->gates * cell->hidden_padded *
                           cell->input_size;
    const int whole = has_lens || (!has_tokens && w_bytes > LI_XPROJ_PACKED_MAX_BYTES);
    int chunk_steps = whole ? T : (int)(LI_XPROJ_CHUNK_BYTES / sizeof(float) / per_step);
    if (chunk_steps < 1) chunk_steps = 1;
    if (chunk_steps > T) chunk_steps = T;
    return chunk_steps;
}

/* Times [*t0, *t1) the steps [s0, s1) read (every time when lengths are ragged). */
static void chunk_times(int T, const int *lens, int reverse, int s0, int s1, int *t0, int *t1) {
    *t0 = lens ? 0 : (reverse ? T - s1 : s0);
    *t1 = lens ? T : (reverse ? T - s0 : s1);
}

/* Each row's time index at this step, relative to t0; -1 once the row has ended. */
static void set_row_times(int *row_t, int B, int T, const int *lens, int reverse, int step,
                          int t0) {
    for (int b = 0; b < B; ++b) {
        const int len = lens ? lens[b] : T;
        row_t[b] = step < len ? (reverse ? len - 1 - step : step) - t0 : -1;
    }
}

int li_run_direction(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm, int T,
                     int B, const float *x, int ldx, const int64_t *tokens, const int *lens,
                     int reverse, float *h, float *c, float *y, ptrdiff_t y_ts, ptrdiff_t y_bs,
                     float *scratch) {
    if (!cell || !kern || !sgemm || T < 0 || B <= 0 || !h || !scratch) return -1;
    if (tokens ? !cell->token_table : !x) return -1;
    if (cell->cell == LI_CELL_LSTM && !c) return -2;
    const int G = cell->gates, Hp = cell->hidden_padded;
    const int Hr = cell->state_size, Hrp = round_up_block(Hr);
    if (T == 0) return 0;
    int max_len;
    const int bad = check_sequence(cell, T, B, lens, tokens, &max_len);
    if (bad) return bad;

    /* A batch of bf16 rows runs on the rounded products where the table has them (see
     * LI_BF16_ROUNDED_MIN_ROWS): this call's table is the given one with those swapped in. */
    li_kernels rounded;
    kern = sequence_kernels(cell, kern, B, &rounded);
    const int chunk_steps = xproj_chunk_steps(cell, T, B, tokens != 0, lens != 0);
    float *xproj = scratch;
    float *step_scratch = xproj + (size_t)chunk_steps * B * G * Hp;
    memset(step_scratch, 0, sizeof(float) * step_buffer_floats(cell, B));
    step_buffers s = carve_step_buffers(cell, B, step_scratch);
    const prepared_chunk xprep =
        carve_prepared_chunk(cell, step_scratch + step_buffer_floats(cell, B));
    /* int8 keeps the packed product at any batch: its activation quantization is part of the
     * model's arithmetic, so a row's result must not depend on the batch around it. */
    li_sgemm_fn rec_gemm =
        B <= LI_PACKED_MAX_ROWS || cell->weight_format == LI_WEIGHTS_I8 ? 0 : sgemm;

    for (int s0 = 0; s0 < max_len; s0 += chunk_steps) {
        const int s1 = s0 + chunk_steps < max_len ? s0 + chunk_steps : max_len;
        int t0, t1;
        chunk_times(T, lens, reverse, s0, s1, &t0, &t1);
        const int xgs = project_inputs(cell, kern, sgemm, x, ldx, tokens, (size_t)t0 * B,
                                       (size_t)(t1 - t0) * B, &xprep, xproj);
        const xproj_view xv = {xproj, (ptrdiff_t)B * G * xgs, (ptrdiff_t)G * xgs, xgs};
        for (int step = s0; step < s1; ++step) {
            set_row_times(s.row_t, B, T, lens, reverse, step, t0);
            recurrent_step(cell, kern, rec_gemm, B, &xv, h, c, &s);
            for (int b = 0; b < B; ++b) {
                if (s.row_t[b] < 0) continue;
                const int t = s.row_t[b] + t0;
                const float *hn = s.hnext + (size_t)b * Hrp;
                memcpy(h + (size_t)b * Hr, hn, sizeof(float) * Hr);
                if (y) memcpy(y + t * y_ts + b * y_bs, hn, sizeof(float) * Hr);
            }
        }
    }
    return 0;
}

/* ---- unit split: one layer-direction's units shared among threads ------------------------ */

/* Spin barrier over a generation counter; after LI_SPIN_LIMIT polls a waiter yields its core
 * (the machine may be shared, or have fewer cores than parts). */
#define LI_SPIN_LIMIT 4000

static void split_barrier(li_split_sync *sync) {
    const int gen = __atomic_load_n(&sync->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&sync->arrived, 1, __ATOMIC_ACQ_REL) == sync->parts) {
        __atomic_store_n(&sync->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&sync->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (int spins = 0; __atomic_load_n(&sync->generation, __ATOMIC_ACQUIRE) == gen; ++spins) {
        if (spins < LI_SPIN_LIMIT) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else
            sched_yield();
    }
}

size_t li_unit_split_shared_floats(const li_cell *cell, int T, int B, int has_tokens,
                                   int has_lens) {
    const size_t Hp = (size_t)cell->hidden_padded;
    return 3 * (size_t)B * Hp +
           (size_t)xproj_chunk_steps(cell, T, B, has_tokens, has_lens) * B * cell->gates * Hp +
           16;
}

size_t li_unit_split_part_floats(const li_cell *cell, int B) {
    return step_buffer_floats(cell, B) + xprep_floats(cell);
}

/* One timestep of the units of blocks [blk0, blk1): reads the whole previous state h (rows
 * ldh apart), writes this part's units of hnext (same layout), c in place and, for a GRU
 * with linear_before_reset = 0, its units of the shared rh; barriers in between as needed.
 * Every part calls this with the same row_t. */
static void split_step(const li_cell *cell, const li_kernels *kern, int B, const xproj_view *xv,
                       const float *h, int ldh, float *hnext, float *c, float *rh, int blk0,
                       int blk1, const step_buffers *s, li_split_sync *sync) {
    const int G = cell->gates, H = cell->hidden_size, Hr = cell->state_size;
    const int Hp = cell->hidden_padded, rrow = G * Hp;
    const int u0 = blk0 * LI_BLOCK, u1 = blk1 * LI_BLOCK < H ? blk1 * LI_BLOCK : H;
    const int mine = u1 > u0;
    const li_rows hrows = prepare_rows(cell, kern, h, ldh, B, Hr, s);

    if (cell->cell == LI_CELL_GRU) {
        if (mine) {
            product(cell, kern, cell->r_packed, cell->r_scale, cell->r_rowsum, Hr, 2, blk0,
                    blk1, &hrows, B, 0, Hp, s->rec, Hp, rrow);
            gru_gate_rows(cell, kern, u0, u1, B, xv, s, Hp, rrow, h, ldh, rh);
        }
        li_rows nrows = hrows;
        if (!cell->linear_before_reset) {
            split_barrier(sync); /* R_n (r * h) needs r * h of every unit */
            nrows = prepare_rows(cell, kern, rh, Hp, B, Hr, s);
        }
        if (mine) {
            product(cell, kern, cell->rn_packed, cell->rn_scale, cell->rn_rowsum, Hr, 1, blk0,
                    blk1, &nrows, B, 0, Hp, s->rec_n, Hp, Hp);
            gru_output_rows(cell, kern, u0, u1, B, xv, s, h, ldh, hnext, ldh);
        }
        return;
    }
    const int step_blocks = B <= LI_FUSED_MAX_ROWS ? 1 : blk1 - blk0;
    for (int blk = blk0; blk < blk1; blk += step_blocks) {
        const int ua = blk * LI_BLOCK;
        const int ub = (blk + step_blocks) * LI_BLOCK < H ? (blk + step_blocks) * LI_BLOCK : H;
        product(cell, kern, cell->r_packed, cell->r_scale, cell->r_rowsum, Hr, G, blk,
                blk + step_blocks, &hrows, B, 0, Hp, s->rec, Hp, rrow);
        cell_rows(cell, kern, ua, ub, B, xv, s, Hp, rrow, c, hnext, ldh);
    }
}

int li_run_direction_part(const li_cell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                          int T, int B, const float *x, int ldx, const int64_t *tokens,
                          const int *lens, int reverse, float *h, float *c, float *y,
                          ptrdiff_t y_ts, ptrdiff_t y_bs, li_split_sync *sync, int part,
                          float *shared, float *scratch) {
    /* Every check depends only on arguments all parts share, so either every part returns
     * here or none does (no part is left waiting at the barrier). */
    if (!cell || !kern || !sgemm || T < 0 || B <= 0 || !h || !sync || !shared) return -1;
    if (sync->parts < 1 || part < 0 || part >= sync->parts) return -1;
    if (tokens ? !cell->token_table : !x) return -1;
    if (cell->cell == LI_CELL_LSTM && !c) return -2;
    if (cell->proj || cell->state_size != cell->hidden_size) return -5;
    if (T == 0) return 0;
    int max_len;
    const int bad = check_sequence(cell, T, B, lens, tokens, &max_len);
    if (bad) return bad;
    if (!scratch) return -1; /* per part: only after the shared checks (see above) */

    const int G = cell->gates, H = cell->hidden_size, Hp = cell->hidden_padded;
    const int nblk = Hp / LI_BLOCK, parts = sync->parts;
    const int blk0 = (int)((long)nblk * part / parts);
    const int blk1 = (int)((long)nblk * (part + 1) / parts);
    const int u0 = blk0 * LI_BLOCK, u1 = blk1 * LI_BLOCK < H ? blk1 * LI_BLOCK : H;
    const size_t own = u1 > u0 ? sizeof(float) * (u1 - u0) : 0;
    float *hbuf[2] = {shared, shared + (size_t)B * Hp};
    float *rh = shared + 2 * (size_t)B * Hp;
    float *xproj = shared + 3 * (size_t)B * Hp;
    const int chunk_steps = xproj_chunk_steps(cell, T, B, tokens != 0, lens != 0);
    li_kernels rounded;
    kern = sequence_kernels(cell, kern, B, &rounded);
    memset(scratch, 0, sizeof(float) * step_buffer_floats(cell, B));
    step_buffers s = carve_step_buffers(cell, B, scratch);
    const prepared_chunk xprep = carve_prepared_chunk(cell, scratch + step_buffer_floats(cell, B));

    for (int b = 0; b < B && own; ++b)
        memcpy(hbuf[0] + (size_t)b * Hp + u0, h + (size_t)b * H + u0, own);
    split_barrier(sync);
    int cur = 0;
    for (int s0 = 0; s0 < max_len; s0 += chunk_steps) {
        const int s1 = s0 + chunk_steps < max_len ? s0 + chunk_steps : max_len;
        int t0, t1;
        chunk_times(T, lens, reverse, s0, s1, &t0, &t1);
        /* Only this part reads its units of xproj: no barrier needed around it. */
        project_part(cell, kern, sgemm, x, ldx, tokens, (size_t)t0 * B, (size_t)(t1 - t0) * B,
                     blk0, blk1, &xprep, xproj);
        const xproj_view xv = {xproj, (ptrdiff_t)B * G * Hp, (ptrdiff_t)G * Hp, Hp};
        for (int step = s0; step < s1; ++step) {
            set_row_times(s.row_t, B, T, lens, reverse, step, t0);
            float *hn = hbuf[cur ^ 1];
            split_step(cell, kern, B, &xv, hbuf[cur], Hp, hn, c, rh, blk0, blk1, &s, sync);
            for (int b = 0; b < B && own; ++b) {
                float *row = hn + (size_t)b * Hp + u0;
                if (s.row_t[b] < 0)
                    memcpy(row, hbuf[cur] + (size_t)b * Hp + u0, own);
                else if (y)
                    memcpy(y + (s.row_t[b] + t0) * y_ts + b * y_bs + u0, row, own);
            }
            split_barrier(sync); /* the new h is complete before anyone reads it */
            cur ^= 1;
        }
    }
    for (int b = 0; b < B && own; ++b)
        memcpy(h + (size_t)b * H + u0, hbuf[cur] + (size_t)b * Hp + u0, own);
    return 0;
}

size_t li_stack_step_scratch_floats(const li_cell *const *cells, int n_layers, int B) {
    size_t most = 0;
    for (int l = 0; l < n_layers; ++l) {
        const li_cell *cell = cells[l];
        const size_t need = (size_t)B * cell->gates * cell->hidden_padded +
                            (size_t)B * round_up_block(cell->state_size) +
                            step_buffer_floats(cell, B);
        if (need > most) most = need;
    }
    return 2 * most + 64;
}

int li_stack_step(const li_cell *const *cells, int n_layers, const li_kernels *kern, int B,
                  const float *x, const int64_t *tokens, float *const *h, float *const *c,
                  float *y, float *scratch) {
    if (!cells || n_layers <= 0 || !kern || B <= 0 || !h || !y || !scratch) return -1;
    if (tokens ? !cells[0]->token_table : !x) return -1;
    const float *in = x;
    int in_ld = cells[0]->input_size;
    /* Two halves of scratch alternate between layers so a layer's input (the previous
     * layer's output) is never overwritten while it is being read. */
    const size_t half = (li_stack_step_scratch_floats(cells, n_layers, B) - 64) / 2;
    for (int l = 0; l < n_layers; ++l) {
        const li_cell *cell = cells[l];
        const int G = cell->gates, Hp = cell->hidden_padded, Hr = cell->state_size;
        const int Hrp = round_up_block(Hr);
        if (cell->cell == LI_CELL_LSTM && !c[l]) return -2;
        float *base = scratch + (l % 2) * half;
        float *xp = base;
        float *out = xp + (size_t)B * G * Hp;
        float *step_scratch = out + (size_t)B * Hrp;
        step_buffers s = carve_step_buffers(cell, B, step_scratch);
        for (int b = 0; b < B; ++b) s.row_t[b] = 0;
        if (l == 0 && tokens) {
            /* Checked before any state changes: a bad id leaves every layer untouched. */
            if (gather_token_rows(cell, tokens, (size_t)B, xp) != 0) return -4;
        } else {
            const li_rows xrows = prepare_rows(cell, kern, in, in_ld, B, cell->input_size, &s);
            product(cell, kern, cell->w_packed, cell->w_scale, cell->w_rowsum, cell->input_size,
                    G, 0, Hp / LI_BLOCK, &xrows, B, cell->bias_packed, Hp, xp, Hp, G * Hp);
        }
        const xproj_view xv = {xp, 0, (ptrdiff_t)G * Hp, Hp};
        recurrent_step(cell, kern, 0, B, &xv, h[l], c[l], &s);
        for (int b = 0; b < B; ++b) {
            memcpy(h[l] + (size_t)b * Hr, s.hnext + (size_t)b * Hrp, sizeof(float) * Hr);
            memcpy(out + (size_t)b * Hr, s.hnext + (size_t)b * Hrp, sizeof(float) * Hr);
        }
        in = out;
        in_ld = Hr;
    }
    memcpy(y, in, sizeof(float) * (size_t)B * in_ld);
    return 0;
}
