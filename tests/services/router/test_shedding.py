"""Load shedding on the real processes: past the router's in-flight limit, and when every inference
queue is full, callers get RESOURCE_EXHAUSTED at once with a retry hint; admitted requests finish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh, MeshConfig
from tests.services.router.conftest import ROUTER_ENV, auth, chat, create_key

MAX_INFLIGHT = 6
CALLERS = 16


@pytest.fixture(scope="module")
def small_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One router admitting 6 requests, one inference replica decoding 1 and queueing 1."""
    cfg = MeshConfig(
        workdir=tmp_path_factory.mktemp("router-shedding"),
        with_envoy=False,
        with_gateway=False,
        env={
            "router": {**ROUTER_ENV, "LLMESH_ROUTER_MAX_INFLIGHT": str(MAX_INFLIGHT)},
            "inference": {"LLMESH_INFERENCE_MAX_BATCH": "1", "LLMESH_INFERENCE_MAX_QUEUE": "1"},
        },
    )
    m = Mesh(cfg).start()
    try:
        yield m
    finally:
        m.stop()


def _rich_status(err: grpc.aio.AioRpcError) -> tuple[str, float | None, str | None]:
    """(ErrorInfo reason, RetryInfo seconds, retry-after metadata) of a router error."""
    trailers = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    reason, retry = "", None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            delay = error_details_pb2.RetryInfo()
            detail.Unpack(delay)
            retry = delay.retry_delay.ToNanoseconds() / 1e9
    after = trailers.get("retry-after")
    return reason, retry, after if isinstance(after, str) else None


async def test_overload_is_refused_at_once_with_a_retry_hint(small_mesh: Mesh) -> None:
    key = await create_key(small_mesh.redis_url, "shedding")
    async with grpc.aio.insecure_channel(small_mesh.addr("router-0")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def one(i: int) -> list[Any] | grpc.aio.AioRpcError:
            try:
                chunks = [
                    c
                    async for c in stub.StreamChatCompletion(
                        chat(f"Write a long story about lighthouse {i}.", max_tokens=48, cache="bypass"),
                        metadata=auth(key),
                        timeout=120,
                    )
                ]
                return chunks
            except grpc.aio.AioRpcError as err:
                return err

        results = await asyncio.gather(*[one(i) for i in range(CALLERS)])

    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    assert served, "admitted requests are served"
    assert all(any(c.choices and c.choices[0].content for c in chunks) for chunks in served)
    for err in errors:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    reasons = [_rich_status(err) for err in errors]
    by_reason = {r for r, _, _ in reasons}
    assert "OVERLOADED" in by_reason, reasons
    assert by_reason <= {"OVERLOADED", "BACKENDS_BUSY"}, reasons
    assert len([r for r in reasons if r[0] == "OVERLOADED"]) >= CALLERS - MAX_INFLIGHT
    for reason, retry, after in reasons:
        assert retry is not None and retry > 0, reason
        assert after is not None and float(after) > 0, reason


async def test_full_inference_queues_are_backends_busy(small_mesh: Mesh) -> None:
    """Within the router's limit, more requests than the replica can hold are refused by it, and
    the router says every backend is busy instead of queueing them without bound."""
    key = await create_key(small_mesh.redis_url, "busy")
    async with grpc.aio.insecure_channel(small_mesh.addr("router-0")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def one(i: int) -> object:
            try:
                return await stub.CreateChatCompletion(
                    chat(f"Describe harbour number {i} in detail.", max_tokens=48, cache="bypass"),
                    metadata=auth(key),
                    timeout=120,
                )
            except grpc.aio.AioRpcError as err:
                return err

        results = await asyncio.gather(*[one(i) for i in range(MAX_INFLIGHT)])

    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) < MAX_INFLIGHT, "at least the running and the queued request are served"
    assert errors, "six at once cannot all fit one running and one queued slot"
    for err in errors:
        reason, retry, _ = _rich_status(err)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "BACKENDS_BUSY", err.details()
        assert retry is not None and "busy" in (err.details() or "")
