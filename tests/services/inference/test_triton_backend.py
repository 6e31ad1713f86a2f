"""The triton backend against a real tritonserver running the shipped python model.

Triton's engine gets the limits of the embedded `server` fixture (batch 4, queue 2, context 512),
so the two backends can be compared request for request: greedy output, refusals, queue-full.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as tclient
from google.rpc import error_details_pb2
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from libs.launch.triton import start_triton
from libs.runtime.errors import RETRY_AFTER_KEY, InvalidArgument, status_from_metadata
from libs.runtime.server import GrpcService
from services.inference import triton_wire
from services.inference.generation import GenerationRequest, SamplingConfig
from services.inference.model_info import ModelFolder
from services.inference.server import build_server
from services.inference.settings import InferenceSettings
from services.inference.triton_backend import TritonBackend
from tests.models import MODELS, ensure_int8
from tests.services.inference.load import fill, idle

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]
MODEL = "smollm2-135m-int8"
Chat = Callable[[str], list[int]]


@dataclass
class Triton:
    url: str
    stub: pb_grpc.InferenceServiceStub
    metrics: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, {"model": MODEL, **labels}) or 0.0


@pytest.fixture(scope="module")
def tritonserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ensure_int8()
    work = tmp_path_factory.mktemp("triton")
    limits = ["max_batch=4", "max_queue=2", "max_context=512"]
    args = ["--build-dir", str(work / "build"), "--models", MODEL, *(a for x in limits for a in ("--set", x))]
    proc, grpc_port = start_triton(
        work / "tritonserver.log", ready_model=MODEL, timeout_s=120, launcher_args=args
    )
    try:
        yield f"127.0.0.1:{grpc_port}"
    finally:
        proc.stop(grace_s=10)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def triton(tritonserver: str) -> AsyncIterator[Triton]:
    settings = InferenceSettings(
        port=0,
        metrics_port=-1,
        models_dir=MODELS,
        models=MODEL,
        triton_url=tritonserver,
        grace_period_s=1.0,
    )
    assert settings.resolved_backend == "triton"
    registry = CollectorRegistry()
    service: GrpcService = build_server(settings, registry)
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield Triton(tritonserver, pb_grpc.InferenceServiceStub(channel), registry)
    await service.stop(1.0)


async def test_list_models_reports_triton(triton: Triton) -> None:
    reply = await triton.stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.backend, m.context_length) for m in reply.models] == [(MODEL, "triton", 512)]


async def test_greedy_matches_embedded(
    triton: Triton, stub: pb_grpc.InferenceServiceStub, chat: Chat
) -> None:
    questions = ["What is the capital of France?", "Write a haiku about rain.", "List three animals."]
    params = gen_pb.SamplingParams(max_tokens=32)

    async def both(q: str) -> tuple[pb.GenerateResponse, pb.GenerateResponse]:
        request = pb.GenerateRequest(model=MODEL, prompt_token_ids=chat(q), sampling=params)
        return await triton.stub.Generate(request), await stub.Generate(request)

    results = await asyncio.gather(*[both(q) for q in questions])
    for via_triton, embedded in results:
        assert list(via_triton.token_ids) == list(embedded.token_ids)
        assert via_triton.text == embedded.text
        assert via_triton.finish_reason == embedded.finish_reason
        assert via_triton.usage == embedded.usage
        # Triton's engine reports its own queue wait and prefill, as the embedded engine does.
        assert via_triton.time_to_first_token_ms > 0


async def test_stop_sequence_and_stream(
    triton: Triton, stub: pb_grpc.InferenceServiceStub, chat: Chat
) -> None:
    prompt = chat("Write a long story about a dragon.")
    full = await stub.Generate(
        pb.GenerateRequest(
            model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=30)
        )
    )
    stop = " " + full.text.split()[len(full.text.split()) // 2]
    params = gen_pb.SamplingParams(max_tokens=30, stop=[stop])
    msgs = [
        m
        async for m in triton.stub.GenerateStream(
            pb.GenerateStreamRequest(model=MODEL, prompt_token_ids=prompt, sampling=params)
        )
    ]
    assert "".join(m.text for m in msgs) == full.text[: full.text.index(stop)]
    assert msgs[-1].finish_reason == gen_pb.FINISH_REASON_STOP


BAD_REQUESTS = {
    "top_p=0": ([1, 2, 3], gen_pb.SamplingParams(top_p=0.0)),
    "max_tokens=0": ([1, 2, 3], gen_pb.SamplingParams(max_tokens=0)),
    "temperature=2.5": ([1, 2, 3], gen_pb.SamplingParams(temperature=2.5)),
    "top_k=-1": ([1, 2, 3], gen_pb.SamplingParams(top_k=-1)),
    "five stops": ([1, 2, 3], gen_pb.SamplingParams(stop=["a", "b", "c", "d", "e"])),
    "token outside vocabulary": ([1, 10**6], gen_pb.SamplingParams(max_tokens=4)),
    "over the window": ([42] * 500, gen_pb.SamplingParams(max_tokens=100)),
    "empty prompt": ([], gen_pb.SamplingParams(max_tokens=4)),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_request_is_refused_alike(
    triton: Triton, stub: pb_grpc.InferenceServiceStub, case: str
) -> None:
    prompt, params = BAD_REQUESTS[case]
    request = pb.GenerateRequest(model=MODEL, prompt_token_ids=prompt, sampling=params)
    errors = []
    for s in (stub, triton.stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.Generate(request)
        errors.append((err.value.code(), err.value.details()))
    assert errors[0] == errors[1]
    assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT


async def _raw(url: str, inputs: list[tuple[str, np.ndarray, str]]) -> tuple[list[int], Exception | None]:
    """Send tensors straight to Triton's model; the tokens streamed and the typed error, if any."""
    client = tclient.InferenceServerClient(url)
    tensors = []
    for name, value, dtype in inputs:
        tensor = tclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)

    async def one() -> AsyncIterator[dict[str, object]]:
        yield {"model_name": MODEL, "inputs": tensors}

    tokens: list[int] = []
    try:
        async for result, error in client.stream_infer(one()):
            if error is not None:
                return tokens, triton_wire.decode_error(error.message())
            response = triton_wire.read_response(result.as_numpy)
            tokens += response.delta.token_ids
            if response.delta.finish_reason is not None:
                return tokens, None
    finally:
        await client.close()
    raise AssertionError("stream ended without a final response")


@pytest.mark.parametrize(
    ("field", "value", "dtype"), [("top_p", 0.0, np.float32), ("max_tokens", 0, np.int32)]
)
async def test_triton_model_takes_values_as_sent(
    triton: Triton, field: str, value: float, dtype: type[np.generic]
) -> None:
    """Straight to Triton (no check in the service): a zero is refused, not turned into a default."""
    sampling = SamplingConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as expected:
        sampling.validate()
    prompt = ("prompt_token_ids", np.asarray([1, 2, 3], np.int32), "INT32")
    tensor = (field, np.asarray([value], dtype), "FP32" if dtype is np.float32 else "INT32")
    tokens, error = await _raw(triton.url, [prompt, tensor])
    assert tokens == [] and isinstance(error, InvalidArgument)
    assert error.message == expected.value.message


async def test_absent_inputs_take_the_engine_defaults(
    triton: Triton, stub: pb_grpc.InferenceServiceStub, chat: Chat
) -> None:
    prompt = chat("Name a fruit.")
    embedded = await stub.Generate(
        pb.GenerateRequest(model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=6))
    )
    inputs = [
        ("prompt_token_ids", np.asarray(prompt, np.int32), "INT32"),
        ("max_tokens", np.asarray([6], np.int32), "INT32"),
    ]
    tokens, error = await _raw(triton.url, inputs)  # no temperature, top_p, top_k: greedy
    assert error is None and tokens == list(embedded.token_ids)


async def test_service_records_the_engine_metrics(triton: Triton, chat: Chat) -> None:
    await idle(triton.stub)
    names = {
        "ttft": "llmesh_inference_time_to_first_token_seconds_count",
        "itl": "llmesh_inference_inter_token_seconds_count",
        "queue": "llmesh_inference_queue_wait_seconds_count",
        "batch": "llmesh_inference_batch_size_count",
        "tokens": "llmesh_inference_generated_tokens_total",
    }
    before = {k: triton.sample(v) for k, v in names.items()}
    length = triton.sample("llmesh_inference_requests_finished_total", reason="length")
    reply = await triton.stub.Generate(
        pb.GenerateRequest(
            model=MODEL,
            prompt_token_ids=chat("Write a long essay."),
            sampling=gen_pb.SamplingParams(max_tokens=8),
        )
    )
    assert reply.finish_reason == gen_pb.FINISH_REASON_LENGTH
    after = {k: triton.sample(v) - before[k] for k, v in names.items()}
    assert after == {"ttft": 1, "itl": 7, "queue": 1, "batch": 7, "tokens": 8}
    assert triton.sample("llmesh_inference_requests_finished_total", reason="length") == length + 1
    assert triton.sample("llmesh_inference_execution_provider", provider="CPUExecutionProvider") == 1


async def test_span_carries_tritons_own_times(triton: Triton, chat: Chat) -> None:
    backend = TritonBackend(triton.url, ModelFolder.load(ensure_int8()))
    await backend.start()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        with provider.get_tracer("test").start_as_current_span("generate"):
            request = GenerationRequest(tuple(chat("Count to five.")), SamplingConfig(max_tokens=5))
            deltas = [d async for d in backend.generate(request)]
    finally:
        await backend.stop()
    (span,) = memory.get_finished_spans()
    events = {e.name: dict(e.attributes or {}) for e in span.events}
    assert events["queue_wait"]["llmesh.measured_in"] == "triton"
    assert events["prefill"]["llmesh.measured_in"] == "triton"
    queue_ms, prefill_ms = events["queue_wait"]["llmesh.queue_ms"], events["prefill"]["llmesh.ttft_ms"]
    seen = (span.attributes or {})["llmesh.triton.first_response_ms"]
    assert isinstance(queue_ms, float) and isinstance(prefill_ms, float) and isinstance(seen, float)
    assert prefill_ms > 0 and deltas[0].ttft_ms == prefill_ms and deltas[0].queue_ms == queue_ms
    # Triton's own time is a part of the first response's time as this service saw it.
    assert seen >= queue_ms + prefill_ms
    assert events["decode"]["llmesh.completion_tokens"] == 5
    assert events["decode"]["llmesh.decode_steps"] == 4
    assert backend.providers == ("CPUExecutionProvider",) and backend.missing_providers == ()


async def test_queue_full_keeps_the_retry_hint(triton: Triton, chat: Chat) -> None:
    """Last in the module: Triton's engine drops the cancelled requests after the service has."""
    stub = triton.stub
    await idle(stub)
    rejected = triton.sample("llmesh_inference_requests_rejected_total")
    request, calls, load = await fill(stub, MODEL, chat("Write a long essay."), running=4, queued=2)
    # GetLoad reports what this service has in flight at Triton and Triton's engine limits.
    assert (load.running, load.queued, load.max_batch, load.max_queue) == (4, 2, 4, 2)
    assert triton.sample("llmesh_inference_running_sequences") == 4
    assert triton.sample("llmesh_inference_queued_requests") == 2
    refused = stub.GenerateStream(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await refused.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests queued (limit 2)" in (err.value.details() or "")
    trailers = err.value.trailing_metadata()
    status = status_from_metadata(trailers)
    assert status is not None
    hints = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(hints) == 1
    retry = error_details_pb2.RetryInfo()
    hints[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() > 0
    assert any(k == RETRY_AFTER_KEY for k, _ in trailers or ())
    assert triton.sample("llmesh_inference_requests_rejected_total") == rejected + 1
    for c in [*calls, refused]:
        c.cancel()
    await idle(stub)
    assert triton.sample("llmesh_inference_running_sequences") == 0
