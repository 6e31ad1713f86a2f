"""Server reflection through real Envoy: what `grpcurl -plaintext HOST:PORT list` relies on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.services.gateway.conftest import Stack
from tests.services.gateway.edge_proxy import Edge, edge_proxy

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROUTER = "llmesh.router.v1.RouterService"
V1_INFO = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture(scope="module")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("envoy-reflection")
    with edge_proxy(tmp, stack.router_port, stack.gateway.port) as proxy:
        yield proxy


def _describe(port: int) -> tuple[list[str], dict[str, str]]:
    """Services listed and RouterService's methods (name -> input type), as grpcurl sees them."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = list(db.get_services())
        router = DescriptorPool(db).FindServiceByName(ROUTER)
        return services, {m.name: m.input_type.full_name for m in router.methods}


async def test_reflection_lists_and_resolves_the_router_api(edge: Edge) -> None:
    # The fake router runs on this test's event loop, so the blocking client goes to a thread.
    services, methods = await asyncio.to_thread(_describe, edge.port)
    assert ROUTER in services
    assert methods["StreamChatCompletion"] == "llmesh.router.v1.StreamChatCompletionRequest"
    assert {"CreateChatCompletion", "CreateCompletion", "ListModels", "GetUsage"} <= set(methods)


def _ask_v1(port: int) -> grpc.StatusCode:
    """One v1 reflection request (grpcurl asks v1 first and falls back to v1alpha)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            V1_INFO,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            list(call(iter([request]), timeout=5))
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


async def test_v1_reflection_reaches_the_router_not_the_404_route(edge: Edge, stack: Stack) -> None:
    code = await asyncio.to_thread(_ask_v1, edge.port)
    # The router serves v1alpha only; what matters is that Envoy sent the call upstream.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED)
    deadline = time.monotonic() + 10  # the access log is flushed about once a second
    entries: list[dict[str, str]] = []
    while time.monotonic() < deadline and not entries:
        lines = [json.loads(x) for x in edge.access_log().splitlines() if x.startswith("{")]
        entries = [e for e in lines if e["path"] == V1_INFO]
        await asyncio.sleep(0.2)
    assert entries, "no access log line for the v1 reflection call"
    assert entries[-1]["cluster"] == "router"
    assert entries[-1]["upstream"] == f"127.0.0.1:{stack.router_port}"
