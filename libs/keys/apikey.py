"""API key format, generation and hashing (pure functions, no I/O).

A key reads `llm-<key_id>-<secret>`: `key_id` is 16 hex digits, public, and names the Redis record;
`secret` is 40 characters from a 62-letter alphabet (about 238 bits) drawn from `secrets`.

Only `HMAC-SHA256(pepper, key)` is stored. The secret is random and long, so a slow password hash
(scrypt, argon2) would add nothing against guessing while costing milliseconds on every request
that misses the cache; the pepper, a server-side secret that never goes into Redis, means a dump
of Redis alone cannot be used to test candidate keys offline. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

PREFIX = "llm"
KEY_ID_HEX = 16
SECRET_LEN = 40
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"^{PREFIX}-([0-9a-f]{{{KEY_ID_HEX}}})-([A-Za-z0-9]{{{SECRET_LEN}}})$")
_KEY_ID_RE = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}$")


class MalformedKey(ValueError):
    """The text is not an llmesh API key."""


@dataclass(frozen=True)
class ParsedKey:
    """A syntactically valid key split into its parts. `repr` never shows the secret."""

    key_id: str
    secret: str

    @property
    def plaintext(self) -> str:
        """The full key as the client sends it."""
        return f"{PREFIX}-{self.key_id}-{self.secret}"

    def __repr__(self) -> str:
        return f"ParsedKey(key_id={self.key_id!r}, secret=<redacted>)"


def generate() -> ParsedKey:
    """A new random key."""
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LEN))
    return ParsedKey(key_id, secret)


def parse(text: str) -> ParsedKey:
    """Split `llm-<key_id>-<secret>`; raises `MalformedKey` (without echoing the text) otherwise."""
    match = _KEY_RE.fullmatch(text)
    if match is None:
        raise MalformedKey(
            f"malformed API key: expected {PREFIX}-<{KEY_ID_HEX} hex digits>-<{SECRET_LEN} letters or digits>"
        )
    return ParsedKey(match.group(1), match.group(2))


def is_key_id(text: str) -> bool:
    """Whether `text` looks like a key id (what `revoke` takes)."""
    return _KEY_ID_RE.fullmatch(text) is not None


def bearer_token(header: str | None) -> str:
    """The token of an `authorization` value: `Bearer <token>` (case-insensitive) or a bare token."""
    value = (header or "").strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    return value


def digest(pepper: bytes, key: ParsedKey) -> str:
    """HMAC-SHA256 of the full key under the server's pepper, as hex."""
    return hmac.new(pepper, key.plaintext.encode("ascii"), hashlib.sha256).hexdigest()


def matches(pepper: bytes, key: ParsedKey, stored_digest: str) -> bool:
    """Constant-time check of a presented key against the stored digest."""
    return hmac.compare_digest(digest(pepper, key), stored_digest)
