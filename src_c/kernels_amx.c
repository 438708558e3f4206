/*
 * AMX tile products (Sapphire Rapids and later):
 *   - the whole-sequence input projection of bfloat16 weights on split activations
 *     (li_project_bf16_amx: two TDPBF16PS per weight pair, fp32-accurate activations);
 *   - the rounded bf16 product (TDPBF16PS on activations rounded to one bf16) and the int8
 *     product (TDPBSSD on the int8 codes, exact int32 sums) of batched rows (whole
 *     sequences; int8 also pooled or batched streams): li_matvec_bf16_rounded_amx,
 *     li_matvec_i8_amx.
 * One tile instruction multiplies 16 rows x 32 bf16 (64 int8) inputs by as many inputs x 16
 * units: 256x the multiply-adds of one VDPBF16PS / VPDPBUSD, which is what the
 * compute-bound batched products want. Steps of one row stay on the vector kernels, which
 * the tile products also fall back to when the OS refuses tile state.
 *
 * The packed layouts are already the B operand AMX wants: bf16 [blk][K/2][G][16][2] and
 * int8 [blk][K/4][G][16][4]; for one gate of one block, pair (quad) row k holds 16 units x 2
 * (4) inputs, 64 bytes, and consecutive rows are G * 64 bytes apart. Prepared activation
 * rows (li_rows.q) are the A operand as they are: 64 bytes of one row per K chunk.
 */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* An x86-only kernel file: the x86 declarations of li_kernels.h apply (setup.py defines the
 * macro for the portable sources only). */
#ifndef LI_HAVE_X86_KERNELS
#define LI_HAVE_X86_KERNELS 1
#endif
#include "bf16_split_avx512.h"
#include "li_kernels.h"

/* The 64-byte tile configuration (palette 1). */
typedef struct __attribute__((packed)) {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* The split projection's tiles: 0-3 accumulators (one per gate, 16 rows x 16 fp32), 4 / 5
 * activations hi / lo (16 rows x 16 pairs), 6 weights (16 pair rows x 16 units x 2). */
static void configure_tiles(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t <= 6; ++t) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* Tile numbers are immediates: one case per gate. */
#define ZERO_ACC(g)                                                                            \
    case g: _tile_zero(g); break;
#define DOT_ACC(g)                                                                             \
    case g:                                                                                    \
        _tile_dpbf16ps(g, 4, 6);                                                               \
        _tile_dpbf16ps(g, 5, 6);                                                               \
        break;
#define STORE_ACC(g)                                                                           \
    case g: _tile_stored(g, tmp, 64); break;

/* Up to 16 rows of activations as zero-padded hi / lo bf16 arrays of Kp entries each. */
static void split_rows(const float *x, int ldx, int nrows, int K, int Kp, uint16_t *hi,
                       uint16_t *lo) {
    memset(hi, 0, sizeof(uint16_t) * 16 * Kp);
    memset(lo, 0, sizeof(uint16_t) * 16 * Kp);
    for (int r = 0; r < nrows; ++r) {
        const float *xr = x + (size_t)r * ldx;
        for (int k = 0; k < K; k += 16) {
            const int n = K - k < 16 ? K - k : 16;
            const __mmask16 m = (__mmask16)((1u << n) - 1u);
            __m256i h, l;
            split_bf16(_mm512_maskz_loadu_ps(m, xr + k), &h, &l);
            _mm256_mask_storeu_epi16(hi + (size_t)r * Kp + k, m, h);
            _mm256_mask_storeu_epi16(lo + (size_t)r * Kp + k, m, l);
        }
    }
}

/*
 * Linux hands out AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA), and granting it enlarges every signal frame of the process (a small
 * sigaltstack set up later can then fail). So it is asked for here, on the first AMX
 * product, not at import: a process that never runs a bf16 sequence is left as it was.
 * Refused (or not Linux): the caller falls back to sgemm. Racing first calls both ask; the
 * request is idempotent.
 */
static int amx_permitted(void) {
    static int state = 0; /* 0 unknown, 1 granted, -1 refused */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s == 0) {
#if defined(__linux__) && defined(SYS_arch_prctl)
        s = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0
                ? 1
                : -1;
#else
        s = -1;
#endif
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s == 1;
}

int li_project_bf16_amx(const void *packed, int K, int G, int nblk, const float *x, int ldx,
                        int rows, const float *bias, int bgs, float *out, int ogs, int ldo) {
    if (G < 1 || G > 4 || K <= 0) return -1;
    if (!amx_permitted()) return -3;
    const int K2 = (K + 1) / 2;          /* pair rows in the packed layout */
    const int chunks = (K2 + 15) / 16;   /* 16 pair rows per B tile */
    const int Kp = chunks * 32;          /* bf16 entries per split activation row */
    const size_t block_elems = (size_t)K2 * 2 * G * LI_BLOCK;
    uint16_t *hi = aligned_alloc(64, sizeof(uint16_t) * 16 * Kp);
    uint16_t *lo = aligned_alloc(64, sizeof(uint16_t) * 16 * Kp);
    uint16_t *tail = aligned_alloc(64, sizeof(uint16_t) * 16 * 4 * 32); /* last partial B */
    if (!hi || !lo || !tail) {
        free(hi);
        free(lo);
        free(tail);
        return -2;
    }
    float tmp[16 * 16];
    configure_tiles();
    for (int r0 = 0; r0 < rows; r0 += 16) {
        const int nr = rows - r0 < 16 ? rows - r0 : 16;
        split_rows(x + (size_t)r0 * ldx, ldx, nr, K, Kp, hi, lo);
        for (int blk = 0; blk < nblk; ++blk) {
            const uint16_t *wb = (const uint16_t *)packed + (size_t)blk * block_elems;
            for (int g = 0; g < G; ++g)
                switch (g) { ZERO_ACC(0) ZERO_ACC(1) ZERO_ACC(2) ZERO_ACC(3) }
            for (int ch = 0; ch < chunks; ++ch) {
                _tile_loadd(4, hi + ch * 32, Kp * (int)sizeof(uint16_t));
                _tile_loadd(5, lo + ch * 32, Kp * (int)sizeof(uint16_t));
                const uint16_t *b = wb + (size_t)ch * 16 * G * 32;
                if (ch * 16 + 16 > K2) { /* pair rows past K2: zero, not past the block */
                    const int have = K2 - ch * 16;
                    memset(tail, 0, sizeof(uint16_t) * 16 * G * 32);
                    memcpy(tail, b, sizeof(uint16_t) * (size_t)have * G * 32);
                    b = tail;
                }
                for (int g = 0; g < G; ++g) {
                    _tile_loadd(6, b + g * 32, G * 64);
                    switch (g) { DOT_ACC(0) DOT_ACC(1) DOT_ACC(2) DOT_ACC(3) }
                }
            }
            for (int g = 0; g < G; ++g) {
                switch (g) { STORE_ACC(0) STORE_ACC(1) STORE_ACC(2) STORE_ACC(3) }
                const int u0 = blk * LI_BLOCK;
                const __m512 bv = bias ? _mm512_loadu_ps(bias + (size_t)g * bgs + u0)
                                       : _mm512_setzero_ps();
                for (int r = 0; r < nr; ++r)
                    _mm512_storeu_ps(out + (size_t)(r0 + r) * ldo + (size_t)g * ogs + u0,
                                     _mm512_add_ps(_mm512_loadu_ps(tmp + r * 16), bv));
            }
        }
    }
    _tile_release();
    free(hi);
    free(lo);
    free(tail);
    return 0;
}

/* ---- tile products: rounded bf16 and int8 ------------------------------------------------ */

/* Rows from which a product runs on tiles: a tile instruction costs about the same for 1 row
 * as for 16. Measured on Sapphire Rapids (one product, K = H = 256, 4 gates, weights in L2):
 * int8 1 row 2.2 us on tiles vs 1.8 us VPDPBUSD, 2 rows 2.5 vs 3.1, 4 rows 2.6 vs 4.8; the
 * rounded bf16 product 4.0 vs 9.4 us at 2 rows. */
#define AMX_MIN_ROWS 2

/* The products' tiles, for row tiles of `rows` rows and K chunks of 16 pair (quad) rows:
 * 0-3 accumulators (one per gate, rows x 16 fp32 / int32), 4 a full chunk of activations
 * (rows x 64 bytes), 6 a full chunk of weights (16 pair rows x 64 bytes). Without a tail,
 * 7 is a second full chunk of weights: gates alternate between 6 and 7, so one gate's
 * weights load while the previous gate's product still reads its tile (tile registers are
 * not renamed). With the last `tail` (< 16) pair rows of K left over, 5 holds their
 * activations (rows x 4 * tail bytes) and 7 their weights (tail rows x 64 bytes). Sized
 * exactly, so no tile reads past a row's prepared inputs or a block's weights. */
static void configure_product_tiles(int rows, int tail) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t <= 4; ++t) {
        cfg.rows[t] = (uint8_t)rows;
        cfg.colsb[t] = 64;
    }
    cfg.rows[6] = cfg.rows[7] = 16;
    cfg.colsb[6] = cfg.colsb[7] = 64;
    if (tail) {
        cfg.rows[5] = (uint8_t)rows;
        cfg.colsb[5] = (uint16_t)(4 * tail);
        cfg.rows[7] = (uint8_t)tail;
    }
    _tile_loadconfig(&cfg);
}

/* Tile numbers are immediates: one case per gate, for each activation / weight tile pair. */
#define TILE_DOT(i8, g, a, b)                                                                   \
    do {                                                                                       \
        if (i8)                                                                                \
            _tile_dpbssd(g, a, b);                                                             \
        else                                                                                   \
            _tile_dpbf16ps(g, a, b);                                                           \
    } while (0)
/* Gates g of one chunk of activations (tile a): weights from w, gate g at w + g * 64, into
 * tile b (one_b) or alternating 6 / 7. */
#define GATE_DOTS(i8, a, b, one_b, w, ldw)                                                      \
    for (int g = 0; g < G; ++g) {                                                              \
        if ((one_b) || !(g & 1)) {                                                             \
            _tile_loadd(b, (w) + g * 64, (ldw));                                               \
            switch (g) {                                                                       \
            case 0: TILE_DOT(i8, 0, a, b); break;                                              \
            case 1: TILE_DOT(i8, 1, a, b); break;                                              \
            case 2: TILE_DOT(i8, 2, a, b); break;                                              \
            default: TILE_DOT(i8, 3, a, b); break;                                             \
            }                                                                                  \
        } else {                                                                               \
            _tile_loadd(7, (w) + g * 64, (ldw));                                               \
            if (g == 1)                                                                        \
                TILE_DOT(i8, 1, a, 7);                                                         \
            else                                                                               \
                TILE_DOT(i8, 3, a, 7);                                                         \
        }                                                                                      \
    }

/*
 * One row tile (the tiles' configured rows, prepared 64-byte chunks at xq, ldq apart) times
 * one block of G gates (weights wb), `full` chunks of 16 pair (quad) rows, then the tail.
 * The accumulators start from init (gate g's 16 values at init + g * init_gs, the same for
 * every row: a tile load of stride 0) or zero, and are stored to dst (gate g at
 * dst + g * dst_gs bytes, rows dst_ld bytes apart).
 */
static inline __attribute__((always_inline)) void tile_block(
    const int i8, const char *wb, int G, int full, int tail, const char *xq, int ldq,
    const float *init, int init_gs, char *dst, size_t dst_gs, int dst_ld) {
    const int ldw = G * 64;
    for (int g = 0; g < G; ++g) {
        const float *iv = init ? init + (size_t)g * init_gs : 0;
        switch (g) {
        case 0: if (iv) _tile_loadd(0, iv, 0); else _tile_zero(0); break;
        case 1: if (iv) _tile_loadd(1, iv, 0); else _tile_zero(1); break;
        case 2: if (iv) _tile_loadd(2, iv, 0); else _tile_zero(2); break;
        default: if (iv) _tile_loadd(3, iv, 0); else _tile_zero(3); break;
        }
    }
    if (tail) {
        for (int ch = 0; ch < full; ++ch) {
            _tile_loadd(4, xq + (size_t)ch * 64, ldq);
            GATE_DOTS(i8, 4, 6, 1, wb + (size_t)ch * 16 * ldw, ldw)
        }
        _tile_loadd(5, xq + (size_t)full * 64, ldq);
        GATE_DOTS(i8, 5, 7, 1, wb + (size_t)full * 16 * ldw, ldw)
    } else {
        for (int ch = 0; ch < full; ++ch) {
            _tile_loadd(4, xq + (size_t)ch * 64, ldq);
            GATE_DOTS(i8, 4, 6, 0, wb + (size_t)ch * 16 * ldw, ldw)
        }
    }
    for (int g = 0; g < G; ++g) switch (g) {
        case 0: _tile_stored(0, dst, dst_ld); break;
        case 1: _tile_stored(1, dst + dst_gs, dst_ld); break;
        case 2: _tile_stored(2, dst + 2 * dst_gs, dst_ld); break;
        default: _tile_stored(3, dst + 3 * dst_gs, dst_ld); break;
        }
}

/* int8 out rows of one row tile and block from the int32 sums acc[G][16][16], scaled as the
 * vector kernels scale them (simd_matvec_i8_template.h), so both give the same floats. */
static inline __attribute__((always_inline)) void store_i8_block(
    const int32_t *acc, int G, int nr, const float *xscale, const float *bias,
    const float *scale, int bgs, float *out, int ogs, int ldo) {
    for (int g = 0; g < G; ++g) {
        const __m512 bv = bias ? _mm512_loadu_ps(bias + (size_t)g * bgs) : _mm512_setzero_ps();
        const __m512 sv = _mm512_loadu_ps(scale + (size_t)g * bgs);
        for (int r = 0; r < nr; ++r) {
            const __m512 v = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + (size_t)(g * 16 + r) * 16)),
                _mm512_mul_ps(sv, _mm512_set1_ps(xscale[r])), bv);
            _mm512_storeu_ps(out + (size_t)r * ldo + (size_t)g * ogs, v);
        }
    }
}

/*
 * The product over blocks [blk0, blk1) on tiles (li_product_fn's contract). Full row tiles
 * run block-major, so each block's weights (K * G * 64 bytes) stay in L1 for every row tile;
 * a last partial row tile runs after them on its own tile configuration. Returns 0, or -1
 * when the OS refuses tile state (nothing written).
 */
static inline __attribute__((always_inline)) int tile_product(
    const int i8, const void *packed, int K, int G, int blk0, int blk1, const li_rows *x,
    int rows, const float *bias, const float *scale, int bgs, float *out, int ogs, int ldo) {
    if (!amx_permitted()) return -1;
    const int P = i8 ? 4 : 2;                 /* inputs per packed row */
    const int Kr = (K + P - 1) / P;           /* packed rows of K */
    const int full = Kr / 16, tail = Kr % 16; /* whole 16-row chunks, then the rest */
    const size_t block_bytes = (size_t)Kr * G * 64;
    const char *xq = (const char *)x->q;
    _Alignas(64) char acc[4 * 16 * 16 * 4];
    const int whole = rows / 16 * 16;
    for (int pass = 0; pass < 2; ++pass) {
        const int r0 = pass ? whole : 0, r1 = pass ? rows : whole;
        if (r1 <= r0) continue;
        configure_product_tiles(pass ? rows - whole : 16, tail);
        for (int blk = blk0; blk < blk1; ++blk) {
            const char *wb = (const char *)packed + (size_t)blk * block_bytes;
            const int u0 = blk * LI_BLOCK;
            for (int r = r0; r < r1; r += 16) {
                const int nr = r1 - r < 16 ? r1 - r : 16;
                const char *xr = xq + (size_t)r * x->ldq;
                float *o = out + (size_t)r * ldo + u0;
                if (i8) { /* int32 sums to scale */
                    tile_block(1, wb, G, full, tail, xr, x->ldq, 0, 0, acc, 1024, 64);
                    store_i8_block((const int32_t *)acc, G, nr, x->scale + r,
                                   bias ? bias + u0 : 0, scale + u0, bgs, o, ogs, ldo);
                } else /* bf16: bias + sums, straight into out */
                    tile_block(0, wb, G, full, tail, xr, x->ldq, bias ? bias + u0 : 0, bgs,
                               (char *)o, sizeof(float) * (size_t)ogs,
                               (int)sizeof(float) * ldo);
            }
        }
    }
    _tile_release();
    return 0;
}

void li_matvec_bf16_rounded_amx(const void *packed, int K, int G, int blk0, int blk1,
                                const li_rows *x, int rows, const float *bias,
                                const float *scale, const int32_t *rowsum, int bgs, float *out,
                                int ogs, int ldo) {
    if (G < 1 || G > 4 || K <= 0 || rows < AMX_MIN_ROWS ||
        tile_product(0, packed, K, G, blk0, blk1, x, rows, bias, scale, bgs, out, ogs, ldo))
        li_matvec_bf16_rounded_avx512bf16(packed, K, G, blk0, blk1, x, rows, bias, scale,
                                          rowsum, bgs, out, ogs, ldo);
}

void li_matvec_i8_amx(const void *packed, int K, int G, int blk0, int blk1, const li_rows *x,
                      int rows, const float *bias, const float *scale, const int32_t *rowsum,
                      int bgs, float *out, int ogs, int ldo) {
    if (G < 1 || G > 4 || K <= 0 || rows < AMX_MIN_ROWS ||
        tile_product(1, packed, K, G, blk0, blk1, x, rows, bias, scale, bgs, out, ogs, ldo))
        li_matvec_i8_avx512vnni(packed, K, G, blk0, blk1, x, rows, bias, scale, rowsum, bgs,
                                out, ogs, ldo);
}
