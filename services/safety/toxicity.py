"""Toxicity scoring with the linear offensive-language model of `alt-profanity-check`.

The package's model is a `CalibratedClassifierCV` over five linear SVMs with sigmoid calibration on
unigram TF-IDF features. Its `predict_proba` costs ~3 ms per call in scikit-learn overhead, so the
weights are read out once and the same arithmetic runs in numpy (~0.4 ms, mostly TF-IDF).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from services.safety.findings import Detection

TOXICITY_RULE = "alt-profanity-check"


class ToxicityScorer:
    """Probability that a text is offensive."""

    def __init__(self) -> None:
        # Imported here: the package loads its model files at import time.
        from profanity_check import profanity_check

        self._vectorizer: Any = profanity_check.vectorizer
        model: Any = profanity_check.model
        members = model.calibrated_classifiers_
        if model.method != "sigmoid" or any(len(m.calibrators) != 1 for m in members):
            raise ValueError("unexpected profanity_check model: need binary sigmoid-calibrated linear models")
        self._coef = np.vstack([m.estimator.coef_.ravel() for m in members]).astype(np.float64).T
        self._intercept = np.array([float(m.estimator.intercept_[0]) for m in members])
        self._a = np.array([float(m.calibrators[0].a_) for m in members])
        self._b = np.array([float(m.calibrators[0].b_) for m in members])

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        features = self._vectorizer.transform(list(texts))
        decision: npt.NDArray[np.float64] = np.asarray(features @ self._coef) + self._intercept
        probabilities = 1.0 / (1.0 + np.exp(self._a * decision + self._b))
        return [float(p) for p in probabilities.mean(axis=1)]

    def detect(self, texts: Sequence[str]) -> list[list[Detection]]:
        """One finding per non-empty text, spanning it, scored by probability."""
        return [
            [Detection("TOXICITY", 0, len(text), round(p, 4), TOXICITY_RULE, "")] if text.strip() else []
            for text, p in zip(texts, self.scores(texts), strict=True)
        ]
