"""What the manifests, compose file and images name exists in the code, with the same defaults.

For each service: `services.<name>.settings` holds one pydantic Settings class with the env
prefix LLMESH_<NAME>_; every LLMESH_<NAME>_* variable set anywhere in deploy/ is one of its
fields, and its default ports are the ones the manifests use.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from tests.unit.deploy.conftest import OVERLAYS, ROOT, SERVICES, env_of, pod_spec

ENV_NAME = re.compile(r"\bLLMESH_([A-Z]+)_([A-Z0-9_]+)\b")
# Set by deploy/k8s/components/tls; proposed for libs/runtime/settings.ServiceSettings.


def settings_class(name: str) -> type[BaseSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    classes = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, BaseSettings) and c.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"services.{name}.settings should define one Settings class: {classes}"
    return classes[0]


def deploy_env_names(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """service -> field names (lower case) set through LLMESH_<SERVICE>_* anywhere in deploy/."""
    found: dict[str, set[str]] = {}

    def add(var: str) -> None:
        m = ENV_NAME.fullmatch(var)
        if m and m.group(1).lower() in SERVICES:
            found.setdefault(m.group(1).lower(), set()).add(m.group(2).lower())

    for resources in rendered.values():
        for res in resources:
            if res["kind"] in ("Deployment", "StatefulSet"):
                for c in pod_spec(res)["containers"]:
                    for var in env_of(c):
                        add(var)
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    for svc in compose["services"].values():
        for var in svc.get("environment") or {}:
            add(var)
    for dockerfile in (ROOT / "deploy/docker").glob("*.Dockerfile"):
        for m in ENV_NAME.finditer(dockerfile.read_text()):
            add(m.group(0))
    return found


@pytest.mark.parametrize("name", list(SERVICES))
def test_settings_define_every_variable_the_deployment_sets(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    cls = settings_class(name)
    assert cls.model_config.get("env_prefix") == f"LLMESH_{name.upper()}_"
    fields = set(cls.model_fields)
    used = deploy_env_names(rendered)[name]
    missing = used - fields
    assert not missing, (
        f"deploy/ sets LLMESH_{name.upper()}_{{{', '.join(sorted(missing))}}} unknown to {cls}"
    )
    port, metrics_port = SERVICES[name]
    assert cls.model_fields["port"].default == port
    assert cls.model_fields["metrics_port"].default == metrics_port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_addresses_point_at_services_and_ports_that_exist(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    resources = rendered[overlay]
    service_ports = {
        r["metadata"]["name"]: {p["port"] for p in r["spec"]["ports"]}
        for r in resources
        if r["kind"] == "Service"
    }
    for res in resources:
        if res["kind"] != "Deployment":
            continue
        for var, value in env_of(pod_spec(res)["containers"][0]).items():
            if not (var.endswith(("_ADDR", "_ADDRS", "_URL", "_ENDPOINT"))):
                continue
            for target in value.split(","):
                m = re.fullmatch(r"(?:dns:///|redis://|http://)?([a-z0-9-]+):(\d+)(?:/\d+)?", target)
                assert m, f"{res['metadata']['name']}: {var}={value}"
                host, port = m.group(1), int(m.group(2))
                assert port in service_ports.get(host, set()), f"{var}={value}: no Service {host}:{port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_served_models_are_in_the_inference_image_and_the_triton_repository(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    inference = [
        r for r in rendered[overlay] if r["kind"] == "Deployment" and r["metadata"]["name"] == "inference"
    ]
    env = env_of(pod_spec(inference[0])["containers"][0])
    dockerfile = (ROOT / "deploy/docker/inference.Dockerfile").read_text()
    for model in env["LLMESH_INFERENCE_MODELS"].split(","):
        name, _, precision = model.rpartition("-")
        assert f"COPY build/models/{name}/{precision}/ " in dockerfile, (
            f"{model} is not copied into the image"
        )
        if env["LLMESH_INFERENCE_BACKEND"] == "triton":
            assert (ROOT / "deploy/triton/model_repository" / model / "config.pbtxt").is_file(), model


ADDRESS = re.compile(r"(?:dns:///|redis://|http://)?([a-z0-9-]+):(\d+)(?:/\d+)?")


def test_compose_addresses_name_its_services_and_each_redis_fits_its_user() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())["services"]
    for name, svc in compose.items():
        for var, value in (svc.get("environment") or {}).items():
            if var.endswith(("_ADDR", "_ADDRS", "_URL")):
                for target in str(value).split(","):
                    m = ADDRESS.fullmatch(target)
                    assert m and m.group(1) in compose, f"{name}: {var}={value} names no compose service"
    # The router's state must never be evicted; the cache may lose entries, never its index keys.
    for user, policy in (("router", "noeviction"), ("cache", "volatile-lru")):
        env = compose[user]["environment"]
        redis = ADDRESS.fullmatch(env[f"LLMESH_{user.upper()}_REDIS_URL"])
        assert redis is not None
        command = compose[redis.group(1)]["command"]
        assert command[command.index("--maxmemory-policy") + 1] == policy, user
        assert redis.group(1) in compose[user]["depends_on"], user
    router = compose["router"]["environment"]
    assert router["LLMESH_REDIS_URL"] == router["LLMESH_ROUTER_REDIS_URL"]
