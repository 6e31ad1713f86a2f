"""An in-memory OTLP/gRPC trace receiver: what tests and `make up` users point exporters at.

Implements `opentelemetry.proto.collector.trace.v1.TraceService/Export` on a real gRPC port,
flattens every exported span into a `SpanRecord` (hex ids, service name from the resource,
attributes and events as plain values), keeps them in memory behind a lock and optionally
appends each as one JSON line to a file that `llmesh trace` reads.

    receiver = OtlpReceiver(port=0).start()
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    ...
    spans = receiver.wait_for(lambda s: any(x.name == "x" for x in s), timeout=10)
    receiver.stop()

Standalone: `python -m libs.testing.otlp_receiver --port 4317 --out build/run/traces.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass(frozen=True)
class SpanEvent:
    """A timestamped event inside a span."""

    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, flattened from OTLP into plain values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    status: str = "UNSET"
    status_message: str = ""
    scope: str = ""

    @property
    def duration_ms(self) -> float:
        """Wall time of the span in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6

    def to_json(self) -> str:
        """One JSON line (the format of the `--out` file)."""
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpanRecord:
        """The inverse of `to_json` after `json.loads`."""
        events = tuple(SpanEvent(**e) for e in raw.get("events", ()))
        return cls(**{**raw, "events": events})


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def _attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def records_from_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRecord]:
    """Flatten an OTLP export request into span records."""
    out: list[SpanRecord] = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        service = str(resource.get("service.name", "unknown"))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    SpanRecord(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=_KINDS.get(s.kind, "UNSPECIFIED"),
                        service=service,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=_attributes(s.attributes),
                        events=tuple(
                            SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in s.events
                        ),
                        status=_STATUS.get(s.status.code, "UNSET"),
                        status_message=s.status.message,
                        scope=ss.scope.name,
                    )
                )
    return out


def read_jsonl(path: Path) -> list[SpanRecord]:
    """Span records from a file written with `--out` (a torn last line is ignored)."""
    spans: list[SpanRecord] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                spans.append(SpanRecord.from_dict(json.loads(line)))
            except json.JSONDecodeError:
                continue  # a line still being written by a live receiver
    return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Callable[[list[SpanRecord]], None]):
        self._sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._sink(records_from_request(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC trace collector on 127.0.0.1 that keeps spans in memory (thread-safe)."""

    def __init__(self, port: int = 0, out: Path | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port
        self.out = out
        self._spans: list[SpanRecord] = []
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._file: Any = None

    @property
    def endpoint(self) -> str:
        """The URL exporters take as OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> OtlpReceiver:
        """Bind and serve; returns self."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", 32 * 1024 * 1024), ("grpc.so_reuseport", 0)],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self._add), server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise RuntimeError(f"otlp receiver: cannot bind {self.host}:{self.port}")
        self.port = bound
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.out.open("a", encoding="utf-8")
        server.start()
        self._server = server
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (in-flight exports get `grace_s`) and close the output file."""
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _add(self, records: list[SpanRecord]) -> None:
        with self._cond:
            self._spans.extend(records)
            if self._file is not None:
                self._file.write("".join(r.to_json() + "\n" for r in records))
                self._file.flush()
            self._cond.notify_all()

    def spans(self, trace_id: str | None = None) -> list[SpanRecord]:
        """Every span received so far, or those of one trace, in arrival order."""
        with self._cond:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def clear(self) -> None:
        """Forget the spans received so far (the output file keeps them)."""
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[SpanRecord]], bool], timeout: float = 10.0
    ) -> list[SpanRecord]:
        """Block until `predicate(spans)` holds; returns the spans then. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"otlp receiver: condition not met after {timeout:.1f}s ({len(self._spans)} spans)"
                    )
                self._cond.wait(left)
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, appending spans to --out."""
    parser = argparse.ArgumentParser(
        prog="python -m libs.testing.otlp_receiver", description="Collect OTLP/gRPC traces into a file."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4317, help="OTLP/gRPC port (default 4317; 0 = free)")
    parser.add_argument(
        "--out", type=Path, default=Path("build/run/traces.jsonl"), help="JSON-lines file to append to"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = OtlpReceiver(port=args.port, out=args.out, host=args.host).start()
    print(
        json.dumps({"msg": "otlp receiver listening", "endpoint": receiver.endpoint, "out": str(args.out)}),
        flush=True,
    )
    stop.wait()
    receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
