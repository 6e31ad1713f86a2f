"""Chat templates rendered the way Hugging Face renders them, without loading transformers.

A model folder carries its template as `chat_template.jinja` (or `chat_template` inside
`tokenizer_config.json`). Templates are untrusted code from a model hub, so they run in Jinja's
immutable sandbox, with the helpers templates expect: `raise_exception`, `strftime_now`, a `tojson`
filter that does not HTML-escape, and the special tokens (`bos_token`, `eos_token`, ...) as
variables. A test checks the output against transformers' own `apply_chat_template`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from libs.runtime.errors import InvalidArgument

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """One compiled chat template with the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: Mapping[str, str]):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(source)
        self._special = dict(special_tokens)

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate | None:
        """The folder's template (None when it has none)."""
        config_path = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        source_file = folder / "chat_template.jinja"
        source = source_file.read_text() if source_file.is_file() else config.get("chat_template")
        if not isinstance(source, str) or not source:
            return None
        special = {}
        for key in SPECIAL_TOKEN_KEYS:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        return cls(source, special)

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        """The conversation as prompt text; a template's own error becomes INVALID_ARGUMENT."""
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self._special
            )
        except jinja2.exceptions.TemplateError as exc:
            raise InvalidArgument(f"the model's chat template refused this conversation: {exc}",
                                  reason="CHAT_TEMPLATE_ERROR") from None  # fmt: skip
