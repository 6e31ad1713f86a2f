"""Per-request token sampling: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

import numpy as np

from services.inference.generation import SamplingConfig


class Sampler:
    """Picks the next token from one row of logits.

    Each request owns its own numpy Generator, so a seeded request draws the same random numbers
    whatever else shares its batch.
    """

    def __init__(self, config: SamplingConfig) -> None:
        self._config = config
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        cfg = self._config
        if cfg.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / cfg.temperature
        vocab = scaled.shape[0]
        if 0 < cfg.top_k < vocab:
            candidates = np.argpartition(scaled, vocab - cfg.top_k)[vocab - cfg.top_k :]
        else:
            candidates = np.arange(vocab)
        values = scaled[candidates]
        if cfg.top_p < 1.0:
            order = np.argsort(-values, kind="stable")
            candidates, values = candidates[order], values[order]
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        if cfg.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), cfg.top_p)) + 1
            candidates, probs = candidates[:keep], probs[:keep]
        cumulative = np.cumsum(probs)
        pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return int(candidates[min(pick, len(candidates) - 1)])
