"""What a built model folder contains: its manifest and the graph layout read from genai_config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

MANIFEST_NAME = "llmesh-model.json"


class ModelManifest(BaseModel):
    """``llmesh-model.json``: written by the build, read by every backend."""

    name: str
    """Model name without precision, e.g. ``smollm2-135m``."""
    precision: str
    """Weight precision: fp32, int8 or int4."""
    version: str
    """Short sha256 of the weights; changes whenever they change."""
    context_length: int
    """Context window the model was trained for, in tokens."""
    eos_token_ids: list[int]
    """Token ids that end a generation."""

    @property
    def served_name(self) -> str:
        """Name clients use: ``<name>-<precision>``."""
        return f"{self.name}-{self.precision}"


@dataclass(frozen=True)
class GraphLayout:
    """Input/output names and KV shapes of a genai-built decoder graph."""

    input_ids: str
    attention_mask: str
    position_ids: str | None
    logits: str
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    vocab_size: int

    def past_names(self, layer: int) -> tuple[str, str]:
        """Past key/value input names of one layer."""
        return self.past_key % layer, self.past_value % layer

    def present_names(self, layer: int) -> tuple[str, str]:
        """Present key/value output names of one layer."""
        return self.present_key % layer, self.present_value % layer


@dataclass(frozen=True)
class ModelFolder:
    """A self-contained precision folder: graph, tokenizer, manifest."""

    path: Path
    manifest: ModelManifest
    layout: GraphLayout
    genai_eos: tuple[int, ...]

    @classmethod
    def load(cls, path: Path) -> ModelFolder:
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} missing: run python -m services.inference.build_model")
        manifest = ModelManifest.model_validate_json(manifest_path.read_text())
        genai = json.loads((path / "genai_config.json").read_text())["model"]
        dec = genai["decoder"]
        inputs, outputs = dec["inputs"], dec["outputs"]
        layout = GraphLayout(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs.get("position_ids"),
            logits=outputs["logits"],
            past_key=inputs["past_key_names"],
            past_value=inputs["past_value_names"],
            present_key=outputs["present_key_names"],
            present_value=outputs["present_value_names"],
            num_layers=int(dec["num_hidden_layers"]),
            num_kv_heads=int(dec["num_key_value_heads"]),
            head_size=int(dec["head_size"]),
            vocab_size=int(genai["vocab_size"]),
        )
        return cls(path=path, manifest=manifest, layout=layout, genai_eos=tuple(manifest.eos_token_ids))

    @property
    def graph(self) -> Path:
        return self.path / "model.onnx"
