"""The Triton client balances round robin over every address of its target (a headless Service)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tritonclient.grpc.aio as triton

from services.inference import triton_backend
from services.inference.model_info import ModelFolder
from services.inference.triton_backend import TRITON_SERVICE, TritonBackend


class _Built(Exception):
    """Raised by the stand-in client once it has seen how it is built."""


async def test_the_triton_channel_is_round_robin_with_retries(
    int8_folder: ModelFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def client(url: str, **kwargs: Any) -> None:
        seen.update(kwargs, url=url)
        raise _Built

    monkeypatch.setattr(triton_backend.triton, "InferenceServerClient", client)
    with pytest.raises(_Built):
        await TritonBackend("dns:///triton:8001", int8_folder).start()
    assert seen["url"] == "dns:///triton:8001"
    options = dict(seen["channel_args"])
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (retrying,) = [c for c in config["methodConfig"] if "retryPolicy" in c]
    assert {n["method"] for n in retrying["name"]} == {"ModelReady", "ModelConfig"}
    assert {n["service"] for n in retrying["name"]} == {TRITON_SERVICE}
    assert options["grpc.max_receive_message_length"] > 0, "channel_args replaces all of tritonclient's"


async def test_the_installed_tritonclient_takes_these_channel_args() -> None:
    options = triton_backend.channel_options(TRITON_SERVICE)
    client = triton.InferenceServerClient("dns:///localhost:1", channel_args=options)
    await client.close()
