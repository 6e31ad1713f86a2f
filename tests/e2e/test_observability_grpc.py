"""Trace parentage across real grpc.aio servers: SERVER spans continue the caller's traceparent,
the runtime's channels open a CLIENT span per call (a stream's ends with the stream), and the
trace id goes back to the caller as `x-llmesh-trace-id` initial metadata."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from llmesh.inference.v1 import inference_service_pb2 as ipb
from llmesh.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as tpb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as tpb_grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.runtime import telemetry
from libs.runtime.channels import make_channel
from libs.runtime.errors import NotFound
from libs.runtime.interceptors import TRACE_ID_KEY
from libs.runtime.server import GrpcService
from libs.runtime.settings import ServiceSettings
from libs.testing.otlp_receiver import SpanRecord, records_from_request

STREAM_MESSAGES = 3


class _Backend(tpb_grpc.TokenizerServiceServicer, ipb_grpc.InferenceServiceServicer):
    async def Encode(self, request, context):
        if request.model == "missing":
            raise NotFound(f"no tokenizer {request.model}")
        return tpb.EncodeResponse(token_ids=[len(request.text)])

    async def GenerateStream(self, request, context):
        for i in range(STREAM_MESSAGES):
            await asyncio.sleep(0.01)
            yield ipb.GenerateStreamResponse(token_ids=[i])


class _Front(tpb_grpc.TokenizerServiceServicer):
    """Encode fans out to the backend: one unary call, then one server stream read to the end."""

    def __init__(self, target: str):
        self.channel = make_channel(target, "llmesh.tokenizer.v1.TokenizerService")
        self.tok = tpb_grpc.TokenizerServiceStub(self.channel)
        self.inf = ipb_grpc.InferenceServiceStub(self.channel)
        self.stream_read_ns = 0

    async def Encode(self, request, context):
        ids = (await self.tok.Encode(tpb.EncodeRequest(model=request.model, text=request.text))).token_ids
        got = [m async for m in self.inf.GenerateStream(ipb.GenerateStreamRequest(model="m"))]
        self.stream_read_ns = time.time_ns()
        if request.text == "first-only":  # read one message, then close the stream early
            stream = self.inf.GenerateStream(ipb.GenerateStreamRequest(model="m"))
            await stream.read()
            stream.cancel()
        return tpb.EncodeResponse(token_ids=[*ids, len(got)])


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    provider = telemetry.setup_tracing("observability-test")
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture(scope="module")
async def front(exporter: InMemorySpanExporter) -> AsyncIterator[tuple[str, _Front]]:
    settings = ServiceSettings(port=0, metrics_port=-1, drain_delay_s=0)
    backend = GrpcService("backend", settings)
    servicer = _Backend()  # type: ignore[abstract]  # only the RPCs the test calls
    backend.add_servicer(
        tpb_grpc.add_TokenizerServiceServicer_to_server, servicer, "llmesh.tokenizer.v1.TokenizerService"
    )
    backend.add_servicer(
        ipb_grpc.add_InferenceServiceServicer_to_server, servicer, "llmesh.inference.v1.InferenceService"
    )
    await backend.start()
    front = GrpcService("front", settings)
    relay = _Front(f"127.0.0.1:{backend.port}")  # type: ignore[abstract]
    front.add_servicer(
        tpb_grpc.add_TokenizerServiceServicer_to_server, relay, "llmesh.tokenizer.v1.TokenizerService"
    )
    await front.start()
    try:
        yield f"127.0.0.1:{front.port}", relay
    finally:
        await front.stop(grace_s=1)
        await backend.stop(grace_s=1)
        await relay.channel.close()


async def _call(target: str, model: str, text: str = "hello") -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(target) as ch:
        call = tpb_grpc.TokenizerServiceStub(ch).Encode(tpb.EncodeRequest(model=model, text=text))
        md = await call.initial_metadata()
        code = await call.code()
        trace_id = dict(md).get(TRACE_ID_KEY) or dict(await call.trailing_metadata()).get(TRACE_ID_KEY, "")
        return code, str(trace_id)


def _spans(exporter: InMemorySpanExporter, trace_id: str) -> list[SpanRecord]:
    """Finished spans of one trace, through the OTLP encoding the exporters send."""
    records = records_from_request(encode_spans(exporter.get_finished_spans()))
    return [s for s in records if s.trace_id == trace_id]


async def _wait_spans(exporter: InMemorySpanExporter, trace_id: str, count: int) -> list[SpanRecord]:
    for _ in range(200):
        spans = _spans(exporter, trace_id)
        if len(spans) >= count:
            return spans
        await asyncio.sleep(0.01)
    return _spans(exporter, trace_id)


async def test_one_trace_with_client_spans_between_servers(front, exporter) -> None:
    target, _ = front
    code, trace_id = await _call(target, "m")
    assert code == grpc.StatusCode.OK and len(trace_id) == 32
    # front SERVER, 2 CLIENT (unary + stream), 2 backend SERVER
    spans = await _wait_spans(exporter, trace_id, 5)
    by_kind = {k: [s for s in spans if s.kind == k] for k in ("SERVER", "CLIENT")}
    assert len(spans) == 5 and len(by_kind["SERVER"]) == 3 and len(by_kind["CLIENT"]) == 2
    root = next(s for s in spans if not s.parent_span_id)
    assert root.kind == "SERVER" and root.scope == "llmesh.front"
    for client in by_kind["CLIENT"]:
        assert client.parent_span_id == root.span_id
        servers = [s for s in spans if s.parent_span_id == client.span_id]
        assert len(servers) == 1 and servers[0].kind == "SERVER"
        assert servers[0].name == client.name
        assert client.start_ns <= servers[0].start_ns and servers[0].end_ns <= client.end_ns
        assert client.attributes["rpc.grpc.status_code"] == 0


async def test_stream_client_span_ends_with_the_stream(front, exporter) -> None:
    target, relay = front
    _, trace_id = await _call(target, "m")
    spans = await _wait_spans(exporter, trace_id, 5)
    stream = next(s for s in spans if s.kind == "CLIENT" and s.name.endswith("GenerateStream"))
    server = next(s for s in spans if s.kind == "SERVER" and s.name.endswith("GenerateStream"))
    assert server.attributes["rpc.messages_sent"] == STREAM_MESSAGES
    # The server sleeps before each message: the client span lasts at least as long as the stream.
    assert stream.end_ns >= server.end_ns
    assert stream.duration_ms >= server.duration_ms
    assert stream.end_ns <= relay.stream_read_ns


async def test_failed_call_marks_client_span_with_status(front, exporter) -> None:
    target, _ = front
    code, trace_id = await _call(target, "missing")
    # The front does not map the backend's error: it surfaces as INTERNAL carrying the trace id.
    assert code == grpc.StatusCode.INTERNAL and len(trace_id) == 32
    spans = await _wait_spans(exporter, trace_id, 3)
    client = next(s for s in spans if s.kind == "CLIENT")
    assert client.status == "ERROR"
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    backend = next(s for s in spans if s.kind == "SERVER" and s.scope == "llmesh.backend")
    assert backend.attributes["llmesh.error.reason"]
    assert backend.parent_span_id == client.span_id


async def test_stream_the_caller_closes_early_is_not_an_error(front, exporter) -> None:
    target, _ = front
    code, trace_id = await _call(target, "m", text="first-only")
    assert code == grpc.StatusCode.OK
    spans = await _wait_spans(exporter, trace_id, 7)
    streams = [s for s in spans if s.kind == "CLIENT" and s.name.endswith("GenerateStream")]
    assert len(streams) == 2
    closed = [s for s in streams if s.attributes.get("llmesh.cancelled_by_caller")]
    assert len(closed) == 1, [s.attributes for s in streams]
    assert closed[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert closed[0].status != "ERROR"
