"""A tiny Llama-architecture model, tokenizer and LoRA adapters, built locally.

Tests, benchmarks and the local development cluster need a real model that both engines
load, but they cannot reach a model hub. This module trains a byte-level BPE tokenizer
on a synthetic corpus, wraps it with a chat template, and saves a randomly initialised
Llama with sizes vLLM's CPU kernels accept (hidden 256, head dim 64). Everything is
seeded, so the same arguments give the same bytes.

    python -m kaito_inference.tiny_model --output /tmp/tiny [--adapter NAME ...]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]
_WORDS = [
    "the",
    "a",
    "model",
    "serves",
    "tokens",
    "on",
    "a",
    "node",
    "with",
    "gpu",
    "memory",
    "kaito",
    "workspace",
    "inference",
    "tuning",
    "adapter",
    "cluster",
    "kubernetes",
    "operator",
    "request",
    "stream",
    "latency",
    "throughput",
    "hello",
    "world",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "cat",
    "sat",
    "mat",
    "sun",
    "moon",
    "star",
    "river",
    "mountain",
    "tree",
    "leaf",
]


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def build_tokenizer(output: Path, *, vocab_size: int = 1024, seed: int = 0) -> None:
    """Train a byte-level BPE tokenizer and save it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 30
    fast.save_pretrained(str(output))


def build_tiny_model(output: Path, *, seed: int = 0, max_position_embeddings: int = 2048) -> Path:
    """Write a random tiny Llama plus its tokenizer to `output`; returns `output`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    output.mkdir(parents=True, exist_ok=True)
    build_tokenizer(output, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(output))
    return output


def build_lora_adapter(model_dir: Path, output: Path, *, seed: int, rank: int = 8) -> Path:
    """Write a PEFT LoRA adapter for `model_dir` whose random weights change the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        # PEFT's random init is small next to the base weights; scale it so greedy
        # decoding visibly differs from the base model's.
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    peft_model.save_pretrained(str(output))
    # vLLM needs the base path only for bookkeeping; keep it relative-free and local.
    cfg_path = output / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(model_dir)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kaito_inference.tiny_model", description=__doc__
    )
    parser.add_argument("--output", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="DIR",
        help="also write a LoRA adapter into DIR (repeatable; each gets its own seed)",
    )
    args = parser.parse_args(argv)
    build_tiny_model(args.output, seed=args.seed)
    for i, adapter in enumerate(args.adapter):
        build_lora_adapter(args.output, Path(adapter), seed=args.seed + 1 + i)


if __name__ == "__main__":
    main()
