"""Load spreads over pods on Kubernetes: headless Services, DNS-named targets, Envoy's cluster
policy, and image pinning described as it is."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.unit.deploy.conftest import (
    GRPC_SERVICES,
    K8S,
    OVERLAYS,
    ROOT,
    SERVICES,
    env_of,
    find,
    load_module,
    pod_spec,
)

Resources = dict[str, list[dict[str, Any]]]
TEMPLATE = ROOT / "deploy" / "envoy" / "envoy.yaml.tmpl"


def _clusters(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config_map = find(resources, "ConfigMap", "envoy")
    return {c["name"]: c for c in yaml.safe_load(config_map["data"]["clusters.yaml"])["resources"]}


def _local_outlier_detection() -> dict[str, Any]:
    """The `outlier_detection` block of the local Envoy template (its first, anchored one)."""
    lines = TEMPLATE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "outlier_detection: &outliers" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    parsed: dict[str, Any] = yaml.safe_load("\n".join(block))
    return parsed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoy_clusters_pick_the_less_busy_pod_and_eject_failing_ones(
    rendered: Resources, overlay: str
) -> None:
    clusters = _clusters(rendered[overlay])
    assert set(clusters) == {"router", "gateway"}
    local = _local_outlier_detection()
    for name, cluster in clusters.items():
        assert cluster["cluster_type"]["name"] == "envoy.cluster.dns", name
        assert cluster["lb_policy"] == "LEAST_REQUEST", name
        outliers = cluster["outlier_detection"]
        assert outliers == local, f"{name}: same outlier detection as deploy/envoy/envoy.yaml.tmpl"
        assert outliers["consecutive_5xx"] > 0 and outliers["consecutive_gateway_failure"] > 0
        assert 0 < outliers["max_ejection_percent"] <= 50, "never eject most of the pool"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_are_headless(rendered: Resources, overlay: str) -> None:
    names = [*GRPC_SERVICES, "gateway"] + (["triton"] if overlay == "gpu" else [])
    for name in names:
        spec = find(rendered[overlay], "Service", name)["spec"]
        assert spec.get("clusterIP") == "None", f"{overlay}: Service {name} has a virtual IP"
        assert spec.get("publishNotReadyAddresses") is False, name


def _dns_target(value: str) -> str:
    """`host:port` of a gRPC target that gRPC resolves through DNS (no scheme, or dns:///)."""
    assert not re.match(r"^(ipv4|ipv6|unix|xds):", value), value
    return value.removeprefix("dns:///")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_grpc_client_names_the_headless_service(rendered: Resources, overlay: str) -> None:
    resources = rendered[overlay]
    router = env_of(pod_spec(find(resources, "Deployment", "router"))["containers"][0])
    for service in ("tokenizer", "safety", "cache"):
        value = router[f"LLMESH_ROUTER_{service.upper()}_ADDR"]
        assert _dns_target(value) == f"{service}:{SERVICES[service][0]}"
    # The router expands this name itself (one replica per pod): it needs the dns:/// scheme.
    assert router["LLMESH_ROUTER_INFERENCE_ADDRS"] == f"dns:///inference:{SERVICES['inference'][0]}"
    gateway = env_of(pod_spec(find(resources, "Deployment", "gateway"))["containers"][0])
    assert _dns_target(gateway["LLMESH_GATEWAY_ROUTER_ADDR"]) == f"router:{SERVICES['router'][0]}"
    if overlay == "gpu":
        inference = env_of(pod_spec(find(resources, "Deployment", "inference"))["containers"][0])
        assert _dns_target(inference["LLMESH_INFERENCE_TRITON_URL"]) == "triton:8001"


def _image_pin_skips() -> list[Any]:
    """One param per workload (in the fullest overlay) that skips checkov's CKV_K8S_43."""
    kustomize = load_module(K8S / "kustomize_lite.py")
    out = []
    for res in kustomize.build(K8S / "overlays" / "gpu"):
        for key, value in (res["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip") and value.startswith("CKV_K8S_43="):
                name = res["metadata"]["name"]
                images = [c["image"] for c in pod_spec(res)["containers"]]
                out.append(pytest.param(name, value, images, id=name))
    return out


@pytest.mark.parametrize(("name", "reason", "images"), _image_pin_skips())
def test_image_digest_skips_say_what_is_true(name: str, reason: str, images: list[str]) -> None:
    assert all("@sha256:" not in image for image in images), f"{name} is pinned: drop the skip"
    assert "deploy/k8s/README.md" in reason, f"{name}: point at the documented pinning process"
    assert not re.search(r"overlays? pins?\b|pinned by digest", reason), f"{name}: claims a pin: {reason}"


def test_the_pinning_process_is_documented_and_renders(kustomize: Any, tmp_path: Any) -> None:
    readme = (K8S / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(images:\n.*?)```", readme, flags=re.S)
    rule = yaml.safe_load(block)["images"][0]
    assert rule["digest"].startswith("sha256:") and "newTag" not in rule
    prod = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    assert "pinned by digest" not in prod, "the prod overlay pins tags; say so"
    # The documented entry, given a digest, renders the image by digest.
    rule["digest"] = "sha256:" + "0" * 64
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["d.yaml"], "images": [rule]}))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "router"},
        "spec": {"template": {"spec": {"containers": [{"name": "server", "image": "llmesh/router:0.1.0"}]}}},
    }
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(deployment))
    (out,) = kustomize.build(tmp_path)
    assert pod_spec(out)["containers"][0]["image"] == f"registry.example.com/llmesh/router@sha256:{'0' * 64}"
