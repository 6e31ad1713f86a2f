"""Fixtures: the MiniLM ONNX export, built once (idempotent) and loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.embedding import SentenceEmbedder
from libs.embedding.build import build

MODEL_DIR = Path(__file__).resolve().parents[3] / "build" / "models" / "minilm"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    build(MODEL_DIR)
    return MODEL_DIR


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> SentenceEmbedder:
    return SentenceEmbedder.load(model_dir, threads=2)
