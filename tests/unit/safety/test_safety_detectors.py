"""PII and secret detectors: validated matches found, look-alikes rejected."""

from __future__ import annotations

import base64
import json

import pytest

from services.safety.findings import Detection, resolve_overlaps
from services.safety.pii import card_network, find_pii, iban_valid, luhn_valid, ssn_valid
from services.safety.secret_scan import find_secrets, shannon_entropy


def found(text: str) -> list[tuple[str, str]]:
    return [(d.type, d.value) for d in resolve_overlaps(find_pii(text) + find_secrets(text))]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to jane.doe+news@example.co.uk today", "EMAIL", "jane.doe+news@example.co.uk"),
        ("visa 4111 1111 1111 1111 ok", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("amex 378282246310005.", "CREDIT_CARD", "378282246310005"),
        ("mc 5555-5555-5555-4444", "CREDIT_CARD", "5555-5555-5555-4444"),
        ("iban DE89 3704 0044 0532 0130 00 THEN", "IBAN", "DE89 3704 0044 0532 0130 00"),
        ("GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
        ("ssn 123-45-6789", "US_SSN", "123-45-6789"),
        ("host 192.168.10.20 is down", "IP_ADDRESS", "192.168.10.20"),
        ("v6 2001:db8::8a2e:370:7334 up", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("call +44 20 7946 0958 now", "PHONE", "+44 20 7946 0958"),
        ("office (415) 555-2671", "PHONE", "(415) 555-2671"),
        ("mobile 06 12 34 56 78", "PHONE", "06 12 34 56 78"),
        ("I was born on 12 March 1990.", "DATE_OF_BIRTH", "12 March 1990"),
        ("DOB: 1985-07-23", "DATE_OF_BIRTH", "1985-07-23"),
        ("id AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
        (
            "tok ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "API_KEY",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        ),
        ("api_key=9f8e7d6c5b4a39281706f5e4", "SECRET", "9f8e7d6c5b4a39281706f5e4"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_SECRET_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (
            "the value Zq8vN2pX7rT4mK9wB3yL6hF1sD5gJ0cV is what broke",
            "SECRET",
            "Zq8vN2pX7rT4mK9wB3yL6hF1sD5gJ0cV",
        ),
        (
            "digest 3f9a1c7e5b2d8046a1f3c5e7b9d2046813579bdf0a2c4e6f",
            "SECRET",
            "3f9a1c7e5b2d8046a1f3c5e7b9d2046813579bdf0a2c4e6f",
        ),
        ("Authorization: Bearer abcDEF123456ghiJKL789", "BEARER_TOKEN", "abcDEF123456ghiJKL789"),
    ],
)
def test_detects(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text)
    match = next(d for d in resolve_overlaps(find_pii(text) + find_secrets(text)) if d.type == kind)
    assert text[match.start : match.end] == value


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123 shipped",  # no issuer, fails Luhn
        "card 4111 1111 1111 1112",  # Luhn fails
        "DE89 3704 0044 0532 0130 01",  # mod-97 fails (reported at most as a weak phone)
        "SSN 666-12-3456 and 000-12-3456 and 123-00-4567",  # invalid ranges
        "version 999.1.1.1 and time 12:30:45",
        "meeting on 01/02/2023 at 2023-01-15, ref 12345678, year 2024",
        "born on 31/02/1990",
        "path /usr/local/lib/python3.11/site-packages and uuid 550e8400-e29b-41d4-a716-446655440000",
        "a..b@example.com is not an address",
        # long ordinary tokens: identifiers, a repeated pattern, long words, paths
        "see InternationalizationConfigurationManager and transformers_modeling_utils",
        "ababababababababababababababababababab",
        "antidisestablishmentarianism pneumonoultramicroscopic",
        "src/services/router/inference_client.py",
    ],
)
def test_rejects_look_alikes(text: str) -> None:
    strong = [d for d in resolve_overlaps(find_pii(text) + find_secrets(text)) if d.score >= 0.7]
    assert strong == []


def test_private_key_block_and_bare_header() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    kinds = [(d.type, d.rule) for d in find_secrets(f"key:\n{pem}\nand -----BEGIN PRIVATE KEY-----")]
    assert ("PRIVATE_KEY", "pem:block") in kinds
    assert ("PRIVATE_KEY", "pem:header") in kinds


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_jwt_needs_a_header_with_alg() -> None:
    good = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJlLWJ5dGVz"
    bad = f"{_b64({'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJlLWJ5dGVz"
    assert [d.type for d in find_secrets(f"t={good}") if d.type == "JWT"] == ["JWT"]
    assert [d.type for d in find_secrets(f"t={bad}") if d.type == "JWT"] == []


def test_validators() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert card_network("4111111111111111") == "visa"
    assert card_network("9111111111111111") is None
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST1234569876543")
    assert ssn_valid("123", "45", "6789") and not ssn_valid("900", "45", "6789")
    assert shannon_entropy("aaaa") == 0.0 and shannon_entropy("abcd") == pytest.approx(2.0)


def test_offsets_are_code_points() -> None:
    text = "héllo 😀 mail: ana@exämple.com? no, ana@example.com"
    emails = [d for d in find_pii(text) if d.type == "EMAIL"]
    assert [text[d.start : d.end] for d in emails] == ["ana@example.com"]


def test_overlap_prefers_stronger_type() -> None:
    card = Detection("CREDIT_CARD", 0, 19, 0.99, "card:visa", "x")
    phone = Detection("PHONE", 5, 19, 0.9, "phone:national", "y")
    assert resolve_overlaps([phone, card]) == [card]
