"""Model registry parsing, validation errors and name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.runtime.errors import NotFound, PermissionDenied
from services.router.registry import ModelRegistry, RegistryError

ROOT = Path(__file__).resolve().parents[3]

BASE = """
models:
  - name: small
    aliases: [s]
    context_length: 100
    input_price_per_1k: 0.1
    output_price_per_1k: 0.2
    tier: 1
    fallback: [big]
  - name: big
    context_length: 1000
    input_price_per_1k: 1
    output_price_per_1k: 2
    tier: 2
    fallback: [s]
"""


def test_shipped_registry_has_the_documented_defaults() -> None:
    reg = ModelRegistry.load(ROOT / "services/router/models.yaml")
    int8 = reg.get("smollm2")
    assert int8.name == "smollm2-135m-int8"
    assert int8.tier == 1 and reg.get("smollm2-135m-fp32").tier == 2
    assert int8.input_price_per_1k < reg.get("smollm2-135m-fp32").input_price_per_1k
    assert [s.name for s in reg.fallback_chain(int8)] == ["smollm2-135m-int8", "smollm2-135m-fp32"]
    assert [s.name for s in reg.fallback_chain(reg.get("smollm2-135m-fp32"))] == [
        "smollm2-135m-fp32",
        "smollm2-135m-int8",
    ]


def test_aliases_resolve_and_unknown_names_list_the_choices() -> None:
    reg = ModelRegistry.from_yaml(BASE)
    assert reg.get("s") is reg.get("small")
    with pytest.raises(NotFound) as err:
        reg.get("nope")
    assert "small" in err.value.message and "big" in err.value.message
    assert err.value.reason == "UNKNOWN_MODEL"


def test_key_model_lists_filter_models_and_fallbacks() -> None:
    reg = ModelRegistry.from_yaml(BASE)
    assert [s.name for s in reg.allowed(["s"])] == ["small"]
    assert reg.allowed([]) == reg.models
    assert [s.name for s in reg.fallback_chain(reg.get("small"), ["small"])] == ["small"]
    with pytest.raises(PermissionDenied):
        reg.check_allowed(reg.get("big"), ["small"])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("fallback: [big]", "fallback: [huge]"), "fallback 'huge' is not a model"),
        (lambda t: t.replace("fallback: [big]", "fallback: [s]"), "lists itself as a fallback"),
        (lambda t: t.replace("aliases: [s]", "aliases: [big]"), "used by both"),
        (lambda t: t.replace("aliases: [s]", "aliases: [auto]"), "reserved"),
        (lambda t: t.replace("tier: 1", "tier: 0"), "model 'small' tier"),
        (lambda t: t.replace("    context_length: 100\n", ""), "model 'small' context_length"),
        (lambda t: t.replace("tier: 2", "tier: 2\n    colour: red"), "model 'big' colour"),
        (lambda t: "models: [", "not valid YAML"),
        (lambda t: "- a\n- b\n", "expected a mapping"),
        (lambda t: "models: []", "models"),
    ],
)
def test_registry_errors_name_the_model_and_field(edit, expected: str) -> None:
    with pytest.raises(RegistryError) as err:
        ModelRegistry.from_yaml(edit(BASE), "models.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("models.yaml")


def test_openai_backend_needs_base_url_and_an_env_var_name_not_a_key() -> None:
    upstream = (
        BASE
        + """
  - name: hosted
    backend: openai
    context_length: 1000
    input_price_per_1k: 1
    output_price_per_1k: 1
    tier: 3
"""
    )
    with pytest.raises(RegistryError, match="needs base_url"):
        ModelRegistry.from_yaml(upstream)
    with pytest.raises(RegistryError, match="NAME of an environment variable"):
        ModelRegistry.from_yaml(upstream + "    base_url: http://x/v1\n    api_key_env: sk-abc123-secret\n")
    reg = ModelRegistry.from_yaml(upstream + "    base_url: http://x/v1\n    api_key_env: HOSTED_KEY\n")
    hosted = reg.get("hosted")
    assert hosted.tokenizer_model == "" and reg.get("big").tokenizer_model == "big"
    assert hosted.cost_usd(1000, 500) == pytest.approx(1.5)


def test_llmesh_backend_refuses_http_fields() -> None:
    with pytest.raises(RegistryError, match="takes no base_url"):
        ModelRegistry.from_yaml(BASE.replace("tier: 1", "tier: 1\n    base_url: http://x"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read model registry"):
        ModelRegistry.load(tmp_path / "absent.yaml")


def test_engine_backends_and_replicas() -> None:
    reg = ModelRegistry.from_yaml(
        BASE.replace(
            "tier: 1", "tier: 1\n    backend: triton\n    replicas: [dns:///inference-gpu:50055]"
        ).replace(
            "tier: 2",
            "tier: 2\n    backend: embedded\n    replicas: ['10.0.0.7:50055', dns:///inference-gpu:50055]",
        )
    )
    small, big = reg.get("small"), reg.get("big")
    assert (small.backend, big.backend) == ("triton", "embedded")
    assert small.on_inference_replicas and small.tokenizer_model == "small"
    assert reg.replica_addrs() == ["dns:///inference-gpu:50055", "10.0.0.7:50055"]
    with pytest.raises(RegistryError, match="not an inference address"):
        ModelRegistry.from_yaml(BASE.replace("tier: 1", "tier: 1\n    replicas: ['http://x:1']"))
    with pytest.raises(RegistryError, match="takes no replicas"):
        ModelRegistry.from_yaml(
            BASE.replace(
                "tier: 1", "tier: 1\n    backend: openai\n    base_url: http://x/v1\n    replicas: [a:1]"
            )
        )
    with pytest.raises(RegistryError, match="takes no base_url"):
        ModelRegistry.from_yaml(
            BASE.replace("tier: 1", "tier: 1\n    backend: triton\n    base_url: http://x")
        )
