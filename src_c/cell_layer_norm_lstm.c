/*
 * The layer-normalised LSTM of CELLS.md (torchaudio's RNN-T predictor cell), every layer:
 *
 *     gates = LN_g(W x + b + R h)          LN over all 4H values (i, f, g, o), weight/bias 4H
 *     c'    = LN_c(f * c + i * g)          the normalised cell is the state carried on
 *     h'    = o * tanh(c')
 *
 * The input projections of a chunk of steps are one product per layer (li_rcell_project);
 * each step is one product of R with the batch's h (li_rcell_recurrent), then one pointwise
 * pass per row that adds the two, normalises the gates, applies the activations on the
 * table's vector functions, updates and normalises the cell. Both norms are the table's
 * layernorm_rows (the graph's LayerNormalization kernel: float64 sums on the scalar table,
 * two-pass float32 vectors on the SIMD ones; Zen 3 AVX2, H = 256, batch 16: the scalar
 * float64 norms had been a fifth of the run). A layer's outputs over the chunk are the next
 * layer's inputs, so a deep stack keeps its big products.
 *
 * Arrays, 9 per layer l (I_0 = input_size, I_l = H above; Hp = H padded to LI_BLOCK):
 *   [9l+0] w_pad     [4*Hp][I_l]  input weights, gate rows padded with zeros (sgemm)
 *   [9l+1] w_packed  pack_gate_blocks(W, 4) in the weight format (li_rcell_packed_len)
 *   [9l+2] bias_pad  [4*Hp]       bias_ih
 *   [9l+3] r_pad     [4*Hp][H]    recurrent weights, padded rows (sgemm for large batches)
 *   [9l+4] r_packed  pack_gate_blocks(R, 4) over K = H
 *   [9l+5] gate_w, [9l+6] gate_b  [4H]  gate norm
 *   [9l+7] cell_w, [9l+8] cell_b  [H]   cell norm
 * States: state[0] h, state[1] c, each [L][B][H].
 */
#include "li_cells.h"

#include <math.h>

#define ARRAYS_PER_LAYER 9

static int layer_inputs(const li_rcell *cell, int l) {
    return l == 0 ? cell->input_size : cell->hidden_size;
}

int li_layer_norm_lstm_check(const li_rcell *cell) {
    const int64_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    if (cell->n_arrays != ARRAYS_PER_LAYER * cell->layers || !(cell->eps >= 0.0f) ||
        !isfinite(cell->eps))
        return -10;
    for (int l = 0; l < cell->layers; l++) {
        const int64_t K = layer_inputs(cell, l);
        const int64_t want[ARRAYS_PER_LAYER] = {4 * Hp * K,
                                                li_rcell_packed_len(cell, 4, (int)Hp, (int)K),
                                                4 * Hp,
                                                4 * Hp * H,
                                                li_rcell_packed_len(cell, 4, (int)Hp, (int)H),
                                                4 * H,
                                                4 * H,
                                                H,
                                                H};
        for (int i = 0; i < ARRAYS_PER_LAYER; i++)
            if (cell->array_len[ARRAYS_PER_LAYER * l + i] != want[i])
                return -11 - i;
    }
    return 0;
}

/* Scratch: the chunk's projections [C][B][4Hp], the layer outputs between layers [C][B][H],
 * the recurrent products [B][4Hp], and one row's gates and activations (4H each) and tanh(c)
 * (H). */
size_t li_layer_norm_lstm_scratch(const li_rcell *cell, int T, int B) {
    const size_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    const size_t C = li_rcell_chunk_steps(T, B, (int)(4 * Hp));
    return C * B * 4 * Hp + (cell->layers > 1 ? C * B * H : 0) + (size_t)B * 4 * Hp + 9 * H +
           4 * LI_BLOCK;
}

size_t li_layer_norm_lstm_state(const li_rcell *cell, int s, int B) {
    return s < 2 ? (size_t)cell->layers * B * cell->hidden_size : 0;
}

/* One row's pointwise pass: gates from xp + rec (gate stride Hp), c and h updated in place,
 * h also written to out (may be NULL). */
static void row_update(const li_rcell *cell, const li_kernels *kern, int l, const float *xp,
                       const float *rec, float *c, float *h, float *out, float *z, float *act,
                       float *tc) {
    const int H = cell->hidden_size, Hp = li_rcell_padded(H);
    const float *const *a = (const float *const *)cell->array + ARRAYS_PER_LAYER * l;
    for (int g = 0; g < 4; g++)
        for (int u = 0; u < H; u++)
            z[g * H + u] = xp[g * Hp + u] + rec[g * Hp + u];
    kern->layernorm_rows(z, z, 1, 4 * (size_t)H, a[5], a[6], cell->eps);
    kern->activation_array(LI_ACT_SIGMOID, z, act, 2 * (size_t)H);         /* i, f */
    kern->activation_array(LI_ACT_TANH, z + 2 * H, act + 2 * H, (size_t)H); /* g */
    kern->activation_array(LI_ACT_SIGMOID, z + 3 * H, act + 3 * H, (size_t)H); /* o */
    const float *i_g = act, *f_g = act + H, *g_g = act + 2 * H, *o_g = act + 3 * H;
    for (int u = 0; u < H; u++)
        tc[u] = f_g[u] * c[u] + i_g[u] * g_g[u];
    kern->layernorm_rows(tc, c, 1, (size_t)H, a[7], a[8], cell->eps);
    kern->activation_array(LI_ACT_TANH, c, tc, (size_t)H);
    for (int u = 0; u < H; u++)
        h[u] = o_g[u] * tc[u];
    if (out != NULL)
        for (int u = 0; u < H; u++)
            out[u] = h[u];
}

int li_layer_norm_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                           const li_rcell_io *io) {
    const int H = cell->hidden_size, Hp = li_rcell_padded(H), L = cell->layers;
    const int T = io->T, B = io->B, G = 4;
    if (io->state[0] == NULL || io->state[1] == NULL)
        return -2;
    const int C = li_rcell_chunk_steps(T, B, G * Hp);
    float *xp = io->scratch;
    float *between = xp + (size_t)C * B * G * Hp;
    float *rec = between + (L > 1 ? (size_t)C * B * H : 0);
    float *z = rec + (size_t)B * G * Hp, *act = z + 4 * H, *tc = act + 4 * H;
    const float *const *a = (const float *const *)cell->array;
    for (int t0 = 0; t0 < T; t0 += C) {
        const int steps = T - t0 < C ? T - t0 : C;
        for (int l = 0; l < L; l++) {
            const float *const *w = a + ARRAYS_PER_LAYER * l;
            const int top = l == L - 1;
            if (l == 0)
                li_rcell_project(kern, sgemm, cell, w[0], w[1], G, Hp, cell->input_size, w[2],
                                 io->x + (size_t)t0 * B * io->ldx, io->ldx, steps * B, xp,
                                 io->prep);
            else
                li_rcell_project(kern, sgemm, cell, w[0], w[1], G, Hp, H, w[2], between, H,
                                 steps * B, xp, io->prep);
            float *h = io->state[0] + (size_t)l * B * H, *c = io->state[1] + (size_t)l * B * H;
            for (int s = 0; s < steps; s++) {
                li_rcell_recurrent(kern, sgemm, cell, w[3], w[4], G, Hp, H, h, H, B, rec,
                                   io->prep);
                for (int b = 0; b < B; b++) {
                    float *out;
                    if (top)
                        out = io->y == NULL ? NULL
                                            : io->y + (ptrdiff_t)(t0 + s) * io->y_ts +
                                                  (ptrdiff_t)b * io->y_bs;
                    else
                        out = between + ((size_t)s * B + b) * H;
                    row_update(cell, kern, l, xp + ((size_t)s * B + b) * G * Hp,
                               rec + (size_t)b * G * Hp, c + (size_t)b * H, h + (size_t)b * H,
                               out, z, act, tc);
                }
            }
        }
    }
    return 0;
}
