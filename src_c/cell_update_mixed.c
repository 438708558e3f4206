/*
 * Cell updates for non-default activations (a Keras LSTM's hard_sigmoid gates, ONNX's
 * activations list), at array speed. cell_update_generic.c stays the exact reference: it
 * calls one libm function per element through a switch, which measured 4.6x the time of
 * the default kernels on an LSTM with HardSigmoid gates (chars2vec). Here the units are
 * taken in chunks: each gate's pre-activations are summed into a small buffer, the
 * activation is applied to the whole buffer (the table's SIMD sigmoid / tanh, the same the
 * default kernels use; a loop per kind, which the compiler vectorises, for the others),
 * and the state update runs over the chunk. Same expressions and order as the generic
 * update, so the two differ only by the SIMD sigmoid / tanh where those appear.
 */
#include <math.h>

#include "li_kernels.h"

enum { CHUNK = 64 };

/* The activation of n floats in place. */
static void activate_block(const li_kernels *kern, const li_activation *act, float *x, int n) {
    const float a = act->alpha, b = act->beta;
    switch (act->kind) {
    case LI_ACT_SIGMOID:
    case LI_ACT_TANH: kern->activation_array(act->kind, x, x, (size_t)n); return;
    case LI_ACT_RELU:
        for (int i = 0; i < n; ++i) x[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN propagates */
        return;
    case LI_ACT_HARD_SIGMOID:
        for (int i = 0; i < n; ++i) {
            const float y = a * x[i] + b;
            x[i] = y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
        }
        return;
    case LI_ACT_AFFINE:
        for (int i = 0; i < n; ++i) x[i] = a * x[i] + b;
        return;
    case LI_ACT_LEAKY_RELU:
        for (int i = 0; i < n; ++i) x[i] = x[i] >= 0.0f ? x[i] : a * x[i];
        return;
    default:
        for (int i = 0; i < n; ++i) x[i] = li_activation_scalar(act, x[i]);
        return;
    }
}

/* ONNX clips the inputs of the activations to [-clip, clip] when clip is set. */
static void clip_block(const li_cell *cell, float *x, int n) {
    const float c = cell->clip;
    if (!(c > 0.0f)) return;
    for (int i = 0; i < n; ++i) x[i] = x[i] > c ? c : (x[i] < -c ? -c : x[i]);
}

void li_rnn_pointwise_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                            const float *xp, const float *rec, float *h_out) {
    for (int u = u0; u < u1; u += CHUNK) {
        const int n = u1 - u < CHUNK ? u1 - u : CHUNK;
        float *h = h_out + u;
        for (int k = 0; k < n; ++k) h[k] = xp[u + k] + rec[u + k];
        clip_block(cell, h, n);
        activate_block(kern, &cell->act[0], h, n);
    }
}

void li_lstm_pointwise_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                             const float *xp, int xgs, const float *rec, int rgs, float *c,
                             float *h_out) {
    const int H = cell->hidden_size;
    const float *p = cell->peephole;
    const li_activation *f_act = &cell->act[0], *g_act = &cell->act[1], *h_act = &cell->act[2];
    float gi[CHUNK], gf[CHUNK], gg[CHUNK], go[CHUNK];
    for (int u = u0; u < u1; u += CHUNK) {
        const int n = u1 - u < CHUNK ? u1 - u : CHUNK;
        for (int k = 0; k < n; ++k) {
            const int j = u + k;
            gi[k] = xp[j] + rec[j];
            gf[k] = xp[xgs + j] + rec[rgs + j];
            gg[k] = xp[2 * xgs + j] + rec[2 * rgs + j];
            go[k] = xp[3 * xgs + j] + rec[3 * rgs + j];
            if (p) {
                gi[k] += p[j] * c[j];
                gf[k] += p[H + j] * c[j];
            }
        }
        clip_block(cell, gi, n);
        activate_block(kern, f_act, gi, n);
        if (cell->input_forget) {
            for (int k = 0; k < n; ++k) gf[k] = 1.0f - gi[k];
        } else {
            clip_block(cell, gf, n);
            activate_block(kern, f_act, gf, n);
        }
        clip_block(cell, gg, n);
        activate_block(kern, g_act, gg, n);
        for (int k = 0; k < n; ++k) c[u + k] = gf[k] * c[u + k] + gi[k] * gg[k]; /* c_new */
        if (p)
            for (int k = 0; k < n; ++k) go[k] += p[2 * H + u + k] * c[u + k];
        clip_block(cell, go, n);
        activate_block(kern, f_act, go, n);
        float *h = h_out + u;
        for (int k = 0; k < n; ++k) h[k] = c[u + k];
        activate_block(kern, h_act, h, n);
        for (int k = 0; k < n; ++k) h[k] = go[k] * h[k];
    }
}

void li_gru_gates_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                        const float *xp, int xgs, const float *rec, int rgs,
                        const float *h_prev, float *zr, float *rh) {
    const int H = cell->hidden_size;
    for (int u = u0; u < u1; u += CHUNK) {
        const int n = u1 - u < CHUNK ? u1 - u : CHUNK;
        float *z = zr + u, *r = zr + H + u;
        for (int k = 0; k < n; ++k) {
            z[k] = xp[u + k] + rec[u + k];
            r[k] = xp[xgs + u + k] + rec[rgs + u + k];
        }
        clip_block(cell, z, n);
        clip_block(cell, r, n);
        activate_block(kern, &cell->act[0], z, n);
        activate_block(kern, &cell->act[0], r, n);
        for (int k = 0; k < n; ++k) rh[u + k] = r[k] * h_prev[u + k];
    }
}

void li_gru_output_mixed(const li_kernels *kern, const li_cell *cell, int u0, int u1,
                         const float *xp_n, const float *rec_n, const float *zr,
                         const float *h_prev, float *h_out) {
    const int H = cell->hidden_size;
    const float *rb = cell->linear_before_reset ? cell->bias_rn : 0;
    float pre[CHUNK];
    for (int u = u0; u < u1; u += CHUNK) {
        const int n = u1 - u < CHUNK ? u1 - u : CHUNK;
        for (int k = 0; k < n; ++k) {
            const int j = u + k;
            if (cell->linear_before_reset)
                pre[k] = xp_n[j] + zr[H + j] * (rec_n[j] + (rb ? rb[j] : 0.0f));
            else
                pre[k] = xp_n[j] + rec_n[j];
        }
        clip_block(cell, pre, n);
        activate_block(kern, &cell->act[1], pre, n);
        for (int k = 0; k < n; ++k) {
            const float z = zr[u + k];
            h_out[u + k] = (1.0f - z) * pre[k] + z * h_prev[u + k];
        }
    }
}
