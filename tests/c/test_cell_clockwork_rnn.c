/*
 * The clockwork RNN cell (src_c/cell_clockwork_rnn.c) against a naive double-precision
 * reference of CELLS.md's equations, under AddressSanitizer and UBSan
 * (tests/test_c_kernels_sanitized.py builds and runs it). The test packs random weights in
 * the layout the C file documents itself; every array, state, output and scratch buffer is
 * allocated to exactly its documented extent. Several T (one and many chunks, few and many
 * rows), B, module sizes that are not multiples of LI_BLOCK, rows starting at different step
 * counters (so the active modules differ per row), a strided output, on every usable
 * kernel table with a naive column-major sgemm. Also: li_rcell_check refuses bad periods
 * and a stored lcm that is not theirs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "li_cells.h"
#include "li_kernels.h"

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

static unsigned rng_state = 12345u;

static float uniform(float scale) {
    rng_state = rng_state * 1103515245u + 12345u;
    return ((float)((rng_state >> 8) & 0xffff) / 65536.0f - 0.5f) * 2.0f * scale;
}

static float *alloc_floats(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

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

/* pack_gate_blocks of lstm_infer/_plan.py: rows g*h + u (u < h) of a matrix whose row r,
 * column j is at src[r*lds + j0 + j], j < K, into [ceil(h/BLOCK)][K][G][BLOCK], zero padded. */
static void pack_blocks(const float *src, int lds, int j0, int G, int h, int K, float *out) {
    const int nb = li_rcell_padded(h) / LI_BLOCK;
    for (int blk = 0; blk < nb; blk++)
        for (int j = 0; j < K; j++)
            for (int g = 0; g < G; g++)
                for (int lane = 0; lane < LI_BLOCK; lane++) {
                    const int u = blk * LI_BLOCK + lane;
                    *out++ = u < h ? src[(size_t)(g * h + u) * lds + j0 + j] : 0.0f;
                }
}

/* The module split of src_c/cell_clockwork_rnn.c, restated: 4 or 2 gates when that adds no
 * padding, else 1. */
static int module_gates(int k) {
    for (int G = 4; G >= 2; G /= 2)
        if (k % G == 0 && G * li_rcell_padded(k / G) <= li_rcell_padded(k))
            return G;
    return 1;
}

typedef struct {
    int I, H, M;
    int32_t periods[8];
    float *W, *R, *b; /* row-major (H, I), (H, H), (H) */
    float *arr[3];
    int64_t len[3];
    const void *ptrs[3];
    li_rcell cell;
} model;

static long lcm_of(const model *md) {
    long l = 1;
    for (int m = 0; m < md->M; m++) {
        long a = l, p = md->periods[m];
        while (p) {
            long r = a % p;
            a = p, p = r;
        }
        l = l / a * md->periods[m];
    }
    return l;
}

static void build(model *md, int I, int H, int M, const int32_t *periods) {
    memset(md, 0, sizeof *md);
    md->I = I, md->H = H, md->M = M;
    memcpy(md->periods, periods, (size_t)M * sizeof(int32_t));
    const int k = H / M, G = module_gates(k), kg = k / G, kgp = li_rcell_padded(kg);
    const int nbg = kgp / LI_BLOCK;
    md->W = alloc_floats((size_t)H * I);
    md->R = alloc_floats((size_t)H * H);
    md->b = alloc_floats((size_t)H);
    for (int i = 0; i < H * I; i++)
        md->W[i] = uniform(0.5f);
    /* |R| ~ 1/sqrt(H): contracting dynamics, so fp32 rounding does not grow chaotically over
     * the long runs (the reference is double) */
    for (int i = 0; i < H * H; i++)
        md->R[i] = uniform(1.2f / sqrtf((float)H));
    for (int i = 0; i < H; i++)
        md->b[i] = uniform(0.3f);
    int64_t a_total = 0;
    for (int m = 0; m < M; m++)
        a_total += (int64_t)nbg * (I + H - m * k) * G * LI_BLOCK;
    md->len[0] = M + 1; /* the periods, then their lcm */
    md->len[1] = a_total;
    md->len[2] = (int64_t)M * G * kgp;
    md->arr[0] = malloc((size_t)(M + 1) * sizeof(int32_t));
    memcpy(md->arr[0], periods, (size_t)M * sizeof(int32_t));
    ((int32_t *)md->arr[0])[M] = (int32_t)lcm_of(md);
    for (int i = 1; i < 3; i++)
        md->arr[i] = alloc_floats((size_t)md->len[i]);
    float *am = md->arr[1];
    float *A = alloc_floats((size_t)k * (I + H));
    for (int m = 0; m < M; m++) {
        const int K = I + H - m * k; /* [W_m | R_m over the columns [m*k, H)] */
        for (int u = 0; u < k; u++) {
            memcpy(A + (size_t)u * K, md->W + (size_t)(m * k + u) * I, (size_t)I * sizeof(float));
            memcpy(A + (size_t)u * K + I, md->R + (size_t)(m * k + u) * H + m * k,
                   (size_t)(K - I) * sizeof(float));
            md->arr[2][(size_t)m * G * kgp + (u / kg) * kgp + u % kg] = md->b[m * k + u];
        }
        pack_blocks(A, K, 0, G, kg, K, am);
        am += (size_t)nbg * K * G * LI_BLOCK;
    }
    free(A);
    for (int i = 0; i < 3; i++)
        md->ptrs[i] = md->arr[i];
    md->cell.kind = LI_RCELL_CLOCKWORK_RNN;
    md->cell.input_size = I;
    md->cell.hidden_size = H;
    md->cell.layers = 1;
    md->cell.modules = M;
    md->cell.n_arrays = 3;
    md->cell.array = md->ptrs;
    md->cell.array_len = md->len;
}

static void release(model *md) {
    free(md->W), free(md->R), free(md->b);
    for (int i = 0; i < 3; i++)
        free(md->arr[i]);
}

/* The equations in double, rows b starting at counter t0[b]; h updated, y [T][B][H]. */
static void reference(const model *md, int T, int B, const float *x, const long *t0, double *h,
                      double *y) {
    const int H = md->H, I = md->I, M = md->M, k = H / M;
    double *next = malloc((size_t)H * sizeof(double));
    for (int b = 0; b < B; b++) {
        double *hb = h + (size_t)b * H;
        for (int t = 0; t < T; t++) {
            memcpy(next, hb, (size_t)H * sizeof(double));
            for (int m = 0; m < M; m++) {
                if ((t0[b] + t) % md->periods[m] != 0)
                    continue;
                for (int u = m * k; u < (m + 1) * k; u++) {
                    double acc = md->b[u];
                    for (int i = 0; i < I; i++)
                        acc += (double)md->W[(size_t)u * I + i] * x[((size_t)t * B + b) * I + i];
                    for (int j = m * k; j < H; j++)
                        acc += (double)md->R[(size_t)u * H + j] * hb[j];
                    next[u] = tanh(acc);
                }
            }
            memcpy(hb, next, (size_t)H * sizeof(double));
            memcpy(y + ((size_t)t * B + b) * H, hb, (size_t)H * sizeof(double));
        }
    }
    free(next);
}

static void run_case(const li_kernels *kern, const model *md, int T, int B, int distinct) {
    const int H = md->H, I = md->I;
    const long lcm = lcm_of(md);
    float *x = alloc_floats((size_t)T * B * I);
    for (size_t i = 0; i < (size_t)T * B * I; i++)
        x[i] = uniform(1.0f);
    float *h = alloc_floats(li_rcell_state_floats(&md->cell, 0, B));
    float *cnt = alloc_floats(li_rcell_state_floats(&md->cell, 1, B));
    double *hr = calloc((size_t)B * H, sizeof(double));
    double *yr = calloc((size_t)T * B * H, sizeof(double));
    long *t0 = calloc((size_t)B, sizeof(long));
    for (int b = 0; b < B; b++) {
        t0[b] = distinct ? (long)(b * 5 + 1) % lcm : 0;
        cnt[b] = (float)t0[b];
        for (int u = 0; u < H; u++)
            h[(size_t)b * H + u] = (float)(hr[(size_t)b * H + u] = uniform(0.8f));
    }
    /* output rows H + 3 floats apart, steps B rows apart: a strided y */
    const ptrdiff_t y_bs = H + 3, y_ts = (ptrdiff_t)B * y_bs;
    float *y = alloc_floats((size_t)(T - 1) * y_ts + (size_t)(B - 1) * y_bs + H);
    float *scratch = alloc_floats(li_rcell_scratch_floats(&md->cell, T, B));
    li_rcell_io io;
    memset(&io, 0, sizeof io);
    io.T = T, io.B = B, io.x = x, io.ldx = I, io.y = y, io.y_ts = y_ts, io.y_bs = y_bs;
    io.state[0] = h, io.state[1] = cnt, io.scratch = scratch;
    int rc = li_rcell_run(&md->cell, kern, naive_sgemm, &io);
    CHECK(rc == 0, "run returned %d", rc);
    reference(md, T, B, x, t0, hr, yr);
    double worst = 0.0;
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++)
            for (int u = 0; u < H; u++) {
                double d = fabs(y[t * y_ts + b * y_bs + u] - yr[((size_t)t * B + b) * H + u]);
                worst = d > worst ? d : worst;
            }
    for (int b = 0; b < B; b++) {
        for (int u = 0; u < H; u++) {
            double d = fabs(h[(size_t)b * H + u] - hr[(size_t)b * H + u]);
            worst = d > worst ? d : worst;
        }
        CHECK(cnt[b] == (float)((t0[b] + T) % lcm), "counter of row %d: %g, want %ld", b,
              cnt[b], (t0[b] + T) % lcm);
    }
    CHECK(worst < 2e-5, "I=%d H=%d M=%d T=%d B=%d: max error %g", I, H, md->M, T, B, worst);
    free(x), free(h), free(cnt), free(hr), free(yr), free(t0), free(y), free(scratch);
}

static void test_refusals(void) {
    model md;
    const int32_t good[3] = {1, 2, 3};
    build(&md, 3, 6, 3, good);
    CHECK(li_rcell_check(&md.cell) == 0, "a good cell is accepted");
    int32_t *p = (int32_t *)md.arr[0]; /* p[3]: the lcm */
    p[1] = 1, p[3] = 3;
    CHECK(li_rcell_check(&md.cell) != 0, "periods that are not ascending are refused");
    p[1] = 0;
    CHECK(li_rcell_check(&md.cell) != 0, "a zero period is refused");
    p[0] = 4093, p[1] = 4096, p[2] = 4099; /* lcm above 2^24 */
    CHECK(li_rcell_check(&md.cell) != 0, "an lcm above 2^24 is refused");
    p[0] = 1, p[1] = 2, p[2] = 3, p[3] = 12;
    CHECK(li_rcell_check(&md.cell) != 0, "a stored lcm that is not the periods' is refused");
    p[3] = 6;
    CHECK(li_rcell_check(&md.cell) == 0, "the good cell again");
    md.cell.modules = 4;
    CHECK(li_rcell_check(&md.cell) != 0, "H not divisible by the modules is refused");
    md.cell.modules = 3;
    md.len[1]--;
    CHECK(li_rcell_check(&md.cell) != 0, "a short weight array is refused");
    release(&md);
}

int main(void) {
    static const char *names[LI_ISA_COUNT] = {"scalar", "avx2", "avx2vnni", "avx512",
                                              "avx512vnni", "avx512bf16", "amx"};
    static const struct {
        int I, H, M;
        int32_t periods[4];
    } shapes[] = {
        {5, 12, 3, {1, 2, 3}},   {4, 32, 4, {1, 2, 4, 8}}, {7, 20, 4, {1, 3, 5, 7}},
        {3, 54, 2, {2, 5}},      {6, 17, 1, {3}},         {5, 256, 4, {1, 2, 4, 8}},
        {4, 128, 2, {1, 3}},     {3, 96, 3, {1, 2, 5}},
    };
    static const int runs[][3] = {{1, 1, 0}, {1, 1, 1}, {3, 2, 1}, {9, 1, 0},
                                  {13, 3, 1}, {40, 5, 1}, {400, 3, 0}, {700, 2, 1}};
    unsigned usable = li_usable_isas();
    for (int isa = 0; isa < LI_ISA_COUNT; isa++) {
        const li_kernels *kern = li_kernels_for(isa);
        if (kern == NULL || !(usable & (1u << isa)))
            continue;
        int before = failures;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            model md;
            build(&md, shapes[s].I, shapes[s].H, shapes[s].M, shapes[s].periods);
            CHECK(li_rcell_check(&md.cell) == 0, "shape %zu: check %d", s,
                  li_rcell_check(&md.cell));
            for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++)
                run_case(kern, &md, runs[r][0], runs[r][1], runs[r][2]);
            release(&md);
        }
        printf("%-10s %s\n", names[isa], failures == before ? "ok" : "FAILED");
    }
    test_refusals();
    if (failures == 0)
        printf("all ok\n");
    return failures != 0;
}
