/*
 * The clockwork RNN of CELLS.md (Koutnik et al. 2014). The H units form M equal modules of
 * k = H / M units; module m is active at step t iff t mod periods[m] == 0 and reads the
 * state of modules n >= m only:
 *
 *     active m:   h_m,t = tanh(W_m x_t + b_m + sum_{n >= m} R_mn h_n,t-1)
 *     inactive m: h_m,t = h_m,t-1
 *
 * A step computes only the active modules, each over the columns of modules n >= m: module m
 * has its own packed rows [W_m | R_m restricted to the columns [m*k, H)], so an active module
 * costs one packed matvec over K_m = I + H - m*k (its input projection and its recurrence
 * together, on the input row [x_t ; h_{t-1}[m*k:H]] gathered for the module's active rows)
 * and an inactive one nothing. Updating the modules in ascending order in place is exact:
 * module m writes units [m*k, (m+1)*k), which only modules n <= m (done this step) read.
 *
 * One accumulator chain per block of units would make a batch-1 step wait on FMA latency, so
 * a module's k units are split into G "gates" of k/G units (G = 4 or 2 when that costs no
 * padding: k % G == 0 and G * padded(k/G) <= padded(k), else 1), whose blocks the packed
 * matvec accumulates side by side. Each batch row has its own step counter, so rows at
 * different t (a pool's sessions) may have different active modules: each module gathers
 * its active rows.
 *
 * Arrays (kg = k / G, kgp = kg padded to LI_BLOCK, nbg = kgp / LI_BLOCK):
 *   [0] periods   int32 [M + 1]: the M periods, ascending, positive, then their lcm
 *                 (<= 2^24; the check verifies it, so a step need not recompute it)
 *   [1] a_modules per module m, pack_gate_blocks([W_m | R[m*k:(m+1)*k, m*k:H]], G):
 *                 module after module, each li_rcell_packed_len(G, kgp, K_m) long
 *   [2] bias      per module m, its k biases gate-padded [G][kgp]: M * G * kgp floats
 * States: state[0] h [B][H]; state[1] the step counter of each row [B], t mod lcm(periods)
 * as a float (exact below 2^24). A counter that is not such a value is reduced to one
 * (floor, then mod lcm; NaN and infinities count as 0), so no state makes the run misbehave.
 */
#include "li_cells.h"

#include <math.h>
#include <string.h>

#define N_ARRAYS 3
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

/* The gates a module of k units is split into (see the top). */
static int module_gates(int k) {
    for (int G = 4; G >= 2; G /= 2)
        if (k % G == 0 && G * li_rcell_padded(k / G) <= li_rcell_padded(k))
            return G;
    return 1;
}

/* Elements of module m's packed matrix in the cell's weight format. */
static int64_t module_len(const li_rcell *cell, int k, int m) {
    const int G = module_gates(k);
    return li_rcell_packed_len(cell, G, li_rcell_padded(k / G),
                               cell->input_size + cell->hidden_size - m * k);
}

int li_clockwork_rnn_check(const li_rcell *cell) {
    const int M = cell->modules, H = cell->hidden_size;
    if (cell->layers != 1 || M < 1 || M > LI_RCELL_MAX_MODULES || H % M != 0 ||
        cell->n_arrays != N_ARRAYS)
        return -10;
    if (cell->array_len[0] != M + 1)
        return -11;
    const int32_t *periods = (const int32_t *)cell->array[0];
    for (int m = 0; m < M; m++)
        if (periods[m] < 1 || (m > 0 && periods[m] <= periods[m - 1]))
            return -11;
    const long lcm = periods_lcm(periods, M);
    if (lcm < 0 || periods[M] != lcm)
        return -11;
    const int k = H / M, G = module_gates(k);
    int64_t a_total = 0;
    for (int m = 0; m < M; m++)
        a_total += module_len(cell, k, m);
    if (cell->array_len[1] != a_total)
        return -12;
    if (cell->array_len[2] != (int64_t)M * G * li_rcell_padded(k / G))
        return -13;
    return 0;
}

/* Scratch: the gathered input rows [B][I + H], the products [B][G*kgp], the counters and one
 * module's active rows [B] each, one row's pre-activations [k]. */
size_t li_clockwork_rnn_scratch(const li_rcell *cell, int T, int B) {
    (void)T;
    const int k = cell->hidden_size / cell->modules, G = module_gates(k);
    const size_t out = (size_t)G * li_rcell_padded(k / G);
    return (size_t)B * (cell->input_size + cell->hidden_size + out + 2) + k + 4 * LI_BLOCK;
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
    (void)sgemm; /* every product is a packed matvec over one step's active rows */
    const int H = cell->hidden_size, I = cell->input_size, M = cell->modules, k = H / M;
    const int G = module_gates(k), kg = k / G, kgp = li_rcell_padded(kg), nbg = kgp / LI_BLOCK;
    const int T = io->T, B = io->B, ldo = G * kgp;
    if (io->state[0] == NULL || io->state[1] == NULL)
        return -2;
    const int32_t *periods = (const int32_t *)cell->array[0];
    const long lcm = periods[M]; /* checked to be their lcm */
    const void *a_mod = cell->array[1];
    const float *bias = cell->array[2];
    float *in = io->scratch, *out = in + (size_t)B * (I + H), *count = out + (size_t)B * ldo;
    float *rows = count + B, *z = rows + B;
    float *h = io->state[0];
    for (int b = 0; b < B; b++)
        count[b] = (float)reduced_counter(io->state[1][b], lcm);
    for (int t = 0; t < T; t++) {
        const float *xt = io->x + (size_t)t * B * io->ldx;
        const void *a_m = a_mod;
        for (int m = 0; m < M; m++) {
            const int K = I + H - m * k;
            const void *am = a_m;
            a_m = li_rcell_packed_at(cell, a_m, li_rcell_packed_len(cell, G, kgp, K));
            const int p = periods[m], pow2 = (p & (p - 1)) == 0; /* 2^i: a mask, no idiv */
            int n = 0;
            for (int b = 0; b < B; b++) { /* counters are whole numbers below 2^24 */
                const int c = (int)count[b];
                if (pow2 ? (c & (p - 1)) == 0 : c % p == 0)
                    rows[n++] = (float)b;
            }
            if (n == 0)
                continue;
            for (int j = 0; j < n; j++) { /* [x_t ; h[m*k:H]] of each active row */
                const int b = (int)rows[j];
                memcpy(in + (size_t)j * K, xt + (size_t)b * io->ldx, (size_t)I * sizeof(float));
                memcpy(in + (size_t)j * K + I, h + (size_t)b * H + (size_t)m * k,
                       (size_t)(K - I) * sizeof(float));
            }
            li_rcell_matvec(kern, cell, am, K, G, kgp, 0, nbg, in, K, n, bias + (size_t)m * ldo,
                            out, kgp, ldo, io->prep);
            for (int j = 0; j < n; j++) {
                const float *o = out + (size_t)j * ldo;
                if (kg != kgp) { /* the gates' units side by side, without their padding */
                    for (int g = 0; g < G; g++)
                        memcpy(z + g * kg, o + g * kgp, (size_t)kg * sizeof(float));
                    o = z;
                }
                kern->activation_array(LI_ACT_TANH, o, h + (size_t)rows[j] * H + (size_t)m * k,
                                       (size_t)k);
            }
        }
        for (int b = 0; b < B; b++) {
            count[b] = count[b] + 1.0f == (float)lcm ? 0.0f : count[b] + 1.0f;
            if (io->y != NULL)
                memcpy(io->y + (ptrdiff_t)t * io->y_ts + (ptrdiff_t)b * io->y_bs,
                       h + (size_t)b * H, (size_t)H * sizeof(float));
        }
    }
    for (int b = 0; b < B; b++)
        io->state[1][b] = count[b];
    return 0;
}
