"""Prometheus scrape configs cover every metrics port; the dashboard is fresh and reads real metrics."""

from __future__ import annotations

import importlib
import re
from typing import Any

import prometheus_client
import pytest
import yaml

from tests.unit.deploy.conftest import ROOT, SERVICES, find, load_module

METRIC_MODULES = [
    "libs.runtime.metrics",
    "services.router.metrics",
    "services.cache.metrics",
    "services.inference.metrics",
    "services.safety.audit",
    "services.gateway.metrics",
]


@pytest.mark.parametrize(
    ("path", "host"), [("deploy/prometheus/prometheus.yml", None), ("deploy/compose/prometheus.yml", "name")]
)
def test_static_scrape_configs_cover_every_metrics_port(path: str, host: str | None) -> None:
    jobs = {j["job_name"]: j for j in yaml.safe_load((ROOT / path).read_text())["scrape_configs"]}
    for name, (_, metrics_port) in SERVICES.items():
        (target,) = jobs[name]["static_configs"][0]["targets"]
        assert target == f"{name if host else '127.0.0.1'}:{metrics_port}", target
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"


def test_k8s_prometheus_keeps_llmesh_metrics_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config = yaml.safe_load(find(rendered["prod"], "ConfigMap", "prometheus")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    keeps = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keeps["__meta_kubernetes_pod_container_port_name"] == "metrics"
    for res in rendered["gpu"]:
        if res["kind"] == "Deployment" and res["metadata"]["name"] in (*SERVICES, "envoy", "triton"):
            ports = [p["name"] for c in res["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
            assert "metrics" in ports, res["metadata"]["name"]


def _registered_metric_names() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_dashboard_is_fresh_and_reads_metrics_the_code_registers() -> None:
    gen = load_module(ROOT / "deploy/grafana/generate_dashboard.py")
    assert (ROOT / "deploy/grafana/llmesh-dashboard.json").read_text() == gen.render()
    registered = _registered_metric_names()
    inference_names = {m for m in gen.METRICS.values() if m.startswith("llmesh_inference_")}
    assert all(re.fullmatch(r"llmesh_[a-z_]+|envoy_[a-z_]+", m) for m in gen.METRICS.values())
    missing = {m for m in gen.METRICS.values() if m.startswith("llmesh_")} - registered - inference_names
    assert not missing, f"dashboard reads metrics no module registers: {sorted(missing)}"
    text = (ROOT / "services/inference/metrics.py").read_text()
    for name in inference_names:  # registered per engine, on a registry made at start-up
        assert f'"{name.removesuffix("_total")}"' in text, name
