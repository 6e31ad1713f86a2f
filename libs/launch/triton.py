"""Run the bundled tritonserver (through `services.inference.triton_launcher`) as a managed
process and wait until it is ready: shared by `make up`, the tests and the benchmark."""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from libs.testing.process import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def bundled_tritonserver() -> Path | None:
    """The tritonserver binary of the installed nvidia-pytriton wheel, when it is there together
    with a python backend stub for this interpreter (what `triton_launcher` needs); else None."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    server = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary = server / "bin" / "tritonserver"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    return binary if binary.is_file() and stub.is_file() else None


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # loopback only
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def start_triton(
    log_path: Path,
    *,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    ready_model: str = "",
    timeout_s: float = 240,
    launcher_args: Sequence[str] = (),
) -> tuple[ManagedProcess, int]:
    """Start tritonserver on the given (or free) ports; returns the process and its gRPC port once
    the server (and `ready_model`, when named) is ready. Stop it with `process.stop()`.
    `launcher_args` go to `services.inference.triton_launcher` (e.g. another repository)."""
    grpc_port, http_port, metrics_port = (p or free_port() for p in (grpc_port, http_port, metrics_port))
    argv = [sys.executable, "-m", "services.inference.triton_launcher", f"--grpc-port={grpc_port}",
            f"--http-port={http_port}", f"--metrics-port={metrics_port}", *launcher_args]  # fmt: skip
    proc = ManagedProcess(name="tritonserver", argv=argv, log_path=log_path, cwd=ROOT,
                          env={"PYTHONUNBUFFERED": "1"}).start()  # fmt: skip
    path = f"/v2/models/{ready_model}/ready" if ready_model else "/v2/health/ready"
    try:
        proc.wait_until(lambda: _ok(f"http://127.0.0.1:{http_port}{path}"), timeout_s, "ready")
    except BaseException:
        proc.stop(grace_s=10)
        raise
    return proc, grpc_port
