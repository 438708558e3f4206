"""GraphModel: a whole model graph (front end, recurrent core, head) compiled to run.

The counterpart of :class:`lstm_infer.Model` for graphs that are more than a recurrent stack:
the same ``inputs`` / ``outputs`` / ``run`` API, ORT-style names. ``stream`` carries the state
of graphs that take and return it (``lstm_infer.graph_stream``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_infer._spec import TensorInfo
from lstm_infer.cells import CELLS
from lstm_infer.cells.base import WEIGHT_FORMAT
from lstm_infer.compile.program import GraphProgram
from lstm_infer.compile.specialize import ShapeSpecializer
from lstm_infer.compile.specialize_values import Specialized, ValueSpecializer, control_inputs
from lstm_infer.compile.step_program import CompiledRuns
from lstm_infer.errors import (
    InputError,
    InputTypeError,
    ModelFormatError,
    StreamError,
    UnsupportedModelError,
)
from lstm_infer.graph import Graph, Node, TensorType
from lstm_infer.graph_types import InferredTypes, infer_types
from lstm_infer.ops.base import MAX_RANK
from lstm_infer.ops.recurrent import RECURRENT_OPS, WEIGHT_FORMAT_ATTR
from lstm_infer.ops.sequence import sequence_names
from lstm_infer.quantize import canonical_format

# Feed dtypes converted without loss of meaning to what the graph declares.
_CONVERTIBLE = {
    "float32": "fiub",
    "float64": "fiub",
    "float16": "fiub",
    "int64": "iub",
    "int32": "iub",
    "bool": "b",
}


_SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}


def _quantized(graph: Graph, fmt: str) -> tuple[Graph, int]:
    """A copy of ``graph`` whose recurrent layers and cells (also inside If / Loop bodies)
    carry weight format ``fmt``, and how many nodes it marked."""
    count = 0

    def mark(node: Node) -> Node:
        nonlocal count
        attrs = {}
        for k, v in node.attrs.items():
            if isinstance(v, Graph):
                v, n = _quantized(v, fmt)
                count += n
            attrs[k] = v
        if node.op in CELLS or node.op in RECURRENT_OPS:
            count += 1
            # cells spell the format as numpy does; the recurrent ops as the stack's quantize
            key, value = (
                (WEIGHT_FORMAT, fmt) if node.op in CELLS else (WEIGHT_FORMAT_ATTR, _SHORT[fmt])
            )
            attrs.pop(key, None)
            if fmt != "float32":
                attrs[key] = value
        return Node(node.op, list(node.inputs), list(node.outputs), attrs, node.name)

    nodes = [mark(n) for n in graph.nodes]
    copy = Graph(
        list(graph.inputs),
        list(graph.outputs),
        nodes,
        dict(graph.initializers),
        dict(graph.value_types),
    )
    return copy, count


def _shape_of(t: TensorType) -> tuple[int | str, ...]:
    if t.shape is None:
        return ()
    return tuple(d if d is not None else "?" for d in t.shape)


def _refuse_sequence_io(graph: Graph) -> None:
    """A model's inputs and outputs are tensors: one declared (or computed as) a sequence of
    tensors is refused, naming it (sequences stay inside a call)."""
    for v in graph.inputs:
        if v.type.sequence:
            raise UnsupportedModelError(
                f"graph input {v.name!r} is a sequence of tensors; model inputs must be tensors"
            )
    seqs = sequence_names(graph)
    for v in graph.outputs:
        if v.type.sequence or v.name in seqs:
            raise UnsupportedModelError(
                f"graph output {v.name!r} is a sequence of tensors; model outputs must be "
                "tensors (concatenate or stack it in the graph: ConcatFromSequence)"
            )


class GraphModel:
    """A model graph compiled for this CPU. Build one with :func:`lstm_infer.load`."""

    def __init__(self, graph: Graph, source: str = "") -> None:
        _refuse_sequence_io(graph)
        self._program = GraphProgram(graph)
        self._graph = self._program.graph
        self.source = source
        self._inputs = {v.name: v.type for v in self._graph.inputs}
        self._output_names = graph.output_names
        self.threads = 1
        self._runner = ShapeSpecializer(self._program)
        self._compiled = CompiledRuns()
        # silero-VAD's sr: programs per value of the scalar control inputs
        self._values = ValueSpecializer(self._program, control_inputs(self._graph))
        self._types = infer_types(self._graph)

    @property
    def tensor_types(self) -> dict[str, TensorType]:
        """The inferred type of every tensor of the compiled graph (:attr:`graph`): inputs,
        constants and each node's outputs, from the declared input types
        (:mod:`lstm_infer.graph_types`): concrete dims where known, the inputs' symbolic
        names where ops carry them, None where they cannot be known."""
        return self._types.types

    @property
    def type_inference(self) -> InferredTypes:
        """The whole inference result: :attr:`tensor_types`, the nodes whose inference failed
        (their outputs unknown; loading never fails for it) and stale declared types."""
        return self._types

    @property
    def specialize_shapes(self) -> bool:
        """Whether each new set of input shapes gets a program specialised to it (the shape
        glue folded; see :mod:`lstm_infer.compile.specialize`). Default True."""
        return self._runner.enabled

    @specialize_shapes.setter
    def specialize_shapes(self, value: bool) -> None:
        self._runner.enabled = bool(value)

    @property
    def specialize_values(self) -> bool:
        """Whether the graph's scalar control inputs (integer / bool inputs of at most a few
        elements that no op reads as indices: silero-VAD's ``sr``) get a program per value,
        compiled as if ``fixed_inputs`` had fixed them (see
        :mod:`lstm_infer.compile.specialize_values`). Default True where there are any."""
        return self._values.enabled

    @specialize_values.setter
    def specialize_values(self, value: bool) -> None:
        self._values.enabled = bool(value) and bool(self._values.names)

    @property
    def control_inputs(self) -> list[str]:
        """The inputs :attr:`specialize_values` specialises on."""
        return list(self._values.names)

    @property
    def compile_runs(self) -> bool:
        """Whether ``run`` at input shapes seen before (one thread) executes as one C step
        program (:class:`lstm_infer.compile.step_program.CompiledRuns`). Default True."""
        return self._compiled.enabled

    @compile_runs.setter
    def compile_runs(self, value: bool) -> None:
        self._compiled.enabled = bool(value)

    @property
    def graph(self) -> Graph:
        """The compiled graph (constants folded, dead nodes removed)."""
        return self._graph

    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(n, _shape_of(t), t.dtype) for n, t in self._inputs.items()]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(v.name, _shape_of(v.type), v.type.dtype) for v in self._graph.outputs]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def _feed(self, name: str, value: Any, t: TensorType) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind not in _CONVERTIBLE.get(t.dtype, arr.dtype.kind):
            raise InputTypeError(f"input {name!r} must be {t.dtype}, got {arr.dtype}")
        arr = arr.astype(t.dtype, copy=False)  # (ascontiguousarray would make 0-D 1-D)
        if not arr.flags.c_contiguous:
            arr = arr.copy()
        if arr.ndim > MAX_RANK:
            raise InputError(f"input {name!r} has rank {arr.ndim}; at most {MAX_RANK}")
        if t.shape is not None:
            if arr.ndim != len(t.shape):
                raise InputError(
                    f"input {name!r} must have rank {len(t.shape)} (shape "
                    f"{_shape_of(t)}), got shape {arr.shape}"
                )
            for axis, (want, got) in enumerate(zip(t.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input {name!r} must have size {want} on axis {axis} (shape "
                        f"{_shape_of(t)}), got shape {arr.shape}"
                    )
        return arr

    def run(
        self,
        feeds: Mapping[str, Any],
        output_names: Sequence[str] | None = None,
        *,
        threads: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the whole graph.

        Parameters
        ----------
        feeds : mapping of input name -> array
            Every graph input, converted to its declared dtype (float64 -> float32, int32 ->
            int64, ...) and checked against its declared static dims.
        output_names : sequence of str, optional
            Subset of outputs to return (default: all).
        threads : int, optional
            Threads (and BLAS threads) for this call; default :attr:`threads`.

        Returns
        -------
        dict of output name -> array
        """
        if not isinstance(feeds, Mapping):
            raise InputTypeError(f"feeds must be a dict of name -> array, got {type(feeds)}")
        unknown = sorted(set(feeds) - set(self._inputs))
        if unknown:
            raise InputError(
                f"unknown input name(s) {unknown}; the model's inputs are {self.input_names}"
            )
        missing = [n for n in self._inputs if feeds.get(n) is None]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        wanted = list(output_names) if output_names is not None else self.output_names
        bad = [n for n in wanted if n not in self._output_names]
        if bad:
            raise InputError(f"unknown output name(s) {bad}; outputs are {self.output_names}")
        if threads is None:
            threads = self.threads
        if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        arrays = {n: self._feed(n, feeds[n], t) for n, t in self._inputs.items()}
        runner, compiled = self._runner, self._compiled
        spec = self._values.lookup(arrays) if self._values.enabled else None
        if spec is not None:
            arrays = spec.rest(arrays)
            runner, compiled = self._synced(spec)
        if threads == 1 and runner.enabled:
            out = compiled.run(runner.program_for, arrays, wanted)
            if out is not None:
                return out
        return runner.run(arrays, wanted, int(threads))

    def _synced(self, spec: Specialized) -> tuple[ShapeSpecializer, CompiledRuns]:
        """``spec``'s runner and compiled runs, switched on and off as the model's are."""
        spec.runner.enabled = self._runner.enabled
        spec.compiled.enabled = self._compiled.enabled
        return spec.runner, spec.compiled

    def _value_spec(self, feeds: Mapping[str, np.ndarray]) -> Specialized | None:
        """For a stream's step at ``feeds`` (checked arrays): the programs specialised to its
        control values (compiled on first sight), or None (the general program)."""
        return self._values.lookup(feeds, eager=True) if self._values.enabled else None

    def stream(
        self,
        batch_size: int = 1,
        state_map: Mapping[str, str] | None = None,
        compile: bool = True,
        time_axis: int | None = None,
    ) -> Any:
        """A session over this graph that keeps its state between calls.

        * A graph that takes and returns its state (silero-VAD's ``state`` -> ``stateN``,
          ``h0``/``c0`` -> ``hn``/``cn``; pairs found by name and shape, or ``state_map``:
          state input -> state output) gives a
          :class:`~lstm_infer.graph_stream.GraphStream`: each step one call on a chunk, the
          state outputs carried into the next call's inputs; ``batch_size`` sizes the zero
          initial state.
        * Any other graph streams along its input's time axis
          (:class:`~lstm_infer.time_stream.TimeStream`: recurrent states and causal
          convolution histories carried; ``time_axis`` names the input's axis, else the
          first symbolic one the graph streams along). A graph that needs future frames
          raises StreamError naming the node.

        * A loaded attention decoder (lstm_infer.cells.attention_decoder) gives a
          :class:`~lstm_infer.cells.decoder_stream.DecoderStream`:
          ``reset({"memory": M, "memory_lengths": L})`` then ``step(y)``.

        Each step runs as one C step program (``compile=False``, state-carrying graphs
        only: op by op, as ``run`` does).
        """
        from lstm_infer.cells.decoder_stream import DecoderStream, decoder_node
        from lstm_infer.graph_stream import GraphStream, find_state_pairs
        from lstm_infer.time_stream import TimeStream

        if decoder_node(self._graph) is not None:  # its memory is set by reset(), once
            return DecoderStream(self)
        if state_map is None and not find_state_pairs(self):
            if not compile:
                raise StreamError("a time-axis stream runs only as a compiled step program")
            return TimeStream(self, time_axis)
        return GraphStream(self, batch_size, state_map, compile)

    def generate(
        self,
        memory: Any,
        memory_lengths: Any = None,
        *,
        bos: int,
        eos: int | None = None,
        max_steps: int = 100,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> np.ndarray:
        """Decoding of a loaded attention decoder with ``embedding.weight`` and a head
        (lstm_infer.cells.decoder_stream.generate), the whole loop in one C call.

        Parameters
        ----------
        memory : array (S, B, Dm) (batch_first: (B, S, Dm))
        memory_lengths : array (B,) of ints in [1, S], optional (default: all valid)
        bos : int
            The token whose embedding is the first step's input.
        eos : int, optional
            A row that emits it stops: its later tokens are ``eos``; decoding ends early
            once every row has. None: always ``max_steps`` steps.
        max_steps : int
        temperature : float
            0: each token the argmax of the head's logits; > 0: drawn from
            softmax(logits / temperature).
        seed : int
            The sampler's seed (splitmix64, one draw per running row and step, rows in
            order; src_c/cell_attention_decoder.h): the same seed, the same tokens.

        Returns
        -------
        int64 array (B, steps), steps <= max_steps: each step's token.
        """
        from lstm_infer.cells.decoder_stream import generate

        return generate(
            self, memory, memory_lengths, bos=bos, eos=eos, max_steps=max_steps,
            temperature=temperature, seed=seed,
        )  # fmt: skip

    def _program_for(
        self, feeds: Mapping[str, np.ndarray], spec: Specialized | None = None
    ) -> GraphProgram:
        """The program specialised to the shapes of ``feeds`` (checked arrays); with ``spec``
        (from :meth:`_value_spec`), of its value set, ``feeds`` then without its inputs."""
        if spec is None:
            return self._runner.program_for(feeds)
        return self._synced(spec)[0].program_for(feeds)

    def quantize(self, weight_format: str) -> GraphModel:
        """A copy whose recurrent layers (LSTM / GRU / RNN nodes) and cells (LayerNormLSTM,
        ...) multiply bf16 or int8 weights, as :meth:`lstm_infer.Model.quantize` does for a
        stack: ``"bf16"`` rounds each weight to bfloat16, ``"int8"`` each output row to
        [-127, 127] with its own scale (activations quantized per row and step). The other
        ops keep float32. ``"fp32"`` gives float32 layers back (the weights are kept).

        Raises
        ------
        ModelFormatError
            For an unknown format, or a graph with no recurrent layer or cell.
        """
        fmt = canonical_format(weight_format)
        graph, count = _quantized(self._graph, fmt)
        if count == 0:
            raise ModelFormatError("quantize: the graph has no recurrent layer or cell to quantize")
        model = GraphModel(graph, self.source)
        model.threads = self.threads
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the compiled graph (constants folded) in the native format, version 2;
        ``lstm_infer.load(path)`` gives the same model back."""
        from lstm_infer.native_graph import save_graph

        save_graph(self._graph, path, self.source)

    def __repr__(self) -> str:
        ops = sorted({n.op for n in self._graph.nodes})
        return f"GraphModel({len(self._graph.nodes)} nodes: {', '.join(ops)})"
