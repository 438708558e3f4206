"""Compile a model graph into something that runs: constant folding, per-node preparation
(packed weights, compiled recurrent layers) and the whole-sequence program."""
