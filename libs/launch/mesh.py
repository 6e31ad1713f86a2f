"""Start the whole mesh as real processes: Redis, the services, Envoy (and optionally Triton).

Used by the test harness (free ports, a temporary folder) and by `make up` (fixed ports). Every
process runs in its own session and is stopped by PID, in reverse start order, with SIGTERM
first so each service drains gracefully.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.launch.triton import start_triton
from libs.testing.process import ManagedProcess, free_port, port_open

log = logging.getLogger("llmesh.launch")
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tokenizer", "safety", "cache", "inference", "router")


def grpc_serving(port: int, service: str = "") -> bool:
    """Whether the gRPC health check on 127.0.0.1:port answers SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def otlp_host_port(endpoint: str) -> str:
    """`host:port` of an OTLP/gRPC endpoint given as a URL (`http://collector:4317`) or as
    `host:port`; 4317, the OTLP/gRPC port, when the URL names none."""
    parsed = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parsed.hostname:
        raise ValueError(f"OTLP endpoint {endpoint!r} names no host")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{parsed.port or 4317}"


def http_ok(url: str) -> bool:
    """Whether GET url answers 2xx."""
    with urllib.request.urlopen(url, timeout=1) as resp:
        return 200 <= int(resp.status) < 300


@dataclass
class MeshConfig:
    """What to start and where. Ports of 0 are picked free at start."""

    workdir: Path
    envoy_port: int = 0
    envoy_admin_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    inference_replicas: int = 1
    router_replicas: int = 1
    with_envoy: bool = True
    with_gateway: bool = True
    with_triton: bool = False
    service_replicas: dict[str, int] = field(default_factory=dict)
    """Replicas of tokenizer, safety and cache (1 each when absent); the router balances over them."""
    embedded_replicas: int = 0
    """Inference replicas after the first `inference_replicas` that run the model in-process even
    when Triton serves the others (so one mesh has both engines, as `make up` does)."""
    redis_url: str = ""
    otlp_endpoint: str = ""
    envoy_base_id: int = 0
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    start_timeout_s: float = 180.0


@dataclass
class Mesh:
    """A running mesh; `start()` returns when every part reports ready."""

    cfg: MeshConfig
    procs: dict[str, ManagedProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    redis_url: str = ""

    # -- helpers -----------------------------------------------------------------------------
    def _port(self, key: str) -> int:
        if key not in self.ports:
            self.ports[key] = self.cfg.ports.get(key) or free_port()
        return self.ports[key]

    def _common_env(self, service: str) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "OTEL_SERVICE_NAME": service}
        if self.cfg.otlp_endpoint:
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=self.cfg.otlp_endpoint, OTEL_BSP_SCHEDULE_DELAY="200")
        else:
            env["OTEL_TRACES_EXPORTER"] = "none"
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        proc = ManagedProcess(
            name=name, argv=argv, env=env, cwd=ROOT, log_path=self.cfg.workdir / f"{name}.log"
        )
        self.procs[name] = proc.start()
        return proc

    def _service(self, name: str, service: str, extra: dict[str, str]) -> None:
        prefix = f"LLMESH_{service.upper()}_"
        env = {
            **self._common_env(service),
            f"{prefix}PORT": str(self._port(name)),
            f"{prefix}METRICS_PORT": str(self._port(f"{name}-metrics")),
            **extra,
            **self.cfg.env.get(service, {}),
            **self.cfg.env.get(name, {}),
        }
        self._spawn(name, [sys.executable, "-m", f"services.{service}"], env)

    def replica_names(self, service: str) -> list[str]:
        """Process names of one service's replicas: `tokenizer`, then `tokenizer-1`, ..."""
        n = max(1, self.cfg.service_replicas.get(service, 1))
        return [service, *(f"{service}-{i}" for i in range(1, n))]

    def addr(self, name: str) -> str:
        """host:port of a started part."""
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def url(self) -> str:
        """The Envoy base URL."""
        return f"http://127.0.0.1:{self.ports['envoy']}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Mesh:
        """Start everything and wait for readiness; on failure stop what started and raise."""
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        c = self.cfg
        self.redis_url = c.redis_url or self._start_redis()
        inference_names = [f"inference-{i}" for i in range(c.inference_replicas + c.embedded_replicas)]
        router_names = [f"router-{i}" for i in range(c.router_replicas)]
        if c.with_triton:
            self._start_triton()
        replicas = {s: self.replica_names(s) for s in ("tokenizer", "safety", "cache")}
        for service, names in replicas.items():
            extra = {"LLMESH_CACHE_REDIS_URL": self.redis_url} if service == "cache" else {}
            for name in names:
                self._service(name, service, extra)
        for i, name in enumerate(inference_names):
            extra = {"LLMESH_INFERENCE_BACKEND": "embedded"}
            if c.with_triton and i < c.inference_replicas:
                extra = {
                    "LLMESH_INFERENCE_BACKEND": "triton",
                    "LLMESH_INFERENCE_TRITON_URL": self.addr("triton-grpc"),
                }
            self._service(name, "inference", extra)
        inference_addrs = ",".join(f"127.0.0.1:{self._port(n)}" for n in inference_names)
        for name in router_names:
            self._service(
                name,
                "router",
                {
                    "LLMESH_ROUTER_TOKENIZER_ADDR": ",".join(map(self.addr, replicas["tokenizer"])),
                    "LLMESH_ROUTER_SAFETY_ADDR": ",".join(map(self.addr, replicas["safety"])),
                    "LLMESH_ROUTER_CACHE_ADDR": ",".join(map(self.addr, replicas["cache"])),
                    "LLMESH_ROUTER_INFERENCE_ADDRS": inference_addrs,
                    "LLMESH_ROUTER_REDIS_URL": self.redis_url,
                },
            )
        grpc_parts = [*(n for names in replicas.values() for n in names), *inference_names, *router_names]
        if c.with_gateway:
            self._spawn(
                "gateway",
                [sys.executable, "-m", "services.gateway"],
                {
                    **self._common_env("gateway"),
                    "LLMESH_GATEWAY_PORT": str(self._port("gateway")),
                    "LLMESH_GATEWAY_METRICS_PORT": str(self._port("gateway-metrics")),
                    "LLMESH_GATEWAY_ROUTER_ADDR": ",".join(self.addr(n) for n in router_names),
                    **c.env.get("gateway", {}),
                },
            )
        for name in grpc_parts:
            self.procs[name].wait_until(
                functools.partial(grpc_serving, self.ports[name]), c.start_timeout_s, "SERVING"
            )
        if c.with_gateway:
            gw = self.ports["gateway"]
            self.procs["gateway"].wait_until(lambda: http_ok(f"http://127.0.0.1:{gw}/healthz"), 60, "healthy")
        if c.with_envoy:
            self._start_envoy(router_names)

    def _start_redis(self) -> str:
        from libs.testing.redis_server import redis_server_binary

        port = self._port("redis")
        proc = self._spawn("redis", [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.cfg.workdir),
            "--maxmemory", "512mb", "--maxmemory-policy", "volatile-lru",
        ], {})  # fmt: skip
        proc.wait_until(lambda: port_open(port), 15, "listening")
        return f"redis://127.0.0.1:{port}/0"

    def _start_triton(self) -> None:
        grpc_port, http_port, metrics_port = (
            self._port(k) for k in ("triton-grpc", "triton-http", "triton-metrics")
        )
        self.procs["triton"], _ = start_triton(
            self.cfg.workdir / "triton.log",
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
        )

    def _start_envoy(self, router_names: list[str]) -> None:
        c = self.cfg
        port, admin = self._port("envoy"), self._port("envoy-admin")
        config = c.workdir / "envoy.yaml"
        args = [
            sys.executable,
            "-m",
            "deploy.envoy.render",
            "--out",
            str(config),
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--router",
            ",".join(self.addr(n) for n in router_names),
        ]
        if c.with_gateway:
            args += ["--gateway", self.addr("gateway")]
        if c.otlp_endpoint:
            args += ["--otlp-collector", otlp_host_port(c.otlp_endpoint)]
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True)
        base_id = c.envoy_base_id or port  # unique per mesh: two Envoys never share a base id
        envoy = str(Path(sys.executable).parent / "envoy")
        proc = self._spawn("envoy", [
            envoy, "-c", str(config), "--base-id", str(base_id), "--concurrency", "2",
            "--log-level", "warn", "--drain-time-s", "2", "--parent-shutdown-time-s", "3",
        ], {})  # fmt: skip
        proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), 30, "ready")

    def stop(self) -> None:
        """Stop every part by PID, newest first."""
        for name in reversed(list(self.procs)):
            self.procs[name].signal(signal.SIGTERM)
        for name in reversed(list(self.procs)):
            self.procs[name].stop(grace_s=15)

    def kill(self, name: str) -> None:
        """SIGKILL one part (fault tests)."""
        self.procs[name].kill()

    def describe(self) -> dict[str, object]:
        """Ports and PIDs, for logs and `make up`."""
        return {
            "ports": self.ports,
            "pids": {n: p.pid for n, p in self.procs.items()},
            "redis": self.redis_url,
        }
