"""Safety down: the key's fail mode decides, else its tenant's, else the router's. `closed` (the
default) refuses with 503 and says why; `open` serves the request unscreened and says so in the
route."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from libs.keys import KeyStore
from libs.launch.mesh import Mesh, MeshConfig
from tests.conftest import create_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh_without_safety(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(MeshConfig(workdir=tmp_path_factory.mktemp("failmode"), with_gateway=False)).start()
    try:
        m.kill("safety")
        yield m
    finally:
        m.stop()


def _chat(mesh: Mesh, key: str) -> httpx.Response:
    body = {
        "messages": [{"role": "user", "content": "Name one planet."}],
        "options": {"model": "smollm2", "cache": "bypass", "sampling": {"temperature": 0, "max_tokens": 6}},
    }
    return httpx.post(
        f"{mesh.url}/api/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def test_fail_closed_key_gets_503_naming_the_cause(mesh_without_safety: Mesh) -> None:
    key = create_key(mesh_without_safety.redis_url, "strict", safety_fail_mode="closed")
    r = _chat(mesh_without_safety, key)
    assert r.status_code == 503, r.text
    assert "fails closed" in r.text


def test_fail_open_key_is_served_unscreened(mesh_without_safety: Mesh) -> None:
    key = create_key(mesh_without_safety.redis_url, "lenient", safety_fail_mode="open")
    r = _chat(mesh_without_safety, key)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["message"]["content"].strip()
    assert data["route"]["safety"] == "unscreened"


def test_a_tenant_that_fails_open_serves_its_keys_unless_a_key_says_closed(mesh_without_safety: Mesh) -> None:
    async def tenant_fails_open() -> None:
        store = KeyStore.from_url(mesh_without_safety.redis_url)
        try:
            await store.set_tenant("lenient-tenant", safety_fail_mode="open")
        finally:
            await store.close()

    asyncio.run(tenant_fails_open())
    inheriting = create_key(mesh_without_safety.redis_url, "lenient-tenant")
    strict = create_key(mesh_without_safety.redis_url, "lenient-tenant", safety_fail_mode="closed")
    served = _chat(mesh_without_safety, inheriting)
    assert served.status_code == 200, served.text
    assert served.json()["route"]["safety"] == "unscreened"
    refused = _chat(mesh_without_safety, strict)
    assert refused.status_code == 503 and "fails closed" in refused.text
