"""`LLMESH_TRITON=1 make up`: the mesh with inference served by the bundled tritonserver, both
registry tiers answering through Envoy."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from libs.launch.mesh import Mesh, MeshConfig
from tests.conftest import create_key

pytestmark = [pytest.mark.e2e, pytest.mark.triton]


@pytest.fixture(scope="module")
def triton_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(
        MeshConfig(workdir=tmp_path_factory.mktemp("triton-mesh"), with_triton=True, with_gateway=False)
    ).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.mark.parametrize("model", ["smollm2-135m-int8", "smollm2-135m-fp32"])
def test_every_tier_answers_through_triton(triton_mesh: Mesh, model: str) -> None:
    key = create_key(triton_mesh.redis_url, "triton")
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "options": {"model": model, "cache": "bypass", "sampling": {"temperature": 0, "max_tokens": 12}},
    }
    r = httpx.post(f"{triton_mesh.url}/api/v1/chat/completions", json=body,
                   headers={"authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert "paris" in r.json()["choices"][0]["message"]["content"].lower()
    assert r.json()["route"]["attempts"] == [f"inference-0:{model}:ok"]
    assert triton_mesh.procs["triton"].alive()
