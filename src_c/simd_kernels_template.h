/*
 * The SIMD kernels, written once over a small vector vocabulary. A per-ISA translation unit
 * (kernels_avx2.c, kernels_avx512.c) defines that vocabulary for its registers, includes this
 * file, and exports the resulting table. Only those files are compiled with -m flags.
 *
 * Vocabulary each ISA file provides before including this header:
 *   vf                     the float vector type, VW lanes (LI_BLOCK must be a multiple of VW)
 *   v_load(p) v_store(p,v) unaligned full-width load / store
 *   v_load_n(p,n) v_store_n(p,v,n)   first n lanes only (0 < n < VW), others zero / untouched
 *   v_set1 v_zero v_add v_sub v_mul v_div v_min v_max
 *   v_fmadd(a,b,c) = a*b+c   v_fnmadd(a,b,c) = c-a*b
 *   v_max_nan(a,b)         max, NaN if either is NaN
 *   v_evens(lo,hi) v_odds(lo,hi)   the even / odd lanes of the 2*VW floats lo then hi
 *   v_round(x)             round to nearest integer (as float)
 *   v_ldexp(x,n)           x * 2^n for integer-valued n in [-126, 127]
 *   v_abs(x)               |x|
 *   v_store_i8(p, v)       integer-valued floats in [-127, 127] stored as VW int8
 *   vi                     the integer vector type (VW int32 lanes)
 *   vi_zero vi_load vi_set1 vi_add vi_sub vi_slli vi_and; vi_to_vf (convert), vi_as_vf (bits)
 *   V_DOT_I8 V_DOT_I8_PREP V_DOT_I8_OFFSET   see simd_matvec_i8_template.h
 *   MV_MAX_ROWS(G)         rows per register tile of the packed matvec, for G gates
 */
#include <math.h>
#include <stdint.h>

#include "int8_row_scale.h"

static inline vf ld(const float *p, int n) { return n >= VW ? v_load(p) : v_load_n(p, n); }
static inline void st(float *p, vf v, int n) {
    if (n >= VW)
        v_store(p, v);
    else
        v_store_n(p, v, n);
}

/* ---- activations -------------------------------------------------------------------------
 * exp: Cephes-style. x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * reduction), exp(r) by a degree-7 polynomial, scaled by 2^n through the exponent bits.
 * Inputs are clamped to [-87, 88] so 2^n stays a normal float; sigmoid and tanh saturate long
 * before that. Measured (tests/test_activations.py: 2M-point grid over [-30, 30], the tails to
 * +-200 and +-1e30, against float64), AVX2 and AVX-512 alike:
 *   sigmoid: max abs error 8.9e-8      tanh: max abs error 1.8e-7
 */
static inline vf v_exp(vf x) {
    x = v_min(v_set1(88.0f), v_max(v_set1(-87.0f), x)); /* operand order lets NaN through */
    const vf n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    vf r = v_fnmadd(n, v_set1(0.693359375f), x);
    r = v_fnmadd(n, v_set1(-2.12194440e-4f), r);
    vf p = v_set1(1.9875691500e-4f);
    p = v_fmadd(p, r, v_set1(1.3981999507e-3f));
    p = v_fmadd(p, r, v_set1(8.3334519073e-3f));
    p = v_fmadd(p, r, v_set1(4.1665795894e-2f));
    p = v_fmadd(p, r, v_set1(1.6666665459e-1f));
    p = v_fmadd(p, r, v_set1(5.0000001201e-1f));
    p = v_fmadd(p, v_mul(r, r), v_add(r, v_set1(1.0f)));
    return v_ldexp(p, n);
}

/* sigmoid(x) = 1 / (1 + exp(-x)); exact division. */
static inline vf v_sigmoid(vf x) {
    return v_div(v_set1(1.0f), v_add(v_set1(1.0f), v_exp(v_sub(v_zero(), x))));
}

/* tanh(x) = 2 sigmoid(2x) - 1: absolute error stays ~1 ulp of 1 near zero, which is what the
 * 1e-5 absolute output tolerance needs (relative accuracy near zero is not required). */
static inline vf v_tanh(vf x) {
    const vf two = v_set1(2.0f);
    return v_sub(v_div(two, v_add(v_set1(1.0f), v_exp(v_mul(v_set1(-2.0f), x)))),
                 v_set1(1.0f));
}

static void activation_array_simd(int kind, const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i += VW) {
        const int m = (n - i) >= (size_t)VW ? VW : (int)(n - i);
        const vf v = ld(x + i, m);
        st(y + i, kind == LI_ACT_SIGMOID ? v_sigmoid(v) : v_tanh(v), m);
    }
}

/* Horizontal max / sum of one vector, through memory: once per row, so speed does not matter. */
static inline float hmax(vf v) {
    float lanes[VW];
    v_store(lanes, v);
    float m = lanes[0];
    for (int i = 1; i < VW; ++i) m = lanes[i] > m ? lanes[i] : m;
    return m;
}
static inline float hsum(vf v) {
    float lanes[VW];
    v_store(lanes, v);
    float s = 0.0f;
    for (int i = 0; i < VW; ++i) s += lanes[i];
    return s;
}

/* li_softmax_rows_fn with v_exp (see its error above). Full vectors in SIMD, the last n % VW
 * floats of a row in scalar code. A NaN needs no test of its own: exp lets it through into the
 * sum, which makes the whole row NaN (an inf does the same through inf - inf). exp(-inf - m) is
 * clamped to exp(-87) ~ 1.6e-38 instead of 0, invisible next to the max term's 1. */
static void softmax_rows_simd(float *y, size_t rows, size_t n, size_t ld, int log_softmax) {
    const size_t full = n - n % VW;
    for (size_t r = 0; r < rows; ++r) {
        float *row = y + r * ld;
        vf vm = v_set1(-INFINITY);
        for (size_t j = 0; j < full; j += VW) vm = v_max(vm, v_load(row + j));
        float m = hmax(vm);
        for (size_t j = full; j < n; ++j) m = row[j] > m ? row[j] : m;
        const vf vmax = v_set1(m);
        vf vs = v_zero();
        for (size_t j = 0; j < full; j += VW) {
            const vf e = v_exp(v_sub(v_load(row + j), vmax));
            vs = v_add(vs, e);
            if (!log_softmax) v_store(row + j, e);
        }
        float s = hsum(vs);
        for (size_t j = full; j < n; ++j) {
            const float e = expf(row[j] - m);
            s += e;
            if (!log_softmax) row[j] = e;
        }
        if (log_softmax) {
            /* (y - m) - log s: folding m + log s into one shift would round it at |m|'s ulp */
            const float log_s = logf(s);
            const vf vlog = v_set1(log_s);
            for (size_t j = 0; j < full; j += VW)
                v_store(row + j, v_sub(v_sub(v_load(row + j), vmax), vlog));
            for (size_t j = full; j < n; ++j) row[j] = (row[j] - m) - log_s;
        } else {
            const float inv = 1.0f / s;
            const vf vinv = v_set1(inv);
            for (size_t j = 0; j < full; j += VW) v_store(row + j, v_mul(v_load(row + j), vinv));
            for (size_t j = full; j < n; ++j) row[j] *= inv;
        }
    }
}

/* li_layernorm_rows_fn: the statistics in two float32 partial sums of VW lanes each (four
 * independent add chains, rows of hundreds of floats in a few hundred cycles), then one pass
 * applying (x - m) * inv, scale and bias. Against float64 statistics: ~1e-7 relative on rows
 * of up to thousands of floats (tests/test_graph_ops_window.py). */
static void layernorm_rows_simd(const float *x, float *y, size_t rows, size_t n,
                                const float *scale, const float *bias, float eps) {
    const size_t full = n - n % VW;
    const float fn = (float)n; /* divided by, not multiplied by 1/n: a constant row's mean exact */
    for (size_t r = 0; r < rows; ++r) {
        const float *a = x + r * n;
        float *out = y + r * n;
        vf s0 = v_zero(), s1 = v_zero();
        size_t j = 0;
        for (; j + 2 * VW <= full; j += 2 * VW) {
            s0 = v_add(s0, v_load(a + j));
            s1 = v_add(s1, v_load(a + j + VW));
        }
        if (j < full) s0 = v_add(s0, v_load(a + j));
        float sum = hsum(v_add(s0, s1));
        for (j = full; j < n; ++j) sum += a[j];
        const float m = sum / fn;
        const vf vm = v_set1(m);
        vf q0 = v_zero(), q1 = v_zero();
        for (j = 0; j + 2 * VW <= full; j += 2 * VW) {
            const vf d0 = v_sub(v_load(a + j), vm), d1 = v_sub(v_load(a + j + VW), vm);
            q0 = v_fmadd(d0, d0, q0);
            q1 = v_fmadd(d1, d1, q1);
        }
        if (j < full) {
            const vf d0 = v_sub(v_load(a + j), vm);
            q0 = v_fmadd(d0, d0, q0);
        }
        float sq = hsum(v_add(q0, q1));
        for (j = full; j < n; ++j) sq += (a[j] - m) * (a[j] - m);
        const float inv = 1.0f / sqrtf(sq / fn + eps);
        const vf vinv = v_set1(inv);
        for (j = 0; j < full; j += VW) {
            vf v = v_mul(v_sub(v_load(a + j), vm), vinv);
            if (scale) v = v_mul(v, v_load(scale + j));
            if (bias) v = v_add(v, v_load(bias + j));
            v_store(out + j, v);
        }
        for (j = full; j < n; ++j) {
            float v = (a[j] - m) * inv;
            if (scale) v *= scale[j];
            if (bias) v += bias[j];
            out[j] = v;
        }
    }
}

/* The clip bound as a vector pair; +inf when the cell has no clip. */
static inline float clip_bound(const li_cell *cell) { return cell->clip > 0.0f ? cell->clip : INFINITY; }
/* x86 min/max return the second operand when either is NaN: this order lets NaN through. */
/* Unclipped cells (the usual case) skip the two operations: the loops are short and bound
 * by vector arithmetic. */
#define CLIP(v) (clipped ? v_min(clip_hi, v_max(clip_lo, (v))) : (v))

/* ---- packed products, one per weight format --------------------------------------------- */

#define MV_NAME(x) x##_f32
#define MV_WTYPE float
#define MV_WLOAD(p) v_load(p)
#include "simd_matvec_template.h"
#undef MV_NAME
#undef MV_WTYPE
#undef MV_WLOAD

#define BF_NAME(x) x##_widen
#define BF16_DOT 0
#include "simd_matvec_bf16_template.h"
#undef BF_NAME
#undef BF16_DOT

#define I8_NAME(x) x##_base
#include "simd_matvec_i8_template.h"
#undef I8_NAME

/* int8 activations, bit-identical to the scalar reference (prepare_i8_scalar): the peak and
 * a NaN/Inf probe reduced in vectors, one scalar division, then multiply and convert with
 * round-to-nearest-even. */
static void prepare_i8_simd(const float *x, int ldx, int rows, int K, void *q, int ldq,
                            float *scale) {
    for (int b = 0; b < rows; ++b) {
        const float *xb = x + (size_t)b * ldx;
        int8_t *qb = (int8_t *)q + (size_t)b * ldq;
        vf peak_v = v_zero(), probe_v = v_zero();
        for (int k = 0; k < K; k += VW) {
            const vf v = ld(xb + k, K - k);
            peak_v = v_max(peak_v, v_abs(v)); /* NaN lanes drop out here, the probe keeps them */
            probe_v = v_fmadd(v, v_zero(), probe_v);
        }
        float lanes[VW], probes[VW], peak = 0.0f, probe = 0.0f;
        v_store(lanes, peak_v);
        v_store(probes, probe_v);
        for (int l = 0; l < VW; ++l) {
            peak = lanes[l] > peak ? lanes[l] : peak;
            probe += probes[l];
        }
        const float inv = int8_row_inverse(peak, probe, qb, K, &scale[b]);
        if (inv == 0.0f) continue;
        const vf inv_v = v_set1(inv);
        int k = 0;
        for (; k + VW <= K; k += VW) v_store_i8(qb + k, v_mul(v_load(xb + k), inv_v));
        for (; k < K; ++k) qb[k] = (int8_t)lrintf(xb[k] * inv);
    }
}

/* ---- pointwise cell updates (default activations) ---------------------------------------- */

static void rnn_pointwise_simd(const li_cell *cell, int u0, int u1, const float *xp,
                               const float *rec, float *h_out) {
    const vf clip_hi = v_set1(clip_bound(cell)), clip_lo = v_set1(-clip_bound(cell));
    const int clipped = cell->clip > 0.0f;
    const int relu = cell->act[0].kind == LI_ACT_RELU;
    for (int u = u0; u < u1; u += VW) {
        const int n = u1 - u;
        const vf pre = CLIP(v_add(ld(xp + u, n), ld(rec + u, n)));
        st(h_out + u, relu ? v_max(v_zero(), pre) : v_tanh(pre), n);
    }
}

static void lstm_pointwise_simd(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                                const float *rec, int rgs, float *c, float *h_out) {
    const vf clip_hi = v_set1(clip_bound(cell)), clip_lo = v_set1(-clip_bound(cell));
    const int clipped = cell->clip > 0.0f;
    const vf one = v_set1(1.0f);
    const float *p = cell->peephole;
    const int H = cell->hidden_size;
    for (int u = u0; u < u1; u += VW) {
        const int n = u1 - u;
        const vf c_prev = ld(c + u, n);
        vf pi = v_add(ld(xp + u, n), ld(rec + u, n));
        vf pf = v_add(ld(xp + xgs + u, n), ld(rec + rgs + u, n));
        const vf pg = v_add(ld(xp + 2 * xgs + u, n), ld(rec + 2 * rgs + u, n));
        vf po = v_add(ld(xp + 3 * xgs + u, n), ld(rec + 3 * rgs + u, n));
        if (p) {
            pi = v_fmadd(ld(p + u, n), c_prev, pi);
            pf = v_fmadd(ld(p + H + u, n), c_prev, pf);
        }
        const vf i = v_sigmoid(CLIP(pi));
        const vf f = cell->input_forget ? v_sub(one, i) : v_sigmoid(CLIP(pf));
        const vf g = v_tanh(CLIP(pg));
        const vf c_new = v_fmadd(f, c_prev, v_mul(i, g));
        if (p) po = v_fmadd(ld(p + 2 * H + u, n), c_new, po);
        const vf o = v_sigmoid(CLIP(po));
        st(c + u, c_new, n);
        st(h_out + u, v_mul(o, v_tanh(c_new)), n);
    }
}

static void gru_gates_simd(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                           const float *rec, int rgs, const float *h_prev, float *zr,
                           float *rh) {
    const vf clip_hi = v_set1(clip_bound(cell)), clip_lo = v_set1(-clip_bound(cell));
    const int clipped = cell->clip > 0.0f;
    const int H = cell->hidden_size;
    for (int u = u0; u < u1; u += VW) {
        const int n = u1 - u;
        const vf z = v_sigmoid(CLIP(v_add(ld(xp + u, n), ld(rec + u, n))));
        const vf r = v_sigmoid(CLIP(v_add(ld(xp + xgs + u, n), ld(rec + rgs + u, n))));
        st(zr + u, z, n);
        st(zr + H + u, r, n);
        st(rh + u, v_mul(r, ld(h_prev + u, n)), n);
    }
}

static void gru_output_simd(const li_cell *cell, int u0, int u1, const float *xp_n,
                            const float *rec_n, const float *zr, const float *h_prev,
                            float *h_out) {
    const vf clip_hi = v_set1(clip_bound(cell)), clip_lo = v_set1(-clip_bound(cell));
    const int clipped = cell->clip > 0.0f;
    const int H = cell->hidden_size;
    const int lbr = cell->linear_before_reset;
    const float *rb = cell->bias_rn;
    for (int u = u0; u < u1; u += VW) {
        const int n = u1 - u;
        const vf z = ld(zr + u, n);
        vf rec = ld(rec_n + u, n);
        if (lbr) {
            if (rb) rec = v_add(rec, ld(rb + u, n));
            rec = v_mul(ld(zr + H + u, n), rec);
        }
        const vf cand = v_tanh(CLIP(v_add(ld(xp_n + u, n), rec)));
        const vf hp = ld(h_prev + u, n);
        st(h_out + u, v_fmadd(z, v_sub(hp, cand), cand), n);
    }
}

/* li_tanh_energies_fn on v_tanh (max abs error 1.8e-7 a term): two vector sums per key row,
 * the last A % (2 VW) lanes on masked loads (a masked lane reads 0 for v, so adds nothing). */
static void tanh_energies_simd(const float *q, const float *k, size_t ldk, size_t n, size_t A,
                               const float *v, float *e) {
    for (size_t j = 0; j < n; ++j) {
        const float *kj = k + j * ldk;
        vf s0 = v_zero(), s1 = v_zero();
        size_t i = 0;
        for (; i + 2 * VW <= A; i += 2 * VW) {
            vf z0 = v_load(kj + i), z1 = v_load(kj + i + VW);
            if (q) {
                z0 = v_add(z0, v_load(q + i));
                z1 = v_add(z1, v_load(q + i + VW));
            }
            s0 = v_fmadd(v_load(v + i), v_tanh(z0), s0);
            s1 = v_fmadd(v_load(v + i + VW), v_tanh(z1), s1);
        }
        for (; i < A; i += VW) {
            const int m = A - i >= (size_t)VW ? VW : (int)(A - i);
            vf z = ld(kj + i, m);
            if (q) z = v_add(z, ld(q + i, m));
            s0 = v_fmadd(ld(v + i, m), v_tanh(z), s0);
        }
        e[j] = hsum(v_add(s0, s1));
    }
}

#include "simd_conv_template.h"
#include "simd_pool_template.h"

#define LI_SIMD_TABLE(NAME)                                                                    \
    {                                                                                          \
        NAME, matvec_packed_f32, matvec_bf16_widen, 0, matvec_i8_base, prepare_i8_simd, 0,     \
            rnn_pointwise_simd, lstm_pointwise_simd, gru_gates_simd, gru_output_simd,          \
            activation_array_simd, softmax_rows_simd, conv2d_simd,                             \
            .matvec_f32_rows = {0, MV_MAX_ROWS(1), MV_MAX_ROWS(2), MV_MAX_ROWS(3),              \
                                MV_MAX_ROWS(4)},                                               \
            .max_pool_2x2 = max_pool_2x2_simd, .layernorm_rows = layernorm_rows_simd,          \
            .tanh_energies = tanh_energies_simd                                                \
    }
