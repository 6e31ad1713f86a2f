"""The model registry: which models the router serves, where, at what price, and what backs them up.

Parsed from YAML (`services/router/models.yaml` by default) into validated `ModelSpec`s. A
mistake in the file fails start-up with a message that names the model and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.runtime.errors import NotFound, PermissionDenied

AUTO = "auto"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REPLICA_ADDR = re.compile(r"^(?:dns:///)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
# Backends served by llmesh inference replicas: any engine, or only replicas that serve the model
# through that engine (each replica's ListModels says which).
INFERENCE_BACKENDS = ("llmesh", "triton", "embedded")


class RegistryError(ValueError):
    """The registry file is missing, not YAML, or describes an inconsistent set of models."""


class ModelSpec(BaseModel):
    """One model the router can serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """Public model name."""
    aliases: tuple[str, ...] = ()
    """Other names that resolve to this model."""
    backend: Literal["llmesh", "triton", "embedded", "openai"] = "llmesh"
    """`llmesh`: our inference replicas, whatever their engine; `triton` / `embedded`: only the
    replicas that serve this model through Triton / in-process ONNX Runtime; `openai`: an
    OpenAI-compatible HTTP endpoint (vLLM, a hosted API)."""
    replicas: tuple[str, ...] = ()
    """Inference replicas (`host:port` or `dns:///name:port`) that serve this model; empty: every
    replica in LLMESH_ROUTER_INFERENCE_ADDRS that lists it."""
    backend_model: str = ""
    """Model name the backend knows; defaults to `name`."""
    base_url: str = ""
    """OpenAI backends: the API root, e.g. `http://vllm:8000/v1`."""
    api_key_env: str = ""
    """OpenAI backends: name of the environment variable that holds the API key (never the key)."""
    tokenizer: str = ""
    """Tokenizer-service model used to count tokens; defaults to `name` for llmesh backends."""
    context_length: int = Field(gt=0)
    """Context window in tokens (prompt + completion)."""
    input_price_per_1k: float = Field(ge=0)
    """US dollars per 1k prompt tokens."""
    output_price_per_1k: float = Field(ge=0)
    """US dollars per 1k completion tokens."""
    tier: int = Field(ge=1)
    """Capability tier: higher answers harder requests."""
    fallback: tuple[str, ...] = ()
    """Models to try, in order, when this one fails before its first token."""
    owned_by: str = "llmesh"
    """Owner shown to OpenAI clients."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if value and not _ENV_NAME.match(value):
            raise ValueError(
                "must be the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY), "
                "never the key itself"
            )
        return value

    @field_validator("replicas")
    @classmethod
    def _replica_addrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for addr in value:
            if not _REPLICA_ADDR.match(addr):
                raise ValueError(f"{addr!r} is not an inference address: write host:port or dns:///name:port")
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelSpec:
        if self.backend == "openai":
            if not self.base_url:
                raise ValueError("backend 'openai' needs base_url (the API root, e.g. http://host:8000/v1)")
            if self.replicas:
                raise ValueError("backend 'openai' takes no replicas (its endpoint is base_url)")
        elif self.base_url or self.api_key_env:
            raise ValueError(
                f"backend {self.backend!r} takes no base_url/api_key_env "
                "(it runs on llmesh inference replicas)"
            )
        return self

    @property
    def on_inference_replicas(self) -> bool:
        """Whether llmesh inference replicas serve this model (not an HTTP upstream)."""
        return self.backend in INFERENCE_BACKENDS

    @property
    def upstream_model(self) -> str:
        """The model name sent to the backend."""
        return self.backend_model or self.name

    @property
    def tokenizer_model(self) -> str:
        """The tokenizer-service model name, or '' when tokens are only estimated."""
        if self.tokenizer:
            return self.tokenizer
        return self.name if self.on_inference_replicas else ""

    def api_key(self) -> str:
        """The API key read from `api_key_env` now ('' when unset)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Price of a request at this model's rates."""
        return (prompt_tokens * self.input_price_per_1k + completion_tokens * self.output_price_per_1k) / 1000


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = Field(min_length=1)


class ModelRegistry:
    """Names and aliases to models, with fallback chains checked once at load."""

    def __init__(self, models: Sequence[ModelSpec]):
        if not models:
            raise RegistryError("the registry lists no models")
        self.models: list[ModelSpec] = list(models)
        self._by_name: dict[str, ModelSpec] = {}
        for spec in self.models:
            for n in (spec.name, *spec.aliases):
                if n == AUTO:
                    raise RegistryError(f"model {spec.name!r}: {AUTO!r} is reserved for automatic routing")
                if n in self._by_name:
                    raise RegistryError(
                        f"name {n!r} is used by both {self._by_name[n].name!r} and {spec.name!r}"
                    )
                self._by_name[n] = spec
        for spec in self.models:
            for fb in spec.fallback:
                target = self._by_name.get(fb)
                if target is None:
                    raise RegistryError(
                        f"model {spec.name!r}: fallback {fb!r} is not a model in the registry"
                    )
                if target.name == spec.name:
                    raise RegistryError(f"model {spec.name!r}: lists itself as a fallback")

    def replica_addrs(self) -> list[str]:
        """Every inference address a model names, in registry order, each once."""
        return list(dict.fromkeys(a for spec in self.models for a in spec.replicas))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> ModelRegistry:
        """Parse registry YAML; every error names the file, the model and the field."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RegistryError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{source}: expected a mapping with a 'models:' list")
        try:
            parsed = _RegistryFile.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = list(err["loc"])
                where = ".".join(str(p) for p in loc)
                if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
                    entry = data.get("models", [])[loc[1]]
                    name = entry.get("name") if isinstance(entry, dict) else None
                    if name:
                        where = f"model {name!r} " + ".".join(str(p) for p in loc[2:])
                problems.append(f"{where}: {err['msg']}")
            raise RegistryError(f"{source}: " + "; ".join(problems)) from None
        try:
            return cls(parsed.models)
        except RegistryError as exc:
            raise RegistryError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> ModelRegistry:
        """Read and parse a registry file."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise RegistryError(f"cannot read model registry {path}: {exc.strerror}") from None
        return cls.from_yaml(text, str(path))

    def get(self, name: str) -> ModelSpec:
        """The model a name or alias refers to."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(s.name for s in self.models))
            raise NotFound(
                f"unknown model {name!r}; available: {known} (or {AUTO!r})", reason="UNKNOWN_MODEL"
            ) from None

    def allowed(self, allowed_names: Iterable[str]) -> list[ModelSpec]:
        """Models a key may use (an empty list allows all); names may be aliases."""
        names = set(allowed_names)
        if not names:
            return list(self.models)
        return [s for s in self.models if names & {s.name, *s.aliases}]

    def check_allowed(self, spec: ModelSpec, allowed_names: Sequence[str]) -> None:
        """PermissionDenied when the key may not use `spec`."""
        if allowed_names and spec not in self.allowed(allowed_names):
            raise PermissionDenied(
                f"this API key may not use model {spec.name!r}; allowed: {', '.join(allowed_names)}",
                reason="MODEL_NOT_ALLOWED",
            )

    def fallback_chain(self, spec: ModelSpec, allowed_names: Sequence[str] = ()) -> list[ModelSpec]:
        """`spec` first, then its fallbacks (transitively, each once) that the key may use."""
        allowed = self.allowed(allowed_names)
        chain: list[ModelSpec] = []
        queue = [spec]
        while queue:
            cur = queue.pop(0)
            if cur in chain:
                continue
            if cur is spec or cur in allowed:
                chain.append(cur)
            queue.extend(self._by_name[f] for f in cur.fallback)
        return chain
