"""torch modules that loop a recurrent cell over the timesteps in Python, as people write them
(``nn.LSTMCell`` / ``nn.GRUCell`` loops, hand-written gates), so that ``torch.onnx.export``
unrolls them into per-step nodes. Used by tests/test_reroll_cells.py."""

from __future__ import annotations

import torch

nn = torch.nn


def _steps(x: torch.Tensor, time_axis: int, reverse: bool) -> list[int]:
    order = list(range(x.shape[time_axis]))
    return order[::-1] if reverse else order


class CellLoop(nn.Module):
    """``nn.LSTMCell`` or ``nn.GRUCell`` over x's timesteps; returns the stacked hidden
    states (time order) and the final state(s). ``fed``: h0 (and c0) are inputs."""

    def __init__(self, cell: str, inp: int, hidden: int, batch_first: bool = True,
                 reverse: bool = False, fed: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.kind = cell
        self.cell = nn.LSTMCell(inp, hidden) if cell == "lstm" else nn.GRUCell(inp, hidden)
        self.hidden, self.batch_first, self.reverse, self.fed = hidden, batch_first, reverse, fed

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        axis = 1 if self.batch_first else 0
        batch = x.shape[1 - axis]
        if not self.fed:
            zeros = x.new_zeros(batch, self.hidden)
            state = (zeros, zeros) if self.kind == "lstm" else (zeros,)
        ys: dict[int, torch.Tensor] = {}
        for t in _steps(x, axis, self.reverse):
            x_t = x[:, t] if self.batch_first else x[t]
            if self.kind == "lstm":
                state = self.cell(x_t, state)
            else:
                state = (self.cell(x_t, state[0]),)
            ys[t] = state[0]
        y = torch.stack([ys[t] for t in sorted(ys)], axis)
        return (y, *state)


class FusedLSTM(nn.Module):
    """A hand-written LSTM: one Linear over [x; h], chunk(4) in ``order`` ("ifgo" PyTorch,
    "iofc" ONNX, "ifco" Keras), batch-first."""

    def __init__(self, inp: int, hidden: int, order: str = "iofc") -> None:
        super().__init__()
        self.gates = nn.Linear(inp + hidden, 4 * hidden)
        self.hidden, self.order = hidden, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        ys = []
        for t in range(x.shape[1]):
            blocks = dict(zip(self.order, self.gates(torch.cat([x[:, t], h], 1)).chunk(4, 1)))
            i, f, o = (torch.sigmoid(blocks[k]) for k in "ifo")
            g = torch.tanh(blocks["g" if "g" in blocks else "c"])
            c = f * c + i * g
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1)


class KerasGRU(nn.Module):
    """A hand-written GRU with Keras's reset_after=False (linear_before_reset = 0) and the
    update gate written as ``h = (1 - u) * h + u * n``; separate products per operand."""

    def __init__(self, inp: int, hidden: int) -> None:
        super().__init__()
        self.wx = nn.Linear(inp, 3 * hidden)
        self.uh = nn.Linear(hidden, 2 * hidden, bias=False)
        self.un = nn.Linear(hidden, hidden, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        ys = []
        for t in range(x.shape[1]):
            xu, xr, xn = self.wx(x[:, t]).chunk(3, 1)
            hu, hr = self.uh(h).chunk(2, 1)
            u, r = torch.sigmoid(xu + hu), torch.sigmoid(xr + hr)
            n = torch.tanh(xn + self.un(r * h))
            h = (1 - u) * h + u * n
            ys.append(h)
        return torch.stack(ys, 1)


class BiStack(nn.Module):
    """A CRNN-style 2-layer bidirectional LSTM from LSTMCell loops (time-first): each layer
    a forward and a reverse loop, their sequences concatenated on the features."""

    def __init__(self, inp: int, hidden: int, layers: int = 2) -> None:
        super().__init__()
        sizes = [inp] + [2 * hidden] * (layers - 1)
        self.fwd = nn.ModuleList(CellLoop("lstm", n, hidden, False) for n in sizes)
        self.bwd = nn.ModuleList(CellLoop("lstm", n, hidden, False, reverse=True) for n in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fwd, bwd in zip(self.fwd, self.bwd):
            x = torch.cat([fwd(x)[0], bwd(x)[0]], -1)
        return x


class Mismatch(nn.Module):
    """Unrolled LSTMCell loops that are not one recurrent layer: ``kind`` "weights" (the last
    step uses other weights), "activation" (the cell candidate uses ReLU), "odd_last" (only
    the last step's does) or "leak" (a gate of a middle step is also an output)."""

    def __init__(self, inp: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(inp, hidden)
        self.other = nn.LSTMCell(inp, hidden)
        self.hidden, self.kind = hidden, kind

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = c = x.new_zeros(x.shape[0], self.hidden)
        ys, extra = [], []
        steps = x.shape[1]
        for t in range(steps):
            last = t == steps - 1
            if self.kind == "weights" and last:
                h, c = self.other(x[:, t], (h, c))
            elif self.kind in ("activation", "odd_last", "leak"):
                cell = self.cell
                gates = x[:, t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T
                i, f, g, o = (gates + cell.bias_hh).chunk(4, 1)
                odd = self.kind == "activation" or (self.kind == "odd_last" and last)
                act = torch.relu if odd else torch.tanh
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * act(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                if self.kind == "leak" and t == 1:
                    extra.append(torch.sigmoid(f))
            else:
                h, c = self.cell(x[:, t], (h, c))
            ys.append(h)
        return (torch.stack(ys, 1), *extra)
