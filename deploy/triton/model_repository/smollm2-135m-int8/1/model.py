"""Triton python model: adapts tensors to the llmesh engine; no generation logic lives here.

``execute`` hands each request to the engine and returns at once; the engine thread streams one
response per token through the request's response sender and closes it with the FINAL flag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from prometheus_client import CollectorRegistry

from libs.runtime.errors import LlmeshError
from services.inference.engine import Engine, EngineConfig, Ticket
from services.inference.generation import Delta, FinishReason, GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder

_FINISH = {None: 0, FinishReason.STOP: 1, FinishReason.LENGTH: 2, FinishReason.CANCELLED: 0}


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


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
                error = pb_utils.TritonError(f"{exc.reason}: {exc.message}")
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _submit(self, request: Any, sender: Any) -> None:
        prompt = pb_utils.get_input_tensor_by_name(request, "prompt_token_ids").as_numpy().reshape(-1)
        max_tokens = _scalar(request, "max_tokens")
        sampling = SamplingConfig(
            temperature=float(_scalar(request, "temperature") or 0.0),
            top_p=float(_scalar(request, "top_p") or 1.0),
            top_k=int(_scalar(request, "top_k") or 0),
            max_tokens=int(max_tokens) if max_tokens else None,
            seed=_scalar(request, "seed"),
        )
        ticket: list[Ticket] = []

        def sink(delta: Delta) -> None:
            if sender.is_cancelled():
                if ticket:  # else the next delta cancels it
                    ticket[0].cancel()
                return
            if delta.error is not None:
                error = pb_utils.TritonError(str(delta.error))
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                return
            outputs = [
                pb_utils.Tensor("token_ids", np.asarray(delta.token_ids, np.int32)),
                pb_utils.Tensor("finish_reason", np.asarray([_FINISH[delta.finish_reason]], np.int32)),
            ]
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if delta.finished else 0
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=flags)

        req = GenerationRequest(tuple(int(t) for t in prompt), sampling, request.request_id())
        ticket.append(self.engine.submit(req, sink))

    def finalize(self) -> None:
        self.engine.stop()
