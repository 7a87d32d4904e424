"""LoRA / QLoRA fine-tuning with PEFT and a plain PyTorch training loop.

The loop is deliberately small (AdamW, gradient accumulation, gradient clipping, linear
warm-down) so that its behaviour is readable and identical on CPU and GPU. QLoRA loads
the base model in 4 bits through bitsandbytes, which needs a CUDA GPU; without one the
trainer says so and trains plain LoRA instead of failing.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from .config import TrainingConfig
from .data import IGNORE_INDEX, Example, load_examples

log = structlog.get_logger(__name__)

COMPLETION_MARKER = "kaito_tuning_complete.json"


@dataclass(frozen=True, kw_only=True)
class Result:
    method: str
    steps: int
    examples: int
    first_loss: float
    last_loss: float
    seconds: float
    output: str


def _qlora_available() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "bitsandbytes is not installed"
    return True, ""


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def load_model(model_dir: str, method: str, config: TrainingConfig) -> tuple[Any, str, str]:
    """The base model ready for LoRA, the device, and the method actually used."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _dtype(config.torch_dtype, device)
    if method == "qlora":
        ok, why = _qlora_available()
        if ok:
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            q = config.quantization
            quantization = BitsAndBytesConfig(
                load_in_4bit=q.load_in_4bit,
                bnb_4bit_quant_type=q.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
                bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            )
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, quantization_config=quantization, dtype=dtype, device_map="auto"
            )
            return prepare_model_for_kbit_training(model), device, "qlora"
        log.warning("qlora unavailable, training lora instead", reason=why)
        method = "lora"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model, device, method


def _batches(examples: list[Example], size: int, pad_id: int, rng: random.Random, shuffle: bool):  # type: ignore[no-untyped-def]
    import torch

    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    for start in range(0, len(order), size):
        batch = [examples[i] for i in order[start : start + size]]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, :n] = 1
        yield ids, labels, mask


def train(
    *,
    model_dir: str,
    data: list[str],
    output: Path,
    method: str,
    config: TrainingConfig,
) -> Result:
    """Fine-tune `model_dir` on `data`, save the adapter in `output`; returns a summary."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    started = time.monotonic()
    t = config.training
    random.seed(t.seed)
    torch.manual_seed(t.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    examples = load_examples(tokenizer, data, max_seq_len=config.dataset.max_seq_length)
    model, device, used = load_model(model_dir, method, config)
    lora = config.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches_per_epoch = math.ceil(len(examples) / t.per_device_train_batch_size)
    steps_per_epoch = max(1, batches_per_epoch // t.gradient_accumulation_steps)
    total_steps = (
        t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.num_train_epochs)
    )
    log.info(
        "training started",
        method=used,
        device=device,
        examples=len(examples),
        steps=total_steps,
        trainable_parameters=trainable,
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=t.learning_rate,
        weight_decay=t.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / max(1, total_steps))
    )
    rng = random.Random(t.seed)
    model.train()
    step, micro, losses = 0, 0, []
    while step < total_steps:
        for ids, labels, mask in _batches(
            examples, t.per_device_train_batch_size, pad_id, rng, config.dataset.shuffle_dataset
        ):
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            )
            (out.loss / t.gradient_accumulation_steps).backward()
            micro += 1
            if micro % t.gradient_accumulation_steps:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(out.loss.detach()))
            if step == 1 or step % t.logging_steps == 0 or step == total_steps:
                log.info("training step", step=step, loss=round(losses[-1], 4))
            if step >= total_steps:
                break
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output))
    result = Result(
        method=used,
        steps=step,
        examples=len(examples),
        first_loss=losses[0],
        last_loss=losses[-1],
        seconds=round(time.monotonic() - started, 2),
        output=str(output),
    )
    (output / COMPLETION_MARKER).write_text(json.dumps(asdict(result), indent=2) + "\n")
    log.info("training finished", **asdict(result))
    return result
