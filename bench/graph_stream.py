"""Graph streams (one C step program per step) against the peers, in one run, one thread.

1. silero-VAD (``silero_vad.onnx``, 16 kHz, 576-sample inputs): our ``model.stream()`` step
   against onnxruntime fed its state back by hand, the same stream of the file loaded
   without ``fixed_inputs`` (``sr`` fed every step: specialised on its value), and our own
   op-by-op step (``compile=False``), on the same chunks.
2. LSTM -> LayerNorm -> Linear streamed frame by frame (a time-axis stream of the exported
   graph) against the bare LSTM's stream step (``lstm_infer.load`` of the same LSTM alone: the
   fused recurrent stack path), and onnxruntime running the whole graph on one frame with
   its state fed back (h0/c0 inputs).
3. silero-VAD sessions in a ``StreamPool``: a round of every session stepping one chunk as
   one pool step, against the same sessions as solo compiled streams and onnxruntime calls.

Outputs are checked to agree first. Engines interleaved round-robin (compare.py's
``time_interleaved``), medians of ``--repeat`` blocks, ratios within the run.

    python bench/graph_stream.py [--repeat 15] [--hidden 256] [--sessions 8 64]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import time_interleaved, write_results  # noqa: E402

import lstm_infer  # noqa: E402


def _ort(data: bytes | str):  # noqa: ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def silero_rows(repeat: int, block_s: float) -> list[dict]:
    import silero_vad

    path = str(Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx")
    model = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    general = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    general.compile_runs = False  # op by op: each node from Python, as before step programs
    rng = np.random.default_rng(0)
    chunks = (rng.standard_normal((64, 1, 576)) * 0.1).astype(np.float32)
    ours, by_ops, sess = model.stream(), general.stream(compile=False), _ort(path)
    fed = lstm_infer.load(path).stream()  # sr fed every step, as onnxruntime takes it
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for c in chunks[:8]:  # agreement first
        want, state = sess.run(None, {"input": c, "state": state, "sr": sr})
        np.testing.assert_allclose(ours.step(c), want, atol=1e-4)
        np.testing.assert_allclose(by_ops.step(c), want, atol=1e-4)
        np.testing.assert_allclose(fed.step({"input": c, "sr": sr}), want, atol=1e-4)
    assert ours.compiled, ours.compile_error
    assert fed.compiled, fed.compile_error
    box = {"state": state}

    def loop_ours(n: int) -> None:
        for i in range(n):
            ours.step(chunks[i % 64])

    def loop_fed(n: int) -> None:
        for i in range(n):
            fed.step({"input": chunks[i % 64], "sr": sr})

    def loop_ops(n: int) -> None:
        for i in range(n):
            by_ops.step(chunks[i % 64])

    def loop_ort(n: int) -> None:
        s = box["state"]
        for i in range(n):
            _, s = sess.run(None, {"input": chunks[i % 64], "state": s, "sr": sr})
        box["state"] = s

    t = time_interleaved(
        {"lstm_infer": loop_ours, "lstm_infer, sr fed": loop_fed,
         "lstm_infer op by op": loop_ops, "onnxruntime": loop_ort},
        repeat, block_s,
    )  # fmt: skip
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    print(f"\nsilero-VAD chunk step (576 samples), us, median of {repeat}:")
    for k, v in med.items():
        print(f"  {k:<22}{v:9.1f}   ({v / med['onnxruntime']:.2f}x onnxruntime)")
    return [{"bench": "silero_step", "engine": k, "median_us": v, "samples_s": t[k]}
            for k, v in med.items()]  # fmt: skip


def silero_pool_rows(sessions: int, repeat: int, block_s: float) -> list[dict]:
    """One round of ``sessions`` silero-VAD sessions each stepping one chunk: one pool step
    (batch = sessions) against solo compiled streams and onnxruntime, one call each."""
    import silero_vad

    path = str(Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx")
    model = lstm_infer.load(path, fixed_inputs={"sr": 16000})
    rng = np.random.default_rng(2)
    chunks = (rng.standard_normal((sessions, 1, 576)) * 0.1).astype(np.float32)
    pool = lstm_infer.StreamPool(model)
    sids = [pool.open() for _ in range(sessions)]
    solo = [model.stream() for _ in range(sessions)]
    sess = _ort(path)
    sr = np.array(16000, np.int64)
    states = [np.zeros((2, 1, 128), np.float32) for _ in range(sessions)]
    ys = pool.step(dict(zip(sids, chunks)))
    for k in range(sessions):  # agreement first
        want, states[k] = sess.run(None, {"input": chunks[k], "state": states[k], "sr": sr})
        np.testing.assert_allclose(ys[sids[k]], want[0], atol=1e-4)
        np.testing.assert_allclose(solo[k].step(chunks[k])[0], want[0], atol=1e-4)
    feeds = dict(zip(sids, chunks))

    def loop_pool(n: int) -> None:
        for _ in range(n):
            pool.step(feeds)

    def loop_solo(n: int) -> None:
        for _ in range(n):
            for k in range(sessions):
                solo[k].step(chunks[k])

    def loop_ort(n: int) -> None:
        for _ in range(n):
            for k in range(sessions):
                _, states[k] = sess.run(None, {"input": chunks[k], "state": states[k], "sr": sr})

    t = time_interleaved(
        {"pool step": loop_pool, "solo streams": loop_solo, "onnxruntime": loop_ort},
        repeat, block_s,
    )  # fmt: skip
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    print(f"\nsilero-VAD, {sessions} sessions, one round (every session one chunk), us:")
    for k, v in med.items():
        print(f"  {k:<16}{v:10.1f}   ({v / med['onnxruntime']:.2f}x onnxruntime, "
              f"{v / sessions:.1f} per session)")  # fmt: skip
    return [{"bench": f"silero_pool_{sessions}", "engine": k, "median_us": v,
             "samples_s": t[k]} for k, v in med.items()]  # fmt: skip


def norm_head_rows(hidden: int, repeat: int, block_s: float) -> list[dict]:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class NormHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(hidden, hidden)
            self.norm = nn.LayerNorm(hidden)
            self.head = nn.Linear(hidden, 32)

        def forward(self, x, h0, c0):  # noqa: ANN001, ANN201
            y, (h, c) = self.lstm(x, (h0, c0))
            return self.head(self.norm(y)), h, c

    net = NormHead().eval()
    x = torch.randn(1, 1, hidden)
    z = torch.zeros(1, 1, hidden)

    def export(module: nn.Module, args: tuple, ins: list, outs: list, dyn: dict) -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, input_names=ins, output_names=outs,
                          dynamic_axes=dyn, dynamo=False)  # fmt: skip
        return buf.getvalue()

    class Plain(nn.Module):  # the same head without state inputs: the time-axis stream
        def __init__(self) -> None:
            super().__init__()
            self.m = net

        def forward(self, x):  # noqa: ANN001, ANN201
            y, _ = self.m.lstm(x)
            return self.m.head(self.m.norm(y))

    with_state = export(net, (x, z, z), ["x", "h0", "c0"], ["y", "hn", "cn"], {})
    plain = export(Plain(), (torch.randn(4, 1, hidden),), ["x"], ["y"], {"x": {0: "T"}})
    bare = export(net.lstm, (x,), ["x"], ["y", "hn", "cn"], {})
    graph_stream = lstm_infer.load(plain).stream()
    lstm_stream = lstm_infer.load(bare).stream(batch_size=1)
    sess = _ort(with_state)
    frames = np.random.default_rng(1).standard_normal((64, 1, 1, hidden)).astype(np.float32)
    h = c = np.zeros((1, 1, hidden), np.float32)
    for f in frames[:8]:
        want, h, c = sess.run(None, {"x": f, "h0": h, "c0": c})
        np.testing.assert_allclose(graph_stream.step(f), want, atol=1e-4)
        lstm_stream.step(f[0])
    box = {"h": h, "c": c}

    def loop_graph(n: int) -> None:
        for i in range(n):
            graph_stream.step(frames[i % 64])

    def loop_lstm(n: int) -> None:
        for i in range(n):
            lstm_stream.step(frames[i % 64][0])

    def loop_ort(n: int) -> None:
        h, c = box["h"], box["c"]
        for i in range(n):
            _, h, c = sess.run(None, {"x": frames[i % 64], "h0": h, "c0": c})
        box["h"], box["c"] = h, c

    t = time_interleaved(
        {"LSTM->LN->Linear stream": loop_graph, "bare LSTM stream": loop_lstm,
         "onnxruntime (state fed back)": loop_ort}, repeat, block_s,
    )  # fmt: skip
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    base = med["bare LSTM stream"]
    print(f"\nLSTM-{hidden} -> LayerNorm -> Linear(32), one frame per step, us:")
    for k, v in med.items():
        print(f"  {k:<30}{v:9.1f}   ({v / base:.2f}x the bare LSTM step)")
    return [{"bench": f"norm_head_step_h{hidden}", "engine": k, "median_us": v,
             "samples_s": t[k]} for k, v in med.items()]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--block-ms", type=float, default=25.0)
    p.add_argument("--sessions", type=int, nargs="*", default=[8, 64],
                   help="silero-VAD pool sizes")  # fmt: skip
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    block = args.block_ms / 1e3
    rows = silero_rows(args.repeat, block) + norm_head_rows(args.hidden, args.repeat, block)
    for n in args.sessions:
        rows += silero_pool_rows(n, args.repeat, block)
    write_results("graph_stream", rows, 1, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
