"""Reading training data in every accepted format, loss masks, and the training config."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from kaito_tuning.config import ConfigError, load_config
from kaito_tuning.data import IGNORE_INDEX, DataError, data_files, load_examples, to_example

CHAT = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "one two"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "three"},
    ]
}


def trained_text(tokenizer: Any, record: dict[str, Any]) -> str:
    example = to_example(tokenizer, record)
    return tokenizer.decode(
        [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab != IGNORE_INDEX]
    )


def test_chat_records_train_on_assistant_turns_only(tokenizer: Any) -> None:
    assert trained_text(tokenizer, CHAT) == "one two<|end|>three<|end|>"


def test_prompt_completion_and_text_records(tokenizer: Any) -> None:
    assert trained_text(tokenizer, {"prompt": "the cat", "completion": " sat"}) == " sat</s>"
    assert trained_text(tokenizer, {"text": "the cat sat"}) == "the cat sat"
    with pytest.raises(DataError, match="none of"):
        to_example(tokenizer, {"question": "?"})


def write_all_formats(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    (root / "a.jsonl").write_text(
        json.dumps(CHAT) + "\n\n" + json.dumps({"text": "one two"}) + "\n"
    )
    (root / "b.json").write_text(json.dumps([{"prompt": "x", "completion": " y"}]))
    with (root / "c.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["messages"])
        writer.writeheader()
        writer.writerow({"messages": json.dumps(CHAT["messages"])})
    pq.write_table(pa.Table.from_pylist([{"text": "the moon"}]), root / "d.parquet")
    (root / "notes.txt").write_text("ignored: not a data file suffix")


def test_a_directory_of_jsonl_json_csv_and_parquet(tokenizer: Any, tmp_path: Path) -> None:
    write_all_formats(tmp_path / "data")
    files = data_files([tmp_path / "data"])
    assert [f.name for f in files] == ["a.jsonl", "b.json", "c.csv", "d.parquet"]
    assert len(load_examples(tokenizer, [tmp_path / "data"], max_seq_len=64)) == 5
    # Truncation cuts the assistant turns off the chat records: those carry no loss.
    short = load_examples(tokenizer, [tmp_path / "data"], max_seq_len=8)
    assert len(short) == 3
    assert all(len(e.input_ids) <= 8 for e in short)


def test_bad_data_is_reported_with_its_location(tokenizer: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        load_examples(tokenizer, [bad], max_seq_len=64)
    with pytest.raises(DataError, match="no such file"):
        data_files([tmp_path / "missing"])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        data_files([tmp_path / "x.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files"):
        data_files([tmp_path / "empty"])
    only_prompts = tmp_path / "p.jsonl"
    only_prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no example with tokens to train on"):
        load_examples(tokenizer, [only_prompts], max_seq_len=64)


def test_kaito_training_config_layout(tmp_path: Path) -> None:
    path = tmp_path / "training_config.yaml"
    path.write_text(
        "training_config:\n"
        "  ModelConfig: {torch_dtype: bfloat16, local_files_only: true}\n"
        "  QuantizationConfig: {load_in_4bit: false}\n"
        "  LoraConfig: {r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}\n"
        "  TrainingArguments: {max_steps: 7, learning_rate: 2e-4, output_dir: /mnt/results}\n"
        "  DatasetConfig: {shuffle_dataset: false, max_seq_length: 128}\n"
        "  DataCollator: {mlm: true}\n"
    )
    config = load_config(path)
    assert config.torch_dtype == "bfloat16"
    assert config.quantization.load_in_4bit is False
    assert (config.lora.r, config.lora.lora_alpha) == (16, 32)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.training.max_steps == 7
    assert config.training.learning_rate == 2e-4  # YAML reads 2e-4 as a string
    assert config.dataset.shuffle_dataset is False
    assert config.dataset.max_seq_length == 128
    assert load_config(None).lora.r == 8


def test_wrong_config_types_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training_config:\n  TrainingArguments: {max_steps: many}\n")
    with pytest.raises(
        ConfigError, match=r"TrainingArguments\.max_steps to 'many'; it must be a number"
    ):
        load_config(path)
    path.write_text("training_config:\n  DatasetConfig: {shuffle_dataset: 3}\n")
    with pytest.raises(ConfigError, match="must be a boolean"):
        load_config(path)
