"""Incremental detokenization (transformers engine) and adapter discovery."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from harness import Artifacts
from kaito_inference.adapters import adapter_rank, scan
from kaito_inference.engines.detokenize import IncrementalDecoder


@pytest.fixture(scope="module")
def tokenizer(artifacts: Artifacts) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(artifacts.model))


def stream(decoder: IncrementalDecoder, ids: list[int], step: int) -> list[str]:
    pieces = [decoder.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    return [*pieces, decoder.finish()]


@pytest.mark.parametrize("seed", range(5))
def test_streamed_text_equals_the_full_decode(tokenizer: Any, seed: int) -> None:
    rng = random.Random(seed)
    ids = [rng.randrange(len(tokenizer)) for _ in range(200)]  # invalid UTF-8 runs included
    for step in (1, 3):
        pieces = stream(IncrementalDecoder(tokenizer), ids, step)
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_truncates_and_is_never_streamed(tokenizer: Any) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, stop=("jumps", "never there"))
    pieces = stream(decoder, ids, 1)
    assert "".join(pieces) == "the quick brown fox "
    assert decoder.stopped
    assert all("j" not in piece for piece in pieces)


def test_without_a_stop_match_everything_held_back_is_flushed(tokenizer: Any) -> None:
    ids = tokenizer.encode("one two three", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, stop=("a much longer stop string",))
    pieces = stream(decoder, ids, 1)
    assert pieces[-1]  # the hold-back came out at the end
    assert "".join(pieces) == "one two three"
    assert not decoder.stopped


def test_scan_finds_adapters_with_strength_from_the_environment(
    artifacts: Artifacts, tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    shutil.copytree(artifacts.adapters / "alpha", root / "alpha")
    shutil.copytree(artifacts.adapters / "beta", root / "beta")
    shutil.copytree(artifacts.adapters / "beta", root / "bad name!")
    (root / "not-an-adapter").mkdir()
    (root / "a-file").write_text("x")
    found = scan(root, env={"alpha": "0.5", "beta": "strong"})
    assert list(found) == ["alpha", "beta"]
    assert found["alpha"].strength == 0.5
    assert found["beta"].strength == 1.0  # unparsable: ignored with a warning
    assert found["alpha"].path == (root / "alpha").resolve()
    assert adapter_rank(found["alpha"].path) == 8
    assert scan(tmp_path / "missing") == {}
    assert scan(None) == {}
