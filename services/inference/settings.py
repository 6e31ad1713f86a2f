"""Inference service settings (environment variables LLMESH_INFERENCE_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """Settings of the inference service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_INFERENCE_", extra="ignore", frozen=True)

    port: int = Field(50055, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(9105, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")
    models_dir: Path = Field(
        Path("build/models"), description="Root of built models (`<name>/<precision>/llmesh-model.json`)."
    )
    models: str = Field(
        "smollm2-135m-int8,smollm2-135m-fp32",
        description="Comma list of `<name>-<precision>` models to serve.",
    )
    backend: Literal["auto", "embedded", "triton"] = Field(
        "auto",
        description="`embedded` (ONNX Runtime in-process), `triton`, or `auto` (triton iff TRITON_URL).",
    )
    triton_url: str = Field("", description="Triton gRPC address `host:port` for the triton backend.")
    max_batch: int = Field(16, gt=0, description="Sequences decoded together per model.")
    max_queue: int = Field(64, gt=0, description="Requests waiting per model before RESOURCE_EXHAUSTED.")
    threads: int = Field(2, gt=0, description="ONNX Runtime intra-op threads per model.")
    max_context: int = Field(
        2048, gt=0, description="Context window served (capped by the model's own); sizes the KV slots."
    )
    default_max_tokens: int = Field(256, gt=0, description="max_tokens when a request leaves it unset.")
    providers: str = Field(
        "CPUExecutionProvider",
        description="ONNX Runtime execution providers for the embedded engine, comma-separated in "
        "priority order (e.g. `CUDAExecutionProvider,CPUExecutionProvider` with onnxruntime-gpu).",
    )
    strict_providers: bool = Field(
        False,
        description="Embedded engine: fail start-up when a requested execution provider is not in use "
        "(else a warning and `llmesh_inference_execution_provider_missing`).",
    )
    prefix_cache: bool = Field(
        True, description="Keep the KV of prompt prefixes and reuse it when a prompt starts the same way."
    )
    prefix_cache_tokens: int = Field(
        4096, gt=0, description="Prompt-prefix tokens cached per model (SmolLM2-135M: 45 KiB each)."
    )
    prefix_block_tokens: int = Field(
        16, gt=0, description="Tokens per prefix-cache block; prefixes are reused in whole blocks."
    )

    @property
    def provider_list(self) -> list[str]:
        """The execution providers as a list."""
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @property
    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @property
    def resolved_backend(self) -> Literal["embedded", "triton"]:
        if self.backend == "auto":
            return "triton" if self.triton_url else "embedded"
        return self.backend
