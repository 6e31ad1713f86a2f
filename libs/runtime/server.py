"""gRPC server lifecycle shared by every service.

`GrpcService` binds the port first and reports NOT_SERVING, runs the start hooks (model loading,
warm-up, connections), then reports SERVING. On SIGTERM or SIGINT it reports NOT_SERVING, stops
accepting calls (after `drain_delay_s`), gives in-flight calls `grace_period_s`, then runs the
stop hooks in reverse.
Health (`grpc.health.v1`) and server reflection are always on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from libs.runtime.interceptors import ServerInterceptor
from libs.runtime.metrics import SERVING, start_metrics_server
from libs.runtime.settings import ServiceSettings
from libs.runtime.telemetry import shutdown_tracing
from libs.runtime.tls import server_credentials

log = logging.getLogger("llmesh.server")
Hook = Callable[[], Awaitable[None]]
Register = Callable[[Any, grpc.aio.Server], None]


class GrpcService:
    """One gRPC server process: servicers, health, reflection, metrics and lifecycle hooks."""

    def __init__(self, name: str, settings: ServiceSettings):
        self.name = name
        self.settings = settings
        self.health = HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._servicers: list[tuple[Register, Any, str]] = []
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self._server: grpc.aio.Server | None = None
        self._stopping = asyncio.Event()
        self._serving = False

    def add_servicer(self, register: Register, servicer: Any, full_name: str) -> None:
        """Register a servicer with its generated `add_*_to_server` function and full name."""
        self._servicers.append((register, servicer, full_name))

    def on_start(self, hook: Hook) -> None:
        """Run `hook` after the port is bound and before the service reports SERVING."""
        self._start_hooks.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Run `hook` after the server drained (stop hooks run in reverse order)."""
        self._stop_hooks.append(hook)

    @property
    def service_names(self) -> list[str]:
        """Fully-qualified names of the registered services."""
        return [full_name for _, _, full_name in self._servicers]

    async def set_serving(self, serving: bool) -> None:
        """Report readiness on the health service (overall and per service)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in ["", *self.service_names]:
            await self.health.set(svc, status)
        if serving != self._serving:
            log.info("health %s", "SERVING" if serving else "NOT_SERVING")
        self._serving = serving
        SERVING.labels(self.name).set(1 if serving else 0)

    async def start(self) -> None:
        """Bind, start, run start hooks, then report SERVING."""
        s = self.settings
        max_bytes = s.max_message_mb * 1024 * 1024
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if s.max_connection_age_s > 0:
            # GOAWAY after this age; calls in flight finish (no grace limit is set).
            options.append(("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)))
        server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.name)],
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        for register, servicer, _ in self._servicers:
            register(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        creds = server_credentials(s)
        address = f"{s.host}:{s.port}"
        self.port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"{self.name}: cannot bind {s.host}:{s.port} (in use?)")
        self._server = server
        await self.set_serving(False)
        await server.start()
        if s.metrics_port >= 0:
            self.metrics_port = start_metrics_server(s.metrics_host, s.metrics_port)
        log.info(
            "listening",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "host": s.host,
                    "tls": creds is not None,
                }
            },
        )
        for hook in self._start_hooks:
            await hook()
        await self.set_serving(True)
        log.info("ready", extra={"fields": {"port": self.port}})

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight calls, then stop hooks."""
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        if self._server is None:
            return
        server, self._server = self._server, None
        await self.health.enter_graceful_shutdown()
        self._serving = False
        SERVING.labels(self.name).set(0)
        delay = self.settings.drain_delay_s
        log.info("draining", extra={"fields": {"grace_s": grace, "drain_delay_s": delay}})
        await asyncio.sleep(delay)
        await server.stop(grace)
        for hook in reversed(self._stop_hooks):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        log.info("stopped")

    def request_stop(self) -> None:
        """Ask `run()` to stop (signal handlers call this)."""
        self._stopping.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        await serve_until_stopped(self.start, self.stop, self._stopping)


async def serve_until_stopped(start: Hook, stop: Hook, stopping: asyncio.Event) -> None:
    """Run `start`, wait for SIGTERM/SIGINT (or `stopping` set), run `stop`, flush traces last.

    Every server process (gRPC services and the HTTP gateway) shares this shape of `run()`.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        await stop()
        shutdown_tracing()
