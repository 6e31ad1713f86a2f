"""What `make up` serves, read from the environment; every mistake is one line naming the variable.

Ports: Envoy listens on LLMESH_PORT (8080) with its admin on LLMESH_ADMIN_PORT (9901). Every
other part keeps the fixed port of the README's table unless the variable that part itself
reads says otherwise (LLMESH_ROUTER_PORT, LLMESH_ROUTER_METRICS_PORT, ... for the first replica
of each service, LLMESH_REDIS_PORT, LLMESH_TRITON_{HTTP,GRPC,METRICS}_PORT); 0 picks a free port
and -1 turns a service's metrics port off. Further replicas always get free ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libs.keys import apikey
from libs.launch.mesh import MeshConfig
from libs.testing.process import port_open

DEFAULT_PORTS = {
    "router-0": 50051, "tokenizer": 50052, "safety": 50053, "cache": 50054, "inference-0": 50055,
    "gateway": 8081, "router-0-metrics": 9101, "tokenizer-metrics": 9102, "safety-metrics": 9103,
    "cache-metrics": 9104, "inference-0-metrics": 9105, "gateway-metrics": 9106, "redis": 6379,
    "triton-http": 8000, "triton-grpc": 8001, "triton-metrics": 8002,
}  # fmt: skip
ON = ("1", "on", "true", "yes")
OFF = ("0", "off", "false", "no")


class ConfigError(ValueError):
    """A setting `make up` cannot use; the message is meant to be printed as it is."""


def port_variable(part: str) -> str:
    """The environment variable that moves `part`'s port (`router-0-metrics` ->
    `LLMESH_ROUTER_METRICS_PORT`, `triton-grpc` -> `LLMESH_TRITON_GRPC_PORT`)."""
    words = part.split("-")
    service, rest = words[0], [w for w in words[1:] if not w.isdigit()]
    return "_".join(["LLMESH", service.upper(), *(w.upper() for w in rest), "PORT"])


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def ports_from_env(env: Mapping[str, str]) -> dict[str, int]:
    """Every part's port: the fixed default, or the part's own variable (0 = a free port)."""
    return {
        part: _int(env, port_variable(part), port, -1 if part.endswith("-metrics") else 0, 65535)
        for part, port in DEFAULT_PORTS.items()
    }


def triton_wanted(value: str, available: bool) -> bool:
    """Whether to serve inference through Triton: LLMESH_TRITON is `auto` (the default: on when
    the bundled tritonserver is installed), on (1) or off (0)."""
    choice = value.strip().lower() or "auto"
    if choice == "auto":
        return available
    if choice in OFF:
        return False
    if choice not in ON:
        raise ConfigError(f"LLMESH_TRITON={value!r}: expected auto, 1 or 0")
    if not available:
        raise ConfigError(
            "LLMESH_TRITON=1 but the tritonserver bundled in nvidia-pytriton (with a python backend "
            "stub for this Python) is not installed; run `make venv` or set LLMESH_TRITON=0"
        )
    return True


def dev_key(env: Mapping[str, str]) -> str | None:
    """LLMESH_DEV_API_KEY when set (checked, never echoed); None means: generate one."""
    value = env.get("LLMESH_DEV_API_KEY", "").strip()
    if not value:
        return None
    try:
        apikey.parse(value)
    except apikey.MalformedKey as exc:
        raise ConfigError(
            f"LLMESH_DEV_API_KEY is not usable: {exc} (unset it to get a generated key)"
        ) from None
    return value


@dataclass(frozen=True)
class UpConfig:
    """The mesh to start and what the banner says about it."""

    mesh: MeshConfig
    dev_key: str | None
    triton_setting: str
    notes: tuple[str, ...] = ()


def from_env(env: Mapping[str, str], *, triton_available: bool) -> UpConfig:
    """Read `make up`'s settings (see the module docstring and the README's Configuration)."""
    ports = ports_from_env(env)
    notes: list[str] = []
    port = _int(env, "LLMESH_PORT", 8080, 0, 65535)
    admin = _int(env, "LLMESH_ADMIN_PORT", 9901, 0, 65535)
    redis_url = env.get("LLMESH_REDIS_URL", "").strip()
    if not redis_url and "LLMESH_REDIS_PORT" not in env and port_open(ports["redis"]):
        notes.append(f"port {ports['redis']} is taken (another Redis?): the mesh's Redis gets a free port")
        ports["redis"] = 0
    triton = env.get("LLMESH_TRITON", "auto")
    with_triton = triton_wanted(triton, triton_available)
    cfg = MeshConfig(
        workdir=Path(env.get("LLMESH_RUN_DIR", "").strip() or "build/run"),
        envoy_port=port,
        envoy_admin_port=admin,
        ports={**ports, "envoy": port, "envoy-admin": admin},
        inference_replicas=_int(env, "REPLICAS_INFERENCE", 1, 1, 16),
        router_replicas=_int(env, "REPLICAS_ROUTER", 1, 1, 16),
        service_replicas={
            s: _int(env, f"REPLICAS_{s.upper()}", 1, 1, 16) for s in ("tokenizer", "safety", "cache")
        },
        with_triton=with_triton,
        # With Triton, one more replica runs the engine in-process: both engines serve out of the
        # box, and the router retries on the embedded replica when Triton fails.
        embedded_replicas=_int(env, "LLMESH_EMBEDDED_REPLICAS", 1 if with_triton else 0, 0, 16),
        redis_url=redis_url,
        otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip(),
        envoy_base_id=_int(env, "LLMESH_ENVOY_BASE_ID", 0, 0, 2**31 - 1),
    )
    return UpConfig(cfg, dev_key(env), triton.strip().lower() or "auto", tuple(notes))
