"""Generate deploy/grafana/llmesh-dashboard.json from the metric list below.

    python deploy/grafana/generate_dashboard.py            # rewrite the JSON
    python deploy/grafana/generate_dashboard.py --check    # fail if the JSON is stale

METRICS is the one place that names what the dashboard reads; tests check each name against
the metrics the services register. Counters are listed by their exposed name (`..._total`),
histograms by their base name (the panels read `_bucket`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METRICS: dict[str, str] = {
    "requests": "llmesh_router_requests_total",  # labels: status, model
    "grpc_latency": "llmesh_grpc_server_handling_seconds",  # histogram; labels: service, method
    "router_step": "llmesh_router_step_seconds",  # histogram; label: step (one per hop)
    "ttft": "llmesh_inference_time_to_first_token_seconds",  # histogram; label: model
    "router_ttft": "llmesh_router_time_to_first_token_seconds",  # histogram, seen by clients
    "inter_token": "llmesh_inference_inter_token_seconds",  # histogram; label: model
    "generated_tokens": "llmesh_inference_generated_tokens_total",  # label: model
    "queued": "llmesh_inference_queued_requests",  # gauge; label: model
    "running": "llmesh_inference_running_sequences",  # gauge; label: model
    "batch_size": "llmesh_inference_batch_size",  # histogram; label: model
    "cache_lookups": "llmesh_cache_lookups_total",  # label: outcome
    "cache_hits": "llmesh_cache_hits_total",  # label: kind (exact, semantic)
    "safety_actions": "llmesh_safety_actions_total",  # labels: type, direction, action
    "breaker_state": "llmesh_router_breaker_state",  # gauge 0 closed, 1 half-open, 2 open; label: backend
    "tokens_billed": "llmesh_router_tokens_total",  # labels: tenant, model, kind
    "cost": "llmesh_router_cost_usd_total",  # labels: tenant, model
    # Envoy; labels: envoy_http_conn_manager_prefix, envoy_response_code_class
    "envoy_requests": "envoy_http_downstream_rq_xx",
}

OUT = Path(__file__).resolve().parent / "llmesh-dashboard.json"
WIDTH = 12
HEIGHT = 8


def _quantiles(metric: str, by: str, legend: str) -> list[dict[str, Any]]:
    return [
        {
            "expr": f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[$__rate_interval])))",
            "legendFormat": f"p{int(q * 100)} {legend}",
            "refId": ref,
        }
        for q, ref in ((0.5, "A"), (0.99, "B"))
    ]


def _panel(title: str, targets: list[dict[str, Any]], unit: str, kind: str = "timeseries") -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": targets,
    }


def _expr(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "refId": ref}


def panels() -> list[dict[str, Any]]:
    """Every panel, in reading order: traffic, latency, generation, cache, safety, billing."""
    m = METRICS
    rate = "[$__rate_interval]"
    return [
        _panel(
            "Requests by status",
            [_expr(f"sum by (status) (rate({m['requests']}{rate}))", "{{status}}")],
            "reqps",
        ),
        _panel(
            "Edge responses by class (Envoy)",
            [
                _expr(
                    f"sum by (envoy_response_code_class) (rate({m['envoy_requests']}"
                    f'{{envoy_http_conn_manager_prefix="edge"}}{rate}))',
                    "{{envoy_response_code_class}}xx",
                )
            ],
            "reqps",
        ),
        _panel("Latency per hop (router steps)", _quantiles(m["router_step"], "step", "{{step}}"), "s"),
        _panel("gRPC latency per service", _quantiles(m["grpc_latency"], "service", "{{service}}"), "s"),
        _panel(
            "Time to first token",
            _quantiles(m["ttft"], "model", "engine {{model}}")
            + [
                {**t, "refId": chr(ord(t["refId"]) + 2)}
                for t in _quantiles(m["router_ttft"], "model", "client {{model}}")
            ],
            "s",
        ),
        _panel("Inter-token latency", _quantiles(m["inter_token"], "model", "{{model}}"), "s"),
        _panel(
            "Tokens generated per second",
            [_expr(f"sum by (model) (rate({m['generated_tokens']}{rate}))", "{{model}}")],
            "short",
        ),
        _panel(
            "Queue depth and running sequences",
            [
                _expr(f"sum by (model) ({m['queued']})", "queued {{model}}"),
                _expr(f"sum by (model) ({m['running']})", "running {{model}}", "B"),
            ],
            "short",
        ),
        _panel("Batch size", _quantiles(m["batch_size"], "model", "{{model}}"), "short"),
        _panel(
            "Cache hit ratio (exact / semantic)",
            [
                _expr(
                    f"sum by (kind) (rate({m['cache_hits']}{rate})) / ignoring(kind) group_left "
                    f"sum(rate({m['cache_lookups']}{rate}))",
                    "{{kind}}",
                )
            ],
            "percentunit",
        ),
        _panel(
            "Safety actions by type",
            [_expr(f"sum by (type, action) (rate({m['safety_actions']}{rate}))", "{{type}} {{action}}")],
            "ops",
        ),
        _panel(
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            [_expr(f"max by (backend) ({m['breaker_state']})", "{{backend}}")],
            "short",
        ),
        _panel(
            "Tokens by tenant and model",
            [_expr(f"sum by (tenant, model) (rate({m['tokens_billed']}{rate}))", "{{tenant}} {{model}}")],
            "short",
        ),
        _panel(
            "Cost by tenant and model (USD/h)",
            [_expr(f"3600 * sum by (tenant, model) (rate({m['cost']}{rate}))", "{{tenant}} {{model}}")],
            "currencyUSD",
        ),
    ]


def dashboard() -> dict[str, Any]:
    """The whole dashboard, panels laid out two per row."""
    laid = []
    for i, p in enumerate(panels()):
        laid.append(
            {
                "id": i + 1,
                "gridPos": {"h": HEIGHT, "w": WIDTH, "x": (i % 2) * WIDTH, "y": (i // 2) * HEIGHT},
                **p,
            }
        )
    return {
        "uid": "llmesh-overview",
        "title": "llmesh overview",
        "tags": ["llmesh"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                }
            ]
        },
        "panels": laid,
    }


def render() -> str:
    """The JSON text written to llmesh-dashboard.json."""
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    ns = parser.parse_args(argv)
    text = render()
    if ns.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python deploy/grafana/generate_dashboard.py", file=sys.stderr)
            return 1
        print("dashboard is fresh")
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
