"""Typed placeholders ([EMAIL_1], [EMAIL_2], ...) consistent within one request."""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")


class Redactor:
    """Hands out placeholders: the same (type, value) always gets the same one."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        self._counts[kind] += 1
        name = f"[{kind}_{self._counts[kind]}]"
        self._by_value[key] = name
        self._values[name] = value
        return name

    def mapping(self) -> dict[str, str]:
        """Placeholder to original value, for every placeholder handed out."""
        return dict(self._values)


def restore(text: str, mapping: dict[str, str]) -> str:
    """Replace known placeholders in `text` by their values; unknown ones stay."""
    if not mapping:
        return text
    return PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)
