"""Automatic model choice for `model: "auto"`: a transparent complexity estimate, then the cheapest fit.

The estimate adds up visible signals, so the reason in RouteInfo can say exactly why:

- prompt length: +1 above 1,000 tokens, +2 above 3,000;
- requested completion: +1 when max_tokens is above 512;
- keywords found in the system and user turns: code +2, maths +2, step-by-step reasoning +1.

The score maps to the tier the request needs (0-1 → tier 1, 2-3 → tier 2, 4+ → tier 3). Among the
models the key may use whose context fits prompt + max_tokens, the router takes those whose tier
is at least the needed one and picks the cheapest for this request; when none is capable enough
it takes the most capable model that fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.runtime.errors import InvalidArgument
from services.router.registry import ModelSpec

KEYWORD_WEIGHTS = {"code": 2, "maths": 2, "step-by-step": 1}
KEYWORDS: dict[str, re.Pattern[str]] = {
    "code": re.compile(
        r"\b(code|function|python|javascript|typescript|rust|golang|java|sql|regex|bug|debug|compile|"
        r"stack ?trace|class|algorithm|refactor)\b|```",
        re.IGNORECASE,
    ),
    "maths": re.compile(
        r"\b(math|maths|mathematics|equation|integral|derivative|theorem|proof|prove|calculate|"
        r"probability|matrix|algebra)\b|[0-9]\s*[\^*/]\s*[0-9]",
        re.IGNORECASE,
    ),
    "step-by-step": re.compile(
        r"\b(step[- ]by[- ]step|reason(ing)? (through|carefully)|think carefully|explain why|analy[sz]e|"
        r"compare|trade-?offs?)\b",
        re.IGNORECASE,
    ),
}
LONG_PROMPT_TOKENS = 1000
VERY_LONG_PROMPT_TOKENS = 3000
LONG_COMPLETION_TOKENS = 512


@dataclass(frozen=True)
class Complexity:
    """The complexity estimate of one request and the signals behind it."""

    score: int
    needed_tier: int
    signals: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The estimate in words."""
        why = ", ".join(self.signals) if self.signals else "no complexity signals"
        return f"complexity {self.score} ({why}) needs tier >= {self.needed_tier}"


def estimate(text: str, prompt_tokens: int, max_tokens: int) -> Complexity:
    """Score a request from its prompt length, requested completion and keywords in `text`."""
    score = 0
    signals: list[str] = []
    if prompt_tokens > VERY_LONG_PROMPT_TOKENS:
        score += 2
        signals.append(f"prompt {prompt_tokens} tokens > {VERY_LONG_PROMPT_TOKENS}")
    elif prompt_tokens > LONG_PROMPT_TOKENS:
        score += 1
        signals.append(f"prompt {prompt_tokens} tokens > {LONG_PROMPT_TOKENS}")
    if max_tokens > LONG_COMPLETION_TOKENS:
        score += 1
        signals.append(f"max_tokens {max_tokens} > {LONG_COMPLETION_TOKENS}")
    for kind, pattern in KEYWORDS.items():
        if pattern.search(text):
            score += KEYWORD_WEIGHTS[kind]
            signals.append(f"{kind} keywords +{KEYWORD_WEIGHTS[kind]}")
    needed = 1 if score <= 1 else 2 if score <= 3 else 3
    return Complexity(score=score, needed_tier=needed, signals=signals)


@dataclass(frozen=True)
class RouteDecision:
    """The model chosen and why, in words a person can check."""

    model: ModelSpec
    reason: str


def choose(candidates: Sequence[ModelSpec], text: str, prompt_tokens: int, max_tokens: int) -> RouteDecision:
    """Pick the cheapest capable model whose context fits; see the module docstring."""
    if not candidates:
        raise InvalidArgument("this API key may not use any model", reason="NO_MODEL_ALLOWED")
    cx = estimate(text, prompt_tokens, max_tokens)
    need = prompt_tokens + max_tokens
    fitting = [m for m in candidates if m.context_length >= need]
    if not fitting:
        largest = max(m.context_length for m in candidates)
        raise InvalidArgument(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {need} exceeds the largest "
            f"context window available to this key ({largest}); shorten the prompt or lower max_tokens",
            reason="CONTEXT_TOO_LONG",
        )

    def cost(m: ModelSpec) -> tuple[float, int, str]:
        return (m.cost_usd(prompt_tokens, max_tokens), m.tier, m.name)

    capable = [m for m in fitting if m.tier >= cx.needed_tier]
    if capable:
        best = min(capable, key=cost)
        reason = (
            f"auto: {cx.describe()}; {best.name} (tier {best.tier}) is the cheapest of "
            f"{len(capable)} capable model(s) whose context fits {need} tokens"
        )
    else:
        best = max(fitting, key=lambda m: (m.tier, -m.cost_usd(prompt_tokens, max_tokens)))
        reason = (
            f"auto: {cx.describe()}; no model reaches that tier, so {best.name} "
            f"(tier {best.tier}, the most capable that fits) was chosen"
        )
    return RouteDecision(model=best, reason=reason)
