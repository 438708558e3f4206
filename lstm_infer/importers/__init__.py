"""Importers: each turns one source format into the model graph (``lstm_infer.graph``)."""
