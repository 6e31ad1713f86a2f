"""Architecture rules: shared libs never import a service; services never import each other
(they talk only through generated stubs); generated stubs match protos/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _py_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if "gen" not in p.relative_to(ROOT).parts[:2]]


def test_libs_never_import_services() -> None:
    offenders = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in _py_files(ROOT / "libs")
        for m in _imports(p)
        if m == "services" or m.startswith("services.")
    ]
    assert offenders == []


def test_services_never_import_each_other() -> None:
    offenders = []
    for service in (ROOT / "services").iterdir():
        if not (service / "__init__.py").exists():
            continue
        for p in _py_files(service):
            for m in _imports(p):
                parts = m.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != service.name:
                    offenders.append(f"{p.relative_to(ROOT)} imports {m}")
    assert offenders == []


def test_generated_stubs_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, "protos/generate.py", "--out", "libs/gen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_buf_lint_is_clean() -> None:
    buf = Path(sys.executable).parent / "buf"
    proc = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
