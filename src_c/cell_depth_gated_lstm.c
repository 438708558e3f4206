/*
 * The depth-gated LSTM of CELLS.md (Yao et al. 2015). Layer 0 is a plain LSTM; every layer
 * l >= 1 reads x = h^{l-1}_t and the lower layer's new cell c^{l-1}_t:
 *
 *     gates = W x + b_ih + R h_prev + b_hh                       (i, f, g, o)
 *     d     = sigmoid(D x + e + p * c_prev + q * c_lower)
 *     c     = d * c_lower + f * c_prev + i * g
 *     h     = o * tanh(c)
 *
 * The depth gate rides on the layer's input projection: W and D both multiply x, so their
 * rows form one matrix of 5 groups (i, f, g, o, d) and a chunk of steps is one product
 * (li_rcell_project's sgemm; for few rows the packed matvec, which takes at most 4 groups,
 * runs W and D as two calls into the same 5-group rows). Each step is one packed matvec of R
 * over the batch (4 groups), then one pointwise pass per row that forms d and the cell
 * together. The stack runs chunk by chunk: a layer's outputs h and new cells c over the chunk
 * stay in scratch for the layer above, which overwrites them with its own as it goes (step
 * s's lower cell is read only by that step's update, its inputs only by the projection that
 * precedes the layer's steps).
 *
 * Arrays (Hp = H padded to LI_BLOCK; b = b_ih + b_hh):
 *   layer 0, 4 arrays:  [0] w_pad [4*Hp][I]   [1] w_packed pack_gate_blocks(W, 4)
 *                       [2] bias_pad [4*Hp] b  [3] r_packed pack_gate_blocks(R, 4), K = H
 *   layer l >= 1, 7 arrays from 4 + 7*(l-1):
 *                       [0] w_pad [5*Hp][H]  rows of W then D, each group padded (sgemm)
 *                       [1] w_packed pack_gate_blocks(W, 4)  [2] d_packed pack_gate_blocks(D, 1)
 *                       [3] bias_pad [5*Hp] b then e         [4] r_packed pack_gate_blocks(R, 4)
 *                       [5] p [H] (depth_cell)  [6] q [H] (depth_lower)
 * States: state[0] h, state[1] c, each [L][B][H].
 */
#include "li_cells.h"

#include <string.h>

#define LAYER0_ARRAYS 4
#define UPPER_ARRAYS 7

static const float *const *layer_arrays(const li_rcell *cell, int l) {
    const float *const *a = (const float *const *)cell->array;
    return l == 0 ? a : a + LAYER0_ARRAYS + UPPER_ARRAYS * (l - 1);
}

int li_depth_gated_lstm_check(const li_rcell *cell) {
    const int64_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    const int64_t I = cell->input_size;
    if (cell->n_arrays != LAYER0_ARRAYS + UPPER_ARRAYS * (cell->layers - 1))
        return -10;
    const int hp = (int)Hp, h = (int)H, i0 = (int)I;
    const int64_t first[LAYER0_ARRAYS] = {4 * Hp * I, li_rcell_packed_len(cell, 4, hp, i0),
                                          4 * Hp, li_rcell_packed_len(cell, 4, hp, h)};
    for (int i = 0; i < LAYER0_ARRAYS; i++)
        if (cell->array_len[i] != first[i])
            return -11 - i;
    const int64_t upper[UPPER_ARRAYS] = {5 * Hp * H,
                                         li_rcell_packed_len(cell, 4, hp, h),
                                         li_rcell_packed_len(cell, 1, hp, h),
                                         5 * Hp,
                                         li_rcell_packed_len(cell, 4, hp, h),
                                         H,
                                         H};
    for (int l = 1; l < cell->layers; l++)
        for (int i = 0; i < UPPER_ARRAYS; i++)
            if (cell->array_len[LAYER0_ARRAYS + UPPER_ARRAYS * (l - 1) + i] != upper[i])
                return -20 - i;
    return 0;
}

/* Groups of a projection row: 5 when the stack has a layer above layer 0. */
static int stack_groups(const li_rcell *cell) { return cell->layers > 1 ? 5 : 4; }

/* Scratch: the chunk's projections [C][B][G*Hp], the layer outputs and new cells between
 * layers ([C][B][H] each), the recurrent products [B][4Hp], one row's pre-activations (5H)
 * and tanh(c) (H). */
size_t li_depth_gated_lstm_scratch(const li_rcell *cell, int T, int B) {
    const size_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    const size_t G = stack_groups(cell);
    const size_t C = li_rcell_chunk_steps(T, B, (int)(G * Hp));
    return C * B * G * Hp + (cell->layers > 1 ? 2 * C * B * H : 0) + (size_t)B * 4 * Hp +
           6 * H + 4 * LI_BLOCK;
}

size_t li_depth_gated_lstm_state(const li_rcell *cell, int s, int B) {
    return s < 2 ? (size_t)cell->layers * B * cell->hidden_size : 0;
}

/* out rows (5*Hp floats apart) = [W; D] x + [b; e] over `rows` rows of x (layer l >= 1). */
static void project_with_depth(const li_kernels *kern, li_sgemm_fn sgemm, const li_rcell *cell,
                               const float *const *w, int Hp, int K, const float *x, int ldx,
                               int rows, float *out, void *prep) {
    /* Packed as two calls (4 groups, then the gate's 1): the policy asked for the larger,
     * whose weights are the ones it bounds (asked for 5 groups it answered sgemm always,
     * even for a stream's single row: 333 us a step at H = 256 against 61 packed). */
    if (!li_rcell_projects_packed(4, Hp, K, rows)) {
        li_rcell_project(kern, sgemm, cell, w[0], NULL, 5, Hp, K, w[3], x, ldx, rows, out,
                         prep);
        return;
    }
    li_rcell_matvec(kern, cell, w[1], K, 4, Hp, 0, Hp / LI_BLOCK, x, ldx, rows, w[3], out, Hp,
                    5 * Hp, prep);
    li_rcell_matvec(kern, cell, w[2], K, 1, Hp, 0, Hp / LI_BLOCK, x, ldx, rows, w[3] + 4 * Hp,
                    out + 4 * Hp, Hp, 5 * Hp, prep);
}

/* Layer l >= 1, one row: xp (5 groups) + rec (4 groups), gate stride Hp. c_low holds the
 * lower layer's new cell and receives this layer's; c and h are updated in place. */
static void depth_row(const li_kernels *kern, const float *const *w, int H, int Hp,
                      const float *xp, const float *rec, float *c_low, float *c, float *h,
                      float *z, float *tc) {
    const float *p = w[5], *q = w[6];
    for (int g = 0; g < 4; g++)
        for (int u = 0; u < H; u++)
            z[g * H + u] = xp[g * Hp + u] + rec[g * Hp + u];
    for (int u = 0; u < H; u++)
        z[4 * H + u] = xp[4 * Hp + u] + p[u] * c[u] + q[u] * c_low[u];
    /* i, f sigmoid; g tanh; o and d (adjacent) sigmoid. */
    kern->activation_array(LI_ACT_SIGMOID, z, z, 2 * (size_t)H);
    kern->activation_array(LI_ACT_TANH, z + 2 * H, z + 2 * H, (size_t)H);
    kern->activation_array(LI_ACT_SIGMOID, z + 3 * H, z + 3 * H, 2 * (size_t)H);
    const float *i_g = z, *f_g = z + H, *g_g = z + 2 * H, *o_g = z + 3 * H, *d_g = z + 4 * H;
    for (int u = 0; u < H; u++) {
        const float c_new = d_g[u] * c_low[u] + f_g[u] * c[u] + i_g[u] * g_g[u];
        c[u] = c_new;
        c_low[u] = c_new;
    }
    kern->activation_array(LI_ACT_TANH, c, tc, (size_t)H);
    for (int u = 0; u < H; u++)
        h[u] = o_g[u] * tc[u];
}

int li_depth_gated_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                            const li_rcell_io *io) {
    const int H = cell->hidden_size, Hp = li_rcell_padded(H), L = cell->layers;
    const int T = io->T, B = io->B, G = stack_groups(cell);
    if (io->state[0] == NULL || io->state[1] == NULL)
        return -2;
    const int C = li_rcell_chunk_steps(T, B, G * Hp);
    float *xp = io->scratch;
    float *between = xp + (size_t)C * B * G * Hp;
    float *c_low = between + (L > 1 ? (size_t)C * B * H : 0);
    float *rec = c_low + (L > 1 ? (size_t)C * B * H : 0);
    float *z = rec + (size_t)B * 4 * Hp, *tc = z + 5 * H;
    /* Layer 0 is a plain LSTM: the table's fused pointwise update, default activations. */
    li_cell plain;
    memset(&plain, 0, sizeof plain);
    plain.cell = LI_CELL_LSTM;
    plain.gates = 4;
    plain.input_size = cell->input_size;
    plain.hidden_size = H;
    plain.state_size = H;
    plain.hidden_padded = Hp;
    plain.default_activations = 1;
    plain.act[0].kind = LI_ACT_SIGMOID; /* the scalar table's update reads the kinds */
    plain.act[1].kind = LI_ACT_TANH;
    plain.act[2].kind = LI_ACT_TANH;
    for (int k = 0; k < 3; k++)
        plain.act[k].alpha = 1.0f;
    for (int t0 = 0; t0 < T; t0 += C) {
        const int steps = T - t0 < C ? T - t0 : C;
        for (int l = 0; l < L; l++) {
            const float *const *w = layer_arrays(cell, l);
            const int top = l == L - 1, row_floats = l == 0 ? 4 * Hp : 5 * Hp;
            if (l == 0)
                li_rcell_project(kern, sgemm, cell, w[0], w[1], 4, Hp, cell->input_size, w[2],
                                 io->x + (size_t)t0 * B * io->ldx, io->ldx, steps * B, xp,
                                 io->prep);
            else
                project_with_depth(kern, sgemm, cell, w, Hp, H, between, H, steps * B, xp,
                                   io->prep);
            const float *r_packed = l == 0 ? w[3] : w[4];
            float *h = io->state[0] + (size_t)l * B * H, *c = io->state[1] + (size_t)l * B * H;
            for (int s = 0; s < steps; s++) {
                li_rcell_matvec(kern, cell, r_packed, H, 4, Hp, 0, Hp / LI_BLOCK, h, H, B, NULL,
                                rec, Hp, 4 * Hp, io->prep);
                for (int b = 0; b < B; b++) {
                    const size_t row = (size_t)s * B + b;
                    const float *xrow = xp + row * row_floats, *rrow = rec + (size_t)b * 4 * Hp;
                    float *hb = h + (size_t)b * H, *cb = c + (size_t)b * H;
                    if (l == 0) {
                        kern->lstm_pointwise(&plain, 0, H, xrow, Hp, rrow, Hp, cb, hb);
                        if (L > 1)
                            memcpy(c_low + row * H, cb, (size_t)H * sizeof(float));
                    } else {
                        depth_row(kern, w, H, Hp, xrow, rrow, c_low + row * H, cb, hb, z, tc);
                    }
                    float *out = NULL;
                    if (!top)
                        out = between + row * H;
                    else if (io->y != NULL)
                        out = io->y + (ptrdiff_t)(t0 + s) * io->y_ts + (ptrdiff_t)b * io->y_bs;
                    if (out != NULL)
                        memcpy(out, hb, (size_t)H * sizeof(float));
                }
            }
        }
    }
    return 0;
}
