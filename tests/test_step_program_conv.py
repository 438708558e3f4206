"""Step programs of the convolution lowerings that take the direct kernel: strided
convolutions (windows copied as rows, then a CONV record) and Conv (+ Relu) -> MaxPool pairs
lowered as bands (lstm_infer.compile.step_lower_conv_pool), on every kernel table, against
onnxruntime and a float64 numpy reference (NaN windows included)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

require("onnxruntime")

from graph_builders import vi  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from test_step_program import _check, _compiled_outputs, model_bytes  # noqa: E402

import lstm_infer  # noqa: E402

F = TensorProto.FLOAT

# Strided along the last dim with 16 positions and more: windows copied as rows, then the
# direct kernel (a CONV record over one row of positions).
STRIDED_DIRECT_CASES = {
    "1d_stft_direct": ((2, 1, 300), (13, 1, 32), dict(strides=[8])),
    "2d_strided_pads": ((2, 3, 9, 21), (7, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_groups_dilation_stride": (
        (1, 4, 10, 30),
        (6, 2, 2, 3),
        dict(group=2, strides=[1, 3], dilations=[2, 1], pads=[0, 1, 0, 2]),
    ),
}


@pytest.mark.parametrize("case", sorted(STRIDED_DIRECT_CASES))
def test_strided_conv_runs_on_the_direct_kernel_every_table(case: str, isa: str, rng) -> None:
    xs, ws, attrs = STRIDED_DIRECT_CASES[case]
    x = rng.standard_normal(xs).astype(np.float32)
    x.flat[::97] = np.nan  # NaN in some windows: it reaches their outputs, as in onnxruntime
    inits = {
        "w": rng.standard_normal(ws).astype(np.float32),
        "b": rng.standard_normal(ws[0]).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)]
    step = _check(nodes, [vi("x", F, xs)], [vi("y", F, None)], {"x": x}, inits, atol=1e-4)
    assert "conv" in step.program.kinds() and "gemm" not in step.program.kinds()


# Conv (+ Relu) -> MaxPool pairs: (x shape, w shape, conv attrs, pool attrs, fused). A pool
# with padding, or windows past the conv's output (ceil_mode), lowers on its own.
CONV_POOL_CASES = {
    "2x2_odd_sizes": ((2, 1, 9, 37), (7, 1, 3, 3), dict(pads=[1, 1, 1, 1]),
                      dict(kernel_shape=[2, 2], strides=[2, 2]), True),
    "3x2_strides_dilation": ((1, 3, 12, 40), (13, 3, 3, 3), dict(dilations=[1, 2]),
                             dict(kernel_shape=[3, 2], strides=[2, 3], dilations=[1, 2]), True),
    "groups_ceil_inside": ((2, 4, 8, 33), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1]),
                           dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), False),
    "ceil_mode_exact": ((1, 2, 8, 34), (6, 2, 3, 3), dict(pads=[1, 1, 1, 1]),
                        dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), True),
    "1d": ((2, 3, 50), (8, 3, 5), dict(pads=[2, 2]), dict(kernel_shape=[3], strides=[2]), True),
    "padded_pool": ((1, 2, 6, 32), (6, 2, 3, 3), {},
                    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]), False),
}  # fmt: skip


def _windows_max(xp: np.ndarray, kernel, strides, dilations, out) -> np.ndarray:
    """max over every window of xp's trailing dims (np.maximum: a NaN in a window wins)."""
    y = np.full(xp.shape[:2] + tuple(out), -np.inf)
    for taps in np.ndindex(*kernel):
        sl = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, s, o in zip(taps, dilations, strides, out)
        )
        y = np.maximum(y, xp[(slice(None), slice(None)) + sl])
    return y


def _conv_relu_max_pool_reference(x, w, b, conv_attrs, pool_attrs) -> np.ndarray:
    """Conv -> Relu -> MaxPool in float64 numpy, term by term (no padding attrs but pads,
    ceil_mode by -inf padding at the end)."""
    nd = x.ndim - 2
    group = conv_attrs.get("group", 1)
    pads = conv_attrs.get("pads", [0] * 2 * nd)
    dil = conv_attrs.get("dilations", [1] * nd)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(pads[:nd], pads[nd:])))
    m, cg = w.shape[:2]
    out = [xp.shape[2 + i] - (w.shape[2 + i] - 1) * dil[i] for i in range(nd)]
    c = np.zeros((x.shape[0], m, *out)) + b.reshape(m, *([1] * nd))
    mg = m // group
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        for taps in np.ndindex(*w.shape[2:]):
            sl = tuple(slice(t * d, t * d + o) for t, d, o in zip(taps, dil, out))
            wt = w[(slice(g * mg, (g + 1) * mg), slice(None)) + taps].astype(np.float64)
            c[:, g * mg : (g + 1) * mg] += np.einsum("mc,nc...->nm...", wt, xg[(...,) + sl])
    c = np.maximum(c, 0)  # NaN stays NaN
    k = pool_attrs["kernel_shape"]
    st = pool_attrs.get("strides", [1] * nd)
    pd = pool_attrs.get("dilations", [1] * nd)
    pp = pool_attrs.get("pads", [0] * 2 * nd)
    sizes, ends = [], []
    for i in range(nd):
        span = (k[i] - 1) * pd[i] + 1
        full = out[i] + pp[i] + pp[nd + i] - span
        o = (-(-full // st[i]) if pool_attrs.get("ceil_mode") else full // st[i]) + 1
        if pool_attrs.get("ceil_mode") and (o - 1) * st[i] >= out[i] + pp[i]:
            o -= 1
        sizes.append(o)
        ends.append(max(pp[nd + i], (o - 1) * st[i] + span - out[i] - pp[i]))
    cp = np.pad(c, [(0, 0), (0, 0)] + list(zip(pp[:nd], ends)), constant_values=-np.inf)
    return _windows_max(cp, k, st, pd, sizes)


@pytest.mark.parametrize("band", ["one", "one_tile"])
@pytest.mark.parametrize("case", sorted(CONV_POOL_CASES))
def test_conv_relu_max_pool_fuse_every_table(
    case: str, band: str, isa: str, rng, monkeypatch
) -> None:
    from lstm_infer.compile import step_lower_conv_pool

    xs, ws, conv_attrs, pool_attrs, fused = CONV_POOL_CASES[case]
    if band == "one_tile":  # every band one register tile of channels: several bands
        monkeypatch.setattr(step_lower_conv_pool, "BAND_BYTES", 1)
    x = rng.standard_normal(xs).astype(np.float32)
    x.flat[::61] = np.nan  # NaN through the conv, the relu and the max
    inits = {
        "w": rng.standard_normal(ws).astype(np.float32),
        "b": rng.standard_normal(ws[0]).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], **conv_attrs),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], **pool_attrs),
    ]
    data = model_bytes(nodes, [vi("x", F, xs)], [vi("y", F, None)], inits)
    (got,), step = _compiled_outputs(data, {"x": x})
    want = _conv_relu_max_pool_reference(x, inits["w"], inits["b"], conv_attrs, pool_attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # NaN where want has NaN
    kinds = step.program.kinds()
    pairs = sum(1 for a, b in zip(kinds, kinds[1:]) if (a, b) == ("conv", "pool"))
    bands = xs[0] * conv_attrs.get("group", 1)
    if band == "one_tile":
        bands *= -(-(ws[0] // conv_attrs.get("group", 1)) // lstm_infer._engine.CONV_MR)
    if fused:  # one CONV then one POOL record per band, nothing between
        assert pairs == bands == kinds.count("pool") == kinds.count("conv"), kinds
    else:  # the pool on its own, over the whole conv output
        assert kinds.count("pool") == 1, kinds


def test_conv_pool_not_fused_when_the_conv_output_has_another_reader(rng) -> None:
    x = rng.standard_normal((1, 2, 8, 32)).astype(np.float32)
    inits = {"w": rng.standard_normal((6, 2, 3, 3)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMax", ["c"], ["m"], keepdims=0),
    ]
    outs = [vi("p", F, None), vi("m", F, None)]
    step = _check(nodes, [vi("x", F, x.shape)], outs, {"x": x}, inits, atol=1e-4)
    assert step.program.kinds().count("pool") == 1


# Grouped convolutions of few taps per output: one GROUPED_CONV record per batch entry.
# (x shape, w shape, attrs, Relu after the Conv)
GROUPED_CASES = {
    "1d_depthwise_k5_silero_v4": ((1, 258, 9), (258, 1, 5), dict(group=258, pads=[2, 2]), True),
    "1d_depthwise_16_groups": ((2, 16, 5), (16, 1, 5), dict(group=16, pads=[2, 2]), False),
    "1d_depthwise_multiplier_stride_dilation": (
        (2, 6, 31), (12, 1, 3), dict(group=6, strides=[2], dilations=[2], pads=[3, 1]), False),
    "1d_80_groups_of_2": ((1, 160, 12), (160, 2, 3), dict(group=80, pads=[1, 1]), True),
    "2d_grouped_strides_dilations": (
        (1, 140, 9, 11), (140, 2, 3, 3),
        dict(group=70, strides=[2, 1], dilations=[1, 2], pads=[1, 2, 0, 1]), False),
    "2d_depthwise_strided": ((2, 5, 7, 20), (5, 1, 3, 3),
                             dict(group=5, strides=[1, 2], pads=[1, 1, 1, 1]), True),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(GROUPED_CASES))
def test_grouped_and_depthwise_convs_in_one_record(case: str, rng) -> None:
    xs, ws, attrs, relu = GROUPED_CASES[case]
    x = rng.standard_normal(xs).astype(np.float32)
    x.flat[::53] = np.nan  # NaN reaches the outputs whose windows hold it, as in onnxruntime
    inits = {
        "w": rng.standard_normal(ws).astype(np.float32),
        "b": rng.standard_normal(ws[0]).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z" if relu else "y"], **attrs)]
    if relu:  # fused into the Conv at load: the record's relu
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
    step = _check(nodes, [vi("x", F, xs)], [vi("y", F, None)], {"x": x}, inits, atol=1e-4)
    kinds = step.program.kinds()
    assert kinds.count("grouped_conv") == xs[0]
    assert "conv" not in kinds and "gemm" not in kinds


def test_many_groups_of_many_taps_are_refused_by_name(rng) -> None:
    from lstm_infer.compile.step_program import compile_step

    xs, ws = (1, 130, 40), (130, 2, 33)  # 65 groups of 66 taps
    inits = {"w": rng.standard_normal(ws).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=65)]
    data = model_bytes(nodes, [vi("x", F, xs)], [vi("y", F, None)], inits)
    from test_step_program import graph_model

    model = graph_model(data)
    x = {"x": rng.standard_normal(xs).astype(np.float32)}
    step, why = compile_step(model._program_for(x), x, {})
    assert step is None and "65 groups of 66 taps" in why


def test_causal_depthwise_conv_streams_along_time(rng) -> None:
    # a time-axis stream carries the depthwise conv's last 4 input frames between chunks
    c = 6
    w = rng.standard_normal((c, 1, 5)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=c, pads=[4, 0])]
    data = model_bytes(nodes, [vi("x", F, [1, c, "T"])], [vi("y", F, [1, c, "T"])], {"w": w})
    model = lstm_infer.load(data)
    x = rng.standard_normal((1, c, 40)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (4, 0)))
    want = sum(w[None, :, 0, j, None] * xp[:, :, j : j + 40] for j in range(5))
    stream = model.stream()
    got = stream.feed(x, chunk=3)  # (1, C, 40), chunks of 3 frames (the last of 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert all("grouped_conv" in s.program.kinds() for s in stream._steps.values())
