"""`llmesh trace <trace-id>`: one request's spans as an indented waterfall.

Reads the JSON-lines file the OTLP receiver writes (`python -m libs.testing.otlp_receiver --out
build/run/traces.jsonl`). Each line shows the start offset and duration in milliseconds, a bar
scaled to the root span, the service and span name indented by depth, and the attributes that
matter when reading a request: model, tokens, cache hit and kind, safety findings types, batch
size, status. Events (queue wait, prefill, decode steps, ...) follow their span, repeated events
folded into one line. `--list` shows the most recent traces.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.testing.otlp_receiver import SpanEvent, SpanRecord, read_jsonl

DEFAULT_FILE = Path("build/run/traces.jsonl")
BAR_WIDTH = 32
# Attributes worth a column, in display order, with a short label; other `llmesh.*` and
# `gen_ai.*` attributes follow under their own names without the prefix.
KEY_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("gen_ai.request.model", "model"),
    ("llmesh.model", "model"),
    ("llmesh.tenant", "tenant"),
    ("gen_ai.usage.input_tokens", "prompt_tokens"),
    ("llmesh.prompt_tokens", "prompt_tokens"),
    ("gen_ai.usage.output_tokens", "completion_tokens"),
    ("llmesh.completion_tokens", "completion_tokens"),
    ("llmesh.cache.hit", "cache_hit"),
    ("llmesh.cache.kind", "cache"),
    ("llmesh.cache.similarity", "similarity"),
    ("llmesh.safety.findings", "findings"),
    ("llmesh.safety.action", "action"),
    ("llmesh.batch_size", "batch"),
    ("http.status_code", "http"),
    ("rpc.grpc.status_code", "grpc"),
    ("llmesh.error.reason", "error"),
)
_SKIP = {"rpc.system", "rpc.service", "rpc.method"}


@dataclass(frozen=True)
class TraceSummary:
    """One line of `--list`."""

    trace_id: str
    start_ns: int
    duration_ms: float
    spans: int
    services: tuple[str, ...]
    root: str


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(_fmt(v) for v in value) or "-"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def key_attributes(attributes: dict[str, Any]) -> list[str]:
    """`label=value` strings for the attributes worth showing, known ones first."""
    shown: dict[str, str] = {}
    used = {k for k, v in attributes.items() if v in ("", None) or v == []}  # nothing to show
    for key, label in KEY_ATTRIBUTES:
        if key in attributes and key not in used and label not in shown:
            shown[label] = _fmt(attributes[key])
            used.add(key)
    for key in sorted(attributes):
        if key in used or key in _SKIP:
            continue
        for prefix in ("llmesh.", "gen_ai."):
            if key.startswith(prefix):
                label = key.removeprefix(prefix)
                if label not in shown:
                    shown[label] = _fmt(attributes[key])
                    used.add(key)
    return [f"{k}={v}" for k, v in shown.items()]


def summarize_events(events: Sequence[SpanEvent], origin_ns: int) -> list[str]:
    """One line per event name: single events with their attributes, repeats folded with ranges."""
    by_name: dict[str, list[SpanEvent]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.time_ns):
        by_name[e.name].append(e)
    lines = []
    for name, group in by_name.items():
        first_ms = (group[0].time_ns - origin_ns) / 1e6
        if len(group) == 1:
            attrs = " ".join(key_attributes(group[0].attributes) or ())
            lines.append(f"{name} @{first_ms:.1f}ms {attrs}".rstrip())
            continue
        last_ms = (group[-1].time_ns - origin_ns) / 1e6
        ranges = []
        for key in sorted({k for e in group for k in e.attributes}):
            nums = [e.attributes[key] for e in group if isinstance(e.attributes.get(key), int | float)]
            if nums:
                label = key.removeprefix("llmesh.").removeprefix("gen_ai.")
                lo, hi = min(nums), max(nums)
                ranges.append(f"{label}={_fmt(lo)}" if lo == hi else f"{label}={_fmt(lo)}..{_fmt(hi)}")
        lines.append(f"{name} x{len(group)} @{first_ms:.1f}..{last_ms:.1f}ms {' '.join(ranges)}".rstrip())
    return lines


def _children(spans: Sequence[SpanRecord]) -> tuple[list[SpanRecord], dict[str, list[SpanRecord]]]:
    ids = {s.span_id for s in spans}
    kids: dict[str, list[SpanRecord]] = defaultdict(list)
    roots = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids:
            kids[s.parent_span_id].append(s)
        else:
            roots.append(s)
    for group in kids.values():
        group.sort(key=lambda s: (s.start_ns, -s.end_ns))
    roots.sort(key=lambda s: (s.start_ns, -s.end_ns))
    return roots, kids


def _bar(start_ns: int, end_ns: int, origin_ns: int, total_ns: int, width: int) -> str:
    if total_ns <= 0:
        return " " * width
    a = max(0, min(width - 1, int((start_ns - origin_ns) / total_ns * width)))
    b = max(a + 1, min(width, round((end_ns - origin_ns) / total_ns * width)))
    return " " * a + "#" * (b - a) + " " * (width - b)


def root_span(spans: Sequence[SpanRecord]) -> SpanRecord:
    """The span without a parent in the trace (the earliest, longest one when several)."""
    roots, _ = _children(spans)
    if not roots:
        raise LookupError("trace has no root span")
    return roots[0]


def coverage(spans: Sequence[SpanRecord], parent: SpanRecord | None = None) -> float:
    """Share of `parent`'s wall time (default: the root) covered by the union of its descendants."""
    top = parent or root_span(spans)
    _, kids = _children(spans)
    intervals: list[tuple[int, int]] = []
    stack = list(kids.get(top.span_id, ()))
    while stack:
        s = stack.pop()
        stack.extend(kids.get(s.span_id, ()))
        a, b = max(s.start_ns, top.start_ns), min(s.end_ns, top.end_ns)
        if b > a:
            intervals.append((a, b))
    total = top.end_ns - top.start_ns
    if total <= 0:
        return 1.0
    covered, cur_a, cur_b = 0, -1, -1
    for a, b in sorted(intervals):
        if a > cur_b:
            covered += cur_b - cur_a if cur_b > cur_a else 0
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    covered += cur_b - cur_a if cur_b > cur_a else 0
    return covered / total


def render_waterfall(spans: Sequence[SpanRecord], width: int = BAR_WIDTH, events: bool = True) -> str:
    """The trace as text: a header, then one line per span in tree order (children by start)."""
    if not spans:
        return "(no spans)"
    roots, kids = _children(spans)
    origin = min(s.start_ns for s in spans)
    # Bars scale to the root span (the first root when several spans lost their parent).
    scale_end = max(roots[0].end_ns, origin + 1) if roots else max(s.end_ns for s in spans)
    total = scale_end - origin
    services = sorted({s.service for s in spans})
    header = (
        f"trace {spans[0].trace_id}  {len(spans)} spans  {len(services)} services "
        f"({', '.join(services)})  {(max(s.end_ns for s in spans) - origin) / 1e6:.1f} ms"
    )
    if roots:
        header += f"  coverage {coverage(spans, roots[0]):.0%}"
    lines = [header, f"{'offset':>9} {'ms':>9} {'':{width + 2}} span"]

    def visit(span: SpanRecord, depth: int) -> None:
        offset = (span.start_ns - origin) / 1e6
        bar = _bar(span.start_ns, span.end_ns, origin, total, width)
        error = "  !" + (span.status_message or "ERROR") if span.status == "ERROR" else ""
        attrs = "  " + " ".join(key_attributes(span.attributes)) if key_attributes(span.attributes) else ""
        lines.append(
            f"{offset:9.1f} {span.duration_ms:9.1f} |{bar}| {'  ' * depth}{span.service}: {span.name}"
            f"{attrs}{error}"
        )
        if events:
            pad = " " * (9 + 1 + 9 + 1 + width + 3)
            lines.extend(f"{pad}{'  ' * (depth + 1)}. {e}" for e in summarize_events(span.events, origin))
        for child in kids.get(span.span_id, ()):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    return "\n".join(lines)


def summarize_traces(spans: Sequence[SpanRecord]) -> list[TraceSummary]:
    """One summary per trace id, most recent first."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    out = []
    for trace_id, group in by_trace.items():
        roots, _ = _children(group)
        start = min(s.start_ns for s in group)
        out.append(
            TraceSummary(
                trace_id=trace_id,
                start_ns=start,
                duration_ms=(max(s.end_ns for s in group) - start) / 1e6,
                spans=len(group),
                services=tuple(sorted({s.service for s in group})),
                root=f"{roots[0].service}: {roots[0].name}" if roots else "?",
            )
        )
    out.sort(key=lambda t: t.start_ns, reverse=True)
    return out


def render_list(summaries: Sequence[TraceSummary], limit: int) -> str:
    """The `--list` table."""
    lines = [f"{'started (UTC)':<23} {'trace id':<32} {'ms':>9} {'spans':>5}  root"]
    for t in summaries[:limit]:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.start_ns / 1e9))
        started += f".{t.start_ns // 1_000_000 % 1000:03d}"
        lines.append(f"{started:<23} {t.trace_id:<32} {t.duration_ms:9.1f} {t.spans:>5}  {t.root}")
    return "\n".join(lines)


def find_trace(spans: Sequence[SpanRecord], wanted: str) -> list[SpanRecord]:
    """The spans of the trace whose id is `wanted` or starts with it (must be unique)."""
    wanted = wanted.strip().lower()
    ids = sorted({s.trace_id for s in spans if s.trace_id.startswith(wanted)})
    if len(ids) > 1:
        raise LookupError(f"trace id prefix {wanted!r} matches {len(ids)} traces: {', '.join(ids[:5])}")
    if not ids:
        raise LookupError(f"no trace {wanted!r}")
    return [s for s in spans if s.trace_id == ids[0]]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llmesh trace`."""
    parser = argparse.ArgumentParser(prog="llmesh trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("trace_id", nargs="?", help="trace id (x-llmesh-trace-id) or a unique prefix")
    parser.add_argument(
        "--file", type=Path, default=DEFAULT_FILE, help=f"spans file (default {DEFAULT_FILE})"
    )
    parser.add_argument("--list", action="store_true", help="show the most recent traces")
    parser.add_argument("--limit", type=int, default=20, help="traces shown by --list (default 20)")
    parser.add_argument("--width", type=int, default=BAR_WIDTH, help="bar width in characters")
    parser.add_argument("--no-events", action="store_true", help="hide span events")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.list and not args.trace_id:
        parser.error("give a trace id or --list")
    if not args.file.exists():
        print(
            f"llmesh trace: {args.file} does not exist; run the receiver "
            "(python -m libs.testing.otlp_receiver --out FILE) and point OTEL_EXPORTER_OTLP_ENDPOINT at it",
            file=sys.stderr,
        )
        return 1
    spans = read_jsonl(args.file)
    if args.list:
        print(render_list(summarize_traces(spans), args.limit))
        return 0
    try:
        found = find_trace(spans, args.trace_id)
    except LookupError as exc:
        print(f"llmesh trace: {exc} in {args.file}", file=sys.stderr)
        return 1
    print(render_waterfall(found, width=max(8, args.width), events=not args.no_events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
