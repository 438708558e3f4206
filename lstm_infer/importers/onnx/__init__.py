"""ONNX importers: a ModelProto as a model graph, node for node; the stack pass over it.

- ``proto``: loading a model (path, bytes or ModelProto), its external data read safely from
  the model's folder, tensor decoding; every path below starts here.
- ``load``: :func:`~lstm_infer.importers.onnx.load.load_onnx`, the fastest thing that runs a
  model: the fused recurrent stack where the graph is one, else the graph node for node.
- ``lower``: the node-for-node lowering into a model graph (``lower.graph_from_onnx``).
- ``stack``: the stack pass's walker (``stack.lower_graph``), which reads a model graph (the
  lowering's output, or any ``lstm_infer.graph.Graph``) as embedding -> recurrent layers ->
  dense head into a ModelSpec: an abstract interpretation with one module per op family,
  each with its ``OPS`` table (``ops_layout``, ``ops_dense``, ``ops_recurrent``), the
  recognition of RNNs unrolled over time (``unrolled``), the assembly of the ModelSpec
  (``assemble``), the values they share (``values``) and the walker's state and constant
  folding by the op registry (``base``). ``lstm_infer.onnx_import.stack_spec`` is the pass.
"""
