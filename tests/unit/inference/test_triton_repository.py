"""The Triton repository serves every built precision the inference service serves."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.inference.triton_launcher import add_precisions
from tests.models import MODELS, REPO, ensure_int8


def test_other_precisions_get_a_derived_model_folder(tmp_path: Path) -> None:
    ensure_int8()
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "deploy" / "triton" / "model_repository", repo)
    models = tmp_path / "models"
    for precision in ("int8", "fp32"):
        (models / "smollm2-135m" / precision).mkdir(parents=True)
        shutil.copy(
            MODELS / "smollm2-135m" / "int8" / "llmesh-model.json", models / "smollm2-135m" / precision
        )
    added = add_precisions(repo, models, ["smollm2-135m-int8", "smollm2-135m-fp32", "smollm2-135m-int4"])
    assert added == ["smollm2-135m-fp32"]  # int8 ships; int4 is not built in this folder
    config = (repo / "smollm2-135m-fp32" / "config.pbtxt").read_text()
    assert 'name: "smollm2-135m-fp32"' in config and 'string_value: "smollm2-135m/fp32"' in config
    assert "smollm2-135m-int8" not in config
    assert (repo / "smollm2-135m-fp32" / "1" / "model.py").read_text() == (
        repo / "smollm2-135m-int8" / "1" / "model.py"
    ).read_text()
