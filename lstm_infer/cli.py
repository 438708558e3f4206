"""The ``lstm-infer`` command line: info, convert, validate, bench, demo, batch, serve and vad.

Errors print one line and exit non-zero; ``--debug`` shows the traceback instead.

Longer than the ~600-line guide: eight subcommands, each a short ``cmd_*`` function beside
its ``_add_*_parser``; the work itself lives in the modules they call (batch_arrow, serve,
vad, validate, bench helpers), so a split would only scatter the argument definitions.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_ERROR = 2


def _load(path: str, args: argparse.Namespace) -> Any:
    import lstm_infer

    return lstm_infer.load(path, **_load_options(args))


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The load options given on the command line (see ``_add_torch_options``)."""
    return {
        key: value
        for key, value in (
            ("batch_first", getattr(args, "batch_first", None)),
            ("nonlinearity", getattr(args, "nonlinearity", None)),
            ("head_activation", getattr(args, "head_activation", None)),
            ("key", getattr(args, "key", None)),
            ("prefix", getattr(args, "prefix", None)),
            ("embedding", getattr(args, "embedding", None)),
            ("head", getattr(args, "head", None)),
        )
        if value is not None
    }


def _add_torch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("PyTorch checkpoints (what parameter names cannot say)")
    g.add_argument("--batch-first", action="store_const", const=True, default=None)
    g.add_argument("--nonlinearity", choices=["tanh", "relu"], default=None)
    g.add_argument(
        "--head-activation",
        choices=["relu", "leaky_relu", "tanh", "sigmoid", "softmax", "log_softmax"],
        default=None,
    )
    g.add_argument("--key", default=None, help="checkpoint dict entry holding the state_dict")
    g.add_argument("--prefix", default=None, help="use only parameters under this key prefix")
    g.add_argument(
        "--embedding",
        default=None,
        type=lambda v: False if v.lower() in ("none", "false") else v,
        help="the nn.Embedding module (or 'none') where the weights fit several architectures",
    )
    g.add_argument(
        "--head",
        default=None,
        type=lambda v: [] if v.lower() in ("", "none") else v.split(","),
        help="the nn.Linear modules after the recurrent ones, comma-separated (or 'none')",
    )


# ---- info ------------------------------------------------------------------------------------


def _info_graph(path: str, model: Any) -> int:
    """``info`` for a GraphModel: op counts, parameters, inputs and outputs."""
    import collections

    import lstm_infer

    graph = model.graph
    counts = collections.Counter(node.op for node in graph.nodes)
    params = sum(int(v.size) for v in graph.initializers.values())
    print(f"model:   {path}")
    print(f"source:  {model.source or 'unknown'} graph    kernels: {lstm_infer.isa()}")
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
    print(f"nodes:   {len(graph.nodes)} ({ops})")
    print(f"parameters: {params:,}")
    for title, infos in (("inputs", model.inputs), ("outputs", model.outputs)):
        print(f"{title}:")
        for info in infos:
            print(f"  {info.name:<16} {info.dtype:<8} {info.shape}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print layers, sizes, parameter count, inputs and outputs."""
    import lstm_infer

    model = _load(args.model, args)
    if isinstance(model, lstm_infer.GraphModel):
        return _info_graph(args.model, model)
    spec = model.spec
    n_params = 0
    print(f"model:   {args.model}")
    print(f"source:  {spec.source or 'unknown'}    kernels: {lstm_infer.isa()}")
    if spec.embedding is not None:
        n_params += spec.embedding.size
        print(f"embedding       {spec.embedding.shape[0]} tokens x {spec.embedding.shape[1]}")
    for i, layer in enumerate(spec.layers):
        count = 0
        for d in layer.directions:
            for arr in (d.w, d.r, d.bias, d.bias_rn, d.peephole, d.proj):
                count += 0 if arr is None else arr.size
        n_params += count
        extras = []
        if layer.proj_size:
            extras.append(f"proj {layer.proj_size}")
        if layer.clip:
            extras.append(f"clip {layer.clip}")
        if layer.directions[0].peephole is not None:
            extras.append("peepholes")
        if layer.weight_format != "float32":
            extras.append(f"{layer.weight_format} weights")
        acts = ",".join(a.name for a in layer.directions[0].activations)
        extra = f" [{', '.join(extras)}]" if extras else ""
        print(
            f"layer {i:<2}        {layer.cell.upper():4} {layer.input_size} -> "
            f"{layer.hidden_size} {layer.direction}{extra} ({acts}) {count:,} params"
        )
    for i, dense in enumerate(spec.head):
        n_params += dense.weight.size + (0 if dense.bias is None else dense.bias.size)
        act = f" + {dense.activation}" if dense.activation else ""
        print(f"head {i:<2}         Linear {dense.weight.shape[1]} -> {dense.weight.shape[0]}{act}")
    print(f"parameters:     {n_params:,} as stored, biases folded ({n_params * 4 / 1e6:.2f} MB)")
    print("inputs:")
    for t in model.inputs:
        print(f"  {t.name:<16} {t.dtype:<8} {list(t.shape)}")
    print("outputs:")
    for t in model.outputs:
        print(f"  {t.name:<16} {t.dtype:<8} {list(t.shape)}")
    return 0


# ---- convert ---------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    """Write the model in the native format."""
    model = _load(args.model, args)
    if args.quantize:
        model = model.quantize(args.quantize)
    model.save(args.output)
    print(f"wrote {args.output}" + (f" ({args.quantize} weights)" if args.quantize else ""))
    return 0


# ---- validate --------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Compare with onnxruntime on random inputs; exit 1 when any output differs."""
    from lstm_infer.validate import validate

    report = validate(
        args.model,
        batch=args.batch,
        seq_len=args.seq_len,
        trials=args.trials,
        seed=args.seed,
        atol=args.atol,
    )
    print(report)
    return 0 if report.passed else 1


# ---- bench -----------------------------------------------------------------------------------


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
    sys.stderr.flush()


def random_feeds(model: Any, batch: int, seq_len: int, rng: np.random.Generator) -> dict:
    """Random values for the model's sequence input (token ids inside the vocabulary)."""
    spec = model.spec
    info = next(t for t in model.inputs if t.name == spec.signature.inputs["x"])
    dims = {"batch": batch, "seq_len": seq_len}
    shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in info.shape)
    shape = tuple(d if isinstance(d, int) else 1 for d in shape)
    if spec.embedding is not None:
        return {info.name: rng.integers(0, spec.embedding.shape[0], size=shape)}
    return {info.name: rng.standard_normal(shape).astype(np.float32)}


def _time_calls(fn: Callable[[], Any], count: int, label: str, quiet: bool) -> np.ndarray:
    """Microseconds of each of ``count`` calls (the progress bar is drawn between calls)."""
    times = np.empty(count)
    every = max(1, count // 30)
    for i in range(count):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
        if not quiet and ((i + 1) % every == 0 or i + 1 == count):
            _progress(label, i + 1, count)
    return times * 1e6


def cmd_bench(args: argparse.Namespace) -> int:
    """Stream (one timestep per call) and whole-sequence timings."""
    import lstm_infer

    model = _load(args.model, args)
    if isinstance(model, lstm_infer.GraphModel):
        raise lstm_infer.errors.UnsupportedModelError(
            "bench times recurrent-stack models; for a graph model use lstm-infer validate "
            "or bench/ scripts"
        )
    rng = np.random.default_rng(0)
    print(f"model: {args.model}   kernels: {lstm_infer.isa()}")
    rows = []
    if all(layer.num_directions == 1 for layer in model.layers):
        stream = model.stream(batch_size=args.batch)
        feeds = random_feeds(model, args.batch, 1, rng)
        x = next(iter(feeds.values()))
        layout = model.spec.signature.layout
        x_t = x[:, 0] if layout == 1 else x[0]
        for _ in range(min(100, args.steps)):
            stream.step(x_t)
        t = _time_calls(lambda: stream.step(x_t), args.steps, "stream", args.quiet)
        rows.append(("stream step", f"batch {args.batch}", t))
    feeds = random_feeds(model, args.batch, args.seq_len, rng)
    model.run(feeds)
    t = _time_calls(lambda: model.run(feeds), args.runs, "sequence", args.quiet)
    rows.append(("sequence run", f"batch {args.batch}, T {args.seq_len}", t))
    print(f"{'mode':<14}{'shape':<20}{'median us':>12}{'p99 us':>12}")
    for mode, shape, t in rows:
        print(f"{mode:<14}{shape:<20}{np.median(t):>12.1f}{np.percentile(t, 99):>12.1f}")
    return 0


# ---- demo ------------------------------------------------------------------------------------


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def generate(
    step: Callable[[int], np.ndarray],
    prompt_ids: Sequence[int],
    length: int,
    temperature: float,
    seed: int,
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], np.ndarray]:
    """Feed the prompt, then sample ``length`` tokens; returns (ids, per-step microseconds)."""
    rng = np.random.default_rng(seed)
    times = []
    logits = None
    for tok in prompt_ids:
        t0 = time.perf_counter()
        logits = step(tok)
        times.append(time.perf_counter() - t0)
    out = []
    for _ in range(length):
        tok = _sample(logits, temperature, rng)
        out.append(tok)
        if on_token:
            on_token(tok)
        t0 = time.perf_counter()
        logits = step(tok)
        times.append(time.perf_counter() - t0)
    return out, np.array(times) * 1e6


def _ort_stepper(onnx_path: str) -> Callable[[int], np.ndarray] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[1].shape]
    state = {"h0": np.zeros(shape, np.float32), "c0": np.zeros(shape, np.float32)}
    tokens = np.zeros((1, 1), np.int64)

    def step(tok: int) -> np.ndarray:
        tokens[0, 0] = tok
        logits, h, c = sess.run(None, {"tokens": tokens, **state})
        state["h0"], state["c0"] = h, c
        return logits[0, 0]

    return step


def cmd_demo(args: argparse.Namespace) -> int:
    """Stream text from the bundled character LM, then compare latency with onnxruntime."""
    import lstm_infer
    from lstm_infer.bundled import char_lm_card, model_path

    card = char_lm_card()
    vocab = card["vocab"]
    index = {ch: i for i, ch in enumerate(vocab)}
    prompt_ids = [index.get(ch, 0) for ch in args.prompt]
    if not prompt_ids:
        raise ValueError("--prompt must not be empty")
    model = lstm_infer.load(model_path("char_lm.safetensors"))
    stream = model.stream(batch_size=1)
    token = np.zeros(1, np.int64)

    def ours(tok: int) -> np.ndarray:
        token[0] = tok
        return stream.step(token)[0]

    print(f"bundled model: {card['architecture']}  (val loss {card['loss_nats_per_char']['val']})")
    print(f"kernels: {lstm_infer.isa()}\n")
    sys.stdout.write(args.prompt)

    def show(tok: int) -> None:
        sys.stdout.write(vocab[tok] if tok else "?")
        sys.stdout.flush()

    ids, t_ours = generate(ours, prompt_ids, args.length, args.temperature, args.seed, show)
    print("\n")
    rows = [("lstm_infer", t_ours)]
    ort_step = _ort_stepper(str(model_path("char_lm.onnx")))
    same = None
    if ort_step is not None:
        ort_ids, t_ort = generate(ort_step, prompt_ids, args.length, args.temperature, args.seed)
        rows.append(("onnxruntime", t_ort))
        same = ort_ids == ids
    print(f"{'engine':<14}{'median us/step':>16}{'p99 us/step':>14}{'tokens/s':>12}")
    for name, t in rows:
        med = float(np.median(t))
        print(f"{name:<14}{med:>16.1f}{np.percentile(t, 99):>14.1f}{1e6 / med:>12.0f}")
    if same is not None:
        ratio = np.median(t_ours) / np.median(rows[1][1])
        print(f"\nlstm_infer/onnxruntime per-step time: {ratio:.2f}x; same text: {same}")
    else:
        print("\n(onnxruntime is not installed: no side-by-side timing)")
    return 0


# ---- batch ------------------------------------------------------------------------------------


def cmd_batch(args: argparse.Namespace) -> int:
    """Run every row of a parquet file through the model: in this process, or on Ray."""
    from lstm_infer.batch import BatchRunner

    options = _load_options(args)
    runner = BatchRunner(args.model, load_options=options)  # fails early on a bad model
    inputs = {runner.input_name: args.input_column or runner.input_name}
    y = runner.model.spec.signature.outputs["y"]
    outputs = {y: args.output_column or y}
    common = {
        "threads": args.threads,
        "on_error": args.on_error,
        "id_column": args.id_column,
        "error_column": args.error_column,
    }
    t0 = time.perf_counter()
    if args.ray is None:
        from lstm_infer.batch_arrow import run_parquet

        runner = BatchRunner(runner.model, inputs, outputs, **common)
        rows = run_parquet(
            runner, args.source, args.destination, batch_size=args.batch_size, quiet=args.quiet
        )
    else:
        import ray

        from lstm_infer.ray import predict

        started = not ray.is_initialized()
        if started:
            # "local" starts a cluster of this machine's CPUs even when another one runs here.
            ray.init(address=args.ray, include_dashboard=False, log_to_driver=False)
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = not args.quiet
            dataset = predict(
                args.source,
                args.model,
                inputs,
                outputs,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                num_cpus=args.num_cpus,
                load_options=options,
                ship_model=args.ship_model,
                **common,
            )
            dataset.write_parquet(args.destination)
            rows = ray.data.read_parquet(args.destination).count()
        finally:
            if started:
                ray.shutdown()
    seconds = time.perf_counter() - t0
    where = "in this process" if args.ray is None else f"on Ray ({args.ray})"
    print(
        f"{rows} rows -> {args.destination} in {seconds:.2f} s ({rows / max(seconds, 1e-9):.0f} "
        f"rows/s) {where}"
    )
    return 0


# ---- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from lstm_infer.serve import ServeLimits, serve  # starlette/uvicorn: only for this command

    limits = ServeLimits(
        max_sessions=args.max_sessions,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout_s=args.idle_timeout,
    )
    fixed = _fixed_inputs(args.fixed_input or [])
    if fixed:
        import lstm_infer

        if _load_options(args):
            raise SystemExit("--fixed-input is for ONNX graphs; the PyTorch options do not apply")
        model = lstm_infer.load(args.model, fixed_inputs=fixed)
    else:
        model = _load(args.model, args)
    try:
        step_shape = tuple(int(d) for d in args.step_shape.split(",")) if args.step_shape else None
    except ValueError:
        raise SystemExit(f"--step-shape takes D[,D...] (ints), got {args.step_shape!r}") from None
    serve(model, args.host, args.port, max_batch=args.max_batch,
          max_wait_us=args.max_wait_us, limits=limits, step_shape=step_shape)  # fmt: skip
    return 0


def _fixed_inputs(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs (an int, a float, or a comma-separated list of them)."""
    import numpy as np

    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--fixed-input takes NAME=VALUE, got {item!r}")
        parts = text.split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            try:
                values = [float(p) for p in parts]
            except ValueError:
                raise SystemExit(f"--fixed-input {name}: {text!r} is not a number") from None
        out[name] = np.array(values[0] if len(values) == 1 else values)
    return out


def _add_serve_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="serve many streams over WebSocket/HTTP (extra 'serve')")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=64, help="most steps batched together")
    s.add_argument("--max-wait-us", type=float, default=500.0, help="longest a step waits")
    s.add_argument("--max-sessions", type=int, default=1024)
    s.add_argument("--max-frame-bytes", type=int, default=1 << 20)
    s.add_argument("--idle-timeout", type=float, default=300.0, help="seconds")
    s.add_argument(
        "--fixed-input",
        action="append",
        metavar="NAME=VALUE",
        help="ONNX graphs: make an input a constant (silero-VAD: sr=16000)",
    )
    s.add_argument("--step-shape", metavar="D[,D...]",
                   help="graphs: one session's step input shape (silero-VAD: 576)")  # fmt: skip
    _add_torch_options(s)
    s.set_defaults(func=cmd_serve)


# ---- vad -------------------------------------------------------------------------------------


def cmd_vad(args: argparse.Namespace) -> int:
    import lstm_infer
    from lstm_infer import vad

    path = Path(args.model) if args.model else vad.default_model_path()
    audio, rate = vad.read_wav(args.audio)
    try:  # the sample rate is fixed where the model takes it (its branch resolved at load)
        model = lstm_infer.load(path, fixed_inputs={"sr": rate})
    except ValueError:
        model = lstm_infer.load(path)
    ours = vad.stream_probs(model, audio, rate)
    print(
        f"{path.name}  {rate} Hz  {ours.audio_seconds:.2f} s of audio, {len(ours.probs)} "
        f"chunks of {ours.chunk} samples"
    )
    found = vad.segments(ours, args.threshold, args.min_silence_ms, args.min_speech_ms)
    print(f"speech segments (threshold {args.threshold:.2f}): {len(found)}")
    for start, end in found:
        print(f"  {start:8.2f} - {end:8.2f} s")
    rows = [("lstm_infer", ours)]
    if not ours.compiled:
        print("(this model's steps ran op by op: a node has no step-program lowering)")
    try:
        rows.append(("onnxruntime", vad.stream_probs_onnxruntime(path, audio, rate)))
    except ImportError:
        pass
    print(f"\n{'engine':<14}{'median us/chunk':>16}{'p99 us/chunk':>14}{'real-time factor':>18}")
    for name, r in rows:
        print(
            f"{name:<14}{np.median(r.latency_us):>16.1f}{np.percentile(r.latency_us, 99):>14.1f}"
            f"{r.real_time_factor:>18.4f}"
        )
    if len(rows) > 1:
        diff = float(np.abs(rows[0][1].probs - rows[1][1].probs).max(initial=0.0))
        print(f"\nmax |probability difference| lstm_infer vs onnxruntime: {diff:.2e}")
    else:
        print("\n(onnxruntime is not installed: no side-by-side run)")
    if args.plot:
        vad.plot(args.plot, audio, ours, args.threshold)
        print(f"wrote {args.plot}")
    return 0


def _add_vad_parser(sub: Any) -> None:
    s = sub.add_parser("vad", help="stream a wav through silero-VAD: speech segments, latency")
    s.add_argument("audio", help="16 or 8 kHz 16-bit PCM wav")
    s.add_argument("--model", default=None, help="silero-VAD ONNX file (default: silero-vad's)")
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--min-silence-ms", type=float, default=100.0)
    s.add_argument("--min-speech-ms", type=float, default=250.0)
    s.add_argument("--plot", default=None, help="write the probabilities over the audio (PNG)")
    s.set_defaults(func=cmd_vad)


# ---- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lstm-infer", description="Fast CPU inference for RNN, LSTM and GRU models."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="layers, sizes, parameters, inputs and outputs")
    s.add_argument("model")
    _add_torch_options(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("convert", help="write the model in the native format")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="output path (.safetensors)")
    s.add_argument(
        "--quantize", choices=["bf16", "int8"], default=None, help="store recurrent weights as"
    )
    _add_torch_options(s)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("validate", help="compare an ONNX model with onnxruntime")
    s.add_argument("model")
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--seq-len", type=int, default=16)
    s.add_argument("--trials", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--atol", type=float, default=1e-4)
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("bench", help="stream and sequence timings")
    s.add_argument("model")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--seq-len", type=int, default=100)
    s.add_argument("--steps", type=int, default=2000, help="timed stream steps")
    s.add_argument("--runs", type=int, default=50, help="timed sequence runs")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_torch_options(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("batch", help="run a parquet file's rows, in-process or on Ray")
    s.add_argument("model")
    s.add_argument("source", metavar="IN", help="parquet file or directory, one sequence a row")
    s.add_argument(
        "destination",
        metavar="OUT",
        help="parquet file written (a directory of parquet files with --ray)",
    )
    s.add_argument("--input-column", default=None, help="default: the model's input name")
    s.add_argument("--output-column", default=None, help="default: the model's output name")
    s.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (a local one when no address is given)",
    )
    s.add_argument("--batch-size", type=int, default=256, help="rows per padded run")
    s.add_argument("--threads", type=int, default=1, help="threads per run (per Ray actor)")
    s.add_argument(
        "--concurrency", type=int, default=None, help="Ray actors (default: the CPUs less one)"
    )
    s.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs each Ray actor reserves (--threads)"
    )
    s.add_argument(
        "--ship-model",
        action="store_true",
        help="send the model's bytes to the Ray workers (the path is not on shared storage)",
    )
    s.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    s.add_argument("--id-column", default=None, help="names rows in errors (default: 'id')")
    s.add_argument("--error-column", default="error", help="with --on-error skip")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_torch_options(s)
    s.set_defaults(func=cmd_batch)

    s = sub.add_parser("demo", help="generate text with the bundled model, timed")
    s.add_argument("--prompt", default="def main(")
    s.add_argument("--length", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    _add_serve_parser(sub)
    _add_vad_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"lstm-infer {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
