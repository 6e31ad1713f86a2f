"""Session fixtures shared by the whole suite: one real mesh behind Envoy, started once.

Tests that kill or reconfigure parts start their own `Mesh` instead of touching this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.launch.mesh import Mesh, MeshConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Redis, tokenizer, safety, cache, inference, router, gateway and Envoy as real processes."""
    # inference at DEBUG logs each prompt's token ids, so tests can check what the model received
    cfg = MeshConfig(
        workdir=tmp_path_factory.mktemp("mesh"), env={"inference": {"LLMESH_INFERENCE_LOG_LEVEL": "DEBUG"}}
    )
    m = Mesh(cfg).start()
    try:
        yield m
    finally:
        m.stop()


def create_key(redis_url: str, tenant: str, **limits: Any) -> str:
    """A fresh API key for `tenant` in the mesh's key store."""
    from libs.keys import KeyStore

    async def _create() -> str:
        plaintext, _ = await KeyStore.from_url(redis_url).create(tenant, **limits)
        return plaintext

    return asyncio.run(_create())


@pytest.fixture(scope="session")
def api_key(mesh: Mesh) -> str:
    """An API key of tenant `e2e` allowed every model."""
    return create_key(mesh.redis_url, "e2e")
