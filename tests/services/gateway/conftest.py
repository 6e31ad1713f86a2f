"""A fake router (real grpc.aio server) and a real gateway on free ports, shared by the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from libs.runtime.telemetry import setup_tracing
from services.gateway.server import GatewayService
from services.gateway.settings import GatewaySettings
from tests.services.gateway.fake_router import GOOD_KEY, FakeRouter, build_fake_router


@dataclass
class Stack:
    """What the tests talk to."""

    router_port: int
    router: FakeRouter
    gateway: GatewayService

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    setup_tracing("gateway-tests")  # a real SDK provider: spans get trace ids, nothing is exported
    service, servicer = build_fake_router()
    await service.start()
    gateway = GatewayService(
        GatewaySettings(
            port=0,
            metrics_port=-1,
            router_addr=f"127.0.0.1:{service.port}",
            generate_timeout_s=2.0,
            stream_timeout_s=3.0,
            max_body_bytes=64 * 1024,
            grace_period_s=2.0,
            drain_delay_s=0,
        )
    )
    await gateway.start()
    try:
        yield Stack(service.port, servicer, gateway)
    finally:
        await gateway.stop()
        await service.stop(grace_s=0.5)


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"authorization": f"Bearer {GOOD_KEY}"}, timeout=10
    ) as client:
        yield client
