"""PyTorch reference modules of the cells beyond ONNX's three (training side; needs torch).

Each module implements exactly the definition pinned in ``shared/CELLS.md`` (gate order
``i, f, g, o``; weights ``(out, in)`` like ``nn.Linear``; LayerNorm over the last axis) and
owns exactly the state_dict keys listed there, so a model trained with it can be loaded by
the engine without torch. Common contract: ``forward(x, state=None) -> (output, state)``,
``x`` of shape ``(T, B, I)`` (``(B, T, I)`` with ``batch_first=True``), a missing state all
zeros and the step counter 0, ``output`` the top layer's h at every step.

Here: :class:`DepthGatedLSTM`, :class:`ClockworkRNN`, :class:`GridLSTM`,
:class:`LayerNormLSTM` and :class:`AttentionDecoder`. Loading these state_dicts for inference
and their fused engine ops are not written yet. The runtime never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from lstm_infer.errors import MissingDependencyError

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise MissingDependencyError(
        "lstm_infer.nn holds PyTorch modules for training: it needs torch "
        "(pip install torch); lstm_infer itself runs these models without it"
    ) from exc

__all__ = ["AttentionDecoder", "ClockworkRNN", "DepthGatedLSTM", "GridLSTM", "LayerNormLSTM"]

ATTENTIONS = ("additive", "general", "dot", "location")


def _check_sizes(input_size: int, hidden_size: int, num_layers: int = 1) -> None:
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                    ("num_layers", num_layers)):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _uniform_(params: Sequence[torch.Tensor], hidden_size: int) -> None:
    """PyTorch's recurrent initialisation: U(-1/sqrt(H), 1/sqrt(H))."""
    bound = hidden_size**-0.5
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)


def _time_major(x: torch.Tensor, batch_first: bool, name: str = "x") -> torch.Tensor:
    if x.dim() != 3:
        raise ValueError(
            f"{name} must be (T, B, I) or, batch_first, (B, T, I); got {tuple(x.shape)}"
        )
    return x.transpose(0, 1) if batch_first else x


def _layer_states(
    x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, layers: int, hidden: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A (layers, B, H) pair of states as two per-layer lists; zeros when state is None."""
    if state is None:
        zeros = x.new_zeros(layers, x.shape[1], hidden)
        state = (zeros, zeros)
    return list(state[0].unbind(0)), list(state[1].unbind(0))


def _sequence_output(
    outputs: list[torch.Tensor], like: torch.Tensor, width: int, batch_first: bool
) -> torch.Tensor:
    """The per-step outputs (B, width) stacked over time, (B, T, width) when batch_first."""
    y = torch.stack(outputs) if outputs else like.new_zeros(0, like.shape[1], width)
    return y.transpose(0, 1) if batch_first else y


def _lstm_gates(
    gates: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """i, f, o = sigmoid, g = tanh of the four gate blocks; returns (i, f, g, o)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)


class _Stacked(nn.Module):
    """What the layered cells share: sizes checked and kept, the batch_first flag."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, batch_first: bool
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_layers)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first


class DepthGatedLSTM(_Stacked):
    """Depth-gated LSTM (Yao et al. 2015): layer 0 a plain LSTM; every layer above adds a
    depth gate ``d = sigmoid(D x + e + p * c_prev + q * c_lower)`` that lets the lower layer's
    new cell into its own: ``c = d * c_lower + f * c_prev + i * g``.

    State: ``(h, c)``, each ``(num_layers, B, H)``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        H = hidden_size
        for layer in range(num_layers):
            width = input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * H, width)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * H, H)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * H)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * H)))
            if layer:
                for key, shape in (("depth_weight", (H, H)), ("depth_bias", (H,)),
                                   ("depth_cell", (H,)), ("depth_lower", (H,))):  # fmt: skip
                    self.register_parameter(f"{key}_l{layer}", nn.Parameter(torch.empty(*shape)))
        _uniform_(list(self.parameters()), H)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = _time_major(x, self.batch_first)
        L, H = self.num_layers, self.hidden_size
        h, c = _layer_states(x, state, L, H)
        outputs = []
        for x_t in x.unbind(0):
            below, c_below = x_t, None
            for layer in range(L):
                p = {k: getattr(self, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh",
                                                                 "bias_ih", "bias_hh")}  # fmt: skip
                gates = (below @ p["weight_ih"].T + p["bias_ih"] + h[layer] @ p["weight_hh"].T
                         + p["bias_hh"])  # fmt: skip
                i, f, g, o = _lstm_gates(gates)
                new_c = f * c[layer] + i * g
                if layer:
                    d = torch.sigmoid(
                        below @ getattr(self, f"depth_weight_l{layer}").T
                        + getattr(self, f"depth_bias_l{layer}")
                        + getattr(self, f"depth_cell_l{layer}") * c[layer]
                        + getattr(self, f"depth_lower_l{layer}") * c_below
                    )
                    new_c = d * c_below + new_c
                h[layer] = o * torch.tanh(new_c)
                c[layer] = new_c
                below, c_below = h[layer], new_c
            outputs.append(below)
        y = _sequence_output(outputs, x, H, self.batch_first)
        return y, (torch.stack(h), torch.stack(c))


class ClockworkRNN(nn.Module):
    """Clockwork RNN (Koutník et al. 2014): the H units form ``len(periods)`` equal modules;
    module m runs at step t iff ``t % periods[m] == 0`` and reads the state of modules
    ``n >= m`` only (block upper-triangular recurrence; other entries of ``weight_hh`` are
    ignored); an inactive module keeps its h.

    State: ``(h, t)``, h ``(1, B, H)`` and t the step counter (an int64 scalar tensor).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        periods: Sequence[int] = (1, 2, 4, 8),
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size)
        periods = [int(p) for p in periods]
        if not periods or any(p < 1 for p in periods):
            raise ValueError(f"periods must be positive ints, got {periods}")
        if any(a >= b for a, b in zip(periods, periods[1:])):
            raise ValueError(f"periods must be ascending, got {periods}")
        if hidden_size % len(periods):
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by the {len(periods)} modules"
            )
        self.input_size, self.hidden_size = input_size, hidden_size
        self.batch_first = batch_first
        H, k = hidden_size, hidden_size // len(periods)
        self.weight_ih = nn.Parameter(torch.empty(H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.bias = nn.Parameter(torch.empty(H))
        self.register_buffer("periods", torch.tensor(periods, dtype=torch.int64))
        # module of each unit, and the recurrent mask: row unit in module m reads n >= m
        module = torch.arange(H) // k
        self.register_buffer("_mask", (module[None, :] >= module[:, None]), persistent=False)
        self.register_buffer("_module", module, persistent=False)
        _uniform_([self.weight_ih, self.weight_hh, self.bias], H)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = _time_major(x, self.batch_first)
        B, H = x.shape[1], self.hidden_size
        if state is None:
            h, t = x.new_zeros(1, B, H), torch.tensor(0, dtype=torch.int64)
        else:
            h, t = state
        h = h[0]
        step = int(t)
        recurrent = self.weight_hh * self._mask.to(self.weight_hh.dtype)
        unit_period = self.periods[self._module]
        outputs = []
        for x_t in x.unbind(0):
            active = (step % unit_period) == 0
            new_h = torch.tanh(x_t @ self.weight_ih.T + self.bias + h @ recurrent.T)
            h = torch.where(active, new_h, h)
            outputs.append(h)
            step += 1
        out = _sequence_output(outputs, x, H, self.batch_first)
        return out, (h[None], torch.tensor(step, dtype=torch.int64))


class LayerNormLSTM(_Stacked):
    """Layer-normalised LSTM (torchaudio's RNN-T predictor cell): ``gates = LN_g(W x + b +
    R h)`` over all 4H values, ``c' = LN_c(f * c + i * g)`` (the normalised cell is the state
    carried on), ``h' = o * tanh(c')``. ``weight_hh`` has no bias.

    State: ``(h, c)``, each ``(num_layers, B, H)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        eps: float = 1e-5,
        batch_first: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        H = hidden_size
        for layer in range(num_layers):
            width = input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * H, width)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * H)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * H, H)))
        _uniform_(list(self.parameters()), H)
        for layer in range(num_layers):
            setattr(self, f"gate_norm_l{layer}", nn.LayerNorm(4 * H, eps=eps))
            setattr(self, f"cell_norm_l{layer}", nn.LayerNorm(H, eps=eps))
        self.register_buffer("eps", torch.tensor(eps, dtype=torch.float64))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = _time_major(x, self.batch_first)
        L, H = self.num_layers, self.hidden_size
        h, c = _layer_states(x, state, L, H)
        outputs = []
        for x_t in x.unbind(0):
            below = x_t
            for layer in range(L):
                pre = (below @ getattr(self, f"weight_ih_l{layer}").T
                       + getattr(self, f"bias_ih_l{layer}")
                       + h[layer] @ getattr(self, f"weight_hh_l{layer}").T)  # fmt: skip
                i, f, g, o = _lstm_gates(getattr(self, f"gate_norm_l{layer}")(pre))
                c[layer] = getattr(self, f"cell_norm_l{layer}")(f * c[layer] + i * g)
                h[layer] = o * torch.tanh(c[layer])
                below = h[layer]
            outputs.append(below)
        y = _sequence_output(outputs, x, H, self.batch_first)
        return y, (torch.stack(h), torch.stack(c))


class GridLSTM(_Stacked):
    """Grid LSTM over time x depth (Kalchbrenner et al. 2015): every layer has a time LSTM
    block (``[h_{t-1}; u_below] -> h, m`` with its own cell m carried in time) and a depth
    block that sees the new time output (``[h; u_below] -> u, n`` with the cell n of the layer
    below at this step); ``u`` below layer 0 is ``input_proj x``, its cell zero; the output is
    the top layer's u.

    State: ``(h, m)``, each ``(num_layers, B, H)`` (the depth pair lives within a step).
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        H = hidden_size
        self.input_proj = nn.Parameter(torch.empty(H, input_size))
        for layer in range(num_layers):
            for block in ("time", "depth"):
                self.register_parameter(
                    f"{block}_weight_l{layer}", nn.Parameter(torch.empty(4 * H, 2 * H))
                )
                self.register_parameter(f"{block}_bias_l{layer}", nn.Parameter(torch.empty(4 * H)))
        _uniform_(list(self.parameters()), H)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = _time_major(x, self.batch_first)
        L, B, H = self.num_layers, x.shape[1], self.hidden_size
        h, m = _layer_states(x, state, L, H)
        outputs = []
        for x_t in x.unbind(0):
            u = x_t @ self.input_proj.T
            n = x.new_zeros(B, H)
            for layer in range(L):
                gates = (torch.cat([h[layer], u], -1) @ getattr(self, f"time_weight_l{layer}").T
                         + getattr(self, f"time_bias_l{layer}"))  # fmt: skip
                i, f, g, o = _lstm_gates(gates)
                m[layer] = f * m[layer] + i * g
                h[layer] = o * torch.tanh(m[layer])
                gates = (torch.cat([h[layer], u], -1) @ getattr(self, f"depth_weight_l{layer}").T
                         + getattr(self, f"depth_bias_l{layer}"))  # fmt: skip
                i, f, g, o = _lstm_gates(gates)
                n = f * n + i * g
                u = o * torch.tanh(n)
            outputs.append(u)
        y = _sequence_output(outputs, x, H, self.batch_first)
        return y, (torch.stack(h), torch.stack(m))


class AttentionDecoder(nn.Module):
    """An LSTM decoder attending over a memory (Bahdanau 2014, Luong 2015, Chorowski 2015 /
    Tacotron 2). One step: ``h, c = LSTMCell([y_t; ctx_{t-1}], (h, c))``; scores ``e_j`` by
    ``attention`` (``"additive"``: ``v . tanh(Wq h + K_j + b)``; ``"general"``: ``h . (Wg
    M_j)``; ``"dot"``: ``h . M_j``, needs hidden_size == memory_size; ``"location"``: additive
    plus ``Wl F_j``, F = conv1d over the previous and the cumulative weights); ``alpha`` =
    softmax over the valid positions (j < length); ``ctx = sum_j alpha_j M_j``; output
    ``[h; ctx]``. Keys of the memory (``K = M Wm^T``, or ``Wg M``) are computed once per call.

    State: ``(h, c, ctx, alpha, alpha_cum)`` — ``(B, H)``, ``(B, H)``, ``(B, Dm)``, ``(B, S)``,
    ``(B, S)``; ``alpha_cum`` sums every step's weights so far.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        memory_size: int,
        attention: str,
        attention_size: int | None = None,
        location_filters: int = 32,
        location_kernel: int = 31,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size)
        _check_sizes(memory_size, attention_size or hidden_size)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if attention == "dot" and hidden_size != memory_size:
            raise ValueError(
                f"dot attention needs hidden_size == memory_size, got {hidden_size}, {memory_size}"
            )
        if attention == "location" and (location_kernel < 1 or location_kernel % 2 == 0):
            raise ValueError(f"location_kernel must be odd and positive, got {location_kernel}")
        self.input_size, self.hidden_size, self.memory_size = input_size, hidden_size, memory_size
        self.attention, self.batch_first = attention, batch_first
        A = attention_size or hidden_size
        self.cell = nn.LSTMCell(input_size + memory_size, hidden_size)
        if attention in ("additive", "location"):
            self.query = nn.Linear(hidden_size, A, bias=False)
            self.memory = nn.Linear(memory_size, A, bias=False)
            self.energy = nn.Linear(A, 1, bias=False)
            self.energy_bias = nn.Parameter(torch.zeros(A))
        if attention == "location":
            self.location_conv = nn.Conv1d(
                2, location_filters, location_kernel, padding=(location_kernel - 1) // 2,
                bias=False,
            )  # fmt: skip
            self.location_dense = nn.Linear(location_filters, A, bias=False)
        if attention == "general":
            self.score = nn.Linear(memory_size, hidden_size, bias=False)

    def forward(
        self,
        y: torch.Tensor,
        memory: torch.Tensor,
        memory_lengths: torch.Tensor | None = None,
        state: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        y = _time_major(y, self.batch_first, "y")
        M = _time_major(memory, self.batch_first, "memory")  # (S, B, Dm)
        S, B = M.shape[0], M.shape[1]
        if y.shape[1] != B:
            raise ValueError(f"y has batch {y.shape[1]}, memory batch {B}")
        if memory_lengths is None:
            valid = torch.ones(B, S, dtype=torch.bool, device=M.device)
        else:
            lengths = torch.as_tensor(memory_lengths, dtype=torch.int64)
            if lengths.shape != (B,) or bool((lengths < 1).any() | (lengths > S).any()):
                raise ValueError(f"memory_lengths must be (B,) ints in [1, {S}], got {lengths}")
            valid = torch.arange(S)[None, :] < lengths[:, None]
        Mb = M.transpose(0, 1)  # (B, S, Dm)
        keys = None
        if self.attention in ("additive", "location"):
            keys = self.memory(Mb)  # (B, S, A)
        elif self.attention == "general":
            keys = self.score(Mb)  # (B, S, H): Wg M_j
        if state is None:
            H, Dm = self.hidden_size, self.memory_size
            h, c, ctx = M.new_zeros(B, H), M.new_zeros(B, H), M.new_zeros(B, Dm)
            alpha, alpha_cum = M.new_zeros(B, S), M.new_zeros(B, S)
        else:
            h, c, ctx, alpha, alpha_cum = state
        outputs = []
        for y_t in y.unbind(0):
            h, c = self.cell(torch.cat([y_t, ctx], -1), (h, c))
            if self.attention == "dot":
                e = torch.einsum("bh,bsh->bs", h, Mb)
            elif self.attention == "general":
                e = torch.einsum("bh,bsh->bs", h, keys)
            else:
                z = self.query(h)[:, None, :] + keys + self.energy_bias
                if self.attention == "location":
                    feats = self.location_conv(torch.stack([alpha, alpha_cum], 1))  # (B, F, S)
                    z = z + self.location_dense(feats.transpose(1, 2))
                e = self.energy(torch.tanh(z))[..., 0]
            alpha = torch.softmax(e.masked_fill(~valid, float("-inf")), -1)
            alpha_cum = alpha_cum + alpha
            ctx = torch.einsum("bs,bsd->bd", alpha, Mb)
            outputs.append(torch.cat([h, ctx], -1))
        out = _sequence_output(outputs, y, self.hidden_size + self.memory_size, self.batch_first)
        return out, (h, c, ctx, alpha, alpha_cum)
