"""Our sandboxed chat-template rendering and tokenization match transformers' reference output."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.runtime.errors import InvalidArgument
from services.tokenizer.chat_template import ChatTemplate
from services.tokenizer.tokenization import Message, TokenizerRegistry

HF = Path(__file__).resolve().parents[3] / "build" / "models" / "smollm2-135m" / "hf"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, in Grüße-Deutsch? 東京 🚀"},
    ],
]


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(HF), local_files_only=True)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_and_ids_match_transformers(reference, conversation, add_generation_prompt: bool) -> None:
    registry = TokenizerRegistry()
    registry.add("m", HF)
    messages = [Message(role=t["role"], content=t["content"]) for t in conversation]
    prompt = registry.render_chat("m", messages, add_generation_prompt)
    expected = reference.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert prompt == expected
    _, ids = registry.apply_chat_template("m", messages, add_generation_prompt)
    assert ids == reference.encode(expected, add_special_tokens=False)


def test_plain_encode_decode_match_transformers(reference) -> None:
    registry = TokenizerRegistry()
    registry.add("m", HF)
    text = "Tokenizers: ünïcödé, code `x = 1`, and 12345."
    assert registry.encode("m", text) == reference.encode(text, add_special_tokens=False)
    ids = registry.encode("m", text)
    assert registry.decode("m", ids) == reference.decode(ids)


def test_template_errors_are_invalid_argument() -> None:
    template = ChatTemplate("{{ raise_exception('only user turns, please') }}", {})
    with pytest.raises(InvalidArgument, match="only user turns"):
        template.render([{"role": "user", "content": "x"}], True)


def test_template_is_sandboxed() -> None:
    template = ChatTemplate("{{ ''.__class__.__subclasses__() }}", {})
    with pytest.raises(InvalidArgument, match="is unsafe"):
        template.render([], False)
