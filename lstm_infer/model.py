"""Model: a compiled recurrent network with onnxruntime-style ``run`` (its streams:
:mod:`lstm_infer.stream`).

Longer than the ~600-line guide: ``Model`` is one class, its ``run`` with the signature
handling, state roles, thread splits and native save that every importer targets; its
pieces share the compiled plans and the signature's bookkeeping too closely to split.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_infer import _engine
from lstm_infer._plan import compile_layer
from lstm_infer._spec import (
    GATES,
    ModelSpec,
    RecurrentLayer,
    Signature,
    TensorInfo,
    parse_state_role,
    state_role,
)
from lstm_infer.dense_head import apply_head, compile_head
from lstm_infer.errors import InputError, InputTypeError
from lstm_infer.runtime.threads import blas_threads, thread_pool
from lstm_infer.stream import Stream, as_float_input, check_rank

__all__ = ["Model", "Stream"]  # Stream lives in lstm_infer.stream; re-exported


# One unit-split run at a time per pool: its parts wait for each other every step, so two runs
# whose parts were queued crosswise could wait on each other forever. A run that finds the
# lock taken splits by batch instead.
_SPLIT_LOCKS: dict[int, threading.Lock] = {}
_SPLIT_LOCKS_LOCK = threading.Lock()


def _split_lock(threads: int) -> threading.Lock:
    with _SPLIT_LOCKS_LOCK:
        return _SPLIT_LOCKS.setdefault(threads, threading.Lock())


# Multiply-adds below which batch slices cost about what they save: ~1e8 is ~0.6 ms on one
# thread; below that the pool hand-off and thread wake-ups measured anywhere from 0.8x to
# 1.3x of the one-thread time (LSTM / RNN H = 64, batch 16-64, 2 cores).
_BATCH_SPLIT_MIN_WORK = 100_000_000

# Multiply-adds below which a unit split costs about what it saves (it needs no pool hand-off
# per slice, only one barrier per step).
_UNIT_SPLIT_MIN_WORK = 10_000_000


# Hidden size from which a layer whose products run on AMX tiles splits its units, per weight
# format: a tile step's recurrent product takes a few microseconds, so the per-step barrier
# costs more than half of it saves at smaller H. Sapphire Rapids, T = 100, threads=2 against
# one thread: int8 LSTM / GRU H = 256, batch 8-16, 1.11-1.65x split by units (0.81-1.07x by
# batch rows), int8 LSTM H = 1024 batch 16 0.51x by units; bf16 LSTM H = 256 batch 16 0.82x
# by units (GRU 1.04x), bf16 LSTM H = 128 batch 16 1.25x by units.
_TILE_UNIT_SPLIT_MIN_HIDDEN = {"int8": 512, "bfloat16": 256}


def _on_tiles(weight_format: str, batch: int) -> bool:
    """Whether a whole sequence of ``batch`` rows runs its products on AMX tiles: the amx
    table's int8 product from 2 rows, its rounded bf16 product from the rounded threshold."""
    if _engine.isa() != "amx":
        return False
    if weight_format == "int8":
        return batch >= 2
    rounded = _engine.bf16_rounded_min_rows() if weight_format == "bfloat16" else None
    return bool(rounded) and batch >= rounded


def _prefer_unit_split(batch: int, hidden: int, gates: int, tiles: str | None = None) -> bool:
    """Whether splitting a unidirectional layer's units beats splitting its batch (measured
    with bench/unit_split.py on 2 cores). Each step costs a barrier, so the units need enough
    work per step (H >= 256, or 128 with 16+ rows; with ``tiles``, the weight format of a
    layer whose products run on AMX tiles, H >= _TILE_UNIT_SPLIT_MIN_HIDDEN of it); batch
    slices win from 32 rows unless each of them would stream a recurrent matrix of 1 MB or
    more (which then shares memory bandwidth instead of splitting it)."""
    if tiles and hidden < _TILE_UNIT_SPLIT_MIN_HIDDEN.get(tiles, 0):
        return False
    big_enough = hidden >= 256 or (hidden >= 128 and batch >= 16)
    return big_enough and (batch < 32 or gates * hidden * hidden * 4 >= (1 << 20))


def _run_unit_split(
    plan: Any,
    x: np.ndarray,
    lens: Any,
    reverse: bool,
    h: np.ndarray,
    c: Any,
    y: np.ndarray,
    threads: int,
) -> bool:
    """Run one direction with its units split among threads; False when the pool is busy
    with another unit split (the caller then splits the batch)."""
    lock = _split_lock(threads)
    if not lock.acquire(blocking=False):
        return False
    try:
        parts = min(threads, (plan.hidden_size + _engine.BLOCK - 1) // _engine.BLOCK)
        # Checks every argument before any part starts: a part never fails afterwards.
        run = _engine.UnitSplit(plan, x, lens, reverse, h, c, y, parts)
        pool = thread_pool(threads)
        with blas_threads(1):  # each part projects its own units' inputs with the BLAS
            futures = [pool.submit(run.run_part, i) for i in range(1, parts)]
            try:
                run.run_part(0)
            finally:
                for future in futures:
                    future.result()
    finally:
        lock.release()
    return True


# Rows of one AMX tile: a tile product costs about the same for 1 row as for 16, so slices of
# a batch on tiles hold whole tiles (Sapphire Rapids, threads=2, T = 100: bf16 LSTM H = 128
# batch 16 in two slices of 8 took 1.2-1.4x the one-thread time).
_TILE_ROWS = 16


def _min_slice_rows(weight_format: str, batch: int) -> int:
    """Rows each batch slice of a layer must keep (0: no minimum). A bf16 batch at or over
    the rounded-product threshold keeps it in every slice (a smaller slice would switch to
    the fp32-accurate products: other numbers than one thread gives, and slower); on AMX
    tiles (the amx table's rounded bf16, and its int8 from 2 rows) slices hold whole tiles."""
    rounded = _engine.bf16_rounded_min_rows() if weight_format == "bfloat16" else None
    keep = rounded if rounded and batch >= rounded else 0
    return max(keep, _TILE_ROWS) if _on_tiles(weight_format, batch) else keep


def _batch_slices(batch: int, parts: int) -> list[slice]:
    """Split range(batch) into at most ``parts`` contiguous, nearly equal slices."""
    parts = max(1, min(parts, batch))
    edges = [batch * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:]) if b > a]


class Model:
    """A recurrent model compiled for this CPU.

    Build one with :func:`lstm_infer.load` (ONNX, PyTorch checkpoint, native file), with
    :meth:`from_onnx_weights` (numpy arrays in the ONNX operator's conventions), or from an
    internal :class:`~lstm_infer._spec.ModelSpec`.

    ``run`` takes and returns dicts keyed by the source model's own tensor names, like
    onnxruntime's ``InferenceSession.run``; ``stream`` returns a :class:`Stream` that keeps the
    recurrent state between calls.
    """

    def __init__(
        self,
        spec: ModelSpec,
        stored_plans: list | None = None,
        stored_heads: list | None = None,
    ) -> None:
        spec.validate()
        self._spec = spec
        # stored_*: packed arrays a native file holds (checked by lstm_infer.native_format),
        # used as they are, e.g. views of the memory-mapped file.
        self._plans = [
            compile_layer(
                layer,
                spec.embedding if i == 0 else None,
                None if stored_plans is None else stored_plans[i],
            )
            for i, layer in enumerate(spec.layers)
        ]
        # The first layer looks token ids up in a precomputed table (see folds_embedding).
        self._takes_tokens = self._plans[0][0].takes_tokens
        self._head = compile_head(spec.head, stored_heads)
        self._threads = 1
        # Looked up on every run(): computed once (the spec does not change after this).
        sig = spec.signature
        self._input_set = frozenset(sig.inputs.values())
        self._output_list = list(sig.outputs.values())
        self._output_roles = {name: role for role, name in sig.outputs.items()}

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_onnx_weights(
        cls,
        cell: str,
        W: np.ndarray,
        R: np.ndarray,
        B: np.ndarray | None = None,
        P: np.ndarray | None = None,
        *,
        initial_h: np.ndarray | None = None,
        initial_c: np.ndarray | None = None,
        direction: str = "forward",
        activations: Sequence[str] | None = None,
        activation_alpha: Sequence[float] | None = None,
        activation_beta: Sequence[float] | None = None,
        clip: float | None = None,
        input_forget: int = 0,
        linear_before_reset: int = 0,
        layout: int = 0,
    ) -> Model:
        """Build a one-layer model from numpy weights in the ONNX operator's conventions.

        Parameters
        ----------
        cell : {"rnn", "lstm", "gru"}
        W, R, B, P : numpy arrays
            Shapes and gate orders exactly as the ONNX RNN/LSTM/GRU operators define them:
            W ``(D, G*H, I)``, R ``(D, G*H, H)``, B ``(D, 2*G*H)``, P ``(D, 3*H)`` (LSTM only),
            with gates ``iofc`` (LSTM), ``zrh`` (GRU).
        initial_h, initial_c : numpy arrays, optional
            Baked-in initial state ``(D, B, H)``; otherwise ``initial_h``/``initial_c`` are
            optional inputs of ``run`` (zeros when not fed).
        direction, activations, activation_alpha, activation_beta, clip, input_forget,
        linear_before_reset, layout
            The ONNX attributes.

        Returns
        -------
        Model
            Inputs ``X``, ``sequence_lens``, ``initial_h`` (and ``initial_c`` for LSTM);
            outputs ``Y``, ``Y_h`` (and ``Y_c``), shaped as the ONNX operator shapes them.
        """
        from lstm_infer._onnx_weights import layer_from_onnx

        layer = layer_from_onnx(
            cell,
            W,
            R,
            B,
            P,
            direction=direction,
            activations=activations,
            activation_alpha=activation_alpha,
            activation_beta=activation_beta,
            clip=clip,
            input_forget=input_forget,
            linear_before_reset=linear_before_reset,
        )
        if layout not in (0, 1):
            raise ValueError(f"layout must be 0 or 1, got {layout}")
        inputs = {"x": "X", "sequence_lens": "sequence_lens", "initial_h": "initial_h"}
        outputs = {"y": "Y", "y_h": "Y_h"}
        if layer.cell == "lstm":
            inputs["initial_c"] = "initial_c"
            outputs["y_c"] = "Y_c"
        constants = {}
        for role, value in (("initial_h", initial_h), ("initial_c", initial_c)):
            if value is not None:
                constants[role] = np.ascontiguousarray(value, dtype=np.float32)
                inputs.pop(role, None)
        sig = Signature("onnx_node", layout, inputs, outputs, constants)
        return cls(ModelSpec([layer], sig, source="numpy"))

    # ---- description -------------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        """The internal model description (layers, weights in kernel order)."""
        return self._spec

    @property
    def layers(self) -> list[RecurrentLayer]:
        return self._spec.layers

    def _dims(self) -> dict[str, Any]:
        s = self._spec
        first, last = s.layers[0], s.layers[-1]
        feat = s.head[-1].weight.shape[0] if s.head else last.output_size
        return {
            "I": first.input_size,
            "D": last.num_directions,
            "Hr": last.state_size,
            "H": last.hidden_size,
            "F": feat,
            "L": sum(layer.num_directions for layer in s.layers),
        }

    @property
    def inputs(self) -> list[TensorInfo]:
        """Names, shapes (symbolic dims as strings) and dtypes of the inputs.

        For an imported graph these are the shapes and dtypes the graph declares.
        """
        return self._input_infos(declared=True)

    def _input_infos(self, declared: bool) -> list[TensorInfo]:
        """Input descriptions; with ``declared`` False, derived from the layers only (symbolic
        dims named "batch" and "seq_len", whatever the source graph calls them)."""
        sig, d = self._spec.signature, self._dims()
        t_b = ("seq_len", "batch") if sig.layout == 0 else ("batch", "seq_len")
        infos = []
        for role, name in sig.inputs.items():
            if declared and name in sig.declared:
                shape, dtype = sig.declared[name]
                infos.append(TensorInfo(name, tuple(shape), dtype))
            elif role == "x":
                if self._spec.embedding is not None:
                    infos.append(TensorInfo(name, t_b, "int64"))
                else:
                    infos.append(TensorInfo(name, (*t_b, d["I"]), "float32"))
            elif role == "sequence_lens":
                infos.append(TensorInfo(name, ("batch",), "int32"))
            elif role in sig.weight_inputs:
                infos.append(TensorInfo(name, self._weight_input_shape(role), "float32"))
            elif role.startswith("unused:"):
                shape, dtype = sig.declared.get(name, ((), "float32"))
                infos.append(TensorInfo(name, tuple(shape), dtype))
            else:
                infos.append(TensorInfo(name, self._state_shape(role), "float32"))
        return infos

    def _weight_input_shape(self, role: str) -> tuple[int, ...]:
        """Shape of an ONNX weight tensor (W, R, B, P) that the graph feeds at run time."""
        layer = self._spec.layers[0]
        D, H, G = layer.num_directions, layer.hidden_size, GATES[layer.cell]
        return {
            "W": (D, G * H, layer.input_size),
            "R": (D, G * H, H),
            "B": (D, 2 * G * H),
            "P": (D, 3 * H),
        }[role]

    def _state_groups(self) -> list[tuple[int, int]]:
        """Layer index ranges [lo, hi) of the state groups (one group by default)."""
        counts = self._spec.signature.state_groups or [len(self._spec.layers)]
        ranges, lo = [], 0
        for n in counts:
            ranges.append((lo, lo + n))
            lo += n
        return ranges

    def _state_carriers(self, base: str, group: int) -> list[int]:
        """Indices of the layers of ``group`` that hold state ``base`` (c: LSTM layers only)."""
        lo, hi = self._state_groups()[group]
        layers = self._spec.layers
        if base in ("initial_c", "y_c"):
            return [i for i in range(lo, hi) if layers[i].cell == "lstm"]
        return list(range(lo, hi))

    def _state_size(self, base: str, layer: RecurrentLayer) -> int:
        return layer.state_size if base in ("initial_h", "y_h") else layer.hidden_size

    def _state_shape(self, role: str) -> tuple[int | str, ...]:
        sig, d = self._spec.signature, self._dims()
        base, group = parse_state_role(role)
        if sig.style == "onnx_node":
            size = d["Hr"] if base in ("initial_h", "y_h") else d["H"]
            return (d["D"], "batch", size) if sig.layout == 0 else ("batch", d["D"], size)
        layers = [self._spec.layers[i] for i in self._state_carriers(base, group)]
        if not layers:
            return (0, "batch", 0)
        count = sum(layer.num_directions for layer in layers)
        return (count, "batch", self._state_size(base, layers[0]))

    @property
    def outputs(self) -> list[TensorInfo]:
        """Names, shapes (symbolic dims as strings) and dtypes of the outputs."""
        sig, d = self._spec.signature, self._dims()
        infos = []
        for role, name in sig.outputs.items():
            if name in sig.declared:
                shape, _ = sig.declared[name]
                infos.append(TensorInfo(name, tuple(shape), "float32"))
            elif role == "y":
                if sig.style == "onnx_node":
                    shape = (
                        ("seq_len", d["D"], "batch", d["Hr"])
                        if sig.layout == 0
                        else ("batch", "seq_len", d["D"], d["Hr"])
                    )
                else:
                    shape = (
                        ("seq_len", "batch", d["F"])
                        if sig.layout == 0
                        else ("batch", "seq_len", d["F"])
                    )
                infos.append(TensorInfo(name, shape, "float32"))
            else:
                infos.append(TensorInfo(name, self._state_shape(role), "float32"))
        return infos

    def __repr__(self) -> str:
        parts = []
        for layer in self._spec.layers:
            proj = f", proj={layer.proj_size}" if layer.proj_size else ""
            parts.append(
                f"{layer.cell.upper()}({layer.input_size}->{layer.hidden_size}{proj}, "
                f"{layer.direction})"
            )
        return f"<lstm_infer.Model {' -> '.join(parts)} isa={_engine.isa()}>"

    # ---- running -----------------------------------------------------------------------------

    def _sequence_input(self, feeds: Mapping[str, Any]) -> np.ndarray:
        """The main input as a time-major (T, B, I) float32 array (embedding applied)."""
        sig = self._spec.signature
        name = sig.inputs["x"]
        if name not in feeds:
            raise InputError(f"missing input {name!r}; the model's inputs are {self.input_names}")
        emb = self._spec.embedding
        if emb is not None:
            tokens = np.asarray(feeds[name])
            if tokens.dtype.kind not in "iu":
                raise InputTypeError(
                    f"input {name!r} holds token ids and must be integer, got dtype {tokens.dtype}"
                )
            check_rank(
                name, tokens, 2, "(seq_len, batch)" if sig.layout == 0 else "(batch, seq_len)"
            )
            if tokens.size and (tokens.min() < 0 or tokens.max() >= emb.shape[0]):
                raise InputError(
                    f"input {name!r}: token ids must be in [0, {emb.shape[0]}), got range "
                    f"[{tokens.min()}, {tokens.max()}]"
                )
            tokens = tokens if sig.layout == 0 else tokens.T
            if self._takes_tokens:
                return np.ascontiguousarray(tokens, dtype=np.int64)
            return np.ascontiguousarray(emb[tokens], dtype=np.float32)
        x = as_float_input(name, feeds[name])
        layout_desc = (
            "(seq_len, batch, input_size)" if sig.layout == 0 else ("(batch, seq_len, input_size)")
        )
        check_rank(name, x, 3, layout_desc)
        want = self._spec.layers[0].input_size
        if x.shape[2] != want:
            raise InputError(
                f"input {name!r} must have shape {layout_desc} with input_size={want}, got "
                f"{tuple(x.shape)}"
            )
        if sig.layout == 1:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        return x

    @property
    def input_names(self) -> list[str]:
        return list(self._spec.signature.inputs.values())

    @property
    def output_names(self) -> list[str]:
        return list(self._spec.signature.outputs.values())

    def _lens(
        self, feeds: Mapping[str, Any], T: int, B: int, lengths: Any = None
    ) -> np.ndarray | None:
        sig = self._spec.signature
        name = sig.inputs.get("sequence_lens")
        value = sig.constants.get("sequence_lens")
        if name is not None and feeds.get(name) is not None:
            if lengths is not None:
                raise InputError(f"pass the row lengths as input {name!r} or lengths=, not both")
            value = feeds[name]
        label = name or "sequence_lens"
        if lengths is not None:
            value, label = lengths, "lengths"
        if value is None:
            return None
        lens = np.asarray(value)
        if lens.dtype.kind not in "iu":
            raise InputTypeError(f"input {label!r} must be integer, got dtype {lens.dtype}")
        if lens.shape != (B,):
            raise InputError(f"input {label!r} must have shape ({B},), got {tuple(lens.shape)}")
        if lens.size and (lens.min() < 0 or lens.max() > T):
            raise InputError(
                f"input {label!r}: every length must be in [0, {T}], got {lens.tolist()}"
            )
        lens = np.ascontiguousarray(lens, dtype=np.int32)
        return None if bool(np.all(lens == T)) else lens

    def _initial_states(
        self, feeds: Mapping[str, Any], role: str, B: int
    ) -> list[np.ndarray | None]:
        """Per-layer initial state, each (D, B, size) float32 (a fresh writable copy).

        ``role`` is "initial_h" or "initial_c"; each state group reads its own tensor (a feed,
        else a constant, else zeros). Layers without that state (c of a GRU) get None.
        """
        sig = self._spec.signature
        layers = self._spec.layers
        if sig.style == "onnx_node":
            return [self._onnx_node_initial_state(feeds, role, B)]
        out: list[np.ndarray | None] = [None] * len(layers)
        for group in range(len(self._state_groups())):
            carriers = self._state_carriers(role, group)
            if not carriers:
                continue
            sizes = [self._state_size(role, layers[i]) for i in carriers]
            role_g = state_role(role, group)
            name = sig.inputs.get(role_g)
            value = sig.constants.get(role_g)
            if name is not None and feeds.get(name) is not None:
                value = feeds[name]
            if value is None:
                for i, size in zip(carriers, sizes):
                    out[i] = np.zeros((layers[i].num_directions, B, size), np.float32)
                continue
            label = name or role_g
            arr = as_float_input(label, value)
            check_rank(label, arr, 3, "")
            if len(set(sizes)) != 1:
                raise InputError(f"input {label!r}: layers have different state sizes {sizes}")
            want = (sum(layers[i].num_directions for i in carriers), B, sizes[0])
            if arr.shape != want:
                raise InputError(f"input {label!r} must have shape {want}, got {arr.shape}")
            k = 0
            for i in carriers:
                n = layers[i].num_directions
                out[i] = np.array(arr[k : k + n], dtype=np.float32, order="C")
                k += n
        return out

    def _onnx_node_initial_state(
        self, feeds: Mapping[str, Any], role: str, B: int
    ) -> np.ndarray | None:
        """The one layer's initial state of an ONNX-operator model, (D, B, size)."""
        sig = self._spec.signature
        layer = self._spec.layers[0]
        if role == "initial_c" and layer.cell != "lstm":
            return None
        size = self._state_size(role, layer)
        d = layer.num_directions
        name = sig.inputs.get(role)
        value = sig.constants.get(role)
        if name is not None and feeds.get(name) is not None:
            value = feeds[name]
        if value is None:
            return np.zeros((d, B, size), np.float32)
        label = name or role
        arr = as_float_input(label, value)
        check_rank(label, arr, 3, "")
        want = (d, B, size) if sig.layout == 0 else (B, d, size)
        if arr.shape != want:
            raise InputError(f"input {label!r} must have shape {want}, got {arr.shape}")
        if sig.layout == 1:
            arr = arr.transpose(1, 0, 2)
        return np.array(arr, dtype=np.float32, order="C")

    def _forward(
        self,
        x: np.ndarray,
        lens: np.ndarray | None,
        h0: list[np.ndarray | None],
        c0: list[np.ndarray | None],
        threads: int = 1,
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray | None]]:
        """Run the stack. x (T, B, I); states updated in place in h0/c0 (fresh copies).

        With ``threads > 1`` each layer's work is split into jobs run on a thread pool (the
        kernels release the GIL): the two directions, and slices of the batch (rows never
        interact); or, for a unidirectional layer at a small batch or with a large recurrent
        matrix, its units, the threads stepping through time together (``_prefer_unit_split``).
        """
        T, B = x.shape[0], x.shape[1]
        y4 = None
        for layer, plans, h, c in zip(self._spec.layers, self._plans, h0, c0):
            D, Hr = layer.num_directions, layer.state_size
            y4 = (np.zeros if lens is not None else np.empty)((T, B, D, Hr), np.float32)
            work = T * B * GATES[layer.cell] * layer.hidden_size * (layer.input_size + Hr)
            if (
                threads > 1
                and D == 1
                and B > 0
                and T > 0
                and work >= _UNIT_SPLIT_MIN_WORK
                and layer.hidden_size > _engine.BLOCK
                and _engine.supports_unit_split(plans[0])
                and _prefer_unit_split(
                    B,
                    layer.hidden_size,
                    GATES[layer.cell],
                    tiles=layer.weight_format if _on_tiles(layer.weight_format, B) else None,
                )
                and _run_unit_split(
                    plans[0],
                    x,
                    lens,
                    layer.direction == "reverse",
                    h[0],
                    None if c is None else c[0],
                    y4[:, :, 0, :],
                    threads,
                )
            ):
                x = y4.reshape(T, B, D * Hr)
                continue
            split = work >= _BATCH_SPLIT_MIN_WORK
            parts = max(1, threads // D) if split else 1
            min_rows = _min_slice_rows(layer.weight_format, B)
            if min_rows:
                parts = max(1, min(parts, B // min_rows))
            slices = _batch_slices(B, parts)
            jobs = []
            for d, plan in enumerate(plans):
                reverse = layer.direction == "reverse" or d == 1
                for rows in slices:
                    jobs.append(
                        (
                            plan,
                            x if len(slices) == 1 else np.ascontiguousarray(x[:, rows]),
                            None if lens is None else lens[rows],
                            reverse,
                            h[d, rows],
                            None if c is None else c[d, rows],
                            y4[:, rows, d, :],
                        )
                    )
            if len(jobs) == 1 or threads <= 1:
                # One job: its input projection's sgemm may use every thread of the budget.
                with blas_threads(threads):
                    for job in jobs:
                        _engine.run_direction(*job)
            else:
                # Parallel jobs each call the BLAS: one BLAS thread each, or they oversubscribe.
                with blas_threads(1):
                    pool = thread_pool(threads)
                    for future in [pool.submit(_engine.run_direction, *job) for job in jobs]:
                        future.result()
            x = y4.reshape(T, B, D * Hr)
        if lens is not None and not lens.all():
            # onnxruntime reports a zero final state for rows of length 0 (not the initial
            # state); we match it.
            empty = lens == 0
            for state in (*h0, *c0):
                if state is not None:
                    state[:, empty] = 0.0
        return y4, h0, c0

    @property
    def threads(self) -> int:
        """Threads ``run`` uses by default (1). Work is split by direction, batch rows or units."""
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"threads must be a positive int, got {value!r}")
        self._threads = int(value)

    def run(
        self,
        feeds: Mapping[str, Any],
        output_names: Sequence[str] | None = None,
        *,
        threads: int | None = None,
        lengths: Any = None,
    ) -> dict[str, np.ndarray]:
        """Run whole sequences.

        Parameters
        ----------
        feeds : mapping of input name -> array
            The model's inputs (see :attr:`inputs`); optional ones may be omitted or None.
            float64 and non-contiguous arrays are converted.
        output_names : sequence of str, optional
            Subset of outputs to return (default: all).
        threads : int, optional
            Threads for this call (default :attr:`threads`): the directions of a
            bidirectional layer and slices of the batch run in parallel.
        lengths : sequence of int, optional
            A ragged batch padded to one length: row ``b`` is the first ``lengths[b]`` steps
            (each in ``[0, seq_len]``); the steps after them are ignored. Each row's outputs
            up to its length, and its final states, are those of the row run alone (a
            backward direction starts at the row's last step); outputs past it are zero. The
            same as feeding an ONNX model's ``sequence_lens`` input (pass one or the other).

        Returns
        -------
        dict of output name -> float32 array
        """
        if not isinstance(feeds, Mapping):
            raise InputTypeError(f"feeds must be a dict of name -> array, got {type(feeds)}")
        unknown = [k for k in feeds if k not in self._input_set]
        if unknown:
            raise InputError(
                f"unknown input name(s) {sorted(unknown)}; the model's inputs are "
                f"{self.input_names}"
            )
        wanted = list(output_names) if output_names is not None else self._output_list
        bad = [n for n in wanted if n not in self._output_roles]
        if bad:
            raise InputError(f"unknown output name(s) {bad}; outputs are {self.output_names}")
        sig = self._spec.signature
        if sig.weight_inputs:
            return self._with_fed_weights(feeds).run(
                {k: v for k, v in feeds.items() if k not in sig.weight_inputs.values()},
                output_names,
                threads=self.threads if threads is None else threads,
                lengths=lengths,
            )
        x = self._sequence_input(feeds)
        T, B = x.shape[0], x.shape[1]
        lens = self._lens(feeds, T, B, lengths)
        h = self._initial_states(feeds, "initial_h", B)
        c = self._initial_states(feeds, "initial_c", B)
        if threads is None:
            threads = self.threads
        elif not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        y4, h, c = self._forward(x, lens, h, c, int(threads))

        results: dict[str, np.ndarray] = {}
        for name in wanted:
            role = self._output_roles[name]
            if role == "y":
                results[name] = self._format_y(y4, int(threads), lens)
            else:
                results[name] = self._format_state(h, c, role)
        return results

    def _with_fed_weights(self, feeds: Mapping[str, Any]) -> Model:
        """The model rebuilt from weights given as feeds (ONNX graphs that input W/R/B/P)."""
        from lstm_infer._onnx_weights import layer_from_onnx

        sig = self._spec.signature
        attrs = dict(sig.node_attributes)
        cell = attrs.pop("cell")
        weights: dict[str, Any] = {}
        for role, name in sig.weight_inputs.items():
            if feeds.get(name) is None:
                raise InputError(f"missing input {name!r} (the operator's {role} weights)")
            weights[role] = feeds[name]
        layer = self._spec.layers[0]
        if "W" not in weights or "R" not in weights:
            raise InputError("W and R must both be fed when either is a graph input")
        new_layer = layer_from_onnx(
            cell, weights["W"], weights["R"], weights.get("B"), weights.get("P"), **attrs
        )
        if (new_layer.hidden_size, new_layer.input_size) != (
            layer.hidden_size,
            layer.input_size,
        ):
            raise InputError(
                f"fed weights describe hidden_size={new_layer.hidden_size}, input_size="
                f"{new_layer.input_size}; the graph declares {layer.hidden_size}, "
                f"{layer.input_size}"
            )
        inputs = {r: n for r, n in sig.inputs.items() if r not in sig.weight_inputs}
        fixed = Signature(sig.style, sig.layout, inputs, dict(sig.outputs), dict(sig.constants))
        return Model(ModelSpec([new_layer], fixed, source=self._spec.source))

    def _format_y(
        self, y4: np.ndarray, threads: int = 1, lens: np.ndarray | None = None
    ) -> np.ndarray:
        sig = self._spec.signature
        if sig.style == "onnx_node":
            order = (0, 2, 1, 3) if sig.layout == 0 else (1, 0, 2, 3)
            return np.ascontiguousarray(y4.transpose(order))
        T, B, D, Hr = y4.shape
        y = y4.reshape(T, B, D * Hr)
        if self._head:
            y = apply_head(y, self._head, threads)
            if lens is not None:
                # The head maps the zero padding to its bias: padding stays zero, as in Y.
                y[np.arange(T)[:, None] >= lens[None, :]] = 0.0
        return np.ascontiguousarray(y if sig.layout == 0 else y.transpose(1, 0, 2))

    def _format_state(
        self,
        h: Sequence[np.ndarray | None],
        c: Sequence[np.ndarray | None],
        role: str,
    ) -> np.ndarray:
        """Output ``role`` ("y_h", "y_c:1", ...) from per-layer (D, B, size) states."""
        sig = self._spec.signature
        base, group = parse_state_role(role)
        states = h if base == "y_h" else c
        if sig.style == "onnx_node":
            s = states[0]
            return s if sig.layout == 0 else np.ascontiguousarray(s.transpose(1, 0, 2))
        return np.concatenate([states[i] for i in self._state_carriers(base, group)], axis=0)

    # ---- streaming ---------------------------------------------------------------------------

    def stream(self, batch_size: int = 1) -> Stream:
        """A :class:`Stream` over this model for ``batch_size`` independent sequences."""
        return Stream(self, batch_size)

    # ---- quantization ------------------------------------------------------------------------

    def quantize(self, weight_format: str) -> Model:
        """A new model whose recurrent weights are stored as ``"bf16"`` or ``"int8"``.

        bf16 keeps fp32 activations and accumulation; int8 also quantizes each activation row
        per step and sums exactly in int32 (see :mod:`lstm_infer.quantize`). Streaming reads
        half (bf16) or a quarter (int8) of the weight bytes per step. The result saves and
        loads in the native format.
        """
        from lstm_infer.quantize import quantize_spec

        return Model(quantize_spec(self._spec, weight_format))

    # ---- native format -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model in the native format (safetensors + JSON metadata), its packed
        weights included: ``lstm_infer.load(path, mmap=True)`` then maps the file and builds
        the model on its pages (processes loading one file share them). Written to a new file
        renamed over ``path``: a process that mapped the old file keeps the old one."""
        from lstm_infer._plan import derived_shapes
        from lstm_infer.native_format import save_spec

        plans = []
        for i, (layer, per_layer) in enumerate(zip(self._spec.layers, self._plans)):
            emb = self._spec.embedding if i == 0 else None
            plans.append([
                {k: plan.arrays()[k] for k in derived_shapes(layer, d, emb)}
                for d, plan in enumerate(per_layer)
            ])  # fmt: skip
        heads = [(h.packed, h.bias_padded) for h in self._head]
        save_spec(self._spec, path, plans, heads)
