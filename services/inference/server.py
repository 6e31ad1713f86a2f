"""Wires the inference service: model backends, servicer, lifecycle hooks. No side effects on build."""

from __future__ import annotations

import logging

from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY, CollectorRegistry

from libs.runtime.server import GrpcService
from services.inference.backends import EmbeddedBackend, ModelRegistry, model_folder
from services.inference.engine import EngineConfig
from services.inference.metrics import EngineMetrics
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings

NAME = "inference"
log = logging.getLogger("llmesh.inference")


def build_server(settings: InferenceSettings, registry: CollectorRegistry = REGISTRY) -> GrpcService:
    """The inference service, ready to start: models load and warm up in the start hook."""
    models = ModelRegistry()
    service = GrpcService(NAME, settings)
    service.add_servicer(
        pb_grpc.add_InferenceServiceServicer_to_server,
        InferenceServicer(models),
        pb.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    )
    config = EngineConfig(
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        threads=settings.threads,
        max_context=settings.max_context,
        default_max_tokens=settings.default_max_tokens,
        providers=tuple(settings.provider_list),
        strict_providers=settings.strict_providers,
        prefix_cache_tokens=settings.prefix_cache_tokens if settings.prefix_cache else 0,
        prefix_block_tokens=settings.prefix_block_tokens,
    )

    async def load() -> None:
        if not settings.model_names:
            raise RuntimeError("LLMESH_INFERENCE_MODELS is empty")
        backend = settings.resolved_backend
        metrics = EngineMetrics(registry)
        if backend == "triton":
            from services.inference.triton_backend import TritonBackend

            for name in settings.model_names:
                folder = model_folder(settings.models_dir, name)
                models.add(TritonBackend(settings.triton_url, folder, metrics, settings.default_max_tokens))
        else:
            for name in settings.model_names:
                models.add(EmbeddedBackend(model_folder(settings.models_dir, name), config, metrics))
        await models.start()
        log.info("serving %s on the %s backend", settings.model_names, backend)

    service.on_start(load)
    service.on_stop(models.stop)
    return service
