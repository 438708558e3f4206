"""Graph rewrites run when a model graph is compiled (each pass: Graph in, Graph out)."""
