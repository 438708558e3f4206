"""Build a model from PyTorch weights: a checkpoint file (no torch needed), a state_dict or a
live module.

The architecture comes from the parameters:

* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
  ``bias_hh_l{k}``, ``*_reverse`` for a bidirectional module, ``weight_hr_l{k}`` for
  ``proj_size``; the cell follows from the gate count (rows of ``weight_hh`` over its width);
  several modules are chained by their sizes;
* an ``nn.Embedding`` before them (a 2-D ``weight`` alone, as wide as the first layer's input)
  and ``nn.Linear`` layers after them (``weight`` (+ ``bias``), each taking the previous
  output). Which module is which is decided only on evidence that cannot be confused: the
  shapes, bias presence (an embedding has none), the module names (``emb``, ``embedding``,
  ``encoder.embedding``... vs ``fc``, ``out``, ``proj``, ``head``...), and the registration
  order where the format keeps it (torch.save and live modules; safetensors sorts its names).
  Where readings remain (say a bias-free ``a.weight`` of shape (29, 256) next to a GRU(256,
  256) in a safetensors file: an embedding or a head?) loading raises ModelFormatError naming
  two of them and the keywords ``embedding="a.weight"`` (or False) / ``head=["a"]`` (or [])
  that pick one; naming the same module in both ties the embedding to the head.

What the weights cannot say comes from keyword arguments with PyTorch's defaults:
``nonlinearity`` ("tanh" or "relu", for ``nn.RNN``), ``batch_first``, ``head_activation``
(applied after the last Linear: None, "relu", "leaky_relu" (slope 0.01, torch's default), "tanh",
"sigmoid", "softmax", "log_softmax") and,
for several Linear layers, ``head_activations`` (one per Linear). ``prefix`` picks a
sub-module by key prefix (e.g. ``prefix="encoder."``).

Longer than the ~600-line guide (a little) because the architecture reading above (recurrent layers,
chains by size, the embedding / head placement and its ambiguity errors) is one decision
procedure over the same groups of parameters; split, its rules would be read apart.
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


# Module names that say what a weight-only 2-D module is (the last non-numeric part of its
# prefix, split on "_"). "encoder" / "decoder" are PyTorch's word_language_model example's
# nn.Embedding and nn.Linear.
_EMBEDDING_WORDS = frozenset(
    {"emb", "embed", "embeds", "embedding", "embeddings", "embedder", "wte", "lookup", "encoder"}
)
_HEAD_WORDS = frozenset(
    {
        "fc", "out", "output", "outputs", "proj", "projection", "head", "linear", "classifier",
        "cls", "dense", "logits", "decoder", "readout", "final", "pred", "predictor", "score",
        "scores", "ctc", "mlp", "ffn", "lin", "affine",
    }
)  # fmt: skip
# Readings enumerated at most: more weight-only modules than this is not a recurrent model's
# front end and head.
_MAX_OTHER_MODULES = 8

Group = tuple[str, dict[str, np.ndarray]]


def _name_role(prefix: str) -> str | None:
    """ "embedding", "head" or None (the name says nothing, or both) from a module prefix."""
    parts = [p for p in prefix.rstrip(".").split(".") if p and not p.isdigit()]
    if not parts:
        return None
    last = parts[-1].lower()
    words = {w for w in re.split(r"[_\W\d]+", last) if w} | {last}
    emb, head = bool(words & _EMBEDDING_WORDS), bool(words & _HEAD_WORDS)
    if emb == head:
        return None
    return "embedding" if emb else "head"


def _shown(prefix: str) -> str:
    return prefix.rstrip(".") or "<top level>"


def _describe(emb: Group | None, chain: Sequence[Group], core: str) -> str:
    parts = []
    if emb is not None:
        v, e = emb[1]["weight"].shape
        parts.append(f"Embedding {_shown(emb[0])!r} ({v} tokens x {e})")
    parts.append(core)
    for name, p in chain:
        o, i = p["weight"].shape
        parts.append(f"Linear {_shown(name)!r} ({i} -> {o}{'' if 'bias' in p else ', no bias'})")
    return " -> ".join(parts)


def _find_group(others: list[Group], name: str, what: str) -> Group:
    """The module a keyword names: "emb", "emb." or a key such as "emb.weight"."""
    for cand in (name, name + ".", name[: -len("weight")] if name.endswith("weight") else None):
        for g in others:
            if cand is not None and g[0] == cand:
                return g
    raise ModelFormatError(
        f"{what}={name!r} names no module here; the modules beside the recurrent ones are "
        f"{[_shown(n) for n, _ in others]}"
    )


def _chains(width: int, rest: list[Group]) -> list[list[Group]]:
    """Every order of all of ``rest`` in which each Linear's input is the previous output."""
    if not rest:
        return [[]]
    found = []
    for i, g in enumerate(rest):
        w = g[1]["weight"]
        if w.shape[1] == width:
            for tail in _chains(int(w.shape[0]), rest[:i] + rest[i + 1 :]):
                found.append([g, *tail])
    return found


def _place_other_modules(
    groups: list[Group],
    recurrent: list[Group],
    layers: list[RecurrentLayer],
    *,
    ordered: bool,
    embedding: str | bool | None,
    head: Sequence[str] | None,
) -> tuple[np.ndarray | None, list[Group]]:
    """Decide which weight-only modules are the nn.Embedding before the recurrent layers and
    which the nn.Linear layers after them.

    Every reading the shapes allow is listed (an embedding's width is the first layer's
    input, each Linear takes the previous output), then narrowed by evidence that cannot be
    confused: an nn.Embedding has no bias; a module named like an embedding is not a Linear
    and the reverse; and, where the file keeps module order, the embedding is registered
    before the recurrent modules and the Linear layers after them, in order (ignored when no
    reading fits it: a model may register its head first). One reading left is the model;
    several raise ModelFormatError naming two and the keyword that picks one.
    """
    rec_names = {n for n, _ in recurrent}
    others = [g for g in groups if g[0] not in rec_names]
    odd = [
        _shown(n)
        for n, p in others
        if not set(p) <= {"weight", "bias"} or p.get("weight") is None or p["weight"].ndim != 2
    ]
    if odd:
        raise ModelFormatError(
            f"modules {odd} are neither an nn.Embedding before the recurrent layers nor an "
            "nn.Linear after them; pick the recurrent sub-module with prefix=..., or leave "
            "parameters that are not the model's (a loss's, say) out with ignore=[...]"
        )
    for n, p in others:
        b = p.get("bias")
        if b is not None and b.shape != (p["weight"].shape[0],):
            raise ModelFormatError(
                f"module {_shown(n)!r}: bias of shape {b.shape} does not match weight "
                f"{p['weight'].shape}"
            )
    in0, width = layers[0].input_size, layers[-1].output_size
    core = " -> ".join(
        f"{layer.cell.upper()}({layer.input_size} -> {layer.output_size})" for layer in layers
    )

    def can_embed(g: Group) -> bool:
        return "bias" not in g[1] and g[1]["weight"].shape[1] == in0

    if embedding is not None and embedding is not False and not isinstance(embedding, str):
        raise ModelFormatError(f"embedding must be a module name or False, got {embedding!r}")
    if head is not None and (isinstance(head, str) or not all(isinstance(h, str) for h in head)):
        raise ModelFormatError(f"head must be a list of module names, got {head!r}")
    fixed_emb: Group | None = None
    if isinstance(embedding, str):
        fixed_emb = _find_group(others, embedding, "embedding")
        if not can_embed(fixed_emb):
            found = "a bias" if "bias" in fixed_emb[1] else f"weight {fixed_emb[1]['weight'].shape}"
            raise ModelFormatError(
                f"embedding={embedding!r}: module {_shown(fixed_emb[0])!r} has {found}; an "
                f"nn.Embedding feeding the first layer is a (vocab, {in0}) weight alone"
            )
    fixed_head = None if head is None else [_find_group(others, h, "head") for h in head]
    at = width
    for name, p in fixed_head or []:
        if p["weight"].shape[1] != at:
            raise ModelFormatError(
                f"head: Linear {_shown(name)!r} takes {p['weight'].shape[1]} features, but "
                f"{at} reach it (the layers must chain from the recurrent output)"
            )
        at = int(p["weight"].shape[0])

    readings: list[tuple[Group | None, list[Group]]] = []
    if fixed_emb is not None and fixed_head is not None:
        # Both named: one module may serve as both (an embedding tied to the head).
        placed = {fixed_emb[0]} | {n for n, _ in fixed_head}
        left = [_shown(n) for n, _ in others if n not in placed]
        if left:
            raise ModelFormatError(f"modules {left} are neither the embedding nor the head")
        readings = [(fixed_emb, fixed_head)]
    else:
        if len(others) > _MAX_OTHER_MODULES:
            raise ModelFormatError(
                f"{len(others)} modules sit beside the recurrent ones; pick the model's part "
                "with prefix=..., or name them with embedding= and head=[...]"
            )
        roles = {n: _name_role(n) for n, _ in others}
        if fixed_emb is not None:
            emb_choices: list[Group | None] = [fixed_emb]
        elif embedding is False:
            emb_choices = [None]
        else:
            emb_choices = [None] + [g for g in others if can_embed(g) and roles[g[0]] != "head"]
        for emb in emb_choices:
            rest = [g for g in others if emb is None or g[0] != emb[0]]
            if fixed_head is not None:
                if {n for n, _ in rest} == {n for n, _ in fixed_head}:
                    readings.append((emb, fixed_head))
                continue
            if any(roles[n] == "embedding" for n, _ in rest):
                continue  # a module named as an embedding is never a Linear
            readings.extend((emb, chain) for chain in _chains(width, rest))
        if ordered and len(readings) > 1:
            pos = {n: i for i, (n, _) in enumerate(groups)}
            first = min(pos[n] for n in rec_names)
            last = max(pos[n] for n in rec_names)

            def follows_order(reading: tuple[Group | None, list[Group]]) -> bool:
                emb, chain = reading
                at = [pos[n] for n, _ in chain]
                return (
                    (emb is None or pos[emb[0]] < first)
                    and all(a > last for a in at)
                    and at == sorted(at)
                )

            in_order = [r for r in readings if follows_order(r)]
            readings = in_order or readings
    if not readings:
        raise ModelFormatError(
            f"modules {[_shown(n) for n, _ in others]} do not fit around the recurrent layers "
            f"({core}): an nn.Embedding is a (vocab, {in0}) weight without bias, and each "
            f"nn.Linear must take the previous output (the last layer gives {width} features); "
            "name them with embedding= and head=[...], or pick a sub-module with prefix=..."
        )
    if len(readings) > 1:
        a, b = readings[0], readings[1]
        raise ModelFormatError(
            "the weights fit more than one architecture: (1) "
            f"{_describe(a[0], a[1], core)}; (2) {_describe(b[0], b[1], core)}"
            f"{f' (and {len(readings) - 2} more)' if len(readings) > 2 else ''}. Pick one "
            "with embedding='<module>' (or embedding=False) and/or head=['<module>', ...] "
            "(or head=[])"
        )
    emb, chain = readings[0]
    table = None if emb is None else np.ascontiguousarray(emb[1]["weight"], np.float32)
    return table, chain


def spec_from_state_dict(
    state: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    nonlinearity: str | Sequence[str] = "tanh",
    batch_first: bool = False,
    head_activation: str | None = None,
    head_activations: Sequence[str | None] | None = None,
    embedding: str | bool | None = None,
    head: Sequence[str] | None = None,
    ordered: bool = True,
    source: str = "pytorch",
) -> ModelSpec:
    """Infer the architecture from parameter names and build the internal model.

    See the module docstring for what is recognised and the keyword arguments. ``embedding``
    (a module or key name, or False for none) and ``head`` (module or key names in order, []
    for none) settle what the evidence leaves ambiguous. ``ordered`` says whether the
    state_dict keeps module registration order (torch.save and live modules do; safetensors
    files sort their names).
    """
    embedding_key, head_keys = embedding, head
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ModelFormatError(f"no parameter names start with prefix {prefix!r}")
    groups = _group_modules(state)
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

    embedding, head_groups = _place_other_modules(
        groups,
        recurrent,
        layers,
        ordered=ordered,
        embedding=embedding_key,
        head=head_keys,
    )

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
    """A torch module or state_dict as numpy arrays (floating point as float32, integer
    buffers as int64), plus options read off the module."""
    options: dict[str, Any] = {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        rec = [m for m in obj.modules() if type(m).__name__ in ("LSTM", "GRU", "RNN")]
        if rec:
            options["batch_first"] = bool(rec[0].batch_first)
            nls = [getattr(m, "nonlinearity", "tanh") for m in rec]
            options["nonlinearity"] = nls[0] if len(set(nls)) == 1 else nls
        elif isinstance(getattr(obj, "batch_first", None), bool):
            options["batch_first"] = obj.batch_first  # the cells of lstm_infer.nn
        obj = obj.state_dict()
    state = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            if not v.is_floating_point():
                if v.dtype.is_complex or str(v.dtype) == "torch.bool":
                    continue
                state[str(k)] = v.detach().cpu().numpy().astype(np.int64)
                continue
            v = v.detach().float().cpu().numpy()
        arr = np.asarray(v)
        if arr.dtype.kind == "f":
            state[str(k)] = np.ascontiguousarray(arr, np.float32)
        elif arr.dtype.kind in "iu":
            state[str(k)] = np.asarray(arr, np.int64)
    return state, options


def _is_safetensors_source(src: str | os.PathLike[str] | bytes) -> bool:
    from lstm_infer.safetensors_io import is_safetensors

    if isinstance(src, bytes):
        return is_safetensors(src[:16])
    with open(src, "rb") as fh:
        return is_safetensors(fh.read(16))


def read_state(
    source: Any, *, key: str | None = None, inert_objects: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every array of a checkpoint path/bytes, a state_dict (torch or numpy) or a module
    (floating point as float32, integer buffers as int64), and the loader options the source
    implies (safetensors: no module order; a module: its batch_first / nonlinearity)."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        from lstm_infer.torch_checkpoint import read_checkpoint

        src = bytes(source) if isinstance(source, (bytearray, memoryview)) else source
        state = read_checkpoint(src, key=key, integers=True, inert_objects=inert_objects)
        # safetensors sort their names: no module order to go by
        return state, ({"ordered": False} if _is_safetensors_source(src) else {})
    if key is not None or inert_objects:
        raise ModelFormatError(
            "key= and inert_objects= apply to checkpoint files; pass the state_dict itself"
        )
    return _live_state_dict(source)


def floating(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 weights of a state read by read_state (integer buffers left out)."""
    return {k: v for k, v in state.items() if v.dtype == np.float32}


def import_torch(source: Any, *, key: str | None = None, **options: Any) -> ModelSpec:
    """A ModelSpec from a checkpoint path/bytes, a state_dict (torch or numpy) or a module."""
    state, found = read_state(source, key=key)
    return spec_from_state_dict(floating(state), **{**found, **options})


def export_module(
    module: Any, example_inputs: Any, input_names: Sequence[str] | None = None
) -> bytes:
    """ONNX bytes of a live torch module through ``torch.onnx.export`` (the legacy exporter),
    every axis but the last of every input left symbolic, so the graph runs at any batch and
    sequence length. For modules whose forward is more than a recurrent stack: their graph
    then loads as a GraphModel."""
    import io

    import torch

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise ModelFormatError("example_inputs must be a tensor or a tuple of tensors")
    names = (
        list(input_names)
        if input_names
        else [f"input{i}" if i else "input" for i in range(len(args))]
    )
    if len(names) != len(args):
        raise ModelFormatError(f"{len(names)} input_names for {len(args)} example inputs")
    dynamic = {n: {d: f"{n}_dim{d}" for d in range(a.dim() - 1)} for n, a in zip(names, args)}
    buf = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        torch.onnx.export(module, args, buf, input_names=names, dynamic_axes=dynamic, dynamo=False)
    finally:
        module.train(was_training)
    return buf.getvalue()
