"""The attention LSTM decoder of CELLS.md on the engine (lstm_infer.cells.attention_decoder,
src_c/cell_attention_decoder.c): teacher-forced runs of every attention kind against the
lstm_infer.nn module in float64 torch (fp32 here, 1e-5), with and without lengths, final
states, loading without torch, native save / load, a head's logits, and bad inputs refused
with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require, run_python

torch = require("torch")
import lstm_infer  # noqa: E402
from lstm_infer import nn as cells  # noqa: E402
from lstm_infer.errors import InputError, ModelFormatError  # noqa: E402
from lstm_infer.safetensors_io import write_safetensors  # noqa: E402

TOL = 1e-5
KINDS = ("additive", "general", "dot", "location")
E, H = 5, 20


def _module(kind: str, seed: int = 0, hidden: int = H, memory: int = 13, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    mod = cells.AttentionDecoder(
        E, hidden, hidden if kind == "dot" else memory, kind,
        **{"attention_size": 7, "location_filters": 3, "location_kernel": 5, **kw},
    )  # fmt: skip
    mod = mod.double()
    with torch.no_grad():
        for p in mod.parameters():
            p.uniform_(-0.6, 0.6)
    return mod.eval()


def _data(rng, mod, steps: int = 6, batch: int = 3, positions: int = 9):
    y = rng.standard_normal((steps, batch, E)).astype(np.float32)
    m = rng.standard_normal((positions, batch, mod.memory_size)).astype(np.float32)
    return y, m


def _expected(mod, y, m, lengths=None, state=None):
    with torch.no_grad():
        out, st = mod(
            torch.from_numpy(y.astype(np.float64)),
            torch.from_numpy(m.astype(np.float64)),
            None if lengths is None else torch.from_numpy(np.asarray(lengths)),
            state,
        )
    return out.numpy(), [s.numpy() for s in st]


def _close(got, want, tol: float = TOL) -> None:
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _state_dict(mod, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.float().numpy().copy() for k, v in mod.state_dict().items()}


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def test_run_equals_the_torch_module(rng, kind: str) -> None:
    mod = _module(kind)
    model = lstm_infer.load(mod)
    assert model.input_names == ["input", "memory", "memory_lengths"]
    assert model.output_names == ["output"]
    for steps, batch, positions in ((6, 3, 9), (1, 1, 1), (70, 2, 5), (3, 9, 17)):
        y, m = _data(rng, mod, steps, batch, positions)
        lengths = rng.integers(1, positions + 1, batch)
        lengths[0] = positions
        got = model.run({"input": y, "memory": m, "memory_lengths": lengths})["output"]
        assert got.shape == (steps, batch, H + mod.memory_size)
        _close(got, _expected(mod, y, m, lengths)[0])
        # without lengths (the module's None) is every position valid
        full = np.full(batch, positions)
        got = model.run({"input": y, "memory": m, "memory_lengths": full})["output"]
        _close(got, _expected(mod, y, m)[0])


def test_every_kernel_table(rng, isa: str) -> None:
    """Runs, stream steps and generation on each table the CPU has, against the module."""
    for kind in KINDS:
        mod = _module(kind, seed=7)
        model = lstm_infer.load(mod)
        y, m = _data(rng, mod, 9, 3, 6)
        lengths = np.array([6, 2, 5])
        want = _expected(mod, y, m, lengths)[0]
        _close(model.run({"input": y, "memory": m, "memory_lengths": lengths})["output"], want)
        stream = model.stream()
        stream.reset({"memory": m, "memory_lengths": lengths})
        _close(stream.feed(y), want)


def test_the_op_with_initial_and_final_states(rng, kind: str) -> None:
    """The graph op alone (no lengths input) from given states, returning the final ones."""
    from lstm_infer.graph import Graph, Node, TensorType, ValueInfo

    mod = _module(kind, seed=3)
    model = lstm_infer.load(mod)
    attrs = dict(model.graph.nodes[0].attrs)
    y, m = _data(rng, mod, 4, 2, 6)
    _, start = _expected(mod, y, m)  # some non-zero state
    names = ["h", "c", "ctx", "alpha", "alpha_cum"]
    graph = Graph(
        [ValueInfo("y", TensorType("float32")), ValueInfo("m", TensorType("float32"))]
        + [ValueInfo(n, TensorType("float32")) for n in names],
        [ValueInfo(n, TensorType("float32")) for n in ["out", *(f"{n}_n" for n in names)]],
        [
            Node(
                "AttentionDecoder",
                ["y", "m", "", *names],
                ["out", *(f"{n}_n" for n in names)],
                attrs,
                "dec",
            )
        ],  # fmt: skip
    )
    op_model = lstm_infer.GraphModel(graph)
    feeds = {"y": y, "m": m, **{n: s.astype(np.float32) for n, s in zip(names, start)}}
    got = op_model.run(feeds)
    want, final = _expected(mod, y, m, state=tuple(torch.from_numpy(s) for s in start))
    _close(got["out"], want)
    for n, s in zip(names, final):
        _close(got[f"{n}_n"], s)


def test_batch_first(rng) -> None:
    mod = _module("location")
    model = lstm_infer.load(mod, batch_first=True)
    y, m = _data(rng, mod, 5, 2, 7)
    lengths = np.array([7, 3])
    got = model.run(
        {
            "input": np.ascontiguousarray(y.transpose(1, 0, 2)),
            "memory": np.ascontiguousarray(m.transpose(1, 0, 2)),
            "memory_lengths": lengths,
        }
    )["output"]
    _close(got.transpose(1, 0, 2), _expected(mod, y, m, lengths)[0])


def test_a_head_gives_logits(rng) -> None:
    mod = _module("additive", seed=1)
    head = torch.nn.Linear(H + mod.memory_size, 11).double()
    state = {**_state_dict(mod, "decoder."), **_state_dict(head, "head.")}
    model = lstm_infer.load(state)
    assert model.output_names == ["output", "logits"]
    y, m = _data(rng, mod)
    out = model.run({"input": y, "memory": m, "memory_lengths": np.array([9, 2, 5])})
    want, _ = _expected(mod, y, m, np.array([9, 2, 5]))
    _close(out["output"], want)
    with torch.no_grad():
        _close(out["logits"], head(torch.from_numpy(want)).numpy())


def test_loads_from_files_without_torch(tmp_path, rng) -> None:
    mod = _module("location", seed=2)
    y, m = _data(rng, mod, 5, 2, 6)
    lengths = np.array([6, 2])
    np.savez(tmp_path / "data.npz", y=y, m=m, lengths=lengths)
    tensors = lambda pre: {pre + k: v.float() for k, v in mod.state_dict().items()}  # noqa: E731
    torch.save(tensors(""), tmp_path / "plain.pt")
    torch.save({"model": tensors("net.decoder."), "epoch": 3}, tmp_path / "train.pt")
    write_safetensors(tmp_path / "dec.safetensors", _state_dict(mod), {})
    code = (
        "import sys\nsys.modules['torch'] = None\nimport numpy as np, lstm_infer\n"
        f"d = {str(tmp_path)!r}\nz = np.load(d + '/data.npz')\n"
        "for name in ('plain.pt', 'train.pt', 'dec.safetensors'):\n"
        "    model = lstm_infer.load(d + '/' + name)\n"
        "    feeds = {'input': z['y'], 'memory': z['m'], 'memory_lengths': z['lengths']}\n"
        "    np.save(d + '/' + name + '.npy', model.run(feeds)['output'])\n"
        "print('ok', 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = run_python(code)
    assert result.stdout.strip() == "ok False", result.stdout + result.stderr
    want, _ = _expected(mod, y, m, lengths)
    for name in ("plain.pt", "train.pt", "dec.safetensors"):
        _close(np.load(tmp_path / f"{name}.npy"), want)


def test_native_save_and_load_round_trip(tmp_path, rng, kind: str) -> None:
    mod = _module(kind)
    head = torch.nn.Linear(H + mod.memory_size, 6)
    emb = torch.nn.Embedding(6, E)
    model = lstm_infer.load(
        {**_state_dict(mod), **_state_dict(head, "head."), **_state_dict(emb, "embedding.")}
    )
    y, m = _data(rng, mod)
    feeds = {"input": y, "memory": m, "memory_lengths": np.array([9, 1, 4])}
    want = model.run(feeds)
    path = tmp_path / "dec.lstm_infer"
    model.save(path)
    again = lstm_infer.load(path)
    for name in ("output", "logits"):
        np.testing.assert_array_equal(again.run(feeds)[name], want[name])


# ---- bad inputs ---------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(rng) -> None:
    mod = _module("additive")
    model = lstm_infer.load(mod)
    y, m = _data(rng, mod, 3, 2, 4)
    ok = np.array([4, 1])
    with pytest.raises(InputError, match="memory.* 13"):
        model.run({"input": y, "memory": m[..., :-1], "memory_lengths": ok})
    with pytest.raises(InputError, match="batch"):
        model.run({"input": y, "memory": m[:, :1], "memory_lengths": ok[:1]})
    for bad in ([0, 1], [5, 1], [4, -2]):
        with pytest.raises(InputError, match=r"memory_lengths must be in \[1, 4\]"):
            model.run({"input": y, "memory": m, "memory_lengths": np.array(bad)})
    with pytest.raises(InputError, match=r"memory_lengths must be \(2,\)"):
        model.run({"input": y, "memory": m, "memory_lengths": np.array([4, 1, 1])})
    with pytest.raises(InputError, match="S = 0"):
        model.run({"input": y, "memory": m[:0], "memory_lengths": ok})
    with pytest.raises(InputError, match="input.* 5"):
        model.run({"input": y[..., :-1], "memory": m, "memory_lengths": ok})


def test_bad_state_dicts_are_named() -> None:
    state = _state_dict(_module("location"))
    with pytest.raises(ModelFormatError, match="query.weight"):
        lstm_infer.load({k: v for k, v in state.items() if k != "query.weight"})
    bad = dict(state)
    bad["location_dense.weight"] = bad["location_dense.weight"][:, :-1]
    with pytest.raises(ModelFormatError, match="location_dense.weight"):
        lstm_infer.load(bad)
    bad = dict(state)
    bad["cell.weight_hh"] = bad["cell.weight_hh"][:-1]
    with pytest.raises(ModelFormatError, match="cell.weight_hh"):
        lstm_infer.load(bad)
    even = _state_dict(_module("location"))
    even["location_conv.weight"] = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(ModelFormatError, match="odd"):
        lstm_infer.load(even)
    head = {**state, "head.weight": np.zeros((4, 3), np.float32)}
    with pytest.raises(ModelFormatError, match="head.weight"):
        lstm_infer.load(head)


# ---- streams --------------------------------------------------------------------------------


def test_stream_steps_equal_the_run(rng, kind: str) -> None:
    mod = _module(kind, seed=4)
    model = lstm_infer.load(mod)
    y, m = _data(rng, mod, 7, 3, 8)
    lengths = np.array([8, 3, 1])
    want = model.run({"input": y, "memory": m, "memory_lengths": lengths})["output"]
    stream = model.stream()
    stream.reset({"memory": m, "memory_lengths": lengths})
    stepped = np.stack([stream.step(y[t]) for t in range(len(y))])
    _close(stepped, want, 1e-6)
    # again after a reset (same memory), 3-D steps, and into out= buffers
    stream.reset()
    out = np.empty((1, 3, stream.step(y[0]).shape[1]), np.float32)
    stream.reset()
    for t in range(len(y)):
        assert stream.step(y[t : t + 1], out=out) is out
        _close(out[0], want[t], 1e-6)
    # without lengths: every position valid; snapshot / restore continues identically
    stream.reset({"memory": m})
    _close(stream.feed(y), _expected(mod, y, m)[0])
    stream.reset()
    stream.feed(y[:3])
    snap = stream.state
    assert set(snap) == {"h", "c", "ctx", "alpha", "alpha_cum"} and snap["alpha"].shape == (3, 8)
    first = stream.feed(y[3:])
    stream.state = snap
    np.testing.assert_array_equal(stream.feed(y[3:]), first)


def test_stream_bad_inputs(rng) -> None:
    mod = _module("general")
    stream = lstm_infer.load(mod).stream()
    y, m = _data(rng, mod, 2, 2, 5)
    with pytest.raises(lstm_infer.errors.StreamError, match="memory"):
        stream.step(y[0])
    with pytest.raises(InputError, match="memory_lengths must be in"):
        stream.reset({"memory": m, "memory_lengths": np.array([6, 1])})
    with pytest.raises(InputError, match="S = 0"):
        stream.reset({"memory": m[:0]})
    with pytest.raises(InputError, match="memory must be"):
        stream.reset({"memory": m[..., :3]})
    stream.reset({"memory": m})
    with pytest.raises(InputError, match="shape"):
        stream.step(y[0, :1])


# ---- generation -----------------------------------------------------------------------------


def _generator(kind: str, vocab: int = 9, seed: int = 5):
    mod = _module(kind, seed=seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(H + mod.memory_size, vocab).double()
    emb = torch.nn.Embedding(vocab, E).double()
    with torch.no_grad():
        head.weight.uniform_(-2, 2)
    state = {**_state_dict(mod), **_state_dict(head, "head."), **_state_dict(emb, "embedding.")}
    # the reference runs the fp32 weights the engine holds, in float64
    for module, pre in ((mod, ""), (head, "head."), (emb, "embedding.")):
        own = {k: state[pre + k] for k in module.state_dict()}
        module.load_state_dict({k: torch.from_numpy(v).double() for k, v in own.items()})
    return mod, head, emb, lstm_infer.load(state)


def _greedy(mod, head, emb, m, lengths, bos: int, eos: int | None, steps: int) -> np.ndarray:
    """The Python loop over the torch modules: embedding -> decoder step -> head -> argmax."""
    batch = m.shape[1]
    memory = torch.from_numpy(m.astype(np.float64))
    lens = None if lengths is None else torch.from_numpy(lengths)
    tok = torch.full((batch,), bos, dtype=torch.int64)
    done = torch.zeros(batch, dtype=torch.bool)
    state, out = None, []
    with torch.no_grad():
        for _ in range(steps):
            y, state = mod(emb(tok)[None], memory, lens, state)
            nxt = head(y[0]).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, -1 if eos is None else eos), nxt)
            out.append(nxt)
            if eos is not None:
                done = done | (nxt == eos)
                if bool(done.all()):
                    break
            tok = nxt
    return torch.stack(out, 1).numpy()


def test_generate_equals_a_greedy_torch_loop(rng, kind: str) -> None:
    mod, head, emb, model = _generator(kind)
    m = rng.standard_normal((8, 4, mod.memory_size)).astype(np.float32)
    lengths = np.array([8, 5, 1, 3])
    got = model.generate(m, lengths, bos=0, max_steps=15)
    assert got.dtype == np.int64 and got.shape == (4, 15)
    np.testing.assert_array_equal(got, _greedy(mod, head, emb, m, lengths, 0, None, 15))
    # with an eos: every row stops at its first eos, the later tokens are eos
    eos = int(got[0, 2])
    got = model.generate(m, lengths, bos=1, eos=eos, max_steps=12)
    want = _greedy(mod, head, emb, m, lengths, 1, eos, 12)
    np.testing.assert_array_equal(got, want)
    for row in got:
        hit = np.flatnonzero(row == eos)
        if hit.size:
            assert (row[hit[0] :] == eos).all()
    got = model.generate(m, None, bos=2, max_steps=6)
    np.testing.assert_array_equal(got, _greedy(mod, head, emb, m, None, 2, None, 6))


MASK64 = (1 << 64) - 1


def _splitmix64(state: list[int]) -> int:
    state[0] = (state[0] + 0x9E3779B97F4A7C15) & MASK64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _sampled(mod, head, emb, m, lengths, bos, eos, steps, temperature, seed) -> np.ndarray:
    """The sampler of src_c/cell_attention_decoder.h over the torch modules: one uniform per
    running row and step, rows in order; the first token whose cumulative weight exceeds it."""
    batch = m.shape[1]
    memory = torch.from_numpy(m.astype(np.float64))
    lens = torch.from_numpy(lengths)
    toks = [bos] * batch
    done = [False] * batch
    rng_state, state, out = [seed], None, []
    with torch.no_grad():
        for _ in range(steps):
            y, state = mod(emb(torch.tensor(toks))[None], memory, lens, state)
            logits = head(y[0]).numpy()
            row = []
            for b in range(batch):
                if done[b]:
                    row.append(eos)
                    continue
                w = np.exp((logits[b] - logits[b].max()) / temperature)
                u = (_splitmix64(rng_state) >> 11) * 2.0**-53 * w.sum()
                tok = int(np.searchsorted(np.cumsum(w), u, side="right"))
                row.append(min(tok, len(w) - 1))
                done[b] = row[-1] == eos
            out.append(row)
            toks = row
            if all(done):
                break
    return np.array(out, np.int64).T


def test_generate_samples_with_a_seed(rng) -> None:
    mod, head, emb, model = _generator("location")
    m = rng.standard_normal((6, 3, mod.memory_size)).astype(np.float32)
    lengths = np.array([6, 3, 1])
    got = model.generate(m, lengths, bos=0, eos=5, max_steps=10, temperature=1.5, seed=11)
    want = _sampled(mod, head, emb, m, lengths, 0, 5, 10, 1.5, 11)
    np.testing.assert_array_equal(got, want)
    got = model.generate(m, lengths, bos=2, max_steps=8, temperature=0.7, seed=3)  # no eos
    np.testing.assert_array_equal(got, _sampled(mod, head, emb, m, lengths, 2, None, 8, 0.7, 3))
    got = model.generate(m, lengths, bos=0, eos=5, max_steps=10, temperature=1.5, seed=11)
    again = model.generate(m, lengths, bos=0, eos=5, max_steps=10, temperature=1.5, seed=11)
    np.testing.assert_array_equal(again, got)
    other = model.generate(m, lengths, bos=0, max_steps=10, temperature=1.5, seed=12)
    assert not np.array_equal(other, got[:, : other.shape[1]])
    with pytest.raises(InputError, match="temperature"):
        model.generate(m, bos=0, temperature=-1.0)


def test_generate_bad_arguments(rng) -> None:
    mod, _, _, model = _generator("additive")
    m = rng.standard_normal((4, 2, mod.memory_size)).astype(np.float32)
    with pytest.raises(InputError, match="bos"):
        model.generate(m, bos=9)
    with pytest.raises(InputError, match="eos"):
        model.generate(m, bos=0, eos=-1)
    with pytest.raises(InputError, match="max_steps"):
        model.generate(m, bos=0, max_steps=0)
    with pytest.raises(InputError, match="memory_lengths must be in"):
        model.generate(m, np.array([5, 1]), bos=0)
    with pytest.raises(lstm_infer.errors.StreamError, match="embedding"):
        lstm_infer.load(_module("additive")).generate(m, bos=0)
