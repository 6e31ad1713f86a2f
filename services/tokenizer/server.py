"""Wires the tokenizer service: registry, servicer, lifecycle hooks. No side effects on build."""

from __future__ import annotations

import asyncio

from llmesh.tokenizer.v1 import tokenizer_service_pb2 as pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as pb_grpc

from libs.runtime.server import GrpcService
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tokenizer.tokenization import TokenizerRegistry

NAME = "tokenizer"


def build_server(settings: TokenizerSettings) -> GrpcService:
    """The tokenizer service, ready to start: tokenizers load in the start hook."""
    registry = TokenizerRegistry(max_text_bytes=settings.max_text_bytes)
    service = GrpcService(NAME, settings)
    service.add_servicer(
        pb_grpc.add_TokenizerServiceServicer_to_server,
        TokenizerServicer(registry),
        pb.DESCRIPTOR.services_by_name["TokenizerService"].full_name,
    )

    async def load() -> None:
        names = await asyncio.to_thread(registry.load_dir, settings.models_dir)
        if not names:
            raise RuntimeError(
                f"no tokenizer found under {settings.models_dir.resolve()}/*/hf/tokenizer.json; "
                "run `make model` or set LLMESH_TOKENIZER_MODELS_DIR"
            )

    service.on_start(load)
    return service
