/*
 * The clockwork RNN of CELLS.md (Koutnik et al. 2014). The H units form M equal modules of
 * k = H / M units; module m is active at step t iff t mod periods[m] == 0 and reads the
 * state of modules n >= m only:
 *
 *     active m:   h_m,t = tanh(W_m x_t + b_m + sum_{n >= m} R_mn h_n,t-1)
 *     inactive m: h_m,t = h_m,t-1
 *
 * A step computes only the active modules, each over the columns of modules n >= m: module m
 * has its own packed rows of R restricted to the columns [m*k, H) (K_m = H - m*k), so an
 * active module costs one packed matvec over K_m and an inactive one nothing. Updating the
 * modules in ascending order in place is exact: module m writes units [m*k, (m+1)*k), which
 * only modules n <= m (already done this step) read.
 *
 * The input projection: chunks of many rows (whole sequences) take one product over every
 * module (li_rcell_project, sgemm); few rows (stream steps) one packed matvec per active
 * module. Each batch row has its own step counter, so rows at different t (a pool's
 * sessions) may have different active modules: a module's active rows are gathered when
 * they are not the whole batch.
 *
 * Arrays (kp = k padded to LI_BLOCK, nb = kp / LI_BLOCK):
 *   [0] periods    int32 [M], ascending, positive, lcm <= 2^24
 *   [1] w_pad      [M*kp][I]   input weights, each module's rows zero padded (sgemm)
 *   [2] w_packed   pack_gate_blocks(W, M): nb * I * M * LI_BLOCK floats (all modules)
 *   [3] bias_pad   [M*kp]
 *   [4] w_modules  per module m, pack_gate_blocks(W_m, 1): M * nb * I * LI_BLOCK floats
 *   [5] r_modules  per module m, pack_gate_blocks(R[m*k:(m+1)*k, m*k:H], 1): nb * K_m *
 *                  LI_BLOCK floats each, module after module
 * States: state[0] h [B][H]; state[1] the step counter of each row [B], t mod lcm(periods)
 * as a float (exact below 2^24). A counter that is not such a value is reduced to one
 * (floor, then mod lcm; NaN and infinities count as 0), so no state makes the run misbehave.
 */
#include "li_cells.h"

#include <math.h>
#include <string.h>

#define N_ARRAYS 6
#define MAX_LCM (1L << 24)

static long gcd(long a, long b) {
    while (b != 0) {
        long r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* lcm of the periods, or -1 when it exceeds MAX_LCM. */
static long periods_lcm(const int32_t *periods, int M) {
    long l = 1;
    for (int m = 0; m < M; m++) {
        l = l / gcd(l, periods[m]) * periods[m];
        if (l > MAX_LCM)
            return -1;
    }
    return l;
}

static int64_t r_module_floats(int H, int k, int m) {
    return (int64_t)(li_rcell_padded(k) / LI_BLOCK) * (H - (int64_t)m * k) * LI_BLOCK;
}

int li_clockwork_rnn_check(const li_rcell *cell) {
    const int M = cell->modules, H = cell->hidden_size, I = cell->input_size;
    if (cell->layers != 1 || M < 1 || M > LI_RCELL_MAX_MODULES || H % M != 0 ||
        cell->n_arrays != N_ARRAYS)
        return -10;
    if (cell->array_len[0] != M)
        return -11;
    const int32_t *periods = (const int32_t *)cell->array[0];
    for (int m = 0; m < M; m++)
        if (periods[m] < 1 || (m > 0 && periods[m] <= periods[m - 1]))
            return -11;
    if (periods_lcm(periods, M) < 0)
        return -11;
    const int k = H / M;
    const int64_t kp = li_rcell_padded(k), nb = kp / LI_BLOCK;
    int64_t r_total = 0;
    for (int m = 0; m < M; m++)
        r_total += r_module_floats(H, k, m);
    const int64_t want[N_ARRAYS] = {M,           M * kp * I, nb * I * M * LI_BLOCK, M * kp,
                                    M * nb * I * LI_BLOCK, r_total};
    for (int i = 1; i < N_ARRAYS; i++)
        if (cell->array_len[i] != want[i])
            return -11 - i;
    return 0;
}

/* Scratch: the chunk's projections [C][B][M*kp] (many rows) or one module's [B][kp] (few),
 * the recurrent products [B][kp], the gathered state rows [B][H] and input rows [B][I], the
 * counters and one module's active rows [B] each, one row's pre-activations [kp]. */
static int few_rows(int C, int B) { return (long)C * B < 8; }

size_t li_clockwork_rnn_scratch(const li_rcell *cell, int T, int B) {
    const size_t M = cell->modules, kp = li_rcell_padded(cell->hidden_size / cell->modules);
    const int C = li_rcell_chunk_steps(T, B, (int)(M * kp));
    const size_t proj = few_rows(C, B) ? (size_t)B * kp : (size_t)C * B * M * kp;
    return proj + (size_t)B * (kp + cell->hidden_size + cell->input_size + 2) + kp +
           4 * LI_BLOCK;
}

size_t li_clockwork_rnn_state(const li_rcell *cell, int s, int B) {
    if (s == 0)
        return (size_t)B * cell->hidden_size;
    return s == 1 ? (size_t)B : 0;
}

static double reduced_counter(float v, long lcm) {
    double t = floor((double)v);
    if (!isfinite(t))
        return 0.0;
    t = fmod(t, (double)lcm);
    return t < 0 ? t + (double)lcm : t;
}

int li_clockwork_rnn_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                         const li_rcell_io *io) {
    const int H = cell->hidden_size, I = cell->input_size, M = cell->modules, k = H / M;
    const int kp = li_rcell_padded(k), nb = kp / LI_BLOCK, T = io->T, B = io->B;
    if (io->state[0] == NULL || io->state[1] == NULL)
        return -2;
    const int32_t *periods = (const int32_t *)cell->array[0];
    const long lcm = periods_lcm(periods, M);
    const float *w_pad = cell->array[1], *w_packed = cell->array[2],
                *bias = cell->array[3], *w_mod = cell->array[4], *r_mod = cell->array[5];
    const int C = li_rcell_chunk_steps(T, B, M * kp), few = few_rows(C, B);
    float *xp = io->scratch;
    float *rec = xp + (few ? (size_t)B * kp : (size_t)C * B * M * kp);
    float *gh = rec + (size_t)B * kp, *gx = gh + (size_t)B * H, *count = gx + (size_t)B * I;
    float *rows = count + B, *z = rows + B;
    float *h = io->state[0];
    for (int b = 0; b < B; b++)
        count[b] = (float)reduced_counter(io->state[1][b], lcm);
    for (int t0 = 0; t0 < T; t0 += C) {
        const int steps = T - t0 < C ? T - t0 : C;
        const float *xc = io->x + (size_t)t0 * B * io->ldx;
        if (!few)
            li_rcell_project(kern, sgemm, w_pad, w_packed, M, kp, I, bias, xc, io->ldx,
                             steps * B, xp);
        for (int s = 0; s < steps; s++) {
            const float *xs = xc + (size_t)s * B * io->ldx;
            const float *r_m = r_mod;
            for (int m = 0; m < M; m++) {
                const int K = H - m * k;
                const float *rm = r_m;
                r_m += (size_t)nb * K * LI_BLOCK;
                int n = 0;
                for (int b = 0; b < B; b++)
                    if ((long)count[b] % periods[m] == 0)
                        rows[n++] = (float)b;
                if (n == 0)
                    continue;
                /* the active rows' state columns [m*k, H) and inputs, gathered unless all */
                const float *hin = h + (size_t)m * k, *xin = xs;
                int ldh = H, ldx = io->ldx;
                if (n < B) {
                    for (int j = 0; j < n; j++) {
                        const int b = (int)rows[j];
                        memcpy(gh + (size_t)j * K, h + (size_t)b * H + (size_t)m * k,
                               (size_t)K * sizeof(float));
                        if (few)
                            memcpy(gx + (size_t)j * I, xs + (size_t)b * io->ldx,
                                   (size_t)I * sizeof(float));
                    }
                    hin = gh, ldh = K, xin = gx, ldx = I;
                }
                kern->matvec_f32(rm, K, 1, 0, nb, hin, ldh, n, NULL, kp, rec, kp, kp);
                if (few)
                    kern->matvec_f32(w_mod + (size_t)m * nb * I * LI_BLOCK, I, 1, 0, nb, xin,
                                     ldx, n, bias + (size_t)m * kp, kp, xp, kp, kp);
                for (int j = 0; j < n; j++) {
                    const int b = (int)rows[j];
                    const float *p = few ? xp + (size_t)j * kp
                                         : xp + ((size_t)s * B + b) * M * kp + (size_t)m * kp;
                    const float *r = rec + (size_t)j * kp;
                    for (int u = 0; u < k; u++)
                        z[u] = p[u] + r[u];
                    kern->activation_array(LI_ACT_TANH, z, h + (size_t)b * H + (size_t)m * k,
                                           (size_t)k);
                }
            }
            for (int b = 0; b < B; b++) {
                count[b] = count[b] + 1.0f == (float)lcm ? 0.0f : count[b] + 1.0f;
                if (io->y != NULL)
                    memcpy(io->y + (ptrdiff_t)(t0 + s) * io->y_ts + (ptrdiff_t)b * io->y_bs,
                           h + (size_t)b * H, (size_t)H * sizeof(float));
            }
        }
    }
    for (int b = 0; b < B; b++)
        io->state[1][b] = count[b];
    return 0;
}
