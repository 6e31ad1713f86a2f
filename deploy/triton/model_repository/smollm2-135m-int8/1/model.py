"""Triton python model: adapts tensors to the llmesh engine; no generation logic lives here.

``execute`` hands each request to the engine and returns at once; the engine thread streams one
response per token through the request's response sender and closes it with the FINAL flag.
Tensors and errors are read and written by ``services.inference.triton_wire``, which the Triton
backend of the inference service reads back. The engine's Prometheus metrics stay in this process
(a private registry): the inference service records the same names for the requests it sends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils
from prometheus_client import CollectorRegistry

from libs.runtime.errors import LlmeshError
from services.inference import triton_wire
from services.inference.engine import Engine, EngineConfig, Ticket
from services.inference.generation import Delta
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder


class TritonPythonModel:
    """One engine per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        root = Path(os.environ.get("LLMESH_TRITON_MODELS_DIR", "build/models"))
        folder = ModelFolder.load(root / params["llmesh_model"])
        engine_config = EngineConfig(
            max_batch=int(params.get("max_batch", 16)),
            max_queue=int(params.get("max_queue", 64)),
            threads=int(params.get("threads", 2)),
            max_context=int(params.get("max_context", 2048)),
            providers=tuple(
                p for p in params.get("execution_providers", "CPUExecutionProvider").split(",") if p
            ),
        )
        self.engine = Engine(folder, engine_config, EngineMetrics(CollectorRegistry()), config["name"])
        self.engine.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._submit(request, sender)
            except LlmeshError as exc:
                self._fail(sender, exc)
        return None

    @staticmethod
    def _fail(sender: Any, exc: BaseException) -> None:
        error = pb_utils.TritonError(triton_wire.encode_error(exc))
        sender.send(
            pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )

    def _submit(self, request: Any, sender: Any) -> None:
        def tensor(name: str) -> Any:
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        req = triton_wire.request_from_tensors(tensor, request.request_id())
        ticket: list[Ticket] = []

        def sink(delta: Delta) -> None:
            if sender.is_cancelled():
                if ticket:  # else the next delta cancels it
                    ticket[0].cancel()
                return
            if delta.error is not None:
                self._fail(sender, delta.error)
                return
            outputs = [
                pb_utils.Tensor(name, value)
                for name, value in triton_wire.response_tensors(
                    delta, self.engine.instance_id, self.engine.providers
                )
            ]
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if delta.finished else 0
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=flags)

        ticket.append(self.engine.submit(req, sink, sender.is_cancelled))

    def finalize(self) -> None:
        self.engine.stop()
