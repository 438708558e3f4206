/*
 * Scalar cell updates for any ONNX activation. This is the reference every SIMD kernel is
 * tested against, the scalar ISA's fast path, and the path every ISA takes when a cell uses
 * non-default activations (those are rare enough that a per-element switch is fine).
 * Exact libm functions: no approximation error here.
 */
#include <math.h>

#include "li_kernels.h"

float li_activation_scalar(const li_activation *act, float x) {
    const float a = act->alpha, b = act->beta;
    switch (act->kind) {
    /* `x < 0 ? 0 : x`, not `x > 0 ? x : 0`: NaN must propagate, as it does in the SIMD
     * kernels' max(0, x) and in numpy's reference (the other form maps NaN to 0). */
    case LI_ACT_RELU: return x < 0.0f ? 0.0f : x;
    case LI_ACT_TANH: return tanhf(x);
    case LI_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case LI_ACT_AFFINE: return a * x + b;
    case LI_ACT_LEAKY_RELU: return x >= 0.0f ? x : a * x;
    case LI_ACT_THRESHOLDED_RELU: return x > a ? x : 0.0f;
    case LI_ACT_SCALED_TANH: return a * tanhf(b * x);
    case LI_ACT_HARD_SIGMOID: {
        const float y = a * x + b;
        return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
    }
    case LI_ACT_ELU: return x >= 0.0f ? x : a * (expf(x) - 1.0f);
    case LI_ACT_SOFTSIGN: return x / (1.0f + fabsf(x));
    case LI_ACT_SOFTPLUS: return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); /* no overflow */
    default: return x;
    }
}

/* ONNX clips the inputs of the activations to [-clip, clip] when clip is set. */
static inline float clip_pre(const li_cell *cell, float v) {
    if (cell->clip > 0.0f) {
        if (v > cell->clip) return cell->clip;
        if (v < -cell->clip) return -cell->clip;
    }
    return v;
}

void li_rnn_pointwise_generic(const li_cell *cell, int u0, int u1, const float *xp,
                              const float *rec, float *h_out) {
    for (int u = u0; u < u1; ++u)
        h_out[u] = li_activation_scalar(&cell->act[0], clip_pre(cell, xp[u] + rec[u]));
}

void li_lstm_pointwise_generic(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                               const float *rec, int rgs, float *c, float *h_out) {
    const int H = cell->hidden_size;
    const float *p = cell->peephole;
    const li_activation *f_act = &cell->act[0], *g_act = &cell->act[1], *h_act = &cell->act[2];
    for (int u = u0; u < u1; ++u) {
        const float c_prev = c[u];
        float pi = xp[u] + rec[u];
        float pf = xp[xgs + u] + rec[rgs + u];
        float pg = xp[2 * xgs + u] + rec[2 * rgs + u];
        float po = xp[3 * xgs + u] + rec[3 * rgs + u];
        if (p) {
            pi += p[u] * c_prev;
            pf += p[H + u] * c_prev;
        }
        const float i = li_activation_scalar(f_act, clip_pre(cell, pi));
        const float f =
            cell->input_forget ? 1.0f - i : li_activation_scalar(f_act, clip_pre(cell, pf));
        const float g = li_activation_scalar(g_act, clip_pre(cell, pg));
        const float c_new = f * c_prev + i * g;
        if (p) po += p[2 * H + u] * c_new;
        const float o = li_activation_scalar(f_act, clip_pre(cell, po));
        c[u] = c_new;
        h_out[u] = o * li_activation_scalar(h_act, c_new);
    }
}

void li_gru_gates_generic(const li_cell *cell, int u0, int u1, const float *xp, int xgs,
                          const float *rec, int rgs, const float *h_prev, float *zr,
                          float *rh) {
    const int H = cell->hidden_size;
    for (int u = u0; u < u1; ++u) {
        const float z = li_activation_scalar(&cell->act[0], clip_pre(cell, xp[u] + rec[u]));
        const float r =
            li_activation_scalar(&cell->act[0], clip_pre(cell, xp[xgs + u] + rec[rgs + u]));
        zr[u] = z;
        zr[H + u] = r;
        rh[u] = r * h_prev[u];
    }
}

void li_gru_output_generic(const li_cell *cell, int u0, int u1, const float *xp_n,
                           const float *rec_n, const float *zr, const float *h_prev,
                           float *h_out) {
    const int H = cell->hidden_size;
    const float *rb = cell->linear_before_reset ? cell->bias_rn : 0;
    for (int u = u0; u < u1; ++u) {
        const float z = zr[u], r = zr[H + u];
        float pre;
        if (cell->linear_before_reset)
            pre = xp_n[u] + r * (rec_n[u] + (rb ? rb[u] : 0.0f));
        else
            pre = xp_n[u] + rec_n[u];
        const float n = li_activation_scalar(&cell->act[1], clip_pre(cell, pre));
        h_out[u] = (1.0f - z) * n + z * h_prev[u];
    }
}
