"""TokenizerService: a thin adapter between the proto contract and the tokenizer registry."""

from __future__ import annotations

import grpc
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as pb_grpc

from services.tokenizer.tokenization import Message, TokenizerRegistry


def _messages(msgs: object) -> list[Message]:
    return [Message(role=m.role, content=m.content, name=m.name) for m in msgs]  # type: ignore[attr-defined]


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    """Serves the registry over gRPC."""

    def __init__(self, registry: TokenizerRegistry):
        self.registry = registry

    async def Encode(self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        ids = self.registry.encode(request.model, request.text, request.add_special_tokens)
        return pb.EncodeResponse(token_ids=ids)

    async def Decode(self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext) -> pb.DecodeResponse:
        text = self.registry.decode(request.model, list(request.token_ids), request.skip_special_tokens)
        return pb.DecodeResponse(text=text)

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        count = self.registry.count(request.model, request.text, _messages(request.messages))
        return pb.CountTokensResponse(count=count)

    async def ApplyChatTemplate(
        self, request: pb.ApplyChatTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyChatTemplateResponse:
        prompt, ids = self.registry.apply_chat_template(
            request.model, _messages(request.messages), request.add_generation_prompt
        )
        return pb.ApplyChatTemplateResponse(prompt=prompt, token_ids=ids)

    async def ListTokenizers(
        self, request: pb.ListTokenizersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTokenizersResponse:
        return pb.ListTokenizersResponse(
            tokenizers=[
                pb.TokenizerInfo(
                    name=t.name,
                    aliases=t.aliases,
                    vocab_size=t.vocab_size,
                    has_chat_template=t.has_chat_template,
                )
                for t in self.registry.all()
            ]
        )
