"""The rendered Envoy config: what it routes where, and that Envoy itself accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.envoy.render import (
    EdgeConfig,
    build_descriptor,
    envoy_argv,
    has_status_types,
    render,
    write_config,
)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return typed


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return found


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def test_ports_and_addresses_come_from_arguments() -> None:
    cfg = render(
        EdgeConfig(
            listen_port=18080,
            admin_port=19901,
            routers=("10.0.0.1:50051", "10.0.0.2:50061"),
            gateways=("gw:81",),
        )
    )
    assert cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 18080
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19901}
    endpoints = cluster(cfg, "router")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [50051, 50061]
    assert "http2_protocol_options" in str(cluster(cfg, "router")["typed_extension_protocol_options"])
    assert "typed_extension_protocol_options" not in cluster(cfg, "gateway")  # aiohttp speaks HTTP/1.1


def test_tracing_only_with_a_collector() -> None:
    plain = render(EdgeConfig())
    assert "tracing" not in hcm(plain)
    assert {c["name"] for c in plain["static_resources"]["clusters"]} == {"router", "gateway"}
    traced = render(EdgeConfig(otlp_collector="127.0.0.1:4317"))
    assert hcm(traced)["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert (
        cluster(traced, "otel_collector")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"
        ]["socket_address"]["port_value"]
        == 4317
    )


def test_routes_timeouts_and_retries() -> None:
    cfg = render(EdgeConfig(stream_timeout_s=600, generate_timeout_s=300, read_timeout_s=10))
    by_path = {r["match"].get("path") or r["match"].get("prefix"): r for r in routes(cfg)}
    stream = by_path["/llmesh.router.v1.RouterService/StreamChatCompletion"]["route"]
    assert stream["timeout"] == "600s" and "retry_policy" not in stream
    assert "retry_policy" not in by_path["/llmesh.router.v1.RouterService/CreateChatCompletion"]["route"]
    assert by_path["/llmesh.router.v1.RouterService/ListModels"]["route"]["retry_policy"]["num_retries"] == 2
    assert by_path["/v1/chat/completions"]["route"]["cluster"] == "gateway"
    assert routes(cfg)[-1]["direct_response"]["status"] == 404  # the catch-all comes last
    filters = [f["name"] for f in hcm(cfg)["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    transcoder = next(f for f in hcm(cfg)["http_filters"] if f["name"].endswith("grpc_json_transcoder"))
    opts = transcoder["typed_config"]
    assert opts["convert_grpc_status"] is True
    assert opts["print_options"]["preserve_proto_field_names"] is True
    assert opts["print_options"]["stream_sse_style_delimited"] is True


def test_server_reflection_goes_to_the_router_before_the_catch_all() -> None:
    paths = [r["match"].get("path") or r["match"].get("prefix") for r in routes(render(EdgeConfig()))]
    for version in ("v1", "v1alpha"):
        prefix = f"/grpc.reflection.{version}.ServerReflection/"
        route = routes(render(EdgeConfig()))[paths.index(prefix)]
        assert route["route"]["cluster"] == "router" and route["match"]["grpc"] == {}
        assert paths.index(prefix) < paths.index("/")


def test_access_log_never_names_the_body_or_authorization() -> None:
    fmt = hcm(render(EdgeConfig()))["access_log"][0]["typed_config"]["log_format"]["json_format"]
    text = str(fmt).upper()
    assert "AUTHORIZATION" not in text and "BODY" not in text
    assert fmt["trace_id"] == "%TRACE_ID%" and "TRACEPARENT" in fmt["traceparent"]


def test_bad_address_is_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        render(EdgeConfig(routers=("no-port",)))


def test_descriptor_carries_status_types() -> None:
    path = build_descriptor()
    assert has_status_types(path)


@pytest.mark.parametrize("collector", ["", "127.0.0.1:4317"])
def test_envoy_validates_the_rendered_config(tmp_path: Path, collector: str) -> None:
    out = write_config(
        EdgeConfig(descriptor=build_descriptor(), otlp_collector=collector), tmp_path / "envoy.yaml"
    )
    argv = [*envoy_argv(out, base_id=9000 + len(collector)), "--mode", "validate"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
