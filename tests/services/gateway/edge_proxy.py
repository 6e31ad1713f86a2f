"""Start a real Envoy from the rendered template for tests, stopped by PID."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from deploy.envoy.render import EdgeConfig, build_descriptor, envoy_argv, write_config
from libs.testing.process import ManagedProcess, free_port

_base_ids = itertools.count(4000 + os.getpid() % 1000 * 10)


@dataclasses.dataclass
class Edge:
    """A running Envoy."""

    port: int
    admin_port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


def _ready(admin_port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5).text.strip() == "LIVE"


@contextmanager
def edge_proxy(tmp: Path, router_port: int, gateway_port: int, **overrides: object) -> Iterator[Edge]:
    """Envoy in front of a router and a gateway on 127.0.0.1, with EdgeConfig overrides."""
    cfg = EdgeConfig(
        listen_port=free_port(),
        admin_port=free_port(),
        routers=(f"127.0.0.1:{router_port}",),
        gateways=(f"127.0.0.1:{gateway_port}",),
        descriptor=build_descriptor(),
        **overrides,  # type: ignore[arg-type]
    )
    config = write_config(cfg, tmp / f"envoy-{cfg.listen_port}.yaml")
    process = ManagedProcess(
        name=f"envoy-{cfg.listen_port}",
        argv=envoy_argv(config, base_id=next(_base_ids), log_level="warning"),
        log_path=tmp / f"envoy-{cfg.listen_port}.log",
    ).start()
    try:
        process.wait_until(lambda: _ready(cfg.admin_port), 15, what="LIVE")
        yield Edge(cfg.listen_port, cfg.admin_port, process)
    finally:
        process.stop(grace_s=5)
