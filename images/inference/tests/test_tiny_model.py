"""The stand-in model speaks: greedy answers are clean words from its training text, on
both engines through the server; the pre-training is cached once per machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from harness import Artifacts
from kaito_inference.tiny_model import (
    MARKER,
    build_tiny_model,
    corpus,
    pretrained,
    recipe_key,
    words,
)

QUESTIONS = ("What is Kubernetes?", "hello world", "How do I serve a model?")


@pytest.fixture(scope="module")
def vocabulary() -> set[str]:
    return words(corpus())


def word_share(text: str, vocabulary: set[str]) -> float:
    """The share of whitespace-separated tokens that, stripped of punctuation around
    them, are alphabetic words of the training text."""
    tokens = [t.strip(".,;:!?()[]{}'\"`") for t in text.split()]
    tokens = [t for t in tokens if t]
    assert tokens, f"no words at all in {text!r}"
    good = [t for t in tokens if t.isascii() and t.isalpha() and t.lower() in vocabulary]
    return len(good) / len(tokens)


def assert_readable(text: str, vocabulary: set[str]) -> None:
    assert "\ufffd" not in text, f"a replacement character in {text!r}"
    assert all(c.isprintable() or c == "\n" for c in text), f"control characters in {text!r}"
    share = word_share(text, vocabulary)
    assert share >= 0.8, f"only {share:.0%} of {text!r} are words of the corpus"


def test_greedy_answers_are_words_of_the_training_text(
    artifacts: Artifacts, vocabulary: set[str]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(artifacts.model))
    model = AutoModelForCausalLM.from_pretrained(str(artifacts.model), dtype=torch.float32)
    for question in QUESTIONS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
        assert_readable(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True), vocabulary)


@pytest.mark.parametrize("question", QUESTIONS[:1])
def test_the_server_answers_in_words(
    client: openai.OpenAI, vocabulary: set[str], question: str
) -> None:
    answer = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        temperature=0,
    )
    assert_readable(answer.choices[0].message.content or "", vocabulary)


def test_the_pre_training_is_cached_once_per_machine(artifacts: Artifacts, tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    folder = pretrained(progress=lines.append)  # built by the session's `artifacts`
    assert time.monotonic() - started < 5.0
    assert lines == [], "a second call must not train again"
    marker = json.loads((folder / MARKER).read_text())
    assert marker["key"] == recipe_key(corpus()) == folder.name
    assert marker["training"]["last_loss"] < marker["training"]["first_loss"]
    # A copy with another context length, left alone when asked again.
    copy = build_tiny_model(tmp_path / "m", max_position_embeddings=256, progress=lines.append)
    assert json.loads((copy / "config.json").read_text())["max_position_embeddings"] == 256
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(copy, max_position_embeddings=256) == copy
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp
    assert lines == []


def test_another_seed_or_corpus_is_another_model() -> None:
    paragraphs = corpus()
    assert recipe_key(paragraphs) == recipe_key(list(paragraphs))
    assert recipe_key(paragraphs, seed=1) != recipe_key(paragraphs)
    assert recipe_key(paragraphs[:-1]) != recipe_key(paragraphs)


def test_a_folder_that_is_not_a_model_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no model"):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
