"""`make up`'s settings: ports, the inference backend, the development key, the OTLP endpoint."""

from __future__ import annotations

import pytest

from libs.launch.config import DEFAULT_PORTS, ConfigError, dev_key, from_env, port_variable, triton_wanted
from libs.launch.mesh import otlp_host_port

GOOD_KEY = "llm-0123456789abcdef-" + "A" * 40


@pytest.mark.parametrize(
    ("part", "variable"),
    [
        ("router-0", "LLMESH_ROUTER_PORT"),
        ("router-0-metrics", "LLMESH_ROUTER_METRICS_PORT"),
        ("inference-0", "LLMESH_INFERENCE_PORT"),
        ("gateway-metrics", "LLMESH_GATEWAY_METRICS_PORT"),
        ("redis", "LLMESH_REDIS_PORT"),
        ("triton-grpc", "LLMESH_TRITON_GRPC_PORT"),
    ],
)
def test_each_port_moves_with_the_variable_its_part_reads(part: str, variable: str) -> None:
    assert port_variable(part) == variable


def test_ports_default_to_the_readme_table_and_zero_means_free() -> None:
    env = {"LLMESH_TRITON": "0", "LLMESH_REDIS_PORT": "6390", "LLMESH_ROUTER_PORT": "0", "LLMESH_PORT": "0"}
    ports = from_env(env, triton_available=False).mesh.ports
    assert ports["tokenizer"] == DEFAULT_PORTS["tokenizer"] == 50052
    assert ports["router-0"] == 0 and ports["redis"] == 6390
    assert ports["envoy"] == 0 and ports["envoy-admin"] == 9901


@pytest.mark.parametrize(
    ("value", "available", "wanted"),
    [
        ("", True, True),
        ("auto", True, True),
        ("AUTO", False, False),
        ("1", True, True),
        ("on", True, True),
        ("0", True, False),
        ("off", False, False),
    ],
)
def test_triton_is_the_default_when_the_bundled_server_is_installed(
    value: str, available: bool, wanted: bool
) -> None:
    assert triton_wanted(value, available) is wanted


def test_triton_asked_for_but_missing_or_misspelt_is_an_error() -> None:
    with pytest.raises(ConfigError, match="LLMESH_TRITON=1 but"):
        triton_wanted("1", available=False)
    with pytest.raises(ConfigError, match="expected auto, 1 or 0"):
        triton_wanted("maybe", available=True)


def test_unset_triton_follows_availability_in_the_mesh_config() -> None:
    assert from_env({"LLMESH_REDIS_PORT": "0"}, triton_available=True).mesh.with_triton is True
    assert from_env({"LLMESH_REDIS_PORT": "0"}, triton_available=False).mesh.with_triton is False
    assert from_env({"LLMESH_TRITON": "0"}, triton_available=True).mesh.with_triton is False


def test_with_triton_one_embedded_replica_serves_beside_it_unless_told_otherwise() -> None:
    both = from_env({"LLMESH_REDIS_PORT": "0"}, triton_available=True).mesh
    assert (both.inference_replicas, both.embedded_replicas) == (1, 1)
    only = from_env({"LLMESH_REDIS_PORT": "0", "LLMESH_EMBEDDED_REPLICAS": "0"}, triton_available=True).mesh
    assert only.embedded_replicas == 0
    assert from_env({"LLMESH_TRITON": "0"}, triton_available=True).mesh.embedded_replicas == 0
    with pytest.raises(ConfigError, match="LLMESH_EMBEDDED_REPLICAS"):
        from_env({"LLMESH_EMBEDDED_REPLICAS": "many"}, triton_available=True)


def test_dev_key_is_checked_without_echoing_it() -> None:
    assert dev_key({}) is None
    assert dev_key({"LLMESH_DEV_API_KEY": GOOD_KEY}) == GOOD_KEY
    bad = "llm-0123456789abcdef-secret-with-dashes-and-too-short"
    with pytest.raises(ConfigError) as info:
        dev_key({"LLMESH_DEV_API_KEY": bad})
    assert "LLMESH_DEV_API_KEY" in str(info.value) and "llm-<16 hex digits>" in str(info.value)
    assert "secret-with-dashes" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMESH_PORT": "x"}, "LLMESH_PORT='x' is not a whole number"),
        ({"LLMESH_ADMIN_PORT": "70000"}, "LLMESH_ADMIN_PORT=70000 is outside 0..65535"),
        ({"REPLICAS_ROUTER": "0"}, "REPLICAS_ROUTER=0 is outside 1..16"),
        ({"LLMESH_CACHE_METRICS_PORT": "-5"}, "LLMESH_CACHE_METRICS_PORT=-5 is outside"),
    ],
)
def test_bad_numbers_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_env({"LLMESH_TRITON": "0", **env}, triton_available=False)


def test_base_id_defaults_to_the_listener_port() -> None:
    cfg = from_env({"LLMESH_TRITON": "0", "LLMESH_PORT": "18080"}, triton_available=False).mesh
    assert cfg.envoy_base_id == 0  # Mesh then uses the listener port, distinct per `make up`
    cfg = from_env({"LLMESH_TRITON": "0", "LLMESH_ENVOY_BASE_ID": "7"}, triton_available=False).mesh
    assert cfg.envoy_base_id == 7


@pytest.mark.parametrize(
    ("endpoint", "host_port"),
    [
        ("http://127.0.0.1:4317", "127.0.0.1:4317"),
        ("https://collector.example:4318/", "collector.example:4318"),
        ("http://collector", "collector:4317"),
        ("127.0.0.1:4317", "127.0.0.1:4317"),
        ("localhost", "localhost:4317"),
    ],
)
def test_otlp_endpoint_becomes_host_port(endpoint: str, host_port: str) -> None:
    assert otlp_host_port(endpoint) == host_port
