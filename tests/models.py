"""The built models tests use, built on demand (the Makefile builds them before the suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "build" / "models"
INT8 = MODELS / "smollm2-135m" / "int8"


def ensure_int8() -> Path:
    """The int8 model folder, building it first when it is missing."""
    if not (INT8 / "llmesh-model.json").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "services.inference.build_model",
                "--out",
                str(MODELS),
                "--precisions",
                "int8",
            ],
            cwd=REPO,
            check=True,
        )
    return INT8
