"""The server interceptor every service installs, and client interceptors for channels.

Server side, per call: continue the caller's trace (W3C traceparent in metadata) with a SERVER
span, count and time the call, map typed `LlmeshError`s to their gRPC status with rich details,
turn unexpected exceptions into INTERNAL with the trace id (logged with the stack), and send the
trace id back as `x-llmesh-trace-id` response metadata (initial metadata, together with whatever
the handler added through `add_response_metadata`, and trailing metadata, success or error).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.runtime import telemetry
from libs.runtime.errors import LlmeshError, trailing_metadata_for
from libs.runtime.metrics import RPC_HANDLED, RPC_IN_FLIGHT, RPC_LATENCY

log = logging.getLogger("llmesh.rpc")
TRACE_ID_KEY = "x-llmesh-trace-id"
_UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_response_md: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "llmesh_response_md", default=None
)


def add_response_metadata(key: str, value: str) -> None:
    """Attach a response header (initial metadata) to the current call, e.g. x-llmesh-cache."""
    md = _response_md.get()
    if md is not None:
        md.append((key, value))


class _Call:
    """Book-keeping for one server call."""

    def __init__(self, service: str, method: str, context: grpc.aio.ServicerContext):
        self.service, self.method, self.context = service, method, context
        self.short = method.rsplit("/", 1)[-1]
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        self.headers_sent = False
        self.md: list[tuple[str, str]] = []

    async def send_headers(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            await self.context.send_initial_metadata(tuple(self.md))

    def send_trailers(self) -> None:
        """The trace id in trailing metadata too, for gRPC callers that read only trailers."""
        self.context.set_trailing_metadata(((TRACE_ID_KEY, telemetry.current_trace_id()),))

    async def fail(self, exc: BaseException, span: trace.Span) -> NoReturn:
        """Map an exception to a status and abort the call with it."""
        trace_id = telemetry.current_trace_id()
        if isinstance(exc, LlmeshError):
            self.code = exc.code
            span.set_status(Status(StatusCode.ERROR, exc.message))
            span.set_attribute("llmesh.error.reason", exc.reason)
            md = (*trailing_metadata_for(exc), (TRACE_ID_KEY, trace_id))
            await self.context.abort(exc.code, exc.message, trailing_metadata=md)
            raise AssertionError("context.abort returned")  # abort always raises
        self.code = grpc.StatusCode.INTERNAL
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        log.exception("unhandled error in %s", self.method)
        await self.context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in {self.service} ({type(exc).__name__}); trace id {trace_id}",
            trailing_metadata=((TRACE_ID_KEY, trace_id),),
        )
        raise AssertionError("context.abort returned")  # abort always raises

    def finish(self) -> None:
        code = self.code
        if self.context.cancelled() and code == grpc.StatusCode.OK:
            code = grpc.StatusCode.CANCELLED
        RPC_HANDLED.labels(self.service, self.short, code.name).inc()
        RPC_LATENCY.labels(self.service, self.short).observe(time.perf_counter() - self.start)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Tracing, metrics, error mapping and response metadata for every RPC of a service."""

    def __init__(self, service: str):
        self.service = service
        self.tracer = telemetry.tracer(f"llmesh.{service}")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED_PREFIXES):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream), **kwargs)
        return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream), **kwargs)

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> tuple[_Call, Any]:
        call = _Call(self.service, method, context)
        parent = telemetry.extract(context.invocation_metadata())
        span_cm = self.tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": method.split("/")[1], "rpc.method": call.short},
            record_exception=False,
            set_status_on_exception=False,
        )
        return call, span_cm

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call, span_cm = self._start(method, context)
            token = _response_md.set(call.md)
            RPC_IN_FLIGHT.labels(self.service, call.short).inc()
            try:
                with span_cm as span:
                    call.md.append((TRACE_ID_KEY, telemetry.current_trace_id()))
                    try:
                        response = await behavior(request, context)
                    except grpc.aio.AbortError:
                        call.code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    except Exception as exc:  # noqa: BLE001 - mapped to a status, logged with stack
                        await call.fail(exc, span)
                    await call.send_headers()
                    call.send_trailers()
                    return response
            finally:
                RPC_IN_FLIGHT.labels(self.service, call.short).dec()
                _response_md.reset(token)
                call.finish()

        return handle

    def _stream(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # A stream closed early (the caller cancelled) is finalised by aclose() in another
            # context, where context tokens cannot be reset: attach by hand and skip the detach
            # then; the task's context is discarded with it.
            call = _Call(self.service, method, context)
            parent = telemetry.extract(context.invocation_metadata())
            span = self.tracer.start_span(
                method.lstrip("/"),
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": method.split("/")[1],
                    "rpc.method": call.short,
                },
            )
            otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
            token = _response_md.set(call.md)
            RPC_IN_FLIGHT.labels(self.service, call.short).inc()
            messages = 0
            closed_early = False
            try:
                call.md.append((TRACE_ID_KEY, telemetry.current_trace_id()))
                try:
                    async for item in behavior(request, context):
                        if not call.headers_sent:
                            await call.send_headers()
                        messages += 1
                        yield item
                except GeneratorExit:
                    closed_early = True
                    raise
                except grpc.aio.AbortError:
                    call.code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, logged with stack
                    await call.fail(exc, span)
                await call.send_headers()
                call.send_trailers()
            finally:
                span.set_attribute("rpc.messages_sent", messages)
                span.end()
                RPC_IN_FLIGHT.labels(self.service, call.short).dec()
                if not closed_early:
                    _response_md.reset(token)
                    otel_context.detach(otel_token)
                call.finish()

        return handle


class _ClientSpans:
    """A CLIENT span per outgoing call, current while the call starts so `traceparent` names it.

    The span ends when the call is done (a stream: when its last message and status arrived or
    it was cancelled), with the gRPC status code as `rpc.grpc.status_code`.
    """

    def __init__(self) -> None:
        self.tracer = telemetry.tracer("llmesh.client")
        self._pending: set[asyncio.Task[None]] = set()

    async def call(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        parts = method.strip("/").split("/")
        span = self.tracer.start_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": parts[0], "rpc.method": parts[-1]},
        )
        with trace.use_span(span, end_on_exit=False):
            traced = _with_trace(details)
        try:
            call = await continuation(traced, request)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        call.add_done_callback(lambda done: self._on_done(span, done))
        return call

    def _on_done(self, span: trace.Span, call: grpc.aio.Call) -> None:
        end_ns = time.time_ns()
        task = asyncio.get_running_loop().create_task(self._finish(span, call, end_ns))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _finish(span: trace.Span, call: grpc.aio.Call, end_ns: int) -> None:
        try:
            code = await call.code()
            details = await call.details()
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "cancelled"
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code == grpc.StatusCode.CANCELLED and call.cancelled():
            # The caller stopped reading (e.g. closed a stream after its last message): not a
            # failure of the callee, so the span is not marked as an error.
            span.set_attribute("llmesh.cancelled_by_caller", True)
        elif code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or ''}".rstrip(": ")))
        span.end(end_time=end_ns)


class _TraceUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, spans: _ClientSpans):
        self.spans = spans

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await self.spans.call(continuation, client_call_details, request)


class _TraceUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, spans: _ClientSpans):
        self.spans = spans

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self.spans.call(continuation, client_call_details, request)


class _TraceStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, spans: _ClientSpans):
        self.spans = spans

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await self.spans.call(continuation, client_call_details, request_iterator)


class _TraceStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, spans: _ClientSpans):
        self.spans = spans

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await self.spans.call(continuation, client_call_details, request_iterator)


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*telemetry.inject(tuple(details.metadata or ()))),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that open a CLIENT span per outgoing call and carry its trace context."""
    spans = _ClientSpans()
    return [
        _TraceUnaryUnary(spans),
        _TraceUnaryStream(spans),
        _TraceStreamUnary(spans),
        _TraceStreamStream(spans),
    ]
