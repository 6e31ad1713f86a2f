"""Render every service's settings as a Markdown table for the README.

`python -m libs.runtime.settings_doc` prints the tables; `--write README.md` replaces the block
between the `<!-- settings:begin -->` and `<!-- settings:end -->` markers. A test fails when the
README's block differs from the code, so the documented settings are always the real ones.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    """(service, class) for every `services/<name>/settings.py`, in name order."""
    found = []
    for path in sorted((ROOT / "services").glob("*/settings.py")):
        module = importlib.import_module(f"services.{path.parent.name}.settings")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseSettings) and cls.__module__ == module.__name__:
                found.append((path.parent.name, cls))
    return found


def _default(value: object) -> str:
    text = str(value)
    if text.startswith(str(ROOT) + "/"):  # a default computed from the checkout's location
        text = text[len(str(ROOT)) + 1 :]
    if isinstance(value, dict):
        text = json.dumps(value) if value else ""
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    return f"`{text}`" if text else "(empty)"


def render() -> str:
    """The Markdown block: one table per service."""
    out = [BEGIN]
    for service, cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        out += ["", f"#### {service}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            out.append(f"| `{prefix}{name.upper()}` | {_default(default)} | {doc} |")
    out += ["", END]
    return "\n".join(out)


def write_block(path: Path, block: str) -> None:
    """Replace the block in `path` that starts and ends with `block`'s own first and last lines."""
    begin, end = block.splitlines()[0], block.splitlines()[-1]
    text = path.read_text()
    start, stop = text.index(begin), text.index(end) + len(end)
    path.write_text(text[:start] + block + text[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="README to update in place")
    ns = parser.parse_args()
    if ns.write:
        write_block(ns.write, render())
    else:
        print(render())


if __name__ == "__main__":
    main()
