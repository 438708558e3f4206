"""Paths of the models bundled with lstm_infer (the repository's models/ folder, installed as
the package data ``lstm_infer.models``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from lstm_infer.errors import ModelFormatError


def model_path(name: str) -> Path:
    """Path of a bundled file, e.g. ``model_path("char_lm.safetensors")``."""
    candidates = []
    try:
        candidates.append(Path(str(resources.files("lstm_infer.models") / name)))
    except ModuleNotFoundError:
        pass
    # A source checkout (tests run against an in-place build) keeps them in ../models.
    candidates.append(Path(__file__).resolve().parent.parent / "models" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise ModelFormatError(f"bundled model file {name!r} is not installed")


def char_lm_card() -> dict[str, Any]:
    """The bundled character LM's model card (vocabulary, corpus, losses)."""
    return json.loads(model_path("char_lm.json").read_text())
