"""Prepare ``build/triton`` and exec the tritonserver bundled in the nvidia-pytriton wheel.

``python -m services.inference.triton_launcher --grpc-port P --http-port Q --metrics-port R``
copies the wheel's ``tritonserver/`` folder to ``build/triton/server`` (once, stamped), installs
the python backend stub matching this interpreter, refreshes ``build/triton/model_repository``
from ``deploy/triton/model_repository`` (adding a folder, derived from a shipped one, for each
other built model it is asked to serve, and applying ``--set key=value`` to the engine parameters
of every model), then replaces itself with tritonserver in the foreground (so a supervisor stops
it by PID). The stub embeds this venv's Python: the venv's ``bin/`` goes
first on PATH and the base interpreter's ``lib/`` on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAMP = ".llmesh-prepared"


def pytriton_server_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-pytriton is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise SystemExit(f"{path}/bin/tritonserver not found")
    return path


def prepare(build_dir: Path, repository_src: Path) -> tuple[Path, Path]:
    """Idempotently lay out the server and model repository; return (server dir, repository)."""
    server = build_dir / "server"
    if not (server / STAMP).exists():
        shutil.rmtree(server, ignore_errors=True)
        shutil.copytree(pytriton_server_dir(), server, symlinks=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise SystemExit(f"no python backend stub for Python {version} in nvidia-pytriton")
        shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
        (server / STAMP).write_text("ok\n")
    repository = build_dir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(repository_src, repository)
    return server, repository


def add_precisions(repository: Path, models_dir: Path, served: list[str]) -> list[str]:
    """Give every served `<name>-<precision>` that is built but has no model folder one derived
    from a shipped folder (same python model; `name` and `llmesh_model` rewritten): the shipped
    folder of the same model name when there is one, else the first shipped one, so Triton serves
    the same models as the embedded backend, a model built with `make model MODEL=...` included.
    Returns those added."""
    shipped = sorted(d for d in repository.iterdir() if (d / "config.pbtxt").exists())
    added = []
    for model in served:
        base, _, precision = model.rpartition("-")
        if (repository / model).exists() or not (
            models_dir / base / precision / "llmesh-model.json"
        ).exists():
            continue
        same = [d for d in shipped if d.name.startswith(f"{base}-")]
        if not same and not shipped:
            continue
        template = (same or shipped)[0]
        shutil.copytree(template, repository / model)
        config = repository / model / "config.pbtxt"
        text = config.read_text()
        text = text.replace(f'name: "{template.name}"', f'name: "{model}"', 1)
        t_base, _, t_precision = template.name.rpartition("-")
        old_dir = f"{t_base}/{t_precision}"
        text = text.replace(f'string_value: "{old_dir}"', f'string_value: "{base}/{precision}"', 1)
        config.write_text(text)
        added.append(model)
    return added


def set_parameters(repository: Path, values: dict[str, str]) -> None:
    """Set string parameters (``max_batch``, ``max_queue``, ``max_context``...) in every model's
    config.pbtxt; a key a config does not declare is an error."""
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text()
        for key, value in values.items():
            pattern = re.compile(rf'(key:\s*"{re.escape(key)}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")')
            escaped = value.replace("\\", "\\\\")
            text, n = pattern.subn(rf"\g<1>{escaped}\g<2>", text)
            if n != 1:
                raise SystemExit(f"{config} has no parameter {key!r}")
        config.write_text(text)


def server_env(models_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    base_lib = str(Path(sys.base_prefix) / "lib")
    # The copied binaries lose their $ORIGIN-relative rpath to the wheel's bundled libraries.
    wheel_libs = str(pytriton_server_dir().parents[1] / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [base_lib, wheel_libs, env.get("LD_LIBRARY_PATH", "")] if p
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "libs" / "gen")])
    env["LLMESH_TRITON_MODELS_DIR"] = str(models_dir.resolve())
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run tritonserver on the llmesh model repository.")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--address", default="127.0.0.1", help="address every endpoint binds to")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "triton")
    parser.add_argument("--models-dir", type=Path, default=REPO / "build" / "models")
    parser.add_argument("--repository", type=Path, default=REPO / "deploy" / "triton" / "model_repository")
    parser.add_argument(
        "--models",
        default=os.environ.get("LLMESH_INFERENCE_MODELS", "smollm2-135m-int8,smollm2-135m-fp32"),
        help="`<name>-<precision>` models to serve (default: LLMESH_INFERENCE_MODELS, as inference)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an engine parameter of every model (max_batch, max_queue, threads, max_context)",
    )
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.set):
        parser.error("--set takes KEY=VALUE")
    overrides = dict(item.split("=", 1) for item in args.set)
    server, repository = prepare(args.build_dir, args.repository)
    add_precisions(repository, args.models_dir, [m.strip() for m in args.models.split(",") if m.strip()])
    set_parameters(repository, overrides)
    binary = server / "bin" / "tritonserver"
    cmd = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={server / 'backends'}",
        f"--grpc-address={args.address}",
        f"--http-address={args.address}",
        f"--metrics-address={args.address}",
        f"--grpc-port={args.grpc_port}",
        f"--http-port={args.http_port}",
        f"--metrics-port={args.metrics_port}",
        f"--log-verbose={args.log_verbose}",
        "--exit-on-error=true",
    ]
    sys.stdout.flush()
    os.execve(binary, cmd, server_env(args.models_dir))


if __name__ == "__main__":
    main()
