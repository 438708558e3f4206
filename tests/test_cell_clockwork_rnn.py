"""The clockwork RNN on the engine (lstm_infer/cells/clockwork_rnn.py,
src_c/cell_clockwork_rnn.c): what is its own beyond tests/test_cells_engine.py's generic
cases. The step counter lives in the stream (issue 15's last item): frame-by-frame steps,
chunks whose boundaries cut across the periods, and snapshot / restore mid-stream all equal
the whole run and the float64 torch module; the counter wraps past lcm(periods); rows at
different counters in one batch (a pool of sessions opened at different times) equal solo
streams; bad periods are refused with the problem named."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.errors import ModelFormatError  # noqa: E402

TOL = 1e-5


def _module(
    input_size: int, hidden: int, periods: tuple[int, ...], batch_first: bool = False
) -> torch.nn.Module:
    torch.manual_seed(1)
    module = cells.ClockworkRNN(input_size, hidden, periods, batch_first=batch_first).double()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def _torch_run(module: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    with torch.no_grad():
        y, (h, t) = module(torch.from_numpy(x.astype(np.float64)))
    return y.numpy(), h.numpy(), int(t)


def _close(got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _counter(stream) -> np.ndarray:
    (key,) = [k for k in stream.state if k.endswith("/t")]
    return stream.state[key]


@pytest.mark.parametrize("periods", [(1, 2, 4, 8), (2, 3, 5)])
def test_the_stream_carries_the_step_counter(rng, isa, periods) -> None:
    """Steps, chunks of sizes that do not divide the periods, and a snapshot restored
    mid-stream: each equal to the whole run and to the torch module, on every table."""
    module = _module(4, 6 * len(periods), periods)
    model = lstm_infer.load(module)
    x = rng.standard_normal((37, 2, 4)).astype(np.float32)
    want, want_h, want_t = _torch_run(module, x)
    run = model.run({"input": x})["output"]
    _close(run, want)
    stream = model.stream()
    stepped = np.concatenate([stream.step(x[t : t + 1]) for t in range(len(x))])
    _close(stepped, want)
    _close(stepped, run, 1e-6)
    (h_key,) = [k for k in stream.state if k.endswith("/h")]
    _close(stream.state[h_key], want_h)
    lcm = int(np.lcm.reduce(periods))
    np.testing.assert_array_equal(_counter(stream), [want_t % lcm] * 2)
    for chunk in (3, 5, 7, 11, 37):
        stream.reset()
        _close(stream.feed(x, chunk=chunk), run, 1e-6)
    stream.reset()
    stream.feed(x[:13], chunk=4)
    snap = stream.state
    np.testing.assert_array_equal(_counter(stream), [13 % lcm] * 2)
    rest = stream.feed(x[13:], chunk=5)
    _close(rest, run[13:], 1e-6)
    stream.feed(x[:9])  # move on, then back to the snapshot
    stream.state = snap
    _close(stream.feed(x[13:], chunk=3), rest, 1e-6)


def test_reset_zeroes_h_and_the_counter(rng) -> None:
    model = lstm_infer.load(_module(3, 8, (1, 3)))
    x = rng.standard_normal((7, 1, 3)).astype(np.float32)
    stream = model.stream()
    first = stream.feed(x)
    assert _counter(stream).tolist() == [1.0]  # 7 mod 3
    stream.reset()
    assert all(not np.any(v) for v in stream.state.values())
    _close(stream.feed(x), first, 0)


def test_the_counter_wraps_past_the_lcm(rng) -> None:
    """1000 steps with periods (1, 3, 7) (lcm 21): a whole run, steps of 1 and chunks of
    13 frames equal the torch module, whose counter is the plain step count."""
    module = _module(3, 9, (1, 3, 7))
    model = lstm_infer.load(module)
    x = rng.standard_normal((1000, 1, 3)).astype(np.float32)
    want, _, want_t = _torch_run(module, x)
    assert want_t == 1000
    _close(model.run({"input": x})["output"], want)
    stream = model.stream()
    _close(stream.feed(x), want)
    assert _counter(stream).tolist() == [1000 % 21]
    stream.reset()
    _close(stream.feed(x, chunk=13), want)


def test_the_one_call_step_equals_the_general_step_path(rng) -> None:
    """A step of plain float32 arrays (x and out of the input's and output's shapes) takes
    the stream's one-call path (lstm_infer._engine.StepIO); a strided x, a float64 out or
    no out take the general one. Both give the same bits, equal to the float64 module,
    across a snapshot restored and a reset."""
    module = _module(5, 16, (1, 2, 4, 8))
    x = rng.standard_normal((21, 1, 5)).astype(np.float32)
    want, _, _ = _torch_run(module, x)
    model = lstm_infer.load(module)
    fast, general = model.stream(), model.stream()
    strided = np.repeat(x, 2, axis=2)[:, :, ::2]  # the same values, not C-contiguous
    assert not strided[:1].flags.c_contiguous
    out = np.empty((1, 1, 16), np.float32)
    wide = np.empty((1, 1, 16), np.float64)
    got_fast, got_general = [], []
    for t in range(len(x)):
        if t == 12:
            snap = fast.state
        got_fast.append(fast.step(x[t : t + 1], out=out).copy())
        if t % 2:
            general.step(strided[t : t + 1], out=wide)
            got_general.append(wide.astype(np.float32))
        else:
            got_general.append(general.step(strided[t : t + 1]))
    assert fast._io is not None  # the one-call path is the one taken
    np.testing.assert_array_equal(np.concatenate(got_fast), np.concatenate(got_general))
    _close(np.concatenate(got_fast), want)
    fast.state = snap
    again = [fast.step(x[t : t + 1], out=out).copy() for t in range(12, len(x))]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(got_fast[12:]))
    fast.reset()
    fresh = [fast.step(x[t : t + 1]) for t in range(len(x))]  # out=None: fresh arrays
    np.testing.assert_array_equal(np.concatenate(fresh), np.concatenate(got_fast))


def test_rows_at_different_counters_equal_solo_streams(rng) -> None:
    """A pool's sessions opened at different times step in one batch while their counters
    differ (so do their active modules); each equals its own solo stream and the torch
    module."""
    module = _module(4, 12, (1, 2, 3), batch_first=True)
    model = lstm_infer.load(module)
    steps = 10
    xs = [rng.standard_normal((1, steps, 4)).astype(np.float32) for _ in range(4)]
    pool = lstm_infer.StreamPool(model, step_shape=(1, 4))
    opened_at = [0, 1, 3, 4]
    sids: dict[int, object] = {}
    got: list[list[np.ndarray]] = [[] for _ in xs]
    for clock in range(steps + max(opened_at)):
        for i, start in enumerate(opened_at):
            if clock == start:
                sids[i] = pool.open()
        live = {
            sids[i]: xs[i][0, clock - start : clock - start + 1]
            for i, start in enumerate(opened_at)
            if i in sids and clock - start < steps
        }
        for sid, y in pool.step(live).items():
            i = next(j for j, s in sids.items() if s == sid)
            got[i].append(np.asarray(y).reshape(1, -1))
    for i, x in enumerate(xs):
        solo = model.stream().feed(x)[0]
        _close(np.concatenate(got[i]), solo, 1e-6)
        _close(solo, _torch_run(module, x)[0][0])


def _state(periods, hidden: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "weight_ih": rng.standard_normal((hidden, 3)).astype(np.float32),
        "weight_hh": rng.standard_normal((hidden, hidden)).astype(np.float32),
        "bias": rng.standard_normal(hidden).astype(np.float32),
        "periods": np.asarray(periods),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"periods": np.array([3, 2, 1])}, "ascending"),
        ({"periods": np.array([1, 1, 2])}, "ascending"),
        ({"periods": np.array([0, 1, 2])}, "positive"),
        ({"periods": np.array([1, 2, 3, 4, 5])}, "divisible"),
        ({"periods": np.array([4093, 4096, 4099])}, "2\\*\\*24"),
        ({"periods": np.array([1.0, 2.0, 3.0], np.float32)}, "integer"),
        ({"periods": np.array([[1, 2, 3]])}, "shape"),
        ({"periods": np.array([], np.int64)}, "periods"),
        ({"weight_hh": np.zeros((12, 11), np.float32)}, "weight_hh"),
        ({"bias": np.zeros(11, np.float32)}, "bias"),
    ],
)
def test_bad_periods_and_shapes_are_refused(change, match) -> None:
    state = {**_state((1, 2, 3)), **change}
    with pytest.raises(ModelFormatError, match=match):
        lstm_infer.load(state)


def test_a_good_state_dict_loads_and_runs_against_the_module(rng) -> None:
    module = _module(3, 12, (1, 2, 3))
    state = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
             for k, v in module.state_dict().items()}  # fmt: skip
    assert state["periods"].dtype == np.int64
    x = rng.standard_normal((9, 2, 3)).astype(np.float32)
    _close(lstm_infer.load(state).run({"input": x})["output"], _torch_run(module, x)[0])
    with pytest.raises(ModelFormatError, match="missing periods"):
        from lstm_infer.cells.clockwork_rnn import read

        read({k: v for k, v in state.items() if k != "periods"})


def test_a_restored_counter_out_of_range_is_reduced_not_misread(rng) -> None:
    """A snapshot's counter is t mod lcm; one written by hand beyond the range (t itself,
    a negative value, a fraction) counts as floor(t) mod lcm, and NaN as 0."""
    model = lstm_infer.load(_module(3, 8, (1, 3)))
    x = rng.standard_normal((5, 1, 3)).astype(np.float32)
    stream = model.stream()
    stream.feed(x[:1])
    (t_key,) = [k for k in stream.state if k.endswith("/t")]
    base = {k: np.zeros_like(v) for k, v in stream.state.items()}

    def run_from(counter: float) -> np.ndarray:
        stream.state = {**base, t_key: np.array([counter], np.float32)}
        return stream.feed(x)

    for counter, same_as in ((25.0, 1.0), (-1.0, 2.0), (2.5, 2.0), (float("nan"), 0.0)):
        _close(run_from(counter), run_from(same_as), 0)
        assert _counter(stream).tolist() == [(same_as + 5) % 3]
