"""The router's use of the cache, through the real mesh: hits replay as streams, and a semantic
hit needs the same system prompt."""

from __future__ import annotations

import math
import uuid

from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh
from services.router.settings import RouterSettings
from tests.services.router.conftest import auth, chat, create_key, headers, wait_for

CHUNK_CHARS = RouterSettings().stream_chunk_chars


async def fresh_key(mesh: Mesh) -> str:
    """A key of a tenant no other test uses, so its cache starts empty."""
    return await create_key(mesh.redis_url, tenant=f"cache-{uuid.uuid4().hex[:8]}")


async def cache_outcome(
    router: pb_grpc.RouterServiceStub, key: str, req: pb.CreateChatCompletionRequest
) -> str:
    call = router.CreateChatCompletion(req, metadata=auth(key))
    await call
    return (await headers(call))["x-llmesh-cache"]


async def test_a_cache_hit_replays_as_a_stream(router: pb_grpc.RouterServiceStub, mesh: Mesh) -> None:
    key = await fresh_key(mesh)
    req = chat("Describe a sunrise over the sea.", max_tokens=24)
    first = await router.CreateChatCompletion(req, metadata=auth(key))
    answer = first.choices[0].message.content
    assert answer

    async def stored() -> bool:
        return await cache_outcome(router, key, req) == "hit"

    assert await wait_for(stored, timeout_s=10, every_s=0.2)
    call = router.StreamChatCompletion(
        pb.StreamChatCompletionRequest(messages=req.messages, options=req.options), metadata=auth(key)
    )
    chunks = [c async for c in call]
    assert (await headers(call))["x-llmesh-cache"] == "hit"
    assert chunks[0].choices[0].role == "assistant"
    assert "".join(c.choices[0].content for c in chunks) == answer
    # the answer in pieces of stream_chunk_chars, then the closing chunk with usage and route
    assert len(chunks) == math.ceil(len(answer) / CHUNK_CHARS) + 1
    assert all(not c.HasField("usage") for c in chunks[:-1])
    last = chunks[-1]
    assert last.route.cache == "hit" and last.route.cost_usd == 0.0
    assert last.choices[0].finish_reason == first.choices[0].finish_reason
    assert last.usage.completion_tokens == first.usage.completion_tokens


def with_system(system: str, question: str) -> pb.CreateChatCompletionRequest:
    req = chat(question, max_tokens=8)
    req.messages.insert(0, gen_pb.ChatMessage(role="system", content=system))
    return req


async def test_a_semantic_hit_needs_the_same_system_prompt(
    router: pb_grpc.RouterServiceStub, mesh: Mesh
) -> None:
    key = await fresh_key(mesh)
    pirate = with_system("You are a pirate. Answer like one.", "What is the capital of France?")

    async def stored() -> bool:
        return await cache_outcome(router, key, pirate) == "hit"

    assert await wait_for(stored, timeout_s=10, every_s=0.2)
    # a paraphrase under the same system prompt is a (semantic) hit ...
    paraphrase = with_system("You are a pirate. Answer like one.", "Which city is the capital of France?")
    assert await cache_outcome(router, key, paraphrase) == "hit"
    # ... the very same question under another one is not
    teacher = with_system("You are a geography teacher.", "What is the capital of France?")
    assert await cache_outcome(router, key, teacher) == "miss"
