"""OpenTelemetry set-up and W3C trace-context propagation over gRPC metadata.

Honours the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) turns on
OTLP/gRPC export, OTEL_TRACES_EXPORTER=none turns it off, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES name the resource, OTEL_BSP_* tune batching. When an exporter is
configured and cannot be built, start-up fails instead of running without traces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

log = logging.getLogger(__name__)
_provider: TracerProvider | None = None


def otlp_endpoint() -> str | None:
    """The configured OTLP traces endpoint, or None when export is off."""
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def setup_tracing(service: str) -> TracerProvider:
    """Install a tracer provider for `service`, exporting over OTLP/gRPC when configured."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    endpoint = otlp_endpoint()
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = endpoint.startswith("http://") or os.environ.get(
            "OTEL_EXPORTER_OTLP_INSECURE", ""
        ).lower() in ("1", "true")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        )
        log.info("exporting traces over OTLP", extra={"fields": {"otlp_endpoint": endpoint}})
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flush and stop the exporter (called on graceful shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=3000)
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    """A tracer for an instrumentation scope."""
    return trace.get_tracer(name)


def extract(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context carried in gRPC invocation metadata."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    return propagate.extract(carrier)


def inject(metadata: Sequence[tuple[str, str | bytes]] | None = None) -> list[tuple[str, str | bytes]]:
    """Metadata with the current trace context added (traceparent, tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = [(k, v) for k, v in metadata or () if k not in carrier]
    out.extend(carrier.items())
    return out


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or '' outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Calls made inside record no spans here or downstream: background polls (load reports,
    model lists) would otherwise add a root trace every half second and bury the requests.

    The calls run under a valid but unsampled parent, so the client span is dropped and the
    `traceparent` they carry tells every callee not to sample either (parent-based sampling).
    """
    parent = SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.DEFAULT),
    )
    with trace.use_span(NonRecordingSpan(parent), end_on_exit=False):
        yield
