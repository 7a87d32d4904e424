"""A tuning job's adapter, dropped into the adapters directory, is served by both engines.

The tuning CLI runs as the tuning image runs it (`python -m kaito_tuning --method qlora`,
which on CPU falls back to LoRA and says so), memorises one answer in a few CPU steps,
and writes a PEFT adapter. The running servers discover it without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from harness import CONTRACTS_DIR, INFERENCE_DIR, Artifacts

TUNING_DIR = INFERENCE_DIR.parent / "tuning"
QUESTION = "what is kaito"
ANSWER = "kaito serves models on kubernetes"
TRAINING_CONFIG = """\
training_config:
  ModelConfig:
    torch_dtype: float32
  LoraConfig:
    r: 8
    lora_alpha: 16
    lora_dropout: 0.0
  TrainingArguments:
    max_steps: 100
    learning_rate: 5e-3
    per_device_train_batch_size: 4
    logging_steps: 50
  DatasetConfig:
    max_seq_length: 64
  SomethingElse: {}
"""


@pytest.fixture(scope="session")
def tuned_adapter(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("tuning")
    data = work / "data"
    data.mkdir()
    record = {
        "messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ]
    }
    (data / "chat.jsonl").write_text((json.dumps(record) + "\n") * 4)
    (work / "training_config.yaml").write_text(TRAINING_CONFIG)
    output = work / "result"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TUNING_DIR), str(CONTRACTS_DIR)]),
        OMP_NUM_THREADS="1",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaito_tuning",
            "--method",
            "qlora",
            "--model",
            str(artifacts.model),
            "--data",
            str(data),
            "--output",
            str(output),
            "--config",
            str(work / "training_config.yaml"),
            "--log-format",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "qlora unavailable, training lora instead" in names  # no GPU here
    assert "training config section ignored" in names
    assert (output / "adapter_config.json").is_file()
    marker = json.loads((output / "kaito_tuning_complete.json").read_text())
    assert marker["method"] == "lora"
    assert marker["steps"] == 100
    assert marker["last_loss"] < marker["first_loss"]
    served = artifacts.adapters / "tuned"
    os.rename(output, served)  # appears atomically to the servers' directory scans
    return served


def test_the_server_serves_a_freshly_tuned_adapter(
    client: openai.OpenAI, tuned_adapter: Path, artifacts: Artifacts
) -> None:
    from transformers import AutoTokenizer

    length = len(
        AutoTokenizer.from_pretrained(str(artifacts.model)).encode(ANSWER, add_special_tokens=False)
    )
    assert "tuned" in {m.id for m in client.models.list().data}
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": QUESTION},
    ]
    tuned = client.chat.completions.create(
        model="tuned", messages=messages, max_tokens=length, temperature=0
    )
    assert tuned.choices[0].message.content == ANSWER
    base = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=length, temperature=0
    )
    assert base.choices[0].message.content != ANSWER
