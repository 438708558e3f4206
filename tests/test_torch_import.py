"""PyTorch checkpoints -> lstm_infer, compared with PyTorch's own forward and stepping.

Checkpoints are written with torch.save (bare and nested in a training-checkpoint dict) and as
safetensors, then loaded in a subprocess where importing torch fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer.errors import ModelFormatError, UnsafeCheckpointError

torch = require("torch")
nn = torch.nn
TESTS = Path(__file__).resolve().parent
ATOL = 1e-4


@dataclass
class Case:
    name: str
    recurrent: list[tuple[str, dict]]  # (LSTM/GRU/RNN, kwargs) in sequence
    vocab: int = 0  # > 0: an nn.Embedding first
    head: tuple[int, str | None] | None = None  # (out_features, activation)
    batch_first: bool = False
    options: dict = field(default_factory=dict)


CASES = [
    Case("lstm_1", [("LSTM", dict(input_size=5, hidden_size=7))]),
    Case(
        "lstm_2_bi_emb_head",
        [("LSTM", dict(input_size=6, hidden_size=8, num_layers=2, bidirectional=True))],
        vocab=30,
        head=(30, "log_softmax"),
        batch_first=True,
    ),
    Case(
        "lstm_3_proj",
        [("LSTM", dict(input_size=4, hidden_size=9, num_layers=3, proj_size=3))],
        head=(2, None),
    ),  # fmt: skip
    Case("lstm_nobias", [("LSTM", dict(input_size=3, hidden_size=5, num_layers=2, bias=False))]),
    Case("gru_1_emb", [("GRU", dict(input_size=4, hidden_size=6))], vocab=11),
    Case(
        "gru_3_bi", [("GRU", dict(input_size=5, hidden_size=4, num_layers=3, bidirectional=True))]
    ),
    Case(
        "gru_nobias_head",
        [("GRU", dict(input_size=3, hidden_size=7, num_layers=2, bias=False))],
        head=(4, "sigmoid"),
        batch_first=True,
    ),
    Case("rnn_tanh_2", [("RNN", dict(input_size=6, hidden_size=5, num_layers=2))]),
    Case(
        "rnn_relu_3_bi_head",
        [
            (
                "RNN",
                dict(
                    input_size=4,
                    hidden_size=6,
                    num_layers=3,
                    bidirectional=True,
                    nonlinearity="relu",
                ),
            )
        ],
        head=(3, "tanh"),
    ),  # fmt: skip
    Case(
        "rnn_relu_emb_nobias",
        [("RNN", dict(input_size=5, hidden_size=8, nonlinearity="relu", bias=False))],
        vocab=9,
        batch_first=True,
    ),
    Case(
        "lstm_then_lstm",
        [
            ("LSTM", dict(input_size=8, hidden_size=16)),
            ("LSTM", dict(input_size=16, hidden_size=12)),
        ],
        head=(5, "softmax"),
    ),
    Case(
        "gru_then_rnn",
        [("GRU", dict(input_size=3, hidden_size=7)), ("RNN", dict(input_size=7, hidden_size=4))],
        vocab=6,
    ),
]


class Net(nn.Module):
    """Embedding? -> recurrent modules in sequence -> Linear? -> activation?"""

    def __init__(self, case: Case) -> None:
        super().__init__()
        first_in = case.recurrent[0][1]["input_size"]
        self.emb = nn.Embedding(case.vocab, first_in) if case.vocab else None
        self.rnns = nn.ModuleList(
            getattr(nn, kind)(batch_first=case.batch_first, **kw) for kind, kw in case.recurrent
        )
        last = self.rnns[-1]
        width = (last.proj_size or last.hidden_size) * (2 if last.bidirectional else 1)
        self.fc = nn.Linear(width, case.head[0]) if case.head else None
        self.act = case.head[1] if case.head else None

    def _head(self, y):  # noqa: ANN001, ANN202
        if self.fc is not None:
            y = self.fc(y)
        if self.act == "log_softmax":
            y = torch.log_softmax(y, -1)
        elif self.act == "softmax":
            y = torch.softmax(y, -1)
        elif self.act:
            y = getattr(torch, self.act)(y)
        return y

    def forward(self, x, states=None):  # noqa: ANN001, ANN201
        y = self.emb(x) if self.emb is not None else x
        new_states = []
        for i, rnn in enumerate(self.rnns):
            y, s = rnn(y, None if states is None else states[i])
            new_states.append(s)
        return self._head(y), new_states


def _options(case: Case) -> dict:
    opts: dict = {"batch_first": case.batch_first}
    nls = [kw.get("nonlinearity", "tanh") for kind, kw in case.recurrent]
    if any(kind == "RNN" for kind, _ in case.recurrent):
        opts["nonlinearity"] = nls if len(nls) > 1 else nls[0]
    if case.head:
        opts["head_activation"] = case.head[1]
    return opts


def _inputs(case: Case, gen: torch.Generator) -> torch.Tensor:
    T, B = 6, 3
    shape = (B, T) if case.batch_first else (T, B)
    if case.vocab:
        return torch.randint(0, case.vocab, shape, generator=gen)
    return torch.randn(*shape, case.recurrent[0][1]["input_size"], generator=gen)


def _write_case(case: Case, folder: Path, seed: int) -> dict:
    """Save the case's checkpoints three ways, its input and PyTorch's outputs."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = Net(case).eval()
    x = _inputs(case, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        y, _ = net(x)
        unidirectional = not any(r.bidirectional for r in net.rnns)
        if unidirectional:
            states, steps = None, []
            T = x.shape[1] if case.batch_first else x.shape[0]
            for t in range(T):
                xt = x[:, t : t + 1] if case.batch_first else x[t : t + 1]
                yt, states = net(xt, states)
                steps.append(yt[:, 0] if case.batch_first else yt[0])
            np.save(folder / "y_steps.npy", torch.stack(steps).numpy())
    np.save(folder / "x.npy", x.numpy())
    np.save(folder / "y.npy", y.numpy())
    sd = net.state_dict()
    torch.save(sd, folder / "bare.pt")
    opt = torch.optim.Adam(net.parameters())
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3}, folder / "nested.ckpt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    return {
        "name": case.name,
        "folder": str(folder),
        "options": _options(case),
        "files": [["bare.pt", {}], ["nested.ckpt", {}], ["weights.safetensors", {}]],
    }


def test_checkpoints_load_without_torch_and_match_torch(tmp_path: Path) -> None:
    manifest = []
    for i, case in enumerate(CASES):
        folder = tmp_path / case.name
        folder.mkdir()
        manifest.append(_write_case(case, folder, seed=100 + i))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(
        [sys.executable, str(TESTS / "torch_free_checker.py"), str(tmp_path / "manifest.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch_loaded"] is False
    results = report["results"]
    assert len(results) == 3 * len(CASES)
    bad = [r for r in results if r["err"] > ATOL or (r["step_err"] or 0.0) > ATOL]
    assert not bad, bad
    stepped = {r["case"] for r in results if r["step_err"] is not None}
    assert stepped == {c.name for c in CASES if not any(
        kw.get("bidirectional") for _, kw in c.recurrent)}  # fmt: skip


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: c.name)
def test_live_module_and_state_dict(case: Case) -> None:
    torch.manual_seed(7)
    net = Net(case).eval()
    x = _inputs(case, torch.Generator().manual_seed(7))
    with torch.inference_mode():
        y, _ = net(x)
    opts = {k: v for k, v in _options(case).items() if k == "head_activation"}
    from_module = lstm_infer.load(net, **opts)  # batch_first / nonlinearity read off the module
    from_sd = lstm_infer.load(net.state_dict(), **_options(case))
    for model in (from_module, from_sd):
        np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], y, atol=ATOL)


def test_initial_and_final_states_match_torch() -> None:
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(2, 5, 4)
    h0, c0 = torch.randn(4, 2, 6), torch.randn(4, 2, 6)
    with torch.inference_mode():
        y, (h, c) = lstm(x, (h0, c0))
    model = lstm_infer.load(lstm)
    out = model.run({"input": x.numpy(), "h0": h0.numpy(), "c0": c0.numpy()})
    np.testing.assert_allclose(out["output"], y, atol=ATOL)
    np.testing.assert_allclose(out["h_n"], h, atol=ATOL)
    np.testing.assert_allclose(out["c_n"], c, atol=ATOL)
    assert [i.name for i in model.inputs] == ["input", "h0", "c0"]
    assert model.inputs[0].shape == ("batch", "seq_len", 4)


def test_prefix_picks_a_submodule_and_ambiguity_says_what_to_pass(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = nn.Module()
    enc.encoder = nn.GRU(3, 4)
    enc.norm = nn.LayerNorm(4)
    enc.decoder = nn.Linear(4, 2)
    path = tmp_path / "m.pth"
    torch.save(enc.state_dict(), path)
    with pytest.raises(ModelFormatError, match="prefix="):
        lstm_infer.load(path)
    model = lstm_infer.load(path, prefix="encoder.")
    x = torch.randn(4, 1, 3)
    with torch.inference_mode():
        y, _ = enc.encoder(x)
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], y, atol=ATOL)

    two_linear = nn.Sequential()
    two_linear.add_module("rnn", nn.LSTM(3, 4))
    two_linear.add_module("fc1", nn.Linear(4, 4))
    two_linear.add_module("fc2", nn.Linear(4, 2))
    torch.save(two_linear.state_dict(), path)
    with pytest.raises(ModelFormatError, match="head_activations"):
        lstm_infer.load(path)
    model = lstm_infer.load(path, head_activations=["relu", None])
    with torch.inference_mode():
        h, _ = two_linear.rnn(x)
        y = two_linear.fc2(torch.relu(two_linear.fc1(h)))
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], y, atol=ATOL)
    with pytest.raises(ModelFormatError, match="key"):
        lstm_infer.load(path, key="no_such_key")


class SpeakerEncoder(nn.Module):
    """A speaker encoder shaped like Resemblyzer's (LSTM 40 -> 256 x 3, Linear 256 -> 256,
    ReLU) with its GE2E loss's two scalar parameters registered on the same module, as its
    shipped training checkpoint ``{"step", "model_state", "optimizer_state"}`` stores them."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 32, num_layers=3, batch_first=True)
        self.linear = nn.Linear(32, 32)
        self.relu = nn.ReLU()
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(self.lstm(x)[0]))


def test_ignore_leaves_a_loss_s_parameters_out(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = SpeakerEncoder().eval()
    path = tmp_path / "pretrained.pt"
    torch.save({"step": 5, "model_state": net.state_dict(), "optimizer_state": {}}, path)
    with pytest.raises(ModelFormatError, match=r"ignore=\["):
        lstm_infer.load(path, key="model_state", batch_first=True, head_activation="relu")
    model = lstm_infer.load(
        path,
        key="model_state",
        ignore=["similarity_weight", "similarity_bias"],
        batch_first=True,
        head_activation="relu",
    )
    x = torch.randn(2, 9, 40)
    with torch.inference_mode():
        y = net(x)
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], y, atol=ATOL)
    # a whole module can be left out by its name; a name matching nothing is refused
    model = lstm_infer.load(
        net.state_dict(),
        ignore=["similarity_weight", "similarity_bias", "linear"],
        batch_first=True,
    )
    with torch.inference_mode():
        h = net.lstm(x)[0]
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], h, atol=ATOL)
    with pytest.raises(ModelFormatError, match="'similarity' names no parameter"):
        lstm_infer.load(net.state_dict(), ignore=["similarity"])
    with pytest.raises(TypeError, match="ignore must be a list"):
        lstm_infer.load(net.state_dict(), ignore="similarity_weight")


def test_leaky_relu_between_linear_layers_matches_torch(tmp_path: Path) -> None:
    """pyannote's PyanNet puts F.leaky_relu (slope 0.01) between the Linear layers after its
    LSTM: head_activations=["leaky_relu", ...] says so."""
    torch.manual_seed(5)
    net = nn.Module()
    net.lstm = nn.LSTM(6, 8, batch_first=True, bidirectional=True)
    net.linear = nn.ModuleList([nn.Linear(16, 8), nn.Linear(8, 8)])
    net.classifier = nn.Linear(8, 3)
    path = tmp_path / "seg.pt"
    torch.save(net.state_dict(), path)
    model = lstm_infer.load(
        path, batch_first=True, head_activations=["leaky_relu", "leaky_relu", None]
    )
    x = torch.randn(2, 7, 6) * 3
    with torch.inference_mode():
        y = net.lstm(x)[0]
        for layer in net.linear:
            y = torch.nn.functional.leaky_relu(layer(y))
        y = net.classifier(y)
    np.testing.assert_allclose(model.run({"input": x.numpy()})["output"], y, atol=ATOL)


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"weight_ih_l0": torch.zeros(4, 2), "x": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        lstm_infer.load(path)
    assert not marker.exists()
