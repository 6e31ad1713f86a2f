"""Tokenizers for the models the mesh serves (the Hugging Face `tokenizers` library directly).

A model folder holds `tokenizer.json` (and usually a chat template). The registry scans the
models directory: `<models_dir>/<name>/hf/` is the model `<name>`, and each sibling precision
folder (`<models_dir>/<name>/<precision>/`) adds the alias `<name>-<precision>`, the names the
inference service serves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from libs.runtime.errors import InvalidArgument, NotFound
from services.tokenizer.chat_template import ChatTemplate

log = logging.getLogger(__name__)
ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class Message:
    """A chat message, independent of the wire format."""

    role: str
    content: str
    name: str = ""


@dataclass
class LoadedTokenizer:
    """One tokenizer (and its chat template) with the names that resolve to it."""

    name: str
    path: Path
    impl: Tokenizer
    template: ChatTemplate | None
    aliases: list[str] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return int(self.impl.get_vocab_size(with_added_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return self.template is not None


class TokenizerRegistry:
    """Name → tokenizer, with input limits enforced at the boundary."""

    def __init__(self, max_text_bytes: int = 1 << 20, max_tokens: int = 1 << 17):
        self.max_text_bytes = max_text_bytes
        self.max_tokens = max_tokens
        self._by_name: dict[str, LoadedTokenizer] = {}
        self._tokenizers: list[LoadedTokenizer] = []

    def load_dir(self, models_dir: Path) -> list[str]:
        """Load every `<models_dir>/<name>/hf` tokenizer; returns the names loaded."""
        loaded = []
        for hf in sorted(models_dir.glob("*/hf")):
            if not (hf / "tokenizer.json").is_file():
                continue
            name = hf.parent.name
            aliases = sorted(
                f"{name}-{p.name}"
                for p in hf.parent.iterdir()
                if p.is_dir() and p.name != "hf" and (p / "genai_config.json").is_file()
            )
            self.add(name, hf, aliases)
            loaded.append(name)
        return loaded

    def add(self, name: str, path: Path, aliases: Iterable[str] = ()) -> LoadedTokenizer:
        """Load the tokenizer at `path` under `name` and `aliases`."""
        impl = Tokenizer.from_file(str(path / "tokenizer.json"))
        entry = LoadedTokenizer(name, path, impl, ChatTemplate.from_folder(path), list(aliases))
        self._tokenizers.append(entry)
        for n in (name, *entry.aliases):
            self._by_name[n] = entry
        log.info("tokenizer loaded", extra={"fields": {"tokenizer": name, "aliases": entry.aliases}})
        return entry

    def __len__(self) -> int:
        return len(self._tokenizers)

    def all(self) -> list[LoadedTokenizer]:
        """Loaded tokenizers in load order."""
        return list(self._tokenizers)

    def get(self, model: str) -> LoadedTokenizer:
        """The tokenizer for a model name or alias."""
        if not model:
            raise InvalidArgument("model is required: name the model whose tokenizer to use")
        try:
            return self._by_name[model]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none loaded"
            raise NotFound(f"unknown model {model!r}; known: {known}", reason="UNKNOWN_MODEL") from None

    def _check_text(self, text: str, what: str = "text") -> None:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_text_bytes:
            raise InvalidArgument(
                f"{what} is {size} bytes; the limit is {self.max_text_bytes} bytes", reason="TEXT_TOO_LONG"
            )

    def encode(self, model: str, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`."""
        self._check_text(text)
        tok = self.get(model)
        return list(tok.impl.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, model: str, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `token_ids`; ids outside the vocabulary are an error, not garbage."""
        tok = self.get(model)
        if len(token_ids) > self.max_tokens:
            raise InvalidArgument(f"{len(token_ids)} token ids; the limit is {self.max_tokens}")
        vocab = tok.vocab_size
        bad = [t for t in token_ids if t < 0 or t >= vocab]
        if bad:
            raise InvalidArgument(
                f"token ids outside the vocabulary [0, {vocab}): {bad[:5]}", reason="TOKEN_OUT_OF_RANGE"
            )
        return str(tok.impl.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def render_chat(self, model: str, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The chat rendered as prompt text with the model's chat template."""
        tok = self.get(model)
        if not messages:
            raise InvalidArgument("messages must not be empty", reason="EMPTY_MESSAGES")
        if tok.template is None:
            raise InvalidArgument(
                f"model {tok.name!r} has no chat template; use a completion instead",
                reason="NO_CHAT_TEMPLATE",
            )
        turns: list[dict[str, str]] = []
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role is {m.role!r}; expected one of {', '.join(sorted(ROLES))}",
                    reason="INVALID_ROLE",
                )
            self._check_text(m.content, f"messages[{i}].content")
            turn = {"role": m.role, "content": m.content}
            if m.name:
                turn["name"] = m.name
            turns.append(turn)
        return tok.template.render(turns, add_generation_prompt)

    def apply_chat_template(
        self, model: str, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> tuple[str, list[int]]:
        """The rendered chat and its token ids (the template carries its own special tokens)."""
        prompt = self.render_chat(model, messages, add_generation_prompt)
        return prompt, list(self.get(model).impl.encode(prompt, add_special_tokens=False).ids)

    def count(self, model: str, text: str = "", messages: Sequence[Message] = ()) -> int:
        """Tokens in `text`, or in the rendered chat when messages are given."""
        if messages and text:
            raise InvalidArgument("give either text or messages, not both")
        if messages:
            return len(self.apply_chat_template(model, messages)[1])
        return len(self.encode(model, text))
