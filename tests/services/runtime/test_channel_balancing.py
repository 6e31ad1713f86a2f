"""`make_channel` against real gRPC servers: calls spread round robin over every address of the
target, and only idempotent methods are retried, on UNAVAILABLE and DEADLINE_EXCEEDED."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from libs.runtime.channels import channel_options, make_channel, service_config

SERVICE = "llmesh.test.v1.EchoService"


class _Echo:
    """Answers `Get` and `Put` with its own name; fails the first `fail_first` calls with `code`."""

    def __init__(self, name: str, fail_first: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.name = name.encode()
        self.fail_first = fail_first
        self.code = code
        self.calls: Counter[str] = Counter()

    def handler(self) -> grpc.GenericRpcHandler:
        def method(name: str) -> grpc.RpcMethodHandler:
            async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                self.calls[name] += 1
                if self.calls[name] <= self.fail_first:
                    await context.abort(self.code, "not now")
                return self.name

            return grpc.unary_unary_rpc_method_handler(call)

        return grpc.method_handlers_generic_handler(SERVICE, {"Get": method("Get"), "Put": method("Put")})


async def _serve(echo: _Echo) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([echo.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def two() -> AsyncIterator[tuple[list[_Echo], str]]:
    echoes = [_Echo("a"), _Echo("b")]
    servers = [await _serve(e) for e in echoes]
    try:
        yield echoes, "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
    finally:
        for server, _ in servers:
            await server.stop(None)


def test_service_config_balances_round_robin_and_retries_idempotent_calls() -> None:
    cfg = json.loads(service_config(SERVICE, idempotent_methods=["Get"]))
    assert cfg["loadBalancingConfig"] == [{"round_robin": {}}]
    (retrying,) = [c for c in cfg["methodConfig"] if "retryPolicy" in c]
    assert retrying["name"] == [{"service": SERVICE, "method": "Get"}]
    assert set(retrying["retryPolicy"]["retryableStatusCodes"]) == {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    options = dict(channel_options(SERVICE, authority="inference:50055"))
    assert options["grpc.default_authority"] == "inference:50055"
    assert json.loads(str(options["grpc.service_config"])) == json.loads(service_config(SERVICE))


async def test_calls_spread_over_every_address(two: tuple[list[_Echo], str]) -> None:
    echoes, target = two
    async with make_channel(target, SERVICE, idempotent_methods=["Get"]) as channel:
        get = channel.unary_unary(f"/{SERVICE}/Get")
        answers = Counter([await get(b"", timeout=5) for _ in range(20)])
    # pick_first would send all 20 to one server; round robin sends to each that is connected.
    assert set(answers) == {b"a", b"b"}, answers
    assert [e.calls["Get"] for e in echoes] == [answers[b"a"], answers[b"b"]]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_only_idempotent_methods_are_retried(code: grpc.StatusCode) -> None:
    echo = _Echo("a", fail_first=1, code=code)
    server, port = await _serve(echo)
    try:
        async with make_channel(f"127.0.0.1:{port}", SERVICE, idempotent_methods=["Get"]) as channel:
            assert await channel.unary_unary(f"/{SERVICE}/Get")(b"", timeout=5) == b"a"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary(f"/{SERVICE}/Put")(b"", timeout=5)
        assert err.value.code() == code
        assert echo.calls == {"Get": 2, "Put": 1}
    finally:
        await server.stop(None)
