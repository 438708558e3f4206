"""Optional peer engines for bench/compare.py and bench/precision_seq.py: OpenVINO and tract.

Each peer is loaded from the same ONNX models the other engines use (written to a temporary
directory: both runtimes read files) and exposes what the benches need:

* ``seq(x)``: a whole sequence ``x`` (T, B, I) from zero state -> ``{"Y", "Y_h" (, "Y_c")}``
  in the ONNX layout;
* ``seq_loop(x)``: a timed body, ``loop(n)`` runs the sequence n times;
* ``stream_steps(xs)``: ``xs`` (T, 1, I) one step per call, state fed back -> Y_h per step,
  (T, 1, H), for the agreement check; ``stream_loop(steps)``: the timed body of that.

OpenVINO is compiled twice: ``INFERENCE_PRECISION_HINT`` f32, and its default (bf16 on CPUs with
AVX512-BF16 or AMX), labelled with the precision the compiled model reports. Shapes are made
static per call shape (``Model.reshape``), OpenVINO's intended use; inputs are shared, not
copied (``share_inputs=True``). tract gets concrete input facts per shape and the initial state
as an input even for whole sequences (its LSTM without initial state fails at batch > 1).
A peer whose package is missing, or which cannot load a cell, is skipped with a printed note.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RUST_BACKTRACE", "0")  # tract's errors carry a Rust backtrace otherwise
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")

Loop = Callable[[int], None]

_NOTED: set[str] = set()


def note(msg: str) -> None:
    """Print ``msg`` once per process (skipped peers would repeat it for every config)."""
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(f"# note: {msg}", flush=True)


def versions() -> dict[str, str | None]:
    """Installed peer versions (None: not installed)."""
    res: dict[str, str | None] = {"openvino": None, "tract": None}
    try:
        import openvino

        res["openvino"] = openvino.get_version()
    except ImportError:
        pass
    try:
        import tract

        res["tract"] = tract.version()
    except ImportError:
        pass
    return res


class PeerModels:
    """The ONNX files of one cell's weights: ``seq`` (X -> Y, Y_h (, Y_c)), ``step`` (X, state ->
    Y_h (, Y_c)) and ``seq_state`` (X, state -> all outputs)."""

    def __init__(
        self, cell: str, input_size: int, hidden: int, seq: Any, step: Any, seq_state: Any
    ) -> None:
        import onnx

        self.cell, self.input_size, self.hidden = cell, input_size, hidden
        self.state_names = ["initial_h", "initial_c"] if cell == "LSTM" else ["initial_h"]
        self.out_names = ["Y", "Y_h", "Y_c"] if cell == "LSTM" else ["Y", "Y_h"]
        self._dir = tempfile.TemporaryDirectory(prefix="lstm_infer_peers_")
        self.paths: dict[str, Path] = {}
        for name, model in (("seq", seq), ("step", step), ("seq_state", seq_state)):
            self.paths[name] = Path(self._dir.name) / f"{name}.onnx"
            onnx.save(model, str(self.paths[name]))

    def zero_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((1, batch, self.hidden), np.float32) for _ in self.state_names]


class Peer:
    """Common interface; subclasses implement ``_seq_runner`` and ``_step_runner``."""

    key: str  # column key in the result rows
    label: str  # column label in tables
    precision: str  # "f32", "bf16", ...

    def __init__(self, models: PeerModels) -> None:
        self.models = models
        self._seq_cache: dict[tuple[int, ...], Callable[[np.ndarray], dict[str, np.ndarray]]] = {}
        self._step: Callable[[np.ndarray, list[Any]], list[Any]] | None = None

    @property
    def is_f32(self) -> bool:
        """Held to the fp32 agreement tolerance (else its error is only reported)."""
        return self.precision == "f32"

    def _seq_runner(self, shape: tuple[int, ...]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _step_runner(self) -> Callable[[np.ndarray, list[Any]], list[Any]]:
        """``step(x3, state) -> new state`` (first element Y_h); state items are the runtime's."""
        raise NotImplementedError

    def _to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def seq(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs of the whole sequence ``x`` (T, B, I) from zero state, as numpy."""
        if x.shape not in self._seq_cache:
            self._seq_cache[x.shape] = self._seq_runner(x.shape)
        return self._seq_cache[x.shape](x)

    def seq_loop(self, x: np.ndarray) -> Loop:
        self.seq(x)  # compile for this shape outside the timed body
        run = self._seq_cache[x.shape]

        def loop(n: int) -> None:
            for _ in range(n):
                run(x)

        return loop

    def _stepper(self) -> Callable[[np.ndarray, list[Any]], list[Any]]:
        if self._step is None:
            self._step = self._step_runner()
        return self._step

    def stream_steps(self, xs: np.ndarray) -> np.ndarray:
        """Y_h after each step of ``xs`` (T, 1, I) from zero state: (T, 1, H)."""
        step = self._stepper()
        state: list[Any] = list(self.models.zero_state(1))
        ys = []
        for x in xs:
            state = step(np.ascontiguousarray(x[None]), state)
            ys.append(self._to_numpy(state[0])[0].copy())
        return np.stack(ys)

    def stream_loop(self, steps_3d: Sequence[np.ndarray]) -> Loop:
        """Timed body: one call per step of ``steps_3d`` ((1, 1, I) each, cycled), state fed
        back between calls and kept across blocks."""
        step = self._stepper()
        holder: list[list[Any]] = [list(self.models.zero_state(1))]

        def loop(n: int) -> None:
            state = holder[0]
            for x_t in itertools.islice(itertools.cycle(steps_3d), n):
                state = step(x_t, state)
            holder[0] = state

        return loop


class OpenVinoPeer(Peer):
    """OpenVINO's CPU plugin, one inference thread, with or without the f32 precision hint."""

    _core: Any = None

    def __init__(self, models: PeerModels, threads: int, precision_hint: str | None) -> None:
        import openvino as ov

        super().__init__(models)
        if OpenVinoPeer._core is None:
            OpenVinoPeer._core = ov.Core()
        self.config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        if precision_hint is not None:
            self.config["INFERENCE_PRECISION_HINT"] = precision_hint
        # Compile the streaming model once now: it tells the precision actually used.
        self._compiled_step = self._compile("step", {"X": [1, 1, models.input_size]})
        reported = self._compiled_step.get_property("INFERENCE_PRECISION_HINT")
        self.precision = reported.get_type_name()  # "f32", "bf16", "f16"
        if precision_hint is None:
            self.key, self.label = "ov_default", f"OV default ({self.precision})"
        else:
            self.key, self.label = f"ov_{precision_hint}", f"OV {self.precision}"

    def _compile(self, kind: str, shapes: dict[str, list[int]]) -> Any:
        model = self._core.read_model(str(self.models.paths[kind]))
        if kind != "seq":
            batch = shapes["X"][1]
            shapes = {
                **shapes,
                **{n: [1, batch, self.models.hidden] for n in self.models.state_names},
            }
        model.reshape(shapes)
        return self._core.compile_model(model, "CPU", self.config)

    def _seq_runner(self, shape: tuple[int, ...]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        compiled = self._compile("seq", {"X": list(shape)})
        req = compiled.create_infer_request()
        ports = [(compiled.output(n), n) for n in self.models.out_names]

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            res = req.infer({"X": x}, share_inputs=True)
            return {n: res[p] for p, n in ports}

        return run

    def _step_runner(self) -> Callable[[np.ndarray, list[Any]], list[Any]]:
        compiled = self._compiled_step
        req = compiled.create_infer_request()
        ports = [compiled.output(n) for n in self.models.out_names[1:]]
        names = self.models.state_names

        def step(x: np.ndarray, state: list[Any]) -> list[Any]:
            res = req.infer({"X": x, **dict(zip(names, state))}, share_inputs=True)
            return [res[p] for p in ports]  # copies (share_outputs=False): safe to feed back

        return step


class TractPeer(Peer):
    """tract (Sonos), ONNX front end, optimised typed model; single-threaded."""

    key, label, precision = "tract", "tract", "f32"

    def __init__(self, models: PeerModels) -> None:
        super().__init__(models)
        self._step_runner()  # fail here, at build time, if tract cannot load the cell

    def _runnable(self, kind: str, x_shape: Sequence[int]) -> Any:
        import tract

        model = tract.onnx().load(str(self.models.paths[kind]))
        T, B, I = x_shape
        model.set_input_fact(0, f"{T},{B},{I},f32")
        for i in range(1, model.input_count()):
            model.set_input_fact(i, f"1,{B},{self.models.hidden},f32")
        for i in range(model.output_count()):
            model.set_output_fact(i, None)  # let tract infer them from the concrete inputs
        return model.into_model().into_runnable()

    def _to_numpy(self, a: Any) -> np.ndarray:
        return a if isinstance(a, np.ndarray) else a.to_numpy()

    def _seq_runner(self, shape: tuple[int, ...]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        runnable = self._runnable("seq_state", shape)
        zeros = self.models.zero_state(shape[1])
        names = self.models.out_names

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            return {n: t.to_numpy() for n, t in zip(names, runnable.run([x, *zeros]))}

        return run

    def _step_runner(self) -> Callable[[np.ndarray, list[Any]], list[Any]]:
        if self._step is not None:
            return self._step
        runnable = self._runnable("step", (1, 1, self.models.input_size))

        def step(x: np.ndarray, state: list[Any]) -> list[Any]:
            return runnable.run([x, *state])  # tract Tensors, fed back as they are

        self._step = step
        return step


def build_peers(models: PeerModels, threads: int) -> list[Peer]:
    """Every installed peer that loads this cell: OpenVINO f32 and default, tract."""
    peers: list[Peer] = []
    try:
        import openvino  # noqa: F401
    except ImportError:
        note("openvino not installed: its columns are skipped (pip install openvino)")
    else:
        for hint in ("f32", None):
            try:
                peers.append(OpenVinoPeer(models, threads, hint))
            except Exception as exc:  # any load failure skips the peer
                note(f"OpenVINO ({hint or 'default'}) cannot load {models.cell}: {exc}")
    try:
        import tract  # noqa: F401
    except ImportError:
        note("tract not installed: its column is skipped (pip install tract)")
    else:
        if threads != 1:
            note("tract runs single-threaded whatever --threads says")
        try:
            peers.append(TractPeer(models))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note(f"tract cannot load {models.cell} H={models.hidden}: {first}")
    return peers
