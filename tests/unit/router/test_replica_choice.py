"""Which replicas a model may go to: the ones the registry names, listing the model, through the
engine the registry asks for (`triton` / `embedded`), or any engine (`llmesh`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.router.inference_client import InferenceReplicas
from services.router.registry import ModelSpec

MODEL = "smol-int8"


def spec(**fields: object) -> ModelSpec:
    base: dict[str, object] = {
        "name": MODEL,
        "context_length": 2048,
        "input_price_per_1k": 0,
        "output_price_per_1k": 0,
        "tier": 1,
    }
    return ModelSpec.model_validate({**base, **fields})


@pytest.fixture
async def replicas() -> AsyncIterator[InferenceReplicas]:
    # inference-0 and -1 serve the model through Triton and in-process; -2 serves another model;
    # -3 has not answered ListModels yet.
    backend = InferenceReplicas(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:1"])
    engines = [{MODEL: "triton"}, {MODEL: "embedded"}, {"other": "embedded"}, {}]
    for r, served in zip(backend.replicas, engines, strict=True):
        r.models = {m: f"{m}@v1" for m in served}
        r.engines = dict(served)
    yield backend
    await backend.stop()


def names(backend: InferenceReplicas, s: ModelSpec) -> set[str]:
    return {t.name for t in backend.targets(s)}


async def test_an_address_given_twice_is_one_replica(replicas: InferenceReplicas) -> None:
    assert [r.addr for r in replicas.replicas] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]


async def test_any_engine_serves_llmesh_models(replicas: InferenceReplicas) -> None:
    assert names(replicas, spec()) == {"inference-0", "inference-1", "inference-3"}


@pytest.mark.parametrize(("engine", "expected"), [("triton", "inference-0"), ("embedded", "inference-1")])
async def test_an_engine_backend_takes_only_replicas_running_that_engine(
    replicas: InferenceReplicas, engine: str, expected: str
) -> None:
    # inference-3 has not said what it serves: it stays a candidate until it does.
    assert names(replicas, spec(backend=engine)) == {expected, "inference-3"}


async def test_named_replicas_restrict_the_model(replicas: InferenceReplicas) -> None:
    assert names(replicas, spec(replicas=["127.0.0.1:2", "127.0.0.1:3"])) == {"inference-1"}
    assert names(replicas, spec(backend="triton", replicas=["127.0.0.1:2"])) == set()
