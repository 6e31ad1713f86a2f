"""The OTLP receiver as its own process: the SDK's real OTLP/gRPC exporter sends to it, the spans
land in its JSON-lines file, and `llmesh trace` reads them back."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from libs.cli import trace as trace_cli
from libs.testing.otlp_receiver import read_jsonl
from libs.testing.process import ManagedProcess, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    workdir = tmp_path_factory.mktemp("otlp")
    port, out = free_port(), workdir / "traces.jsonl"
    proc = ManagedProcess(
        name="otlp-receiver",
        argv=[sys.executable, "-m", "libs.testing.otlp_receiver", "--port", str(port), "--out", str(out)],
        log_path=workdir / "receiver.log",
        cwd=ROOT,
    ).start()
    try:
        proc.wait_until(lambda: port_open(port), 30, "listening")
        yield port, out
    finally:
        assert proc.stop(grace_s=5) == 0, proc.log_tail()


def test_exported_spans_reach_the_file_and_the_cli(receiver, capsys: pytest.CaptureFixture[str]) -> None:
    port, out = receiver
    provider = TracerProvider(resource=Resource.create({"service.name": "cache"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True))
    )
    tracer = provider.get_tracer("llmesh.cache")
    with tracer.start_as_current_span("llmesh.cache.v1.CacheService/Lookup", kind=SpanKind.SERVER) as span:
        span.set_attribute("llmesh.cache.kind", "semantic")
        with tracer.start_as_current_span("redis.get"):
            pass
    trace_id = format(span.get_span_context().trace_id, "032x")
    provider.force_flush()
    provider.shutdown()
    deadline = time.monotonic() + 10
    spans = []
    while time.monotonic() < deadline:
        spans = [s for s in read_jsonl(out) if s.trace_id == trace_id] if out.exists() else []
        if len(spans) == 2:
            break
        time.sleep(0.05)
    assert {s.name for s in spans} == {"llmesh.cache.v1.CacheService/Lookup", "redis.get"}
    assert all(s.service == "cache" for s in spans)
    assert trace_cli.main([trace_id, "--file", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cache: llmesh.cache.v1.CacheService/Lookup  cache=semantic" in text
    assert "cache: redis.get" in text
