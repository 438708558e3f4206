/*
 * The bfloat16 packed product, written once over the vector vocabulary. Weights are packed
 * [blk][K/2][G][16][2]: one vector load holds VW units x 2 inputs (a bf16 pair per 32-bit
 * lane), the operand VDPBF16PS takes.
 *
 * Before including define:
 *   BF_NAME(x)   x with a suffix unique to the instantiation
 *   BF16_DOT     0: widen the pair in registers (shift / mask to two fp32 vectors) and FMA
 *                   with the fp32 activations;
 *                1: V_DPBF16(acc, w, xb) on activations prepared as two bfloat16 halves
 *                   (hi = bf16(x), lo = bf16(x - hi); li_prepare_bf16_avx512bf16), so the
 *                   activations keep ~16 significant bits and the products stay exact;
 *                2: V_DPBF16(acc, w, xb) on activations rounded to one bfloat16
 *                   (li_prepare_bf16_rounded_avx512bf16): half the instructions of 1, twice
 *                   the throughput of fp32 FMAs, ~2^-9 relative error per activation (the
 *                   whole-sequence product at batch >= LI_BF16_ROUNDED_MIN_ROWS).
 */

#if BF16_DOT == 2
/* Pair kp of every row times pair row kp of the block, into one accumulator set. */
static inline __attribute__((always_inline)) void BF_NAME(bf16_rounded_pair)(
    const uint16_t *wb, int kp, const int G, const int R, const li_rows *x,
    vf acc[8][4][V_PER_BLOCK]) {
    const uint16_t *wk = wb + (size_t)kp * G * LI_BLOCK * 2;
    vi xh[8];
    for (int b = 0; b < R; ++b) {
        const uint16_t *hi = (const uint16_t *)((const char *)x->q + (size_t)b * x->ldq);
        int32_t pair;
        memcpy(&pair, hi + 2 * kp, 4);
        xh[b] = vi_set1(pair);
    }
    for (int g = 0; g < G; ++g)
        for (int v = 0; v < V_PER_BLOCK; ++v) {
            const vi w = vi_load(wk + (g * LI_BLOCK + v * VW) * 2);
            for (int b = 0; b < R; ++b) acc[b][g][v] = V_DPBF16(acc[b][g][v], w, xh[b]);
        }
}
#endif

/* One register tile: G gates x LI_BLOCK units x R rows, always inlined with constant G, R. */
static inline __attribute__((always_inline)) void BF_NAME(bf16_tile)(
    const uint16_t *wb, int K, const int G, const int R, const li_rows *x, const float *bias,
    int bgs, float *out, int ogs, int ldo) {
    /* Two accumulator sets: even / odd inputs (widening), the hi / lo halves (split dot), or
     * even / odd input pairs (rounded dot: two dependency chains where R * G is small). */
    const int S = 2 * R * G * V_PER_BLOCK <= MV_ACC_BUDGET ? 2 : 1;
    const int K2 = (K + 1) / 2;
    vf acc[2][8][4][V_PER_BLOCK];
    for (int s = 0; s < S; ++s)
        for (int b = 0; b < R; ++b)
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v)
                    acc[s][b][g][v] = s == 0 && bias ? v_load(bias + (size_t)g * bgs + v * VW)
                                                     : v_zero();
#if BF16_DOT == 2
    /* Pairs kp + s go to set s: s is a constant of the unrolled loop, so the accumulators stay
     * in registers (a set chosen at run time sends them to the stack). */
    int kp = 0;
    for (; kp + S <= K2; kp += S)
        for (int s = 0; s < S; ++s)
            BF_NAME(bf16_rounded_pair)(wb, kp + s, G, R, x, acc[s]);
    for (; kp < K2; ++kp) BF_NAME(bf16_rounded_pair)(wb, kp, G, R, x, acc[0]);
#else
    for (int kp = 0; kp < K2; ++kp) {
        const uint16_t *wk = wb + (size_t)kp * G * LI_BLOCK * 2;
#if BF16_DOT == 1
        vi xh[8], xl[8];
        for (int b = 0; b < R; ++b) {
            const uint16_t *hi = (const uint16_t *)((const char *)x->q + (size_t)b * x->ldq);
            int32_t pair_hi, pair_lo;
            memcpy(&pair_hi, hi + 2 * kp, 4);
            memcpy(&pair_lo, hi + 2 * K2 + 2 * kp, 4);
            xh[b] = vi_set1(pair_hi);
            xl[b] = vi_set1(pair_lo);
        }
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const vi w = vi_load(wk + (g * LI_BLOCK + v * VW) * 2);
                for (int b = 0; b < R; ++b) {
                    acc[0][b][g][v] = V_DPBF16(acc[0][b][g][v], w, xh[b]);
                    acc[S - 1][b][g][v] = V_DPBF16(acc[S - 1][b][g][v], w, xl[b]);
                }
            }
#else
        vf x0[8], x1[8];
        const int has_odd = 2 * kp + 1 < K;
        for (int b = 0; b < R; ++b) {
            const float *xb = x->x + (size_t)b * x->ldx;
            x0[b] = v_set1(xb[2 * kp]);
            x1[b] = has_odd ? v_set1(xb[2 * kp + 1]) : v_zero();
        }
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const vi w = vi_load(wk + (g * LI_BLOCK + v * VW) * 2);
                const vf w0 = vi_as_vf(vi_slli(w, 16));                  /* even input */
                const vf w1 = vi_as_vf(vi_and(w, vi_set1((int32_t)0xFFFF0000u))); /* odd */
                for (int b = 0; b < R; ++b) {
                    acc[0][b][g][v] = v_fmadd(w0, x0[b], acc[0][b][g][v]);
                    acc[S - 1][b][g][v] = v_fmadd(w1, x1[b], acc[S - 1][b][g][v]);
                }
            }
#endif
    }
#endif
    for (int b = 0; b < R; ++b)
        for (int g = 0; g < G; ++g)
            for (int v = 0; v < V_PER_BLOCK; ++v) {
                const vf r = S == 2 ? v_add(acc[0][b][g][v], acc[1][b][g][v]) : acc[0][b][g][v];
                v_store(out + (size_t)b * ldo + (size_t)g * ogs + v * VW, r);
            }
}

#define BF_CASE(G, R)                                                                          \
    case (G) * 16 + (R):                                                                       \
        if ((R) <= MV_MAX_ROWS(G)) BF_NAME(bf16_tile)(wb, K, G, R, &xr, bias, bgs, out, ogs, ldo); \
        break;
#define BF_CASES(G)                                                                            \
    BF_CASE(G, 1) BF_CASE(G, 2) BF_CASE(G, 3) BF_CASE(G, 4) BF_CASE(G, 5) BF_CASE(G, 6)         \
        BF_CASE(G, 7) BF_CASE(G, 8)

static void BF_NAME(bf16_tile_dispatch)(const uint16_t *wb, int K, int G, int R, li_rows xr,
                                        const float *bias, int bgs, float *out, int ogs,
                                        int ldo) {
    switch (G * 16 + R) {
        BF_CASES(1)
        BF_CASES(2)
        BF_CASES(3)
        BF_CASES(4)
    default: break;
    }
}

static void BF_NAME(matvec_bf16)(const void *packed, int K, int G, int blk0, int blk1,
                                 const li_rows *x, int rows, const float *bias,
                                 const float *scale, const int32_t *rowsum, int bgs, float *out,
                                 int ogs, int ldo) {
    (void)scale;
    (void)rowsum;
    const size_t block_elems = (size_t)(K + 1) / 2 * 2 * G * LI_BLOCK;
    const int max_rows = MV_MAX_ROWS(G);
    for (int blk = blk0; blk < blk1; ++blk) {
        const uint16_t *wb = (const uint16_t *)packed + (size_t)blk * block_elems;
        const int u0 = blk * LI_BLOCK;
        /* Tiles as even as the rows allow (16 rows at 6 per tile: 5, 5, 6, not 6, 6, 4): a
         * small last tile reads the weights for few rows. */
        const int tiles = (rows + max_rows - 1) / max_rows;
        for (int t = 0, b = 0; t < tiles; ++t) {
            const int r = (rows - b) / (tiles - t);
            li_rows xr = *x; /* the tile's rows */
            xr.x = x->x + (size_t)b * x->ldx;
            if (x->q) xr.q = (const char *)x->q + (size_t)b * x->ldq;
            BF_NAME(bf16_tile_dispatch)(wb, K, G, r, xr, bias ? bias + u0 : 0, bgs,
                                        out + (size_t)b * ldo + u0, ogs, ldo);
            b += r;
        }
    }
}

#undef BF_CASE
#undef BF_CASES
