from __future__ import annotations

from tokenizers import Tokenizer

from services.inference.text_stream import REPLACEMENT, IncrementalDetokenizer, StopMatcher


def test_stop_matcher_cuts_before_full_match() -> None:
    m = StopMatcher(["END"])
    assert m.push("hello E") == "hello "
    assert not m.matched
    assert m.push("ND tail") == ""
    assert m.matched


def test_stop_matcher_releases_false_partial_match() -> None:
    m = StopMatcher(["END"])
    assert m.push("abc EN") == "abc "
    assert m.push("x") == "ENx"
    assert m.push("E") == ""
    assert m.flush() == "E"


def test_stop_matcher_earliest_of_several() -> None:
    m = StopMatcher(["zz", "b"])
    assert m.push("aaabzz") == "aaa"
    assert m.matched


def test_stop_matcher_without_stops_passes_through() -> None:
    m = StopMatcher([])
    assert m.push("anything") == "anything"
    assert m.flush() == ""


def test_detokenizer_never_splits_utf8(tokenizer: Tokenizer) -> None:
    text = "naïve café — 日本語のテキスト 🎉🚀 done"
    ids = tokenizer.encode(text).ids
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(t) for t in ids]
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)
    # Multi-byte characters span several byte-level tokens here, so some pushes must hold text back.
    assert any(d == "" for d in deltas)
