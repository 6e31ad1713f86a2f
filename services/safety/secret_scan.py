"""Credential detectors: cloud keys, PEM private keys, JWTs, bearer tokens, high-entropy strings.

Known formats are matched by structure (AWS key-id prefixes over the base32 alphabet, PEM armour,
JWT headers that decode to JSON naming an `alg`); anything else that looks like a key is judged by
its Shannon entropy, with a lower bar when a word such as `api_key=` or `password:` precedes it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

from services.safety.findings import Detection

_AWS_KEY_ID = re.compile(
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z2-7]{16}(?![A-Za-z0-9])"
)
_AWS_SECRET = re.compile(
    r"(?i)aws_?secret(?:_?access)?_?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
_API_KEYS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("github_token", re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])")),
    ("slack_token", re.compile(r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}(?![A-Za-z0-9-])")),
    ("google_api_key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])")),
    ("stripe_key", re.compile(r"(?<![A-Za-z0-9_])(?:sk|rk)_live_[A-Za-z0-9]{20,}(?![A-Za-z0-9_])")),
    ("openai_key", re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-)?[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")),
)
_PEM = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----(?:[\s\S]*?-----END \1-----)?")
_JWT = re.compile(
    r"(?<![A-Za-z0-9_.-])(eyJ[A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)(?![A-Za-z0-9_.-])"
)
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)(?![A-Za-z0-9._~+/=-])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/=_-])")
_KEY_CONTEXT = re.compile(
    r"(?i)(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|credential|auth)[\"']?\s*(?:[:=]|is)\s*[\"']?$"
)

# Shannon entropy (bits per character) a token must reach to count as a secret.
HEX_ENTROPY_MIN = 3.0
BASE64_ENTROPY_MIN = 4.2
CONTEXT_ENTROPY_MIN = 3.2
HEX_MIN_LENGTH = 32


def shannon_entropy(s: str) -> float:
    """Bits per character of `s` under its own character distribution."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def find_jwts(text: str) -> Iterator[Detection]:
    for m in _JWT.finditer(text):
        try:
            header = _b64url_json(m.group(1))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if isinstance(header, dict) and isinstance(header.get("alg"), str):
            yield Detection("JWT", m.start(), m.end(), 0.99, "jwt:header", m.group(0))


def find_entropy_secrets(text: str) -> Iterator[Detection]:
    for m in _TOKEN.finditer(text):
        token = m.group(0).rstrip("=")
        has_digit = any(c.isdigit() for c in token)
        has_lower = any(c.islower() for c in token)
        has_upper = any(c.isupper() for c in token)
        if not has_digit or not (has_lower or has_upper):
            continue
        entropy = shannon_entropy(token)
        in_context = _KEY_CONTEXT.search(text, max(0, m.start() - 40), m.start()) is not None
        is_hex = re.fullmatch(r"[0-9a-fA-F]+", token) is not None
        if in_context and entropy >= CONTEXT_ENTROPY_MIN:
            yield Detection("SECRET", m.start(), m.end(), 0.95, "entropy:context", m.group(0))
        elif is_hex and len(token) >= HEX_MIN_LENGTH and entropy >= HEX_ENTROPY_MIN:
            yield Detection("SECRET", m.start(), m.end(), 0.7, "entropy:hex", m.group(0))
        elif has_lower and has_upper and entropy >= BASE64_ENTROPY_MIN:
            score = min(0.9, 0.6 + (entropy - BASE64_ENTROPY_MIN))
            yield Detection("SECRET", m.start(), m.end(), round(score, 3), "entropy:base64", m.group(0))


def find_secrets(text: str) -> list[Detection]:
    """Every credential finding in `text`, overlaps not yet resolved."""
    found: list[Detection] = []
    for m in _PEM.finditer(text):
        rule = (
            "pem:block"
            if m.group(0).rstrip().endswith("-----") and "-----END" in m.group(0)
            else "pem:header"
        )
        found.append(Detection("PRIVATE_KEY", m.start(), m.end(), 0.99, rule, m.group(0)))
    found.extend(
        Detection("AWS_ACCESS_KEY", m.start(), m.end(), 0.99, "aws:key_id", m.group(0))
        for m in _AWS_KEY_ID.finditer(text)
    )
    found.extend(
        Detection("AWS_SECRET_KEY", m.start(1), m.end(1), 0.97, "aws:secret_key", m.group(1))
        for m in _AWS_SECRET.finditer(text)
    )
    for rule, pattern in _API_KEYS:
        found.extend(
            Detection("API_KEY", m.start(), m.end(), 0.97, rule, m.group(0)) for m in pattern.finditer(text)
        )
    found.extend(find_jwts(text))
    found.extend(
        Detection("BEARER_TOKEN", m.start(1), m.end(1), 0.9, "bearer", m.group(1))
        for m in _BEARER.finditer(text)
    )
    found.extend(find_entropy_secrets(text))
    return found
