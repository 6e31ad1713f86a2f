"""Entry serialisation: round trip, and every kind of corruption is detected."""

from __future__ import annotations

import pytest

from services.cache.codec import FORMAT_VERSION, MAGIC, CorruptEntry, StoredResponse, decode, encode

ENTRY = StoredResponse("Paris ünïcode", 1, 7, 2, 9, 1_700_000_000, "abcd", "capital of France?")


def test_round_trip() -> None:
    assert decode(encode(ENTRY)) == ENTRY


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
