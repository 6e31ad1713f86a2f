"""Wires the safety service: servicer, model loading in the start hook. No side effects on build."""

from __future__ import annotations

import asyncio

from llmesh.safety.v1 import safety_service_pb2 as pb
from llmesh.safety.v1 import safety_service_pb2_grpc as pb_grpc

from libs.embedding import SentenceEmbedder
from libs.runtime.server import GrpcService
from services.safety.injection import InjectionClassifier, InjectionHead
from services.safety.policy import Direction, PolicyStore
from services.safety.screening import Screener
from services.safety.servicer import SafetyServicer
from services.safety.settings import SafetySettings
from services.safety.toxicity import ToxicityScorer

NAME = "safety"


def load_screener(settings: SafetySettings) -> Screener:
    """Load the policy, the embedder, the injection head and the toxicity model (blocking)."""
    policies = PolicyStore.load(settings.policy_file, settings.injection_threshold)
    embedder = SentenceEmbedder.load(settings.model_dir, threads=settings.embed_threads)
    head = InjectionHead.load(settings.head_dir)
    screener = Screener(
        policies, InjectionClassifier(embedder, head), ToxicityScorer(), settings.max_holdback_chars
    )
    # Warm-up: the first ONNX Runtime run allocates its buffers.
    screener.screen_text("warm-up", "warm-up", "Hello, how are you?", Direction.INPUT)
    return screener


def build_server(settings: SafetySettings) -> GrpcService:
    """The safety service, ready to start: models load in the start hook, health follows."""
    servicer = SafetyServicer(settings.max_text_chars)
    service = GrpcService(NAME, settings)
    service.add_servicer(
        pb_grpc.add_SafetyServiceServicer_to_server,
        servicer,
        pb.DESCRIPTOR.services_by_name["SafetyService"].full_name,
    )

    async def load() -> None:
        servicer.screener = await asyncio.to_thread(load_screener, settings)

    service.on_start(load)
    return service
