"""The stack lowering's former home, kept so that existing imports work.

The lowering of an exported ONNX graph into a ModelSpec now lives in the package
:mod:`lstm_infer.importers.onnx`: :mod:`~lstm_infer.importers.onnx.stack` (``GraphLowering``,
``lower_graph``), with its op families ``ops_layout``, ``ops_dense`` and ``ops_recurrent``, the
unrolled-RNN recognition ``unrolled``, the assembly ``assemble`` and the values they share,
``values``. This module re-exports the names code imported from here.
"""

from __future__ import annotations

from lstm_infer.importers.onnx.stack import OPS, GraphLowering, lower_graph
from lstm_infer.importers.onnx.values import MAX_CONSTANT_ELEMENTS, Dim

__all__ = ["MAX_CONSTANT_ELEMENTS", "OPS", "Dim", "GraphLowering", "lower_graph"]
