"""Accuracy of each ISA's vectorised sigmoid and tanh over a dense grid, against float64, and
of the attention decoders' energies built on that tanh (tanh_energies: sum_i v_i tanh(q_i + k_ji)).

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


def _energies_float64(q, k, v) -> np.ndarray:
    z = k.astype(np.float64) + (0.0 if q is None else q.astype(np.float64))
    return np.tanh(z) @ v.astype(np.float64)


@pytest.mark.parametrize("width", [1, 7, 8, 9, 15, 16, 17, 33, 100, 256])
def test_tanh_energies_against_float64(isa: str, width: int, rng) -> None:
    n = 11
    wide = rng.standard_normal((n, width + 5)).astype(np.float32) * 2.0
    k = wide[:, 3 : 3 + width]  # rows further apart than A, unaligned start
    q = rng.standard_normal(width).astype(np.float32)
    v = rng.standard_normal(width).astype(np.float32)
    for qq in (q, None):
        e = _engine.tanh_energies(qq, k, v, isa)
        want = _energies_float64(qq, k, v)
        # each term within tanh's bound (scaled by |v|), plus float32 sums of width terms
        bound = 2.0e-7 * np.abs(v).sum() + 1e-6 * np.abs(np.tanh(k.astype(np.float64)) @ v)
        np.testing.assert_array_less(np.abs(e - want), bound + 1e-6)
    # the same values whichever table: a kernel of the active table agrees with the scalar
    # reference within the same bound
    ref = _engine.tanh_energies(q, k, v, "scalar")
    np.testing.assert_allclose(_engine.tanh_energies(q, k, v, isa), ref, atol=1e-5, rtol=0)


def test_tanh_energies_saturates_propagates_nan_and_checks_arguments(isa: str) -> None:
    A = 20
    v = np.ones(A, np.float32)
    k = np.zeros((3, A), np.float32)
    k[0] = 1e30
    k[1] = -1e30
    k[2, 5] = np.nan
    e = _engine.tanh_energies(None, k, v, isa)
    assert e[0] == pytest.approx(A) and e[1] == pytest.approx(-A) and np.isnan(e[2])
    assert _engine.tanh_energies(None, np.zeros((0, A), np.float32), v, isa).shape == (0,)
    with pytest.raises(ValueError, match="q must be"):
        _engine.tanh_energies(np.zeros(A - 1, np.float32), k, v, isa)
    with pytest.raises(ValueError, match="v must be"):
        _engine.tanh_energies(None, k, v.astype(np.float64), isa)
    with pytest.raises(ValueError, match="k must be"):
        _engine.tanh_energies(None, np.zeros((3, A, 1), np.float32), v, isa)
    with pytest.raises(ValueError, match="k must be"):
        _engine.tanh_energies(None, np.zeros((A, 3), np.float32).T, v[:3], isa)
    with pytest.raises(TypeError):  # not a crash: v and k are required arrays
        _engine.tanh_energies(None, k, None, isa)
    with pytest.raises(TypeError):
        _engine.tanh_energies(None, None, v, isa)
