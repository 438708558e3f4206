"""Streaming with bf16 / int8 weights against our fp32 and the quantized LSTMs of onnxruntime
and PyTorch, batch 1, one timestep per call, one thread each.

    python bench/quantized.py [--sizes 256 1024] [--steps 2000] [--isas avx2 avx512 ...]

onnxruntime's int8 is ``onnxruntime.quantization.quantize_dynamic`` (it emits
DynamicQuantizeLSTM); PyTorch's is ``torch.ao.quantization.quantize_dynamic`` on nn.LSTM.
Engines are interleaved; medians in microseconds; results to bench/results/quantized-*.json.
``--isas`` adds our bf16 / int8 steps on the named kernel tables (e.g. the sign-trick int8 of
avx2 / avx512 against the VNNI tables, widened bf16 against avx512bf16's VDPBF16PS).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def lstm_onnx(path: Path, W: np.ndarray, R: np.ndarray, B: np.ndarray) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    H = R.shape[-1]
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["", "h", "c"], hidden_size=H
    )
    graph = helper.make_graph(
        [node],
        "lstm",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, W.shape[-1]]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, H]),
            helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 1, H]),
        ],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, H]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, H]),
        ],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))


def bench_size(H: int, rng: np.random.Generator, steps: int, tmp: Path, isas: list[str]) -> dict:
    """Median per-step times of every engine at hidden = input = H, and the ratios."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from threadpoolctl import threadpool_limits

    import lstm_infer

    s = 1 / np.sqrt(H)
    W = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    R = rng.uniform(-s, s, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-s, s, (1, 8 * H)).astype(np.float32)
    f32_path, i8_path = tmp / f"lstm{H}.onnx", tmp / f"lstm{H}_int8.onnx"
    lstm_onnx(f32_path, W, R, B)
    quantize_dynamic(str(f32_path), str(i8_path), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for name, p in (("ort fp32", f32_path), ("ort int8", i8_path))
    }
    ops = {n.op_type for n in onnx.load(str(i8_path)).graph.node}
    model = lstm_infer.Model.from_onnx_weights("lstm", W, R, B)
    streams = {
        "ours fp32": model.stream(1),
        "ours bf16": model.quantize("bf16").stream(1),
        "ours int8": model.quantize("int8").stream(1),
    }
    t_lstm = torch.nn.LSTM(H, H).eval()
    t_int8 = torch.ao.quantization.quantize_dynamic(
        torch.nn.LSTM(H, H).eval(), {torch.nn.LSTM}, dtype=torch.qint8
    )
    x = rng.standard_normal((1, H)).astype(np.float32)
    xt = torch.from_numpy(x[None])
    out = np.empty((1, H), np.float32)
    state = {"h0": np.zeros((1, 1, H), np.float32), "c0": np.zeros((1, 1, H), np.float32)}
    t_state: dict[str, object] = {"fp32": None, "int8": None}

    def ort_step(name: str) -> Callable[[], None]:
        sess = sessions[name]

        def run() -> None:
            h, c = sess.run(None, {"X": x[None], **state})
            state["h0"], state["c0"] = h, c

        return run

    def torch_step(module: torch.nn.Module, key: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                _, t_state[key] = module(xt, t_state[key])

        return run

    engines: dict[str, Callable[[], None]] = {
        **{k: (lambda s=s: s.step(x, out=out)) for k, s in streams.items()},
        "ort fp32": ort_step("ort fp32"),
        "ort int8": ort_step("ort int8"),
        "torch fp32": torch_step(t_lstm, "fp32"),
        "torch int8": torch_step(t_int8, "int8"),
    }
    default_isa = lstm_infer.isa()
    table = {k: default_isa for k in engines}  # kernel table active while timing each engine
    for isa in isas:
        for fmt in ("bf16", "int8"):
            name = f"ours {fmt} [{isa}]"
            engines[name] = lambda s=streams[f"ours {fmt}"]: s.step(x, out=out)
            table[name] = isa
    times: dict[str, list[float]] = {k: [] for k in engines}
    with threadpool_limits(1):
        for name, fn in engines.items():
            lstm_infer.set_isa(table[name])
            for _ in range(50):
                fn()
        chunk = 50
        for _ in range(max(1, steps // chunk)):
            for name, fn in engines.items():  # interleaved in chunks
                lstm_infer.set_isa(table[name])
                t0 = time.perf_counter()
                for _ in range(chunk):
                    fn()
                times[name].append((time.perf_counter() - t0) / chunk * 1e6)
        lstm_infer.set_isa(default_isa)
    med = {k: float(np.median(v)) for k, v in times.items()}
    row = {"H": H, "median_us": med, "ort_int8_ops": sorted(ops)}
    row["ratios"] = {
        "bf16/fp32 (ours)": med["ours bf16"] / med["ours fp32"],
        "int8/fp32 (ours)": med["ours int8"] / med["ours fp32"],
        "ours int8 / ort int8": med["ours int8"] / med["ort int8"],
        "ours int8 / torch int8": med["ours int8"] / med["torch int8"],
    }
    print(f"\nH = {H} (onnxruntime int8 graph ops: {', '.join(sorted(ops))}; ours: {default_isa})")
    for k, v in med.items():
        print(f"  {k:<24} {v:9.1f} us")
    for k, v in row["ratios"].items():
        print(f"  {k:<24} {v:5.2f}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--isas", nargs="*", default=[], help="extra kernel tables for our steps")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import lstm_infer

    unknown = set(args.isas) - set(lstm_infer.available_isas())
    if unknown:
        ap.error(f"not usable here: {sorted(unknown)}; available: {lstm_infer.available_isas()}")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for H in args.sizes:
        rows.append(bench_size(H, rng, args.steps, tmp, args.isas))
    result = {
        "isa": lstm_infer.isa(),
        "cpu": next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln),
            "",
        ),
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "rows": rows,
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"quantized-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nsaved {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}")


if __name__ == "__main__":
    main()
