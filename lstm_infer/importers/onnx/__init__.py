"""ONNX -> model graph, node for node (``lower.graph_from_onnx``)."""
