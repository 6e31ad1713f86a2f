"""The README documents the real settings and the two commands."""

from __future__ import annotations

from pathlib import Path

from libs.runtime.settings_doc import BEGIN, END, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_settings_block_matches_the_code() -> None:
    text = README.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == render(), (
        "README settings are stale: run `python -m libs.runtime.settings_doc --write README.md`"
    )


def test_two_commands_are_shown() -> None:
    text = README.read_text()
    assert "make up" in text and "make test" in text
