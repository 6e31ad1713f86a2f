"""Static checks of the Dockerfiles and the compose file (no Docker engine here).

Pinned bases, non-root final stages without build tools, COPY sources that exist (or are
outputs of `make model` / safety training) and are let through the per-Dockerfile
.dockerignore, the service's own entry point, and pinned requirements that cover every
third-party import reachable from the service's entry point.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.conftest import GRPC_SERVICES, ROOT, SERVICES

DOCKER = ROOT / "deploy" / "docker"
IMAGES = [*SERVICES, "envoy", "triton"]
# Produced by the repo's build commands, absent from a clean clone until they run.
BUILD_OUTPUTS = ("build/models/smollm2-135m/", "build/models/minilm/", "build/safety/")
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|git|curl|wget)\b")
# Run at build time only (exporting/training models), never by a serving process.
BUILD_ONLY_MODULES = {"services.inference.build_model", "services.safety.train", "libs.embedding.build"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(base, parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            assert stages, f"{path}: {op} before FROM"
            stages[-1].instructions.append((op, rest))
    return args, stages


def copy_sources(stage: Stage) -> list[str]:
    out = []
    for op, rest in stage.instructions:
        if op != "COPY" or "--from=" in rest:
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        out.extend(parts[:-1])
    return out


def requirements(name: str) -> set[str]:
    """Canonical distribution names pinned in deploy/docker/requirements/<name>.txt (+ -r files)."""
    names: set[str] = set()
    for line in (DOCKER / "requirements" / f"{name}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirements(line[3:].strip().removesuffix(".txt"))
        elif line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][\w.]*", line), (
                f"{name}.txt: unpinned {line}"
            )
            names.add(_canonical(re.split(r"[\[=]", line)[0]))
    return names


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_imports(roots: list[Path]) -> tuple[set[str], set[str]]:
    """(project modules reachable from `roots`, top-level third-party names they import)."""
    seen: set[str] = set()
    third: set[str] = set()
    stack = list(roots)
    while stack:
        path = stack.pop()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for mod in names:
                top = mod.split(".")[0]
                if top in ("services", "libs"):
                    if mod in seen or mod in BUILD_ONLY_MODULES:
                        continue
                    file = _module_file(mod)
                    if file is not None:
                        seen.add(mod)
                        stack.append(file)
                elif top != "llmesh" and top not in _stdlib():
                    third.add(top)
    return seen, third


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


@functools.cache
def _installed() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distributions(top: str) -> set[str]:
    dists = _installed().get(top)
    assert dists, f"no installed distribution provides `{top}`"
    return {_canonical(d) for d in dists}


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_pinned_non_root_and_lean(image: str) -> None:
    _, stages = parse(DOCKER / f"{image}.Dockerfile")
    for stage in stages:
        if stage.base in {s.name for s in stages}:
            continue
        assert re.search(r":[^:/]*\d[^:/]*$|@sha256:[0-9a-f]{64}$", stage.base), (
            f"{image}: unpinned {stage.base}"
        )
        assert not stage.base.endswith(":latest"), stage.base
    final = stages[-1]
    users = [rest for op, rest in final.instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{image}: final stage runs as root"
    for op, rest in final.instructions:
        if op == "RUN":
            assert not BUILD_TOOLS.search(rest), f"{image}: build tooling in the final stage: {rest}"
    assert any(op in ("CMD", "ENTRYPOINT") for op, _ in final.instructions)


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_pass_the_dockerignore(image: str) -> None:
    _, stages = parse(DOCKER / f"{image}.Dockerfile")
    allowed = [
        line[1:]
        for line in (DOCKER / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for stage in stages:
        for src in copy_sources(stage):
            assert (ROOT / src).exists() or src.startswith(BUILD_OUTPUTS), (
                f"{image}: COPY {src} does not exist"
            )
            assert any(src == a or src.startswith(a) for a in allowed), (
                f"{image}: {src} excluded by .dockerignore"
            )


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_image_runs_its_service_with_its_requirements(name: str) -> None:
    _, stages = parse(DOCKER / f"{name}.Dockerfile")
    final = dict(stages[-1].instructions)
    assert final["CMD"] == f'["python", "-m", "services.{name}"]'
    assert set(final["EXPOSE"].split()) == {str(p) for p in SERVICES[name]}
    if name in GRPC_SERVICES or name == "gateway":
        assert f'"/app/healthcheck.py", "{name}"]' in final["HEALTHCHECK"]
    modules, third = reachable_imports([ROOT / "services" / name / "__main__.py"])
    pinned = requirements(name)
    for top in sorted(third):
        assert _distributions(top) & pinned, (
            f"{name}: `import {top}` is not covered by requirements/{name}.txt"
        )
    copied = {src.rstrip("/") for src in copy_sources(stages[-1])}
    for mod in modules:
        if "." in mod:
            package = "/".join(mod.split(".")[:2])
            assert package in copied, f"{name}: {mod} is imported but {package}/ is not copied into the image"


def test_triton_image_covers_the_python_model_imports() -> None:
    roots = sorted((ROOT / "deploy/triton/model_repository").glob("*/1/model.py"))
    assert roots
    _, third = reachable_imports(roots)
    pinned = requirements("triton")
    for top in sorted(third - {"triton_python_backend_utils"}):
        dists = {"onnxruntime-gpu"} if top == "onnxruntime" else _distributions(top)
        assert dists & pinned, f"triton: `import {top}` is not covered by requirements/triton.txt"


def test_compose_runs_every_service_hardened_and_publishes_only_the_edge() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())["services"]
    for name in [*SERVICES, "envoy"]:
        svc = compose[name]
        assert svc["image"] == f"llmesh/{name}:0.1.0"
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        assert (ROOT / "deploy/compose" / svc["build"]["context"]).resolve() == ROOT
    for name, svc in compose.items():
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        for port in svc.get("ports", []):
            public = name == "envoy" and port == "8080:8080"
            assert public or str(port).startswith("127.0.0.1:"), (name, port)
    for name in SERVICES:
        env = compose[name]["environment"]
        assert env[f"LLMESH_{name.upper()}_PORT"] == str(SERVICES[name][0])
    for volume in compose["envoy"]["volumes"]:
        assert (ROOT / "deploy/compose" / volume.split(":")[0]).is_dir()
