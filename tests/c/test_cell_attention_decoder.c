/*
 * The attention decoder cell (src_c/cell_attention_decoder.c) against a naive double-precision
 * reference of CELLS.md's equations, under AddressSanitizer and UBSan
 * (tests/test_c_kernels_sanitized.py builds and runs it). The test packs its own random
 * weights in the layout the C file documents; every array is allocated to its exact length,
 * so a read one element too far is a sanitizer report. Every attention kind, several T, B, H
 * (H not a multiple of 16; T * B above and below the sgemm threshold), with and without
 * lengths, greedy generation, on every usable kernel table with a naive column-major sgemm.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cell_attention_decoder.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            failures++;                                                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                     \
            printf(__VA_ARGS__);                                                            \
            printf("\n");                                                                   \
        }                                                                                   \
    } while (0)

static unsigned seed_state = 1;

static float urand(float scale) {
    seed_state = seed_state * 1103515245u + 12345u;
    return ((float)((seed_state >> 8) & 0xffff) / 65536.0f - 0.5f) * 2.0f * scale;
}

static float *randoms(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = urand(scale);
    return p;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static void naive_sgemm(char *ta, char *tb, int *m, int *n, int *k, float *alpha, float *a,
                        int *lda, float *b, int *ldb, float *beta, float *c, int *ldc) {
    for (int j = 0; j < *n; j++)
        for (int i = 0; i < *m; i++) {
            double acc = 0.0;
            for (int p = 0; p < *k; p++) {
                float av = (*ta == 'N') ? a[i + p * *lda] : a[p + i * *lda];
                float bv = (*tb == 'N') ? b[p + j * *ldb] : b[j + p * *ldb];
                acc += (double)av * bv;
            }
            float *cv = &c[i + j * *ldc];
            *cv = (float)(*alpha * acc + (*beta != 0.0f ? *beta * *cv : 0.0f));
        }
}

static int padded(int h) { return (h + LI_BLOCK - 1) / LI_BLOCK * LI_BLOCK; }

/* pack_gate_blocks of lstm_infer._plan for float32: (G*H, K) row-major, column c0.. of a
 * wider matrix (ld floats per row) -> [ceil(H/16)][K][G][16], zero padded. */
static float *pack(const float *w, int ld, int c0, int G, int H, int K) {
    const int Hp = padded(H);
    float *p = zeros((size_t)Hp * K * G);
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++)
            for (int k = 0; k < K; k++)
                p[(((size_t)(u / LI_BLOCK) * K + k) * G + g) * LI_BLOCK + u % LI_BLOCK] =
                    w[(size_t)(g * H + u) * ld + c0 + k];
    return p;
}

/* (G*H, K) -> [G*Hp][K], padding rows zero. */
static float *rows_padded(const float *w, int ld, int c0, int G, int H, int K) {
    const int Hp = padded(H);
    float *p = zeros((size_t)G * Hp * K);
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++)
            for (int k = 0; k < K; k++)
                p[(size_t)(g * Hp + u) * K + k] = w[(size_t)(g * H + u) * ld + c0 + k];
    return p;
}

static float *vector_padded(const float *v, int G, int H) {
    const int Hp = padded(H);
    float *p = zeros((size_t)G * Hp);
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++)
            p[g * Hp + u] = v[g * H + u];
    return p;
}

typedef struct {
    int attention, E, H, Dm, A, F, K, V;
    float *w_ih, *w_hh, *b_ih, *b_hh; /* (4H, E+Dm), (4H, H), 4H, 4H */
    float *wq, *wm, *v, *eb, *wf, *wl, *wg; /* (A,H) (A,Dm) (A) (A) (F,2,K) (A,F) (H,Dm) */
    float *head_w, *head_b, *emb;          /* (V, H+Dm), V, (V, E) */
} model;

static model make_model(int attention, int E, int H, int Dm, int A, int F, int K, int V) {
    model m = {attention, E, H, Dm, A, F, K, V};
    m.w_ih = randoms((size_t)4 * H * (E + Dm), 0.6f);
    m.w_hh = randoms((size_t)4 * H * H, 0.6f);
    m.b_ih = randoms(4 * (size_t)H, 0.6f);
    m.b_hh = randoms(4 * (size_t)H, 0.6f);
    m.wq = randoms((size_t)A * H, 0.6f);
    m.wm = randoms((size_t)A * Dm, 0.6f);
    m.v = randoms(A, 0.6f);
    m.eb = randoms(A, 0.6f);
    m.wf = randoms((size_t)F * 2 * K, 0.6f);
    m.wl = randoms((size_t)A * F, 0.6f);
    m.wg = randoms((size_t)H * Dm, 0.6f);
    m.head_w = randoms((size_t)V * (H + Dm), 2.0f);
    m.head_b = randoms(V, 0.6f);
    m.emb = randoms((size_t)V * E, 1.0f);
    return m;
}

static void free_model(model *m) {
    float *all[] = {m->w_ih, m->w_hh, m->b_ih, m->b_hh, m->wq, m->wm, m->v,
                    m->eb,   m->wf,   m->wl,   m->wg,   m->head_w, m->head_b, m->emb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
}

/* The cell's 14 arrays in the documented layout (with the head when with_head). */
typedef struct {
    void *array[14];
    int64_t len[14];
    int32_t sizes[5];
    li_rcell cell;
} packed_cell;

static void pack_cell(const model *m, int with_head, packed_cell *p) {
    const int H = m->H, E = m->E, Dm = m->Dm, A = m->A, Hp = padded(H), Ap = padded(A);
    const int energy =
        m->attention == LI_ATTENTION_ADDITIVE || m->attention == LI_ATTENTION_LOCATION;
    const int Kw = energy ? A : m->attention == LI_ATTENTION_GENERAL ? H : 0;
    const int V = with_head ? m->V : 0;
    memset(p, 0, sizeof *p);
    p->sizes[0] = m->attention;
    p->sizes[1] = Dm;
    p->sizes[2] = A;
    p->sizes[3] = m->attention == LI_ATTENTION_LOCATION ? m->K : 0;
    p->sizes[4] = V;
    float *bias = malloc(4 * (size_t)H * sizeof(float));
    for (int i = 0; i < 4 * H; i++)
        bias[i] = m->b_ih[i] + m->b_hh[i];
    float *wch = malloc((size_t)4 * H * (Dm + H) * sizeof(float)); /* [W_ctx | R] */
    for (int r = 0; r < 4 * H; r++) {
        memcpy(wch + (size_t)r * (Dm + H), m->w_ih + (size_t)r * (E + Dm) + E, Dm * sizeof(float));
        memcpy(wch + (size_t)r * (Dm + H) + Dm, m->w_hh + (size_t)r * H, H * sizeof(float));
    }
    const float *kw = energy ? m->wm : m->wg;
    p->array[0] = malloc(sizeof p->sizes);
    memcpy(p->array[0], p->sizes, sizeof p->sizes);
    p->len[0] = 5;
    p->array[1] = rows_padded(m->w_ih, E + Dm, 0, 4, H, E);
    p->len[1] = 4 * (int64_t)Hp * E;
    p->array[2] = pack(m->w_ih, E + Dm, 0, 4, H, E);
    p->len[2] = 4 * (int64_t)Hp * E;
    p->array[3] = vector_padded(bias, 4, H);
    p->len[3] = 4 * Hp;
    p->array[4] = pack(wch, Dm + H, 0, 4, H, Dm + H);
    p->len[4] = 4 * (int64_t)Hp * (Dm + H);
    p->array[5] = energy ? pack(m->wq, H, 0, 1, A, H) : zeros(0);
    p->len[5] = energy ? (int64_t)Ap * H : 0;
    p->array[6] = Kw ? rows_padded(kw, Dm, 0, 1, Kw, Dm) : zeros(0);
    p->len[6] = Kw ? (int64_t)padded(Kw) * Dm : 0;
    p->array[7] = Kw ? pack(kw, Dm, 0, 1, Kw, Dm) : zeros(0);
    p->len[7] = p->len[6];
    p->array[8] = zeros(energy ? A : 0);
    p->array[9] = zeros(energy ? A : 0);
    if (energy) {
        memcpy(p->array[8], m->v, A * sizeof(float));
        memcpy(p->array[9], m->eb, A * sizeof(float));
    }
    p->len[8] = p->len[9] = energy ? A : 0;
    const int loc = m->attention == LI_ATTENTION_LOCATION;
    /* [2][K][A]: filt[ch][k][a] = sum_f Wl[a][f] Wf[f][ch][k] */
    float *filt = zeros(loc ? (size_t)2 * m->K * A : 0);
    if (loc)
        for (int ch = 0; ch < 2; ch++)
            for (int k = 0; k < m->K; k++)
                for (int a = 0; a < A; a++) {
                    double s = 0.0;
                    for (int f = 0; f < m->F; f++)
                        s += (double)m->wl[a * m->F + f] * m->wf[(f * 2 + ch) * m->K + k];
                    filt[((size_t)ch * m->K + k) * A + a] = (float)s;
                }
    p->array[10] = filt;
    p->len[10] = loc ? (int64_t)2 * m->K * A : 0;
    p->array[11] = V ? pack(m->head_w, H + Dm, 0, 1, V, H + Dm) : zeros(0);
    p->len[11] = V ? (int64_t)padded(V) * (H + Dm) : 0;
    p->array[12] = V ? vector_padded(m->head_b, 1, V) : zeros(0);
    p->len[12] = V ? padded(V) : 0;
    p->array[13] = zeros(V ? (size_t)V * E : 0);
    if (V)
        memcpy(p->array[13], m->emb, (size_t)V * E * sizeof(float));
    p->len[13] = V ? (int64_t)V * E : 0;
    free(bias);
    free(wch);
    p->cell.kind = LI_RCELL_ATTENTION_DECODER;
    p->cell.input_size = E;
    p->cell.hidden_size = H;
    p->cell.layers = 1;
    p->cell.n_arrays = 14;
    p->cell.array = (const void *const *)p->array;
    p->cell.array_len = p->len;
}

static void free_cell(packed_cell *p) {
    for (int i = 0; i < 14; i++)
        free(p->array[i]);
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

/* One reference step on row state (double): h, c (H), ctx (Dm), alpha, cum (S). */
static void ref_step(const model *m, const float *M, int S, int B, int b, int n, const double *y,
                     double *h, double *c, double *ctx, double *alpha, double *cum,
                     double *out) {
    const int H = m->H, E = m->E, Dm = m->Dm, A = m->A, Kk = m->K, P = (Kk - 1) / 2;
    double *g = malloc(4 * (size_t)H * sizeof(double));
    for (int r = 0; r < 4 * H; r++) {
        double s = (double)m->b_ih[r] + m->b_hh[r];
        for (int k = 0; k < E; k++)
            s += (double)m->w_ih[(size_t)r * (E + Dm) + k] * y[k];
        for (int k = 0; k < Dm; k++)
            s += (double)m->w_ih[(size_t)r * (E + Dm) + E + k] * ctx[k];
        for (int k = 0; k < H; k++)
            s += (double)m->w_hh[(size_t)r * H + k] * h[k];
        g[r] = s;
    }
    for (int u = 0; u < H; u++) {
        c[u] = sigm(g[H + u]) * c[u] + sigm(g[u]) * tanh(g[2 * H + u]);
        h[u] = sigm(g[3 * H + u]) * tanh(c[u]);
    }
    double *e = malloc((size_t)S * sizeof(double));
    double *feat = malloc((size_t)(m->F + 1) * sizeof(double));
    for (int j = 0; j < n; j++) {
        const float *mj = M + ((size_t)j * B + b) * Dm;
        double s = 0.0;
        if (m->attention == LI_ATTENTION_DOT) {
            for (int k = 0; k < H; k++)
                s += h[k] * mj[k];
        } else if (m->attention == LI_ATTENTION_GENERAL) {
            for (int k = 0; k < H; k++) {
                double key = 0.0;
                for (int d = 0; d < Dm; d++)
                    key += (double)m->wg[(size_t)k * Dm + d] * mj[d];
                s += h[k] * key;
            }
        } else {
            if (m->attention == LI_ATTENTION_LOCATION)
                for (int f = 0; f < m->F; f++) {
                    double z = 0.0;
                    for (int ch = 0; ch < 2; ch++)
                        for (int k = 0; k < Kk; k++) {
                            const int at = j + k - P;
                            if (at >= 0 && at < S)
                                z += (double)m->wf[(f * 2 + ch) * Kk + k] *
                                     (ch == 0 ? alpha[at] : cum[at]);
                        }
                    feat[f] = z;
                }
            for (int a = 0; a < A; a++) {
                double z = m->eb[a];
                for (int k = 0; k < H; k++)
                    z += (double)m->wq[(size_t)a * H + k] * h[k];
                for (int d = 0; d < Dm; d++)
                    z += (double)m->wm[(size_t)a * Dm + d] * mj[d];
                if (m->attention == LI_ATTENTION_LOCATION)
                    for (int f = 0; f < m->F; f++)
                        z += (double)m->wl[a * m->F + f] * feat[f];
                s += (double)m->v[a] * tanh(z);
            }
        }
        e[j] = s;
    }
    double mx = e[0], sum = 0.0;
    for (int j = 1; j < n; j++)
        mx = e[j] > mx ? e[j] : mx;
    for (int j = 0; j < n; j++)
        sum += exp(e[j] - mx);
    for (int d = 0; d < Dm; d++)
        ctx[d] = 0.0;
    for (int j = 0; j < S; j++) {
        alpha[j] = j < n ? exp(e[j] - mx) / sum : 0.0;
        cum[j] += alpha[j];
        for (int d = 0; d < Dm && j < n; d++)
            ctx[d] += alpha[j] * M[((size_t)j * B + b) * Dm + d];
    }
    for (int u = 0; u < H; u++)
        out[u] = h[u];
    for (int d = 0; d < Dm; d++)
        out[H + d] = ctx[d];
    free(g);
    free(e);
    free(feat);
}

typedef struct {
    float *h, *c, *ctx, *alphas, *keys, *work, *scratch;
    li_attention_memory mem;
    li_rcell_io io;
} run_data;

static int setup(const packed_cell *p, const li_kernels *kern, const float *M, const int32_t *len,
                 int S, int B, size_t scratch, run_data *d) {
    memset(d, 0, sizeof *d);
    const int H = p->cell.hidden_size, Dm = p->sizes[1];
    d->h = zeros((size_t)B * H);
    d->c = zeros((size_t)B * H);
    d->ctx = zeros((size_t)B * Dm);
    d->alphas = zeros(2 * (size_t)B * S);
    d->keys = zeros(li_attention_keys_floats(&p->cell, S, B));
    d->work = zeros(li_attention_work_floats(&p->cell, S));
    d->scratch = zeros(scratch);
    d->mem.S = S;
    d->mem.B = B;
    d->mem.memory = M;
    d->mem.lengths = len;
    d->mem.keys = d->keys;
    d->mem.work = d->work;
    d->io.B = B;
    d->io.state[0] = d->h;
    d->io.state[1] = d->c;
    d->io.state[2] = d->ctx;
    d->io.state[3] = d->alphas;
    d->io.scratch = d->scratch;
    d->io.memory = &d->mem;
    return li_attention_set_memory(&p->cell, kern, naive_sgemm, &d->mem);
}

static void teardown(run_data *d) {
    free(d->h);
    free(d->c);
    free(d->ctx);
    free(d->alphas);
    free(d->keys);
    free(d->work);
    free(d->scratch);
}

static void test_run(const li_kernels *kern, int attention, int T, int B, int H, int S,
                     int with_lengths) {
    const int E = 6, Dm = attention == LI_ATTENTION_DOT ? H : 13, A = 7, F = 3, K = 5;
    model m = make_model(attention, E, H, Dm, A, F, K, 11);
    packed_cell p;
    pack_cell(&m, 0, &p);
    CHECK(li_rcell_check(&p.cell) == 0, "check %d", li_rcell_check(&p.cell));
    CHECK(li_rcell_output_size(&p.cell) == H + Dm, "output size");
    float *M = randoms((size_t)S * B * Dm, 1.0f), *x = randoms((size_t)T * B * E, 1.0f);
    int32_t *len = malloc(B * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        len[b] = b == 0 ? S : 1 + (b * 7) % S;
    const int O = H + Dm;
    float *y = zeros((size_t)T * B * O);
    run_data d;
    int rc = setup(&p, kern, M, with_lengths ? len : NULL, S, B,
                   li_rcell_scratch_floats(&p.cell, T, B), &d);
    CHECK(rc == 0, "set_memory %d", rc);
    d.io.T = T;
    d.io.x = x;
    d.io.ldx = E;
    d.io.y = y;
    d.io.y_ts = (ptrdiff_t)B * O;
    d.io.y_bs = O;
    rc = li_rcell_run(&p.cell, kern, naive_sgemm, &d.io);
    CHECK(rc == 0, "run %d", rc);
    double worst = 0.0;
    for (int b = 0; b < B; b++) {
        const int n = with_lengths ? len[b] : S;
        double *h = calloc(H, sizeof(double)), *c = calloc(H, sizeof(double));
        double *ctx = calloc(Dm, sizeof(double)), *al = calloc(S, sizeof(double));
        double *cum = calloc(S, sizeof(double)), *out = calloc(O, sizeof(double));
        double *yy = calloc(E, sizeof(double));
        for (int t = 0; t < T; t++) {
            for (int k = 0; k < E; k++)
                yy[k] = x[((size_t)t * B + b) * E + k];
            ref_step(&m, M, S, B, b, n, yy, h, c, ctx, al, cum, out);
            for (int o = 0; o < O; o++) {
                const double diff = fabs(out[o] - y[((size_t)t * B + b) * O + o]);
                worst = diff > worst ? diff : worst;
            }
        }
        for (int j = 0; j < S; j++) {
            double diff = fabs(al[j] - d.alphas[(size_t)b * S + j]);
            diff += fabs(cum[j] - d.alphas[(size_t)(B + b) * S + j]);
            worst = diff > worst ? diff : worst;
        }
        free(h), free(c), free(ctx), free(al), free(cum), free(out), free(yy);
    }
    CHECK(worst < 2e-5, "attention %d T %d B %d H %d S %d lengths %d: max error %g", attention,
          T, B, H, S, with_lengths, worst);
    teardown(&d);
    /* refused: a length out of range, no positions, a wrong array length */
    len[B - 1] = S + 1;
    CHECK(setup(&p, kern, M, len, S, B, 1, &d) == -3, "a length above S is refused");
    teardown(&d);
    len[B - 1] = 0;
    CHECK(setup(&p, kern, M, len, S, B, 1, &d) == -3, "a zero length is refused");
    teardown(&d);
    CHECK(setup(&p, kern, M, NULL, 0, B, 1, &d) == -2, "S = 0 is refused");
    teardown(&d);
    p.len[4]--;
    CHECK(li_rcell_check(&p.cell) != 0, "a short array is refused");
    p.len[4]++;
    free_cell(&p);
    free_model(&m);
    free(M), free(x), free(len), free(y);
}

static void test_generate(const li_kernels *kern, int attention) {
    const int E = 6, H = 20, Dm = attention == LI_ATTENTION_DOT ? H : 13, V = 11, B = 3, S = 7;
    const int steps = 8, O = H + Dm, eos = 4;
    model m = make_model(attention, E, H, Dm, 7, 3, 5, V);
    packed_cell p;
    pack_cell(&m, 1, &p);
    CHECK(li_rcell_check(&p.cell) == 0, "check with head %d", li_rcell_check(&p.cell));
    float *M = randoms((size_t)S * B * Dm, 1.0f);
    int32_t len[3] = {7, 2, 5};
    int64_t *tokens = malloc((size_t)B * steps * sizeof(int64_t));
    run_data d;
    CHECK(setup(&p, kern, M, len, S, B, li_attention_generate_scratch_floats(&p.cell, B), &d) == 0,
          "set_memory");
    const int ran = li_attention_generate(&p.cell, kern, naive_sgemm, &d.io, 1, eos, steps, 0.0f, 0,
                                         tokens);
    CHECK(ran >= 1 && ran <= steps, "generate ran %d", ran);
    int all_done = 1;
    for (int b = 0; b < B; b++) {
        double *h = calloc(H, sizeof(double)), *c = calloc(H, sizeof(double));
        double *ctx = calloc(Dm, sizeof(double)), *al = calloc(S, sizeof(double));
        double *cum = calloc(S, sizeof(double)), *out = calloc(O, sizeof(double));
        double *yy = calloc(E, sizeof(double));
        int tok = 1, done = 0;
        for (int t = 0; t < ran; t++) {
            int want = eos;
            if (!done) {
                for (int k = 0; k < E; k++)
                    yy[k] = m.emb[tok * E + k];
                ref_step(&m, M, S, B, b, len[b], yy, h, c, ctx, al, cum, out);
                double best = -INFINITY;
                for (int v = 0; v < V; v++) {
                    double l = m.head_b[v];
                    for (int o = 0; o < O; o++)
                        l += (double)m.head_w[(size_t)v * O + o] * out[o];
                    if (l > best)
                        best = l, want = v;
                }
                done = want == eos;
                tok = want;
            }
            CHECK(tokens[(size_t)b * steps + t] == want,
                  "attention %d row %d step %d: %lld, want %d", attention, b, t,
                  (long long)tokens[(size_t)b * steps + t], want);
        }
        all_done &= done;
        free(h), free(c), free(ctx), free(al), free(cum), free(out), free(yy);
    }
    CHECK(ran == steps || all_done, "stopped early at %d with rows running", ran);
    CHECK(li_attention_generate(&p.cell, kern, naive_sgemm, &d.io, V, eos, steps, 0.0f, 0,
                                tokens) < 0,
          "a bos beyond the vocabulary is refused");
    teardown(&d);
    free_cell(&p);
    free_model(&m);
    free(M), free(tokens);
}

int main(void) {
    static const char *names[LI_ISA_COUNT] = {"scalar", "avx2", "avx2vnni", "avx512",
                                              "avx512vnni", "avx512bf16", "amx"};
    unsigned usable = li_usable_isas();
    for (int isa = 0; isa < LI_ISA_COUNT; isa++) {
        const li_kernels *kern = li_kernels_for(isa);
        if (kern == NULL || !(usable & (1u << isa)))
            continue;
        int before = failures;
        for (int att = LI_ATTENTION_ADDITIVE; att <= LI_ATTENTION_LOCATION; att++) {
            test_run(kern, att, 5, 1, 20, 9, 1);   /* packed projections (5 rows) */
            test_run(kern, att, 12, 3, 17, 6, 1);  /* sgemm projections, chunks */
            test_run(kern, att, 3, 9, 33, 1, 0);   /* one position, no lengths */
            test_run(kern, att, 70, 2, 20, 11, 0); /* several chunks */
            test_run(kern, att, 4, 2, 18, 300, 1); /* several blocks of location windows */
            test_generate(kern, att);
        }
        printf("%-10s %s\n", names[isa], failures == before ? "ok" : "FAILED");
    }
    if (failures == 0)
        printf("all ok\n");
    return failures != 0;
}
