"""Build a model from PyTorch weights: a checkpoint file (no torch needed), a state_dict or a
live module.

The architecture comes from the parameter names, in module order:

* ``nn.Embedding`` before the first recurrent module: a 2-D ``weight`` alone;
* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
  ``bias_hh_l{k}``, ``*_reverse`` for a bidirectional module, ``weight_hr_l{k}`` for
  ``proj_size``; the cell follows from the gate count (rows of ``weight_hh`` over its width);
* ``nn.Linear`` after the last recurrent module: ``weight`` (+ ``bias``).

What the names cannot say comes from keyword arguments with PyTorch's defaults:
``nonlinearity`` ("tanh" or "relu", for ``nn.RNN``), ``batch_first``, ``head_activation``
(applied after the last Linear: None, "relu", "tanh", "sigmoid", "softmax", "log_softmax") and,
for several Linear layers, ``head_activations`` (one per Linear). ``prefix`` picks a
sub-module by key prefix (e.g. ``prefix="encoder."``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_infer._spec import (
    HEAD_ACTIVATIONS,
    Activation,
    DenseLayer,
    DirectionWeights,
    ModelSpec,
    RecurrentLayer,
    Signature,
    default_activations,
)
from lstm_infer.errors import ModelFormatError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_RNN_PARAM = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
# PyTorch gate order -> internal order, per cell: LSTM i,f,g,o (same); GRU r,z,n -> z,r,n.
_TORCH_GATE_ORDER = {"lstm": (0, 1, 2, 3), "gru": (1, 0, 2), "rnn": (0,)}
_CELL_BY_GATES = {1: "rnn", 3: "gru", 4: "lstm"}


def _split_key(key: str) -> tuple[str, str]:
    head, _, leaf = key.rpartition(".")
    return (head + "." if head else ""), leaf


def _group_modules(state: Mapping[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Parameters grouped by owning module prefix, in first-appearance order."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        prefix, leaf = _split_key(key)
        groups.setdefault(prefix, {})[leaf] = value
    return list(groups.items())


def _reorder(m: np.ndarray, cell: str, h: int) -> np.ndarray:
    return np.concatenate([m[g * h : (g + 1) * h] for g in _TORCH_GATE_ORDER[cell]], axis=0)


def _recurrent_layers(
    prefix: str, params: dict[str, np.ndarray], nonlinearity: str
) -> list[RecurrentLayer]:
    """The layers of one nn.LSTM / nn.GRU / nn.RNN from its parameters."""
    found: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for leaf, value in params.items():
        m = _RNN_PARAM.match(leaf)
        if not m:
            raise ModelFormatError(
                f"module {prefix!r}: unexpected parameter {leaf!r} next to recurrent weights"
            )
        found.setdefault((int(m.group(2)), 1 if m.group(3) else 0), {})[m.group(1)] = value
    n_layers = 1 + max(k for k, _ in found)
    bidirectional = any(d == 1 for _, d in found)
    n_dirs = 2 if bidirectional else 1
    layers = []
    for k in range(n_layers):
        dirs = []
        cell = None
        hidden = proj = in_size = 0
        for d in range(n_dirs):
            p = found.get((k, d))
            where = f"{prefix}*_l{k}{'_reverse' if d else ''}"
            if p is None or "weight_ih" not in p or "weight_hh" not in p:
                raise ModelFormatError(f"module {prefix!r}: missing weights for {where}")
            w_ih, w_hh = p["weight_ih"], p["weight_hh"]
            if w_ih.ndim != 2 or w_hh.ndim != 2:
                raise ModelFormatError(f"{where}: weight_ih/weight_hh must be 2-D")
            w_hr = p.get("weight_hr")
            if w_hr is not None:
                if w_hr.ndim != 2:
                    raise ModelFormatError(f"{where}: weight_hr must be 2-D")
                h, hr = w_hr.shape[1], w_hr.shape[0]
            else:
                h = hr = w_hh.shape[1]
            if h <= 0 or w_hh.shape[0] % h or w_hh.shape[0] // h not in _CELL_BY_GATES:
                raise ModelFormatError(
                    f"{where}: weight_hh has shape {w_hh.shape}; its rows must be 1, 3 or 4 "
                    f"times the hidden size {h} (RNN, GRU, LSTM)"
                )
            g = w_hh.shape[0] // h
            this_cell = _CELL_BY_GATES[g]
            if w_hr is not None and this_cell != "lstm":
                raise ModelFormatError(f"{where}: weight_hr (projection) needs an LSTM")
            if w_hh.shape[1] != hr or w_ih.shape[0] != g * h:
                raise ModelFormatError(
                    f"{where}: weight_ih {w_ih.shape} and weight_hh {w_hh.shape} disagree with "
                    f"a {this_cell.upper()} of hidden size {h}"
                    + (f" and proj_size {hr}" if w_hr is not None else "")
                )
            b_ih = p.get("bias_ih", np.zeros(g * h, np.float32))
            b_hh = p.get("bias_hh", np.zeros(g * h, np.float32))
            if b_ih.shape != (g * h,) or b_hh.shape != (g * h,):
                raise ModelFormatError(f"{where}: biases must have shape ({g * h},)")
            if this_cell == "gru":
                # PyTorch's GRU keeps b_hn inside the reset product (linear_before_reset=1).
                bias = np.concatenate([b_ih[: 2 * h] + b_hh[: 2 * h], b_ih[2 * h :]])
                bias_rn = b_hh[2 * h :].astype(np.float32)
            else:
                bias, bias_rn = b_ih + b_hh, None
            if this_cell == "rnn":
                if nonlinearity not in ("tanh", "relu"):
                    raise ModelFormatError(
                        f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"
                    )
                acts: tuple[Activation, ...] = (Activation.make(nonlinearity),)
            else:
                acts = default_activations(this_cell)
            dirs.append(
                DirectionWeights(
                    w=_reorder(w_ih, this_cell, h),
                    r=_reorder(w_hh, this_cell, h),
                    bias=_reorder(bias, this_cell, h),
                    activations=acts,
                    bias_rn=bias_rn,
                    proj=None if w_hr is None else np.ascontiguousarray(w_hr, np.float32),
                )
            )
            cell, hidden, proj, in_size = (
                this_cell,
                h,
                (hr if w_hr is not None else 0),
                (w_ih.shape[1]),
            )
        layers.append(
            RecurrentLayer(
                cell=cell,
                input_size=int(in_size),
                hidden_size=int(hidden),
                direction="bidirectional" if bidirectional else "forward",
                directions=dirs,
                proj_size=int(proj),
                linear_before_reset=cell == "gru",
            )
        )
    return layers


def _chain_by_sizes(
    modules: list[list[RecurrentLayer]], names: list[str]
) -> list[list[RecurrentLayer]]:
    """Order recurrent modules so each one's output feeds the next one's input.

    The file's order is kept when it chains; otherwise the unique chain by sizes is used.
    """

    def chains(seq: Sequence[list[RecurrentLayer]]) -> bool:
        return all(a[-1].output_size == b[0].input_size for a, b in zip(seq, seq[1:]))

    if chains(modules):
        return modules
    orders = itertools.permutations(range(len(modules))) if len(modules) <= 6 else []
    found = [p for p in orders if chains([modules[i] for i in p])]
    if len(found) != 1:
        raise ModelFormatError(
            f"cannot tell in which order the recurrent modules {names} run (their sizes "
            f"{'do not chain' if not found else 'chain in several orders'}); load one of them "
            "with prefix=..."
        )
    return [modules[i] for i in found[0]]


def spec_from_state_dict(
    state: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    nonlinearity: str | Sequence[str] = "tanh",
    batch_first: bool = False,
    head_activation: str | None = None,
    head_activations: Sequence[str | None] | None = None,
    source: str = "pytorch",
) -> ModelSpec:
    """Infer the architecture from parameter names and build the internal model.

    See the module docstring for what is recognised and the keyword arguments.
    """
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ModelFormatError(f"no parameter names start with prefix {prefix!r}")
    groups = _group_modules(state)
    order = {name: i for i, (name, _) in enumerate(groups)}
    recurrent = [(n, p) for n, p in groups if any(_RNN_PARAM.match(k) for k in p)]
    if not recurrent:
        names = ", ".join(list(state)[:12])
        raise ModelFormatError(
            "no nn.LSTM / nn.GRU / nn.RNN weights (weight_ih_l0, weight_hh_l0, ...) found among "
            f"the parameters: {names}"
        )
    n_rec = len(recurrent)
    if isinstance(nonlinearity, str):
        nonlins = [nonlinearity] * n_rec
    else:
        nonlins = list(nonlinearity)
        if len(nonlins) != n_rec:
            raise ModelFormatError(
                f"nonlinearity lists {len(nonlins)} values for {n_rec} recurrent modules"
            )
    modules = [_recurrent_layers(n, p, nl) for (n, p), nl in zip(recurrent, nonlins)]
    modules = _chain_by_sizes(modules, [n for n, _ in recurrent])
    layers = [layer for module in modules for layer in module]

    # Files need not keep module order (safetensors sorts names), so the Embedding and the
    # Linear head are found by their sizes, with the file's order only breaking ties.
    others = [(n, p) for n, p in groups if not any(_RNN_PARAM.match(k) for k in p)]
    first_rec = min(order[n] for n, _ in recurrent)
    last_rec = max(order[n] for n, _ in recurrent)
    head_groups: list[tuple[str, dict[str, np.ndarray]]] = []
    width = layers[-1].output_size
    while True:
        fits = [
            (n, p)
            for n, p in others
            if set(p) <= {"weight", "bias"}
            and p.get("weight") is not None
            and p["weight"].ndim == 2
            and p["weight"].shape[1] == width
            and (n, p) not in head_groups
        ]
        if not fits:
            break
        fits.sort(key=lambda g: (order[g[0]] < last_rec, "bias" not in g[1], order[g[0]]))
        head_groups.append(fits[0])
        width = fits[0][1]["weight"].shape[0]
    others = [g for g in others if g not in head_groups]
    emb_groups = [
        (n, p)
        for n, p in others
        if set(p) == {"weight"} and p["weight"].ndim == 2
        and p["weight"].shape[1] == layers[0].input_size
    ]  # fmt: skip
    if len(emb_groups) > 1:
        emb_groups = [g for g in emb_groups if order[g[0]] < first_rec] or emb_groups
    if len(emb_groups) > 1:
        raise ModelFormatError(
            f"several modules {[n for n, _ in emb_groups]} could be the embedding; pick a "
            "sub-module with prefix=..."
        )
    others = [g for g in others if g not in emb_groups]
    if others:
        raise ModelFormatError(
            f"modules {[n for n, _ in others]} are neither an nn.Embedding before the recurrent "
            "layers nor an nn.Linear after them; pick the recurrent sub-module with prefix=..."
        )
    embedding = np.ascontiguousarray(emb_groups[0][1]["weight"], np.float32) if emb_groups else None

    if head_activations is None:
        if len(head_groups) > 1:
            raise ModelFormatError(
                f"{len(head_groups)} Linear layers follow the recurrent module; the activations "
                "between them cannot be read from the weights: pass head_activations=[...] "
                "(one per Linear, None for none)"
            )
        head_acts: list[str | None] = [head_activation] * len(head_groups)
    else:
        head_acts = list(head_activations)
        if len(head_acts) != len(head_groups):
            raise ModelFormatError(
                f"head_activations lists {len(head_acts)} values for {len(head_groups)} Linear "
                "layers"
            )
    head = []
    for (_, params), act in zip(head_groups, head_acts):
        if act not in HEAD_ACTIVATIONS:
            raise ModelFormatError(
                f"head activation {act!r} is not one of {[a for a in HEAD_ACTIVATIONS if a]}"
            )
        b = params.get("bias")
        head.append(
            DenseLayer(
                np.ascontiguousarray(params["weight"], np.float32),
                None if b is None else np.ascontiguousarray(b, np.float32),
                act,
            )
        )

    inputs = {"x": "input"}
    outputs = {"y": "output"}
    # PyTorch shapes states (num_layers * num_directions, batch, size): one tensor for the
    # whole stack, which exists only when every layer has the same state size.
    if (
        len({layer.state_size for layer in layers}) == 1
        and len({layer.hidden_size for layer in layers}) == 1
    ):
        inputs["initial_h"] = "h0"
        outputs["y_h"] = "h_n"
        if all(layer.cell == "lstm" for layer in layers):
            inputs["initial_c"] = "c0"
            outputs["y_c"] = "c_n"
    sig = Signature("sequence", 1 if batch_first else 0, inputs, outputs)
    spec = ModelSpec(layers, sig, embedding=embedding, head=head, source=source)
    spec.validate()
    return spec


def is_torch_checkpoint(head: bytes, path: str | None = None) -> bool:
    """True for a torch.save zip (PK...) or legacy pickle (protocol opcode 0x80), or by suffix."""
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return True
    return path is not None and path.lower().endswith(CHECKPOINT_SUFFIXES)


def _live_state_dict(obj: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A torch module or state_dict as numpy arrays, plus options read off the module."""
    options: dict[str, Any] = {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        rec = [m for m in obj.modules() if type(m).__name__ in ("LSTM", "GRU", "RNN")]
        if rec:
            options["batch_first"] = bool(rec[0].batch_first)
            nls = [getattr(m, "nonlinearity", "tanh") for m in rec]
            options["nonlinearity"] = nls[0] if len(set(nls)) == 1 else nls
        obj = obj.state_dict()
    state = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            if not v.is_floating_point():
                continue
            v = v.detach().float().cpu().numpy()
        arr = np.asarray(v)
        if arr.dtype.kind == "f":
            state[str(k)] = np.ascontiguousarray(arr, np.float32)
    return state, options


def import_torch(source: Any, *, key: str | None = None, **options: Any) -> ModelSpec:
    """A ModelSpec from a checkpoint path/bytes, a state_dict (torch or numpy) or a module."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        from lstm_infer.torch_checkpoint import read_checkpoint

        src = bytes(source) if isinstance(source, (bytearray, memoryview)) else source
        state = read_checkpoint(src, key=key)
        return spec_from_state_dict(state, **options)
    state, found = _live_state_dict(source)
    if key is not None:
        raise ModelFormatError("key= applies to checkpoint files; pass the state_dict itself")
    return spec_from_state_dict(state, **{**found, **options})
