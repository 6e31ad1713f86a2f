"""Policy parsing/merging and output-stream hold-back, without models or network."""

from __future__ import annotations

import pytest

from services.safety.audit import AuditLog
from services.safety.policy import DEFAULT_POLICY_FILE, Action, Direction, PolicyError, PolicyStore
from services.safety.streaming import OutputStream, StreamClosed, holdback_start

POLICY = """
defaults:
  input:
    EMAIL: {action: redact}
    PROMPT_INJECTION: {action: block, threshold: 0.8}
  output:
    CREDIT_CARD: {action: redact}
    AWS_ACCESS_KEY: {action: block}
tenants:
  lax:
    restore_redacted: false
    input:
      PROMPT_INJECTION: {threshold: 0.95}
"""


def test_tenant_override_merges_key_by_key() -> None:
    store = PolicyStore.from_yaml(POLICY)
    lax = store.get("lax")
    assert lax.input.rule("PROMPT_INJECTION").action is Action.BLOCK
    assert lax.input.decide("PROMPT_INJECTION", 0.9) is Action.ALLOW
    assert store.get("other").input.decide("PROMPT_INJECTION", 0.9) is Action.BLOCK
    assert lax.input.decide("EMAIL", 1.0) is Action.REDACT
    assert not lax.restore_redacted and store.get("other").restore_redacted


def test_injection_threshold_setting_applies_before_tenants() -> None:
    store = PolicyStore.from_yaml(POLICY, injection_threshold=0.5)
    assert store.get("x").input.decide("PROMPT_INJECTION", 0.6) is Action.BLOCK
    assert store.get("lax").input.decide("PROMPT_INJECTION", 0.9) is Action.ALLOW


@pytest.mark.parametrize(
    "doc",
    [
        "defaults: {input: {EMAIL: {action: maybe}}}",
        "defaults: {input: {EMAIL: {action: redact, threshold: 2}}}",
        "defaults: {input: {TOXICITY: {action: redact}}}",
        "defaults: {colour: blue}",
        "defaults: {input: {email: {action: redact}}}",
        "tenants: [a, b]",
    ],
)
def test_malformed_policies_are_rejected(doc: str) -> None:
    with pytest.raises(PolicyError):
        PolicyStore.from_yaml(doc)


def test_shipped_policy_loads_and_round_trips() -> None:
    store = PolicyStore.load(DEFAULT_POLICY_FILE)
    policy = store.get("support")
    assert policy.output.decide("EMAIL", 0.99) is Action.REDACT
    again = PolicyStore.from_yaml(
        "defaults:\n" + "\n".join("  " + line for line in policy.to_yaml().splitlines()[1:])
    )
    assert again.get("x").output.rule("EMAIL") == policy.output.rule("EMAIL")


def _stream(restore: dict[str, str] | None = None) -> OutputStream:
    store = PolicyStore.from_yaml(POLICY)
    return OutputStream(store.get("t"), AuditLog("t", "r", Direction.OUTPUT), restore or {}, None)


def test_plain_words_are_released_up_to_the_last_token() -> None:
    step = _stream().feed("Hello there, how are you")
    assert step.text == "Hello there, how are "
    assert step.action is Action.ALLOW


def test_holdback_covers_digit_runs_and_partial_pem() -> None:
    text = "pay with 4111 1111 11"
    assert text[holdback_start(text, 0) :] == "4111 1111 11"
    text = "the key -----BEGIN RSA"
    assert text[holdback_start(text, 0) :] == "-----BEGIN RSA"


def test_card_split_in_chunks_is_redacted_once_complete() -> None:
    stream = _stream()
    out = [stream.feed(c).text for c in ("card 4111 ", "1111 1111 ", "1111 ok ")]
    out.append(stream.feed("", end_of_stream=True).text)
    assert "".join(out) == "card [CREDIT_CARD_1] ok "
    assert stream.closed
    with pytest.raises(StreamClosed):
        stream.feed("more")


def test_block_ends_stream_and_restores_placeholders_before_it() -> None:
    stream = _stream({"[EMAIL_1]": "ana@example.com"})
    first = stream.feed("write to [EMAIL_1] now ")
    assert first.text == "write to ana@example.com now "
    blocked = stream.feed("key AKIAIOSFODNN7EXAMPLE")
    assert blocked.action is Action.BLOCK and blocked.text == ""
    assert "AWS_ACCESS_KEY" in blocked.reason
    assert stream.closed
