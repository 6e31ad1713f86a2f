"""Model backends behind the servicer: the embedded engine, or Triton (see triton_backend)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from libs.runtime.errors import NotFound
from services.inference.engine import Engine, EngineConfig
from services.inference.generation import Delta, GenerationRequest
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder
from services.inference.prefix_cache import PrefixCache


@dataclass(frozen=True)
class ModelCard:
    """What ListModels reports for one served model."""

    name: str
    version: str
    context_length: int
    backend: str
    precision: str


class ModelBackend(Protocol):
    """One served model."""

    card: ModelCard

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]: ...

    @property
    def running(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def max_batch(self) -> int: ...

    @property
    def max_queue(self) -> int: ...

    @property
    def prefix_cache(self) -> PrefixCache | None: ...


def model_folder(models_dir: Path, served_name: str) -> ModelFolder:
    """``smollm2-135m-int8`` -> ``<models_dir>/smollm2-135m/int8``."""
    name, sep, precision = served_name.rpartition("-")
    if not sep or not name:
        raise NotFound(f"model name {served_name!r} is not <name>-<precision>")
    return ModelFolder.load(models_dir / name / precision)


class EmbeddedBackend:
    """The continuous-batching engine in this process."""

    def __init__(self, folder: ModelFolder, config: EngineConfig, metrics: EngineMetrics) -> None:
        self.engine = Engine(folder, config, metrics)
        m = folder.manifest
        self.card = ModelCard(m.served_name, m.version, self.engine.context_length, "embedded", m.precision)

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.stop)

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        return self.engine.generate(request)

    @property
    def running(self) -> int:
        return self.engine.running

    @property
    def queued(self) -> int:
        return self.engine.queued

    @property
    def max_batch(self) -> int:
        return self.engine.config.max_batch

    @property
    def max_queue(self) -> int:
        return self.engine.config.max_queue

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.engine.prefix_cache


class ModelRegistry:
    """Served models by name."""

    def __init__(self) -> None:
        self._models: dict[str, ModelBackend] = {}

    def add(self, backend: ModelBackend) -> None:
        self._models[backend.card.name] = backend

    def get(self, name: str) -> ModelBackend:
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(f"model {name!r} is not served here; served: {sorted(self._models)}") from None

    def all(self) -> list[ModelBackend]:
        return list(self._models.values())

    async def start(self) -> None:
        for backend in self._models.values():
            await backend.start()

    async def stop(self) -> None:
        for backend in self._models.values():
            await backend.stop()
