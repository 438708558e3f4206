"""Whole models around a recurrent core (GraphModel), against onnxruntime in one run.

The zoo of issue 13, exported by torch.onnx (legacy exporter): a CRNN (2-D conv front end ->
BiLSTM -> CTC head), a VAD shape (STFT as Conv1d -> LSTM -> Conv1d(k=1) head -> 1-D output),
LSTM -> LayerNorm -> residual Add -> Linear, a last-timestep classifier, one packed (2, B, H)
state tensor split and joined again, and tf2onnx's Keras-style bidirectional concat (written
with onnx.helper). Whole-sequence ``run``, one thread per engine, outputs checked against
PyTorch (the Keras graph: against onnxruntime) to 1e-4 first; engines
interleaved round-robin (bench/compare.py's ``time_interleaved``), medians, ours / ORT.

    python bench/graph_zoo.py [--repeat 15] [--threads 1] [--models crnn vad ...] [--per-node]

``--per-node`` also times every node of both engines (ours: each step of the program the
call runs, one thread; onnxruntime: its profiler's kernel times), medians over the repeats,
into the rows' ``per_node`` (where a ratio comes from: an op of ours against onnxruntime's).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402


def _models() -> dict[str, Callable[[], tuple[Any, tuple, list[str]]]]:
    import torch
    from torch import nn

    class Crnn(nn.Module):
        """(N, 1, 32, W) images -> conv/pool x2 -> (W/4, N, 64*8) -> BiLSTM-128 -> 80 classes."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            )  # fmt: skip
            self.rnn = nn.LSTM(64 * 8, 128, bidirectional=True)
            self.fc = nn.Linear(256, 80)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)  # (N, 64, 8, W/4)
            n, c, h, w = f.shape
            seq = f.permute(3, 0, 1, 2).reshape(w, n, c * h)
            return torch.log_softmax(self.fc(self.rnn(seq)[0]), -1)

    class Vad(nn.Module):
        """(N, samples) audio -> STFT as a strided Conv1d -> magnitude -> LSTM -> Conv1d(k=1)."""

        def __init__(self) -> None:
            super().__init__()
            self.stft = nn.Conv1d(1, 2 * 129, 256, stride=128, bias=False)
            self.enc = nn.Conv1d(129, 64, 3, padding=1)
            self.rnn = nn.LSTM(64, 64, batch_first=True)
            self.head = nn.Conv1d(64, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stft(x[:, None])  # (N, 258, frames)
            mag = torch.sqrt(s[:, :129] ** 2 + s[:, 129:] ** 2)
            e = torch.relu(self.enc(mag))  # (N, 64, frames)
            y = self.rnn(e.transpose(1, 2))[0]  # (N, frames, 64)
            return torch.sigmoid(self.head(y.transpose(1, 2))).squeeze(1).mean(-1)  # (N,)

    class NormResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(128, 256)
            self.norm = nn.LayerNorm(256)
            self.fc = nn.Linear(256, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.rnn(x)[0]
            return self.fc(self.norm(y) + y)

    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(64, 256, batch_first=True, num_layers=2)
            self.fc = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(self.rnn(x)[0][:, -1]), -1)

    class PackedState(nn.Module):
        """One (2, B, H) state tensor split into h and c, returned packed again (VAD style)."""

        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(64, 128)
            self.out = nn.Linear(128, 1)

        def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
            y, (h, c) = self.rnn(x, (state[:1], state[1:]))
            return torch.sigmoid(self.out(y)).squeeze(-1), torch.cat([h, c], 0)

    return {
        "packed_state": lambda: (
            PackedState(),
            (torch.randn(100, 8, 64), torch.randn(2, 8, 128) * 0.1),
            ["x", "state"],
        ),
        "keras_bidirectional": _keras_bidirectional,
        "crnn": lambda: (Crnn(), (torch.randn(4, 1, 32, 128),), ["image"]),
        "vad": lambda: (Vad(), (torch.randn(2, 16000),), ["audio"]),
        "norm_residual": lambda: (NormResidual(), (torch.randn(100, 8, 128),), ["x"]),
        "last_step": lambda: (LastStep(), (torch.randn(8, 100, 64),), ["x"]),
    }


def _keras_bidirectional() -> tuple[bytes, dict[str, np.ndarray], None]:
    """tf2onnx's Keras Bidirectional(LSTM(128)) over (N, T, 64), written with onnx.helper:
    a forward and a reverse LSTM node, each Squeezed, Concat on features, Dense, Softmax
    (no torch module to check against: the engines are checked against each other)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    T, B, I, H, C = 100, 8, 64, 128, 32
    inits = [
        numpy_helper.from_array(rng.standard_normal((2 * H, C)).astype(np.float32) * 0.1, "w"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    for d, direction in (("f", "forward"), ("r", "reverse")):
        s = 1 / np.sqrt(H)
        for key, shape in (
            (f"W{d}", (1, 4 * H, I)),
            (f"R{d}", (1, 4 * H, H)),
            (f"B{d}", (1, 8 * H)),
        ):
            inits.append(numpy_helper.from_array(rng.uniform(-s, s, shape).astype(np.float32), key))
        nodes += [
            helper.make_node(
                "LSTM",
                ["xt", f"W{d}", f"R{d}", f"B{d}"],
                [f"y{d}"],
                hidden_size=H,
                direction=direction,
            ),  # fmt: skip
            helper.make_node("Squeeze", [f"y{d}", "axis1"], [f"s{d}"]),
        ]
    nodes += [
        helper.make_node("Concat", ["sf", "sr"], ["cat"], axis=-1),
        helper.make_node("Transpose", ["cat"], ["bt"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["bt", "w"], ["l0"]),
        helper.make_node("Add", ["l0", "b"], ["l1"]),
        helper.make_node("Softmax", ["l1"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_bidirectional",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, C])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    return model.SerializeToString(), {"x": x}, None


def _export(make: Callable) -> tuple[bytes, dict[str, np.ndarray], list[np.ndarray] | None]:
    """(ONNX bytes, feeds, torch's outputs or None) of one zoo entry."""
    import torch

    torch.manual_seed(0)
    made = make()
    if isinstance(made[0], bytes):
        return made
    module, args, names = made
    module.eval()
    with torch.no_grad():
        ref = module(*args)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
    outs = ["y"] if len(ref) == 1 else [f"y{i}" for i in range(len(ref))]
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=names, output_names=outs, dynamo=False)
    return buf.getvalue(), {n: a.numpy() for n, a in zip(names, args)}, ref


def _per_node_ours(model: Any, feeds: dict[str, np.ndarray], repeat: int) -> list[dict]:
    """Median time of every step of the program a GraphModel's call runs (one thread)."""
    import time

    from lstm_infer.ops import RunContext

    program = model._runner.program_for(feeds)
    times: dict[int, list[float]] = {}
    for _ in range(repeat):
        env = dict(program.constants)
        env.update(feeds)
        ctx = RunContext(threads=1)
        for i, step in enumerate(program.steps):
            ins = [env[n] if n else None for n in step.node.inputs]
            t0 = time.perf_counter()
            outs = step.op.run(ctx, step.node, ins, step.state)
            times.setdefault(i, []).append(time.perf_counter() - t0)
            env.update({n: v for n, v in zip(step.node.outputs, outs) if n})
    return [
        {"op": s.node.op, "node": s.node.name, "ms": statistics.median(times[i]) * 1e3}
        for i, s in enumerate(program.steps)
    ]


def _per_node_ort(data: bytes, feeds: dict[str, np.ndarray], repeat: int) -> list[dict]:
    """Median kernel time of every node onnxruntime runs (its profiler, one thread)."""
    import json
    import os

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    for _ in range(repeat):
        sess.run(None, feeds)
    path = sess.end_profiling()
    try:
        events = json.loads(Path(path).read_text())
    finally:
        os.remove(path)
    times: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["args"]["op_name"], e["name"][: -len("_kernel_time")])
            times.setdefault(key, []).append(e["dur"] / 1e3)
    return [{"op": k[0], "node": k[1], "ms": statistics.median(v)} for k, v in times.items()]


def bench_model(
    name: str, make: Callable, repeat: int, target_s: float, threads: int, per_node: bool = False
) -> dict:
    import onnxruntime as ort

    data, feeds, ref = _export(make)
    ours = lstm_infer.load(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    got = list(ours.run(feeds, threads=threads).values())
    theirs = sess.run(None, feeds)
    ref = theirs if ref is None else ref  # no torch module: agreement with onnxruntime
    err = {
        "ours": max(float(np.abs(g - r).max()) for g, r in zip(got, ref)),
        "onnxruntime": max(float(np.abs(g - r).max()) for g, r in zip(theirs, ref)),
    }
    if not all(v <= 1e-4 for v in err.values()):
        raise SystemExit(f"{name}: engines disagree with the reference: {err}")

    def ours_loop(n: int) -> None:
        for _ in range(n):
            ours.run(feeds, threads=threads)

    def ort_loop(n: int) -> None:
        for _ in range(n):
            sess.run(None, feeds)

    samples = time_interleaved({"ours": ours_loop, "onnxruntime": ort_loop}, repeat, target_s)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    row = {
        "model": name,
        "kind": type(ours).__name__,
        "median_ms": med,
        "ours_over_onnxruntime": med["ours"] / med["onnxruntime"],
        "max_abs_error_vs_torch": err,
    }
    if per_node and isinstance(ours, lstm_infer.GraphModel):
        row["per_node"] = {
            "ours": _per_node_ours(ours, feeds, repeat),
            "onnxruntime": _per_node_ort(data, feeds, repeat),
        }
    return row


def _print_per_node(row: dict) -> None:
    for engine, nodes in row["per_node"].items():
        total = sum(n["ms"] for n in nodes)
        print(f"  {engine}: {total:.3f} ms over {len(nodes)} nodes")
        for n in nodes:
            if n["ms"] >= 0.01:
                print(f"    {n['ms']:8.3f} ms  {n['op']:20s} {n['node'][:48]}")


def main(argv: Sequence[str] | None = None) -> int:
    models = _models()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--block-ms", type=float, default=50.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--per-node", action="store_true", help="also time every node of both")
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        row = bench_model(
            name, models[name], args.repeat, args.block_ms / 1e3, args.threads, args.per_node
        )
        rows.append(row)
        m = row["median_ms"]
        print(
            f"{name:14s} {row['kind']:10s} ours {m['ours']:8.2f} ms  ort {m['onnxruntime']:8.2f} "
            f"ms  ours/ort {row['ours_over_onnxruntime']:.2f}",
            flush=True,
        )
        if "per_node" in row:
            _print_per_node(row)
    write_results("graph_zoo", rows, args.threads, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
