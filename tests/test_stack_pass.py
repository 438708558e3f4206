"""The fused path is a case of the model graph: a pass recognises recurrent stacks.

Graphs built here with the graph API (no ONNX file, no importer) are read by
``lstm_infer.onnx_import.stack_spec``; the fused Model it makes and the node-for-node
GraphModel of the same graph are held against the float64 numpy reference. Graphs that are
not stacks are refused by the pass naming the node, and run node for node.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import lstm_ref

from lstm_infer.errors import UnsupportedModelError
from lstm_infer.graph import Graph, Node, TensorType, ValueInfo
from lstm_infer.graph_model import GraphModel
from lstm_infer.model import Model
from lstm_infer.onnx_import import stack_spec

T, B, F, H, K = 7, 3, 5, 8, 4


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def w(*shape: int) -> np.ndarray:
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)

    return {
        "W": w(1, 4 * H, F),
        "R": w(1, 4 * H, H),
        "B": w(1, 8 * H),
        "head_w": w(H, K),
        "head_b": w(K),
        "axes": np.array([1], np.int64),
    }


def _stack_graph(consts: dict[str, np.ndarray], tail: list[Node] | None = None) -> Graph:
    """x (T, B, F) -> LSTM -> Squeeze(directions) -> MatMul + Add -> Tanh [-> tail]."""
    nodes = [
        Node("LSTM", ["x", "W", "R", "B"], ["y", "h", "c"], {"hidden_size": H}, "lstm"),
        Node("Squeeze", ["y", "axes"], ["y3"], {}, "squeeze"),
        Node("MatMul", ["y3", "head_w"], ["logits0"], {}, "head_matmul"),
        Node("Add", ["logits0", "head_b"], ["logits1"], {}, "head_add"),
        Node("Tanh", ["logits1"], ["out"], {}, "head_tanh"),
        *(tail or []),
    ]
    output = nodes[-1].outputs[0]
    return Graph(
        [ValueInfo("x", TensorType("float32", ("time", "batch", F)))],
        [ValueInfo(output, TensorType("float32", None))],
        nodes,
        dict(consts),
    )


def _reference(consts: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    y, _, _ = lstm_ref(x.astype(np.float64), consts["W"], consts["R"], consts["B"])
    return np.tanh(y[:, 0] @ consts["head_w"].astype(np.float64) + consts["head_b"])


def test_a_graph_built_without_onnx_is_recognised_as_a_stack() -> None:
    rng = np.random.default_rng(20261207)
    consts = _weights(rng)
    graph = _stack_graph(consts)
    spec = stack_spec(graph)
    assert len(spec.layers) == 1 and spec.head is not None
    fused = Model(spec)
    node_for_node = GraphModel(graph)
    x = rng.standard_normal((T, B, F)).astype(np.float32)
    want = _reference(consts, x)
    np.testing.assert_allclose(fused.run({"x": x})["out"], want, atol=1e-5)
    np.testing.assert_allclose(node_for_node.run({"x": x})["out"], want, atol=1e-5)
    # The fused path streams: one step at a time gives the whole run's rows.
    stream = fused.stream(batch_size=B)
    steps = np.stack([stream.step(x[t]) for t in range(T)])
    np.testing.assert_allclose(steps, want, atol=1e-5)


def test_a_constant_subgraph_is_folded_by_the_registry_ops() -> None:
    # The head bias comes out of Range -> Cast -> Mul (constants only): the pass evaluates
    # it with the ops' own implementations.
    rng = np.random.default_rng(7)
    consts = _weights(rng)
    consts.update(
        start=np.array(0, np.int64),
        limit=np.array(K, np.int64),
        delta=np.array(1, np.int64),
        scale=np.array(0.25, np.float32),
    )
    consts.pop("head_b")
    graph = _stack_graph(consts)
    graph.nodes[:0] = [
        Node("Range", ["start", "limit", "delta"], ["ramp"], {}, "ramp"),
        Node("Cast", ["ramp"], ["ramp_f"], {"to": 1}, "cast"),
        Node("Mul", ["ramp_f", "scale"], ["head_b"], {}, "bias"),
    ]
    x = rng.standard_normal((T, B, F)).astype(np.float32)
    want = _reference({**consts, "head_b": 0.25 * np.arange(K)}, x)
    np.testing.assert_allclose(Model(stack_spec(graph)).run({"x": x})["out"], want, atol=1e-5)


def test_a_constant_past_the_bound_is_refused_before_it_is_made() -> None:
    rng = np.random.default_rng(8)
    consts = _weights(rng)
    consts["huge"] = np.array([1 << 20, 1 << 20], np.int64)
    graph = _stack_graph(consts)
    graph.nodes[:0] = [Node("ConstantOfShape", ["huge"], ["zeros"], {}, "bomb")]
    graph.nodes[-1] = Node("Add", ["logits1", "zeros"], ["out"], {}, "head_tanh")
    with pytest.raises(UnsupportedModelError, match="'bomb' \\(ConstantOfShape\\)"):
        stack_spec(graph)


def test_a_graph_that_is_no_stack_is_refused_naming_the_node_and_runs_node_for_node() -> None:
    rng = np.random.default_rng(9)
    consts = _weights(rng)
    consts["gamma"] = rng.uniform(0.5, 1.5, K).astype(np.float32)
    consts["beta"] = rng.uniform(-0.5, 0.5, K).astype(np.float32)
    tail = [Node("LayerNormalization", ["out", "gamma", "beta"], ["normed"], {}, "norm")]
    graph = _stack_graph(consts, tail)
    with pytest.raises(UnsupportedModelError, match="'norm' \\(LayerNormalization\\)"):
        stack_spec(graph)
    x = rng.standard_normal((T, B, F)).astype(np.float32)
    z = _reference(consts, x)
    mean = z.mean(-1, keepdims=True)
    want = (z - mean) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) * consts["gamma"] + consts["beta"]
    np.testing.assert_allclose(GraphModel(graph).run({"x": x})["normed"], want, atol=1e-4)


def test_control_flow_is_no_stack() -> None:
    rng = np.random.default_rng(10)
    consts = _weights(rng)
    consts["cond"] = np.array(True)
    branch = Graph([], [ValueInfo("b_out", TensorType("float32", None))], [], {})
    tail = [Node("If", ["cond"], ["picked"], {"then_branch": branch, "else_branch": branch})]
    graph = _stack_graph(consts, tail)
    with pytest.raises(UnsupportedModelError, match="control flow"):
        stack_spec(graph)
