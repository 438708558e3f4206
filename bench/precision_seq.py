"""Reduced precision on whole sequences: our bf16 / int8 against our fp32, onnxruntime
(fp32 and ``quantize_dynamic`` int8) and OpenVINO (f32 hint and its default, bf16 on CPUs with
AVX512-BF16 / AMX), one thread each, T=100, batch 16.

    python bench/precision_seq.py [--sizes 256 1024] [--cells LSTM GRU] [--batch 16]
                                  [--repeat 7] [--isas avx512 avx512bf16 ...]

Engines are interleaved (bench/compare.py's ``time_interleaved``); medians in milliseconds per
sequence. Every engine's Y is compared with a float64 numpy run of the same weights (written
here from the ONNX equations) and with our fp32 Y: max abs errors, and the RMS error against
float64 (steadier than the max, which moves with the input drawn); ``--error-seeds`` adds both
errors on more inputs of the same draw, untimed. onnxruntime's int8 is
``quantize_dynamic`` (DynamicQuantizeLSTM for LSTM); where it leaves the cell in float (no
quantized GRU op) the column is n/a. ``--isas`` adds our bf16 / int8 on forced kernel tables.
Results go to bench/results/precision_seq-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import peers  # noqa: E402

lstm_infer = compare.lstm_infer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def reference_f64(w: compare.CellWeights, x: np.ndarray) -> np.ndarray:
    """Y (T, 1, B, H) of the ONNX LSTM (iofc) / GRU (zrh, linear_before_reset=1) in float64,
    from zero state."""
    W, R, B = (a[0].astype(np.float64) for a in (w.W, w.R, w.B))
    G, H = w.gates, w.hidden
    Wb, Rb = B[: G * H], B[G * H :]
    xp = x.astype(np.float64) @ W.T + Wb  # (T, B, G*H)
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for t in range(x.shape[0]):
        r = h @ R.T + Rb
        if w.cell == "LSTM":
            i, o, f, g = np.split(xp[t] + r, 4, axis=-1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:
            xz, xr, xh = np.split(xp[t], 3, axis=-1)
            hz, hr, hh = np.split(r, 3, axis=-1)
            z, rr = _sigmoid(xz + hz), _sigmoid(xr + hr)
            h = (1 - z) * np.tanh(xh + rr * hh) + z * h
        ys.append(h)
    return np.stack(ys)[:, None]


def _maxerr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _rmserr(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference: the max of 1.6M outputs moves with the input drawn (our
    int8 and onnxruntime's swap places on it between seeds), the RMS does not."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.sqrt(np.mean(d * d)))


def _with_isa(isa: str, default: str, loop: compare.Loop) -> compare.Loop:
    """``loop`` timed with kernel table ``isa`` active (restored to ``default`` after)."""

    def run(n: int) -> None:
        lstm_infer.set_isa(isa)
        try:
            loop(n)
        finally:
            lstm_infer.set_isa(default)

    return run


def _input(seed: int, T: int, batch: int, H: int) -> np.ndarray:
    """The benchmark's X: uniform in [-1, 1), drawn from ``seed`` (3 is the timed one)."""
    return np.random.default_rng(seed).uniform(-1, 1, (T, batch, H)).astype(np.float32)


def bench_one(
    cell: str,
    H: int,
    batch: int,
    T: int,
    repeat: int,
    target_s: float,
    isas: list[str],
    tmp: Path,
    error_seeds: Sequence[int] = (),
) -> dict[str, Any]:
    """Times and errors of every engine on one (cell, H); one result row."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = compare.random_weights(cell, H)
    seq_model = compare.build_onnx(w, stateful=False)
    f32_path, i8_path = tmp / f"{cell}{H}.onnx", tmp / f"{cell}{H}_int8.onnx"
    onnx.save(seq_model, str(f32_path))
    quantize_dynamic(str(f32_path), str(i8_path), weight_type=QuantType.QInt8)
    i8_ops = sorted({n.op_type for n in onnx.load(str(i8_path)).graph.node})
    ort_int8_ok = any(op.startswith("DynamicQuantize") for op in i8_ops)

    model = lstm_infer.load(seq_model)
    ours = {"ours fp32": model, "ours bf16": model.quantize("bf16")}
    ours["ours int8"] = model.quantize("int8")
    x = _input(3, T, batch, H)
    # engine -> Y for an input X
    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        k: (lambda a, m=m: m.run({"X": a})["Y"]) for k, m in ours.items()
    }
    sessions = {"ort fp32": compare.ort_session(seq_model, 1)}
    if ort_int8_ok:
        sessions["ort int8"] = compare.ort_session(onnx.load(str(i8_path)), 1)
    for k, s in sessions.items():
        engines[k] = lambda a, s=s: s.run(["Y"], {"X": a})[0]
    models = compare.peer_models(w, seq_model)
    ov = [p for p in peers.build_peers(models, 1) if p.key.startswith("ov_")]
    for p in ov:
        p.seq(x)  # compile for this shape
        engines[p.label] = lambda a, p=p: p.seq(a)["Y"]
    runs: dict[str, Callable[[], np.ndarray]] = {k: (lambda f=f: f(x)) for k, f in engines.items()}

    default_isa = lstm_infer.isa()
    loops: dict[str, compare.Loop] = {}
    for k, fn in runs.items():

        def loop(n: int, fn: Callable[[], np.ndarray] = fn) -> None:
            for _ in range(n):
                fn()

        loops[k] = loop
    for isa in isas:
        for fmt in ("bf16", "int8"):
            loops[f"ours {fmt} [{isa}]"] = _with_isa(isa, default_isa, loops[f"ours {fmt}"])

    ref = reference_f64(w, x)
    y32 = runs["ours fp32"]()
    errors: dict[str, dict[str, float]] = {}
    rms: dict[str, float] = {}
    for k in loops:
        if "[" in k:
            isa = k.split("[")[1].rstrip("]")
            lstm_infer.set_isa(isa)
            y = runs[k.split(" [")[0]]()
            lstm_infer.set_isa(default_isa)
        else:
            y = runs[k]()
        errors[k] = {"vs_f64": _maxerr(y, ref), "vs_ours_fp32": _maxerr(y, y32)}
        rms[k] = _rmserr(y, ref)
    if errors["ours fp32"]["vs_f64"] > compare.AGREEMENT_TOL:
        print(f"WARNING ours fp32 vs float64: {errors['ours fp32']}", file=sys.stderr)

    # The errors on other inputs of the same draw (no timing): the max moves with the input.
    by_seed: dict[str, dict[str, dict[str, float]]] = {}
    for seed in error_seeds:
        xs = _input(seed, T, batch, H)
        ref_s = reference_f64(w, xs)
        seed_errors = by_seed.setdefault(str(seed), {})
        for k, f in engines.items():
            y = f(xs)
            seed_errors[k] = {"max": _maxerr(y, ref_s), "rms": _rmserr(y, ref_s)}

    samples = compare.time_interleaved(loops, repeat, target_s)
    med = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}  # ms
    ov_default = next((p for p in ov if p.key == "ov_default"), None)
    ovd = ov_default.label if ov_default else None

    def ratio(a: str, b: str | None) -> float | None:
        return med[a] / med[b] if b in med else None

    row: dict[str, Any] = {
        "cell": cell,
        "hidden": H,
        "input": H,
        "batch": batch,
        "seq_len": T,
        "median_ms": med,
        "samples_ms": {k: [s * 1e3 for s in v] for k, v in samples.items()},
        "max_abs_err": errors,
        "rms_err_vs_f64": rms,
        "errors_other_inputs": by_seed,
        "ort_int8_ops": i8_ops,
        "ort_int8": "quantized" if ort_int8_ok else "n/a (quantize_dynamic leaves it float)",
        "ov_precision": {p.key: p.precision for p in ov},
        "ratios": {
            "ours bf16 / ours fp32": ratio("ours bf16", "ours fp32"),
            "ours bf16 / OV default": ratio("ours bf16", ovd),
            "ours int8 / ours fp32": ratio("ours int8", "ours fp32"),
            "ours int8 / ort int8": ratio("ours int8", "ort int8"),
            "ours fp32 / ort fp32": ratio("ours fp32", "ort fp32"),
        },
    }
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (cell, H, engine): median ms, ratio to ours fp32, the errors; then ratios."""
    lines = [
        "| cell | H | engine | median ms | / ours fp32 | max err vs f64 | rms err vs f64 "
        "| max err vs ours fp32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        med, err = r["median_ms"], r["max_abs_err"]
        names = list(med)
        if "ort int8" not in med:
            names.insert(names.index("ort fp32") + 1, "ort int8")
        for k in names:
            if k not in med:
                lines.append(f"| {r['cell']} | {r['hidden']} | {k} | n/a | | | | |")
                continue
            lines.append(
                f"| {r['cell']} | {r['hidden']} | {k} | {med[k]:.2f} "
                f"| {med[k] / med['ours fp32']:.2f} | {err[k]['vs_f64']:.2e} "
                f"| {r['rms_err_vs_f64'][k]:.2e} | {err[k]['vs_ours_fp32']:.2e} |"
            )
    lines += ["", "| cell | H | " + " | ".join(rows[0]["ratios"]) + " |"]
    lines.append("| --- | --- | " + " | ".join("---" for _ in rows[0]["ratios"]) + " |")
    for r in rows:
        vals = " | ".join("n/a" if v is None else f"{v:.2f}" for v in r["ratios"].values())
        lines.append(f"| {r['cell']} | {r['hidden']} | {vals} |")
    seeds = list(rows[0].get("errors_other_inputs", {}))
    if seeds:  # the quantized engines' errors on the other inputs: max / RMS against float64
        names = [k for k in ("ours bf16", "OV default (bf16)", "ours int8", "ort int8")
                 if any(k in r["median_ms"] for r in rows)]  # fmt: skip
        lines += ["", "| cell | H | input seed | " + " | ".join(f"{k} max / rms" for k in names)]
        lines[-1] += " |"
        lines.append("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
        for r in rows:
            for seed, errs in r["errors_other_inputs"].items():
                cells = " | ".join(
                    f"{errs[k]['max']:.2e} / {errs[k]['rms']:.2e}" if k in errs else "n/a"
                    for k in names
                )
                lines.append(f"| {r['cell']} | {r['hidden']} | {seed} | {cells} |")
    return "\n".join(lines)


def cpu_model_name() -> str:
    """``lscpu``'s Model name (falls back to /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return compare._cpu_model()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--cells", nargs="+", default=["LSTM", "GRU"], choices=["LSTM", "GRU"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=compare.SEQ_LEN)
    ap.add_argument("--repeat", type=int, default=7, help="samples per engine")
    ap.add_argument("--block-ms", type=float, default=200.0, help="target length of one sample")
    ap.add_argument("--isas", nargs="*", default=[], help="extra kernel tables for our bf16/int8")
    ap.add_argument(
        "--error-seeds",
        type=int,
        nargs="*",
        default=[4, 5],
        help="more inputs (seeds of the same draw) whose errors are reported, untimed",
    )
    args = ap.parse_args()

    import onnxruntime as ort
    import threadpoolctl
    import torch

    unknown = set(args.isas) - set(lstm_infer.available_isas())
    if unknown:
        ap.error(f"not usable here: {sorted(unknown)}; available: {lstm_infer.available_isas()}")
    torch.set_num_threads(1)
    cpu = cpu_model_name()
    print(f"# {cpu}, isa={lstm_infer.isa()}, T={args.seq_len}, batch={args.batch}", flush=True)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    started = time.strftime("%Y%m%d-%H%M%S")
    with threadpoolctl.threadpool_limits(1):
        for cell in args.cells:
            for H in args.sizes:
                row = bench_one(
                    cell, H, args.batch, args.seq_len, args.repeat, args.block_ms / 1e3,
                    args.isas, tmp, args.error_seeds,
                )  # fmt: skip
                rows.append(row)
                print(markdown([row]), flush=True)
    table = markdown(rows)
    print("\n" + table)
    result = {
        "cpu_model": cpu,
        "isa": lstm_infer.isa(),
        "available_isas": list(lstm_infer.available_isas()),
        "forced_isas": args.isas,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "repeat": args.repeat,
        "versions": {
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "lstm_infer": getattr(lstm_infer, "__version__", None),
            **peers.versions(),
        },
        "git": compare._git_revision(),
        "rows": rows,
        "markdown": table,
    }
    out = HERE / "results" / f"precision_seq-{started}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
