"""Hypothesis settings shared by the fuzz tests: a fixed, bounded run in CI, longer on demand.

``LSTM_INFER_FUZZ_EXAMPLES`` sets the number of examples per fuzz test; up to 60 (the CI
defaults) the examples are derandomized, so every CI run checks the same inputs.
"""

from __future__ import annotations

import os
from typing import Any

from conftest import require

hypothesis = require("hypothesis")


def fuzz_examples(default: int) -> int:
    """``LSTM_INFER_FUZZ_EXAMPLES``, or ``default``."""
    return int(os.environ.get("LSTM_INFER_FUZZ_EXAMPLES", str(default)))


def is_ci_run(examples: int) -> bool:
    """Whether a run of ``examples`` examples is the fixed, derandomized CI run."""
    return examples <= 60


def fuzz_settings(default_examples: int, **overrides: Any) -> Any:
    """hypothesis settings for ``fuzz_examples(default_examples)`` examples."""
    examples = fuzz_examples(default_examples)
    options: dict[str, Any] = {
        "max_examples": examples,
        "deadline": None,
        "suppress_health_check": list(hypothesis.HealthCheck),
        "derandomize": is_ci_run(examples),  # CI: the same examples every run
        "database": None,
    }
    options.update(overrides)
    return hypothesis.settings(**options)
