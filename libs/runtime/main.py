"""Process entry point shared by every service's `__main__`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from pydantic import ValidationError

from libs.runtime.jsonlog import setup_logging
from libs.runtime.settings import ServiceSettings
from libs.runtime.telemetry import setup_tracing

S = TypeVar("S", bound=ServiceSettings)


class Runnable(Protocol):
    """A server with an async `run()` that serves until SIGTERM (GrpcService, the HTTP gateway)."""

    async def run(self) -> None: ...


def run_service(name: str, settings_cls: type[S], build: Callable[[S], Runnable]) -> None:
    """Read settings (a bad value exits with a clear message), set up logs and traces, serve."""
    try:
        settings = settings_cls()
    except ValidationError as exc:
        prefix = settings_cls.model_config.get("env_prefix", "")
        lines = [f"{name}: invalid settings (environment variables {prefix}*):"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {prefix}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(name, settings.log_level)
    setup_tracing(name)
    asyncio.run(build(settings).run())
