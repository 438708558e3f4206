"""The README's supported-operators table is the registry's (regenerate it with
``python -m lstm_infer.ops.table README.md``)."""

from __future__ import annotations

from pathlib import Path

from lstm_infer.ops.table import BEGIN, END, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_operator_table_matches_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "README lacks the generated operator table"
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert table == markdown_table(), "run: python -m lstm_infer.ops.table README.md"
