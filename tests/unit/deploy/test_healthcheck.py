"""deploy/docker/healthcheck.py picks the port and TLS files the service itself reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.conftest import ROOT, SERVICES, load_module

hc = load_module(ROOT / "deploy/docker/healthcheck.py")


def test_default_ports_match_the_services() -> None:
    assert {name: ports[0] for name, ports in SERVICES.items()} == hc.DEFAULT_PORTS


def test_plaintext_grpc_and_http_targets() -> None:
    target = hc.probe_target("router", {"LLMESH_ROUTER_PORT": "6000"})
    assert (target.address, target.grpc, target.cert_file) == ("localhost:6000", True, None)
    assert hc.probe_target("gateway", {}).grpc is False
    assert hc.probe_target("inference", {}).address == "localhost:50055"


def test_tls_files_come_from_the_service_prefix() -> None:
    env = {
        "LLMESH_CACHE_TLS_CERT_FILE": "/t/tls.crt",
        "LLMESH_CACHE_TLS_KEY_FILE": "/t/tls.key",
        "LLMESH_CACHE_TLS_CA_FILE": "/t/ca.crt",
        "LLMESH_ROUTER_TLS_CERT_FILE": "/wrong",
    }
    target = hc.probe_target("cache", env)
    assert (target.cert_file, target.key_file, target.ca_file) == (
        Path("/t/tls.crt"),
        Path("/t/tls.key"),
        Path("/t/ca.crt"),
    )


def test_incomplete_tls_settings_and_unknown_services_fail() -> None:
    with pytest.raises(SystemExit, match="TLS_KEY_FILE"):
        hc.probe_target("safety", {"LLMESH_SAFETY_TLS_CERT_FILE": "/t/tls.crt"})
    with pytest.raises(SystemExit, match="unknown service"):
        hc.probe_target("nope", {})
    assert hc.main(["healthcheck.py"]) == 2
