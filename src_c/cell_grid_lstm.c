/*
 * The grid LSTM of CELLS.md, time x depth (Kalchbrenner et al. 2015). Per step t:
 *
 *     u_{-1} = P x_t,  n_{-1} = 0
 *     layer l:  h, m = LSTM(T_l [h_prev; u_{l-1}] + a_l ; cell m_prev)      time block
 *               u_l, n_l = LSTM(E_l [h; u_{l-1}] + b_l ; cell n_{l-1})      depth block
 *     y_t = u_{L-1}
 *
 * Only the time block recurs in time, so a chunk of steps runs layer by layer with big
 * products: u_{-1} = P x for the whole chunk (one product); then per layer one product for
 * the time block's inputs T_l[:, H:] u_{l-1} + a_l, the per-step recurrence (one packed
 * matvec of T_l[:, :H] over the batch, the table's fused LSTM update), and one product for
 * the depth block's gates over the chunk, E_l [h; u_{l-1}] + b_l (K = 2H: the chunk keeps
 * each row's h and u side by side), then its pointwise pass (the table's LSTM update with no
 * recurrent term) with the cells n of the layer below, which it replaces. A stream step
 * (T = 1) is the same code on B rows.
 *
 * Arrays (Hp = H padded to LI_BLOCK):
 *   [0] p_pad [Hp][I]  P, rows padded (sgemm)     [1] p_packed pack_gate_blocks(P, 1)
 *   layer l, 7 arrays from 2 + 7*l:
 *   [0] ti_pad [4*Hp][H]  T_l[:, H:] (over u), gate rows padded  [1] ti_packed its packed
 *   [2] a_pad [4*Hp]  time_bias                  [3] tr_packed pack_gate_blocks(T_l[:, :H], 4)
 *   [4] e_pad [4*Hp][2H]  E_l, gate rows padded  [5] e_packed pack_gate_blocks(E_l, 4), K = 2H
 *   [6] b_pad [4*Hp]  depth_bias
 * States: state[0] h, state[1] m, each [L][B][H].
 */
#include "li_cells.h"

#include <string.h>

#define INPUT_ARRAYS 2
#define LAYER_ARRAYS 7

int li_grid_lstm_check(const li_rcell *cell) {
    const int64_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    const int64_t I = cell->input_size;
    if (cell->n_arrays != INPUT_ARRAYS + LAYER_ARRAYS * cell->layers)
        return -10;
    const int hp = (int)Hp, h = (int)H;
    if (cell->array_len[0] != Hp * I ||
        cell->array_len[1] != li_rcell_packed_len(cell, 1, hp, (int)I))
        return -11;
    const int64_t want[LAYER_ARRAYS] = {4 * Hp * H,
                                        li_rcell_packed_len(cell, 4, hp, h),
                                        4 * Hp,
                                        li_rcell_packed_len(cell, 4, hp, h),
                                        4 * Hp * 2 * H,
                                        li_rcell_packed_len(cell, 4, hp, 2 * h),
                                        4 * Hp};
    for (int l = 0; l < cell->layers; l++)
        for (int i = 0; i < LAYER_ARRAYS; i++)
            if (cell->array_len[INPUT_ARRAYS + LAYER_ARRAYS * l + i] != want[i])
                return -20 - i;
    return 0;
}

/* Scratch: the chunk's rows [h; u] ([C][B][2H]), its projections ([C][B][4Hp]), the depth
 * cells n ([C][B][H]), the recurrent products [B][4Hp], and Hp zeros (the depth block's
 * absent recurrent term). */
size_t li_grid_lstm_scratch(const li_rcell *cell, int T, int B) {
    const size_t H = cell->hidden_size, Hp = li_rcell_padded(cell->hidden_size);
    const size_t C = li_rcell_chunk_steps(T, B, (int)(4 * Hp));
    return C * B * (3 * H + 4 * Hp) + (size_t)B * 4 * Hp + Hp;
}

size_t li_grid_lstm_state(const li_rcell *cell, int s, int B) {
    return s < 2 ? (size_t)cell->layers * B * cell->hidden_size : 0;
}

int li_grid_lstm_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                     const li_rcell_io *io) {
    const int H = cell->hidden_size, Hp = li_rcell_padded(H), L = cell->layers;
    const int T = io->T, B = io->B, G = 4;
    if (io->state[0] == NULL || io->state[1] == NULL)
        return -2;
    const int C = li_rcell_chunk_steps(T, B, G * Hp);
    float *hu = io->scratch;                    /* row r: h at hu + 2H r, u at + H */
    float *xp = hu + (size_t)C * B * 2 * H;
    float *n = xp + (size_t)C * B * G * Hp;
    float *rec = n + (size_t)C * B * H;
    float *zero = rec + (size_t)B * G * Hp;
    memset(zero, 0, (size_t)Hp * sizeof(float));
    const float *const *a = (const float *const *)cell->array;
    /* Both blocks are LSTM blocks with default activations: the table's fused update. */
    li_cell block;
    memset(&block, 0, sizeof block);
    block.cell = LI_CELL_LSTM;
    block.gates = 4;
    block.input_size = H;
    block.hidden_size = H;
    block.state_size = H;
    block.hidden_padded = Hp;
    block.default_activations = 1;
    block.act[0].kind = LI_ACT_SIGMOID; /* the scalar table's update reads the kinds */
    block.act[1].kind = LI_ACT_TANH;
    block.act[2].kind = LI_ACT_TANH;
    for (int k = 0; k < 3; k++)
        block.act[k].alpha = 1.0f;
    for (int t0 = 0; t0 < T; t0 += C) {
        const int steps = T - t0 < C ? T - t0 : C;
        const int rows = steps * B;
        /* u_{-1} = P x over the chunk, into each row's u half; n_{-1} = 0. */
        li_rcell_project(kern, sgemm, cell, a[0], a[1], 1, Hp, cell->input_size, NULL,
                         io->x + (size_t)t0 * B * io->ldx, io->ldx, rows, xp, io->prep);
        for (int r = 0; r < rows; r++)
            memcpy(hu + (size_t)r * 2 * H + H, xp + (size_t)r * Hp, (size_t)H * sizeof(float));
        memset(n, 0, (size_t)rows * H * sizeof(float));
        for (int l = 0; l < L; l++) {
            const float *const *w = a + INPUT_ARRAYS + LAYER_ARRAYS * l;
            float *h = io->state[0] + (size_t)l * B * H, *m = io->state[1] + (size_t)l * B * H;
            /* time block: inputs T_l[:, H:] u_{l-1} + a_l for the chunk, then the recurrence */
            li_rcell_project(kern, sgemm, cell, w[0], w[1], G, Hp, H, w[2], hu + H, 2 * H, rows,
                             xp, io->prep);
            for (int s = 0; s < steps; s++) {
                li_rcell_matvec(kern, cell, w[3], H, G, Hp, 0, Hp / LI_BLOCK, h, H, B, NULL,
                                rec, Hp, G * Hp, io->prep);
                for (int b = 0; b < B; b++) {
                    const size_t r = (size_t)s * B + b;
                    float *hb = h + (size_t)b * H;
                    kern->lstm_pointwise(&block, 0, H, xp + r * G * Hp, Hp,
                                         rec + (size_t)b * G * Hp, Hp, m + (size_t)b * H, hb);
                    memcpy(hu + r * 2 * H, hb, (size_t)H * sizeof(float));
                }
            }
            /* depth block: E_l [h; u_{l-1}] + b_l over the chunk, cell n_{l-1} -> n_l; u_l
             * replaces u_{l-1} in each row (the product above has read it). */
            li_rcell_project(kern, sgemm, cell, w[4], w[5], G, Hp, 2 * H, w[6], hu, 2 * H, rows,
                             xp, io->prep);
            for (int r = 0; r < rows; r++)
                kern->lstm_pointwise(&block, 0, H, xp + (size_t)r * G * Hp, Hp, zero, 0,
                                     n + (size_t)r * H, hu + (size_t)r * 2 * H + H);
        }
        if (io->y != NULL)
            for (int s = 0; s < steps; s++)
                for (int b = 0; b < B; b++)
                    memcpy(io->y + (ptrdiff_t)(t0 + s) * io->y_ts + (ptrdiff_t)b * io->y_bs,
                           hu + ((size_t)s * B + b) * 2 * H + H, (size_t)H * sizeof(float));
    }
    return 0;
}
