"""Key format, parsing and digests."""

from __future__ import annotations

import pytest

from libs.keys import apikey


def test_generated_keys_parse_back_and_differ() -> None:
    a, b = apikey.generate(), apikey.generate()
    assert a != b
    assert apikey.parse(a.plaintext) == a
    assert a.plaintext.startswith(f"llm-{a.key_id}-")
    assert apikey.is_key_id(a.key_id)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "llm-",
        "sk-0123456789abcdef-" + "a" * 40,
        "llm-0123456789ABCDEF-" + "a" * 40,  # upper-case id
        "llm-0123456789abcde-" + "a" * 40,  # short id
        "llm-0123456789abcdef-" + "a" * 39,  # short secret
        "llm-0123456789abcdef-" + "a" * 39 + "!",
        "llm-0123456789abcdef-" + "a" * 40 + "\n",
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(apikey.MalformedKey) as info:
        apikey.parse(text)
    if len(text) > 8:
        assert text not in str(info.value)


def test_repr_hides_the_secret() -> None:
    key = apikey.generate()
    assert key.secret not in repr(key)
    assert key.key_id in repr(key)


def test_digest_depends_on_pepper_and_secret() -> None:
    key = apikey.generate()
    other = apikey.ParsedKey(key.key_id, apikey.generate().secret)
    d = apikey.digest(b"pepper-1", key)
    assert apikey.matches(b"pepper-1", key, d)
    assert not apikey.matches(b"pepper-2", key, d)
    assert not apikey.matches(b"pepper-1", other, d)
    assert key.secret not in d


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("abc", "abc"),
        ("", ""),
        (None, ""),
        ("Basic abc", "Basic abc"),
    ],
)
def test_bearer_token(header: str | None, token: str) -> None:
    assert apikey.bearer_token(header) == token
