"""Entry serialisation: round trip, and every kind of corruption is detected."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from services.cache.codec import FORMAT_VERSION, MAGIC, CorruptEntry, StoredResponse, decode, encode

ENTRY = StoredResponse("Paris ünïcode", 1, 7, 2, 9, 1_700_000_000, "abcd", "capital of France?", "ctx1")


def test_round_trip() -> None:
    assert decode(encode(ENTRY)) == ENTRY
    assert decode(encode(replace(ENTRY, context_digest=""))).context_digest == ""


def _signed(version: int, body: dict[str, object]) -> bytes:
    raw = json.dumps(body).encode()
    return MAGIC + bytes([version]) + hashlib.blake2b(raw, digest_size=16).digest() + raw


def test_a_format_1_entry_decodes_with_an_unknown_context() -> None:
    body: dict[str, object] = {
        "text": "Paris",
        "finish_reason": 1,
        "usage": [1, 2, 3],
        "created_unix": 5,
        "sampling": "abcd",
        "semantic_text": "capital?",
    }
    entry = decode(_signed(1, body))
    assert entry.text == "Paris" and entry.context_digest is None
    # format 2 must carry a context (a string or null)
    with pytest.raises(CorruptEntry):
        decode(_signed(2, body))
    with pytest.raises(CorruptEntry):
        decode(_signed(2, {**body, "context": 7}))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"garbage",
        MAGIC + bytes([FORMAT_VERSION + 1]) + encode(ENTRY)[4:],
        encode(ENTRY)[:-1] + b"X",
        encode(ENTRY)[:-5],
    ],
)
def test_corruption_is_detected(blob: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode(blob)
