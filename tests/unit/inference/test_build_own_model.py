"""`make model MODEL=/path/to/hf-folder`: a user's own Hugging Face causal LM is built under its own
name and served by the engine, token for token like transformers' greedy decoding of it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.inference import build_model
from services.inference.backends import model_folder
from services.inference.engine import Engine, EngineConfig
from services.inference.generation import GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from tests.models import MODELS, REPO

SMOLLM_HF = MODELS / "smollm2-135m" / "hf"
NEW_TOKENS = 8


def _tiny_llama(folder: Path, seed: int) -> None:
    """A randomly initialised Llama with tiny dimensions and SmolLM2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not (SMOLLM_HF / "tokenizer.json").exists():
        pytest.fail(f"model not built: run `make model` (missing {SMOLLM_HF})")
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        initializer_range=0.5,  # wide logits: greedy picks are not near-ties
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(SMOLLM_HF / name, folder / name)


def _build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.inference.build_model", "--source", str(source),
            "--out", str(out), "--precisions", "fp32"]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True)


def _transformers_greedy(source: Path, prompt: list[int]) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
    tokens = [int(t) for t in out[0, len(prompt) :]]
    return tokens[: tokens.index(2)] if 2 in tokens else tokens


def test_own_hf_folder_is_built_under_its_name_and_served(tmp_path: Path) -> None:
    source, out = tmp_path / "Tiny_Llama", tmp_path / "models"
    _tiny_llama(source, seed=0)
    log = _build(source, out).stderr
    built = out / "tiny_llama" / "fp32"
    assert "serve with LLMESH_INFERENCE_MODELS=tiny_llama-fp32" in log
    model = model_folder(out, "tiny_llama-fp32")  # how LLMESH_INFERENCE_MODELS names are found
    assert model.path == built and model.manifest.served_name == "tiny_llama-fp32"
    assert model.layout.num_layers == 2 and model.layout.vocab_size == 49152
    assert not (out / "smollm2-135m").exists()

    prompt = [1, 504, 3287, 314, 260, 2114, 282]
    engine = Engine(model, EngineConfig(max_batch=2, max_context=64), EngineMetrics(CollectorRegistry()))
    engine.start()
    try:

        async def run() -> list[int]:
            request = GenerationRequest(tuple(prompt), SamplingConfig(max_tokens=NEW_TOKENS))
            return [t async for d in engine.generate(request) for t in d.token_ids]

        tokens = asyncio.run(run())
    finally:
        engine.stop()
    assert len(tokens) >= 1
    assert tokens == _transformers_greedy(source, prompt)

    # Built from this source already: a no-op. Other weights under the same name are built again
    # (checked on the stamp, which decides it, to spare a second builder run).
    assert "is complete, skipping" in _build(source, out).stderr
    _tiny_llama(source, seed=1)
    assert not build_model.stamped(built, build_model.source_fingerprint(source))


def test_names_come_from_the_folder() -> None:
    assert build_model.model_name(Path("/data/Qwen2.5-0.5B-Instruct")) == "qwen2.5-0.5b-instruct"
    assert build_model.model_name(Path("/data/my model (v2)")) == "my-model-v2"


def test_make_model_passes_source_name_and_precisions() -> None:
    def dry(*args: str) -> str:
        run = subprocess.run(["make", "-n", "model-source", *args], cwd=REPO, capture_output=True, text=True)
        return run.stdout

    line = dry("MODEL=/data/Some_Model", "NAME=mine", "PRECISIONS=int8")
    assert "--source /data/Some_Model" in line and "--name mine" in line and "--precisions int8" in line
    assert "--name" not in dry("MODEL=/data/Some_Model")  # the build derives it from the folder


def test_default_build_keeps_stamps_written_before_sources_were_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / build_model.MANIFEST_NAME).write_text("{}")
    (folder / build_model.STAMP).write_text("1d1b75c83eda\n")
    assert build_model.stamped(folder, "gguf:SmolLM2-135M-Instruct.Q4_1.gguf:1")
    assert not build_model.stamped(folder, "0123abcd")
