"""The cells of CELLS.md on the engine against the PyTorch module and onnxruntime on the
module's torch.onnx export (decomposed into standard ops), one thread each, one run.

Per cell two rows:

1. stream step: one frame of batch 1 (``stream.step(x, out=...)``), against the module's
   forward on one step with its state passed back, and onnxruntime on the one-step export
   with the state as inputs and outputs fed back by hand;
2. whole sequence: T = ``--steps`` frames of batch ``--batch`` (``model.run``), against the
   module's forward and onnxruntime on the export at that T (unrolled by the exporter).

The clockwork RNN's export bakes its step counter in (the module reads it as a Python int),
so its onnxruntime step always runs step 0's work: every module active. Its step is also
shown against our own dense RNN step of the same size (the cell's purpose: the target is
<= 0.5x). The attention decoders (additive and location attention, E = Dm = A = H, a memory
of ``--memory-steps`` positions) step with the memory set once per sequence at ``reset``; the
exported step takes the memory as an input, so onnxruntime recomputes its keys every step, as
a caller of a one-step export must. Outputs are checked to agree first; engines interleaved
round-robin; medians of ``--repeat`` blocks. Steps and runs of the cells are also timed on
bf16 and int8 weights (``model.quantize``; "lstm_infer bf16" / "lstm_infer int8" rows).

``--onnx-load`` adds our load of the same torch.onnx exports onnxruntime runs, before and
after re-rolling (lstm_infer.passes.reroll_cells; "before" loads with the pass switched off):
the run row times ``run`` on the T-step export both ways; the step row times "onnx unrolled",
the one-step export run with its states fed back by hand (as onnxruntime's), against "onnx
re-rolled", a stream of the T-step export once it is the native cell (a cell the pass does
not recognise stays unrolled, so its T-step export cannot stream: no such row).

    python bench/cells.py [--hidden 256] [--input 64] [--steps 100] [--batch 16]
                          [--memory-steps 100] [--cells layer_norm_lstm ...] [--repeat 15]
                          [--onnx-load]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import ort_session, time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402


@dataclass(frozen=True)
class CellBench:
    """make(I, H) -> module; states(module, batch) -> the module's initial state tuple as
    tensors for the export (None: the module's own zero start, with a baked counter)."""

    make: Callable
    op: str
    state_count: int  # tensors of the exported step's state (inputs and outputs)


def _cells() -> dict[str, CellBench]:
    from lstm_infer import nn as cells

    return {
        "layer_norm_lstm": CellBench(lambda i, h: cells.LayerNormLSTM(i, h, 2), "LayerNormLSTM", 2),
        "depth_gated_lstm": CellBench(
            lambda i, h: cells.DepthGatedLSTM(i, h, 2), "DepthGatedLSTM", 2
        ),
        "grid_lstm": CellBench(lambda i, h: cells.GridLSTM(i, h, 2), "GridLSTM", 2),
        "clockwork_rnn": CellBench(
            lambda i, h: cells.ClockworkRNN(i, h, (1, 2, 4, 8)), "ClockworkRNN", 1
        ),
        "attention_decoder_additive": CellBench(
            lambda i, h: cells.AttentionDecoder(h, h, h, "additive"), "AttentionDecoder", 5
        ),
        "attention_decoder_location": CellBench(
            lambda i, h: cells.AttentionDecoder(h, h, h, "location"), "AttentionDecoder", 5
        ),
    }


def _ort(data: bytes):  # noqa: ANN202
    return ort_session(data, 1)  # one thread, like every engine here


def _step_module(module, count: int):  # noqa: ANN001, ANN202
    """A module whose forward(x, *state) -> (y, *state): the state as plain tensors."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = module

        def forward(self, x, *state):  # noqa: ANN001, ANN202
            if count == 1:  # the clockwork RNN: (h, t) with t baked in at 0
                y, (h, _t) = self.cell(x, (state[0], torch.tensor(0, dtype=torch.int64)))
                return y, h
            y, new = self.cell(x, tuple(state))
            return (y, *new)

    return Step().eval()


def _export(module, args: tuple, names: list[str]) -> bytes:  # noqa: ANN001
    import torch

    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, args, buf, input_names=names, dynamo=False)
    return buf.getvalue()


def _initial(module, count: int, batch: int):  # noqa: ANN001, ANN202
    import torch

    layers = getattr(module, "num_layers", 1)
    return tuple(torch.zeros(layers, batch, module.hidden_size) for _ in range(count))


@contextmanager
def _reroll_off() -> Iterator[None]:
    """Models loaded inside run their ONNX graphs as exported (no re-rolling pass)."""
    from lstm_infer.compile import program

    saved = program.reroll_cells
    program.reroll_cells = lambda graph: graph
    try:
        yield
    finally:
        program.reroll_cells = saved


def _onnx_loads(data: bytes) -> tuple:  # noqa: ANN001
    """Our load of an export (unrolled, re-rolled) and whether the pass changed it."""
    with _reroll_off():
        unrolled = lstm_infer.load(data)
    rerolled = lstm_infer.load(data)
    changed = {n.op for n in rerolled.graph.nodes} != {n.op for n in unrolled.graph.nodes}
    return unrolled, rerolled, changed


def _stream_loop(stream, frames: np.ndarray, out: np.ndarray):  # noqa: ANN001, ANN202
    def loop(n: int) -> None:
        for k in range(n):
            stream.step(frames[k % len(frames)], out=out)

    return loop


def _run_loop(model, feeds: dict[str, np.ndarray]):  # noqa: ANN001, ANN202
    def loop(n: int) -> None:
        for _ in range(n):
            model.run(feeds, threads=1)

    return loop


def _with_quantized_runs(loops: dict, model, feeds: dict[str, np.ndarray]) -> dict:  # noqa: ANN001
    """loops plus the same runs on bf16 and int8 weights (GraphModel.quantize)."""
    for fmt in ("bf16", "int8"):
        loops[f"lstm_infer {fmt}"] = _run_loop(model.quantize(fmt), feeds)
    return loops


def _decoder_step_module(module):  # noqa: ANN001, ANN202
    """forward(y, memory, *state) -> (out, *state) of one teacher-forced step."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = module

        def forward(self, y, memory, *state):  # noqa: ANN001, ANN202
            out, new = self.cell(y, memory, None, tuple(state))
            return (out, *new)

    return Step().eval()


def decoder_step_rows(name: str, bench: CellBench, h: int, s: int, repeat: int, block: float):
    """The decoder's stream step (memory set once) vs the module's step and onnxruntime's
    one-step export fed its five states back."""
    import torch

    torch.manual_seed(0)
    module = bench.make(h, h).eval()
    model = lstm_infer.load(module)
    rng = np.random.default_rng(0)
    memory = rng.standard_normal((s, 1, h)).astype(np.float32)
    frames = rng.standard_normal((64, 1, 1, h)).astype(np.float32)
    stream = model.stream()
    stream.reset({"memory": memory})
    mt = torch.from_numpy(memory)
    state0 = tuple(torch.zeros(1, n) for n in (h, h, h, s, s))
    step = _decoder_step_module(module)
    names = ["y", "memory"] + [f"s{k}" for k in range(5)]
    sess = _ort(_export(step, (torch.from_numpy(frames[0]), mt, *state0), names))
    # the export drops the state inputs a step never reads (alpha, alpha_cum but for location)
    read = {i.name for i in sess.get_inputs()}
    feeds0 = {f"s{k}": v.numpy() for k, v in enumerate(state0)}
    first = {"y": frames[0], "memory": memory, **feeds0}
    want = sess.run(None, {k: v for k, v in first.items() if k in read})
    out = np.empty((1, 1, 2 * h), np.float32)
    np.testing.assert_allclose(stream.step(frames[0]), want[0], atol=1e-4)
    box = {"ort": list(feeds0.values()), "torch": state0}

    def loop_torch(n: int) -> None:
        st = box["torch"]
        with torch.no_grad():
            for k in range(n):
                st = step(torch.from_numpy(frames[k % 64]), mt, *st)[1:]
        box["torch"] = st

    def loop_ort(n: int) -> None:
        st = box["ort"]
        for k in range(n):
            feeds = {"y": frames[k % 64], "memory": memory}
            feeds.update({f"s{j}": v for j, v in enumerate(st) if f"s{j}" in read})
            st = sess.run(None, feeds)[1:]
        box["ort"] = st

    t = time_interleaved(
        {"lstm_infer": _stream_loop(stream, frames, out), "torch": loop_torch,
         "onnxruntime": loop_ort}, repeat, block,
    )  # fmt: skip
    return _report(f"{name}_step", t, f"{name} stream step, E=Dm=A=H={h}, S={s}, batch 1")


def decoder_run_rows(
    name: str, bench: CellBench, h: int, s: int, steps: int, batch: int, repeat: int,
    block: float,
) -> list:  # fmt: skip
    """A teacher-forced run over T steps of a batch, memory lengths all S."""
    import torch

    torch.manual_seed(0)
    module = bench.make(h, h).eval()
    model = lstm_infer.load(module)
    rng = np.random.default_rng(1)
    y = rng.standard_normal((steps, batch, h)).astype(np.float32)
    memory = rng.standard_normal((s, batch, h)).astype(np.float32)
    lengths = np.full(batch, s, np.int64)
    yt, mt, lt = torch.from_numpy(y), torch.from_numpy(memory), torch.from_numpy(lengths)

    class Run(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = module

        def forward(self, y, memory, lengths):  # noqa: ANN001, ANN202
            return self.cell(y, memory, lengths)[0]

    run = Run().eval()
    sess = _ort(_export(run, (yt, mt, lt), ["y", "memory", "lengths"]))
    feeds = {"y": y, "memory": memory, "lengths": lengths}
    ours = {"input": y, "memory": memory, "memory_lengths": lengths}
    want = sess.run(None, feeds)[0]
    np.testing.assert_allclose(model.run(ours)["output"], want, atol=1e-4)

    def loop_torch(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                run(yt, mt, lt)

    def loop_ort(n: int) -> None:
        for _ in range(n):
            sess.run(None, feeds)

    loops = {"lstm_infer": _run_loop(model, ours), "torch": loop_torch, "onnxruntime": loop_ort}
    t = time_interleaved(_with_quantized_runs(loops, model, ours), repeat, block)
    return _report(f"{name}_run", t, f"{name} run, T={steps}, batch {batch}, H={h}, S={s}")


def step_rows(
    name: str, bench: CellBench, i: int, h: int, repeat: int, block: float,
    onnx_load: bool = False,
) -> list:  # fmt: skip
    import torch

    torch.manual_seed(0)
    module = bench.make(i, h).eval()
    model = lstm_infer.load(module)
    stream = model.stream()
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((64, 1, 1, i)).astype(np.float32)
    state0 = _initial(module, bench.state_count, 1)
    step = _step_module(module, bench.state_count)
    names = ["x"] + [f"s{k}" for k in range(bench.state_count)]
    step_export = _export(step, (torch.from_numpy(frames[0]), *state0), names)
    sess = _ort(step_export)
    out = np.empty((1, 1, h), np.float32)
    want = sess.run(None, {"x": frames[0], **{f"s{k}": s.numpy() for k, s in enumerate(state0)}})
    np.testing.assert_allclose(stream.step(frames[0]), want[0], atol=1e-4)  # step 0 agrees
    box = {"ort": [s.numpy() for s in state0], "torch": state0}

    def loop_torch(n: int) -> None:
        s = box["torch"]
        with torch.no_grad():
            for k in range(n):
                res = step(torch.from_numpy(frames[k % 64]), *s)
                s = res[1:]
        box["torch"] = s

    def loop_ort(n: int) -> None:
        s = box["ort"]
        for k in range(n):
            res = sess.run(None, {"x": frames[k % 64], **{f"s{j}": v for j, v in enumerate(s)}})
            s = res[1:]
        box["ort"] = s

    loops = {"lstm_infer": _stream_loop(stream, frames, out), "torch": loop_torch,
             "onnxruntime": loop_ort}  # fmt: skip
    for fmt in ("bf16", "int8"):  # the same cell on quantized weights (GraphModel.quantize)
        loops[f"lstm_infer {fmt}"] = _stream_loop(model.quantize(fmt).stream(), frames, out)
    if name == "clockwork_rnn":  # the cell's point: fewer rows than the dense RNN step
        dense = lstm_infer.load(torch.nn.RNN(i, h)).stream()
        flat = frames.reshape(64, 1, i)
        dense_out = np.empty((1, h), np.float32)

        def loop_dense(n: int) -> None:
            for k in range(n):
                dense.step(flat[k % 64], out=dense_out)

        loops["lstm_infer dense RNN"] = loop_dense
    if onnx_load:
        loops.update(_onnx_step_loops(module, step_export, frames, state0, h))
    t = time_interleaved(loops, repeat, block)
    return _report(f"{name}_step", t, f"{name} stream step, H={h}, I={i}, batch 1")


def _onnx_step_loops(module, step_export: bytes, frames: np.ndarray, state0: tuple,
                     h: int) -> dict:  # noqa: ANN001  # fmt: skip
    """Two loops: "onnx unrolled", our run of the one-step export with its states fed back,
    and "onnx re-rolled", a stream of the 8-step export when the pass made it the native
    cell. Each checked against onnxruntime on its own export first."""
    import torch

    unrolled, _, _ = _onnx_loads(step_export)
    feeds0 = {f"s{k}": s.numpy() for k, s in enumerate(state0)}
    check = _ort(step_export).run(None, {"x": frames[0], **feeds0})
    np.testing.assert_allclose(unrolled.run({"x": frames[0], **feeds0})[unrolled.outputs[0].name],
                               check[0], atol=1e-4)  # fmt: skip
    box = {"s": list(feeds0.values())}
    names = [o.name for o in unrolled.outputs]

    def loop_unrolled(n: int) -> None:
        s = box["s"]
        for k in range(n):
            res = unrolled.run({"x": frames[k % 64], **{f"s{j}": v for j, v in enumerate(s)}},
                               threads=1)  # fmt: skip
            s = [res[m] for m in names[1:]]
        box["s"] = s

    loops = {"lstm_infer onnx unrolled": loop_unrolled}
    seq = np.concatenate(list(frames[:8]))  # (8, 1, I)
    data = _export(module, (torch.from_numpy(seq),), ["x"])
    _, rerolled, changed = _onnx_loads(data)
    if changed:
        want = _ort(data).run(None, {"x": seq})[0]
        np.testing.assert_allclose(rerolled.run({"x": seq})[rerolled.outputs[0].name], want,
                                   atol=1e-4)  # fmt: skip
        stream = rerolled.stream()
        first = rerolled.outputs[0].name
        outs = {o.name: np.empty((1, 1, h) if o.name == first else o.shape, np.float32)
                for o in rerolled.outputs}  # fmt: skip
        loops["lstm_infer onnx re-rolled"] = _stream_loop(stream, frames, outs)
    return loops


def run_rows(
    name: str, bench: CellBench, i: int, h: int, steps: int, batch: int, repeat: int, block: float,
    onnx_load: bool = False,
) -> list:  # fmt: skip
    import torch

    torch.manual_seed(0)
    module = bench.make(i, h).eval()
    model = lstm_infer.load(module)
    x = np.random.default_rng(1).standard_normal((steps, batch, i)).astype(np.float32)
    xt = torch.from_numpy(x)
    data = _export(module, (xt,), ["x"])
    sess = _ort(data)
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run({"input": x})["output"], want, atol=1e-4)

    def loop_torch(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                module(xt)

    def loop_ort(n: int) -> None:
        for _ in range(n):
            sess.run(None, {"x": x})

    feeds = {"input": x}
    loops = {"lstm_infer": _run_loop(model, feeds), "torch": loop_torch, "onnxruntime": loop_ort}
    loops = _with_quantized_runs(loops, model, feeds)
    if onnx_load:
        unrolled, rerolled, _ = _onnx_loads(data)
        for label, loaded in (("unrolled", unrolled), ("re-rolled", rerolled)):
            got = loaded.run({"x": x})[loaded.outputs[0].name]
            np.testing.assert_allclose(got, want, atol=1e-4)
            loops[f"lstm_infer onnx {label}"] = _run_loop(loaded, {"x": x})
    t = time_interleaved(loops, repeat, block)
    return _report(f"{name}_run", t, f"{name} run, T={steps}, batch {batch}, H={h}, I={i}")


def _report(bench: str, t: dict[str, list[float]], title: str) -> list[dict]:
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    print(f"\n{title}, us, median:")
    for k, v in med.items():
        print(
            f"  {k:<22}{v:11.1f}   ({v / med['onnxruntime']:.2f}x onnxruntime, "
            f"{med['lstm_infer'] / v:.2f} lstm_infer/this)"
        )
    return [
        {"bench": bench, "engine": k, "median_us": v, "samples_s": t[k]} for k, v in med.items()
    ]


def main(argv: list[str] | None = None) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # every BLAS in the process, ours (scipy's) included
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--memory-steps", type=int, default=100, help="decoders' memory length S")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--block-ms", type=float, default=25.0)
    p.add_argument("--cells", nargs="*", help="default: every cell the engine runs")
    p.add_argument("--output", type=Path)
    p.add_argument(
        "--onnx-load",
        action="store_true",
        help="also our load of the torch.onnx exports, before / after re-rolling",
    )
    args = p.parse_args(argv)
    from lstm_infer.cells import CELLS

    table = _cells()
    chosen = args.cells or [n for n, b in table.items() if b.op in CELLS]
    rows: list[dict] = []
    block = args.block_ms / 1e3
    for name in chosen:
        bench = table[name]
        if bench.op not in CELLS:
            print(f"{name}: not on the engine yet, skipped")
            continue
        if bench.op == "AttentionDecoder":
            h, s = args.hidden, args.memory_steps
            rows += decoder_step_rows(name, bench, h, s, args.repeat, block)
            rows += decoder_run_rows(name, bench, h, s, args.steps, args.batch, args.repeat, block)
            continue
        rows += step_rows(name, bench, args.input, args.hidden, args.repeat, block, args.onnx_load)
        rows += run_rows(
            name,
            bench,
            args.input,
            args.hidden,
            args.steps,
            args.batch,
            args.repeat,
            block,
            args.onnx_load,
        )
    write_results("cells", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
