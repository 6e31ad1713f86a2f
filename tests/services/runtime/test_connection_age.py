"""A GrpcService asks clients to reconnect after max_connection_age_s (so they resolve the name
again and reach new replicas), without failing a call, even one running across the deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from libs.runtime.channels import make_channel
from libs.runtime.server import GrpcService
from libs.runtime.settings import ServiceSettings

SERVICE = "llmesh.test.v1.PeerService"


def _register(_servicer: Any, server: grpc.aio.Server) -> None:
    async def peer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request:  # a slow call: it must finish even after the connection is past its age
            await asyncio.sleep(float(request.decode()))
        return context.peer().encode()

    handler = grpc.unary_unary_rpc_method_handler(peer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Peer": handler}),))


async def test_clients_reconnect_after_the_connection_age_and_lose_no_call() -> None:
    service = GrpcService("agetest", ServiceSettings(port=0, metrics_port=-1, max_connection_age_s=0.3))
    service.add_servicer(_register, None, SERVICE)
    await service.start()
    try:
        async with make_channel(f"127.0.0.1:{service.port}", SERVICE) as channel:
            call = channel.unary_unary(f"/{SERVICE}/Peer")
            slow = asyncio.ensure_future(call(b"1.0", timeout=10))
            peers = set()
            for _ in range(12):
                peers.add(await call(b"", timeout=5))
                await asyncio.sleep(0.1)
            assert (await slow).startswith(b"ipv4:127.0.0.1:")
        assert len(peers) >= 2, peers  # the client's port changed: it reconnected
    finally:
        await service.stop(grace_s=1)
