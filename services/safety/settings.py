"""Safety service settings (environment variables LLMESH_SAFETY_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.settings import ServiceSettings
from services.safety.policy import DEFAULT_POLICY_FILE


class SafetySettings(ServiceSettings):
    """Settings of the safety service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_SAFETY_", extra="ignore", frozen=True)

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(9103, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")
    policy_file: Path = Field(
        DEFAULT_POLICY_FILE, description="Policy YAML (defaults + per-tenant overrides)."
    )
    model_dir: Path = Field(
        Path("build/models/minilm"),
        description="MiniLM ONNX folder built by `python -m libs.embedding.build`.",
    )
    head_dir: Path = Field(
        Path("build/safety"), description="Injection head folder built by `python -m services.safety.train`."
    )
    injection_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Replaces the default policy's PROMPT_INJECTION threshold when set."
    )
    embed_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads for the embedder.")
    max_text_chars: int = Field(
        200_000, gt=0, description="Largest text (per message, per chunk) accepted, in characters."
    )
    max_holdback_chars: int = Field(
        512, gt=0, description="Most output text held back while a match could still complete, characters."
    )
