/*
 * The cells of CELLS.md built from LSTM blocks (src_c/cell_depth_gated_lstm.c,
 * src_c/cell_grid_lstm.c) against naive double-precision references of CELLS.md's equations,
 * under AddressSanitizer and UBSan (tests/test_c_kernels_sanitized.py builds and runs it). The
 * test packs random weights itself in the layouts the C files document; every array, state
 * and scratch buffer is allocated to exactly its documented extent, so a kernel reading or
 * writing one float too far is a sanitizer report. Every usable kernel table runs, on few
 * rows (packed matvec) and many (a naive column-major sgemm), one chunk and several.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "li_cells.h"

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

static float uniform(float scale) {
    seed_state = seed_state * 1103515245u + 12345u;
    return ((float)((seed_state >> 8) & 0xffff) / 65536.0f - 0.5f) * 2.0f * scale;
}

static float *random_floats(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = uniform(scale);
    return p;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* Column-major sgemm of the BLAS interface: C = alpha op(A) op(B) + beta C. */
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

static int padded(int H) { return (H + LI_BLOCK - 1) / LI_BLOCK * LI_BLOCK; }

/* pack_gate_blocks(m, G) of lstm_infer/_plan.py: m is (G*H, K) row-major, the result
 * [ceil(H/16)][K][G][16], zero padded. */
static float *pack(const float *m, int G, int H, int K) {
    const int Hp = padded(H);
    float *out = zeros((size_t)Hp * K * G);
    for (int g = 0; g < G; g++)
        for (int u = 0; u < H; u++)
            for (int k = 0; k < K; k++)
                out[(((size_t)(u / LI_BLOCK) * K + k) * G + g) * LI_BLOCK + u % LI_BLOCK] =
                    m[((size_t)g * H + u) * K + k];
    return out;
}

/* (G*H, K) -> (G*Hp, K), each group's rows zero padded. */
static float *rows_padded(const float *m, int G, int H, int K) {
    const int Hp = padded(H);
    float *out = zeros((size_t)G * Hp * K);
    for (int g = 0; g < G; g++)
        memcpy(out + (size_t)g * Hp * K, m + (size_t)g * H * K, (size_t)H * K * sizeof(float));
    return out;
}

static float *vector_padded(const float *v, int G, int H) {
    const int Hp = padded(H);
    float *out = zeros((size_t)G * Hp);
    for (int g = 0; g < G; g++)
        memcpy(out + (size_t)g * Hp, v + (size_t)g * H, (size_t)H * sizeof(float));
    return out;
}

static double sig(double v) { return 1.0 / (1.0 + exp(-v)); }

/* The arrays of one cell under construction (each malloc'ed to its exact length). */
typedef struct {
    int n;
    const void *ptr[256];
    int64_t len[256];
} arrays;

static void add(arrays *a, float *p, int64_t len) {
    a->ptr[a->n] = p;
    a->len[a->n] = len;
    a->n++;
}

static void free_arrays(arrays *a) {
    for (int i = 0; i < a->n; i++)
        free((void *)a->ptr[i]);
}

/* Run the cell over x (T, B, I) on one kernel table, exact-size state and scratch; the final
 * states are copied to state_out[s] (n_states of them, each [L][B][H]). */
static void run_cell(const li_rcell *cell, const li_kernels *kern, int T, int B, const float *x,
                     float *y, int n_states, float **state_out) {
    li_rcell_io io;
    memset(&io, 0, sizeof io);
    io.T = T;
    io.B = B;
    /* x copied to an exact-size buffer so a read past the sequence is a report */
    float *xs = malloc((size_t)T * B * cell->input_size * sizeof(float));
    memcpy(xs, x, (size_t)T * B * cell->input_size * sizeof(float));
    io.x = xs;
    io.ldx = cell->input_size;
    io.y = y;
    io.y_ts = (ptrdiff_t)B * cell->hidden_size;
    io.y_bs = cell->hidden_size;
    for (int s = 0; s < n_states; s++) {
        CHECK(li_rcell_state_floats(cell, s, B) == (size_t)cell->layers * B * cell->hidden_size,
              "state %d floats", s);
        io.state[s] = zeros(li_rcell_state_floats(cell, s, B));
    }
    CHECK(li_rcell_state_floats(cell, n_states, B) == 0, "no state %d", n_states);
    io.scratch = malloc(li_rcell_scratch_floats(cell, T, B) * sizeof(float));
    int rc = li_rcell_run(cell, kern, naive_sgemm, &io);
    CHECK(rc == 0, "run returned %d", rc);
    for (int s = 0; s < n_states; s++) {
        memcpy(state_out[s], io.state[s], li_rcell_state_floats(cell, s, B) * sizeof(float));
        free(io.state[s]);
    }
    free(io.scratch);
    free(xs);
}

static void compare(const char *what, const float *got, const double *want, size_t n,
                    const char *table, int I, int H, int L, int T, int B) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs(got[i] - want[i]) / (1.0 + fabs(want[i]));
        if (!(err <= worst))
            worst = isnan(err) ? INFINITY : err;
    }
    CHECK(worst <= 1e-4, "%s %s I=%d H=%d L=%d T=%d B=%d: worst error %g", table, what, I, H,
          L, T, B, worst);
}

/* ---- the depth-gated LSTM -------------------------------------------------------------- */

typedef struct {
    int I, H, L;
    float *W[8], *R[8], *bih[8], *bhh[8], *D[8], *e[8], *p[8], *q[8];
} depth_gated;

static void depth_gated_make(depth_gated *m, int I, int H, int L) {
    memset(m, 0, sizeof *m);
    m->I = I;
    m->H = H;
    m->L = L;
    for (int l = 0; l < L; l++) {
        const int K = l == 0 ? I : H;
        m->W[l] = random_floats((size_t)4 * H * K, 0.6f);
        m->R[l] = random_floats((size_t)4 * H * H, 0.6f);
        m->bih[l] = random_floats((size_t)4 * H, 0.6f);
        m->bhh[l] = random_floats((size_t)4 * H, 0.6f);
        if (l) {
            m->D[l] = random_floats((size_t)H * H, 0.6f);
            m->e[l] = random_floats(H, 0.6f);
            m->p[l] = random_floats(H, 0.6f);
            m->q[l] = random_floats(H, 0.6f);
        }
    }
}

static void depth_gated_free(depth_gated *m) {
    for (int l = 0; l < m->L; l++) {
        free(m->W[l]);
        free(m->R[l]);
        free(m->bih[l]);
        free(m->bhh[l]);
        free(m->D[l]);
        free(m->e[l]);
        free(m->p[l]);
        free(m->q[l]);
    }
}

/* The layout of src_c/cell_depth_gated_lstm.c. */
static void depth_gated_arrays(const depth_gated *m, arrays *a) {
    const int H = m->H, Hp = padded(H);
    a->n = 0;
    for (int l = 0; l < m->L; l++) {
        const int K = l == 0 ? m->I : H;
        float *b = malloc((size_t)5 * H * sizeof(float));
        for (int j = 0; j < 4 * H; j++)
            b[j] = m->bih[l][j] + m->bhh[l][j];
        if (l == 0) {
            add(a, rows_padded(m->W[l], 4, H, K), (int64_t)4 * Hp * K);
            add(a, pack(m->W[l], 4, H, K), (int64_t)Hp * K * 4);
            add(a, vector_padded(b, 4, H), 4 * Hp);
        } else {
            float *wd = malloc((size_t)5 * H * K * sizeof(float));
            memcpy(wd, m->W[l], (size_t)4 * H * K * sizeof(float));
            memcpy(wd + (size_t)4 * H * K, m->D[l], (size_t)H * K * sizeof(float));
            memcpy(b + 4 * H, m->e[l], (size_t)H * sizeof(float));
            add(a, rows_padded(wd, 5, H, K), (int64_t)5 * Hp * K);
            add(a, pack(m->W[l], 4, H, K), (int64_t)Hp * K * 4);
            add(a, pack(m->D[l], 1, H, K), (int64_t)Hp * K);
            add(a, vector_padded(b, 5, H), 5 * Hp);
            free(wd);
        }
        add(a, pack(m->R[l], 4, H, H), (int64_t)Hp * H * 4);
        if (l) {
            float *p = malloc(H * sizeof(float)), *q = malloc(H * sizeof(float));
            memcpy(p, m->p[l], H * sizeof(float));
            memcpy(q, m->q[l], H * sizeof(float));
            add(a, p, H);
            add(a, q, H);
        }
        free(b);
    }
}

/* CELLS.md's equations in double: y (T, B, H), final h and c ([L][B][H]). */
static void depth_gated_reference(const depth_gated *m, int T, int B, const float *x,
                                  double *y, double *h, double *c) {
    const int H = m->H, L = m->L;
    memset(h, 0, (size_t)L * B * H * sizeof(double));
    memset(c, 0, (size_t)L * B * H * sizeof(double));
    double *below = malloc((size_t)(H > m->I ? H : m->I) * sizeof(double));
    double *c_below = malloc((size_t)H * sizeof(double));
    double *z = malloc((size_t)4 * H * sizeof(double)), *nh = malloc(H * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            for (int k = 0; k < m->I; k++)
                below[k] = x[((size_t)t * B + b) * m->I + k];
            for (int l = 0; l < L; l++) {
                const int K = l == 0 ? m->I : H;
                double *hl = h + ((size_t)l * B + b) * H, *cl = c + ((size_t)l * B + b) * H;
                for (int j = 0; j < 4 * H; j++) {
                    double acc = (double)m->bih[l][j] + m->bhh[l][j];
                    for (int k = 0; k < K; k++)
                        acc += (double)m->W[l][(size_t)j * K + k] * below[k];
                    for (int k = 0; k < H; k++)
                        acc += (double)m->R[l][(size_t)j * H + k] * hl[k];
                    z[j] = acc;
                }
                for (int u = 0; u < H; u++) {
                    double cn = sig(z[H + u]) * cl[u] + sig(z[u]) * tanh(z[2 * H + u]);
                    if (l) {
                        double dz = m->e[l][u] + (double)m->p[l][u] * cl[u] +
                                    (double)m->q[l][u] * c_below[u];
                        for (int k = 0; k < H; k++)
                            dz += (double)m->D[l][(size_t)u * H + k] * below[k];
                        cn += sig(dz) * c_below[u];
                    }
                    cl[u] = cn;
                    nh[u] = sig(z[3 * H + u]) * tanh(cn);
                }
                memcpy(hl, nh, H * sizeof(double));
                memcpy(below, nh, H * sizeof(double));
                memcpy(c_below, cl, H * sizeof(double));
            }
            memcpy(y + ((size_t)t * B + b) * H, below, H * sizeof(double));
        }
    free(below);
    free(c_below);
    free(z);
    free(nh);
}

static void test_depth_gated(const li_kernels *kern, const char *table) {
    static const int cases[][5] = {/* I, H, L, T, B */
                                   {5, 20, 3, 7, 3},  {3, 17, 2, 60, 9}, {4, 33, 2, 5, 1},
                                   {6, 16, 1, 4, 2},  {2, 9, 4, 12, 8}};
    for (size_t n = 0; n < sizeof cases / sizeof cases[0]; n++) {
        const int I = cases[n][0], H = cases[n][1], L = cases[n][2], T = cases[n][3],
                  B = cases[n][4];
        depth_gated m;
        depth_gated_make(&m, I, H, L);
        arrays a;
        depth_gated_arrays(&m, &a);
        li_rcell cell = {LI_RCELL_DEPTH_GATED_LSTM, I, H, L, 0, 0.0f, a.n, a.ptr, a.len};
        CHECK(li_rcell_check(&cell) == 0, "depth-gated check %d", li_rcell_check(&cell));
        float *x = random_floats((size_t)T * B * I, 1.5f);
        float *y = malloc((size_t)T * B * H * sizeof(float));
        float *hc[2] = {malloc((size_t)L * B * H * sizeof(float)),
                        malloc((size_t)L * B * H * sizeof(float))};
        double *wy = malloc((size_t)T * B * H * sizeof(double));
        double *wh = malloc((size_t)L * B * H * sizeof(double));
        double *wc = malloc((size_t)L * B * H * sizeof(double));
        run_cell(&cell, kern, T, B, x, y, 2, hc);
        depth_gated_reference(&m, T, B, x, wy, wh, wc);
        compare("depth-gated y", y, wy, (size_t)T * B * H, table, I, H, L, T, B);
        compare("depth-gated h", hc[0], wh, (size_t)L * B * H, table, I, H, L, T, B);
        compare("depth-gated c", hc[1], wc, (size_t)L * B * H, table, I, H, L, T, B);
        /* a stream of single steps continues from the state: equal to the run */
        if (n == 0) {
            li_rcell_io io;
            memset(&io, 0, sizeof io);
            io.T = 1;
            io.B = B;
            io.ldx = I;
            io.y_ts = (ptrdiff_t)B * H;
            io.y_bs = H;
            io.state[0] = zeros((size_t)L * B * H);
            io.state[1] = zeros((size_t)L * B * H);
            io.scratch = malloc(li_rcell_scratch_floats(&cell, 1, B) * sizeof(float));
            float *ys = malloc((size_t)B * H * sizeof(float));
            for (int t = 0; t < T; t++) {
                io.x = x + (size_t)t * B * I;
                io.y = ys;
                CHECK(li_rcell_run(&cell, kern, naive_sgemm, &io) == 0, "step %d", t);
                compare("depth-gated step", ys, wy + (size_t)t * B * H, (size_t)B * H, table, I,
                        H, L, t, B);
            }
            free(ys);
            free(io.scratch);
            free(io.state[0]);
            free(io.state[1]);
        }
        /* a wrong length anywhere and a wrong array count are refused */
        a.len[a.n - 1]--;
        CHECK(li_rcell_check(&cell) != 0, "a short last array is refused");
        a.len[a.n - 1]++;
        cell.n_arrays--;
        CHECK(li_rcell_check(&cell) != 0, "a missing array is refused");
        free(x);
        free(y);
        free(hc[0]);
        free(hc[1]);
        free(wy);
        free(wh);
        free(wc);
        free_arrays(&a);
        depth_gated_free(&m);
    }
}

/* ---- the grid LSTM ------------------------------------------------------------------------ */

typedef struct {
    int I, H, L;
    float *P, *Tw[8], *a[8], *Ew[8], *b[8];
} grid;

static void grid_make(grid *m, int I, int H, int L) {
    memset(m, 0, sizeof *m);
    m->I = I;
    m->H = H;
    m->L = L;
    m->P = random_floats((size_t)H * I, 0.6f);
    for (int l = 0; l < L; l++) {
        m->Tw[l] = random_floats((size_t)4 * H * 2 * H, 0.6f);
        m->a[l] = random_floats((size_t)4 * H, 0.6f);
        m->Ew[l] = random_floats((size_t)4 * H * 2 * H, 0.6f);
        m->b[l] = random_floats((size_t)4 * H, 0.6f);
    }
}

static void grid_free(grid *m) {
    free(m->P);
    for (int l = 0; l < m->L; l++) {
        free(m->Tw[l]);
        free(m->a[l]);
        free(m->Ew[l]);
        free(m->b[l]);
    }
}

/* Columns [c0, c0 + n) of a (rows, K) matrix. */
static float *columns(const float *m, int rows, int K, int c0, int n) {
    float *out = malloc((size_t)rows * n * sizeof(float));
    for (int r = 0; r < rows; r++)
        memcpy(out + (size_t)r * n, m + (size_t)r * K + c0, (size_t)n * sizeof(float));
    return out;
}

/* The layout of src_c/cell_grid_lstm.c. */
static void grid_arrays(const grid *m, arrays *a) {
    const int H = m->H, Hp = padded(H), I = m->I;
    a->n = 0;
    add(a, rows_padded(m->P, 1, H, I), (int64_t)Hp * I);
    add(a, pack(m->P, 1, H, I), (int64_t)Hp * I);
    for (int l = 0; l < m->L; l++) {
        float *ti = columns(m->Tw[l], 4 * H, 2 * H, H, H);
        float *tr = columns(m->Tw[l], 4 * H, 2 * H, 0, H);
        add(a, rows_padded(ti, 4, H, H), (int64_t)4 * Hp * H);
        add(a, pack(ti, 4, H, H), (int64_t)Hp * H * 4);
        add(a, vector_padded(m->a[l], 4, H), 4 * Hp);
        add(a, pack(tr, 4, H, H), (int64_t)Hp * H * 4);
        add(a, rows_padded(m->Ew[l], 4, H, 2 * H), (int64_t)4 * Hp * 2 * H);
        add(a, pack(m->Ew[l], 4, H, 2 * H), (int64_t)Hp * 2 * H * 4);
        add(a, vector_padded(m->b[l], 4, H), 4 * Hp);
        free(ti);
        free(tr);
    }
}

/* One LSTM block in double: z (4H pre-activations) and cell (in: old, out: new) -> out. */
static void block(const double *z, int H, double *cell, double *out) {
    for (int u = 0; u < H; u++) {
        cell[u] = sig(z[H + u]) * cell[u] + sig(z[u]) * tanh(z[2 * H + u]);
        out[u] = sig(z[3 * H + u]) * tanh(cell[u]);
    }
}

/* CELLS.md's equations in double: y (T, B, H), final h and m ([L][B][H]). */
static void grid_reference(const grid *m, int T, int B, const float *x, double *y, double *h,
                           double *mc) {
    const int H = m->H, L = m->L, I = m->I;
    memset(h, 0, (size_t)L * B * H * sizeof(double));
    memset(mc, 0, (size_t)L * B * H * sizeof(double));
    double *in = malloc((size_t)2 * H * sizeof(double)); /* [h; u] */
    double *z = malloc((size_t)4 * H * sizeof(double)), *n = malloc(H * sizeof(double));
    double *u = malloc(H * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < H; j++) {
                double acc = 0.0;
                for (int k = 0; k < I; k++)
                    acc += (double)m->P[(size_t)j * I + k] * x[((size_t)t * B + b) * I + k];
                u[j] = acc;
                n[j] = 0.0;
            }
            for (int l = 0; l < L; l++) {
                double *hl = h + ((size_t)l * B + b) * H, *ml = mc + ((size_t)l * B + b) * H;
                memcpy(in, hl, H * sizeof(double));
                memcpy(in + H, u, H * sizeof(double));
                for (int j = 0; j < 4 * H; j++) {
                    double acc = m->a[l][j];
                    for (int k = 0; k < 2 * H; k++)
                        acc += (double)m->Tw[l][(size_t)j * 2 * H + k] * in[k];
                    z[j] = acc;
                }
                block(z, H, ml, hl);
                memcpy(in, hl, H * sizeof(double));
                for (int j = 0; j < 4 * H; j++) {
                    double acc = m->b[l][j];
                    for (int k = 0; k < 2 * H; k++)
                        acc += (double)m->Ew[l][(size_t)j * 2 * H + k] * in[k];
                    z[j] = acc;
                }
                block(z, H, n, u);
            }
            memcpy(y + ((size_t)t * B + b) * H, u, H * sizeof(double));
        }
    free(in);
    free(z);
    free(n);
    free(u);
}

static void test_grid(const li_kernels *kern, const char *table) {
    static const int cases[][5] = {/* I, H, L, T, B */
                                   {5, 20, 3, 7, 3},  {3, 17, 2, 60, 9}, {4, 33, 2, 5, 1},
                                   {6, 16, 1, 4, 2},  {2, 9, 4, 12, 8}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int I = cases[c][0], H = cases[c][1], L = cases[c][2], T = cases[c][3],
                  B = cases[c][4];
        grid m;
        grid_make(&m, I, H, L);
        arrays a;
        grid_arrays(&m, &a);
        li_rcell cell = {LI_RCELL_GRID_LSTM, I, H, L, 0, 0.0f, a.n, a.ptr, a.len};
        CHECK(li_rcell_check(&cell) == 0, "grid check %d", li_rcell_check(&cell));
        float *x = random_floats((size_t)T * B * I, 1.5f);
        float *y = malloc((size_t)T * B * H * sizeof(float));
        float *hm[2] = {malloc((size_t)L * B * H * sizeof(float)),
                        malloc((size_t)L * B * H * sizeof(float))};
        double *wy = malloc((size_t)T * B * H * sizeof(double));
        double *wh = malloc((size_t)L * B * H * sizeof(double));
        double *wm = malloc((size_t)L * B * H * sizeof(double));
        run_cell(&cell, kern, T, B, x, y, 2, hm);
        grid_reference(&m, T, B, x, wy, wh, wm);
        compare("grid y", y, wy, (size_t)T * B * H, table, I, H, L, T, B);
        compare("grid h", hm[0], wh, (size_t)L * B * H, table, I, H, L, T, B);
        compare("grid m", hm[1], wm, (size_t)L * B * H, table, I, H, L, T, B);
        a.len[2]--;
        CHECK(li_rcell_check(&cell) != 0, "a short array is refused");
        a.len[2]++;
        cell.n_arrays--;
        CHECK(li_rcell_check(&cell) != 0, "a missing array is refused");
        free(x);
        free(y);
        free(hm[0]);
        free(hm[1]);
        free(wy);
        free(wh);
        free(wm);
        free_arrays(&a);
        grid_free(&m);
    }
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
        test_depth_gated(kern, names[isa]);
        test_grid(kern, names[isa]);
        printf("%-10s %s\n", names[isa], failures == before ? "ok" : "FAILED");
    }
    if (failures == 0)
        printf("all ok\n");
    return failures != 0;
}
