"""Accuracy of each ISA's vectorised sigmoid and tanh over a dense grid, against float64.

The bounds asserted here are the ones written above the approximations in
src_c/simd_kernels_template.h (measured: sigmoid 8.9e-8, tanh 1.8e-7), with a little headroom.
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_infer import _engine

GRID = np.concatenate(
    [
        np.linspace(-30.0, 30.0, 2_000_001),
        np.linspace(-200.0, 200.0, 40_001),
        [-1e30, 1e30, -88.7, 88.7, -87.0, 88.0, 0.0, 1e-30, -1e-30],
    ]
).astype(np.float32)
EXACT = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700))),
    "tanh": np.tanh,
}
BOUND = {"sigmoid": 1.0e-7, "tanh": 2.0e-7}


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_activation_error_within_documented_bound(isa: str, kind: str) -> None:
    y = _engine.activation_array(kind, GRID, isa)
    err = np.abs(y.astype(np.float64) - EXACT[kind](GRID.astype(np.float64)))
    assert np.all(np.isfinite(y))
    assert err.max() <= BOUND[kind], f"{isa} {kind}: max abs error {err.max():.3g}"


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_activation_saturates_and_propagates_nan(isa: str, kind: str) -> None:
    x = np.array([-np.inf, np.inf, np.nan, -50.0, 50.0], np.float32)
    y = _engine.activation_array(kind, x, isa)
    lo = 0.0 if kind == "sigmoid" else -1.0
    np.testing.assert_allclose(y[[0, 3]], [lo, lo], atol=1e-7)
    np.testing.assert_allclose(y[[1, 4]], [1.0, 1.0], atol=1e-7)
    assert np.isnan(y[2])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 33])
def test_activation_tails_of_every_length(isa: str, n: int) -> None:
    """Partial vectors (masked loads/stores) compute the same as full ones."""
    x = np.linspace(-4, 4, n).astype(np.float32)
    y = _engine.activation_array("tanh", x, isa)
    assert y.shape == (n,)
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), atol=2e-7)
