"""`llmesh trace`: waterfall order and bars, key attributes, event folding, coverage, --list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.cli import trace as cli
from libs.testing.otlp_receiver import SpanEvent, SpanRecord

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
TRACE = "ab" * 16


def _span(span_id: str, parent: str, service: str, name: str, start_ms: float, end_ms: float, **attrs):
    events = attrs.pop("events", ())
    return SpanRecord(
        trace_id=attrs.pop("trace_id", TRACE),
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind="SERVER",
        service=service,
        start_ns=T0 + int(start_ms * MS),
        end_ns=T0 + int(end_ms * MS),
        attributes=attrs.pop("attributes", {}),
        events=tuple(events),
    )


def _request() -> list[SpanRecord]:
    decode = [
        SpanEvent("decode_step", T0 + (40 + i) * MS, {"llmesh.batch_size": b})
        for i, b in enumerate([1, 3, 2])
    ]
    return [
        _span("05", "04", "inference", "GenerateStream", 30, 90, events=decode,
              attributes={"llmesh.model": "smollm2-135m", "llmesh.completion_tokens": 12}),
        _span("01", "", "envoy", "ingress", 0, 100, attributes={"http.status_code": "200"}),
        _span("02", "01", "router", "StreamChatCompletion", 2, 98),
        _span("03", "02", "safety", "ScreenInput", 5, 20,
              attributes={"llmesh.safety.findings": ["EMAIL"], "llmesh.safety.action": "redact"}),
        _span("04", "02", "router", "generate", 25, 95),
    ]  # fmt: skip


def test_waterfall_is_in_tree_order_with_bars_scaled_to_root() -> None:
    out = cli.render_waterfall(_request(), width=20).splitlines()
    rows = [
        m.groups()
        for line in out[2:]
        if (m := re.match(r"^ *([\d.]+) +([\d.]+) \|(.{20})\| ( *)(\S+) (\S+)", line))
    ]
    assert [r[5] for r in rows] == [
        "ingress",
        "StreamChatCompletion",
        "ScreenInput",
        "generate",
        "GenerateStream",
    ]
    assert [float(r[0]) for r in rows] == [0, 2, 5, 25, 30]
    assert [float(r[1]) for r in rows] == [100, 96, 15, 70, 60]
    bars = [r[2] for r in rows]
    assert bars[0] == "#" * 20
    assert bars[2].index("#") == 1 and bars[4].index("#") == 6  # 5 ms and 30 ms of 100
    assert [len(r[3]) for r in rows] == [0, 2, 4, 4, 6]
    assert "5 spans" in out[0] and "4 services" in out[0]


def test_key_attributes_and_events_are_shown() -> None:
    text = cli.render_waterfall(_request())
    assert "findings=EMAIL" in text and "action=redact" in text
    assert "model=smollm2-135m" in text and "completion_tokens=12" in text
    assert "decode_step x3" in text and "batch_size=1..3" in text
    assert "rpc.system" not in text
    assert cli.key_attributes({"llmesh.model": "", "llmesh.safety.findings": [], "llmesh.tokens": 0}) == [
        "tokens=0"
    ]
    assert "decode_step" not in cli.render_waterfall(_request(), events=False)


def test_coverage_is_the_union_of_descendants_within_the_parent() -> None:
    spans = _request()
    assert cli.coverage(spans) == pytest.approx(0.96)  # router 2..98 inside envoy 0..100
    router = next(s for s in spans if s.span_id == "02")
    # children of the router: 5..20 and 25..95 of 96 ms
    assert cli.coverage(spans, router) == pytest.approx((15 + 70) / 96)
    gappy = [
        _span("a", "", "x", "root", 0, 10),
        _span("b", "a", "x", "c1", 0, 2),
        _span("c", "a", "x", "c2", 1, 3),
        _span("d", "a", "x", "c3", 8, 20),
    ]
    assert cli.coverage(gappy) == pytest.approx(0.5)  # 0..3 and 8..10 (clipped)


def test_find_trace_by_unique_prefix() -> None:
    other = _span("09", "", "envoy", "ingress", 0, 1, trace_id="ac" * 16)
    spans = [*_request(), other]
    assert {s.span_id for s in cli.find_trace(spans, "abab")} == {"01", "02", "03", "04", "05"}
    with pytest.raises(LookupError, match="matches 2 traces"):
        cli.find_trace(spans, "a")
    with pytest.raises(LookupError, match="no trace"):
        cli.find_trace(spans, "ff")


def test_main_lists_and_prints_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _span("09", "", "envoy", "ingress", -5000, -4000, trace_id="cd" * 16)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(s.to_json() + "\n" for s in [*_request(), old]))
    assert cli.main(["--list", "--file", str(path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in listed[1:]] == [TRACE, "cd" * 16]  # newest first
    assert "envoy: ingress" in listed[1]
    assert cli.main([TRACE[:8], "--file", str(path)]) == 0
    assert "router: StreamChatCompletion" in capsys.readouterr().out
    assert cli.main(["ffff", "--file", str(path)]) == 1
    assert cli.main(["--list", "--file", str(tmp_path / "missing.jsonl")]) == 1


def test_llmesh_entry_dispatches_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from libs.cli.main import main

    path = tmp_path / "traces.jsonl"
    path.write_text("".join(s.to_json() + "\n" for s in _request()))
    assert main(["trace", TRACE, "--file", str(path)]) == 0
    assert "coverage 96%" in capsys.readouterr().out
