"""What identifies a cacheable request: normalised sampling, namespaces, entry hashes and ids.

Two requests share an exact entry only when tenant, model, model version, normalised sampling
parameters and prompt token ids are all equal. Normalisation fills defaults, rounds floats and
sorts the stop list, and drops parameters that cannot change a greedy decode (top_p, top_k and
seed under temperature 0), so equivalent requests hash to the same key.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from libs.runtime.errors import InvalidArgument

# Bump when the hashed layout changes: old entries then simply stop matching.
KEY_SCHEMA = 1
FLOAT_DIGITS = 4
KEY_PREFIX = "lc"


class CacheMode(enum.IntEnum):
    """Whether a request may use the cache (values match llmesh.cache.v1.CacheMode)."""

    AUTO = 1
    FORCE = 2
    BYPASS = 3


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters as the caller sent them; None means the model default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class NormalSampling:
    """Sampling parameters with defaults filled in and irrelevant ones dropped."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...]

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or top_k 1): always the most likely token."""
        return self.temperature == 0.0

    @property
    def deterministic(self) -> bool:
        """The same prompt always gives the same output: greedy, or sampled with a fixed seed."""
        return self.greedy or self.seed is not None

    def canonical(self) -> dict[str, object]:
        """A JSON-ready dict with a fixed field order (part of the hashed key)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }

    def digest(self) -> str:
        """Short fingerprint, stored with semantic entries so a hit needs equal sampling."""
        raw = json.dumps(self.canonical(), separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def normalise(sampling: Sampling) -> NormalSampling:
    """Fill defaults, round floats, sort the stop list; raises InvalidArgument when out of range."""
    temperature = round(float(sampling.temperature or 0.0), FLOAT_DIGITS)
    top_p = round(float(1.0 if sampling.top_p is None else sampling.top_p), FLOAT_DIGITS)
    top_k = int(sampling.top_k or 0)
    max_tokens = int(sampling.max_tokens or 0)
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(f"temperature must be in [0, 2], got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or max_tokens < 0:
        raise InvalidArgument("top_k and max_tokens must not be negative")
    seed = sampling.seed
    if top_k == 1:
        temperature = 0.0
    if temperature == 0.0:
        top_p, top_k, seed = 1.0, 0, None
    return NormalSampling(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_tokens=max_tokens,
        seed=seed,
        stop=tuple(sorted(set(sampling.stop))),
    )


def _hex(part: str) -> str:
    """Hex of the UTF-8 bytes: safe inside Redis key names and SCAN glob patterns."""
    return part.encode().hex()


@dataclass(frozen=True)
class Namespace:
    """Entries of one tenant, model and model version; semantic search never leaves it."""

    tenant: str
    model: str
    model_version: str

    @property
    def prefix(self) -> str:
        """Redis key prefix of everything in this namespace."""
        return f"{KEY_PREFIX}:{_hex(self.tenant)}:{_hex(self.model)}:{_hex(self.model_version)}:"

    def entry_key(self, entry_hash: str) -> str:
        """Key of a stored response."""
        return f"{self.prefix}e:{entry_hash}"

    def lease_key(self, entry_hash: str) -> str:
        """Key of the single-flight lease for an entry."""
        return f"{self.prefix}l:{entry_hash}"

    def entry_id(self, entry_hash: str) -> str:
        """Opaque id a caller passes back to Invalidate."""
        return f"{_hex(self.tenant)}.{_hex(self.model)}.{_hex(self.model_version)}.{entry_hash}"


def tenant_pattern(tenant: str, model: str = "") -> str:
    """SCAN pattern matching every key of a tenant, or of one model of a tenant."""
    if model:
        return f"{KEY_PREFIX}:{_hex(tenant)}:{_hex(model)}:*"
    return f"{KEY_PREFIX}:{_hex(tenant)}:*"


def parse_entry_id(entry_id: str) -> tuple[Namespace, str]:
    """Namespace and entry hash of an id from `Namespace.entry_id`; InvalidArgument otherwise."""
    parts = entry_id.split(".")
    try:
        if len(parts) != 4 or len(parts[3]) != 64:
            raise ValueError("wrong shape")
        int(parts[3], 16)
        tenant, model, version = (bytes.fromhex(p).decode() for p in parts[:3])
    except ValueError as err:
        raise InvalidArgument(f"malformed entry_id {entry_id!r}") from err
    return Namespace(tenant, model, version), parts[3]


@dataclass(frozen=True)
class CacheKey:
    """A request as the cache sees it."""

    tenant: str
    model: str
    model_version: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    prompt_token_ids: Sequence[int] = ()
    semantic_text: str = ""
    # Fingerprint of the prompt around semantic_text; a semantic hit needs an equal one.
    context_digest: str = ""

    @property
    def namespace(self) -> Namespace:
        """The tenant/model/version namespace."""
        return Namespace(self.tenant, self.model, self.model_version)

    def validate(self) -> None:
        """Raise InvalidArgument when the key cannot identify anything."""
        if not self.tenant or not self.model:
            raise InvalidArgument("key.tenant and key.model are required")
        if not self.prompt_token_ids and not self.semantic_text:
            raise InvalidArgument("key needs prompt_token_ids or semantic_text")


def entry_hash(key: CacheKey, sampling: NormalSampling) -> str:
    """sha256 over tenant, model, version, normalised sampling and prompt tokens (hex).

    The prompt tokens already cover the context, so context_digest enters only a key without
    tokens.
    """
    header = {
        "schema": KEY_SCHEMA,
        "tenant": key.tenant,
        "model": key.model,
        "model_version": key.model_version,
        "sampling": sampling.canonical(),
    }
    h = hashlib.sha256(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    h.update(b"\x00tokens\x00")
    h.update(np.asarray(key.prompt_token_ids, dtype="<i4").tobytes())
    if not key.prompt_token_ids:
        # A semantic-only entry (no tokens) is keyed by its text and context instead.
        h.update(b"\x00text\x00")
        h.update(key.semantic_text.encode())
        if key.context_digest:
            h.update(b"\x00context\x00")
            h.update(key.context_digest.encode())
    return h.hexdigest()
