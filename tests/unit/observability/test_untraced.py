"""Background polls run untraced: no span here, and callees are told not to sample either."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.runtime import telemetry


def sampled(traceparent: str | bytes) -> bool:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return bool(int(text.rsplit("-", 1)[1], 16) & 1)


def test_spans_inside_untraced_are_not_recorded_and_traceparent_says_unsampled() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("request"):
        carried = dict(telemetry.inject())
    assert sampled(carried["traceparent"])

    with telemetry.untraced():
        span = tracer.start_span("poll")
        assert not span.is_recording()
        span.end()
        carried = dict(telemetry.inject())
        assert telemetry.current_trace_id(), "logs still get a trace id"
    assert not sampled(carried["traceparent"]), carried
    # A callee extracting that context does not sample its server span either.
    callee = tracer.start_span("server", context=telemetry.extract(carried.items()))
    assert not callee.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]
    assert trace.get_current_span() is trace.INVALID_SPAN
