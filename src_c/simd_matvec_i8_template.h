/*
 * The int8 packed product, written once over the vector vocabulary and a 4-byte dot product.
 * Weights are packed [blk][K/4][G][16][4]: one vector load holds VW units x 4 inputs, so each
 * int32 lane accumulates its own unit. Activations arrive quantized (li_prepare_fn: int8
 * codes and a scale per row) and the sums are exact int32, so every ISA computes the same
 * integers; only the final scaling is floating point.
 *
 * Before including define:
 *   I8_NAME(x)            x with a suffix unique to the instantiation
 *   V_DOT_I8_PREP(xb)     a broadcast quad of activation codes as the dot wants it
 *   V_DOT_I8(acc, w, xb)  acc + per-lane sum of the 4 products of w's bytes and xb's bytes
 *   V_DOT_I8_OFFSET       what the dot adds to each activation code (0, or 128 for the
 *                         unsigned x signed VPDPBUSD), removed at the end with the row sums
 *   I8_MAX_ROWS(G)        optional: rows per register tile (default MV_MAX_ROWS)
 */
#ifndef I8_MAX_ROWS
#define I8_MAX_ROWS(G) MV_MAX_ROWS(G)
#endif

/* The 4 activation codes of row b starting at input 4 * kq, broadcast to every lane. */
static inline vi I8_NAME(quad)(const int8_t *xq, int ldq, int b, int kq) {
    int32_t v;
    memcpy(&v, xq + (size_t)b * ldq + 4 * kq, sizeof v);
    return V_DOT_I8_PREP(vi_set1(v));
}

/* One register tile: G gates x LI_BLOCK units x R rows, always inlined with constant G, R. */
static inline __attribute__((always_inline)) void I8_NAME(i8_tile)(
    const int8_t *wb, int Kq, const int G, const int R, const int8_t *xq, int ldq,
    const float *xscale, const float *bias, const float *scale, const int32_t *rowsum, int bgs,
    float *out, int ogs, int ldo) {
    /* Two accumulator sets (even and odd quads) hide the dot's latency at small R * G. */
    const int S = 2 * R * G * V_PER_BLOCK <= MV_ACC_BUDGET ? 2 : 1;
    vi acc[2][8][4][V_PER_BLOCK];
    for (int s = 0; s < S; ++s)
        for (int b = 0; b < R; ++b)
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v) acc[s][b][g][v] = vi_zero();
    int kq = 0;
    for (; kq + S <= Kq; kq += S)
        for (int s = 0; s < S; ++s) {
            const int8_t *wk = wb + (size_t)(kq + s) * G * LI_BLOCK * 4;
            vi xs[8];
            for (int b = 0; b < R; ++b) xs[b] = I8_NAME(quad)(xq, ldq, b, kq + s);
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v) {
                    const vi w = vi_load(wk + (g * LI_BLOCK + v * VW) * 4);
                    for (int b = 0; b < R; ++b)
                        acc[s][b][g][v] = V_DOT_I8(acc[s][b][g][v], w, xs[b]);
                }
        }
    for (; kq < Kq; ++kq) { /* odd quad count with two sets */
        const int8_t *wk = wb + (size_t)kq * G * LI_BLOCK * 4;
        vi xs[8];
        for (int b = 0; b < R; ++b) xs[b] = I8_NAME(quad)(xq, ldq, b, kq);
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const vi w = vi_load(wk + (g * LI_BLOCK + v * VW) * 4);
                for (int b = 0; b < R; ++b) acc[0][b][g][v] = V_DOT_I8(acc[0][b][g][v], w, xs[b]);
            }
    }
    for (int b = 0; b < R; ++b) {
        const vf xsb = v_set1(xscale[b]);
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const size_t at = (size_t)g * bgs + v * VW;
                vi a = S == 2 ? vi_add(acc[0][b][g][v], acc[1][b][g][v]) : acc[0][b][g][v];
                if (V_DOT_I8_OFFSET) a = vi_sub(a, vi_slli(vi_load(rowsum + at), 7));
                const vf r = v_fmadd(vi_to_vf(a), v_mul(v_load(scale + at), xsb),
                                     bias ? v_load(bias + at) : v_zero());
                v_store(out + (size_t)b * ldo + (size_t)g * ogs + v * VW, r);
            }
    }
}

#define I8_CASE(G, R)                                                                          \
    case (G) * 16 + (R):                                                                       \
        if ((R) <= I8_MAX_ROWS(G))                                                             \
            I8_NAME(i8_tile)(wb, Kq, G, R, xq, ldq, xscale, bias, scale, rowsum, bgs, out, ogs, \
                             ldo);                                                             \
        break;
#define I8_CASES(G)                                                                            \
    I8_CASE(G, 1) I8_CASE(G, 2) I8_CASE(G, 3) I8_CASE(G, 4) I8_CASE(G, 5) I8_CASE(G, 6)         \
        I8_CASE(G, 7) I8_CASE(G, 8)

static void I8_NAME(i8_tile_dispatch)(const int8_t *wb, int Kq, int G, int R, const int8_t *xq,
                                      int ldq, const float *xscale, const float *bias,
                                      const float *scale, const int32_t *rowsum, int bgs,
                                      float *out, int ogs, int ldo) {
    switch (G * 16 + R) {
        I8_CASES(1)
        I8_CASES(2)
        I8_CASES(3)
        I8_CASES(4)
    default: break;
    }
}

static void I8_NAME(matvec_i8)(const void *packed, int K, int G, int blk0, int blk1,
                               const li_rows *x, int rows, const float *bias, const float *scale,
                               const int32_t *rowsum, int bgs, float *out, int ogs, int ldo) {
    const int Kq = (K + 3) / 4;
    const size_t block_bytes = (size_t)Kq * G * LI_BLOCK * 4;
    const int max_rows = I8_MAX_ROWS(G);
    for (int blk = blk0; blk < blk1; ++blk) {
        const int8_t *wb = (const int8_t *)packed + (size_t)blk * block_bytes;
        const int u0 = blk * LI_BLOCK;
        /* Tiles as even as the rows allow (16 rows at 6 per tile: 5, 5, 6, not 6, 6, 4): a
         * small last tile reads the weights for few rows. */
        const int tiles = (rows + max_rows - 1) / max_rows;
        for (int t = 0, b = 0; t < tiles; ++t) {
            const int r = (rows - b) / (tiles - t);
            I8_NAME(i8_tile_dispatch)(wb, Kq, G, r, (const int8_t *)x->q + (size_t)b * x->ldq,
                                      x->ldq, x->scale + b, bias ? bias + u0 : 0, scale + u0,
                                      rowsum + u0, bgs, out + (size_t)b * ldo + u0, ogs, ldo);
            b += r;
        }
    }
}

#undef I8_CASE
#undef I8_CASES
#undef I8_MAX_ROWS
