"""One step of an LSTM or GRU cell on its own: a streaming model's cell, run once per call.

A model that processes one chunk per call (silero-vad's ``op18_ifless`` export, a module
calling ``nn.LSTMCell`` once with the state passed in and returned) holds a single unrolled
step whose input ``x_t`` (B, I) is any 2-D tensor (an encoder's output, not a timestep of a
sequence) and whose states come from anywhere (graph inputs, a packed (2, B, H) state split
by Gather / Slice / Squeeze). The step is found by the same equations as a chain's
(:mod:`lstm_infer.passes.cell_steps`); this module decides which leaf is the input and which
the state and reads the ONNX weights. :mod:`lstm_infer.passes.reroll_cells` then writes it as
an ONNX ``LSTM`` / ``GRU`` node over a 1-step sequence ``Unsqueeze(x_t, 0)``, its states
``Unsqueeze(h0, 0)`` (and ``c0``), and ``Squeeze`` of ``Y_h`` / ``Y_c`` where the graph read
``h_1`` / ``c_1``. It runs only on steps no chain took (nor could take: a step with a
predecessor or successor among the steps is left to the chain rules).

For one step the choice of input and state leaf does not change the result (both enter the
gates affinely: ``W x + R h``); what it must respect is that the state is (B, H). Both must be
known 2-D tensors (a step over a 3-D batch of vectors, spelled with MatMul, broadcasts the
same equations but is not one LSTM step).
"""

from __future__ import annotations

from lstm_infer.passes.cell_algebra import ZERO, CellAlgebra
from lstm_infer.passes.cell_steps import CellStep, onnx_weights
from lstm_infer.passes.step_inputs import declared_shape

# Ops that take a piece of a packed state: the tensor a state was read from is their input.
_PIECES = ("Gather", "Slice", "Squeeze", "Split", "Identity")


def one_step(alg: CellAlgebra, step: CellStep) -> CellStep | None:
    """``step`` (an LSTM / GRU step no chain took) with its input ``x``, state ``h_prev``
    and ONNX weights decided, or None when it cannot be one node. ``step.leaves`` must be
    set (:func:`lstm_infer.passes.cell_steps.leaf_candidates`); ``step`` is modified only
    when it is returned."""
    if step.cell not in ("lstm", "gru") or len(step.leaves) != 2:
        return None
    if step.cell == "lstm":
        if not step.c_prev or step.c_prev in step.leaves or step.h_prev is not None:
            return None
        states = _state_order(alg, step)
    else:
        if step.h_prev not in step.leaves:
            return None
        states = [step.h_prev]
    for h in states:
        (x,) = step.leaves - {h}
        if any(rank(alg, n) != 2 for n in (x, h, step.c_prev) if n and n != ZERO):
            continue
        weights = onnx_weights(alg, step, x, h)
        if weights is not None:
            step.x, step.h_prev, step.weights = x, h, weights
            return step
    return None


def _state_order(alg: CellAlgebra, step: CellStep) -> list[str]:
    """The step's two leaves, the likelier hidden state first: one read from the tensor the
    cell state was read from (a packed state), then by name (either is correct for one step
    when both are (B, H))."""
    c_source = _source(alg, step.c_prev or "")
    return sorted(step.leaves, key=lambda n: (_source(alg, n) != c_source, n))


def _source(alg: CellAlgebra, name: str) -> str:
    """The tensor ``name`` is a piece of (through Gather / Slice / Squeeze / Split)."""
    for _ in range(8):
        node = alg.producer.get(name)
        if node is None or node.op not in _PIECES or not node.inputs:
            break
        name = node.inputs[0]
    return name


def rank(alg: CellAlgebra, name: str, depth: int = 0) -> int | None:
    """``name``'s rank where it is known: declared, a Gemm's operand, a constant, or a
    Gather / Squeeze / Unsqueeze / Slice / Identity of a tensor of known rank."""
    # Not the graph's shape inference (lstm_infer.graph_types.infer_types), on purpose:
    # - that inference runs forward only, from input types to output types. This function
    #   also knows a leaf read by a Gemm is 2-D (Gemm takes only 2-D operands), which
    #   inference leaves unknown when the leaf's rank is not declared: an nn.LSTMCell export
    #   whose x and h inputs have no declared shape (c declared) is re-rolled with this
    #   function and stays unrolled with ranks read from infer_types (tests/
    #   test_reroll_one_step.py::test_a_step_whose_inputs_declare_no_shape_is_still_one_node).
    # - no types exist yet when this pass runs: reroll_cells runs in GraphProgram.__init__
    #   before folding, GraphModel infers its tensor_types afterwards on the compiled graph,
    #   so each round would run infer_types on the whole graph (subgraphs included).
    # - a declared type wins here (declared_shape); in infer_types an inferred rank wins.
    # On the test corpus (tests/test_reroll_*.py, test_silero_vad.py) both agree for every
    # tensor this is asked about.
    value = alg.constant(name)
    if value is not None:
        return value.ndim
    if name in alg.gemm_leaves:
        return 2
    shape = declared_shape(alg, name)
    if shape is not None:
        return len(shape)
    node = alg.producer.get(name)
    if node is None or not node.inputs or depth > 8:
        return None
    inner = rank(alg, node.inputs[0], depth + 1) if node.op in _RANKED else None
    if inner is None:
        return None
    if node.op in ("Slice", "Identity"):
        return inner
    if node.op == "Gather":
        index = alg.constant(node.inputs[1])
        return None if index is None else inner - 1 + index.ndim
    axes = alg.constant(node.inputs[1]) if len(node.inputs) == 2 else None
    if axes is None:
        return None
    return inner - axes.size if node.op == "Squeeze" else inner + axes.size


_RANKED = ("Slice", "Identity", "Gather", "Squeeze", "Unsqueeze")
