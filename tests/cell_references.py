"""float64 numpy versions of CELLS.md's equations, written from the text there, shared by the
tests of the PyTorch modules (test_nn_cells.py) and of the engine's fused cells
(test_cells_engine.py). ``p`` is a state_dict as float64 arrays; sequences are time-major."""

from __future__ import annotations

import numpy as np


def _sig(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _ln(v: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)  # biased, as torch.nn.LayerNorm
    return (v - mean) / np.sqrt(var + eps) * w + b


def params(module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


def depth_gated_reference(p: dict, x: np.ndarray, L: int, H: int):
    h = np.zeros((L, x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for x_t in x:
        below, c_below = x_t, None
        for layer in range(L):
            gates = (below @ p[f"weight_ih_l{layer}"].T + p[f"bias_ih_l{layer}"]
                     + h[layer] @ p[f"weight_hh_l{layer}"].T + p[f"bias_hh_l{layer}"])  # fmt: skip
            i, f, g, o = np.split(gates, 4, axis=-1)
            i, f, g, o = _sig(i), _sig(f), np.tanh(g), _sig(o)
            new_c = f * c[layer] + i * g
            if layer:
                d = _sig(below @ p[f"depth_weight_l{layer}"].T + p[f"depth_bias_l{layer}"]
                         + p[f"depth_cell_l{layer}"] * c[layer]
                         + p[f"depth_lower_l{layer}"] * c_below)  # fmt: skip
                new_c = d * c_below + new_c
            h[layer], c[layer] = o * np.tanh(new_c), new_c
            below, c_below = h[layer], new_c
        ys.append(below.copy())
    return np.stack(ys), h, c


def clockwork_reference(p: dict, x: np.ndarray, H: int, t0: int = 0, h0=None):
    periods = p["periods"].astype(int)
    k = H // len(periods)
    W, R, b = p["weight_ih"], p["weight_hh"], p["bias"]
    h = np.zeros((x.shape[1], H)) if h0 is None else h0.copy()
    ys = []
    for s, x_t in enumerate(x):
        t = t0 + s
        new = h.copy()
        for m, period in enumerate(periods):
            if t % period:
                continue
            rows = slice(m * k, (m + 1) * k)
            cols = slice(m * k, H)  # modules n >= m only
            new[:, rows] = np.tanh(x_t @ W[rows].T + b[rows] + h[:, cols] @ R[rows, cols].T)
        h = new
        ys.append(h.copy())
    return np.stack(ys), h


def layer_norm_reference(p: dict, x: np.ndarray, L: int, H: int):
    eps = float(p["eps"])
    h = np.zeros((L, x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for x_t in x:
        below = x_t
        for layer in range(L):
            pre = (below @ p[f"weight_ih_l{layer}"].T + p[f"bias_ih_l{layer}"]
                   + h[layer] @ p[f"weight_hh_l{layer}"].T)  # fmt: skip
            gates = _ln(pre, p[f"gate_norm_l{layer}.weight"], p[f"gate_norm_l{layer}.bias"], eps)
            i, f, g, o = np.split(gates, 4, axis=-1)
            i, f, g, o = _sig(i), _sig(f), np.tanh(g), _sig(o)
            c[layer] = _ln(f * c[layer] + i * g, p[f"cell_norm_l{layer}.weight"],
                           p[f"cell_norm_l{layer}.bias"], eps)  # fmt: skip
            h[layer] = o * np.tanh(c[layer])
            below = h[layer]
        ys.append(below.copy())
    return np.stack(ys), h, c


def grid_reference(p: dict, x: np.ndarray, L: int, H: int):
    def block(z, cell):
        i, f, g, o = np.split(z, 4, axis=-1)
        new = _sig(f) * cell + _sig(i) * np.tanh(g)
        return _sig(o) * np.tanh(new), new

    h = np.zeros((L, x.shape[1], H))
    m = np.zeros_like(h)
    ys = []
    for x_t in x:
        u, n = x_t @ p["input_proj"].T, np.zeros((x.shape[1], H))
        for layer in range(L):
            z = np.concatenate([h[layer], u], -1) @ p[f"time_weight_l{layer}"].T
            h[layer], m[layer] = block(z + p[f"time_bias_l{layer}"], m[layer])
            z = np.concatenate([h[layer], u], -1) @ p[f"depth_weight_l{layer}"].T
            u, n = block(z + p[f"depth_bias_l{layer}"], n)
        ys.append(u)
    return np.stack(ys), h, m


def attention_reference(p: dict, kind: str, y, M, lengths, kernel: int):
    """float64 numpy of CELLS.md's attention decoder (M: (S, B, Dm), y: (T, B, E))."""
    S, B, Dm = M.shape
    H = p["cell.weight_hh"].shape[1]
    h, c, ctx = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, Dm))
    alpha, cum = np.zeros((B, S)), np.zeros((B, S))
    valid = np.arange(S)[None, :] < lengths[:, None]
    Mb = M.transpose(1, 0, 2)
    outs = []
    for y_t in y:
        z = (np.concatenate([y_t, ctx], -1) @ p["cell.weight_ih"].T + p["cell.bias_ih"]
             + h @ p["cell.weight_hh"].T + p["cell.bias_hh"])  # fmt: skip
        i, f, g, o = np.split(z, 4, -1)
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(c)
        e = np.zeros((B, S))
        for b in range(B):
            for j in range(S):
                if kind == "dot":
                    e[b, j] = h[b] @ Mb[b, j]
                elif kind == "general":
                    e[b, j] = h[b] @ (p["score.weight"] @ Mb[b, j])
                else:
                    a = p["query.weight"] @ h[b] + p["memory.weight"] @ Mb[b, j] + p["energy_bias"]
                    if kind == "location":
                        half = (kernel - 1) // 2
                        prev = np.pad(alpha[b], half)
                        acc = np.pad(cum[b], half)
                        wf = p["location_conv.weight"]  # (F, 2, kernel), cross-correlation
                        feats = np.array([(wf[q, 0] * prev[j : j + kernel]).sum()
                                          + (wf[q, 1] * acc[j : j + kernel]).sum()
                                          for q in range(wf.shape[0])])  # fmt: skip
                        a = a + p["location_dense.weight"] @ feats
                    e[b, j] = p["energy.weight"][0] @ np.tanh(a)
        e = np.where(valid, e, -np.inf)
        alpha = np.exp(e - e.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        cum = cum + alpha
        ctx = np.einsum("bs,bsd->bd", alpha, Mb)
        outs.append(np.concatenate([h, ctx], -1))
    return np.stack(outs), alpha, cum
