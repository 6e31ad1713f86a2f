"""Tokenizer service settings (environment variables LLMESH_TOKENIZER_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.settings import ServiceSettings


class TokenizerSettings(ServiceSettings):
    """Settings of the tokenizer service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_TOKENIZER_", extra="ignore", frozen=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")
    models_dir: Path = Field(
        Path("build/models"), description="Folder of model folders (`<name>/hf/tokenizer.json`)."
    )
    max_text_bytes: int = Field(
        1 << 20, gt=0, description="Largest text accepted by Encode/CountTokens, bytes."
    )
