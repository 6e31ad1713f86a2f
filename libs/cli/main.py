"""`llmesh <command> ...`: dispatch to the module that implements the command.

Each command is a module exposing `main(argv) -> int`, imported only when it runs, so a command's
dependencies never slow down or break another.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "keys": ("libs.cli.keys", "create, revoke and list API keys"),
    "tenants": ("libs.cli.tenants", "show and change tenant-wide settings"),
    "trace": ("libs.cli.trace", "show the spans of a request"),
}


def _usage() -> str:
    lines = ["usage: llmesh <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`llmesh <command> --help` describes a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmesh` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"llmesh: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
