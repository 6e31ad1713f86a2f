"""Shared fixtures: the int8 model is built once (if missing) and one engine serves all tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from services.inference.engine import Engine, EngineConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder
from tests.models import ensure_int8


@pytest.fixture(scope="session")
def int8_folder() -> ModelFolder:
    return ModelFolder.load(ensure_int8())


@pytest.fixture(scope="session")
def tokenizer(int8_folder: ModelFolder) -> Tokenizer:
    return Tokenizer.from_file(str(int8_folder.path / "tokenizer.json"))


@pytest.fixture(scope="session")
def engine(int8_folder: ModelFolder) -> Iterator[Engine]:
    eng = Engine(
        int8_folder,
        EngineConfig(max_batch=8, max_queue=16, max_context=512),
        EngineMetrics(CollectorRegistry()),
    )
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="session")
def chat(tokenizer: Tokenizer):
    def render(question: str) -> tuple[int, ...]:
        text = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        return tuple(tokenizer.encode(text).ids)

    return render
