"""Command line of the tuning job.

    python -m kaito_tuning --method qlora|lora --model DIR --data DIR|FILE... \
        --output DIR [--config training_config.yaml] [--max-steps N] [--learning-rate LR]

Exit codes: 0 trained and saved, 2 bad arguments, config or data, 1 training failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from . import logs
from .config import ConfigError, load_config
from .data import DataError

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kaito_tuning", description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=("qlora", "lora"), default="qlora", help="default qlora")
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="data directory or files (jsonl, json, parquet, csv)",
    )
    p.add_argument("--output", required=True, type=Path, help="adapter output directory")
    p.add_argument("--config", type=Path, help="training_config.yaml (Kaito's layout)")
    p.add_argument("--max-steps", type=int, help="override TrainingArguments.max_steps")
    p.add_argument("--learning-rate", type=float, help="override TrainingArguments.learning_rate")
    p.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto", help="default auto"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("invalid training config", error=str(exc))
        return 2
    if args.max_steps is not None:
        config.training.max_steps = args.max_steps
    if args.learning_rate is not None:
        config.training.learning_rate = args.learning_rate
    from .train import train

    try:
        train(
            model_dir=args.model,
            data=list(args.data),
            output=args.output,
            method=args.method,
            config=config,
        )
    except DataError as exc:
        log.error("invalid training data", error=str(exc))
        return 2
    except Exception:
        log.exception("training failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
