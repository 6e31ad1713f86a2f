"""Render the Envoy config from `envoy.yaml.tmpl` and build the gRPC descriptor it needs.

    python -m deploy.envoy.render [--port 8080] [--router 127.0.0.1:50051[,more]] \
        [--gateway 127.0.0.1:8081] [--otlp-collector HOST:PORT] [--out build/envoy/envoy.yaml] [--exec]

Only the standard library, PyYAML and protobuf are used (no llmesh imports), so the same script
serves `make up`, tests and a container entry point. The descriptor (`deploy/envoy/llmesh.binpb`)
is rebuilt with `buf build` only when a proto is newer than it, and carries the google.rpc status
types so the transcoder can print error details as JSON. `--exec` replaces this process with
Envoy running the rendered file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import string
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATE = HERE / "envoy.yaml.tmpl"
DESCRIPTOR = HERE / "llmesh.binpb"
DEFAULT_OUT = REPO / "build" / "envoy" / "envoy.yaml"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the template needs; defaults match the project's default ports."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_port: int = 9901
    routers: tuple[str, ...] = ("127.0.0.1:50051",)
    gateways: tuple[str, ...] = ("127.0.0.1:8081",)
    otlp_collector: str = ""
    descriptor: Path = DESCRIPTOR
    max_body_bytes: int = 1 << 20
    global_rps: int = 1000
    global_burst: int = 2000
    stream_timeout_s: int = 600
    stream_idle_timeout_s: int = 60
    generate_timeout_s: int = 300
    read_timeout_s: int = 10
    read_try_timeout_s: int = 3


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    return host, int(port)


def _endpoints(addrs: Sequence[str]) -> str:
    """A YAML flow list of lb_endpoints for `addrs`."""
    items = []
    for addr in addrs:
        host, port = _split_addr(addr)
        items.append(
            f"{{endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}}}"
        )
    return "[" + ", ".join(items) + "]"


def render(cfg: EdgeConfig) -> dict[str, Any]:
    """The Envoy bootstrap for `cfg` as a dict."""
    if not cfg.routers or not cfg.gateways:
        raise ValueError("at least one router and one gateway address are needed")
    values = {
        "listen_host": cfg.listen_host,
        "listen_port": cfg.listen_port,
        "admin_port": cfg.admin_port,
        "router_endpoints": _endpoints(cfg.routers),
        "gateway_endpoints": _endpoints(cfg.gateways),
        "collector_endpoints": _endpoints([cfg.otlp_collector or "127.0.0.1:4317"]),
        "descriptor": str(cfg.descriptor.resolve()),
        "max_body_bytes": cfg.max_body_bytes,
        "connection_buffer_bytes": cfg.max_body_bytes + (64 << 10),
        "global_rps": cfg.global_rps,
        "global_burst": max(cfg.global_burst, cfg.global_rps),
        "stream_timeout": f"{cfg.stream_timeout_s}s",
        "stream_idle_timeout": f"{cfg.stream_idle_timeout_s}s",
        "generate_timeout": f"{cfg.generate_timeout_s}s",
        "read_timeout": f"{cfg.read_timeout_s}s",
        "read_try_timeout": f"{cfg.read_try_timeout_s}s",
    }
    text = string.Template(TEMPLATE.read_text()).substitute(values)
    config: dict[str, Any] = yaml.safe_load(text)
    if not cfg.otlp_collector:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        del hcm["tracing"]
        clusters = config["static_resources"]["clusters"]
        config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "otel_collector"]
    return config


def write_config(cfg: EdgeConfig, out: Path) -> Path:
    """Render to `out` (written only when the content changed); returns `out`."""
    text = "# Rendered by `python -m deploy.envoy.render` from deploy/envoy/envoy.yaml.tmpl.\n"
    text += yaml.safe_dump(render(cfg), sort_keys=False, width=120)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def _buf() -> str:
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    if not found:
        raise FileNotFoundError("buf not found: install buf-bin into the venv (`pip install buf-bin`)")
    return found


def _add_status_types(fds_bytes: bytes) -> bytes:
    """Append google.rpc Status/ErrorInfo/RetryInfo (and their deps) to a FileDescriptorSet."""
    from google.protobuf import descriptor_pb2
    from google.rpc import error_details_pb2, status_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(fds_bytes)
    have = {f.name for f in fds.file}

    def add(file_desc: Any) -> None:
        for dep in file_desc.dependencies:
            add(dep)
        if file_desc.name not in have:
            proto = descriptor_pb2.FileDescriptorProto()
            file_desc.CopyToProto(proto)
            fds.file.append(proto)
            have.add(file_desc.name)

    add(status_pb2.DESCRIPTOR)
    add(error_details_pb2.DESCRIPTOR)
    return fds.SerializeToString(deterministic=True)


STATUS_FILES = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def has_status_types(path: Path) -> bool:
    """Whether the descriptor set at `path` carries the google.rpc status types."""
    from google.protobuf import descriptor_pb2

    names = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file}
    return all(n in names for n in STATUS_FILES)


def build_descriptor(out: Path = DESCRIPTOR, *, force: bool = False) -> Path:
    """`buf build` the protos into `out` unless it is newer than every proto and complete.

    A plain `buf build` output is rebuilt: without google.rpc.Status and its details in the set,
    `convert_grpc_status` cannot print a gRPC error and JSON callers get an empty gRPC reply.
    """
    protos = sorted((REPO / "protos").rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no protos under {REPO / 'protos'}")
    newest = max(p.stat().st_mtime for p in [*protos, REPO / "buf.yaml"])
    if not force and out.exists() and out.stat().st_mtime >= newest and has_status_types(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.binpb"
        subprocess.run([_buf(), "build", "-o", str(raw)], cwd=REPO, check=True)
        data = _add_status_types(raw.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return out


def envoy_argv(config: Path, *, base_id: int, concurrency: int = 2, log_level: str = "warning") -> list[str]:
    """The command line that runs Envoy on `config` (base id distinct per Envoy on a host)."""
    beside = Path(sys.executable).parent / "envoy"
    envoy = str(beside) if beside.exists() else (shutil.which("envoy") or "envoy")
    return [
        envoy,
        "-c", str(config),
        "--base-id", str(base_id),
        "--concurrency", str(concurrency),
        "--log-level", log_level,
        "--drain-time-s", "5",
        "--drain-strategy", "immediate",
        "--file-flush-interval-msec", "1000",
    ]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    d = EdgeConfig()
    p = argparse.ArgumentParser(prog="python -m deploy.envoy.render", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=d.listen_host, help="listener address (default %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LLMESH_PORT", d.listen_port)),
        help="listener port (env LLMESH_PORT; default %(default)s)",
    )
    p.add_argument("--admin-port", type=int, default=d.admin_port, help="admin port on 127.0.0.1")
    p.add_argument("--router", default=",".join(d.routers), help="router HOST:PORT list, comma-separated")
    p.add_argument("--gateway", default=",".join(d.gateways), help="gateway HOST:PORT list, comma-separated")
    p.add_argument(
        "--otlp-collector", default="", help="OTLP/gRPC collector HOST:PORT (tracing off if empty)"
    )
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body")
    p.add_argument("--global-rps", type=int, default=d.global_rps, help="listener-wide requests per second")
    p.add_argument("--global-burst", type=int, default=d.global_burst, help="listener-wide burst")
    p.add_argument("--descriptor", type=Path, default=DESCRIPTOR, help="descriptor set path")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="rendered config (default %(default)s)")
    p.add_argument("--base-id", type=int, default=None, help="Envoy --base-id for --exec (default: port)")
    p.add_argument("--exec", action="store_true", help="then replace this process with Envoy")
    p.add_argument("--descriptor-only", action="store_true", help="only (re)build the descriptor set")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Build the descriptor, render the config, optionally exec Envoy."""
    args = _parser().parse_args(argv)
    cfg = EdgeConfig(
        listen_host=args.host,
        listen_port=args.port,
        admin_port=args.admin_port,
        routers=tuple(a for a in args.router.split(",") if a.strip()),
        gateways=tuple(a for a in args.gateway.split(",") if a.strip()),
        otlp_collector=args.otlp_collector,
        descriptor=args.descriptor,
        max_body_bytes=args.max_body_bytes,
        global_rps=args.global_rps,
        global_burst=args.global_burst,
    )
    build_descriptor(args.descriptor)
    if args.descriptor_only:
        print(args.descriptor)
        return 0
    out = write_config(cfg, args.out)
    print(out)
    if args.exec:
        argv_ = envoy_argv(out, base_id=args.port if args.base_id is None else args.base_id)
        sys.stdout.flush()
        os.execv(argv_[0], argv_)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
