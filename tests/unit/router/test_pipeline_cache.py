"""What the pipeline asks the cache: semantic lookups only for prompts safety passed unchanged.

A redacted prompt's cached answer holds the personal data restored from its placeholders, so
it may only ever be served to the same prompt (the exact key, made of the original tokens): no
semantic lookup, and no prompt text handed to the cache to embed and keep in Redis.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.safety.v1 import safety_service_pb2 as safety_pb

from libs.keys import KeyRecord
from libs.runtime.errors import Unavailable
from services.router.deadline import Deadline
from services.router.generation import Finished, GenerationInput, PipelineConfig
from services.router.pipeline import Pipeline
from tests.unit.router.test_pipeline_input_safety import KEY, build

EMAIL = "ana@example.com"


class RecordingCache:
    """Misses every lookup (with a lease) and keeps every request it gets."""

    def __init__(self) -> None:
        self.lookups: list[cache_pb.LookupRequest] = []
        self.stores: list[cache_pb.StoreRequest] = []

    async def lookup(self, request: cache_pb.LookupRequest, timeout_s: float) -> cache_pb.LookupResponse:
        self.lookups.append(request)
        return cache_pb.LookupResponse(hit=False, lease="lease-1")

    async def store(self, request: cache_pb.StoreRequest, timeout_s: float) -> cache_pb.StoreResponse:
        self.stores.append(request)
        return cache_pb.StoreResponse(stored=True)


def chat(*turns: tuple[str, str]) -> GenerationInput:
    return GenerationInput(
        model="m1",
        sampling=gen_pb.SamplingParams(temperature=0.0, max_tokens=8),
        messages=[gen_pb.ChatMessage(role=role, content=text) for role, text in turns],
    )


async def serve(
    verdict: safety_pb.ScreenInputResponse | Exception,
    req: GenerationInput,
    key: KeyRecord = KEY,
    config: PipelineConfig | None = None,
) -> tuple[RecordingCache, list[Any]]:
    pipeline, _, _, safety, _ = build(verdict)
    cache = RecordingCache()
    pipeline.cache = cache
    if config is not None:
        pipeline.cfg = config
    safety.release.set()
    events = await asyncio.wait_for(_collect(pipeline, req, key), 5)
    await pipeline.drain()
    return cache, events


async def _collect(pipeline: Pipeline, req: GenerationInput, key: KeyRecord) -> list[Any]:
    return [e async for e in pipeline.generate(req, key, Deadline(10), "r1")]


ALLOW = safety_pb.ScreenInputResponse(action=safety_pb.ACTION_ALLOW)


async def test_an_allowed_chat_asks_for_semantic_hits_with_its_context() -> None:
    req = chat(("system", "Answer in French."), ("user", "What is the capital of Spain?"))
    cache, events = await serve(ALLOW, req)
    (lookup,) = cache.lookups
    assert lookup.semantic
    assert lookup.key.semantic_text == "What is the capital of Spain?"
    assert lookup.key.context_digest == req.context_digest() != ""
    (store,) = cache.stores
    assert store.lease == "lease-1" and store.key == lookup.key
    assert isinstance(events[-1], Finished) and events[-1].route.cache == "miss"


async def test_a_redacted_prompt_uses_the_exact_cache_only() -> None:
    verdict = safety_pb.ScreenInputResponse(
        action=safety_pb.ACTION_REDACT,
        messages=[gen_pb.ChatMessage(role="user", content="write to [EMAIL_1]")],
        restore={"[EMAIL_1]": EMAIL},
    )
    cache, events = await serve(verdict, chat(("user", f"write to {EMAIL}")))
    (lookup,) = cache.lookups
    assert not lookup.semantic
    assert lookup.key.semantic_text == "" and lookup.key.context_digest == ""
    assert lookup.key.prompt_token_ids  # the exact key: the original prompt's tokens
    (store,) = cache.stores
    assert store.key.semantic_text == "" and store.key.context_digest == ""
    for sent in (lookup, store):
        assert EMAIL.encode() not in sent.SerializeToString()
    assert isinstance(events[-1], Finished) and events[-1].route.safety == "redact"


async def test_an_unscreened_prompt_uses_the_exact_cache_only() -> None:
    open_key = replace(KEY, safety_fail_mode="open")
    cache, events = await serve(Unavailable("safety: down"), chat(("user", f"mail {EMAIL}")), open_key)
    (lookup,) = cache.lookups
    assert not lookup.semantic and lookup.key.semantic_text == ""
    assert all(not s.key.semantic_text for s in cache.stores)
    assert isinstance(events[-1], Finished) and events[-1].route.safety == "unscreened"


async def test_semantic_off_in_the_settings_asks_for_exact_hits_only() -> None:
    cache, _ = await serve(ALLOW, chat(("user", "hello")), config=PipelineConfig(cache_semantic=False))
    (lookup,) = cache.lookups
    assert not lookup.semantic and lookup.key.semantic_text == ""
    (store,) = cache.stores
    assert store.key.semantic_text == ""


def test_the_context_digest_covers_everything_but_the_compared_text() -> None:
    question = ("user", "What is the capital of Spain?")
    base = chat(("system", "Answer in French."), question)
    digest = base.context_digest()
    # what the semantic cache compares by meaning is left out: a paraphrase keeps the digest
    assert (
        chat(("system", "Answer in French."), ("user", "Which city is Spain's capital?")).context_digest()
        == digest
    )
    # everything around it counts
    others = [
        chat(("system", "Answer in German."), question),
        chat(question),
        chat(("system", "Answer in French."), ("user", "Hi"), ("assistant", "Bonjour"), question),
        chat(("system", "Answer in French."), question, ("assistant", "La capitale")),
        GenerationInput(model="m1", sampling=gen_pb.SamplingParams(), prompt=question[1]),
    ]
    assert len({digest, *(o.context_digest() for o in others)}) == len(others) + 1
    named = GenerationInput(
        model="m1",
        sampling=gen_pb.SamplingParams(),
        messages=[gen_pb.ChatMessage(role="user", content=question[1], name="bob")],
    )
    assert named.context_digest() != chat(question).context_digest()
    # a raw completion compares its whole prompt: every completion has the same context
    prompts = [GenerationInput(model="m1", sampling=gen_pb.SamplingParams(), prompt=p) for p in ("a", "b")]
    assert prompts[0].context_digest() == prompts[1].context_digest()
