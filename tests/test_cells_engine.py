"""The cells of CELLS.md on the engine (lstm_infer.cells, src_c/cell_*.c), issue 17: every cell
against its lstm_infer.nn module run in float64 torch (fp32 here, 1e-5), stream steps and
chunked feeds equal to whole runs, snapshot / restore, loading from .pt / .safetensors /
training checkpoints with torch blocked, native save / load, batch_first, and hostile
state_dicts refused with the key named."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import require, run_python

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.errors import ModelFormatError  # noqa: E402
from lstm_infer.safetensors_io import write_safetensors  # noqa: E402

TOL = 1e-5


@dataclass(frozen=True)
class Case:
    make: Callable[[], torch.nn.Module]
    input_size: int


CASES = {
    "layer_norm_lstm": Case(lambda: cells.LayerNormLSTM(6, 20, 2), 6),
    "layer_norm_lstm_wide": Case(lambda: cells.LayerNormLSTM(5, 40, 1, eps=1e-3), 5),
    "clockwork_rnn": Case(lambda: cells.ClockworkRNN(5, 12, (1, 2, 3)), 5),
    "clockwork_rnn_wide": Case(lambda: cells.ClockworkRNN(4, 32, (1, 2, 4, 8)), 4),
    "depth_gated_lstm": Case(lambda: cells.DepthGatedLSTM(6, 20, 3), 6),
    "depth_gated_lstm_wide": Case(lambda: cells.DepthGatedLSTM(5, 32, 2), 5),
    "grid_lstm": Case(lambda: cells.GridLSTM(6, 20, 3), 6),
    "grid_lstm_wide": Case(lambda: cells.GridLSTM(5, 32, 2), 5),
}


def _module(case: Case, seed: int = 0) -> torch.nn.Module:
    """The case's module with every parameter random (norm weights away from 1, biases away
    from 0), in float64."""
    torch.manual_seed(seed)
    module = case.make().double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def _expected(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y, _ = module(torch.from_numpy(x.astype(np.float64)))
    return y.numpy()


def _close(got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.fixture(params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


def _sequence(rng, case: Case, steps: int = 11, batch: int = 3) -> np.ndarray:
    return rng.standard_normal((steps, batch, case.input_size)).astype(np.float32)


def test_run_equals_the_torch_module(rng, case: Case) -> None:
    module = _module(case)
    model = lstm_infer.load(module)
    assert [i.name for i in model.inputs] == ["input"]
    assert [o.name for o in model.outputs] == ["output"]
    for steps, batch in ((11, 3), (1, 1), (70, 2), (5, 9)):  # one and several chunks, rows
        x = _sequence(rng, case, steps, batch)
        _close(model.run({"input": x})["output"], _expected(module, x))


def test_steps_and_chunks_equal_the_run(rng, case: Case) -> None:
    module = _module(case)
    model = lstm_infer.load(module)
    x = _sequence(rng, case, 13, 2)
    want = model.run({"input": x})["output"]
    stream = model.stream()
    stepped = np.concatenate([stream.step(x[t : t + 1]) for t in range(len(x))])
    assert stream.compiled
    _close(stepped, want, 1e-6)
    for chunk in (1, 3, 7, 13):
        stream.reset()
        _close(stream.feed(x, chunk=chunk), want, 1e-6)
    # snapshot mid-stream, go on, restore: the same continuation
    stream.reset()
    stream.feed(x[:5])
    snap = stream.state
    first = stream.feed(x[5:])
    stream.state = snap
    _close(stream.feed(x[5:]), first, 0)
    _close(first, want[5:], 1e-6)


def test_batch_first(rng, case: Case) -> None:
    module = _module(case)
    model = lstm_infer.load(module, batch_first=True)
    x = _sequence(rng, case, 6, 2)
    got = model.run({"input": np.ascontiguousarray(x.transpose(1, 0, 2))})["output"]
    _close(got.transpose(1, 0, 2), _expected(module, x))


def _state_dict(module: torch.nn.Module, prefix: str = "") -> dict:
    """Floating-point tensors as float32, integer buffers (periods) as they are."""
    return {
        prefix + k: v.float() if v.is_floating_point() else v
        for k, v in module.state_dict().items()
    }


def test_loads_from_files_without_torch(tmp_path, rng, case: Case) -> None:
    """A .pt state_dict, a training checkpoint with the cell under a prefix, and a
    .safetensors file load and run in an interpreter where torch cannot be imported."""
    module = _module(case)
    x = _sequence(rng, case, 7, 2)
    np.save(tmp_path / "x.npy", x)
    torch.save(_state_dict(module), tmp_path / "plain.pt")
    torch.save(
        {"model": _state_dict(module, "encoder.rnn."), "epoch": 3, "optimizer": {"lr": 0.1}},
        tmp_path / "train.pt",
    )
    arrays = {k: v.numpy() for k, v in _state_dict(module).items()}
    write_safetensors(tmp_path / "cell.safetensors", arrays, {})
    code = (
        "import sys\nsys.modules['torch'] = None\nimport numpy as np, lstm_infer\n"
        f"d = {str(tmp_path)!r}\nx = np.load(d + '/x.npy')\n"
        "for name in ('plain.pt', 'train.pt', 'cell.safetensors'):\n"
        "    m = lstm_infer.load(d + '/' + name)\n"
        "    np.save(d + '/' + name + '.npy', m.run({'input': x})['output'])\n"
        "print('ok', 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = run_python(code)
    assert result.stdout.strip() == "ok False", result.stdout + result.stderr
    want = _expected(module, x)
    for name in ("plain.pt", "train.pt", "cell.safetensors"):
        _close(np.load(tmp_path / f"{name}.npy"), want)


def test_native_save_and_load_round_trip(tmp_path, rng, case: Case) -> None:
    model = lstm_infer.load(_module(case))
    x = _sequence(rng, case, 9, 2)
    want = model.run({"input": x})["output"]
    path = tmp_path / "cell.lstm_infer"
    model.save(path)
    again = lstm_infer.load(path)
    np.testing.assert_array_equal(again.run({"input": x})["output"], want)
    stream = again.stream()
    _close(stream.feed(x, chunk=2), want, 1e-6)


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_pool_of_sessions_equals_solo_streams(rng, batch_first: bool) -> None:
    """Sessions stepped together (the time-major model pooled on its axis 1, the batch-first
    one on axis 0), one leaving early, each equal to its own solo stream."""
    case = CASES["layer_norm_lstm"]
    model = lstm_infer.load(_module(case), batch_first=batch_first)
    xs = [_sequence(rng, case, 6, 1)[:, 0] for _ in range(3)]  # (T, I) per session
    pool = lstm_infer.StreamPool(model, step_shape=(1, case.input_size))
    sids = [pool.open() for _ in xs]
    got: list[list[np.ndarray]] = [[] for _ in xs]
    for t in range(6):
        live = {sid: xs[i][t : t + 1] for i, sid in enumerate(sids) if t < 4 or i != 1}
        for sid, y in pool.step(live).items():
            got[sids.index(sid)].append(np.asarray(y).reshape(1, -1))
    for i, x in enumerate(xs):
        solo = model.stream().feed(x[None] if batch_first else x[:, None])
        solo = solo[0] if batch_first else solo[:, 0]
        n = len(got[i])
        assert n == (4 if i == 1 else 6)
        _close(np.concatenate(got[i]), solo[:n], 1e-6)


# ---- hostile state_dicts ----------------------------------------------------------------------


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.float().numpy().copy() for k, v in module.state_dict().items()}


def test_a_bad_key_shape_is_named() -> None:
    state = _numpy_state(_module(CASES["layer_norm_lstm"]))
    state["weight_hh_l1"] = state["weight_hh_l1"][:, :-1]
    with pytest.raises(ModelFormatError, match="weight_hh_l1"):
        lstm_infer.load(state)


def test_a_missing_or_stray_key_is_named() -> None:
    full = _numpy_state(_module(CASES["layer_norm_lstm"]))
    missing = {k: v for k, v in full.items() if k != "cell_norm_l1.bias"}
    with pytest.raises(ModelFormatError, match="cell_norm_l1.bias"):
        lstm_infer.load(missing)
    with pytest.raises(ModelFormatError, match="eps"):
        lstm_infer.load({k: v for k, v in full.items() if k != "eps"})
    with pytest.raises(ModelFormatError, match="stray"):
        lstm_infer.load({**full, "stray": np.zeros(3, np.float32)})


def test_two_cells_need_a_prefix() -> None:
    one = _numpy_state(_module(CASES["layer_norm_lstm"]))
    two = {**{"a." + k: v for k, v in one.items()}, **{"b." + k: v for k, v in one.items()}}
    with pytest.raises(ModelFormatError, match="prefix"):
        lstm_infer.load(two)
    x = np.ones((2, 1, 6), np.float32)
    got = lstm_infer.load(two, prefix="b.").run({"input": x})["output"]
    _close(got, lstm_infer.load(one).run({"input": x})["output"], 0)


def test_a_wrong_input_is_a_clear_error() -> None:
    model = lstm_infer.load(_module(CASES["layer_norm_lstm"]))
    with pytest.raises(lstm_infer.errors.LstmInferError, match="6"):
        model.run({"input": np.ones((3, 2, 5), np.float32)})
    with pytest.raises(TypeError, match="head_activation"):
        lstm_infer.load(_numpy_state(_module(CASES["layer_norm_lstm"])), head_activation="relu")


@pytest.mark.parametrize("make", [
    lambda: cells.LayerNormLSTM(6, 20, 2),
    lambda: cells.DepthGatedLSTM(6, 20, 2),
    lambda: cells.GridLSTM(6, 20, 2),
    lambda: cells.ClockworkRNN(6, 20, (1, 2, 5, 10)),
])  # fmt: skip
def test_their_onnx_exports_load_and_run(rng, make) -> None:
    """torch.onnx's export of each cell (its loop unrolled into standard ops at the traced
    length) loads as a graph of generic ops and equals onnxruntime on it."""
    import io

    ort = require("onnxruntime")
    torch.manual_seed(0)
    module = make().eval()
    x = rng.standard_normal((9, 3, 6)).astype(np.float32)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(x),), buf, input_names=["x"], dynamo=False)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})
    model = lstm_infer.load(buf.getvalue())
    got = model.run({"x": x})
    assert len(got) == len(want)
    for value, expected in zip(got.values(), want):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)
