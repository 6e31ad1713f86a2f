"""Prompt-injection and jailbreak detection: phrase rules plus a trained embedding classifier.

The rules catch the well-known phrasings outright; the classifier (logistic regression on
MiniLM sentence embeddings, trained by `python -m services.safety.train`) scores everything else.
Long messages are scored in overlapping word windows and the highest window wins, so an
injection buried at the end of a long document is not diluted away.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from libs.embedding import SentenceEmbedder
from services.safety.findings import Detection

HEAD_FILE = "injection_head.json"
METRICS_FILE = "injection_metrics.json"
CLASSIFIER_RULE = "classifier:minilm-logreg"
# Window size and stride, in words, for scoring long messages.
WINDOW_WORDS = 160
WINDOW_STRIDE = 120
# Texts with fewer words are left to the rules: the training data has almost no short benign
# turns, so the head is unreliable on them.
MIN_WORDS = 4

_RULES: tuple[tuple[str, float, str], ...] = (
    (
        "ignore_previous_instructions",
        0.99,
        r"\b(?:ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?\b(?:previous|prior|above|"
        r"earlier|preceding|all|any|your|the|these|those)\b[^.\n]{0,30}?\b(?:instructions?|prompts?|"
        r"rules|directions|directives|guidelines|guardrails|constraints|context)\b",
    ),
    (
        "persona_jailbreak",
        0.98,
        r"\b(?:you\s+are\s+(?:now\s+)?|act\s+as\s+|pretend\s+to\s+be\s+|become\s+)(?:DAN|STAN|DUDE|AIM|"
        r"an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken)\s+(?:AI|model|assistant|chatbot))\b"
        r"|\bdo\s+anything\s+now\b",
    ),
    (
        "system_prompt_exfiltration",
        0.97,
        r"\b(?:reveal|show|print|repeat|output|display|tell\s+me|give\s+me|leak|dump|disclose|what\s+(?:is|are|"
        r"was|were))\b[^.\n]{0,40}?\b(?:your\s+|the\s+)?(?:system|initial|hidden|original|secret|internal)"
        r"\s+(?:prompt|instructions?|message|directives?|rules|configuration)\b"
        r"|\brepeat\s+(?:the\s+|all\s+)?(?:words|text|everything)\s+above\b",
    ),
    (
        "mode_switch",
        0.95,
        r"\b(?:enable|activate|enter|switch\s+to|turn\s+on)\s+(?:developer|debug|god|jailbreak|admin|sudo)"
        r"\s+mode\b",
    ),
    (
        "restriction_removal",
        0.9,
        r"\b(?:you\s+(?:have|are)\s+(?:no|free\s+(?:of|from))|without\s+any|ignore\s+(?:all\s+)?(?:your\s+)?)"
        r"\s*(?:restrictions|filters|limitations|safety\s+guidelines|content\s+policy|censorship|ethical\s+"
        r"guidelines)\b",
    ),
    (
        "chat_template_injection",
        0.95,
        r"<\|im_start\|>\s*system|<\|system\|>|\[/?INST\]|<<SYS>>|^\s*#{2,}\s*(?:system|new\s+instructions)\s*:",
    ),
)
RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = tuple(
    (name, score, re.compile(pattern, re.IGNORECASE | re.MULTILINE)) for name, score, pattern in _RULES
)


def find_injection_phrases(text: str) -> list[Detection]:
    """Rule findings: well-known injection and jailbreak phrasings."""
    return [
        Detection("PROMPT_INJECTION", m.start(), m.end(), score, f"rule:{name}", m.group(0))
        for name, score, pattern in RULES
        for m in pattern.finditer(text)
    ]


def windows(text: str) -> list[str]:
    """`text` itself when short, else overlapping windows of WINDOW_WORDS words."""
    words = text.split()
    if len(words) <= WINDOW_WORDS:
        return [text]
    starts = range(0, max(1, len(words) - WINDOW_WORDS + WINDOW_STRIDE), WINDOW_STRIDE)
    return [" ".join(words[s : s + WINDOW_WORDS]) for s in starts]


@dataclass(frozen=True)
class InjectionHead:
    """Logistic-regression weights over sentence embeddings."""

    weights: npt.NDArray[np.float32]
    bias: float
    embedding_fingerprint: str

    @classmethod
    def load(cls, head_dir: str | Path) -> InjectionHead:
        path = Path(head_dir) / HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; train it with `python -m services.safety.train`")
        data = json.loads(path.read_text())
        weights = np.asarray(data["weights"], dtype=np.float32)
        return cls(weights, float(data["bias"]), str(data.get("embedding_fingerprint", "")))

    def save(self, head_dir: Path, extra: dict[str, object]) -> None:
        payload = {
            "weights": [float(w) for w in self.weights],
            "bias": self.bias,
            "embedding_fingerprint": self.embedding_fingerprint,
            **extra,
        }
        (head_dir / HEAD_FILE).write_text(json.dumps(payload) + "\n")

    def probabilities(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        logits = vectors.astype(np.float64) @ self.weights.astype(np.float64) + self.bias
        result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logits))
        return result


class InjectionClassifier:
    """Scores texts with the trained head; one probability per text (max over its windows).

    A score is a pure function of the text and the loaded model, so recent scores are kept in a
    bounded LRU keyed by the text's digest: a repeated prompt (the case a cache hit serves) skips
    the embedding, which is most of the cost of input screening.
    """

    def __init__(self, embedder: SentenceEmbedder, head: InjectionHead, memo_entries: int = 8192) -> None:
        if head.weights.shape != (embedder.dim,):
            raise ValueError(f"head has {head.weights.shape[0]} weights, embedder gives {embedder.dim}")
        self._embedder = embedder
        self._head = head
        self._memo: OrderedDict[bytes, float] = OrderedDict()
        self._memo_entries = memo_entries
        self._lock = threading.Lock()

    def _remembered(self, digest: bytes) -> float | None:
        with self._lock:
            score = self._memo.get(digest)
            if score is not None:
                self._memo.move_to_end(digest)
            return score

    def _remember(self, digest: bytes, score: float) -> None:
        with self._lock:
            self._memo[digest] = score
            self._memo.move_to_end(digest)
            while len(self._memo) > self._memo_entries:
                self._memo.popitem(last=False)

    def scores(self, texts: Sequence[str]) -> list[float]:
        digests = [
            hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts
        ]
        result = [self._remembered(d) for d in digests]
        owners: list[int] = []
        pieces: list[str] = []
        for i, text in enumerate(texts):
            if result[i] is None:
                for piece in windows(text):
                    owners.append(i)
                    pieces.append(piece)
        fresh: dict[int, float] = {i: 0.0 for i, r in enumerate(result) if r is None}
        if pieces:
            probabilities = self._head.probabilities(self._embedder.embed(pieces))
            for owner, p in zip(owners, probabilities, strict=True):
                fresh[owner] = max(fresh[owner], float(p))
        for i, score in fresh.items():
            self._remember(digests[i], score)
            result[i] = score
        return [float(r) for r in result if r is not None]

    def detect(self, texts: Sequence[str]) -> list[list[Detection]]:
        """Classifier findings per text, spanning the whole text, scored by probability."""
        return [
            [Detection("PROMPT_INJECTION", 0, len(text), round(p, 4), CLASSIFIER_RULE, "")]
            if len(text.split()) >= MIN_WORDS
            else []
            for text, p in zip(texts, self.scores(texts), strict=True)
        ]
