"""Toxicity scoring with the linear offensive-language model of `alt-profanity-check`.

The package's model is a `CalibratedClassifierCV` over five linear SVMs with sigmoid calibration on
unigram TF-IDF features. Its `predict_proba` costs ~3 ms per call in scikit-learn overhead, and
even the vectorizer's `transform` costs ~0.3 ms for one short text. Output is scored once per
streamed chunk, so the same arithmetic runs here in plain Python over a term table read out of
the model once: each vocabulary term maps to its idf and to idf x the five SVMs' weights. A text's
decision values are then sum(count x idf x w) / ||count x idf|| + intercept (the TF-IDF vector is
L2-normalised; raw counts, no sublinear tf), exactly what the vectorizer and the SVMs compute.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from services.safety.findings import Detection

TOXICITY_RULE = "alt-profanity-check"
# Past this exponent 1 / (1 + e^z) is 0 in floating point (and math.exp would overflow).
_EXP_LIMIT = 700.0

# The vectorizer settings the term table reproduces; anything else is refused at load.
_EXPECTED_VECTORIZER = {
    "analyzer": "word",
    "binary": False,
    "lowercase": True,
    "ngram_range": (1, 1),
    "norm": "l2",
    "preprocessor": None,
    "strip_accents": None,
    "sublinear_tf": False,
    "tokenizer": None,
    "use_idf": True,
}


class ToxicityScorer:
    """Probability that a text is offensive."""

    def __init__(self) -> None:
        # Imported here: the package loads its model files at import time.
        from profanity_check import profanity_check

        vectorizer: Any = profanity_check.vectorizer
        params = vectorizer.get_params()
        unexpected = {k: params.get(k) for k, v in _EXPECTED_VECTORIZER.items() if params.get(k) != v}
        if unexpected:
            raise ValueError(f"unexpected profanity_check vectorizer settings: {unexpected}")
        model: Any = profanity_check.model
        members = model.calibrated_classifiers_
        if model.method != "sigmoid" or any(len(m.calibrators) != 1 for m in members):
            raise ValueError("unexpected profanity_check model: need binary sigmoid-calibrated linear models")
        coefs = [m.estimator.coef_.ravel() for m in members]
        idf = vectorizer.idf_
        # Stop words never reach the vocabulary, so looking tokens up in it also drops them.
        self._terms: dict[str, tuple[float, tuple[float, ...]]] = {
            term: (float(idf[j]), tuple(float(idf[j] * c[j]) for c in coefs))
            for term, j in vectorizer.vocabulary_.items()
        }
        self._token = re.compile(vectorizer.token_pattern)
        self._intercept = tuple(float(m.estimator.intercept_[0]) for m in members)
        self._a = tuple(float(m.calibrators[0].a_) for m in members)
        self._b = tuple(float(m.calibrators[0].b_) for m in members)

    def _score(self, text: str) -> float:
        counts = Counter(t for t in self._token.findall(text.lower()) if t in self._terms)
        sums = [0.0] * len(self._intercept)
        norm2 = 0.0
        for term, count in counts.items():
            idf, weights = self._terms[term]
            norm2 += (count * idf) ** 2
            for k, w in enumerate(weights):
                sums[k] += count * w
        scale = 1.0 / math.sqrt(norm2) if norm2 > 0 else 0.0
        total = 0.0
        for s, intercept, a, b in zip(sums, self._intercept, self._a, self._b, strict=True):
            z = a * (s * scale + intercept) + b
            total += 1.0 / (1.0 + math.exp(z)) if z < _EXP_LIMIT else 0.0
        return total / len(self._intercept)

    def scores(self, texts: Sequence[str]) -> list[float]:
        return [self._score(text) for text in texts]

    def detect(self, texts: Sequence[str]) -> list[list[Detection]]:
        """One finding per non-empty text, spanning it, scored by probability."""
        return [
            [Detection("TOXICITY", 0, len(text), round(p, 4), TOXICITY_RULE, "")] if text.strip() else []
            for text, p in zip(texts, self.scores(texts), strict=True)
        ]
