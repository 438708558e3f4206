/*
 * The whole-sequence input projection of bfloat16 weights on AMX tiles (TDPBF16PS): the
 * large-batch product where AMX wins (one instruction multiplies 16 rows x 32 inputs by
 * 32 inputs x 16 units). Streaming steps (one row) stay on the vector kernels.
 *
 * The packed bf16 layout [blk][K/2][G][16][2] is already the B operand AMX wants: for one
 * gate of one block, pair row kp holds 16 units x 2 inputs (64 bytes), and consecutive pair
 * rows are G * 64 bytes apart. Activations are split into two bf16 halves (hi + lo, as the
 * avx512bf16 vector product does): ~2^-16 relative error per activation on top of the
 * weights' own rounding.
 */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "bf16_split_avx512.h"
#include "li_kernels.h"

/* Tiles: 0-3 accumulators (one per gate, 16 rows x 16 fp32), 4 / 5 activations hi / lo
 * (16 rows x 16 pairs), 6 weights (16 pair rows x 16 units x 2). */
typedef struct __attribute__((packed)) {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

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
