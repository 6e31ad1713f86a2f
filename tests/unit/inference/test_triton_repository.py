"""The Triton repository serves every built precision the inference service serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.inference.triton_launcher import add_precisions, set_parameters
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


def test_a_model_of_another_name_is_served_from_the_shipped_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "deploy" / "triton" / "model_repository", repo)
    models = tmp_path / "models"
    (models / "tiny-llama" / "int4").mkdir(parents=True)
    (models / "tiny-llama" / "int4" / "llmesh-model.json").write_text("{}")
    assert add_precisions(repo, models, ["tiny-llama-int4"]) == ["tiny-llama-int4"]
    config = (repo / "tiny-llama-int4" / "config.pbtxt").read_text()
    assert 'name: "tiny-llama-int4"' in config and 'string_value: "tiny-llama/int4"' in config
    assert "smollm2" not in config.split("name:", 1)[1]


def test_set_parameters_rewrites_every_model_and_refuses_unknown_keys(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "deploy" / "triton" / "model_repository", repo)
    set_parameters(repo, {"max_batch": "4", "max_queue": "2"})
    config = (repo / "smollm2-135m-int8" / "config.pbtxt").read_text()
    assert 'key: "max_batch"\n    value: { string_value: "4" }' in config
    assert 'key: "max_queue"\n    value: { string_value: "2" }' in config
    with pytest.raises(SystemExit, match="no_such"):
        set_parameters(repo, {"no_such": "1"})
