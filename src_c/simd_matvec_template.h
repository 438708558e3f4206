/*
 * The packed fp32 matvec (out = bias + W x), written once over the vector vocabulary and
 * instantiated by simd_kernels_template.h (bf16 and int8 have their own templates, on their
 * dot-product layouts). Before inclusion define:
 *   MV_NAME(x)   x with a suffix unique to the instantiation
 *   MV_WTYPE     element type of the packed weights
 *   MV_WLOAD(p)  VW weights at p as a float vector
 */

/* Rows of the gate-split one-gate tiles when the call's weights reach MV_PREFETCH_MIN_BYTES
 * (beyond L2 on most cores): each weight then comes from L3 or memory once per row tile, and
 * an ISA may take more rows per tile there than in the L2-resident case. MV_F32_WEIGHTS_FIRST
 * (G, R): the tile loads an input's weights into registers first, then broadcasts one row at
 * a time (instead of holding R broadcasts); the order of FMAs into each accumulator is the
 * same either way, so a row's sums do not change. */
#ifndef MV_SPLIT_ROWS_BEYOND_L2
#define MV_SPLIT_ROWS_BEYOND_L2 MV_MAX_ROWS(1)
#endif
#ifndef MV_F32_WEIGHTS_FIRST
#define MV_F32_WEIGHTS_FIRST(G, R) 0
#endif
#define MV_SPLIT_MAX_ROWS                                                                      \
    (MV_SPLIT_ROWS_BEYOND_L2 > MV_MAX_ROWS(1) ? MV_SPLIT_ROWS_BEYOND_L2 : MV_MAX_ROWS(1))

/* One register tile: G gates x LI_BLOCK units x R rows, of a block packed with GS >= G gates
 * per input (GS > G: a tile of one gate, wb at that gate). Always inlined with constant G, R
 * and PAR so the accumulators become registers; weights stream once per tile, straight from
 * memory. */
static inline __attribute__((always_inline)) void MV_NAME(mv_tile)(
    const MV_WTYPE *wb, int K, const int G, const int GS, const int R, const int PAR,
    const float *x, int ldx, const float *bias, int bgs, float *out, int ogs, int ldo,
    const char *pf, const char *pf_end, int pf_step) {
    /* Small tiles (batch 1-2) would wait on FMA latency with one accumulator per output:
     * they keep two sets, for even and odd k, when both fit the ISA's register budget (PAR;
     * gate-split tiles never do, so every row sums in the order of the whole-block tile). */
    const int S = PAR && 2 * R * G * V_PER_BLOCK <= MV_ACC_BUDGET ? 2 : 1;
    vf acc[2][8][4][V_PER_BLOCK]; /* [k parity][row][gate][vector]: R <= 8, G <= 4 */
    for (int s = 0; s < S; ++s)
        for (int b = 0; b < R; ++b)
            for (int g = 0; g < G; ++g)
                for (int v = 0; v < V_PER_BLOCK; ++v)
                    acc[s][b][g][v] = s == 0 && bias ? v_load(bias + (size_t)g * bgs + v * VW)
                                                     : v_zero();
    /* The inputs go in chunks; before each, the prefetch share of the next block that
     * matches the chunk (see matvec_packed). Kept out of the inner loop, whose address
     * registers are all taken at the larger tiles. */
    const int k_even = K / S * S, chunk = pf < pf_end ? 16 : k_even;
    int k = 0;
    while (k < k_even) {
        const int k_end = k_even - k > chunk ? k + chunk : k_even;
        if (pf < pf_end) {
            const char *stop = pf + (size_t)(k_end - k) * pf_step;
            if (stop > pf_end) stop = pf_end;
            for (; pf < stop; pf += 64) __builtin_prefetch(pf, 0, 2);
        }
        for (; k < k_end; k += S)
            for (int s = 0; s < S; ++s) {
                const MV_WTYPE *wk = wb + (size_t)(k + s) * GS * LI_BLOCK;
                if (MV_F32_WEIGHTS_FIRST(G, R)) {
                    vf w[4][V_PER_BLOCK];
                    for (int g = 0; g < G; ++g)
                        for (int v = 0; v < V_PER_BLOCK; ++v)
                            w[g][v] = MV_WLOAD(wk + g * LI_BLOCK + v * VW);
                    for (int b = 0; b < R; ++b) {
                        const vf xb = v_set1(x[(size_t)b * ldx + k + s]);
                        for (int g = 0; g < G; ++g)
                            for (int v = 0; v < V_PER_BLOCK; ++v)
                                acc[s][b][g][v] = v_fmadd(w[g][v], xb, acc[s][b][g][v]);
                    }
                    continue;
                }
                vf xs[8];
                for (int b = 0; b < R; ++b) xs[b] = v_set1(x[(size_t)b * ldx + k + s]);
                for (int g = 0; g < G; ++g)
                    for (int v = 0; v < V_PER_BLOCK; ++v) {
                        const vf w = MV_WLOAD(wk + g * LI_BLOCK + v * VW);
                        for (int b = 0; b < R; ++b)
                            acc[s][b][g][v] = v_fmadd(w, xs[b], acc[s][b][g][v]);
                    }
            }
    }
    for (; k < K; ++k) { /* odd K with two sets: the last input */
        const MV_WTYPE *wk = wb + (size_t)k * GS * LI_BLOCK;
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
            for (int v = 0; v < V_PER_BLOCK; ++v)
                v_store(out + (size_t)b * ldo + (size_t)g * ogs + v * VW, acc[0][b][g][v]);
}

/* Only tiles that fit the registers are instantiated (callers never ask for larger ones). */
#define MV_CASE(G, R)                                                                          \
    case (G) * 16 + (R):                                                                       \
        if ((R) <= MV_MAX_ROWS(G))                                                             \
            MV_NAME(mv_tile)(wb, K, G, G, R, 1, x, ldx, bias, bgs, out, ogs, ldo, pf, pf_end,  \
                             pf_step);                                                         \
        break;
#define MV_CASES(G)                                                                            \
    MV_CASE(G, 1) MV_CASE(G, 2) MV_CASE(G, 3) MV_CASE(G, 4) MV_CASE(G, 5) MV_CASE(G, 6)         \
        MV_CASE(G, 7) MV_CASE(G, 8)
/* A one-gate tile of a block of GS gates (the gate-split tiles below). */
#define MV_SPLIT_CASE(R)                                                                       \
    case (R):                                                                                  \
        if ((R) <= MV_SPLIT_MAX_ROWS)                                                          \
            MV_NAME(mv_tile)(wb, K, 1, GS, R, 0, x, ldx, bias, bgs, out, ogs, ldo, pf, pf_end, \
                             pf_step);                                                         \
        break;

static void MV_NAME(mv_tile_dispatch)(const MV_WTYPE *wb, int K, int G, int R, const float *x,
                                      int ldx, const float *bias, int bgs, float *out, int ogs,
                                      int ldo, const char *pf, const char *pf_end,
                                      int pf_step) {
    switch (G * 16 + R) {
        MV_CASES(1)
        MV_CASES(2)
        MV_CASES(3)
        MV_CASES(4)
    default: break;
    }
}

static void MV_NAME(mv_split_dispatch)(const MV_WTYPE *wb, int K, int GS, int R,
                                       const float *x, int ldx, const float *bias, int bgs,
                                       float *out, int ogs, int ldo, const char *pf,
                                       const char *pf_end, int pf_step) {
    switch (R) {
        MV_SPLIT_CASE(1)
        MV_SPLIT_CASE(2)
        MV_SPLIT_CASE(3)
        MV_SPLIT_CASE(4)
        MV_SPLIT_CASE(5)
        MV_SPLIT_CASE(6)
        MV_SPLIT_CASE(7)
        MV_SPLIT_CASE(8)
    default: break;
    }
}

/*
 * Gate-split tiles. A tile of all G gates holds G * LI_BLOCK accumulators per row; on AVX2
 * (16 registers) that is one row at 4 gates, so a batch re-reads every weight from L2 once
 * per row and the batched product ran at the L2 load rate (LSTM H = 256: ~34 GFLOP/s at
 * batch 1 to 64, Zen 4 with AVX-512 masked). Where a one-gate tile holds at least twice the
 * rows (MV_MAX_ROWS(1) >= 2 MV_MAX_ROWS(G)), blocks of several rows run as G one-gate tiles
 * instead: each weight load then feeds MV_MAX_ROWS(1) rows. Each gate's weights of an input
 * are one whole cache line (LI_BLOCK floats), so the passes read disjoint lines. Not on
 * AVX-512, whose 4-gate tile already holds 6 rows. A batch of 2 rows splits into two-gate
 * tiles instead (8 accumulators; one-gate tiles of 2 rows hold 4, too few to cover the FMA
 * latency): Zen 3 AVX2, LSTM at batch 2, 7-10% faster at H = 64-128, 16% at H = 256 and 23%
 * at H = 512; every row still sums in the whole-block tile's order.
 */
static int MV_NAME(splits_gates)(int G, int rows) {
    return G > 1 && rows > MV_MAX_ROWS(G) && MV_MAX_ROWS(1) >= 2 * MV_MAX_ROWS(G);
}

/*
 * When a block needs many row tiles, every tile after the first finds the block's weights
 * in L2, and memory sits idle while they run; with matrices larger than L2 (H >= ~512 at
 * fp32) the next block then arrives at the pace of the hardware prefetchers. So each tile
 * also prefetches (into L2) an equal share of the next block's weights, a few lines per
 * input, overlapping the next block's memory traffic with this block's arithmetic. Measured
 * (Sapphire Rapids, LSTM H=1024): 4-7% faster at batch 64 (11 tiles a block), no gain at
 * batch 16 (3 tiles), and 4% slower for GRU z,r at batch 16 (2 tiles), where it only adds
 * requests while memory is already the bound: hence only from 4 tiles on. A single-tile
 * block (the streaming case) reads its weights once, in order: no software prefetch. Nor
 * do calls whose weights total less than MV_PREFETCH_MIN_BYTES: those stay in L2 from one
 * step to the next on most current cores, and the prefetches would only cost issue slots.
 */
#ifndef MV_PREFETCH_MIN_BYTES
#define MV_PREFETCH_MIN_BYTES ((size_t)1 << 20)
#endif

static void MV_NAME(matvec_packed)(const void *packed, int K, int G, int blk0, int blk1,
                                   const float *x, int ldx, int rows, const float *bias,
                                   int bgs, float *out, int ogs, int ldo) {
    const size_t block_elems = (size_t)K * G * LI_BLOCK;
    const int split = MV_NAME(splits_gates)(G, rows);
    const size_t block_bytes = block_elems * sizeof(MV_WTYPE);
    const int beyond_l2 = (size_t)(blk1 - blk0) * block_bytes >= MV_PREFETCH_MIN_BYTES;
    const int max_rows = !split         ? MV_MAX_ROWS(G)
                         : beyond_l2    ? MV_SPLIT_ROWS_BEYOND_L2
                                        : MV_MAX_ROWS(1);
    /* A batch of 2 rows (split blocks have more than MV_MAX_ROWS(G) >= 1) splits into
     * two-gate tiles instead: a one-gate tile of 2 rows holds 4 accumulators, too few to
     * cover the FMA latency. */
    const int pairs = split && G % 2 == 0 && rows == 2 && MV_MAX_ROWS(2) >= 2;
    const int passes = pairs ? G / 2 : split ? G : 1; /* tiles per row tile */
    /* Bytes of the next block each tile prefetches, and per input (whole cache lines). The
     * 4-tile rule counts tiles of MV_MAX_ROWS(1) rows for split blocks: larger tiles beyond
     * L2 would otherwise drop the prefetch at batch 16 (AVX2, LSTM H = 1024: 1.12x slower). */
    const int prefetch =
        rows > 3 * (split ? MV_MAX_ROWS(1) : max_rows) &&
        (size_t)(blk1 - blk0) * block_bytes >= MV_PREFETCH_MIN_BYTES &&
        K > 0;
    const int tiles = prefetch ? (rows + max_rows - 1) / max_rows * passes : 1;
    const size_t share = prefetch ? (block_bytes + tiles - 1) / tiles : 0;
    const int pf_step = prefetch ? (int)((share / K + 63) / 64 * 64) : 0;
    for (int blk = blk0; blk < blk1; ++blk) {
        const MV_WTYPE *wb = (const MV_WTYPE *)packed + (size_t)blk * block_elems;
        const char *next = blk + 1 < blk1 ? (const char *)(wb + block_elems) : 0;
        const int u0 = blk * LI_BLOCK;
        /* The larger tiles beyond L2 go as even as the rows allow (8 rows at 6 per tile: 4 + 4,
         * not 6 + 2: a small last tile waits on FMA latency with few accumulators); the
         * others fill each tile in turn. */
        const int row_tiles = (rows + max_rows - 1) / max_rows;
        const int even = split && beyond_l2 && MV_SPLIT_ROWS_BEYOND_L2 != MV_MAX_ROWS(1);
        for (int rt = 0, b = 0, tile = 0; rt < row_tiles; ++rt) {
            const int r = even                    ? (rows - b) / (row_tiles - rt)
                          : rows - b < max_rows ? rows - b
                                                : max_rows;
            for (int g = 0; g < passes; ++g, ++tile) {
                const char *pf = next && prefetch ? next + (size_t)tile * share : 0;
                const char *pf_end = pf ? next + (tile + 1 < tiles ? (size_t)(tile + 1) * share
                                                                    : block_bytes)
                                        : 0;
                const float *xb = x + (size_t)b * ldx;
                float *ob = out + (size_t)b * ldo + u0;
                if (pairs) /* gates 2g, 2g + 1 of both rows */
                    MV_NAME(mv_tile)(wb + (size_t)(2 * g) * LI_BLOCK, K, 2, G, 2, 0, xb, ldx,
                                     bias ? bias + u0 + (size_t)(2 * g) * bgs : 0, bgs,
                                     ob + (size_t)(2 * g) * ogs, ogs, ldo, pf, pf_end, pf_step);
                else if (split)
                    MV_NAME(mv_split_dispatch)(wb + (size_t)g * LI_BLOCK, K, G, r, xb, ldx,
                                               bias ? bias + u0 + (size_t)g * bgs : 0, bgs,
                                               ob + (size_t)g * ogs, ogs, ldo, pf, pf_end,
                                               pf_step);
                else
                    MV_NAME(mv_tile_dispatch)(wb, K, G, r, xb, ldx, bias ? bias + u0 : 0, bgs,
                                              ob, ogs, ldo, pf, pf_end, pf_step);
            }
            b += r;
        }
    }
}

#undef MV_CASE
#undef MV_CASES
#undef MV_SPLIT_CASE
