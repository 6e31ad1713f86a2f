"""Running one `llmesh <command>`: parse, run the async body, print domain errors as one line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from libs.runtime.errors import LlmeshError


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    argv: Sequence[str],
) -> int:
    """Parse `argv`, run `body`; a domain error prints `<prog>: <message>` and exits 1."""
    args = parser.parse_args(list(argv))
    try:
        return asyncio.run(body(args))
    except LlmeshError as exc:
        print(f"{parser.prog}: {exc.message}", file=sys.stderr)
        return 1
