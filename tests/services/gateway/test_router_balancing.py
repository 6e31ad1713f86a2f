"""A gateway given several router addresses spreads OpenAI calls over all of them."""

from __future__ import annotations

import httpx
import pytest

from libs.runtime.channels import grpc_target
from services.gateway.server import GatewayService
from services.gateway.settings import GatewaySettings
from tests.services.gateway.fake_router import GOOD_KEY, build_fake_router


@pytest.mark.asyncio(loop_scope="session")
async def test_chat_completions_reach_every_router() -> None:
    routers = [build_fake_router() for _ in range(2)]
    for service, _ in routers:
        await service.start()
    addrs = ",".join(f"127.0.0.1:{service.port}" for service, _ in routers)
    gateway = GatewayService(
        GatewaySettings(port=0, metrics_port=-1, router_addr=addrs, grace_period_s=1.0, drain_delay_s=0)
    )
    await gateway.start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.port}",
            headers={"authorization": f"Bearer {GOOD_KEY}"},
            timeout=10,
        ) as http:
            assert (await http.get("/healthz")).status_code == 200
            body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(8):
                r = await http.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
    finally:
        await gateway.stop()
        for service, _ in routers:
            await service.stop(grace_s=0.5)
    counts = [servicer.calls.count("CreateChatCompletion") for _, servicer in routers]
    assert sum(counts) == 8
    assert all(c > 0 for c in counts), counts


def test_router_target_lists_every_address() -> None:
    assert grpc_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert grpc_target("router:50051") == "router:50051"  # one DNS name: every address it resolves to
    assert grpc_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    assert grpc_target("dns:///router:50051") == "dns:///router:50051"


@pytest.mark.parametrize("bad", ["no-port", "127.0.0.1:1,", "a:1,b:2", "127.0.0.1:1,[::1]:2"])
def test_malformed_router_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        GatewaySettings(router_addr=bad)
