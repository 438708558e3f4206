"""Compare lstm_infer with onnxruntime and PyTorch on single-layer LSTM / GRU / RNN cells.

Two modes, each over cell x hidden size (input size = hidden size):

* ``stream``: batch 1, one timestep per call, the recurrent state carried between calls
  (``Stream.step`` / ``Stream.step(out=...)``, ``InferenceSession.run`` with the state fed back,
  the torch module called with its state tuple).
* ``seq``: a whole sequence of T timesteps in one call, for several batch sizes.

The three engines get the same random weights (ONNX gate order for the ONNX model and
lstm_infer, converted to PyTorch's order for torch) and must agree to 1e-4 before anything is
timed. Engines are interleaved round-robin within every repetition and medians are reported.
A roofline column says how close our time is to what the weights' read bandwidth (or the
measured sgemm peak, where the work is compute-bound) allows. Run ``python bench/compare.py
--help``; see bench/README.md for what each column means.

(About 1,000 lines: models, timing, roofline probes, environment capture and the table live
together so one file can be run on a fresh machine; the peer engines are in bench/peers.py.)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is built in place, not installed
    sys.path.insert(0, str(ROOT))

import lstm_infer  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # peers.py next to this file, also when imported
    sys.path.insert(0, str(BENCH_DIR))

import peers as _peers  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GATES: dict[str, int] = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Where each torch gate block comes from in the ONNX order: LSTM iofc -> ifgo, GRU zrh -> rzn.
TORCH_FROM_ONNX: dict[str, tuple[int, ...]] = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
AGREEMENT_TOL = 1e-4
# A peer running in reduced precision (OpenVINO's bf16 default): reported, not asserted; a note
# is printed above this.
REDUCED_PRECISION_TOL = 5e-2
SEQ_LEN = 100
OPSET = 21
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LSTM_INFER_ISA",
)

Loop = Callable[[int], None]
"""A timed body: ``loop(n)`` makes n calls of one engine."""


# ---- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellWeights:
    """One layer's weights in the ONNX operator's layout and gate order (iofc / zrh)."""

    cell: str
    input_size: int
    hidden: int
    W: np.ndarray  # (1, G*H, I)
    R: np.ndarray  # (1, G*H, H)
    B: np.ndarray  # (1, 2*G*H): Wb then Rb

    @property
    def gates(self) -> int:
        return GATES[self.cell]


def random_weights(
    cell: str, hidden: int, input_size: int | None = None, seed: int = 0
) -> CellWeights:
    """Weights U(+-1/sqrt(H)), PyTorch's default initialisation."""
    I = hidden if input_size is None else input_size
    G = GATES[cell]
    rng = np.random.default_rng(seed + 1000 * G + hidden)
    s = 1.0 / np.sqrt(hidden)

    def u(*shape: int) -> np.ndarray:
        return rng.uniform(-s, s, size=shape).astype(np.float32)

    return CellWeights(
        cell, I, hidden, u(1, G * hidden, I), u(1, G * hidden, hidden), u(1, 2 * G * hidden)
    )


def build_onnx(w: CellWeights, *, stateful: bool, sequence_output: bool | None = None) -> Any:
    """A one-node ONNX model with the weights as initializers.

    ``stateful``: inputs X, initial_h (, initial_c); outputs Y_h (, Y_c) only — what a streaming
    caller feeds back. Otherwise input X only and all outputs (Y, Y_h (, Y_c)).
    ``sequence_output`` (default: not ``stateful``) adds / drops the Y output independently,
    e.g. state inputs and all outputs for a runtime that needs the initial state fed in.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, I = w.hidden, w.input_size
    f32 = TensorProto.FLOAT
    lstm = w.cell == "LSTM"
    state_names = ["initial_h", "initial_c"] if lstm else ["initial_h"]
    inputs = [helper.make_tensor_value_info("X", f32, ["seq", "batch", I])]
    node_inputs = ["X", "W", "R", "B"]
    if stateful:
        node_inputs += ["", *state_names]  # "" = no sequence_lens
        inputs += [helper.make_tensor_value_info(n, f32, [1, "batch", H]) for n in state_names]
    if sequence_output is None:
        sequence_output = not stateful
    out_names = ["Y_h", "Y_c"] if lstm else ["Y_h"]
    node_outputs = ["", *out_names]
    if sequence_output:
        out_names = ["Y", *out_names]
        node_outputs = out_names
    outputs = [
        helper.make_tensor_value_info(
            n, f32, ["seq", 1, "batch", H] if n == "Y" else [1, "batch", H]
        )
        for n in out_names
    ]
    attrs: dict[str, Any] = {"hidden_size": H}
    if w.cell == "GRU":
        attrs["linear_before_reset"] = 1  # PyTorch's GRU
    node = helper.make_node(w.cell, node_inputs, node_outputs, name=w.cell.lower(), **attrs)
    inits = [numpy_helper.from_array(a, n) for n, a in (("W", w.W), ("R", w.R), ("B", w.B))]
    graph = helper.make_graph([node], f"{w.cell.lower()}_h{H}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="lstm_infer-bench",
    )
    onnx.checker.check_model(model)
    return model


def build_torch(w: CellWeights) -> Any:
    """The equivalent ``torch.nn.LSTM/GRU/RNN`` (time-major), weights copied in torch order."""
    import torch

    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[w.cell]
    module = cls(w.input_size, w.hidden)
    G, H = w.gates, w.hidden
    order = list(TORCH_FROM_ONNX[w.cell])

    def reorder(a: np.ndarray) -> torch.Tensor:
        blocks = a.reshape(G, H, *a.shape[1:])[order]
        return torch.from_numpy(np.ascontiguousarray(blocks.reshape(G * H, *a.shape[1:])))

    with torch.no_grad():
        module.weight_ih_l0.copy_(reorder(w.W[0]))
        module.weight_hh_l0.copy_(reorder(w.R[0]))
        module.bias_ih_l0.copy_(reorder(w.B[0, : G * H]))
        module.bias_hh_l0.copy_(reorder(w.B[0, G * H :]))
    module.eval()
    module.requires_grad_(False)
    return module


def ort_session(model: Any, threads: int) -> Any:
    """An onnxruntime CPU session limited to ``threads`` intra-op threads (inter-op 1);
    ``model`` a ModelProto or its serialized bytes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@dataclass
class Engines:
    """The three engines loaded with one set of weights."""

    weights: CellWeights
    ours: Any  # lstm_infer.Model
    ort_seq: Any  # InferenceSession: X -> Y, Y_h (, Y_c)
    ort_step: Any  # InferenceSession: X, initial_h (, initial_c) -> Y_h (, Y_c)
    torch_module: Any
    peers: list[_peers.Peer] = field(default_factory=list)  # the installed ones (peers.py)


def peer_models(w: CellWeights, seq_model: Any = None, step_model: Any = None) -> _peers.PeerModels:
    """The ONNX files the peers load: sequence, step (either passed in when already built),
    and sequence with state inputs."""
    return _peers.PeerModels(
        w.cell,
        w.input_size,
        w.hidden,
        seq_model if seq_model is not None else build_onnx(w, stateful=False),
        step_model if step_model is not None else build_onnx(w, stateful=True),
        build_onnx(w, stateful=True, sequence_output=True),
    )


def build_engines(w: CellWeights, threads: int) -> Engines:
    """Build the ONNX models, load them in lstm_infer, onnxruntime and the installed peers
    (OpenVINO, tract), and the torch module."""
    seq_model = build_onnx(w, stateful=False)
    step_model = build_onnx(w, stateful=True)
    return Engines(
        weights=w,
        ours=lstm_infer.load(seq_model),
        ort_seq=ort_session(seq_model, threads),
        ort_step=ort_session(step_model, threads),
        torch_module=build_torch(w),
        peers=_peers.build_peers(peer_models(w, seq_model, step_model), threads),
    )


# ---- per-engine timed loops ------------------------------------------------------------------


def _zero_state(w: CellWeights, batch: int) -> list[np.ndarray]:
    n = 2 if w.cell == "LSTM" else 1
    return [np.zeros((1, batch, w.hidden), np.float32) for _ in range(n)]


def stream_loops(e: Engines, xs: np.ndarray) -> dict[str, Loop]:
    """Timed bodies for streaming: each call is one timestep of ``xs`` (T, 1, I), cycled."""
    import torch

    w = e.weights
    lstm = w.cell == "LSTM"
    steps_2d = [np.ascontiguousarray(x) for x in xs]  # (1, I) each
    steps_3d = [np.ascontiguousarray(x[None]) for x in xs]  # (1, 1, I) each
    steps_torch = [torch.from_numpy(x) for x in steps_3d]

    stream = e.ours.stream(batch_size=1)
    buf = np.empty((1, w.hidden), np.float32)
    out_stream = e.ours.stream(batch_size=1)

    def ours(n: int) -> None:
        step = stream.step
        for x_t in itertools.islice(itertools.cycle(steps_2d), n):
            step(x_t)

    def ours_out(n: int) -> None:
        step = out_stream.step
        for x_t in itertools.islice(itertools.cycle(steps_2d), n):
            step(x_t, out=buf)

    ort_state = _zero_state(w, 1)
    run = e.ort_step.run

    def ort_lstm(n: int) -> None:
        h, c = ort_state
        for x_t in itertools.islice(itertools.cycle(steps_3d), n):
            h, c = run(["Y_h", "Y_c"], {"X": x_t, "initial_h": h, "initial_c": c})
        ort_state[:] = [h, c]

    def ort_other(n: int) -> None:
        (h,) = ort_state
        for x_t in itertools.islice(itertools.cycle(steps_3d), n):
            (h,) = run(["Y_h"], {"X": x_t, "initial_h": h})
        ort_state[:] = [h]

    module = e.torch_module
    zeros = [torch.from_numpy(s) for s in _zero_state(w, 1)]
    torch_state: list[Any] = [tuple(zeros) if lstm else zeros[0]]

    def torch_step(n: int) -> None:
        state = torch_state[0]
        with torch.inference_mode():
            for x_t in itertools.islice(itertools.cycle(steps_torch), n):
                _, state = module(x_t, state)
        torch_state[0] = state

    return {
        "ours": ours,
        "ours_out": ours_out,
        "ort": ort_lstm if lstm else ort_other,
        "torch": torch_step,
        **{p.key: p.stream_loop(steps_3d) for p in e.peers},
    }


def seq_loops(e: Engines, x: np.ndarray) -> dict[str, Loop]:
    """Timed bodies for whole sequences: each call runs all of ``x`` (T, B, I) from zero state."""
    import torch

    model, sess, module = e.ours, e.ort_seq, e.torch_module
    x_torch = torch.from_numpy(x)
    feeds = {"X": x}

    def ours(n: int) -> None:
        for _ in range(n):
            model.run(feeds)

    def ort(n: int) -> None:
        for _ in range(n):
            sess.run(None, feeds)

    def torch_seq(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                module(x_torch)

    return {
        "ours": ours,
        "ort": ort,
        "torch": torch_seq,
        **{p.key: p.seq_loop(x) for p in e.peers},
    }


# ---- agreement -------------------------------------------------------------------------------


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check_stream_agreement(e: Engines, xs: np.ndarray) -> dict[str, float]:
    """Step all engines through ``xs`` (T, 1, I) from zero state; max abs diff of the outputs."""
    import torch

    w = e.weights
    stream = e.ours.stream(batch_size=1)
    out_stream = e.ours.stream(batch_size=1)
    buf = np.empty((1, w.hidden), np.float32)
    state = _zero_state(w, 1)
    names = ["Y_h", "Y_c"] if w.cell == "LSTM" else ["Y_h"]
    zeros = [torch.from_numpy(s) for s in _zero_state(w, 1)]
    t_state: Any = tuple(zeros) if w.cell == "LSTM" else zeros[0]
    ys: dict[str, list[np.ndarray]] = {"ours": [], "ours_out": [], "ort": [], "torch": []}
    with torch.inference_mode():
        for x in xs:
            x3 = np.ascontiguousarray(x[None])
            ys["ours"].append(stream.step(x).copy())
            ys["ours_out"].append(out_stream.step(np.ascontiguousarray(x), out=buf).copy())
            feeds = {"X": x3, **dict(zip(["initial_h", "initial_c"], state))}
            state = e.ort_step.run(names, feeds)
            ys["ort"].append(state[0][0])
            y, t_state = e.torch_module(torch.from_numpy(x3), t_state)
            ys["torch"].append(y[0].numpy().copy())
    s = {k: np.stack(v) for k, v in ys.items()}
    return {
        "ours_vs_ort": _maxdiff(s["ours"], s["ort"]),
        "ours_vs_torch": _maxdiff(s["ours"], s["torch"]),
        "ort_vs_torch": _maxdiff(s["ort"], s["torch"]),
        "ours_out_vs_ours": _maxdiff(s["ours_out"], s["ours"]),
        **{f"ours_vs_{p.key}": _maxdiff(s["ours"], p.stream_steps(xs)) for p in e.peers},
    }


def check_seq_agreement(e: Engines, x: np.ndarray) -> dict[str, float]:
    """Run ``x`` (T, B, I) through all engines; max abs diff of Y and Y_h."""
    import torch

    ours = e.ours.run({"X": x})
    ort = dict(zip([o.name for o in e.ort_seq.get_outputs()], e.ort_seq.run(None, {"X": x})))
    with torch.inference_mode():
        y, state = e.torch_module(torch.from_numpy(x))
    h_torch = (state[0] if isinstance(state, tuple) else state).numpy()
    y_torch = y.numpy()[:, None]  # (T, 1, B, H) like ONNX's Y
    diffs = {
        "ours_vs_ort": max(_maxdiff(ours["Y"], ort["Y"]), _maxdiff(ours["Y_h"], ort["Y_h"])),
        "ours_vs_torch": max(_maxdiff(ours["Y"], y_torch), _maxdiff(ours["Y_h"], h_torch)),
        "ort_vs_torch": max(_maxdiff(ort["Y"], y_torch), _maxdiff(ort["Y_h"], h_torch)),
    }
    for p in e.peers:
        out = p.seq(x)
        diffs[f"ours_vs_{p.key}"] = max(_maxdiff(ours[k], out[k]) for k in ("Y", "Y_h"))
    return diffs


# ---- timing ----------------------------------------------------------------------------------


def calibrate(loop: Loop, target_s: float, max_calls: int = 1 << 20) -> int:
    """Number of calls for one timed block of about ``target_s`` seconds (after a warm-up)."""
    loop(2)
    n = 1
    while True:
        t0 = time.perf_counter()
        loop(n)
        dt = time.perf_counter() - t0
        if dt >= target_s / 4 or n >= max_calls:
            return max(1, min(max_calls, round(n * target_s / max(dt, 1e-9))))
        n *= 4


def time_interleaved(
    loops: dict[str, Loop], repeat: int, target_s: float
) -> dict[str, list[float]]:
    """Seconds per call of each engine, ``repeat`` samples each, engines round-robin.

    Each repetition times one block per engine, in an order rotated every repetition so that
    no engine always runs right after the same neighbour.
    """
    counts = {name: calibrate(loop, target_s) for name, loop in loops.items()}
    names = list(loops)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            n = counts[name]
            t0 = time.perf_counter()
            loops[name](n)
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def _median_us(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e6


# ---- roofline probes -------------------------------------------------------------------------


@dataclass
class Machine:
    """Measured limits of this core: read bandwidth by footprint, and sgemm peak."""

    repeat: int
    target_s: float
    sgemm_gflops: float = 0.0
    sgemm_detail: dict[str, float] = field(default_factory=dict)
    bandwidth: dict[int, dict[str, float]] = field(default_factory=dict)  # bytes -> GB/s
    probe_fixed_s: dict[str, float] = field(default_factory=dict)  # probe -> s per call

    def read_gbps(self, rows: int, cols: int) -> float:
        """Best measured read bandwidth (GB/s) over a float32 (rows, cols) footprint."""
        nbytes = 4 * rows * cols
        if not self.probe_fixed_s:
            self.probe_fixed_s = measure_probe_overhead(3 * self.repeat, self.target_s)
        if nbytes not in self.bandwidth:
            self.bandwidth[nbytes] = measure_read_bandwidth(
                rows, cols, self.repeat, self.target_s, self.probe_fixed_s
            )
        return self.bandwidth[nbytes]["best"]


def _best_seconds(fn: Callable[[], Any], repeat: int, target_s: float) -> float:
    """Fastest of ``repeat`` timed blocks, per call: a hardware probe's capability (noise on a
    shared machine only ever slows a block down)."""

    def loop(n: int) -> None:
        for _ in range(n):
            fn()

    return min(time_interleaved({"f": loop}, repeat, target_s)["f"])


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous float32 array whose data starts on an ``align``-byte line.

    numpy's large allocations are only 16-byte aligned; unaligned AVX-512 loads halve the read
    rate of the BLAS probes, while the engine's packed weights are line-aligned.
    """
    n = int(np.prod(shape))
    raw = np.empty(n + align // 4, np.float32)
    offset = (-raw.ctypes.data % align) // 4
    return raw[offset : offset + n].reshape(shape)


def _probes(a: np.ndarray) -> dict[str, Callable[[], Any]]:
    """Read-bandwidth probes over a C-contiguous 2-D float32 array."""
    from scipy.linalg import blas

    flat = a.reshape(-1)
    a_f = a.T  # Fortran-ordered view: no copy in the f2py wrapper
    v = np.ones(a.shape[1], np.float32)
    return {
        "numpy_sum": lambda: flat.sum(),
        "sdot": lambda: blas.sdot(flat, flat),
        "sgemv": lambda: blas.sgemv(1.0, a_f, v, trans=1),
    }


def measure_probe_overhead(repeat: int, target_s: float) -> dict[str, float]:
    """Seconds per call of each bandwidth probe on a 16 x 16 array: its fixed per-call cost."""
    tiny = aligned_empty((16, 16))
    tiny[...] = 1.0
    return {k: _best_seconds(f, repeat, target_s) for k, f in _probes(tiny).items()}


def measure_read_bandwidth(
    rows: int, cols: int, repeat: int, target_s: float, fixed: dict[str, float] | None = None
) -> dict[str, float]:
    """GB/s reading a float32 (rows, cols) array, repeatedly (so warm if it fits in a cache).

    Probes: ``np.sum`` over it, OpenBLAS ``sdot`` of it with itself (one pass over memory),
    OpenBLAS ``sgemv`` of it times a vector (what a recurrent step does), on a 64-byte aligned
    array. Each probe's ``fixed`` per-call cost (``measure_probe_overhead``) is subtracted,
    at most down to a quarter of the measured time, else small footprints would measure the
    Python call rather than the cache. ``best`` is the fastest corrected probe: the tightest
    lower bound on the time to read those bytes. ``raw_*`` are the uncorrected rates.
    """
    a = aligned_empty((rows, cols))
    a[...] = np.random.default_rng(1).standard_normal((rows, cols), dtype=np.float32)
    if fixed is None:
        fixed = measure_probe_overhead(repeat, target_s)
    res: dict[str, float] = {}
    for k, f in _probes(a).items():
        t = _best_seconds(f, repeat, target_s)
        res[f"raw_{k}"] = a.nbytes / t / 1e9
        res[k] = a.nbytes / max(t - fixed[k], 0.25 * t) / 1e9
        res[f"fixed_us_{k}"] = fixed[k] * 1e6
    res["best"] = max(res[k] for k in ("numpy_sum", "sdot", "sgemv"))
    res["bytes"] = float(a.nbytes)
    return res


def measure_sgemm_peak(repeat: int, target_s: float) -> dict[str, float]:
    """GFLOP/s of OpenBLAS sgemm on square matrices (thread count set by the caller)."""
    from scipy.linalg import blas

    res: dict[str, float] = {}
    rng = np.random.default_rng(2)
    for n in (512, 1024, 2048):
        a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
        b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
        seconds = _best_seconds(lambda a=a, b=b: blas.sgemm(1.0, a, b), repeat, target_s)
        res[f"n{n}"] = 2.0 * n**3 / seconds / 1e9
    res["best"] = max(res.values())
    return res


def roofline(w: CellWeights, mode: str, batch: int, m: Machine) -> tuple[float, str]:
    """Lower bound on one call's time (us) and whether it is memory- or compute-bound.

    stream: one step must read W, R and a bias, 4*G*H*(I+H+1) bytes, at the bandwidth measured
    for that footprint. seq: W is read once (the input projection is one GEMM), R every step,
    4*G*H*I + T*4*G*H*(H+1) bytes. FLOPs 2*G*H*(I+H) per row per step at the sgemm peak.
    The bound is the larger of the two.
    """
    G, H, I = w.gates, w.hidden, w.input_size
    if mode == "stream":
        mem_s = 4 * G * H * (I + H + 1) / (m.read_gbps(G * H, I + H + 1) * 1e9)
        flops = 2.0 * G * H * (I + H)
    else:
        mem_s = 4 * G * H * I / (m.read_gbps(G * H, I) * 1e9)
        mem_s += SEQ_LEN * 4 * G * H * (H + 1) / (m.read_gbps(G * H, H + 1) * 1e9)
        flops = 2.0 * G * H * (I + H) * SEQ_LEN * batch
    flop_s = flops / (m.sgemm_gflops * 1e9)
    return (max(mem_s, flop_s) * 1e6, "mem" if mem_s >= flop_s else "flop")


# ---- one configuration -----------------------------------------------------------------------


def bench_config(
    e: Engines, mode: str, batch: int, repeat: int, target_s: float, machine: Machine | None
) -> dict[str, Any]:
    """Check agreement, then time every engine on one (cell, H, mode, batch); one result row."""
    w = e.weights
    rng = np.random.default_rng(3)
    if mode == "stream":
        xs = rng.uniform(-1, 1, (SEQ_LEN, 1, w.input_size)).astype(np.float32)
        diffs = check_stream_agreement(e, xs[:16])
        loops = stream_loops(e, xs)
    else:
        xs = rng.uniform(-1, 1, (SEQ_LEN, batch, w.input_size)).astype(np.float32)
        diffs = check_seq_agreement(e, xs)
        loops = seq_loops(e, xs)
    reduced = {f"ours_vs_{p.key}": diffs.pop(f"ours_vs_{p.key}") for p in e.peers if not p.is_f32}
    agree = max(diffs.values()) < AGREEMENT_TOL
    if not agree:
        print(
            f"ENGINES DISAGREE {w.cell} H={w.hidden} {mode} batch={batch}: {diffs}",
            file=sys.stderr,
            flush=True,
        )
    for k, v in reduced.items():
        if not v < REDUCED_PRECISION_TOL:
            print(
                f"note: {k} {w.cell} H={w.hidden} {mode} batch={batch}: max abs diff {v:.3g} "
                f"> {REDUCED_PRECISION_TOL} (reduced precision; reported, not asserted)",
                file=sys.stderr,
                flush=True,
            )
    samples = time_interleaved(loops, repeat, target_s)
    med = {k: _median_us(v) for k, v in samples.items()}
    row: dict[str, Any] = {
        "cell": w.cell,
        "hidden": w.hidden,
        "input": w.input_size,
        "mode": mode,
        "batch": batch,
        "seq_len": 1 if mode == "stream" else SEQ_LEN,
        "us": med,
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
        "ours_over_ort": med["ours"] / med["ort"],
        "ours_over_torch": med["ours"] / med["torch"],
        "max_abs_diff": diffs,
        "agree": agree,
        "reduced_precision_max_abs_diff": reduced,
        "peers": {p.key: {"label": p.label, "precision": p.precision} for p in e.peers},
    }
    for p in e.peers:
        row[f"ours_over_{p.key}"] = med["ours"] / med[p.key]
    if machine is not None:
        bound_us, kind = roofline(w, mode, batch, machine)
        row.update(
            bound_us=bound_us, bound_kind=kind, ours_pct_of_bound=100 * bound_us / med["ours"]
        )
    return row


# ---- step overhead and allocations -----------------------------------------------------------


def _noop(x_t: np.ndarray, out: np.ndarray | None = None) -> None:
    return None


def _call_loop(fn: Callable[..., Any], x: np.ndarray, out: np.ndarray | None = None) -> Loop:
    """``loop(n)``: n calls of ``fn(x)``, or ``fn(x, out=out)`` when ``out`` is given."""
    if out is None:

        def loop(n: int) -> None:
            for _ in itertools.repeat(None, n):
                fn(x)
    else:

        def loop(n: int) -> None:
            for _ in itertools.repeat(None, n):
                fn(x, out=out)

    return loop


def measure_step_overhead(
    hidden: int, repeat: int, target_s: float, cells: Iterable[str] = ("LSTM", "GRU", "RNN")
) -> dict[str, Any]:
    """Median us of ``Stream.step`` at a tiny hidden size (= the per-call overhead).

    Also times the same Python loop calling a no-op, the floor any per-step API pays here.
    """
    res: dict[str, Any] = {"hidden": hidden}
    for cell in cells:
        w = random_weights(cell, hidden)
        stream = lstm_infer.load(build_onnx(w, stateful=False)).stream(batch_size=1)
        x = np.zeros((1, w.input_size), np.float32)
        buf = np.empty((1, hidden), np.float32)
        samples = time_interleaved(
            {
                "step": _call_loop(stream.step, x),
                "step_out": _call_loop(stream.step, x, buf),
                "noop_call": _call_loop(_noop, x, buf),
            },
            repeat,
            target_s,
        )
        res[cell] = {k: _median_us(v) for k, v in samples.items()}
    return res


def measure_step_allocations(
    cell: str = "LSTM", hidden: int = 64, steps: int = 5_000
) -> dict[str, Any]:
    """tracemalloc around each of ``steps`` calls of ``Stream.step(x, out=buf)`` (and others).

    For every call: the traced memory still held after it (net) and the peak above the start
    during it (transient: objects created and freed inside the call). Medians over the calls,
    minus the same for a Python no-op with the same arguments (the measurement's own cost).
    Variants: ``step_out``, ``step`` (returns a new array) and ``core_step`` (the compiled
    stepper alone, no Python wrapper). A report, not an assertion.
    """
    w = random_weights(cell, hidden)
    stream = lstm_infer.load(build_onnx(w, stateful=False)).stream(batch_size=1)
    x = np.random.default_rng(4).uniform(-1, 1, (1, w.input_size)).astype(np.float32)
    buf = np.empty((1, hidden), np.float32)
    core = getattr(stream, "_core", None)
    variants: dict[str, Callable[[], Any]] = {
        "noop": lambda: _noop(x, out=buf),
        "step_out": lambda: stream.step(x, out=buf),
        "step": lambda: stream.step(x),
    }
    if core is not None and hasattr(core, "step"):
        variants["core_step"] = lambda: core.step(x, buf)
    raw: dict[str, dict[str, float]] = {}
    for name, call in variants.items():
        for _ in range(100):
            call()
        gc.collect()
        gc.disable()
        tracemalloc.start()
        get, reset = tracemalloc.get_traced_memory, tracemalloc.reset_peak
        peaks, nets = [], []
        try:
            for _ in itertools.repeat(None, steps):
                reset()
                start = get()[0]
                call()
                end, peak = get()
                peaks.append(peak - start)
                nets.append(end - start)
        finally:
            tracemalloc.stop()
            gc.enable()
        raw[name] = {
            "transient_bytes_median": statistics.median(peaks),
            "transient_bytes_max": float(max(peaks)),
            "net_bytes_mean": statistics.fmean(nets),
        }
    base = raw.pop("noop")
    res: dict[str, Any] = {"cell": cell, "hidden": hidden, "steps": steps, "baseline_noop": base}
    for name, r in raw.items():
        res[name] = {
            **r,
            "transient_bytes_per_step": r["transient_bytes_median"]
            - base["transient_bytes_median"],
            "net_bytes_per_step": r["net_bytes_mean"] - base["net_bytes_mean"],
        }
    return res


# ---- environment -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, ISA, library versions, threads, BLAS env variables."""
    import onnxruntime
    import scipy
    import threadpoolctl
    import torch

    return {
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "isa": lstm_infer.isa(),
        "available_isas": list(lstm_infer.available_isas()),
        "threads": threads,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "lstm_infer": getattr(lstm_infer, "__version__", None),
            **_peers.versions(),
            "threadpoolctl": threadpoolctl.__version__,
        },
        "git": _git_revision(),
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "blas": threadpoolctl.threadpool_info(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": list(os.getloadavg()),
    }


# ---- output ----------------------------------------------------------------------------------


def write_results(
    prefix: str, rows: list[dict[str, Any]], threads: int, output: Path | None
) -> Path:
    """Write a bench's rows with this machine's environment to ``output`` or
    ``bench/results/<prefix>-<timestamp>.json``; returns the path."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = output or RESULTS_DIR / f"{prefix}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(threads), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


PEER_KEYS = ("ov_f32", "ov_default", "tract")


def _ov_default_precision(rows: Sequence[dict[str, Any]]) -> str:
    """The precision OpenVINO's default compiled to, as the rows report it ("?" if absent)."""
    found = {r.get("peers", {}).get("ov_default", {}).get("precision") for r in rows} - {None}
    return "/".join(sorted(found)) or "?"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (medians in microseconds). Peer columns (OpenVINO f32 and
    default, tract) show "—" where the peer is not installed; "OV <precision> err" is the max
    abs diff of OpenVINO's default from ours when it runs in reduced precision."""
    ovd = f"OV {_ov_default_precision(rows)}"
    head = (
        "| cell | H | mode | batch | ours us | ours out= us | ORT us | torch us "
        f"| OV f32 us | {ovd} us | tract us "
        f"| ours/ORT | ours/torch | ours/OV f32 | ours/{ovd} | ours/tract "
        f"| bound us | bound | % of bound | agree | {ovd} err |"
    )
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for r in rows:
        us = r["us"]
        peer_us = " | ".join(_fmt(us.get(k)) for k in PEER_KEYS)
        peer_ratio = " | ".join(_fmt(r.get(f"ours_over_{k}"), 2) for k in PEER_KEYS)
        err = r.get("reduced_precision_max_abs_diff", {}).get("ours_vs_ov_default")
        lines.append(
            f"| {r['cell']} | {r['hidden']} | {r['mode']} | {r['batch']} | {_fmt(us['ours'])} "
            f"| {_fmt(us.get('ours_out'))} | {_fmt(us['ort'])} | {_fmt(us['torch'])} "
            f"| {peer_us} | {r['ours_over_ort']:.2f} | {r['ours_over_torch']:.2f} "
            f"| {peer_ratio} | {_fmt(r.get('bound_us'))} | {r.get('bound_kind', '—')} "
            f"| {_fmt(r.get('ours_pct_of_bound'), 0)}% | {'yes' if r['agree'] else 'NO'} "
            f"| {'—' if err is None else f'{err:.2g}'} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--cells", nargs="+", default=list(GATES), choices=list(GATES))
    p.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[64, 256, 1024],
        help="hidden sizes (input size = hidden size)",
    )
    p.add_argument("--modes", nargs="+", default=["stream", "seq"], choices=["stream", "seq"])
    p.add_argument(
        "--batches", nargs="+", type=int, default=[1, 16, 64], help="batch sizes of seq mode"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="samples per engine (default 15, or 3 with --quick)",
    )
    p.add_argument(
        "--block-ms",
        type=float,
        default=None,
        help="target duration of one timed block (default 25, or 5 with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="threads for every engine")
    p.add_argument("--quick", action="store_true", help="few short samples: a smoke run")
    p.add_argument("--no-roofline", action="store_true", help="skip the bandwidth/sgemm probes")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default bench/results/<timestamp>.json)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print a markdown table; save JSON. Exit 1 if engines disagree."""
    args = parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 15)
    target_s = (args.block_ms or (5.0 if args.quick else 25.0)) / 1e3
    import threadpoolctl
    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    started = _dt.datetime.now()
    with threadpoolctl.threadpool_limits(limits=args.threads):
        env = environment(args.threads)
        print(
            f"# {env['cpu_model']}, isa={env['isa']}, threads={args.threads}, "
            f"OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}, "
            f"OPENBLAS_L2_SIZE={env['env']['OPENBLAS_L2_SIZE']}",
            flush=True,
        )
        machine = None
        if not args.no_roofline:
            machine = Machine(repeat=max(5, repeat // 2), target_s=target_s)
            sg = measure_sgemm_peak(machine.repeat, target_s)
            machine.sgemm_gflops, machine.sgemm_detail = sg["best"], sg
            print(f"# sgemm peak {sg['best']:.1f} GFLOP/s", flush=True)
        rows: list[dict[str, Any]] = []
        for cell in args.cells:
            for hidden in args.sizes:
                e = build_engines(random_weights(cell, hidden), args.threads)
                configs = [("stream", 1)] if "stream" in args.modes else []
                configs += [("seq", b) for b in args.batches] if "seq" in args.modes else []
                for mode, batch in configs:
                    row = bench_config(e, mode, batch, repeat, target_s, machine)
                    rows.append(row)
                    print(markdown_table([row]).splitlines()[-1], flush=True)
        overhead = measure_step_overhead(8, 2 * repeat + 1, target_s)
        allocs = measure_step_allocations()
    table = markdown_table(rows)
    print("\n" + table)
    print(
        "\nStream.step overhead at H=8 (median us): "
        + ", ".join(
            f"{c} step {v['step']:.2f} / out= {v['step_out']:.2f}"
            for c, v in overhead.items()
            if isinstance(v, dict)
        )
        + f"; no-op call in the same loop {overhead['LSTM']['noop_call']:.2f}"
    )
    print(
        f"tracemalloc, {allocs['cell']} H={allocs['hidden']}, median over {allocs['steps']} "
        "steps, above a no-op call: "
        + "; ".join(
            f"{k} transient {allocs[k]['transient_bytes_per_step']:.0f} B, "
            f"net {allocs[k]['net_bytes_per_step']:.2f} B"
            for k in ("step_out", "step", "core_step")
            if k in allocs
        )
    )
    bad = [r for r in rows if not r["agree"]]
    for r in bad:
        print(
            f"DISAGREE: {r['cell']} H={r['hidden']} {r['mode']} b={r['batch']}: {r['max_abs_diff']}"
        )
    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_at_end": list(os.getloadavg()),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "repeat": repeat,
        "block_ms": target_s * 1e3,
        "quick": args.quick,
        "seq_len": SEQ_LEN,
        "agreement_tol": AGREEMENT_TOL,
        "environment": env,
        "machine": None
        if machine is None
        else {
            "sgemm_gflops": machine.sgemm_detail,
            "probe_fixed_us": {k: v * 1e6 for k, v in machine.probe_fixed_s.items()},
            "read_bandwidth_gbps": {str(k): v for k, v in sorted(machine.bandwidth.items())},
        },
        "rows": rows,
        "step_overhead_h8": overhead,
        "step_allocations": allocs,
        "markdown": table,
    }
    out = args.output or RESULTS_DIR / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsaved {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
