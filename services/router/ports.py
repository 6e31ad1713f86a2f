"""The calls the pipeline makes to the other services, as protocols (implemented over gRPC in
`clients.py`, by fakes in unit tests). Every method raises typed `LlmeshError`s only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.safety.v1 import safety_service_pb2 as safety_pb


class Tokenizer(Protocol):
    """Token ids for prompts."""

    async def chat_token_ids(
        self, model: str, messages: Sequence[gen_pb.ChatMessage], timeout_s: float
    ) -> list[int]: ...

    async def encode(self, model: str, text: str, timeout_s: float) -> list[int]: ...


class OutputScreen(Protocol):
    """One ScreenOutput stream: write chunks, read what may be released."""

    async def write(self, request: safety_pb.ScreenOutputRequest) -> None: ...

    async def done_writing(self) -> None: ...

    async def read(self) -> safety_pb.ScreenOutputResponse | None: ...

    def cancel(self) -> None: ...


class Safety(Protocol):
    """Input and output screening."""

    async def screen_input(
        self, tenant: str, request_id: str, messages: Sequence[gen_pb.ChatMessage], timeout_s: float
    ) -> safety_pb.ScreenInputResponse: ...

    def screen_output(self, timeout_s: float) -> OutputScreen: ...


class Cache(Protocol):
    """Response cache."""

    async def lookup(self, request: cache_pb.LookupRequest, timeout_s: float) -> cache_pb.LookupResponse: ...

    async def store(self, request: cache_pb.StoreRequest, timeout_s: float) -> cache_pb.StoreResponse: ...


Restore = Mapping[str, str]
