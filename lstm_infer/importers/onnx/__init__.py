"""ONNX importers: a ModelProto as a model graph, node for node, or as a recurrent stack.

- ``proto``: loading a model (path, bytes or ModelProto), its external data read safely from
  the model's folder, tensor decoding; every path below starts here.
- ``load``: :func:`~lstm_infer.importers.onnx.load.load_onnx`, the fastest thing that runs a
  model: the fused recurrent stack where the graph is one, else the graph node for node.
- ``lower``: the node-for-node lowering into a model graph (``lower.graph_from_onnx``).
- ``stack``: the stack lowering into a ModelSpec (``stack.lower_graph``): an abstract
  interpretation of the graph as embedding -> recurrent layers -> dense head, with one module
  per op family, each with its ``OPS`` table (``ops_layout``, ``ops_dense``,
  ``ops_recurrent``), the recognition of RNNs unrolled over time (``unrolled``), the assembly
  of the ModelSpec (``assemble``), the values they share (``values``) and the lowering's
  state (``base``).
"""
