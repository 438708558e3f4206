/*
 * The layer-normalised LSTM (src_c/cell_layer_norm_lstm.c) against a naive double-precision
 * version of CELLS.md's equations, under AddressSanitizer and UBSan (built and run by
 * tests/test_c_kernels_sanitized.py with a small projection chunk, so sequences span several
 * chunks). Every array is allocated to exactly the length the layout names; H is not a
 * multiple of the block; batches below and above the sgemm threshold; every usable table.
 */
#include "cell_test_common.h"

enum { MAX_L = 3 };

typedef struct {
    int I, H, L;
    float eps;
    float *w[MAX_L], *r[MAX_L], *b[MAX_L], *gw[MAX_L], *gb[MAX_L], *cw[MAX_L], *cb[MAX_L];
    const void *arrays[9 * MAX_L];
    int64_t lens[9 * MAX_L];
    li_rcell cell;
} lnlstm;

static void layer_norm_ref(const double *x, int n, const float *w, const float *b, double eps,
                           double *y) {
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
}

/* format: the packed matrices' (the reference then reads the weights the format holds). */
static void build(lnlstm *m, int I, int H, int L, unsigned seed, int format) {
    m->I = I, m->H = H, m->L = L, m->eps = 1e-5f;
    for (int l = 0; l < L; l++) {
        const int K = l ? H : I;
        m->w[l] = test_floats((size_t)4 * H * K, seed + 10 * l + 1, 0.5f);
        m->r[l] = test_floats((size_t)4 * H * H, seed + 10 * l + 2, 0.5f);
        m->b[l] = test_floats((size_t)4 * H, seed + 10 * l + 3, 0.5f);
        m->gw[l] = test_floats((size_t)4 * H, seed + 10 * l + 4, 1.0f);
        m->gb[l] = test_floats((size_t)4 * H, seed + 10 * l + 5, 0.5f);
        m->cw[l] = test_floats((size_t)H, seed + 10 * l + 6, 1.0f);
        m->cb[l] = test_floats((size_t)H, seed + 10 * l + 7, 0.5f);
        const void **a = m->arrays + 9 * l;
        int64_t *n = m->lens + 9 * l;
        const int f32 = format == LI_WEIGHTS_F32;
        a[1] = f32 ? test_pack(m->w[l], 4, H, K, &n[1])
                   : test_pack_format(m->w[l], 4, H, K, format, &n[1]);
        a[4] = f32 ? test_pack(m->r[l], 4, H, H, &n[4])
                   : test_pack_format(m->r[l], 4, H, H, format, &n[4]);
        a[0] = test_pad_rows(m->w[l], 4, H, K, &n[0]);
        a[2] = test_pad_vector(m->b[l], 4, H, &n[2]);
        a[3] = test_pad_rows(m->r[l], 4, H, H, &n[3]);
        a[5] = m->gw[l], n[5] = 4 * H;
        a[6] = m->gb[l], n[6] = 4 * H;
        a[7] = m->cw[l], n[7] = H;
        a[8] = m->cb[l], n[8] = H;
    }
    li_rcell c = {LI_RCELL_LAYER_NORM_LSTM, I, H, L, 0, m->eps, 9 * L, m->arrays, m->lens, format};
    m->cell = c;
}

static void release(lnlstm *m) {
    for (int l = 0; l < m->L; l++) {
        for (int i = 0; i < 5; i++)
            free((void *)m->arrays[9 * l + i]);
        free(m->w[l]), free(m->r[l]), free(m->b[l]), free(m->gw[l]), free(m->gb[l]);
        free(m->cw[l]), free(m->cb[l]);
    }
}

/* The reference over T steps from states h, c ([L][B][H] doubles, updated); y [T][B][H]. */
static void reference(const lnlstm *m, int T, int B, const float *x, double *h, double *c,
                      double *y) {
    const int H = m->H;
    double *in = malloc(sizeof(double) * (m->I > H ? m->I : H));
    double *z = malloc(sizeof(double) * 4 * H), *cell = malloc(sizeof(double) * H);
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            for (int k = 0; k < m->I; k++)
                in[k] = x[((size_t)t * B + b) * m->I + k];
            for (int l = 0; l < m->L; l++) {
                const int K = l ? H : m->I;
                double *hl = h + ((size_t)l * B + b) * H, *cl = c + ((size_t)l * B + b) * H;
                for (int j = 0; j < 4 * H; j++) {
                    double acc = m->b[l][j];
                    for (int k = 0; k < K; k++)
                        acc += (double)m->w[l][(size_t)j * K + k] * in[k];
                    for (int k = 0; k < H; k++)
                        acc += (double)m->r[l][(size_t)j * H + k] * hl[k];
                    z[j] = acc;
                }
                layer_norm_ref(z, 4 * H, m->gw[l], m->gb[l], m->eps, z);
                for (int u = 0; u < H; u++)
                    cell[u] = test_sigmoid(z[H + u]) * cl[u] +
                              test_sigmoid(z[u]) * tanh(z[2 * H + u]);
                layer_norm_ref(cell, H, m->cw[l], m->cb[l], m->eps, cl);
                for (int u = 0; u < H; u++)
                    in[u] = hl[u] = test_sigmoid(z[3 * H + u]) * tanh(cl[u]);
            }
            for (int u = 0; u < H; u++)
                y[((size_t)t * B + b) * H + u] = in[u];
        }
    free(in), free(z), free(cell);
}

/* tol: bf16 tables multiply activations split in two bf16 halves; int8 quantizes them per
 * row and step, which the reference does not (a bound, not the exact quantized model: that
 * is tests/test_cells_quantized.py's). */
static void run_case(const li_kernels *kern, int format, int I, int H, int L, int T, int B) {
    const double tol = format == LI_WEIGHTS_I8 ? 0.05 : format == LI_WEIGHTS_BF16 ? 5e-5 : 2e-5;
    lnlstm m;
    build(&m, I, H, L, (unsigned)(I * 131 + H * 17 + L), format);
    CHECK(li_rcell_check(&m.cell) == 0, "check of a well-formed cell");
    const size_t S = (size_t)L * B * H;
    CHECK(li_rcell_state_floats(&m.cell, 0, B) == S && li_rcell_state_floats(&m.cell, 2, B) == 0,
          "state sizes");
    float *x = test_floats((size_t)T * B * I, 7, 1.0f);
    float *h = test_floats(S, 8, 0.5f), *c = test_floats(S, 9, 0.5f);
    double *hr = malloc(S * sizeof(double)), *cr = malloc(S * sizeof(double));
    for (size_t i = 0; i < S; i++)
        hr[i] = h[i], cr[i] = c[i];
    float *y = malloc((size_t)T * B * H * sizeof(float));
    double *yr = malloc((size_t)T * B * H * sizeof(double));
    float *scratch = malloc(li_rcell_scratch_floats(&m.cell, T, B) * sizeof(float));
    li_rcell_io io = {T, B, x, I, y, (ptrdiff_t)B * H, H, {h, c, NULL, NULL}, scratch};
    int rc = li_rcell_run(&m.cell, kern, test_sgemm, &io);
    CHECK(rc == 0, "run returned %d", rc);
    reference(&m, T, B, x, hr, cr, yr);
    int bad = 0;
    for (size_t i = 0; i < (size_t)T * B * H; i++)
        bad += !test_close(y[i], yr[i], tol);
    for (size_t i = 0; i < S; i++)
        bad += !test_close(h[i], hr[i], tol) + !test_close(c[i], cr[i], tol);
    CHECK(bad == 0, "format %d I=%d H=%d L=%d T=%d B=%d: %d values differ", format, I, H, L, T,
          B, bad);
    /* y NULL: the states still advance the same way */
    float *h2 = test_floats(S, 8, 0.5f), *c2 = test_floats(S, 9, 0.5f);
    li_rcell_io quiet = {T, B, x, I, NULL, 0, 0, {h2, c2, NULL, NULL}, scratch};
    CHECK(li_rcell_run(&m.cell, kern, test_sgemm, &quiet) == 0, "run without y");
    CHECK(memcmp(h, h2, S * sizeof(float)) == 0 && memcmp(c, c2, S * sizeof(float)) == 0,
          "the states without y");
    free(x), free(h), free(c), free(hr), free(cr), free(y), free(yr), free(scratch);
    free(h2), free(c2);
    release(&m);
}

static void test_refusals(const li_kernels *kern) {
    lnlstm m;
    build(&m, 3, 5, 1, 3, LI_WEIGHTS_F32);
    m.lens[4] -= 1; /* r_packed one float short */
    CHECK(li_rcell_check(&m.cell) != 0, "a short array is refused");
    m.lens[4] += 1;
    m.cell.weight_format = LI_WEIGHTS_BF16; /* float32 arrays are too long for bf16 blocks */
    CHECK(li_rcell_check(&m.cell) != 0, "arrays of another format are refused");
    m.cell.weight_format = 7;
    CHECK(li_rcell_check(&m.cell) != 0, "an unknown weight format is refused");
    m.cell.weight_format = LI_WEIGHTS_F32;
    m.cell.n_arrays = 8;
    CHECK(li_rcell_check(&m.cell) != 0, "a missing array is refused");
    m.cell.n_arrays = 9;
    m.cell.eps = NAN;
    CHECK(li_rcell_check(&m.cell) != 0, "a NaN eps is refused");
    m.cell.eps = 1e-5f;
    m.cell.kind = LI_RCELL_KIND_COUNT;
    CHECK(li_rcell_check(&m.cell) != 0 && li_rcell_scratch_floats(&m.cell, 1, 1) == 0,
          "an unknown kind is refused");
    m.cell.kind = LI_RCELL_LAYER_NORM_LSTM;
    float x[3] = {0}, s[10] = {0}, scratch[1];
    li_rcell_io io = {1, 1, x, 2, NULL, 0, 0, {s, s + 5, NULL, NULL}, scratch};
    CHECK(li_rcell_run(&m.cell, kern, test_sgemm, &io) != 0, "ldx below the input size");
    release(&m);
}

int main(void) {
    unsigned usable = li_usable_isas();
    for (int isa = 0; isa < LI_ISA_COUNT; isa++) {
        const li_kernels *kern = li_kernels_for(isa);
        if (kern == NULL || !(usable & (1u << isa)))
            continue;
        int before = failures;
        for (int format = 0; format < LI_WEIGHT_FORMAT_COUNT; format++) {
            run_case(kern, format, 5, 20, 2, 1, 1);  /* one step, packed projections */
            run_case(kern, format, 5, 20, 2, 9, 3);  /* sgemm projections, several chunks */
            run_case(kern, format, 7, 16, 3, 4, 9);  /* H a whole block, batch above threshold */
            run_case(kern, format, 3, 33, 1, 12, 1); /* three blocks, the last one unit */
        }
        test_refusals(kern);
        printf("%-10s %s\n", TEST_ISA_NAMES[isa], failures == before ? "ok" : "FAILED");
    }
    if (failures == 0)
        printf("all ok\n");
    return failures != 0;
}
