"""Serialised form of a cached response: magic, format version, checksum, JSON body.

    b"LMC" | version (1 byte) | blake2b-128 of body (16 bytes) | UTF-8 JSON body

Version 2 adds the prompt's context digest. Version 1 entries still decode, with an unknown
context: they keep serving exact hits but never a semantic one. Anything that does not parse,
carries another version or fails its checksum raises `CorruptEntry`; the cache then counts it,
deletes it and answers a miss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

MAGIC = b"LMC"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, FORMAT_VERSION)
_DIGEST_SIZE = 16
_HEADER = len(MAGIC) + 1 + _DIGEST_SIZE


class CorruptEntry(ValueError):
    """A stored value that is not a valid entry of this format version."""


@dataclass(frozen=True)
class StoredResponse:
    """A cached response plus what a semantic hit must agree with."""

    text: str
    finish_reason: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    created_unix: int = 0
    # Fingerprint of the normalised sampling parameters (a semantic hit needs the same).
    sampling_digest: str = ""
    # The prompt text that was embedded, for the semantic number guard.
    semantic_text: str = ""
    # Fingerprint of the rest of the prompt (a semantic hit needs the same); None = unknown
    # (stored before contexts were recorded), which never matches.
    context_digest: str | None = ""


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest()


def encode(entry: StoredResponse) -> bytes:
    """Serialise an entry."""
    body = json.dumps(
        {
            "text": entry.text,
            "finish_reason": entry.finish_reason,
            "usage": [entry.prompt_tokens, entry.completion_tokens, entry.total_tokens],
            "created_unix": entry.created_unix,
            "sampling": entry.sampling_digest,
            "semantic_text": entry.semantic_text,
            "context": entry.context_digest,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return MAGIC + bytes([FORMAT_VERSION]) + _digest(body) + body


def decode(blob: bytes) -> StoredResponse:
    """Parse an entry; raises CorruptEntry for anything else."""
    if len(blob) < _HEADER or not blob.startswith(MAGIC):
        raise CorruptEntry("not a cache entry (bad magic)")
    version = blob[len(MAGIC)]
    if version not in _READABLE_VERSIONS:
        raise CorruptEntry(f"entry format version {version}, expected {FORMAT_VERSION}")
    checksum, body = blob[len(MAGIC) + 1 : _HEADER], blob[_HEADER:]
    if _digest(body) != checksum:
        raise CorruptEntry("checksum mismatch")
    try:
        data = json.loads(body)
        prompt, completion, total = (int(n) for n in data["usage"])
        context = data["context"] if version >= 2 else None
        if context is not None and not isinstance(context, str):
            raise TypeError(f"context is a {type(context).__name__}")
        return StoredResponse(
            text=str(data["text"]),
            finish_reason=int(data["finish_reason"]),
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            created_unix=int(data["created_unix"]),
            sampling_digest=str(data["sampling"]),
            semantic_text=str(data["semantic_text"]),
            context_digest=context,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptEntry(f"malformed entry body: {err}") from err
