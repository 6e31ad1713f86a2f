"""`make bench`: run every benchmark in turn, each printing its own table and writing JSON.

Benchmarks are not tests: they measure, print and write `build/bench/<name>.json`; nothing here
asserts a time. Run on an otherwise idle machine and quote medians and ratios from one run.
Pass names to run a subset: `python bench/run_all.py inference cache`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("safety", "cache", "inference", "prefix_cache", "edge", "mesh", "cache_e2e", "replicas")


def main() -> None:
    wanted = sys.argv[1:] or [n for n in ORDER if (ROOT / "bench" / f"{n}.py").exists()]
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": {},
    }
    failed = []
    for name in wanted:
        print(f"\n=== bench/{name}.py ===", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, check=False)
        took = time.perf_counter() - start
        summary["runs"][name] = {"exit_code": proc.returncode, "seconds": round(took, 1)}  # type: ignore[index]
        if proc.returncode != 0:
            failed.append(name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nresults in {out}/ ; failed: {', '.join(failed) or 'none'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
