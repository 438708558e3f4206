"""Check a model against onnxruntime: same random inputs, both engines, per-output errors.

    report = lstm_infer.validate("model.onnx")
    print(report)            # a table: output, shape, max abs / rel error, pass/fail
    assert report.passed

``main_validate(argv)`` is the ``lstm-infer validate MODEL.onnx`` command: it prints the report
and returns the exit status (0 passed, 1 failed, 2 the model could not be checked).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_infer.errors import LstmInferError, MissingDependencyError
from lstm_infer.importers.onnx.proto import load_onnx_proto

__all__ = ["OutputReport", "ValidationReport", "main_validate", "validate"]


@dataclass
class OutputReport:
    """The comparison of one output over every trial.

    ``max_abs`` is max |lstm_infer - onnxruntime|; ``max_rel`` is max of
    |lstm_infer - onnxruntime| / (|onnxruntime| + atol). ``note`` explains a failure that is
    not a tolerance (a shape or NaN mismatch).
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class ValidationReport:
    """What :func:`validate` found; ``str(report)`` is a table, ``report.passed`` the verdict."""

    source: str
    batch: int
    seq_len: int
    trials: int
    seed: int
    atol: float
    isa: str
    outputs: list[OutputReport] = field(default_factory=list)
    error: str | None = None  # onnxruntime could not run the model

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(o.passed for o in self.outputs)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (e.g. for JSON)."""
        return {
            "source": self.source,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "trials": self.trials,
            "seed": self.seed,
            "atol": self.atol,
            "isa": self.isa,
            "passed": self.passed,
            "error": self.error,
            "outputs": [
                {
                    "name": o.name,
                    "shape": list(o.shape),
                    "max_abs": o.max_abs,
                    "max_rel": o.max_rel,
                    "passed": o.passed,
                    "note": o.note,
                }
                for o in self.outputs
            ],
        }

    def __str__(self) -> str:
        lines = [
            f"lstm_infer vs onnxruntime: {self.source}",
            f"  batch={self.batch} seq_len={self.seq_len} trials={self.trials} "
            f"seed={self.seed} atol={self.atol:g} isa={self.isa}",
        ]
        if self.error is not None:
            lines.append(f"  error: {self.error}")
        rows = [("output", "shape", "max abs err", "max rel err", "result")]
        for o in self.outputs:
            result = "pass" if o.passed else "FAIL" + (f" ({o.note})" if o.note else "")
            rows.append(
                (o.name, str(tuple(o.shape)), f"{o.max_abs:.3e}", f"{o.max_rel:.3e}", result)
            )
        if len(rows) > 1:
            widths = [max(len(r[k]) for r in rows) for k in range(4)]
            for r in rows:
                cells = [c.ljust(w) for c, w in zip(r[:4], widths)]
                lines.append("  " + "  ".join([*cells, r[4]]))
        lines.append(
            "PASSED" if self.passed else f"FAILED (max abs error must be <= {self.atol:g})"
        )
        return "\n".join(lines)


def _input_dims(
    declared: Sequence[int | str], derived: Sequence[int | str], batch: int, seq_len: int
) -> tuple[int, ...]:
    """Concrete dims: the graph's static ones, else batch/seq_len where the model has them."""
    dims = []
    for k, dim in enumerate(declared):
        if isinstance(dim, int):
            dims.append(dim)
            continue
        role = derived[k] if k < len(derived) else None
        if role == "batch":
            dims.append(batch)
        elif role == "seq_len":
            dims.append(seq_len)
        elif isinstance(role, int):
            dims.append(role)
        else:
            raise LstmInferError(f"cannot choose a size for dim {k} ({dim!r}) of an input")
    return tuple(dims)


def _random_feeds(
    model: Any, batch: int, seq_len: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random inputs that fit the model's declared inputs."""
    spec = model.spec
    sig = spec.signature
    derived = {i.name: i for i in model._input_infos(declared=False)}
    roles = {name: role for role, name in sig.inputs.items()}
    infos = model.inputs
    dims_of = {i.name: _input_dims(i.shape, derived[i.name].shape, batch, seq_len) for i in infos}
    x_dims = dims_of[sig.inputs["x"]]
    T = x_dims[0 if sig.layout == 0 else 1]
    feeds: dict[str, np.ndarray] = {}
    for info in infos:
        dims, role = dims_of[info.name], roles[info.name]
        dtype = np.dtype(info.dtype)
        if role == "x" and spec.embedding is not None:
            value = rng.integers(0, spec.embedding.shape[0], size=dims)
        elif role == "sequence_lens":
            value = rng.integers(1, T + 1, size=dims)
        elif dtype.kind in "iu":
            value = rng.integers(0, 2, size=dims)
        elif role in sig.weight_inputs:
            layer = spec.layers[0]
            value = rng.uniform(-1, 1, size=dims) / np.sqrt(layer.hidden_size)
        else:
            value = rng.standard_normal(size=dims)
        feeds[info.name] = np.asarray(value).astype(dtype)
    return feeds


_BATCH_NAMES = ("batch", "n", "b", "bs", "batch_size", "num_batches")


def _graph_random_feeds(
    model: Any, batch: int, seq_len: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random inputs for a GraphModel: declared dtypes and static dims; a symbolic dim named
    like a batch gets ``batch``, any other ``seq_len``; unknown ranks are refused."""
    feeds: dict[str, np.ndarray] = {}
    for info in model.inputs:
        t = model._inputs[info.name]
        if t.shape is None:
            raise LstmInferError(
                f"input {info.name!r} declares no shape: pass it with feeds={{...}}"
            )
        dims = tuple(
            d if isinstance(d, int) else batch if str(d).lower() in _BATCH_NAMES else seq_len
            for d in t.shape
        )
        dtype = np.dtype(info.dtype)
        if dtype.kind == "b":
            value = rng.random(dims) > 0.5
        elif dtype.kind in "iu":
            value = rng.integers(0, 2, size=dims)
        else:
            value = rng.standard_normal(size=dims)
        feeds[info.name] = np.asarray(value).astype(dtype)
    return feeds


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, atol: float) -> OutputReport:
    ref = np.asarray(ref)
    shape = tuple(int(n) for n in ref.shape)
    if ours.shape != ref.shape:
        return OutputReport(
            name, shape, float("inf"), float("inf"), False, f"shape {tuple(ours.shape)}"
        )
    ours64, ref64 = ours.astype(np.float64), ref.astype(np.float64)
    nan_ours, nan_ref = np.isnan(ours64), np.isnan(ref64)
    if not np.array_equal(nan_ours, nan_ref):
        return OutputReport(name, shape, float("inf"), float("inf"), False, "NaN mismatch")
    diff = np.abs(np.where(nan_ref, 0.0, ours64 - ref64))
    if diff.size == 0:
        return OutputReport(name, shape, 0.0, 0.0, True)
    max_abs = float(diff.max())
    max_rel = float((diff / (np.abs(np.where(nan_ref, 0.0, ref64)) + atol)).max())
    return OutputReport(name, shape, max_abs, max_rel, max_abs <= atol)


def _merge(a: OutputReport | None, b: OutputReport) -> OutputReport:
    if a is None:
        return b
    return OutputReport(
        a.name,
        a.shape,
        max(a.max_abs, b.max_abs),
        max(a.max_rel, b.max_rel),
        a.passed and b.passed,
        a.note or b.note,
    )


def _ort_session(model: bytes | str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            "validate needs onnxruntime as the reference: pip install onnxruntime"
        ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def validate(
    path_or_model: Any,
    *,
    batch: int = 2,
    seq_len: int = 16,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-4,
    feeds: Mapping[str, Any] | None = None,
) -> ValidationReport:
    """Run an ONNX model in lstm_infer and in onnxruntime on random inputs and compare.

    Parameters
    ----------
    path_or_model : path, bytes or onnx.ModelProto
        The ONNX model (external data is read from the model's folder).
    batch, seq_len : int
        Sizes of the symbolic batch and sequence dims; static dims keep the graph's sizes.
    trials : int
        Number of independent random draws; errors are the maximum over all of them.
    seed : int
        Seed of the random inputs: float inputs ~ N(0, 1), token ids uniform over the
        embedding's rows, ``sequence_lens`` in [1, seq_len], fed weights ~ U(+-1/sqrt(H)).
    atol : float
        An output passes when its max absolute error is at most ``atol``.
    feeds : mapping of input name -> array, optional
        Inputs only the user can choose (``{"sr": np.array(16000)}``): used as given in every
        trial instead of random values.

    Returns
    -------
    ValidationReport
        ``str(report)`` is a table of max abs/rel error per output; ``report.passed``.

    Raises
    ------
    lstm_infer.errors.ModelFormatError
        If lstm_infer cannot load the model (the message names the node and why).
    lstm_infer.errors.MissingDependencyError
        If onnx or onnxruntime is not installed.
    """
    from lstm_infer import _engine
    from lstm_infer.graph_model import GraphModel
    from lstm_infer.importers.onnx.load import load_onnx
    from lstm_infer.model import Model

    if isinstance(path_or_model, (Model, GraphModel)):
        raise TypeError(
            "validate needs the ONNX model itself (path, bytes or onnx.ModelProto), not a "
            "loaded lstm_infer.Model: onnxruntime runs the original graph"
        )
    for name, value in (("batch", batch), ("seq_len", seq_len), ("trials", trials)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(path_or_model, (str, os.PathLike)):
        source = os.fspath(path_or_model)
    else:
        source = f"<{type(path_or_model).__name__}>"
    proto = load_onnx_proto(path_or_model)
    model = load_onnx(proto)
    fixed = {k: np.asarray(v) for k, v in (feeds or {}).items()}
    unknown = sorted(set(fixed) - {i.name for i in model.inputs})
    if unknown:
        raise ValueError(f"feeds names unknown input(s) {unknown}")
    report = ValidationReport(
        source, int(batch), int(seq_len), int(trials), int(seed), float(atol), _engine.isa()
    )
    try:
        # From its path, onnxruntime resolves side files itself.
        session = _ort_session(
            source if isinstance(path_or_model, (str, os.PathLike)) else (proto.SerializeToString())
        )
    except MissingDependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors, reported
        report.error = f"onnxruntime cannot load the model: {exc}"
        return report
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    merged: dict[str, OutputReport | None] = dict.fromkeys(names)
    for _ in range(trials):
        if isinstance(model, GraphModel):
            trial = _graph_random_feeds(model, batch, seq_len, rng)
        else:
            trial = _random_feeds(model, batch, seq_len, rng)
        trial.update(fixed)
        ort_feeds = {i.name: trial[i.name] for i in session.get_inputs() if i.name in trial}
        try:
            ref = dict(zip(names, session.run(names, ort_feeds)))
        except Exception as exc:  # noqa: BLE001
            report.error = f"onnxruntime failed to run the model: {exc}"
            return report
        ours = model.run(trial)
        for name in names:
            if name not in ours:
                merged[name] = OutputReport(name, (), float("inf"), float("inf"), False, "missing")
                continue
            merged[name] = _merge(merged[name], _compare(name, ours[name], ref[name], atol))
    report.outputs = [r for r in merged.values() if r is not None]
    return report


def main_validate(argv: Sequence[str] | None = None) -> int:
    """``lstm-infer validate MODEL.onnx [options]``: print the report; 0 passed, 1 failed,
    2 when the model cannot be checked. The command line itself lives in lstm_infer.cli."""
    from lstm_infer.cli import main

    return main(["validate", *(sys.argv[1:] if argv is None else argv)])
