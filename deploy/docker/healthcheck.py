"""Container health check for llmesh images: `python /app/healthcheck.py <service>`.

gRPC services are asked `grpc.health.v1.Health/Check` for the whole server on localhost, over
mutual TLS when LLMESH_<NAME>_TLS_CERT_FILE is set (kubelet's native gRPC probes cannot speak
TLS); the HTTP gateway is asked GET /healthz (https with the same files under TLS).
Exit 0 = SERVING / 200, 1 = anything else.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = {
    "router": 50051,
    "tokenizer": 50052,
    "safety": 50053,
    "cache": 50054,
    "inference": 50055,
    "gateway": 8081,
}
HTTP_SERVICES = {"gateway"}
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ProbeTarget:
    """Where and how to probe one service."""

    address: str
    grpc: bool
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


def probe_target(service: str, env: Mapping[str, str]) -> ProbeTarget:
    """The probe for `service` from its environment (same variables the service reads)."""
    if service not in DEFAULT_PORTS:
        raise SystemExit(f"unknown service {service!r}; expected one of {sorted(DEFAULT_PORTS)}")
    prefix = f"LLMESH_{service.upper()}_"
    port = int(env.get(prefix + "PORT", DEFAULT_PORTS[service]))
    cert = env.get(prefix + "TLS_CERT_FILE")
    if not cert:
        return ProbeTarget(f"localhost:{port}", grpc=service not in HTTP_SERVICES)
    key, ca = env.get(prefix + "TLS_KEY_FILE"), env.get(prefix + "TLS_CA_FILE")
    if not key or not ca:
        raise SystemExit(f"{prefix}TLS_CERT_FILE is set, so {prefix}TLS_KEY_FILE and _TLS_CA_FILE must be")
    return ProbeTarget(
        f"localhost:{port}",
        grpc=service not in HTTP_SERVICES,
        cert_file=Path(cert),
        key_file=Path(key),
        ca_file=Path(ca),
    )


def check(target: ProbeTarget) -> bool:
    """True when the server answers SERVING (gRPC) or accepts a connection (HTTP)."""
    if not target.grpc:
        return _http_ok(target)
    if target.cert_file is not None and target.key_file is not None and target.ca_file is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=target.ca_file.read_bytes(),
            private_key=target.key_file.read_bytes(),
            certificate_chain=target.cert_file.read_bytes(),
        )
        channel = grpc.secure_channel(target.address, creds)
    else:
        channel = grpc.insecure_channel(target.address)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(target: ProbeTarget) -> bool:
    context = None
    if target.cert_file is not None and target.key_file is not None and target.ca_file is not None:
        context = ssl.create_default_context(cafile=str(target.ca_file))
        context.load_cert_chain(str(target.cert_file), str(target.key_file))
    scheme = "http" if context is None else "https"
    url = f"{scheme}://{target.address}/healthz"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as reply:
        return bool(reply.status == 200)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} <service>", file=sys.stderr)
        return 2
    target = probe_target(argv[1], os.environ)
    try:
        healthy = check(target)
    except OSError as exc:
        print(f"{argv[1]}: {target.address} unreachable: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"{argv[1]}: health check failed: {exc}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"{argv[1]}: not serving", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
