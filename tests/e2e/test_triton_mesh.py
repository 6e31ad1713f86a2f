"""`make up` with the bundled tritonserver: one inference replica through Triton and one embedded,
as out of the box. The registry pins each tier to an engine (`backend: triton` / `embedded`),
both tiers answer through Envoy on the replica running their engine, and when Triton dies the
Triton tier falls back along its chain to the embedded replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from libs.launch.mesh import Mesh, MeshConfig
from tests.conftest import create_key

pytestmark = [pytest.mark.e2e, pytest.mark.triton]
ROOT = Path(__file__).resolve().parents[2]
ENGINES = {"smollm2-135m-int8": "triton", "smollm2-135m-fp32": "embedded"}
REPLICA = {"triton": "inference-0", "embedded": "inference-1"}


def _registry(path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "services" / "router" / "models.yaml").read_text())
    for model in doc["models"]:
        model["backend"] = ENGINES[model["name"]]
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def triton_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("triton-mesh")
    registry = {"LLMESH_ROUTER_REGISTRY_FILE": str(_registry(workdir / "models.yaml"))}
    cfg = MeshConfig(
        workdir=workdir, with_triton=True, embedded_replicas=1, with_gateway=False, env={"router": registry}
    )
    m = Mesh(cfg).start()
    try:
        yield m
    finally:
        m.stop()


def _ask(mesh: Mesh, model: str) -> httpx.Response:
    key = create_key(mesh.redis_url, "triton")
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "options": {"model": model, "cache": "bypass", "sampling": {"temperature": 0, "max_tokens": 12}},
    }
    return httpx.post(
        f"{mesh.url}/api/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


@pytest.mark.parametrize("model", list(ENGINES))
def test_every_tier_answers_on_the_replica_running_its_engine(triton_mesh: Mesh, model: str) -> None:
    for _ in range(3):  # whatever the load order, the engine decides
        r = _ask(triton_mesh, model)
        assert r.status_code == 200, r.text
        assert "paris" in r.json()["choices"][0]["message"]["content"].lower()
        assert r.json()["route"]["attempts"] == [f"{REPLICA[ENGINES[model]]}:{model}:ok"]
    assert triton_mesh.procs["triton"].alive()


def test_when_triton_dies_the_triton_tier_falls_back_to_the_embedded_replica(triton_mesh: Mesh) -> None:
    triton_mesh.kill("triton")
    r = _ask(triton_mesh, "smollm2-135m-int8")
    assert r.status_code == 200, r.text
    route = r.json()["route"]
    assert route["model"] == "smollm2-135m-fp32" and "fell back" in route["reason"], route
    assert route["attempts"][0].startswith("inference-0:smollm2-135m-int8:"), route
    assert route["attempts"][-1] == "inference-1:smollm2-135m-fp32:ok", route
