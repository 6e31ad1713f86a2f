"""Fixtures for the deployment checks: the k8s renderer and every overlay rendered once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "gpu")
# One name per service: folder, Deployment, Service, env prefix. (grpc or http port, metrics port)
SERVICES = {
    "router": (50051, 9101),
    "tokenizer": (50052, 9102),
    "safety": (50053, 9103),
    "cache": (50054, 9104),
    "inference": (50055, 9105),
    "gateway": (8081, 9106),
}
GRPC_SERVICES = [s for s in SERVICES if s != "gateway"]


def load_module(path: Path) -> ModuleType:
    """Import a script that is not inside a package (deploy/ holds tools, not packages)."""
    name = "deploy_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kustomize() -> ModuleType:
    return load_module(K8S / "kustomize_lite.py")


@pytest.fixture(scope="session")
def rendered(kustomize: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """overlay name -> rendered resources."""
    return {name: kustomize.build(K8S / "overlays" / name) for name in OVERLAYS}


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one resource of `kind` named `name`."""
    hits = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}
