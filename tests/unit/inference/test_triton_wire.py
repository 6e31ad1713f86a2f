"""What crosses the Triton boundary comes back as it was sent: requests, engine timings, errors."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from libs.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.inference import triton_wire
from services.inference.generation import Delta, FinishReason, GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder
from services.inference.triton_backend import TritonBackend, _error


def _tensors(pairs: list[tuple[str, np.ndarray]]) -> triton_wire.Tensors:
    found = dict(pairs)
    return found.get


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(),
        SamplingConfig(top_p=0.0, max_tokens=0),  # out of range: passed on, refused by the engine
        SamplingConfig(temperature=0.0, top_k=0, seed=0),
        SamplingConfig(temperature=0.75, top_p=0.5, top_k=40, max_tokens=7, seed=2**40),
    ],
)
def test_request_arrives_as_sent(sampling: SamplingConfig) -> None:
    request = GenerationRequest((5, 6, 7), sampling, "r1")
    sent = triton_wire.request_tensors(request)
    assert sent[0][0] == "prompt_token_ids"
    got = triton_wire.request_from_tensors(_tensors([(n, v) for n, v, _ in sent]), "r1")
    assert got == request


def test_absent_inputs_take_the_defaults_and_zero_is_kept() -> None:
    prompt = ("prompt_token_ids", np.asarray([1, 2], np.int32))
    assert triton_wire.request_from_tensors(_tensors([prompt]), "").sampling == SamplingConfig()
    zero = triton_wire.request_from_tensors(_tensors([prompt, ("top_p", np.asarray([0.0], np.float32))]), "")
    assert zero.sampling.top_p == 0.0
    with pytest.raises(InvalidArgument, match="top_p"):
        zero.sampling.validate()


def test_first_response_carries_the_engines_timings() -> None:
    delta = Delta([42], "x", batch_size=1, queue_ms=1.234, ttft_ms=5.678, cached_tokens=16, first=True)
    sent = triton_wire.response_tensors(delta, 9, ("CPUExecutionProvider",))
    back = triton_wire.read_response(_tensors(sent))
    assert back.delta.token_ids == [42] and back.delta.finish_reason is None
    assert back.delta.first and back.delta.cached_tokens == 16 and back.delta.batch_size == 1
    assert back.delta.queue_ms == pytest.approx(1.234) and back.delta.ttft_ms == pytest.approx(5.678)
    assert back.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("reason", [FinishReason.STOP, FinishReason.LENGTH, None])
def test_later_responses_carry_step_and_finish(reason: FinishReason | None) -> None:
    delta = Delta([7], "", finish_reason=reason, batch_size=3, step=19)
    names = [name for name, _ in triton_wire.response_tensors(delta, 9, ("CPUExecutionProvider",))]
    assert "first_token_info" not in names and "execution_providers" not in names
    back = triton_wire.read_response(_tensors(triton_wire.response_tensors(delta, 9, ())))
    assert (back.engine_id, back.delta.step, back.delta.batch_size, back.delta.first) == (9, 19, 3, False)
    assert back.delta.finish_reason is reason and back.providers == ()


def test_queue_full_keeps_its_retry_hint_through_triton() -> None:
    error = ResourceExhausted("model m: 64 requests queued (limit 64)", retry_after_s=2.37)
    raised = InferenceServerException(msg=triton_wire.encode_error(error))
    back = _error(raised)
    assert isinstance(back, ResourceExhausted)
    assert back.message == error.message and back.reason == error.reason
    assert back.retry_after_s() == 2.37


def test_typed_errors_cross_and_others_are_unavailable() -> None:
    back = triton_wire.decode_error("in model x: " + triton_wire.encode_error(InvalidArgument("top_p bad")))
    assert isinstance(back, InvalidArgument) and back.message == "top_p bad"
    wrapped = triton_wire.decode_error(triton_wire.encode_error(RuntimeError("boom")))
    assert isinstance(wrapped, Unavailable) and wrapped.message == "boom"
    assert triton_wire.decode_error("some triton failure") is None
    plain = _error(InferenceServerException(msg="model not ready"))
    assert isinstance(plain, Unavailable) and "model not ready" in plain.message


def test_batch_size_is_observed_once_per_step_of_each_engine(int8_folder: ModelFolder) -> None:
    """Sequences of one step each bring a response; two Triton pods each count their own steps."""
    registry = CollectorRegistry()
    backend = TritonBackend("127.0.0.1:1", int8_folder, EngineMetrics(registry))
    seen = [(1, 500, 2), (1, 500, 2), (1, 501, 2), (2, 3, 1), (1, 501, 2), (2, 4, 1), (1, 0, 1)]
    for engine_id, step, batch in seen:
        backend._observe_step(engine_id, Delta([1], "", step=step, batch_size=batch))
    labels = {"model": backend.card.name}
    assert registry.get_sample_value("llmesh_inference_batch_size_count", labels) == 4
    assert registry.get_sample_value("llmesh_inference_batch_size_sum", labels) == 2 + 2 + 1 + 1
