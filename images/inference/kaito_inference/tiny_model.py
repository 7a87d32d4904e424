"""A tiny Llama-architecture model, tokenizer and LoRA adapters, built locally.

Tests, benchmarks and the local development cluster need a real model that both engines
load, but they cannot reach a model hub. This module pre-trains one, briefly, on text
every Python installation ships: the language reference that `pydoc` serves
(``pydoc_data.topics``) and the docstrings of a fixed list of standard-library modules
(PSF-licensed prose), keeping only plain-ASCII prose paragraphs. A byte-level BPE
tokenizer is trained on that corpus with a vocabulary large enough that almost every
corpus word is one token, so the model writes whole words, never stray bytes; a Llama
with sizes vLLM's CPU kernels accept (hidden 256, head dim 64, 2 layers) is trained on it
for a few hundred steps on the CPU (about a minute and a half on 2 cores). Its answers
are English words and phrases from the Python documentation, not knowledge: it stands in
for a preset's weights, it is not one.

The trained model is cached once per machine under ``$KAITO_CACHE/tiny-models/<key>``
(``~/.cache/kaito`` without ``$KAITO_CACHE``), where ``key`` hashes everything the bytes
depend on: the recipe (sizes, training settings, `RECIPE_VERSION`), the corpus, the Python
and library versions and the seed; a change to any of them builds a new one. Everything is seeded.

    python -m kaito_inference.tiny_model --output /tmp/tiny [--adapter NAME ...]
    python -m kaito_inference.tiny_model --print-cached     # build if needed, print the folder
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MODEL_NAME = "tiny-llama"
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
RECIPE_VERSION = 2
"""Bump it when a change to this module changes what `pretrained` builds."""
MARKER = "kaito-tiny-model.json"
"""Written last into every model folder: what was built, from what, how training went."""
VOCAB_SIZE = 4096
ARCHITECTURE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
TRAINING = {
    "steps": 400,
    "batch_size": 16,
    "seq_len": 128,
    "learning_rate": 6e-3,
    "warmup_steps": 30,
    "weight_decay": 0.01,
}
DEFAULT_MAX_POSITIONS = 2048
# Standard-library modules whose docstrings join the language reference in the corpus:
# pure-Python, stable, prose-rich.
DOC_MODULES = (
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "html",
    "http.client",
    "http.server",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "logging",
    "os",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "zipfile",
)
_RULE = re.compile(r"[*=\-~^\"+]+")
_QUOTED_WORD = re.compile(r'"([^"\s]{1,20})"')

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"[tiny-model] {line}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """``$KAITO_CACHE/tiny-models``, or ``~/.cache/kaito/tiny-models``: one folder per key
    (``tiny-model`` beside it is the dev cluster's copy, `kaito_dev.stack`)."""
    base = os.environ.get("KAITO_CACHE") or Path.home() / ".cache" / "kaito"
    return Path(base) / "tiny-models"


# --- corpus -----------------------------------------------------------------------------


def _paragraphs(text: str) -> Iterator[str]:
    """Plain prose paragraphs of a reST-ish text: no code, grammar, tables or headings."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith((" ", "\t")) or _RULE.fullmatch(line.strip()) for line in lines):
            continue
        paragraph = _QUOTED_WORD.sub(r"\1", " ".join(line.strip() for line in lines).strip())
        if len(paragraph) < 40 or not paragraph.isascii():
            continue
        if sum(c.isalpha() or c == " " for c in paragraph) / len(paragraph) < 0.85:
            continue
        yield paragraph


def _docstrings(module: str) -> Iterator[str]:
    """The docstrings of a module's source and of its public classes and functions, read
    with `ast` (never imported, so what else this process imported changes nothing)."""
    base = Path(sysconfig.get_paths()["stdlib"], *module.split("."))
    source = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    if source is None:
        raise RuntimeError(f"the corpus needs the standard library's {module} as Python source")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_"):
                continue
        elif not isinstance(node, ast.Module):
            continue
        doc = ast.get_docstring(node)
        if doc:
            yield doc


def corpus() -> list[str]:
    """The training text, in a fixed order: language-reference topics, then docstrings."""
    from pydoc_data.topics import topics

    paragraphs = [p for name in sorted(topics) for p in _paragraphs(topics[name])]
    seen: set[str] = set()
    for module in DOC_MODULES:
        for doc in _docstrings(module):
            if doc not in seen:
                seen.add(doc)
                paragraphs.extend(_paragraphs(doc))
    return paragraphs


def words(paragraphs: list[str]) -> set[str]:
    """The corpus's alphabetic words, lower-cased (what a readable answer is made of)."""
    return {w.lower() for p in paragraphs for w in re.findall(r"[A-Za-z]+", p)}


def recipe_key(paragraphs: list[str], *, seed: int = 0) -> str:
    """What the model's bytes depend on, hashed: a change to any of it builds a new one."""
    versions = {
        dist: importlib.metadata.version(dist) for dist in ("torch", "transformers", "tokenizers")
    }
    recipe = {
        "version": RECIPE_VERSION,
        "vocab_size": VOCAB_SIZE,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "architecture": ARCHITECTURE,
        "training": TRAINING,
        "corpus": hashlib.sha256("\n".join(paragraphs).encode()).hexdigest(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "versions": versions,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# --- building ---------------------------------------------------------------------------


def build_tokenizer(output: Path, paragraphs: list[str]) -> None:
    """Train a byte-level BPE tokenizer and save it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(paragraphs, trainer=trainer)
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


def _pretrain(output: Path, paragraphs: list[str], seed: int, progress: Progress) -> dict[str, Any]:
    """Tokenizer, then a Llama trained on the corpus; returns the training statistics."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines instead
    started = time.monotonic()
    build_tokenizer(output, paragraphs)
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    ids = [i for p in paragraphs for i in tokenizer.encode(p + "\n", add_special_tokens=False)]
    data = torch.tensor(ids, dtype=torch.long)
    progress(
        f"tokenizer: {len(tokenizer)} tokens, corpus {len(paragraphs)} paragraphs = "
        f"{len(ids)} tokens, {time.monotonic() - started:.1f}s"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **ARCHITECTURE,
        max_position_embeddings=DEFAULT_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config)
    steps, batch, seq = (int(TRAINING[k]) for k in ("steps", "batch_size", "seq_len"))
    peak, warmup = float(TRAINING["learning_rate"]), int(TRAINING["warmup_steps"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=peak,
        betas=(0.9, 0.95),
        weight_decay=float(TRAINING["weight_decay"]),
    )
    # One-off work: every core this process may use, whatever OMP_NUM_THREADS says for
    # the servers that run beside it.
    threads_before = torch.get_num_threads()
    threads = max(1, min(8, len(os.sched_getaffinity(0))))
    torch.set_num_threads(threads)
    progress(f"pre-training {steps} steps of {batch}x{seq} tokens on {threads} CPU thread(s)")
    model.train()
    losses: list[float] = []
    try:
        for step in range(1, steps + 1):
            lr = peak * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
            x = torch.stack([data[s : s + seq] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            if step == 1 or step % 50 == 0 or step == steps:
                progress(
                    f"step {step}/{steps} elapsed {time.monotonic() - started:.1f}s "
                    f"loss {sum(losses[-10:]) / len(losses[-10:]):.3f}"
                )
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(output))
    return {
        "corpus": {
            "paragraphs": len(paragraphs),
            "words": sum(len(p.split()) for p in paragraphs),
            "tokens": len(ids),
        },
        "training": {
            **TRAINING,
            "threads": threads,
            "first_loss": round(losses[0], 4),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "seconds": round(time.monotonic() - started, 1),
        },
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretrained(*, seed: int = 0, cache: Path | None = None, progress: Progress = _stderr) -> Path:
    """The pre-trained model folder for this recipe, built once per machine (cached).

    Returns ``<cache>/<key>`` at once when it is there; otherwise builds it (about a
    minute and a half on 2 cores, with progress lines) under a lock, so concurrent
    callers build it once. Callers must not write into it: `build_tiny_model` copies.
    """
    paragraphs = corpus()
    key = recipe_key(paragraphs, seed=seed)
    root = cache or cache_root()
    folder = root / key
    if (folder / MARKER).is_file():
        return folder
    with _locked(root / f"{key}.lock"):
        if (folder / MARKER).is_file():
            return folder
        started = time.monotonic()
        progress(f"building {MODEL_NAME} {key} into {folder} (once per machine)")
        partial = root / f"{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        stats = _pretrain(partial, paragraphs, seed, progress)
        marker = {"name": MODEL_NAME, "key": key, "seed": seed, **stats}
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        progress(f"built {MODEL_NAME} {key} in {time.monotonic() - started:.1f}s: {folder}")
        return folder


def build_tiny_model(
    output: Path,
    *,
    seed: int = 0,
    max_position_embeddings: int = DEFAULT_MAX_POSITIONS,
    progress: Progress = _stderr,
) -> Path:
    """Write the pre-trained tiny Llama plus its tokenizer to `output`; returns `output`.

    Copies the cached model (`pretrained`, built first if needed) with the context length
    asked for. A folder that already holds this very model is left as it is; one that
    holds an older tiny model is replaced; anything else is refused.
    """
    source = pretrained(seed=seed, progress=progress)
    marker = json.loads((source / MARKER).read_text())
    marker["max_position_embeddings"] = max_position_embeddings
    with contextlib.suppress(OSError, ValueError):
        if json.loads((output / MARKER).read_text()) == marker:
            return output
    if output.exists() and any(output.iterdir()) and not (output / "config.json").exists():
        raise FileExistsError(f"{output} is not empty and holds no model: refusing to replace it")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    config_path = partial / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = max_position_embeddings
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)
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
        prog="python -m kaito_inference.tiny_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", type=Path, help="model directory to write")
    target.add_argument(
        "--print-cached",
        action="store_true",
        help="build the cached model if needed and print its folder (do not write into it)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--max-position-embeddings",
        type=int,
        default=DEFAULT_MAX_POSITIONS,
        help=f"the model's context length (default {DEFAULT_MAX_POSITIONS})",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="DIR",
        help="also write a LoRA adapter into DIR (repeatable; each gets its own seed)",
    )
    args = parser.parse_args(argv)
    if args.print_cached:
        print(pretrained(seed=args.seed))
        return
    build_tiny_model(
        args.output, seed=args.seed, max_position_embeddings=args.max_position_embeddings
    )
    _stderr(f"{MODEL_NAME} ready at {args.output}")
    for i, adapter in enumerate(args.adapter):
        build_lora_adapter(args.output, Path(adapter), seed=args.seed + 1 + i)


if __name__ == "__main__":
    main()
