/*
 * The attention LSTM decoder of CELLS.md (Bahdanau 2014, Luong 2015, Chorowski 2015), one step:
 *
 *     h, c  = LSTMCell([y_t ; ctx_{t-1}], (h, c))
 *     e_j   = additive: v . tanh(Wq h + K_j + b)        K = M Wm^T (once per memory)
 *             general:  h . K_j                         K = Wg M   (once per memory)
 *             dot:      h . M_j
 *             location: v . tanh(Wq h + K_j + L_j + b), L_j = sum_{ch,k} Wlf[ch][k] x_ch[j+k-P]
 *     alpha = softmax over j < length (0 beyond);  ctx = sum_j alpha_j M_j
 *     alpha_cum += alpha;  out = [h ; ctx]  (H + Dm floats per row)
 *
 * The location convolution (F filters over [alpha_{t-1}; alpha_cum], kernel k, P = (k-1)/2
 * zeros each side, no bias) and location_dense (A x F) are one linear map, folded in Python
 * into one filter Wlf (A x 2 x k), stored [2][k][A]: the location term of the n valid
 * positions is then one sgemm, (n x 2k windows of the two weight rows) x Wlf, added onto the
 * energies (portable loops over n x 2k x A ran at a few GFLOP/s and were 2/3 of a step).
 *
 * The y part of the input projection of a chunk of steps is one product (li_rcell_project,
 * biases b_ih + b_hh folded); per step one packed matvec of [W_ctx | R] over the rows
 * [ctx ; h] of the batch, one of Wq over h (additive, location), then per row the LSTM
 * update and the attention, vectorised over the valid positions: the energies are the
 * table's tanh_energies, one pass over each key row (the sum with Wq h + b, its tanh and the
 * dot with v in registers; Zen 3 AVX2, additive, S = 100, A = 256: separate passes for the
 * sum, the tanh and the dot had written and read back two S x A arrays per row and step,
 * and the whole run took 1.3-1.4x as long). The memory and its keys come in io->memory
 * (cell_attention_decoder.h).
 *
 * Arrays (Hp = H padded to LI_BLOCK; A the attention size; Kw the key width: A for additive
 * and location, H for general, 0 for dot; Kp = Kw padded; V the vocabulary, 0 without head):
 *   [0]  sizes        int32 [5]: attention (enum li_attention_kind), Dm, A, kernel, V
 *   [1]  wy_pad       [4Hp][E]           the y columns of cell.weight_ih (sgemm)
 *   [2]  wy_packed    pack_gate_blocks(W_y, 4)
 *   [3]  bias_pad     [4Hp]              bias_ih + bias_hh
 *   [4]  wch_packed   pack_gate_blocks([W_ctx | weight_hh], 4), K = Dm + H
 *   [5]  query_packed pack_gate_blocks(Wq, 1), K = H        (additive, location; else empty)
 *   [6]  key_w_pad    [Kp][Dm]           Wm or Wg (sgemm)    (empty for dot)
 *   [7]  key_packed   pack_gate_blocks(Wm or Wg, 1), K = Dm  (empty for dot)
 *   [8]  energy       [A] v,  [9] energy_bias [A] b         (additive, location; else empty)
 *   [10] loc_filter   [2][kernel][A]     folded Wl Wf        (location; else empty)
 *   [11] head_packed  pack_gate_blocks(head.weight, 1), K = H + Dm   (V > 0; else empty)
 *   [12] head_bias    [Vp]               (V > 0; else empty)
 *   [13] embedding    [V][E]             (V > 0; else empty)
 * States: state[0] h [B][H], state[1] c [B][H], state[2] ctx [B][Dm], state[3] alpha then
 * alpha_cum, [2][B][S] (S is the memory's: li_rcell_state_floats gives 0 for it).
 */
#include "cell_attention_decoder.h"

#include <math.h>
#include <string.h>

#define N_ARRAYS 14

/* Positions whose location windows one sgemm takes (bounds the windows' work to
 * LOC_BLOCK x 2 x kernel floats, whatever the memory's length). */
#define LOC_BLOCK 128

typedef struct {
    int attention, E, H, Hp, Dm, A, Ap, Kw, Kp, kernel, V, Vp;
} sizes;

static sizes sizes_of(const li_rcell *cell) {
    const int32_t *s = (const int32_t *)cell->array[0];
    sizes z;
    z.attention = s[0];
    z.E = cell->input_size;
    z.H = cell->hidden_size;
    z.Hp = li_rcell_padded(z.H);
    z.Dm = s[1];
    z.A = s[2];
    z.Ap = li_rcell_padded(z.A);
    z.kernel = s[3];
    z.V = s[4];
    z.Vp = z.V > 0 ? li_rcell_padded(z.V) : 0;
    const int additive =
        z.attention == LI_ATTENTION_ADDITIVE || z.attention == LI_ATTENTION_LOCATION;
    z.Kw = additive ? z.A : z.attention == LI_ATTENTION_GENERAL ? z.H : 0;
    z.Kp = z.Kw > 0 ? li_rcell_padded(z.Kw) : 0;
    return z;
}

static int has_energy(const sizes *z) {
    return z->attention == LI_ATTENTION_ADDITIVE || z->attention == LI_ATTENTION_LOCATION;
}

#define SIZE_MAX_ (1 << 20)

int li_attention_decoder_check(const li_rcell *cell) {
    if (cell->n_arrays != N_ARRAYS || cell->layers != 1 || cell->array_len[0] != 5)
        return -10;
    const int32_t *s = (const int32_t *)cell->array[0];
    if (s[0] < LI_ATTENTION_ADDITIVE || s[0] > LI_ATTENTION_LOCATION || s[1] <= 0 ||
        s[1] > SIZE_MAX_ || s[2] <= 0 || s[2] > SIZE_MAX_ || s[3] < 0 || s[3] > 4096 ||
        s[4] < 0 || s[4] > SIZE_MAX_)
        return -11;
    const sizes z = sizes_of(cell);
    if (z.attention == LI_ATTENTION_DOT && z.H != z.Dm)
        return -12;
    if (z.attention == LI_ATTENTION_LOCATION && z.kernel % 2 == 0)
        return -13;
    const int64_t E = z.E, Hp = z.Hp, Dm = z.Dm, A = z.A, Kp = z.Kp;
    const int64_t V = z.V, Vp = z.Vp, e = has_energy(&z);
    const int64_t loc = z.attention == LI_ATTENTION_LOCATION;
    const int64_t want[N_ARRAYS] = {5,
                                    4 * Hp * E,
                                    li_rcell_packed_len(cell, 4, z.Hp, z.E),
                                    4 * Hp,
                                    li_rcell_packed_len(cell, 4, z.Hp, z.Dm + z.H),
                                    e ? li_rcell_packed_len(cell, 1, z.Ap, z.H) : 0,
                                    Kp * Dm,
                                    Kp ? li_rcell_packed_len(cell, 1, z.Kp, z.Dm) : 0,
                                    e * A,
                                    e * A,
                                    loc * 2 * z.kernel * A,
                                    V ? li_rcell_packed_len(cell, 1, z.Vp, z.H + z.Dm) : 0,
                                    Vp,
                                    V * E};
    for (int i = 1; i < N_ARRAYS; i++)
        if (cell->array_len[i] != want[i])
            return -13 - i;
    return 0;
}

int li_attention_decoder_output(const li_rcell *cell) {
    return cell->hidden_size + ((const int32_t *)cell->array[0])[1];
}

size_t li_attention_decoder_state(const li_rcell *cell, int s, int B) {
    const sizes z = sizes_of(cell);
    return s < 2 ? (size_t)B * z.H : s == 2 ? (size_t)B * z.Dm : 0;
}

/* Scratch: the chunk's y projections [C][B][4Hp], the recurrent products [B][4Hp], the rows
 * [ctx ; h] [B][Dm+H], the queries [B][Ap], one row's activations (4H) and tanh(c) (H). */
static size_t step_scratch(const sizes *z, int C, int B) {
    return (size_t)C * B * 4 * z->Hp + (size_t)B * 4 * z->Hp + (size_t)B * (z->Dm + z->H) +
           (size_t)B * z->Ap + 5 * (size_t)z->H + 4 * LI_BLOCK;
}

size_t li_attention_decoder_scratch(const li_rcell *cell, int T, int B) {
    const sizes z = sizes_of(cell);
    return step_scratch(&z, li_rcell_chunk_steps(T, B, 4 * z.Hp), B);
}

size_t li_attention_keys_floats(const li_rcell *cell, int S, int B) {
    const sizes z = sizes_of(cell);
    return (size_t)S * B * z.Kp;
}

/* Work: scores [S], q + b [A], the location energies before tanh [S][A], the location
 * windows of a block of positions [LOC_BLOCK][2][kernel]; then the prepared rows of the
 * keys' product (quantized weights). */
static size_t work_own_floats(const sizes *z, int S) {
    return (size_t)S + (has_energy(z) ? (size_t)S * z->A + z->A : 0) +
           (z->attention == LI_ATTENTION_LOCATION ? 2 * (size_t)LOC_BLOCK * z->kernel : 0) +
           LI_BLOCK;
}

size_t li_attention_work_floats(const li_rcell *cell, int S) {
    const sizes z = sizes_of(cell);
    return work_own_floats(&z, S) + li_rcell_prep_floats(cell);
}

int li_attention_set_memory(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                            li_attention_memory *mem) {
    if (cell == NULL || kern == NULL || sgemm == NULL || mem == NULL ||
        cell->kind != LI_RCELL_ATTENTION_DECODER || li_rcell_check(cell) != 0)
        return -1;
    if (mem->S <= 0 || mem->B <= 0 || mem->memory == NULL || mem->work == NULL)
        return -2;
    if (mem->lengths != NULL)
        for (int b = 0; b < mem->B; b++)
            if (mem->lengths[b] < 1 || mem->lengths[b] > mem->S)
                return -3;
    const sizes z = sizes_of(cell);
    if (z.Kw == 0)
        return 0;
    if (mem->keys == NULL)
        return -2;
    const float *const *a = (const float *const *)cell->array;
    li_rcell_project(kern, sgemm, cell, a[6], a[7], 1, z.Kp, z.Dm, NULL, mem->memory, z.Dm,
                     mem->S * mem->B, mem->keys, mem->work + work_own_floats(&z, mem->S));
    return 0;
}

/* One row's LSTM update from its projections (xp + rec, gate stride Hp). */
static void lstm_row(const li_kernels *kern, const sizes *z, const float *xp, const float *rec,
                     float *h, float *c, float *act, float *tc) {
    const int H = z->H, Hp = z->Hp;
    for (int g = 0; g < 4; g++)
        for (int u = 0; u < H; u++)
            act[g * H + u] = xp[g * Hp + u] + rec[g * Hp + u];
    kern->activation_array(LI_ACT_SIGMOID, act, act, 2 * (size_t)H);                 /* i, f */
    kern->activation_array(LI_ACT_TANH, act + 2 * H, act + 2 * H, (size_t)H);         /* g */
    kern->activation_array(LI_ACT_SIGMOID, act + 3 * H, act + 3 * H, (size_t)H);      /* o */
    for (int u = 0; u < H; u++)
        c[u] = act[H + u] * c[u] + act[u] * act[2 * H + u];
    kern->activation_array(LI_ACT_TANH, c, tc, (size_t)H);
    for (int u = 0; u < H; u++)
        h[u] = act[3 * H + u] * tc[u];
}

/* Sixteen independent partial sums: the compiler vectorises them (one serial sum would be
 * bound by the add latency over the S x A energies of every step). */
static float dot(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (int l = 0; l < 16; l++)
        s += acc[l];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* zz[j][:] += sum_{ch,k} Wlf[ch][k][:] x_ch[j + k - P] for the n valid positions j, x_0 =
 * alpha, x_1 = alpha_cum, zero outside [0, S): per block of positions, their windows
 * (rows x 2k, row-major in win) times Wlf (2k x A) in one sgemm (column-major: zz^T +=
 * Wlf^T win^T). */
static void add_location(li_sgemm_fn sgemm, const sizes *z, int S, int n, const float *alpha,
                         const float *alpha_cum, const float *filt, float *win, float *zz) {
    const int K = z->kernel, P = (K - 1) / 2;
    for (int j0 = 0; j0 < n; j0 += LOC_BLOCK) {
        const int rows = n - j0 < LOC_BLOCK ? n - j0 : LOC_BLOCK;
        for (int r = 0; r < rows; r++)
            for (int ch = 0; ch < 2; ch++) {
                const float *src = ch == 0 ? alpha : alpha_cum;
                float *w = win + ((size_t)r * 2 + ch) * K;
                for (int k = 0; k < K; k++) {
                    const int p = j0 + r + k - P;
                    w[k] = p >= 0 && p < S ? src[p] : 0.0f;
                }
            }
        char ta = 'N', tb = 'N';
        int m = z->A, cols = rows, inner = 2 * K, lda = z->A, ldb = 2 * K, ldc = z->A;
        float one = 1.0f;
        sgemm(&ta, &tb, &m, &cols, &inner, &one, (float *)filt, &lda, win, &ldb, &one,
              zz + (size_t)j0 * z->A, &ldc);
    }
}

/* Row b's attention after its h is new: scores, masked softmax into alpha (alpha_cum
 * updated), ctx. q: Wq h (additive, location). */
static void attend_row(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                       const sizes *z, const li_attention_memory *mem, int b, const float *h,
                       const float *q, float *ctx, float *alpha, float *alpha_cum) {
    const int S = mem->S, B = mem->B, A = z->A, Dm = z->Dm;
    const int n = mem->lengths == NULL ? S : mem->lengths[b];
    const float *const *a = (const float *const *)cell->array;
    float *e = mem->work;
    if (has_energy(z)) {
        const float *v = a[8], *eb = a[9];
        float *qb = e + S, *zz = qb + A, *win = zz + (size_t)S * A; /* q + b, energies */
        for (int i = 0; i < A; i++)
            qb[i] = q[i] + eb[i];
        if (z->attention == LI_ATTENTION_LOCATION) {
            /* zz = keys + the location term; the table adds qb as it takes the tanh */
            for (int j = 0; j < n; j++)
                memcpy(zz + (size_t)j * A, mem->keys + ((size_t)j * B + b) * z->Kp,
                       sizeof(float) * A);
            add_location(sgemm, z, S, n, alpha, alpha_cum, a[10], win, zz);
            kern->tanh_energies(qb, zz, (size_t)A, (size_t)n, (size_t)A, v, e);
        } else { /* straight from the keys, B * Kp floats apart */
            kern->tanh_energies(qb, mem->keys + (size_t)b * z->Kp, (size_t)B * z->Kp,
                                (size_t)n, (size_t)A, v, e);
        }
    } else {
        for (int j = 0; j < n; j++) {
            const float *k = z->attention == LI_ATTENTION_GENERAL
                                 ? mem->keys + ((size_t)j * B + b) * z->Kp
                                 : mem->memory + ((size_t)j * B + b) * Dm;
            e[j] = dot(h, k, z->H);
        }
    }
    /* Masked softmax: n >= 1 valid positions, so the sum is at least 1 (no NaN). */
    float m = e[0];
    for (int j = 1; j < n; j++)
        m = e[j] > m ? e[j] : m;
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        e[j] = expf(e[j] - m);
        sum += e[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int d = 0; d < Dm; d++)
        ctx[d] = 0.0f;
    for (int j = 0; j < S; j++) {
        const float w = j < n ? e[j] * inv : 0.0f;
        alpha[j] = w;
        alpha_cum[j] += w;
        if (j < n) {
            const float *mj = mem->memory + ((size_t)j * B + b) * Dm;
            for (int d = 0; d < Dm; d++)
                ctx[d] += w * mj[d];
        }
    }
}

typedef struct {
    float *h, *c, *ctx, *alpha, *alpha_cum;
} states;

/* One step over the batch from its y projections xp ([B][4Hp], biases in); row b's output
 * [h ; ctx] to out + b*ldo when out is not NULL. sc: the scratch after the projections. */
static void step(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                 const sizes *z, const li_attention_memory *mem, const states *st, int B,
                 const float *xp, float *out, ptrdiff_t ldo, float *sc, void *prep) {
    const int H = z->H, Hp = z->Hp, Dm = z->Dm, S = mem->S, K = Dm + H;
    const void *const *a = cell->array;
    float *rec = sc, *rows = rec + (size_t)B * 4 * Hp, *q = rows + (size_t)B * K;
    float *act = q + (size_t)B * z->Ap, *tc = act + 4 * H;
    for (int b = 0; b < B; b++) {
        memcpy(rows + (size_t)b * K, st->ctx + (size_t)b * Dm, sizeof(float) * Dm);
        memcpy(rows + (size_t)b * K + Dm, st->h + (size_t)b * H, sizeof(float) * H);
    }
    li_rcell_matvec(kern, cell, a[4], K, 4, Hp, 0, Hp / LI_BLOCK, rows, K, B, NULL, rec, Hp,
                    4 * Hp, prep);
    for (int b = 0; b < B; b++)
        lstm_row(kern, z, xp + (size_t)b * 4 * Hp, rec + (size_t)b * 4 * Hp,
                 st->h + (size_t)b * H, st->c + (size_t)b * H, act, tc);
    if (has_energy(z))
        li_rcell_matvec(kern, cell, a[5], H, 1, z->Ap, 0, z->Ap / LI_BLOCK, st->h, H, B, NULL,
                        q, z->Ap, z->Ap, prep);
    for (int b = 0; b < B; b++) {
        float *ctx = st->ctx + (size_t)b * Dm;
        attend_row(cell, kern, sgemm, z, mem, b, st->h + (size_t)b * H, q + (size_t)b * z->Ap,
                   ctx, st->alpha + (size_t)b * S, st->alpha_cum + (size_t)b * S);
        if (out != NULL) {
            float *o = out + (ptrdiff_t)b * ldo;
            memcpy(o, st->h + (size_t)b * H, sizeof(float) * H);
            memcpy(o + H, ctx, sizeof(float) * Dm);
        }
    }
}

static int states_of(const li_rcell_io *io, int S, states *st) {
    for (int s = 0; s < 4; s++)
        if (io->state[s] == NULL)
            return -2;
    st->h = io->state[0];
    st->c = io->state[1];
    st->ctx = io->state[2];
    st->alpha = io->state[3];
    st->alpha_cum = io->state[3] + (size_t)io->B * S;
    return 0;
}

static const li_attention_memory *memory_of(const li_rcell_io *io, const sizes *z) {
    const li_attention_memory *mem = (const li_attention_memory *)io->memory;
    if (mem == NULL || mem->B != io->B || mem->S <= 0 || mem->memory == NULL ||
        mem->work == NULL || (z->Kw > 0 && mem->keys == NULL))
        return NULL;
    return mem;
}

int li_attention_decoder_run(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                             const li_rcell_io *io) {
    const sizes z = sizes_of(cell);
    const li_attention_memory *mem = memory_of(io, &z);
    states st;
    if (mem == NULL || states_of(io, mem->S, &st) != 0)
        return -2;
    const int T = io->T, B = io->B, G = 4, Hp = z.Hp;
    const int C = li_rcell_chunk_steps(T, B, G * Hp);
    float *xp = io->scratch, *sc = xp + (size_t)C * B * G * Hp;
    const void *const *a = cell->array;
    for (int t0 = 0; t0 < T; t0 += C) {
        const int steps = T - t0 < C ? T - t0 : C;
        li_rcell_project(kern, sgemm, cell, a[1], a[2], G, Hp, z.E, a[3],
                         io->x + (size_t)t0 * B * io->ldx, io->ldx, steps * B, xp, io->prep);
        for (int s = 0; s < steps; s++) {
            float *out = io->y == NULL ? NULL : io->y + (ptrdiff_t)(t0 + s) * io->y_ts;
            step(cell, kern, sgemm, &z, mem, &st, B, xp + (size_t)s * B * G * Hp, out,
                 io->y_bs, sc, io->prep);
        }
    }
    return 0;
}

/* ---- generation --------------------------------------------------------------------- */

/* Scratch: the step's (C = 1), the embedded tokens [B][E], the outputs [B][H+Dm], the logits
 * [B][Vp], the finished flags as floats [B]. */
size_t li_attention_generate_scratch_floats(const li_rcell *cell, int B) {
    const sizes z = sizes_of(cell);
    return step_scratch(&z, 1, B) + (size_t)B * z.E + (size_t)B * (z.H + z.Dm) +
           (size_t)B * z.Vp + (size_t)B + li_rcell_prep_floats(cell);
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The token of one row's logits: argmax (temperature 0) or a draw (cell_attention_decoder.h). */
static int pick(const float *l, int V, float temperature, uint64_t *rng) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[best])
            best = v;
    if (temperature == 0.0f)
        return best;
    const double inv = 1.0 / temperature, top = l[best];
    double sum = 0.0;
    for (int v = 0; v < V; v++)
        sum += exp((l[v] - top) * inv);
    const double u = (double)(splitmix64(rng) >> 11) * 0x1.0p-53 * sum;
    double cum = 0.0;
    for (int v = 0; v < V; v++) {
        cum += exp((l[v] - top) * inv);
        if (cum > u)
            return v;
    }
    return best; /* u * sum at the very top (rounding): the likeliest token */
}

int li_attention_generate(const li_rcell *cell, const li_kernels *kern, li_sgemm_fn sgemm,
                          const li_rcell_io *io, int64_t bos, int64_t eos, int max_steps,
                          float temperature, uint64_t seed, int64_t *tokens) {
    if (cell == NULL || kern == NULL || sgemm == NULL || io == NULL || tokens == NULL ||
        cell->kind != LI_RCELL_ATTENTION_DECODER || io->B <= 0 || max_steps <= 0 ||
        io->scratch == NULL || !(temperature >= 0.0f) || !isfinite(temperature))
        return -1;
    const sizes z = sizes_of(cell);
    if (z.V <= 0 || bos < 0 || bos >= z.V || eos < -1 || eos >= z.V)
        return -1;
    const li_attention_memory *mem = memory_of(io, &z);
    states st;
    if (mem == NULL || states_of(io, mem->S, &st) != 0)
        return -2;
    const int B = io->B, E = z.E, O = z.H + z.Dm, Vp = z.Vp, G = 4, Hp = z.Hp;
    const void *const *a = cell->array;
    const float *emb = (const float *)a[13];
    float *xp = io->scratch, *sc = xp + (size_t)B * G * Hp;
    float *ybuf = io->scratch + step_scratch(&z, 1, B), *obuf = ybuf + (size_t)B * E;
    float *logits = obuf + (size_t)B * O, *done = logits + (size_t)B * Vp;
    void *prep = done + B;
    for (int b = 0; b < B; b++) {
        memcpy(ybuf + (size_t)b * E, emb + (size_t)bos * E, sizeof(float) * E);
        done[b] = 0.0f;
    }
    uint64_t rng = seed;
    int t = 0;
    while (t < max_steps) {
        li_rcell_project(kern, sgemm, cell, a[1], a[2], G, Hp, E, a[3], ybuf, E, B, xp, prep);
        step(cell, kern, sgemm, &z, mem, &st, B, xp, obuf, O, sc, prep);
        li_rcell_matvec(kern, cell, a[11], O, 1, Vp, 0, Vp / LI_BLOCK, obuf, O, B,
                        (const float *)a[12], logits, Vp, Vp, prep);
        int live = 0;
        for (int b = 0; b < B; b++) {
            int64_t tok;
            if (done[b] != 0.0f) {
                tok = eos;
            } else {
                tok = pick(logits + (size_t)b * Vp, z.V, temperature, &rng);
                if (tok == eos)
                    done[b] = 1.0f;
                else
                    live++;
            }
            tokens[(size_t)b * max_steps + t] = tok;
            memcpy(ybuf + (size_t)b * E, emb + (size_t)(tok < 0 ? 0 : tok) * E,
                   sizeof(float) * E);
        }
        t++;
        if (live == 0)
            break;
    }
    return t;
}
