"""The onnx package's own RNN / LSTM / GRU node conformance cases, through engine and reference.

The cases come from ``onnx.backend.test.case.node.collect_testcases()`` (the same models and
data as the onnx backend test suite); expected outputs are the onnx project's. Each case is
checked at its own tolerance (``rtol``/``atol`` on the TestCase) and, in addition, to within
1e-5 absolute -- the engine's accuracy target.

The shipped models feed W/R/B/P as graph inputs. The engine is checked twice: with those
weights turned into initializers (numerics, on every ISA), and on the model exactly as shipped
(weights supplied with the feeds at run time).
"""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import onnx
import pytest
from conftest import require
from onnx import helper, numpy_helper
from onnx.backend.test.case.test_case import TestCase
from onnx_builders import inputs_to_initializers
from reference import INPUT_NAMES, OUTPUT_NAMES, run_reference

CASE_NAME = re.compile(r"test_(lstm|gru|rnn|simple_rnn)_")
MAX_ABS_ERROR = 1e-5
MIN_CASE_COUNT = 18  # what onnx 1.23 ships; fewer means cases silently went missing


@functools.cache
def recurrent_cases() -> tuple[TestCase, ...]:
    """Return the onnx node test cases of the recurrent operators (collected once per session)."""
    from onnx.backend.test.case.node import collect_testcases  # slow: imports every case

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return tuple(c for c in cases if CASE_NAME.match(c.name) and c.kind == "node")


def _case_ids() -> list[str]:
    return [c.name for c in recurrent_cases()]


def _case(name: str) -> TestCase:
    return next(c for c in recurrent_cases() if c.name == name)


def _node(case: TestCase) -> onnx.NodeProto:
    (node,) = case.model.graph.node
    return node


def _graph_inputs(case: TestCase) -> dict[str, np.ndarray]:
    """Graph input name -> value from the case's (single) data set, plus initializers."""
    inputs, _ = case.data_sets[0]
    graph = case.model.graph
    values = {vi.name: np.asarray(v) for vi, v in zip(graph.input, inputs, strict=True)}
    values.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    return values


def _expected(case: TestCase) -> dict[str, np.ndarray]:
    _, outputs = case.data_sets[0]
    return {vi.name: np.asarray(v) for vi, v in zip(case.model.graph.output, outputs, strict=True)}


def _check(name: str, got: np.ndarray, expected: np.ndarray, case: TestCase) -> None:
    got = np.asarray(got)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol, err_msg=name)
    err = float(np.abs(got.astype(np.float64) - expected).max()) if got.size else 0.0
    assert err <= MAX_ABS_ERROR, f"{name}: max abs error {err:.3g} > {MAX_ABS_ERROR}"


def test_expected_number_of_cases() -> None:
    """The onnx package ships the recurrent conformance cases we expect."""
    names = _case_ids()
    assert len(names) >= MIN_CASE_COUNT, names
    assert {_node(_case(n)).op_type for n in names} == {"RNN", "GRU", "LSTM"}


@pytest.mark.parametrize("name", _case_ids())
def test_reference_passes_conformance_case(name: str) -> None:
    """tests/reference.py reproduces the onnx project's expected outputs."""
    case = _case(name)
    node = _node(case)
    values = _graph_inputs(case)
    formal_inputs = {
        formal: values[tensor]
        for formal, tensor in zip(INPUT_NAMES[node.op_type], node.input, strict=False)
        if tensor
    }
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ref = run_reference(node.op_type, formal_inputs, attrs)
    expected = _expected(case)
    for formal, tensor in zip(OUTPUT_NAMES[node.op_type], node.output, strict=False):
        if tensor:
            _check(tensor, ref[formal], expected[tensor], case)


WEIGHT_INPUTS = {"W", "R", "B", "P"}


def _frozen(case: TestCase) -> onnx.ModelProto:
    """Return the case's model with its W/R/B/P graph inputs turned into initializers."""
    node = _node(case)
    graph_inputs = {vi.name for vi in case.model.graph.input}
    weights = [
        tensor
        for formal, tensor in zip(INPUT_NAMES[node.op_type], node.input, strict=False)
        if formal in WEIGHT_INPUTS and tensor in graph_inputs
    ]
    return inputs_to_initializers(case.model, _graph_inputs(case), weights)


def _run_engine(model: onnx.ModelProto, case: TestCase) -> None:
    lstm_infer = require("lstm_infer")
    graph_inputs = {vi.name for vi in model.graph.input}
    feeds = {k: v for k, v in _graph_inputs(case).items() if k in graph_inputs}
    outs = lstm_infer.load(model).run(feeds)
    expected = _expected(case)
    assert set(outs) >= set(expected), f"outputs {sorted(outs)} lack {sorted(expected)}"
    for tensor, value in expected.items():
        _check(f"{tensor} [{lstm_infer.isa()}]", outs[tensor], value, case)


@pytest.mark.parametrize("name", _case_ids())
def test_engine_passes_conformance_case(name: str, isa: str) -> None:
    """lstm_infer.load(model).run(feeds) matches the expected outputs, on every ISA."""
    case = _case(name)
    _run_engine(_frozen(case), case)


@pytest.mark.parametrize("name", _case_ids())
def test_engine_runs_conformance_model_as_shipped(name: str) -> None:
    """The unmodified model, weights fed at run time as the onnx backend suite does."""
    case = _case(name)
    _run_engine(case.model, case)
