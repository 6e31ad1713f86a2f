"""The plain-Python toxicity scorer computes what alt-profanity-check's own model computes."""

from __future__ import annotations

import csv

import pytest

from services.safety.toxicity import ToxicityScorer
from services.safety.train import TOXICITY_SAMPLE


@pytest.fixture(scope="module")
def scorer() -> ToxicityScorer:
    return ToxicityScorer()


def _texts() -> list[str]:
    with TOXICITY_SAMPLE.open(newline="") as f:
        sample = [row["text"] for row in csv.DictReader(f)]
    streamed = "The sea is a vast body of salt water; you are a stupid idiot, and I hate you. " * 3
    return [
        *sample,
        "",
        "   ",
        "the and of",  # stop words only: no features
        "Über naïve café: YOU ARE AN IDIOT!!! idiot idiot",
        "x1 stupid_idiot moron's MORON",
        *(streamed[:n] for n in range(0, len(streamed), 17)),
    ]


def test_scores_match_the_package_model(scorer: ToxicityScorer) -> None:
    from profanity_check import profanity_check

    texts = _texts()
    expected = profanity_check.model.predict_proba(profanity_check.vectorizer.transform(texts))[:, 1]
    got = scorer.scores(texts)
    assert len(got) == len(texts)
    for text, g, e in zip(texts, got, expected, strict=True):
        assert g == pytest.approx(float(e), abs=1e-9), text
    # The sample really spans both classes, so agreement is not between constants.
    assert min(got) < 0.2 and max(got) > 0.9


def test_detect_spans_each_non_empty_text(scorer: ToxicityScorer) -> None:
    found = scorer.detect(["you are a stupid idiot", " "])
    assert [(d.type, d.start, d.end) for d in found[0]] == [("TOXICITY", 0, 22)]
    assert found[1] == []
