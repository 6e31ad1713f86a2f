"""The OpenAI routes: a thin adapter between OpenAI's REST API and the router's gRPC API.

Each handler validates the body (`protocol`), calls the router with the caller's
`authorization` (the router authenticates), and answers in OpenAI's shape (`responses`). A
streamed completion waits for the router's first chunk before sending the 200, so failures that
happen up front (bad key, rate limit, unknown model) still get their HTTP status; a failure
after that arrives as an `error` event, as OpenAI does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.runtime import telemetry
from libs.runtime.errors import RETRY_AFTER_KEY, error_info, status_from_metadata
from libs.runtime.interceptors import TRACE_ID_KEY
from services.gateway import protocol, responses
from services.gateway.metrics import ROUTER_ERRORS, STREAM_FIRST_CHUNK
from services.gateway.openai_errors import ApiError, from_status
from services.gateway.settings import GatewaySettings

log = logging.getLogger("llmesh.gateway")
CACHE_KEY = "x-llmesh-cache"
FORWARDED_HEADERS = ("authorization", "x-request-id")
Metadata = Sequence[tuple[str, str | bytes]]


def _md_value(md: Metadata | None, key: str) -> str:
    for k, v in md or ():
        if k == key and isinstance(v, str):
            return v
    return ""


def rpc_error(err: grpc.aio.AioRpcError) -> ApiError:
    """The OpenAI error for a failed router call."""
    code = err.code()
    ROUTER_ERRORS.labels(code.name).inc()
    trailing = err.trailing_metadata()
    status = status_from_metadata(trailing)
    info = error_info(status) if status else None
    retry = _md_value(trailing, RETRY_AFTER_KEY)
    api = from_status(
        code.name,
        err.details() or "",
        reason=info.reason if info else "",
        retry_after_s=float(retry) if retry.replace(".", "", 1).isdigit() else None,
        param=(info.metadata.get("param") or info.metadata.get("field") or None) if info else None,
    )
    if code == grpc.StatusCode.UNAVAILABLE and not err.details():
        api.message = "the router is unavailable; retry shortly"
    trace_id = _md_value(trailing, TRACE_ID_KEY)
    if trace_id:
        api.headers[TRACE_ID_KEY] = trace_id
    return api


def _json(obj: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(
        text=json.dumps(obj, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )


class OpenAIServicer:
    """aiohttp handlers for /v1/* backed by a RouterService stub."""

    def __init__(self, stub: pb_grpc.RouterServiceStub, settings: GatewaySettings):
        self.stub = stub
        self.settings = settings

    @staticmethod
    def _metadata(request: web.Request) -> list[tuple[str, str]]:
        return [(h, request.headers[h]) for h in FORWARDED_HEADERS if h in request.headers]

    @staticmethod
    def _headers(md: Metadata | None, cache: str = "") -> dict[str, str]:
        out = {}
        if value := (_md_value(md, CACHE_KEY) or cache):
            out[CACHE_KEY] = value
        out[TRACE_ID_KEY] = _md_value(md, TRACE_ID_KEY) or telemetry.current_trace_id()
        return {k: v for k, v in out.items() if v}

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                413,
                f"request body too large: the limit is {self.settings.max_body_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
            ) from None
        return protocol.decode_json(raw)

    async def _unary(
        self, method: Any, req: Any, request: web.Request, deadline_s: float
    ) -> tuple[Any, Metadata]:
        call = method(req, metadata=self._metadata(request), timeout=deadline_s)
        try:
            resp = await call
            md = await call.initial_metadata()
        except grpc.aio.AioRpcError as err:
            raise rpc_error(err) from None
        return resp, md

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models"""
        resp, md = await self._unary(
            self.stub.ListModels, pb.ListModelsRequest(), request, self.settings.read_timeout_s
        )
        return _json(responses.model_list(resp), self._headers(md))

    async def retrieve_model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}"""
        name = request.match_info["model"]
        resp, md = await self._unary(
            self.stub.ListModels, pb.ListModelsRequest(), request, self.settings.read_timeout_s
        )
        for m in resp.models:
            if name == m.id or name in m.aliases:
                return _json(responses.model(m), self._headers(md))
        raise ApiError(
            404, f"The model '{name}' does not exist", "invalid_request_error", "model_not_found", "model"
        )

    async def usage(self, request: web.Request) -> web.Response:
        """GET /v1/usage?window=day|month"""
        window = protocol.usage_window(request.query.get("window"))
        resp, md = await self._unary(
            self.stub.GetUsage, pb.GetUsageRequest(window=window), request, self.settings.read_timeout_s
        )
        return _json(responses.usage_report(resp), self._headers(md))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions (stream or not)."""
        started = time.perf_counter()
        call_ = protocol.parse_chat(await self._body(request))
        if not call_.stream:
            resp, md = await self._unary(
                self.stub.CreateChatCompletion, call_.request, request, self.settings.generate_timeout_s
            )
            return _json(responses.chat_completion(resp), self._headers(md, resp.route.cache))
        call = self.stub.StreamChatCompletion(
            call_.stream_request(), metadata=self._metadata(request), timeout=self.settings.stream_timeout_s
        )
        return await self._relay(request, call, call_.include_usage, started, responses.chat_chunks)

    async def _relay(
        self,
        request: web.Request,
        call: Any,
        include_usage: bool,
        started: float,
        events: Callable[[Any, bool], list[dict[str, Any]]],
    ) -> web.StreamResponse:
        try:
            first = await call.read()
            md = await call.initial_metadata()
        except grpc.aio.AioRpcError as err:
            raise rpc_error(err) from None
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **self._headers(md),
            }
        )
        await resp.prepare(request)
        STREAM_FIRST_CHUNK.labels(request.path).observe(time.perf_counter() - started)
        try:
            msg = first
            while msg is not grpc.aio.EOF:
                for event in events(msg, include_usage):
                    await resp.write(responses.sse(event))
                msg = await call.read()
            await resp.write(responses.DONE)
        except grpc.aio.AioRpcError as err:
            api = rpc_error(err)
            log.warning("stream failed after it started", extra={"fields": {"code": err.code().name}})
            await resp.write(responses.sse(api.body()))
        except ConnectionResetError:
            log.info("client went away during a stream; cancelling the router call")
            request["client_gone"] = True
        finally:
            if not call.done():
                call.cancel()
        if not request.get("client_gone"):
            await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions (stream=true relays the router's StreamCompletion as SSE)."""
        started = time.perf_counter()
        call_ = protocol.parse_completion(await self._body(request))
        if not call_.stream:
            resp, md = await self._unary(
                self.stub.CreateCompletion, call_.request, request, self.settings.generate_timeout_s
            )
            return _json(responses.text_completion(resp), self._headers(md, resp.route.cache))
        call = self.stub.StreamCompletion(
            call_.stream_request(), metadata=self._metadata(request), timeout=self.settings.stream_timeout_s
        )
        return await self._relay(request, call, call_.include_usage, started, responses.text_chunks)
