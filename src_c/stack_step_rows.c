/*
 * One timestep for a subset of the rows of a state slab (serving many streams: one row per
 * session, see lstm_infer/pool.py). The rows' states are gathered into contiguous batch
 * buffers, li_stack_step advances them as one batch of n, and they are scattered back only
 * when the step succeeded: rows not listed, and every row on failure, keep their state.
 * Portable C, no -m flags.
 */
#include <string.h>

#include "li_kernels.h"

/* Floats of state one batch row carries through the stack (h of every layer, c of LSTMs). */
static size_t row_state_floats(const li_cell *const *cells, int n_layers) {
    size_t n = 0;
    for (int l = 0; l < n_layers; ++l) {
        n += (size_t)cells[l]->state_size;
        if (cells[l]->cell == LI_CELL_LSTM) n += (size_t)cells[l]->hidden_size;
    }
    return n;
}

size_t li_stack_step_rows_scratch_floats(const li_cell *const *cells, int n_layers, int B) {
    return li_stack_step_scratch_floats(cells, n_layers, B) +
           (size_t)B * row_state_floats(cells, n_layers);
}

int li_stack_step_rows(const li_cell *const *cells, int n_layers, const li_kernels *kern,
                       int capacity, int n, const int32_t *rows, const float *x,
                       const int64_t *tokens, float *const *h_slab, float *const *c_slab,
                       float **h_rows, float **c_rows, float *y, float *scratch) {
    if (!cells || n_layers <= 0 || n <= 0 || n > capacity || !rows || !h_slab || !c_slab ||
        !h_rows || !c_rows || !scratch)
        return -1;
    for (int i = 0; i < n; ++i)
        if (rows[i] < 0 || rows[i] >= capacity) return -5;
    /* Gathered states live after li_stack_step's own scratch. */
    float *gathered = scratch + li_stack_step_scratch_floats(cells, n_layers, n);
    for (int l = 0; l < n_layers; ++l) {
        const li_cell *cell = cells[l];
        const size_t Hr = (size_t)cell->state_size, H = (size_t)cell->hidden_size;
        if (cell->cell == LI_CELL_LSTM && !c_slab[l]) return -2;
        h_rows[l] = gathered;
        gathered += (size_t)n * Hr;
        for (int i = 0; i < n; ++i)
            memcpy(h_rows[l] + (size_t)i * Hr, h_slab[l] + (size_t)rows[i] * Hr,
                   sizeof(float) * Hr);
        c_rows[l] = NULL;
        if (cell->cell == LI_CELL_LSTM) {
            c_rows[l] = gathered;
            gathered += (size_t)n * H;
            for (int i = 0; i < n; ++i)
                memcpy(c_rows[l] + (size_t)i * H, c_slab[l] + (size_t)rows[i] * H,
                       sizeof(float) * H);
        }
    }
    const int rc = li_stack_step(cells, n_layers, kern, n, x, tokens, h_rows, c_rows, y, scratch);
    if (rc != 0) return rc;
    for (int l = 0; l < n_layers; ++l) {
        const size_t Hr = (size_t)cells[l]->state_size, H = (size_t)cells[l]->hidden_size;
        for (int i = 0; i < n; ++i) {
            memcpy(h_slab[l] + (size_t)rows[i] * Hr, h_rows[l] + (size_t)i * Hr,
                   sizeof(float) * Hr);
            if (c_rows[l])
                memcpy(c_slab[l] + (size_t)rows[i] * H, c_rows[l] + (size_t)i * H,
                       sizeof(float) * H);
        }
    }
    return 0;
}
