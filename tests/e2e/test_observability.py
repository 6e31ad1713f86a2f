"""Observability of the whole mesh: one trace per request across every hop, exported over real
OTLP/gRPC to an in-process receiver, with correct parent links, cache hits and blocked prompts
visible in the trace, ≥ 90% of the wall time covered by spans, trace ids in the logs, and the
counters a serving team watches moving as a scripted sequence of requests expects.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.cli.trace import coverage, render_waterfall, root_span
from libs.cli.trace import main as trace_main
from libs.launch.mesh import Mesh, MeshConfig
from libs.testing.otlp_receiver import OtlpReceiver, SpanRecord
from tests.conftest import create_key

pytestmark = pytest.mark.e2e
CORE = {"envoy", "router", "tokenizer", "safety", "cache", "inference"}
SECRET = "AKIAQ2LMZ4VXTR7NBHKW"  # shaped like an AWS access key id: the input policy blocks it
SAMPLING = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver(port=0).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def traced_mesh(receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cfg = MeshConfig(
        workdir=tmp_path_factory.mktemp("obs-mesh"),
        otlp_endpoint=receiver.endpoint,
    )
    m = Mesh(cfg).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def key(traced_mesh: Mesh) -> str:
    return create_key(traced_mesh.redis_url, "obs")


def _chat(mesh: Mesh, key: str, content: str, path: str = "/api/v1/chat/completions") -> httpx.Response:
    if path.startswith("/v1/"):
        body: dict[str, object] = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": content}],
            **SAMPLING,
        }
    else:
        body = {
            "messages": [{"role": "user", "content": content}],
            "options": {"model": "smollm2", "sampling": SAMPLING},
        }
    return httpx.post(f"{mesh.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=120)


def _question() -> str:
    """A prompt no earlier request used, so the cache misses."""
    return f"In one word, what colour is the sky? (ref {uuid.uuid4().hex[:8]})"


def _complete(required: set[str], extra: Callable[[list[SpanRecord]], bool] = lambda _: True):
    """A predicate: the trace holds a span of each required service and its root has arrived."""

    def ok(spans: list[SpanRecord]) -> bool:
        services = {s.service for s in spans}
        return required <= services and any(not s.parent_span_id for s in spans) and extra(spans)

    return ok


def _trace(
    receiver: OtlpReceiver, trace_id: str, required: set[str], settle_s: float = 1.0
) -> list[SpanRecord]:
    """The spans of one trace once every required service reported (then a short settle)."""
    receiver.wait_for(lambda _: _complete(required)(receiver.spans(trace_id)), timeout=30)
    time.sleep(settle_s)  # later batches of the same trace (exporters flush every 200 ms)
    return receiver.spans(trace_id)


def _by_id(spans: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {s.span_id: s for s in spans}


def _ancestors(span: SpanRecord, index: dict[str, SpanRecord]) -> list[SpanRecord]:
    out = []
    while span.parent_span_id in index:
        span = index[span.parent_span_id]
        out.append(span)
    return out


def _server_spans(spans: list[SpanRecord], service: str) -> list[SpanRecord]:
    return [s for s in spans if s.service == service and s.kind == "SERVER"]


def _explain(spans: list[SpanRecord]) -> str:
    return "\n" + render_waterfall(spans, events=False)


def test_one_request_is_one_trace_across_every_hop(
    traced_mesh: Mesh, key: str, receiver: OtlpReceiver
) -> None:
    t0 = time.time_ns()
    r = _chat(traced_mesh, key, _question())
    t1 = time.time_ns()
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-llmesh-trace-id"]
    spans = _trace(receiver, trace_id, CORE)
    index = _by_id(spans)
    assert {s.service for s in spans} >= CORE, _explain(spans)

    # One tree: a single root (Envoy's span), every other span's parent is in the trace.
    roots = [s for s in spans if s.parent_span_id not in index]
    assert len(roots) == 1 and roots[0].service == "envoy" and not roots[0].parent_span_id, _explain(spans)
    # The router continues Envoy's span; each backend's SERVER span hangs under a router CLIENT span.
    (router,) = _server_spans(spans, "router")
    assert index[router.parent_span_id].service == "envoy", _explain(spans)
    for service in ("tokenizer", "safety", "cache", "inference"):
        for server in _server_spans(spans, service):
            parent = index[server.parent_span_id]
            assert (parent.service, parent.kind) == ("router", "CLIENT"), _explain(spans)
            assert parent.name == server.name
            assert router in _ancestors(server, index)

    # No span of this request leaked into another trace: every SERVER span of the pipeline's
    # RPCs that started during the request belongs to this trace.
    pipeline_rpcs = {s.name for s in spans if s.kind == "SERVER" and s.service in CORE - {"envoy"}}
    during = [s for s in receiver.spans() if s.kind == "SERVER" and t0 <= s.start_ns <= t1]
    strays = [s for s in during if s.name in pipeline_rpcs and s.trace_id != trace_id]
    assert strays == []


def test_spans_cover_the_request_wall_time(traced_mesh: Mesh, key: str, receiver: OtlpReceiver) -> None:
    r = _chat(traced_mesh, key, _question())
    assert r.status_code == 200, r.text
    spans = _trace(receiver, r.headers["x-llmesh-trace-id"], CORE)
    root = root_span(spans)
    assert coverage(spans, root) >= 0.9, _explain(spans)
    # The router's own time is accounted for too: its steps and calls cover ≥ 90% of its span.
    (router,) = _server_spans(spans, "router")
    assert coverage(spans, router) >= 0.9, _explain(spans)


def test_cache_hit_trace_has_no_inference_span(traced_mesh: Mesh, key: str, receiver: OtlpReceiver) -> None:
    question = _question()
    first = _chat(traced_mesh, key, question)
    assert first.status_code == 200, first.text
    _trace(receiver, first.headers["x-llmesh-trace-id"], CORE)
    again = _chat(traced_mesh, key, question)
    assert again.status_code == 200, again.text
    assert (
        again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    spans = _trace(receiver, again.headers["x-llmesh-trace-id"], CORE - {"inference"}, settle_s=1.5)
    assert "inference" not in {s.service for s in spans}, _explain(spans)
    lookups = [s for s in _server_spans(spans, "cache") if s.name.endswith("/Lookup")]
    assert len(lookups) == 1, _explain(spans)
    assert lookups[0].attributes["llmesh.cache.hit"] is True
    assert lookups[0].attributes["llmesh.cache.kind"] == "exact"


def test_blocked_prompt_trace_ends_at_safety(traced_mesh: Mesh, key: str, receiver: OtlpReceiver) -> None:
    r = _chat(traced_mesh, key, f"Please store my key {SECRET} and then say hello.")
    assert r.status_code == 400, r.text
    assert SECRET not in r.text
    trace_id = r.headers["x-llmesh-trace-id"]
    spans = _trace(receiver, trace_id, {"envoy", "router", "safety"}, settle_s=1.5)
    assert "inference" not in {s.service for s in spans}, _explain(spans)
    (router,) = _server_spans(spans, "router")
    assert router.status == "ERROR" and router.attributes.get("llmesh.error.reason") == "PROMPT_BLOCKED"
    safety = _server_spans(spans, "safety")
    assert safety, _explain(spans)
    screen = next(s for s in safety if s.name.endswith("/ScreenInput"))
    assert "AWS_ACCESS_KEY" in screen.attributes["llmesh.safety.findings"]
    assert screen.attributes["llmesh.safety.action"] == "block"
    assert {"pii", "secrets"} <= set(screen.attributes["llmesh.safety.detectors"])
    event_types = [e.attributes["llmesh.safety.type"] for e in screen.events if e.name == "safety.finding"]
    assert sorted(set(event_types)) == screen.attributes["llmesh.safety.findings"]
    assert "AWS_ACCESS_KEY" in router.attributes["llmesh.safety.findings"]
    # Nothing of the request started after safety answered, except the router winding down.
    safety_end = max(s.end_ns for s in safety)
    later = [s for s in spans if s.start_ns > safety_end and s.service not in ("router", "envoy")]
    assert later == [], _explain(spans)
    # The secret value never reaches a span attribute or event.
    assert SECRET not in json.dumps([s.to_json() for s in spans])


def test_logs_of_a_request_carry_its_trace_id(traced_mesh: Mesh, key: str, receiver: OtlpReceiver) -> None:
    r = _chat(traced_mesh, key, _question())
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-llmesh-trace-id"]
    _trace(receiver, trace_id, CORE)
    workdir = traced_mesh.cfg.workdir
    carrying = set()
    for log in workdir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("trace_id") == trace_id:
                carrying.add(log.stem)
    # The router's per-request audit line, safety's outcome line and Envoy's access log line.
    assert {"router-0", "safety", "envoy"} <= carrying, carrying


def test_openai_route_adds_the_gateway_to_the_trace(
    traced_mesh: Mesh, key: str, receiver: OtlpReceiver
) -> None:
    r = _chat(traced_mesh, key, _question(), path="/v1/chat/completions")
    assert r.status_code == 200, r.text
    spans = _trace(receiver, r.headers["x-llmesh-trace-id"], CORE | {"gateway"})
    index = _by_id(spans)
    (router,) = _server_spans(spans, "router")
    assert "gateway" in {a.service for a in _ancestors(router, index)}, _explain(spans)
    assert root_span(spans).service == "envoy"


# ---------------------------------------------------------------------------------- metrics


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


class _Scraper:
    def __init__(self, mesh: Mesh):
        self.urls = {
            name: f"http://127.0.0.1:{mesh.ports[f'{name}-metrics']}/metrics"
            for name in ("tokenizer", "safety", "cache", "inference-0", "router-0", "gateway")
            if f"{name}-metrics" in mesh.ports
        }
        self.urls["envoy"] = f"http://127.0.0.1:{mesh.ports['envoy-admin']}/stats/prometheus"

    def all(self) -> dict[str, dict]:
        return {name: _scrape(url) for name, url in self.urls.items()}


def test_metrics_move_with_a_scripted_sequence(traced_mesh: Mesh, receiver: OtlpReceiver) -> None:
    key = create_key(traced_mesh.redis_url, "metrics")
    scraper = _Scraper(traced_mesh)
    before = scraper.all()
    first, second = _question(), _question()
    answers = [_chat(traced_mesh, key, q) for q in (first, second, first)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    blocked = _chat(traced_mesh, key, f"my key is {SECRET}")
    assert blocked.status_code == 400
    time.sleep(0.5)  # counters after the response (accounting settles after the last byte)
    after = scraper.all()

    def delta(part: str, name: str, **labels: str) -> float:
        return _total(after[part], name, **labels) - _total(before[part], name, **labels)

    # Router: 4 requests (3 OK, 1 blocked), cache hit/miss, tokens and cost by tenant and model.
    assert delta("router-0", "llmesh_router_requests_total") == 4
    assert delta("router-0", "llmesh_router_cache_total", result="hit") == 1
    assert delta("router-0", "llmesh_router_cache_total", result="miss") == 2
    assert delta("router-0", "llmesh_router_safety_blocked_total", direction="input") == 1
    assert delta("router-0", "llmesh_router_tokens_total", tenant="metrics") > 0
    assert delta("router-0", "llmesh_router_cost_usd_total", tenant="metrics") > 0
    assert delta("router-0", "llmesh_router_step_seconds_count", step="tokenize") >= 4
    assert delta("router-0", "llmesh_router_time_to_first_token_seconds_count") == 3
    assert _total(after["router-0"], "llmesh_router_breaker_state") == 0  # every breaker closed
    # Inference: two generations (the repeat is a cache hit, the blocked one never arrives).
    assert delta("inference-0", "llmesh_inference_requests_finished_total") == 2
    assert delta("inference-0", "llmesh_inference_time_to_first_token_seconds_count") == 2
    assert delta("inference-0", "llmesh_inference_generated_tokens_total") >= 2
    assert delta("inference-0", "llmesh_inference_batch_size_count") >= 2
    assert delta("inference-0", "llmesh_inference_inter_token_seconds_count") >= 1
    assert any(name == "llmesh_inference_queued_requests" for name, _ in after["inference-0"])
    # Cache: one exact hit among the lookups, two stores.
    assert delta("cache", "llmesh_cache_hits_total", kind="exact") == 1
    # Three lookups: a blocked prompt never reaches the cache (the lookup waits for safety's verdict).
    assert delta("cache", "llmesh_cache_lookups_total") == 3
    # Safety: the secret is counted as a block of type AWS_ACCESS_KEY, never its value.
    assert delta("safety", "llmesh_safety_actions_total", type="AWS_ACCESS_KEY", action="block") == 1
    assert delta("safety", "llmesh_safety_requests_total", direction="input") == 4
    assert SECRET not in httpx.get(scraper.urls["safety"], timeout=10).text
    # Tokenizer: called for every request, all OK.
    assert delta("tokenizer", "llmesh_grpc_server_handled_total", code="OK") >= 4
    assert delta("tokenizer", "llmesh_grpc_server_handling_seconds_count") >= 4
    # Envoy: four downstream requests, answered 2xx three times and 4xx once.
    assert delta("envoy", "envoy_http_downstream_rq_xx_total", envoy_http_conn_manager_prefix="edge",
                 envoy_response_code_class="2") == 3  # fmt: skip
    assert delta("envoy", "envoy_http_downstream_rq_xx_total", envoy_http_conn_manager_prefix="edge",
                 envoy_response_code_class="4") == 1  # fmt: skip


def test_trace_cli_renders_a_mesh_trace(
    traced_mesh: Mesh, key: str, receiver: OtlpReceiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `llmesh trace` prints for a real request: every service, one line per span."""
    r = _chat(traced_mesh, key, _question())
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-llmesh-trace-id"]
    spans = _trace(receiver, trace_id, CORE)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(s.to_json() + "\n" for s in spans))
    assert trace_main([trace_id[:12], "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"trace {trace_id}")
    assert all(f" {service}: " in out for service in CORE), out
    assert sum(1 for line in out.splitlines() if line.count("|") >= 2) == len(spans)


def test_background_load_polls_leave_no_traces(traced_mesh: Mesh, key: str, receiver: OtlpReceiver) -> None:
    """The router polls every inference replica's load twice a second; those polls must not
    bury the requests in Jaeger. A request's own spans still arrive (the receiver works)."""
    r = _chat(traced_mesh, key, _question())
    assert r.status_code == 200, r.text
    _trace(receiver, r.headers["x-llmesh-trace-id"], CORE)
    polls = [s for s in receiver.spans() if s.name.endswith(("/GetLoad", "/ListModels"))]
    assert polls == [], _explain(polls)
