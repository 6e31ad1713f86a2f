"""Wires the gateway: the aiohttp app, the router channel, metrics, health and lifecycle.

`GatewayService(settings)` has no side effects; `start()` opens the router channel (lazily
connecting), binds the HTTP port and the metrics port. `/healthz` answers 200 only while the
router channel is READY and the gateway is not draining. On SIGTERM the gateway reports not
ready, keeps accepting for `drain_delay_s` so probes and balancers notice, closes its listening
socket, gives in-flight requests (streams included) `grace_period_s` to finish, then closes the
channel. With `LLMESH_GATEWAY_TLS_{CERT,KEY,CA}_FILE` the router channel is mutual TLS; the
HTTP side stays plain behind Envoy on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.runtime import telemetry
from libs.runtime.channels import make_channel
from libs.runtime.interceptors import TRACE_ID_KEY
from libs.runtime.metrics import SERVING, start_metrics_server
from libs.runtime.server import serve_until_stopped
from libs.runtime.tls import channel_credentials
from services.gateway.metrics import HTTP_IN_FLIGHT, HTTP_LATENCY, HTTP_REQUESTS
from services.gateway.openai_errors import ApiError
from services.gateway.servicer import OpenAIServicer
from services.gateway.settings import GatewaySettings

NAME = "gateway"
ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
log = logging.getLogger("llmesh.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http_error(exc: web.HTTPException, request: web.Request, max_body: int) -> ApiError:
    if exc.status == 404:
        return ApiError(404, f"Unknown request URL: {request.method} {request.path}", code="unknown_url")
    if exc.status == 405:
        return ApiError(
            405, f"Method {request.method} is not allowed on {request.path}", code="method_not_allowed"
        )
    if exc.status == 413:
        return ApiError(
            413, f"request body too large: the limit is {max_body} bytes", code="request_too_large"
        )
    return ApiError(exc.status, exc.reason or "request failed", code=f"http_{exc.status}")


class GatewayService:
    """The OpenAI-compatible HTTP front of the mesh."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.port = 0
        self.metrics_port = 0
        self.tracer = telemetry.tracer("llmesh.gateway")
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None
        self._draining = False
        self._stopping = asyncio.Event()

    def build_app(self, channel: grpc.aio.Channel) -> web.Application:
        """The aiohttp application serving /v1/* and /healthz over `channel`."""
        servicer = OpenAIServicer(pb_grpc.RouterServiceStub(channel), self.settings)
        app = web.Application(middlewares=[self._middleware], client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/v1/models", servicer.list_models)
        app.router.add_get("/v1/models/{model}", servicer.retrieve_model)
        app.router.add_post("/v1/chat/completions", servicer.chat_completions)
        app.router.add_post("/v1/completions", servicer.completions)
        app.router.add_get("/v1/usage", servicer.usage)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the router channel is READY and the gateway is not draining."""
        if self._draining or self._channel is None:
            return web.json_response({"status": "draining"}, status=503)
        channel = self._channel
        state = channel.get_state(try_to_connect=True)
        if state != grpc.ChannelConnectivity.READY:
            try:
                await asyncio.wait_for(channel.channel_ready(), self.settings.health_timeout_s)
            except TimeoutError:
                state = channel.get_state()
                return web.json_response({"status": "router not ready", "router": state.name}, status=503)
        return web.json_response({"status": "ready", "router": "READY"})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route == "/healthz":
            return await handler(request)
        parent = propagate.extract({k.lower(): v for k, v in request.headers.items()})
        start = time.perf_counter()
        HTTP_IN_FLIGHT.labels(route).inc()
        with self.tracer.start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        ) as span:
            try:
                response = await self._respond(request, handler)
            finally:
                HTTP_IN_FLIGHT.labels(route).dec()
            status = 499 if request.get("client_gone") else response.status
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if not response.prepared and TRACE_ID_KEY not in response.headers:
                trace_id = telemetry.current_trace_id()
                if trace_id:
                    response.headers[TRACE_ID_KEY] = trace_id
            elapsed = time.perf_counter() - start
            HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
            HTTP_LATENCY.labels(route).observe(elapsed)
            log.info(
                "%s %s %d",
                request.method,
                request.path,
                status,
                extra={"fields": {"route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)}},
            )
            return response

    async def _respond(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            err = exc
        except web.HTTPException as exc:
            err = _http_error(exc, request, self.settings.max_body_bytes)
        except Exception:  # answered as a 500 with the trace id, logged with the stack
            log.exception("unhandled error on %s %s", request.method, request.path)
            trace_id = telemetry.current_trace_id()
            err = ApiError(
                500, f"internal error in the gateway; trace id {trace_id}", "api_error", "internal_error"
            )
        return web.Response(
            text=err.json(), status=err.status, content_type="application/json", headers=err.headers
        )

    async def start(self) -> None:
        """Open the router channel, bind HTTP and metrics ports."""
        s = self.settings
        self._channel = make_channel(
            s.router_target,
            ROUTER_SERVICE,
            idempotent_methods=("ListModels", "GetUsage"),
            credentials=channel_credentials(s),
        )
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # cancels the router call (and so frees the inference slot) instead of waiting for the
        # next write to notice.
        self._runner = web.AppRunner(
            self.build_app(self._channel),
            access_log=None,
            shutdown_timeout=s.grace_period_s,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if s.metrics_port >= 0:
            self.metrics_port = start_metrics_server(s.metrics_host, s.metrics_port)
        SERVING.labels(NAME).set(1)
        log.info(
            "ready",
            extra={"fields": {"port": self.port, "metrics_port": self.metrics_port, "router": s.router_addr}},
        )

    async def stop(self) -> None:
        """Report not ready, stop accepting, drain in-flight requests, close the channel."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._draining = True
        SERVING.labels(NAME).set(0)
        delay = self.settings.drain_delay_s
        log.info(
            "draining", extra={"fields": {"grace_s": self.settings.grace_period_s, "drain_delay_s": delay}}
        )
        await asyncio.sleep(delay)  # /healthz already says 503; probes and balancers notice first
        await runner.cleanup()
        if self._channel is not None:
            await self._channel.close()
        log.info("stopped")

    def request_stop(self) -> None:
        """Ask `run()` to stop (signal handlers call this)."""
        self._stopping.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then drain and stop."""
        await serve_until_stopped(self.start, self.stop, self._stopping)
