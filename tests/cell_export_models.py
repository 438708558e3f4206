"""torch modules of layer-normalised and depth-gated LSTMs as people write them, for
tests/test_reroll_cell_exports.py: torch.onnx.export unrolls their loops into per-step nodes.

``TorchaudioLSTM`` follows the equations torchaudio documents for the LSTM layer of its RNN-T
predictor (``torchaudio.models.rnnt._CustomLSTM``, written here from them; torchaudio itself
is not installable beside this torch): the input projected over the whole sequence before the
loop, ``x2g`` (no bias when layer-normalised), the recurrent projection ``p2g`` (no bias),
``g_norm`` over the 4H gate pre-activations, ``c_norm`` over the new cell, gates ``i, f, g, o``;
without layer norm both norms are identities (a plain LSTM).

``HandNormLSTM`` writes the norms out by hand, one correct spelling and near misses of it;
``DepthGatedMiss`` is a two-layer depth-gated LSTM gone slightly wrong.
"""

from __future__ import annotations

import torch

nn = torch.nn


class TorchaudioLSTM(nn.Module):
    """One layer, time-major: ``forward(x (T, B, D)) -> (y (T, B, H), h, c)``."""

    def __init__(self, inp: int, hidden: int, layer_norm: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.x2g = nn.Linear(inp, 4 * hidden, bias=not layer_norm)
        self.p2g = nn.Linear(hidden, 4 * hidden, bias=False)
        self.g_norm = nn.LayerNorm(4 * hidden, eps=eps) if layer_norm else nn.Identity()
        self.c_norm = nn.LayerNorm(hidden, eps=eps) if layer_norm else nn.Identity()
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x.new_zeros(x.shape[1], self.hidden)
        c = torch.zeros_like(h)
        projected = self.x2g(x)  # every timestep at once, before the recurrence
        ys = []
        for t in range(x.shape[0]):
            pre = self.g_norm(projected[t] + self.p2g(h))
            i, f, g, o = torch.split(pre, self.hidden, dim=1)
            c = self.c_norm(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys), h, c


class TorchaudioStack(nn.Module):
    """The predictor's LSTM stack: each layer reads the whole output of the one below;
    returns the top sequence and each layer's final h and c stacked (L, B, H)."""

    def __init__(self, inp: int, hidden: int, layers: int, layer_norm: bool = True) -> None:
        super().__init__()
        sizes = [inp] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(TorchaudioLSTM(n, hidden, layer_norm) for n in sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hs, cs = [], []
        for layer in self.layers:
            x, h, c = layer(x)
            hs.append(h)
            cs.append(c)
        return x, torch.stack(hs), torch.stack(cs)


def _norm(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, inside: bool = True
          ) -> torch.Tensor:  # fmt: skip
    """LayerNorm over the last axis by hand; ``inside=False`` puts eps outside the root."""
    d = v - v.mean(-1, keepdim=True)
    var = (d * d).mean(-1, keepdim=True)
    root = torch.sqrt(var + eps) if inside else torch.sqrt(var) + eps
    return d / root * w + b


class HandNormLSTM(nn.Module):
    """A batch-first loop with the norms written out (``_norm``), gates in ``order``.

    ``variant``: "exact" (a layer-normalised LSTM), or a near miss: "eps_outside" (eps added
    after the square root), "no_cell_norm" (the cell not normalised), "relu_candidate" (g =
    relu), "two_eps" (the cell's norm has another eps than the gates')."""

    def __init__(self, inp: int, hidden: int, variant: str = "exact", order: str = "ifgo"
                 ) -> None:  # fmt: skip
        super().__init__()
        self.w = nn.Linear(inp, 4 * hidden)
        self.r = nn.Linear(hidden, 4 * hidden, bias=False)
        self.gate_w = nn.Parameter(torch.rand(4 * hidden) + 0.5)
        self.gate_b = nn.Parameter(torch.rand(4 * hidden) - 0.5)
        self.cell_w = nn.Parameter(torch.rand(hidden) + 0.5)
        self.cell_b = nn.Parameter(torch.rand(hidden) - 0.5)
        self.hidden, self.variant, self.order = hidden, variant, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        c = torch.zeros_like(h)
        eps_cell = 1e-3 if self.variant == "two_eps" else 1e-5
        ys = []
        for t in range(x.shape[1]):
            pre = _norm(self.w(x[:, t]) + self.r(h), self.gate_w, self.gate_b, 1e-5)
            gate = dict(zip(self.order, pre.chunk(4, 1)))
            i, f, o = (torch.sigmoid(gate[k]) for k in "ifo")
            g = torch.relu(gate["g"]) if self.variant == "relu_candidate" else torch.tanh(gate["g"])
            c = f * c + i * g
            if self.variant != "no_cell_norm":
                inside = self.variant != "eps_outside"
                c = _norm(c, self.cell_w, self.cell_b, eps_cell, inside)
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1)


class DepthGatedMiss(nn.Module):
    """Two layers, time-major, CELLS.md's depth-gated LSTM but for ``variant``: "no_lower"
    (the depth gate does not see the lower cell), "stale_lower" (the lower layer's cell of
    the step before flows in, not its new one)."""

    def __init__(self, inp: int, hidden: int, variant: str) -> None:
        super().__init__()
        self.low, self.high = nn.LSTMCell(inp, hidden), nn.LSTMCell(hidden, hidden)
        self.depth = nn.Linear(hidden, hidden)
        self.p = nn.Parameter(torch.rand(hidden) - 0.5)
        self.q = nn.Parameter(torch.rand(hidden) - 0.5)
        self.hidden, self.variant = hidden, variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[1], self.hidden)
        h0, c0, h1, c1 = zeros, zeros, zeros, zeros
        ys = []
        for t in range(x.shape[0]):
            before = c0
            h0, c0 = self.low(x[t], (h0, c0))
            lower = before if self.variant == "stale_lower" else c0
            cell = self.high
            gates = h0 @ cell.weight_ih.T + cell.bias_ih + h1 @ cell.weight_hh.T + cell.bias_hh
            i, f, g, o = gates.chunk(4, 1)
            arg = self.depth(h0) + self.p * c1
            if self.variant != "no_lower":
                arg = arg + self.q * lower
            d = torch.sigmoid(arg)
            c1 = d * lower + torch.sigmoid(f) * c1 + torch.sigmoid(i) * torch.tanh(g)
            h1 = torch.sigmoid(o) * torch.tanh(c1)
            ys.append(h1)
        return torch.stack(ys)
