"""Policy-aware hold-back: only a suffix that could still become an acting finding waits."""

from __future__ import annotations

from services.safety.audit import AuditLog
from services.safety.policy import DEFAULT_POLICY_FILE, Action, Direction, PolicyStore
from services.safety.streaming import ALL_TAILS, TAILS_BY_TYPE, OutputStream, tails_for

# Every span type allowed on output except payment cards.
CARDS_ONLY = """
defaults:
  output:
    default: {action: allow}
    CREDIT_CARD: {action: redact}
"""


def _stream(store: PolicyStore, tenant: str = "t", restore: dict[str, str] | None = None) -> OutputStream:
    return OutputStream(store.get(tenant), AuditLog(tenant, "r", Direction.OUTPUT), restore or {}, None)


def _default_store() -> PolicyStore:
    return PolicyStore.load(DEFAULT_POLICY_FILE)


def test_allowed_email_does_not_delay_release_under_the_default_output_policy() -> None:
    step = _stream(_default_store()).feed("Write to ana@example.com.")
    # E-mail is allowed on output by default: nothing here could still become a card, IBAN,
    # SSN or secret, so the whole chunk goes out at once (the trailing token used to wait).
    assert step.text == "Write to ana@example.com."
    assert [d.detection.type for d in step.decisions] == ["EMAIL"]
    assert step.decisions[0].action is Action.ALLOW


def test_redacted_email_is_still_held_until_complete() -> None:
    # The `support` tenant redacts e-mails on output: the trailing token waits.
    stream = _stream(_default_store(), "support")
    first = stream.feed("Write to ana@exam")
    assert first.text == "Write to "
    rest = stream.feed("ple.com now", end_of_stream=True)
    assert rest.text == "[EMAIL_1] now"


def test_trailing_word_still_waits_while_secrets_are_redacted() -> None:
    # With the default policy a word could still grow into a high-entropy secret.
    assert _stream(_default_store()).feed("The sea").text == "The "


def test_allowed_types_hold_nothing_back() -> None:
    stream = _stream(PolicyStore.from_yaml(CARDS_ONLY))
    step = stream.feed("Hello there, write to ana@exa")
    assert step.text == "Hello there, write to ana@exa"
    assert step.action is Action.ALLOW


def test_card_split_across_three_chunks_is_caught_when_only_cards_act() -> None:
    stream = _stream(PolicyStore.from_yaml(CARDS_ONLY))
    out = [stream.feed(c).text for c in ("card 4111 11", "11 1111 11", "11 ok")]
    out.append(stream.feed("", end_of_stream=True).text)
    assert "".join(out) == "card [CREDIT_CARD_1] ok"
    assert out[0] == "card "


def test_placeholder_under_way_is_held_while_restoring() -> None:
    stream = _stream(PolicyStore.from_yaml(CARDS_ONLY), restore={"[EMAIL_1]": "ana@example.com"})
    assert stream.feed("Sent to [EMA").text == "Sent to "
    assert stream.feed("IL_1] ok", end_of_stream=True).text == "ana@example.com ok"


def test_tails_follow_the_acting_types() -> None:
    default_output = _default_store().get("t").output
    tails = tails_for(default_output, restoring=False)
    assert set(TAILS_BY_TYPE["SECRET"]) <= set(tails)
    assert set(TAILS_BY_TYPE["CREDIT_CARD"]) <= set(tails)
    # E-mail's own pattern (any trailing token) is not needed when e-mails are allowed.
    assert TAILS_BY_TYPE["EMAIL"][0] not in tails
    support_output = _default_store().get("support").output
    assert TAILS_BY_TYPE["EMAIL"][0] in tails_for(support_output, restoring=False)
    allow_all = PolicyStore.from_yaml("defaults: {output: {default: {action: allow}}}").get("t").output
    assert tails_for(allow_all, restoring=False) == ()
    assert len(tails_for(allow_all, restoring=True)) == 1
    redact_all = PolicyStore.from_yaml("defaults: {output: {default: {action: redact}}}").get("t").output
    assert set(ALL_TAILS) <= set(tails_for(redact_all, restoring=False))
