"""Generate Python stubs (messages, gRPC, type stubs) from protos/ into an output folder.

Run through `make gen`; the output is never edited by hand. `--check` regenerates into a
temporary folder and fails when the committed tree differs, so stale stubs are caught.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
SOURCES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "llmesh").rglob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc with the python, grpc and mypy plugins over every llmesh proto."""
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{ROOT / 'vendor'}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *SOURCES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    for pkg in [out / "llmesh", *(p for p in (out / "llmesh").rglob("*") if p.is_dir())]:
        (pkg / "__init__.py").touch()
        (pkg / "py.typed").touch() if pkg == out / "llmesh" else None


def differs(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (ignoring __pycache__)."""
    names = set()
    for root in (a, b):
        names |= {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    return sorted(
        n
        for n in names
        if not ((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (holds llmesh/)")
    parser.add_argument("--check", action="store_true", help="fail if --out is stale")
    ns = parser.parse_args()
    if not ns.check:
        if (ns.out / "llmesh").exists():
            shutil.rmtree(ns.out / "llmesh")
        generate(ns.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = differs(Path(tmp) / "llmesh", ns.out / "llmesh")
    if stale:
        raise SystemExit("generated stubs are stale or hand-edited; run `make gen`:\n  " + "\n  ".join(stale))
    print("generated stubs are fresh")


if __name__ == "__main__":
    main()
