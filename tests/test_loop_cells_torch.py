"""torch.jit.script loops over a recurrent cell, exported by torch.onnx (dynamo=False) as an
ONNX Loop, become the native RNN / GRU / LSTM node (lstm_infer.passes.loop_cells). Each
equals onnxruntime on the exported file and float64 PyTorch at several lengths and batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import require

torch = require("torch")
ort = require("onnxruntime")
onnx = require("onnx")

from graph_builders import export_scripted  # noqa: E402

import lstm_infer  # noqa: E402

TOL = 1e-4
I, H = 3, 5


class RnnLoop(torch.nn.Module):
    """h = tanh(W x_t + b + U h + c) over the time axis."""

    def __init__(self) -> None:
        super().__init__()
        self.ih, self.hh = torch.nn.Linear(I, H), torch.nn.Linear(H, H)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for t in range(x.size(0)):
            h = torch.tanh(self.ih(x[t]) + self.hh(h))
        return h


class GruLoop(torch.nn.Module):
    """PyTorch's GRU equations (gate order r z n, the reset inside the product), the gate
    blocks sliced (exported as a whole-axis Slice on axis 0, then one on axis 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.ih, self.hh = torch.nn.Linear(I, 3 * H), torch.nn.Linear(H, 3 * H)
        self.units = H

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        u = self.units
        for t in range(x.size(0)):
            gi, gh = self.ih(x[t]), self.hh(h)
            r = torch.sigmoid(gi[:, :u] + gh[:, :u])
            z = torch.sigmoid(gi[:, u : 2 * u] + gh[:, u : 2 * u])
            n = torch.tanh(gi[:, 2 * u :] + r * gh[:, 2 * u :])
            h = (1 - z) * n + z * h
        return h


class LstmLoop(torch.nn.Module):
    """PyTorch's LSTM equations (gate order i f g o, one chunk of the summed products)."""

    def __init__(self) -> None:
        super().__init__()
        self.ih, self.hh = torch.nn.Linear(I, 4 * H), torch.nn.Linear(H, 4 * H)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for t in range(x.size(0)):
            i, f, g, o = (self.ih(x[t]) + self.hh(h)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class LstmCellLoop(torch.nn.Module):
    """nn.LSTMCell in a loop: the export's body is one ONNX LSTM node over one step."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(I, H)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for t in range(x.size(0)):
            h, c = self.cell(x[t], (h, c))
        return h, c


class SoftsignLoop(RnnLoop):
    """Looks like the RNN, but softsign is no activation the RNN node is given here."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for t in range(x.size(0)):
            h = torch.nn.functional.softsign(self.ih(x[t]) + self.hh(h))
        return h


# name -> (module, the op it runs as). (nn.GRUCell / nn.RNNCell in a scripted loop do not
# export with torch 2.13: "ONNX symbolic expected node type prim::ListConstruct".)
MODULES = {
    "rnn_arithmetic": (RnnLoop, "RNN"),
    "gru_arithmetic": (GruLoop, "GRU"),
    "lstm_arithmetic": (LstmLoop, "LSTM"),
    "lstm_cell": (LstmCellLoop, "LSTM"),
    "softsign": (SoftsignLoop, "Loop"),
}


def export(module: torch.nn.Module, names: list[str]) -> bytes:
    return export_scripted(module, names, I, H)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_scripted_cell_loop(name: str, rng: np.random.Generator) -> None:
    cls, runs_as = MODULES[name]
    module = cls().eval()
    names = ["x", "h0", "c0"] if runs_as == "LSTM" else ["x", "h0"]
    data = export(module, names)
    assert "Loop" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    model = lstm_infer.load(data)
    ops = {n.op for n in model.graph.nodes}
    if runs_as == "Loop":
        assert "Loop" in ops and not ops & {"RNN", "GRU", "LSTM"}, ops
    else:
        assert runs_as in ops and "Loop" not in ops, ops
    twin = copy.deepcopy(module).double()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    for T, B in ((1, 1), (6, 3), (10, 2)):
        feeds = {"x": rng.standard_normal((T, B, I)).astype(np.float32)}
        feeds.update({n: rng.uniform(-1, 1, (B, H)).astype(np.float32) for n in names[1:]})
        got = list(model.run(feeds).values())
        want = session.run(None, feeds)
        with torch.no_grad():
            ref = twin(*(torch.from_numpy(v.astype(np.float64)) for v in feeds.values()))
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        assert len(got) == len(want) == len(ref)
        for g, w, r in zip(got, want, ref):
            np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
