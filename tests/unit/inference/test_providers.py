"""A requested execution provider the session does not run on is logged and counted, never silent;
with strict_providers the start fails. A queued request whose caller has gone is dropped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from libs.runtime.errors import FailedPrecondition, ResourceExhausted
from services.inference.engine import Engine, EngineConfig
from services.inference.generation import Delta, GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder
from services.inference.triton_backend import TritonBackend

ASKED = ("CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's own warning about the provider this machine lacks is what these tests provoke.
pytestmark = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
Chat = Callable[[str], tuple[int, ...]]


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="module")
def cuda_asked(int8_folder: ModelFolder, registry: CollectorRegistry) -> Iterator[Engine]:
    """An engine that asks for CUDA first on an onnxruntime without it (max batch 1, queue 1)."""
    config = EngineConfig(max_batch=1, max_queue=1, max_context=256, providers=ASKED)
    engine = Engine(int8_folder, config, EngineMetrics(registry))
    engine.start()
    yield engine
    engine.stop()


def test_missing_provider_is_logged_and_counted(
    int8_folder: ModelFolder, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(
        int8_folder,
        EngineConfig(max_batch=1, max_context=64, providers=ASKED),
        EngineMetrics(CollectorRegistry()),
        "probe",
    )
    with caplog.at_level(logging.INFO, logger="llmesh.inference.engine"):
        engine.start()
    engine.stop()
    assert engine.providers == ("CPUExecutionProvider",)
    assert engine.missing_providers == ("CUDAExecutionProvider",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CUDAExecutionProvider" in w and "not in use" in w for w in warnings)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("runs on CPUExecutionProvider" in m for m in infos)


def test_metrics_name_the_missing_provider(cuda_asked: Engine, registry: CollectorRegistry) -> None:
    def gauge(name: str, provider: str) -> float | None:
        return registry.get_sample_value(name, {"model": cuda_asked.name, "provider": provider})

    assert gauge("llmesh_inference_execution_provider", "CPUExecutionProvider") == 1
    assert gauge("llmesh_inference_execution_provider", "CUDAExecutionProvider") is None
    assert gauge("llmesh_inference_execution_provider_missing", "CUDAExecutionProvider") == 1


def test_strict_providers_fail_the_start(int8_folder: ModelFolder) -> None:
    config = EngineConfig(max_batch=1, max_context=64, providers=ASKED, strict_providers=True)
    engine = Engine(int8_folder, config, EngineMetrics(CollectorRegistry()))
    with pytest.raises(FailedPrecondition, match="CUDAExecutionProvider"):
        engine.start()
    assert not engine.ready


def test_triton_backend_warns_about_what_tritons_engine_lacks(
    int8_folder: ModelFolder, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    backend = TritonBackend("127.0.0.1:1", int8_folder, EngineMetrics(registry))
    backend._requested_providers = ASKED  # what start() reads from the Triton model config
    with caplog.at_level(logging.WARNING, logger="llmesh.inference.triton"):
        backend._note_providers(("CPUExecutionProvider",))
    assert backend.missing_providers == ("CUDAExecutionProvider",)
    assert any("CUDAExecutionProvider" in r.getMessage() for r in caplog.records)
    labels = {"model": backend.card.name, "provider": "CUDAExecutionProvider"}
    assert registry.get_sample_value("llmesh_inference_execution_provider_missing", labels) == 1


def _until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_full_queue_drops_requests_whose_caller_has_gone(
    cuda_asked: Engine, registry: CollectorRegistry, chat: Chat
) -> None:
    engine = cuda_asked
    long = GenerationRequest(chat("Write a long essay."), SamplingConfig(max_tokens=200))
    short = GenerationRequest(chat("Say hi."), SamplingConfig(max_tokens=2))
    first: list[Delta] = []
    running = engine.submit(long, first.append)
    _until(lambda: engine.running == 1)
    left: list[Delta] = []
    gone = [False]
    engine.submit(short, left.append, lambda: gone[0])
    refused: list[Delta] = []
    with pytest.raises(ResourceExhausted):
        engine.submit(short, refused.append)
    cancelled = registry.get_sample_value(
        "llmesh_inference_requests_finished_total", {"model": engine.name, "reason": "cancelled"}
    )
    gone[0] = True
    later: list[Delta] = []
    engine.submit(short, later.append)  # the gone caller's place is free
    running.cancel()
    _until(lambda: bool(later) and later[-1].finished)
    assert left == []  # never prefilled, never answered
    assert later[-1].error is None and later[-1].usage is not None
    after = registry.get_sample_value(
        "llmesh_inference_requests_finished_total", {"model": engine.name, "reason": "cancelled"}
    )
    assert after == (cancelled or 0) + 2  # the gone request and the cancelled long one
