"""Every overlay renders to schema-valid, hardened, policed Kubernetes resources."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest

from tests.unit.deploy.conftest import GRPC_SERVICES, OVERLAYS, SERVICES, env_of, find, pod_spec

K8S_VERSION = "1.33"
WORKLOADS = ("Deployment", "StatefulSet")
# Kinds from CRDs, which kubernetes-validate has no schema for: checked structurally below.
CRD_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}


def _workloads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] in WORKLOADS]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for res in rendered[overlay]:
        if (res["apiVersion"], res["kind"]) in CRD_KINDS:
            spec = res["spec"]
            if res["kind"] == "Certificate":
                assert spec["secretName"] and spec["issuerRef"]["name"], res["metadata"]["name"]
            else:
                assert "selfSigned" in spec or "ca" in spec, res["metadata"]["name"]
            continue
        kubernetes_validate.validate(res, K8S_VERSION, strict=True)
        assert res["kind"] == "Namespace" or res["metadata"].get("namespace") == "llmesh"


def test_schema_validation_rejects_a_misspelled_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deploy = find(rendered["dev"], "Deployment", "router")
    broken = {**deploy, "spec": {**deploy["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for res in _workloads(rendered[overlay]):
        name = res["metadata"]["name"]
        pod = pod_spec(res)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        if name != "prometheus":  # needs its token for pod discovery (namespaced, read-only Role)
            assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "add" not in sc["capabilities"], (name, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, c["name"], kind)
            assert ":" in c["image"] or "@" in c["image"], c["image"]
            assert not c["image"].endswith(":latest"), c["image"]
            assert c.get("readinessProbe") and c.get("livenessProbe"), (name, c["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probe_grpc_health_and_outlive_their_drain(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for name, (port, metrics_port) in SERVICES.items():
        deploy = find(rendered[overlay], "Deployment", name)
        pod = pod_spec(deploy)
        (server,) = [c for c in pod["containers"] if c["name"] == "server"]
        env = env_of(server)
        prefix = f"LLMESH_{name.upper()}_"
        assert env[prefix + "PORT"] == str(port) and env[prefix + "METRICS_PORT"] == str(metrics_port)
        assert env[prefix + "HOST"] == "0.0.0.0" and env[prefix + "METRICS_HOST"] == "0.0.0.0"
        assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
            ("grpc" if name in GRPC_SERVICES else "http"): port,
            "metrics": metrics_port,
        }
        tls = prefix + "TLS_CERT_FILE" in env
        assert server["startupProbe"], name
        if name in GRPC_SERVICES:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if tls:
                    assert server[probe]["exec"]["command"][-1] == name
                    assert "grpc" not in server[probe]
                else:
                    assert server[probe]["grpc"] == {"port": port}, (name, probe)
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = float(env[prefix + "GRACE_PERIOD_S"])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain, name
        service = find(rendered[overlay], "Service", name)
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports[("grpc" if name in GRPC_SERVICES else "http")] == port
        # Headless: clients and Envoy resolve every pod instead of pinning one through a VIP.
        assert service["spec"]["clusterIP"] == "None"
        assert find(rendered[overlay], "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_router_and_inference_which_leave_replicas_to_them(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    hpas = {r["spec"]["scaleTargetRef"]["name"] for r in resources if r["kind"] == "HorizontalPodAutoscaler"}
    assert {"router", "inference"} <= hpas
    for name in hpas:
        assert "replicas" not in find(resources, "Deployment", name)["spec"], name
    for res in _workloads(resources):
        name = res["metadata"]["name"]
        if name in hpas or res["spec"].get("replicas", 1) > 1:
            assert find(resources, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1, name


def _allowed_sources(resources: list[dict[str, Any]], target: str, port: int) -> set[str] | None:
    """App names allowed to reach `target` on `port`; None means any source (also outside)."""
    pod_labels = {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"] for r in _workloads(resources)
    }
    labels = pod_labels[target]
    allowed: set[str] = set()
    for pol in (r for r in resources if r["kind"] == "NetworkPolicy"):
        spec = pol["spec"]
        if "Ingress" not in spec["policyTypes"]:
            continue
        selector = spec["podSelector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        for rule in spec.get("ingress", []):
            if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule:
                return None
            for peer in rule["from"]:
                assert "namespaceSelector" not in peer and "ipBlock" not in peer, pol["metadata"]["name"]
                match = peer["podSelector"].get("matchLabels", {})
                allowed |= {
                    n for n, lab in pod_labels.items() if all(lab.get(k) == v for k, v in match.items())
                }
    return allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_expose_only_envoy_and_keep_redis_private(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    deny = find(resources, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert _allowed_sources(resources, "envoy", 8080) is None
    assert _allowed_sources(resources, "envoy", 9902) == {"prometheus"}
    assert _allowed_sources(resources, "router", 50051) == {"envoy", "gateway"}
    assert _allowed_sources(resources, "gateway", 8081) == {"envoy"}
    for name in ("tokenizer", "safety", "cache", "inference"):
        assert _allowed_sources(resources, name, SERVICES[name][0]) == {"router"}, name
    assert _allowed_sources(resources, "redis-state", 6379) == {"router"}
    assert _allowed_sources(resources, "redis-cache", 6379) == {"cache"}
    if overlay == "gpu":
        assert _allowed_sources(resources, "triton", 8001) == {"inference"}
    for name, (_, metrics_port) in SERVICES.items():
        assert _allowed_sources(resources, name, metrics_port) == {"prometheus"}, name


def test_gpu_overlay_runs_triton_on_gpu_nodes_and_switches_inference(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    gpu = rendered["gpu"]
    triton = pod_spec(find(gpu, "Deployment", "triton"))
    (container,) = triton["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in triton["tolerations"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    inference = env_of(pod_spec(find(gpu, "Deployment", "inference"))["containers"][0])
    assert inference["LLMESH_INFERENCE_BACKEND"] == "triton"
    assert inference["LLMESH_INFERENCE_TRITON_URL"] == "triton:8001"
    assert (
        env_of(pod_spec(find(rendered["prod"], "Deployment", "inference"))["containers"][0])[
            "LLMESH_INFERENCE_BACKEND"
        ]
        == "embedded"
    )


@pytest.mark.parametrize("overlay", ("prod", "gpu"))
def test_tls_mounts_a_certificate_for_every_service(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    for name in [*SERVICES, "envoy"]:
        cert = find(resources, "Certificate", name)
        assert cert["spec"]["secretName"] == f"{name}-tls"
        assert f"{name}.llmesh.svc.cluster.local" in cert["spec"]["dnsNames"]
        pod = pod_spec(find(resources, "Deployment", name))
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert f"{name}-tls" in secrets, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_traces_go_to_jaeger_from_every_service(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    find(resources, "Service", "jaeger")
    for name in SERVICES:
        env = env_of(pod_spec(find(resources, "Deployment", name))["containers"][0])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", name


# Which Redis each user gets, and the eviction policy that data needs: the router's keys, limits,
# budgets and breaker state must never be evicted; the cache may lose entries (they carry TTLs)
# but never its index keys (no TTL), which volatile-lru spares.
REDIS_OF = {"router": ("redis-state", "noeviction"), "cache": ("redis-cache", "volatile-lru")}


def _redis_conf(resources: list[dict[str, Any]], name: str) -> dict[str, str]:
    text = find(resources, "ConfigMap", name)["data"]["redis.conf"]
    return {k: v.strip() for k, _, v in (line.strip().partition(" ") for line in text.splitlines()) if k}


def _bytes(size: str) -> int:
    units = {"mb": 2**20, "gb": 2**30, "Mi": 2**20, "Gi": 2**30}
    unit = next(u for u in units if size.endswith(u))
    return int(size.removesuffix(unit)) * units[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_state_and_cache_live_in_separate_redis_with_the_eviction_policy_each_needs(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    for user, (redis, policy) in REDIS_OF.items():
        (server,) = [
            c for c in pod_spec(find(resources, "Deployment", user))["containers"] if c["name"] == "server"
        ]
        url = urlparse(env_of(server)[f"LLMESH_{user.upper()}_REDIS_URL"])
        assert (url.hostname, url.port) == (redis, 6379), user
        conf = _redis_conf(resources, redis)
        assert conf["maxmemory-policy"] == policy, redis
        statefulset = find(resources, "StatefulSet", redis)
        assert any(vol.get("configMap", {}).get("name") == redis for vol in pod_spec(statefulset)["volumes"])
        (container,) = pod_spec(statefulset)["containers"]
        # a full Redis answers errors (or evicts) before the container is OOM-killed
        assert _bytes(conf["maxmemory"]) < _bytes(container["resources"]["limits"]["memory"]), redis
    # the keys CLI run inside the router pod reaches the same Redis as the router
    router = env_of(pod_spec(find(resources, "Deployment", "router"))["containers"][0])
    assert router["LLMESH_REDIS_URL"] == router["LLMESH_ROUTER_REDIS_URL"]
    # API keys and usage survive a restart; cache entries need not
    state = find(resources, "StatefulSet", "redis-state")
    assert _redis_conf(resources, "redis-state")["appendonly"] == "yes"
    assert [t["metadata"]["name"] for t in state["spec"]["volumeClaimTemplates"]] == ["data"]
    (container,) = pod_spec(state)["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert _redis_conf(resources, "redis-cache")["appendonly"] == "no"
