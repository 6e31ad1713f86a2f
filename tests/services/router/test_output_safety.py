"""Output screening on the real model: what the policy blocks ends the stream with
`content_filter` and says why in the route; what it redacts never reaches the caller."""

from __future__ import annotations

from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh
from tests.services.router.conftest import auth, chat, create_key

ADDRESS = "maria.lopez@globex-corp.com"
PROMPT = (
    "What is the e-mail address in this sentence? Answer with the address only. "
    f"Sentence: Please write to {ADDRESS} for details."
)


async def _stream(router: pb_grpc.RouterServiceStub, key: str) -> list[pb.StreamChatCompletionResponse]:
    req = chat(PROMPT, max_tokens=32, cache="bypass")
    call = router.StreamChatCompletion(
        pb.StreamChatCompletionRequest(messages=req.messages, options=req.options), metadata=auth(key)
    )
    return [c async for c in call]


async def test_model_output_is_plainly_allowed_by_default(
    mesh: Mesh, router: pb_grpc.RouterServiceStub
) -> None:
    """The control: under the shipped defaults (output e-mails allowed) the model repeats it."""
    chunks = await _stream(router, await create_key(mesh.redis_url, "output-default"))
    text = "".join(c.choices[0].content for c in chunks if c.choices)
    assert chunks[-1].route.safety == "redact", "input e-mails are redacted by default"
    assert chunks[-1].route.output_safety == "allow"
    assert chunks[-1].route.output_blocked_reason == ""
    assert text.strip()


async def test_blocked_output_ends_the_stream_with_content_filter(
    mesh: Mesh, router: pb_grpc.RouterServiceStub
) -> None:
    chunks = await _stream(router, await create_key(mesh.redis_url, "output-block"))
    text = "".join(c.choices[0].content for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "content_filter", text
    assert last.route.output_safety == "block"
    assert "EMAIL" in last.route.output_blocked_reason
    assert ADDRESS not in text and "@globex" not in text
    assert last.usage.completion_tokens > 0


async def test_redacted_output_never_carries_the_value(mesh: Mesh, router: pb_grpc.RouterServiceStub) -> None:
    chunks = await _stream(router, await create_key(mesh.redis_url, "output-redact"))
    text = "".join(c.choices[0].content for c in chunks if c.choices)
    last = chunks[-1]
    assert last.route.output_safety == "redact", text
    assert ADDRESS not in text and "[EMAIL" in text
    assert last.choices[0].finish_reason in ("stop", "length")
