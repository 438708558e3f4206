"""Programs specialised to the values of a graph's scalar control inputs.

silero-VAD's files take ``sr``, an int64 scalar: ``silero_vad.onnx`` branches on ``sr ==
16000`` (an ``If``), ``_16k_op15`` adds ``0 * sr`` to its state. ``load(path,
fixed_inputs={"sr": 16000})`` makes it a constant, the branch is inlined and the graph
compiles into one C step program; fed as an input (as onnxruntime's users do), the general
program has to keep the ``If`` and run op by op (the step program takes float32 inputs only).

A control input is a graph input of an integer or bool dtype with a declared static shape of
at most :data:`MAX_CONTROL_ELEMENTS` elements (rank 0 mostly) that never indexes a tensor
(``Gather`` indices and the like: those are token ids, whose values change every call).
:class:`ValueSpecializer` keeps, per set of their values, the program compiled as if
``fixed_inputs`` had fixed them (the inputs become constants, what they decide folds), with
its own shape specialisations (:class:`~lstm_infer.compile.specialize.ShapeSpecializer`) and
compiled runs (:class:`~lstm_infer.compile.step_program.CompiledRuns`). The general program
stays for everything else:

* ``run`` compiles a value set on its second sight (one-off values never pay for a compile),
  streams on the first (they step at one value for many chunks);
* at most :data:`CACHE_SIZE` value sets are kept (least recently used dropped first), and at
  most :data:`MAX_COMPILES` are ever compiled per model: an input whose value changes every
  call ends up on the general program, not recompiling forever.

The specialised program computes what the general one computes for those values (the same
ops on the same values, constants folded sooner), so results agree to float32 rounding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from lstm_infer.compile.program import GraphProgram
from lstm_infer.compile.specialize import ShapeSpecializer
from lstm_infer.compile.step_program import CompiledRuns
from lstm_infer.errors import LstmInferError
from lstm_infer.graph import Graph

# A control input holds at most this many elements.
MAX_CONTROL_ELEMENTS = 4
# Value sets with a specialised program kept per model.
CACHE_SIZE = 4
# Value sets compiled over a model's life; new values past it run the general program.
MAX_COMPILES = 16
# Distinct value sets remembered as seen once (run compiles on the second sight).
MAX_SEEN = 256
# Inputs of these ops (by position) index into a tensor: a value read there is data.
_INDEX_INPUTS = {
    "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "OneHot": (0,),
    "ScatterElements": (1,), "ScatterND": (1,),
}  # fmt: skip
_CONTROL_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")


def _indexes(graph: Graph, tainted: set[str]) -> bool:
    """Whether anything computed from ``tainted`` (forward through ``graph`` and its
    subgraphs) is read as indices."""
    tainted = set(tainted)
    for node in graph.nodes:
        hit = [i for i, n in enumerate(node.inputs) if n and n in tainted]
        if not hit:
            continue
        if any(i in _INDEX_INPUTS.get(node.op, ()) for i in hit):
            return True
        for sub in node.attrs.values():
            if not isinstance(sub, Graph):
                continue
            if node.op == "If":  # inputs[1:] are the branch's inputs, by position
                inner = {sub.inputs[i - 1].name for i in hit if 0 < i <= len(sub.inputs)}
            else:  # a Loop / Scan maps its inputs its own way: every body input, to be safe
                inner = set(sub.input_names)
            if inner and _indexes(sub, inner):
                return True
        tainted.update(n for n in node.outputs if n)
    return False


def control_inputs(graph: Graph) -> list[str]:
    """The graph's inputs specialised on their values (see the module doc)."""
    names = []
    for v in graph.inputs:
        t = v.type
        if t.sequence or t.dtype not in _CONTROL_DTYPES or t.shape is None:
            continue
        if not all(isinstance(d, int) for d in t.shape):
            continue
        if int(np.prod(t.shape, dtype=np.int64)) > MAX_CONTROL_ELEMENTS:
            continue
        if not _indexes(graph, {v.name}):
            names.append(v.name)
    return names


class Specialized:
    """The programs of one set of control values: ``runner`` (shape specialisations of
    ``program``) and ``compiled`` (its step programs for ``run``)."""

    def __init__(self, key: tuple, values: dict[str, np.ndarray], general: GraphProgram) -> None:
        self.key = key
        self.values = values
        self.program = GraphProgram(general.graph.with_constants(values), reuse=general)
        self.runner = ShapeSpecializer(self.program)
        self.compiled = CompiledRuns()

    def rest(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` without the inputs this program has as constants."""
        return {n: a for n, a in feeds.items() if n not in self.values}

    def __repr__(self) -> str:
        vals = ", ".join(f"{n}={v.tolist()!r}" for n, v in self.values.items())
        return f"Specialized({vals})"


class ValueSpecializer:
    """Per set of control-input values, the program with those values fixed (see the module
    doc). Thread-safe."""

    def __init__(self, program: GraphProgram, names: list[str]) -> None:
        self.program = program
        self.names = list(names)
        self.enabled = bool(self.names)
        self.compiles = 0
        self._cache: OrderedDict[tuple, Specialized | None] = OrderedDict()
        self._seen: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def specialized(self) -> list[Specialized]:
        """The value sets with a program now (most recently used last)."""
        with self._lock:
            return [s for s in self._cache.values() if s is not None]

    def _key(self, feeds: Mapping[str, np.ndarray]) -> tuple | None:
        key = []
        for name in self.names:
            a = feeds[name]
            if a.size > MAX_CONTROL_ELEMENTS:  # (declared static: checked by the model)
                return None
            key.append((a.dtype.str, a.shape, a.tobytes()))
        return tuple(key)

    def lookup(self, feeds: Mapping[str, np.ndarray], eager: bool = False) -> Specialized | None:
        """The program for the control values in ``feeds`` (checked arrays), or None for the
        general program. ``eager``: compile a value set on its first sight (streams)."""
        if not self.enabled:
            return None
        key = self._key(feeds)
        if key is None:
            return None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if self.compiles >= MAX_COMPILES:
                return None
            if not eager:
                if len(self._seen) >= MAX_SEEN:
                    self._seen.clear()
                self._seen[key] = self._seen.get(key, 0) + 1
                if self._seen[key] < 2:
                    return None
            self.compiles += 1
            self._seen.pop(key, None)
        values = {n: np.array(feeds[n]) for n in self.names}  # (copies: the caller's stay its)
        try:
            entry: Specialized | None = Specialized(key, values, self.program)
        except LstmInferError:  # e.g. a value that makes a constant shape invalid
            entry = None  # the general program runs it and names what is wrong
        with self._lock:
            self._cache[key] = entry
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry
