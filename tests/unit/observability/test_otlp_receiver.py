"""The OTLP receiver's flattening of export requests, its store and its JSON-lines file."""

from __future__ import annotations

import threading
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.testing.otlp_receiver import OtlpReceiver, _TraceService, read_jsonl, records_from_request


def _make_spans(service: str = "router") -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("llmesh.test")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        root.set_attribute("llmesh.model", "smollm2")
        root.set_attribute("llmesh.safety.findings", ["EMAIL", "API_KEY"])
        root.add_event("decode_step", {"llmesh.batch_size": 3, "llmesh.tokens": 1})
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_attribute("llmesh.cache.similarity", 0.93)
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return memory.get_finished_spans()


def test_flattens_ids_parents_resource_attributes_and_events() -> None:
    spans = _make_spans()
    records = records_from_request(encode_spans(spans))
    by_name = {r.name: r for r in records}
    root, child = by_name["root"], by_name["child"]
    assert root.trace_id == child.trace_id == format(spans[0].context.trace_id, "032x")
    assert child.parent_span_id == root.span_id and root.parent_span_id == ""
    assert (root.kind, child.kind) == ("SERVER", "CLIENT")
    assert root.service == child.service == "router" and root.scope == "llmesh.test"
    assert root.attributes["llmesh.safety.findings"] == ["EMAIL", "API_KEY"]
    assert child.attributes["llmesh.cache.similarity"] == 0.93
    assert root.events[0].name == "decode_step" and root.events[0].attributes["llmesh.batch_size"] == 3
    assert (child.status, child.status_message) == ("ERROR", "boom")
    assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns


class _Ctx:
    """Stands in for the servicer context (Export never touches it)."""


def test_store_filters_by_trace_and_appends_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    receiver = OtlpReceiver(out=out)
    receiver._file = out.open("a", encoding="utf-8")
    service = _TraceService(receiver._add)
    first, second = _make_spans("safety"), _make_spans("cache")
    service.Export(encode_spans(first), _Ctx())
    service.Export(encode_spans(second), _Ctx())
    receiver.stop()
    trace_a = format(first[0].context.trace_id, "032x")
    assert {s.service for s in receiver.spans(trace_a)} == {"safety"}
    assert len(receiver.spans()) == 4
    from_file = read_jsonl(out)
    assert from_file == receiver.spans()


def test_read_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    records = records_from_request(encode_spans(_make_spans()))
    out.write_text("".join(r.to_json() + "\n" for r in records) + '{"trace_id": "ab')
    assert read_jsonl(out) == records


def test_wait_for_wakes_on_export_and_times_out() -> None:
    receiver = OtlpReceiver()
    service = _TraceService(receiver._add)
    spans = _make_spans()
    timer = threading.Timer(0.05, lambda: service.Export(encode_spans(spans), _Ctx()))
    timer.start()
    got = receiver.wait_for(lambda s: any(x.name == "child" for x in s), timeout=10)
    timer.join()
    assert {s.name for s in got} == {"root", "child"}
    try:
        receiver.wait_for(lambda s: len(s) > 2, timeout=0.05)
    except TimeoutError as exc:
        assert "2 spans" in str(exc)
    else:
        raise AssertionError("wait_for did not time out")
    receiver.clear()
    assert receiver.spans() == []
