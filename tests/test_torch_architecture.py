"""Which weight-only module of a state_dict is the embedding and which the head.

Every case is a real torch module whose sizes coincide (an embedding as wide as the hidden
size, a head whose out equals the vocabulary, Linear without bias, embedding and head tied),
saved with torch.save (module order kept) and as safetensors (names sorted), under telling
and neutral names, registered in either order. A load either matches the module's own forward
or raises ModelFormatError naming the readings and the keyword that picks one; it never
silently builds another model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

import lstm_infer
from lstm_infer.errors import ModelFormatError

torch = require("torch")
nn = torch.nn
V, H, T, B = 29, 16, 6, 2  # vocab, hidden = embedding width, steps, batch


class EmbRnn(nn.Module):
    """Embedding(V, H) -> GRU(H, H) [-> Linear(H, V)], attribute names and order chosen."""

    def __init__(self, names: tuple[str, str, str | None], head_first: bool = False,
                 head_bias: bool = True, tie: bool = False) -> None:  # fmt: skip
        super().__init__()
        emb, rnn, head = names
        self.names = names
        if head is not None and head_first:
            setattr(self, head, nn.Linear(H, V, bias=head_bias))
        setattr(self, emb, nn.Embedding(V, H))
        setattr(self, rnn, nn.GRU(H, H))
        if head is not None and not head_first:
            setattr(self, head, nn.Linear(H, V, bias=head_bias))
        if tie:
            getattr(self, head).weight = getattr(self, emb).weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb, rnn, head = self.names
        y = getattr(self, rnn)(getattr(self, emb)(ids))[0]
        return getattr(self, head)(y) if head is not None else y


class RnnHead(nn.Module):
    """GRU(H, H) -> Linear(H, V, bias=False): the other reading of the same shapes."""

    def __init__(self, names: tuple[str, str]) -> None:
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.GRU(H, H))
        setattr(self, names[1], nn.Linear(H, V, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.names[1])(getattr(self, self.names[0])(x)[0])


def _save(module: nn.Module, folder: Path, fmt: str) -> Path:
    if fmt == "pt":
        path = folder / "model.pt"
        torch.save(module.state_dict(), path)
    else:
        from safetensors.torch import save_model

        path = folder / "model.safetensors"
        save_model(module, str(path))  # drops one name of a tied pair, as users' files do
    return path


def _ids(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, V, size=(T, B)).astype(np.int64)


def _check_tokens(model: lstm_infer.Model, module: nn.Module, rng: np.random.Generator) -> None:
    ids = _ids(rng)
    with torch.no_grad():
        ref = module(torch.from_numpy(ids)).numpy()
    out = model.run({"input": ids})["output"]
    np.testing.assert_allclose(out, ref, atol=1e-5)


NAMED = [("emb", "gru", "fc"), ("embedding", "rnn", "out"), ("encoder", "lstm_core", "decoder")]


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("names", [("emb", "gru", None), ("embed", "encoder_rnn", None)])
def test_g2p_encoder_embedding_as_wide_as_hidden(tmp_path, rng, fmt, names) -> None:
    """The defect: Embedding(29, 256) -> GRU(256, 256) loaded as a GRU with a 29-way head."""
    torch.manual_seed(0)
    module = EmbRnn(names).eval()
    model = lstm_infer.load(_save(module, tmp_path, fmt))
    assert model.inputs[0].dtype == "int64"
    _check_tokens(model, module, rng)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("names", NAMED)
@pytest.mark.parametrize("head_first", [False, True])
@pytest.mark.parametrize("head_bias", [True, False])
def test_named_modules_decide(tmp_path, rng, fmt, names, head_first, head_bias) -> None:
    torch.manual_seed(1)
    module = EmbRnn(names, head_first=head_first, head_bias=head_bias).eval()
    model = lstm_infer.load(_save(module, tmp_path, fmt))
    _check_tokens(model, module, rng)


@pytest.mark.parametrize("head_bias", [True, False])
def test_neutral_names_decided_by_module_order(tmp_path, rng, head_bias) -> None:
    """torch.save keeps registration order: the module before the GRU is the embedding."""
    torch.manual_seed(2)
    module = EmbRnn(("a", "b", "c"), head_bias=head_bias).eval()
    _check_tokens(lstm_infer.load(_save(module, tmp_path, "pt")), module, rng)


def test_neutral_names_in_safetensors_are_ambiguous_until_named(tmp_path, rng) -> None:
    torch.manual_seed(3)
    module = EmbRnn(("a", "b", None)).eval()
    path = _save(module, tmp_path, "safetensors")
    with pytest.raises(ModelFormatError) as err:
        lstm_infer.load(path)
    text = str(err.value)
    assert "more than one architecture" in text
    assert "Embedding 'a' (29 tokens x 16)" in text and "Linear 'a' (16 -> 29, no bias)" in text
    assert "embedding=" in text and "head=" in text
    _check_tokens(lstm_infer.load(path, embedding="a.weight"), module, rng)
    _check_tokens(lstm_infer.load(path, head=[]), module, rng)
    # The other reading, when the user says so: a GRU over features, then a 29-way Linear.
    as_head = lstm_infer.load(path, head=["a"])
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    other = RnnHead(("b", "a")).eval()
    other.b.load_state_dict(module.b.state_dict())
    other.a.weight.data.copy_(module.a.weight.data)
    with torch.no_grad():
        ref = other(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(as_head.run({"input": x})["output"], ref, atol=1e-5)


def test_rnn_then_bias_free_head_with_neutral_names(tmp_path, rng) -> None:
    """GRU registered first, then a bias-free (V, H) Linear: ordered, it is the head."""
    torch.manual_seed(4)
    module = RnnHead(("a", "z")).eval()
    model = lstm_infer.load(_save(module, tmp_path, "pt"))
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.run({"input": x})["output"], ref, atol=1e-5)
    with pytest.raises(ModelFormatError, match="more than one architecture"):
        lstm_infer.load(_save(module, tmp_path, "safetensors"))


def test_embedding_and_head_both_bias_free_with_neutral_names(tmp_path, rng) -> None:
    torch.manual_seed(5)
    module = EmbRnn(("a", "b", "c"), head_bias=False).eval()
    path = _save(module, tmp_path, "safetensors")
    with pytest.raises(ModelFormatError, match="more than one architecture"):
        lstm_infer.load(path)
    _check_tokens(lstm_infer.load(path, embedding="a", head=["c"]), module, rng)
    _check_tokens(lstm_infer.load(path, embedding="a"), module, rng)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_tied_embedding_and_head(tmp_path, rng, fmt) -> None:
    torch.manual_seed(6)
    module = EmbRnn(("emb", "rnn", "fc"), head_bias=False, tie=True).eval()
    path = _save(module, tmp_path, fmt)
    if fmt == "pt":  # both names are in the file, each telling
        _check_tokens(lstm_infer.load(path), module, rng)
        return
    # save_model keeps one name of the tied pair: the file alone says one module
    from safetensors import safe_open

    with safe_open(str(path), "np") as fh:
        kept = [k for k in fh.keys() if not k.startswith("rnn.")]
    assert len(kept) == 1
    name = kept[0].split(".")[0]
    # Read alone the file holds one bias-free (V, H) module: its name says which part it is,
    # and only the keywords can say it is both.
    alone = lstm_infer.load(path)
    assert alone.inputs[0].dtype == ("int64" if name == "emb" else "float32")
    _check_tokens(lstm_infer.load(path, embedding=name, head=[name]), module, rng)


def test_keyword_mistakes_are_named(tmp_path) -> None:
    module = EmbRnn(("emb", "gru", "fc"))
    path = _save(module, tmp_path, "pt")
    with pytest.raises(ModelFormatError, match="embedding='nope' names no module"):
        lstm_infer.load(path, embedding="nope")
    with pytest.raises(ModelFormatError, match="has a bias"):
        lstm_infer.load(path, embedding="fc")
    with pytest.raises(ModelFormatError, match="takes 16 features, but 29 reach it"):
        lstm_infer.load(path, head=["fc", "fc"])
    with pytest.raises(ModelFormatError, match="head must be a list"):
        lstm_infer.load(path, head="fc")
