/*
 * The packed matvec, written once and instantiated per weight format by
 * simd_kernels_template.h. Before each inclusion define:
 *   MV_NAME(x)   x with the format's suffix (unique function names per instantiation)
 *   MV_WTYPE     element type of the packed weights (float, uint16_t bf16, int8_t)
 *   MV_WLOAD(p)  VW weights at p, widened to a float vector
 *   MV_SCALED    1: out = bias + scale * acc (int8 per-row scales); 0: out = bias + acc
 * Quantized weights are widened in registers and accumulated in fp32: the activations stay
 * fp32, so the only error is the weights' own rounding.
 */

/* One register tile: G gates x LI_BLOCK units x R rows. Always inlined with constant G and R
 * so the accumulators become registers; weights stream once per tile, straight from memory. */
static inline __attribute__((always_inline)) void MV_NAME(mv_tile)(
    const MV_WTYPE *wb, int K, const int G, const int R, const float *x, int ldx,
    const float *bias, const float *scale, int bgs, float *out, int ogs, int ldo) {
    /* Small tiles (batch 1-2) would wait on FMA latency with one accumulator per output:
     * they keep two sets, for even and odd k, when both fit the ISA's register budget. */
    const int S = 2 * R * G * V_PER_BLOCK <= MV_ACC_BUDGET ? 2 : 1;
    vf acc[2][8][4][V_PER_BLOCK]; /* [k parity][row][gate][vector]: R <= 8, G <= 4 */
    for (int s = 0; s < S; ++s)
        for (int b = 0; b < R; ++b)
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v)
                    acc[s][b][g][v] = (s == 0 && !MV_SCALED && bias)
                                          ? v_load(bias + (size_t)g * bgs + v * VW)
                                          : v_zero();
    int k = 0;
    for (; k + S <= K; k += S)
        for (int s = 0; s < S; ++s) {
            const MV_WTYPE *wk = wb + (size_t)(k + s) * G * LI_BLOCK;
            vf xs[8];
            for (int b = 0; b < R; ++b) xs[b] = v_set1(x[(size_t)b * ldx + k + s]);
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v) {
                    const vf w = MV_WLOAD(wk + g * LI_BLOCK + v * VW);
                    for (int b = 0; b < R; ++b)
                        acc[s][b][g][v] = v_fmadd(w, xs[b], acc[s][b][g][v]);
                }
        }
    for (; k < K; ++k) { /* odd K with two sets: the last input */
        const MV_WTYPE *wk = wb + (size_t)k * G * LI_BLOCK;
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const vf w = MV_WLOAD(wk + g * LI_BLOCK + v * VW);
                for (int b = 0; b < R; ++b)
                    acc[0][b][g][v] = v_fmadd(w, v_set1(x[(size_t)b * ldx + k]), acc[0][b][g][v]);
            }
    }
    if (S == 2)
        for (int b = 0; b < R; ++b)
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v)
                    acc[0][b][g][v] = v_add(acc[0][b][g][v], acc[1][b][g][v]);
    for (int b = 0; b < R; ++b)
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                vf r = acc[0][b][g][v];
                if (MV_SCALED) {
                    const size_t at = (size_t)g * bgs + v * VW;
                    r = v_fmadd(r, v_load(scale + at), bias ? v_load(bias + at) : v_zero());
                }
                v_store(out + (size_t)b * ldo + (size_t)g * ogs + v * VW, r);
            }
}

/* Only tiles that fit the registers are instantiated (callers never ask for larger ones). */
#define MV_CASE(G, R)                                                                          \
    case (G) * 16 + (R):                                                                       \
        if ((R) <= MV_MAX_ROWS(G))                                                             \
            MV_NAME(mv_tile)(wb, K, G, R, x, ldx, bias, scale, bgs, out, ogs, ldo);           \
        break;
#define MV_CASES(G)                                                                            \
    MV_CASE(G, 1) MV_CASE(G, 2) MV_CASE(G, 3) MV_CASE(G, 4) MV_CASE(G, 5) MV_CASE(G, 6)         \
        MV_CASE(G, 7) MV_CASE(G, 8)

static void MV_NAME(mv_tile_dispatch)(const MV_WTYPE *wb, int K, int G, int R, const float *x,
                                      int ldx, const float *bias, const float *scale, int bgs,
                                      float *out, int ogs, int ldo) {
    switch (G * 16 + R) {
        MV_CASES(1)
        MV_CASES(2)
        MV_CASES(3)
        MV_CASES(4)
    default: break;
    }
}

static void MV_NAME(matvec_packed)(const void *packed, int K, int G, int blk0, int blk1,
                                   const float *x, int ldx, int rows, const float *bias,
                                   const float *scale, int bgs, float *out, int ogs, int ldo) {
    const size_t block_elems = (size_t)K * G * LI_BLOCK;
    const int max_rows = MV_MAX_ROWS(G);
    for (int blk = blk0; blk < blk1; ++blk) {
        const MV_WTYPE *wb = (const MV_WTYPE *)packed + (size_t)blk * block_elems;
        const int u0 = blk * LI_BLOCK;
        for (int b = 0; b < rows; b += max_rows) {
            const int r = rows - b < max_rows ? rows - b : max_rows;
            MV_NAME(mv_tile_dispatch)(wb, K, G, r, x + (size_t)b * ldx, ldx,
                                      bias ? bias + u0 : 0, scale ? scale + u0 : 0, bgs,
                                      out + (size_t)b * ldo + u0, ogs, ldo);
        }
    }
}

#undef MV_CASE
#undef MV_CASES
