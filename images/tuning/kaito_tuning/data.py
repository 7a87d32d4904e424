"""Training data: files in, tokenized examples with loss masks out.

Accepted files: JSONL, JSON (a list of records), Parquet and CSV; a directory means
every such file in it, sorted. A record is one of
- `{"messages": [{"role", "content"}, ...]}` (OpenAI chat format): rendered with the
  model's chat template; only assistant turns are trained on;
- `{"prompt": ..., "completion": ...}`: only the completion is trained on;
- `{"text": ...}`: every token is trained on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataError(Exception):
    """The dataset cannot be read or holds no usable record."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


def data_files(sources: Sequence[str | Path]) -> list[Path]:
    """The files named by `sources` (files, or directories scanned for known suffixes)."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            files.extend(found)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise DataError(f"{path}: unsupported file type (use one of {', '.join(SUFFIXES)})")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no data files in {', '.join(map(str, sources))}")
    return files


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one file, as dicts."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: invalid JSON: {exc}") from exc
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of records")
        yield from data
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if isinstance(row.get("messages"), str):  # chat records stored as JSON text
                    row["messages"] = json.loads(row["messages"])
                yield dict(row)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: unsupported file type")


def _ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _chat_example(tokenizer: Any, messages: list[dict[str, Any]]) -> Example:
    def render(turns: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=generation_prompt
        )
        return _ids(tokenizer, text, special=False)

    input_ids = render(messages, False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[: i + 1], False))
        labels[start:end] = input_ids[start:end]
    return Example(input_ids=input_ids, labels=labels)


def to_example(tokenizer: Any, record: dict[str, Any]) -> Example:
    """Tokenize one record; raises DataError for a record of no known shape."""
    if isinstance(record.get("messages"), list):
        return _chat_example(tokenizer, record["messages"])
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        prompt = _ids(tokenizer, record["prompt"], special=True)
        completion = _ids(tokenizer, record["completion"], special=False)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return Example(
            input_ids=prompt + completion + eos,
            labels=[IGNORE_INDEX] * len(prompt) + completion + eos,
        )
    if isinstance(record.get("text"), str):
        ids = _ids(tokenizer, record["text"], special=True)
        return Example(input_ids=ids, labels=list(ids))
    raise DataError(
        f"record has none of 'messages', 'prompt'+'completion', 'text': {record!r:.200}"
    )


def load_examples(
    tokenizer: Any, sources: Sequence[str | Path], *, max_seq_len: int
) -> list[Example]:
    """Tokenized, truncated examples from every file; examples with no loss are dropped."""
    examples = []
    for path in data_files(sources):
        for record in _records(path):
            example = to_example(tokenizer, record)
            ids, labels = example.input_ids[:max_seq_len], example.labels[:max_seq_len]
            if any(label != IGNORE_INDEX for label in labels[1:]):
                examples.append(Example(input_ids=ids, labels=labels))
    if not examples:
        raise DataError("the dataset holds no example with tokens to train on")
    return examples


def _records(path: Path) -> Iterable[dict[str, Any]]:
    for record in read_records(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}: every record must be an object, got {record!r:.100}")
        yield record
