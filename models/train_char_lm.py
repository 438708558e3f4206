"""Train the bundled character-level language model on the Python standard library's source.

    python models/train_char_lm.py --minutes 15

Corpus: the top-level ``*.py`` files of the running CPython's standard library (redistributable
under the PSF License), read as ASCII (other bytes dropped). Files whose name's CRC32 is 0 mod 10
are held out for validation. Architecture: Embedding(V, 64) -> LSTM(64, 256, 2 layers) ->
Linear(256, V), batch-first. Writes next to this script (models/ is installed as the package
data ``lstm_infer.models``):

* ``char_lm.onnx``          torch.onnx.export, inputs (tokens, h0, c0) -> (logits, h_n, c_n)
* ``char_lm.pt``            the state_dict (torch.save)
* ``char_lm.safetensors``   the lstm_infer native file
* ``char_lm.json``          vocabulary, corpus file list, training command, losses

Needs torch (CPU); runs in about the given number of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
# Printable ASCII plus tab and newline; index 0 stands for anything else.
VOCAB = ["\0"] + ["\t", "\n"] + [chr(c) for c in range(32, 127)]


class CharLM(nn.Module):
    """Embedding -> 2-layer LSTM -> Linear, batch-first."""

    def __init__(self, vocab: int, emb: int = 64, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, h0, c0):  # noqa: ANN001, ANN201
        y, (h, c) = self.lstm(self.embedding(tokens), (h0, c0))
        return self.head(y), h, c


def corpus_files() -> tuple[list[str], list[str]]:
    """(training files, validation files) of the stdlib, sorted, by CRC32 of the name."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    val = [f for f in files if zlib.crc32(os.path.basename(f).encode()) % 10 == 0]
    train = [f for f in files if f not in val]
    return train, val


def encode(text: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(VOCAB)}
    return np.array([index.get(ch, 0) for ch in text], dtype=np.int64)


def read_files(files: list[str]) -> np.ndarray:
    chunks = []
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            chunks.append(encode(fh.read()))
    return np.concatenate(chunks)


def batches(data: np.ndarray, batch: int, seq: int, rng: np.random.Generator):  # noqa: ANN201
    while True:
        starts = rng.integers(0, len(data) - seq - 1, size=batch)
        x = np.stack([data[s : s + seq] for s in starts])
        y = np.stack([data[s + 1 : s + seq + 1] for s in starts])
        yield torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate(model: CharLM, data: np.ndarray, seq: int = 256, limit: int = 200_000) -> float:
    """Mean next-character cross-entropy (nats) over the first ``limit`` characters."""
    model.eval()
    data = data[: limit + 1]
    n = (len(data) - 1) // seq
    x = torch.from_numpy(data[: n * seq].reshape(n, seq))
    y = torch.from_numpy(data[1 : n * seq + 1].reshape(n, seq))
    h = torch.zeros(2, n, 256)
    logits, _, _ = model(x, h, h.clone())
    model.train()
    return float(nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), y.reshape(-1)))


def train(model: CharLM, data: np.ndarray, args: argparse.Namespace) -> int:
    """Adam with a cosine-decayed rate for ``args.minutes``; returns the number of steps."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.minutes * 60
    start = time.time()
    gen = batches(data, args.batch, args.seq, np.random.default_rng(args.seed))
    step = 0
    zeros = torch.zeros(2, args.batch, 256)
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for group in opt.param_groups:  # cosine decay to 5% of the peak rate
            group["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        x, y = next(gen)
        logits, _, _ = model(x, zeros, zeros)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument(
        "--export-only",
        type=int,
        metavar="STEPS",
        default=None,
        help="skip training: re-export char_lm.pt (trained for STEPS steps) and rewrite the card",
    )
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_files, val_files = corpus_files()
    train_data, val_data = read_files(train_files), read_files(val_files)
    print(f"train {len(train_data):,} chars from {len(train_files)} files; val {len(val_data):,}")

    model = CharLM(len(VOCAB))
    if args.export_only is not None:
        model.load_state_dict(torch.load(args.out / "char_lm.pt", weights_only=True))
        step = args.export_only
    else:
        step = train(model, train_data, args)
    model.eval()
    val_loss = evaluate(model, val_data)
    train_loss = evaluate(model, train_data)
    print(f"done: {step} steps, train loss {train_loss:.4f}, val loss {val_loss:.4f} nats/char")
    card = {
        "name": "char_lm",
        "architecture": "Embedding(98, 64) -> LSTM(64, 256, num_layers=2) -> Linear(256, 98)",
        "vocab": "".join(VOCAB),
        "corpus": {
            "source": f"CPython {sys.version.split()[0]} standard library, top-level *.py files",
            "license": "Python Software Foundation License (the standard library's own)",
            "train_files": [os.path.basename(f) for f in train_files],
            "val_files": [os.path.basename(f) for f in val_files],
            "train_chars": int(len(train_data)),
            "val_chars": int(len(val_data)),
        },
        "training": {
            "command": (
                f"python models/train_char_lm.py --minutes {args.minutes:g} --threads "
                f"{args.threads} --batch {args.batch} --seq {args.seq} --seed {args.seed}"
            ),
            "steps": step,
            "batch": args.batch,
            "seq": args.seq,
            "lr": args.lr,
            "seed": args.seed,
            "minutes": args.minutes,
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "loss_nats_per_char": {"train": round(train_loss, 4), "val": round(val_loss, 4)},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (args.out / "char_lm.json").write_text(json.dumps(card, indent=1) + "\n")
    export(model, args.out, save_state_dict=args.export_only is None)


def export(model: CharLM, out: Path, save_state_dict: bool = True) -> None:
    """Write the ONNX, state_dict and native versions of the trained model."""
    out.mkdir(parents=True, exist_ok=True)
    if save_state_dict:
        torch.save(model.state_dict(), out / "char_lm.pt")
    tokens = torch.zeros(1, 8, dtype=torch.int64)
    h0 = torch.zeros(2, 1, 256)
    torch.onnx.export(
        model,
        (tokens, h0, h0.clone()),
        str(out / "char_lm.onnx"),
        input_names=["tokens", "h0", "c0"],
        output_names=["logits", "h_n", "c_n"],
        dynamic_axes={
            "tokens": {0: "batch", 1: "seq_len"},
            "h0": {1: "batch"},
            "c0": {1: "batch"},
            "logits": {0: "batch", 1: "seq_len"},
            "h_n": {1: "batch"},
            "c_n": {1: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    sys.path.insert(0, str(HERE.parent))  # a source checkout with an in-place build works too
    import lstm_infer

    native = lstm_infer.load(out / "char_lm.pt", batch_first=True)
    # Same tensor names as the ONNX export, so either file serves the same feeds.
    sig = native.spec.signature
    sig.inputs = {"x": "tokens", "initial_h": "h0", "initial_c": "c0"}
    sig.outputs = {"y": "logits", "y_h": "h_n", "y_c": "c_n"}
    native.save(out / "char_lm.safetensors")


if __name__ == "__main__":
    main()
