"""Benchmark: one model split across two nodes against the same model on one node.

The stand-in model (the tiny Llama, two layers) runs once as a single-node server and
once as a two-rank group (`harness.GroupProcesses`: rank 0 and rank 1 as two processes on
two loopback addresses, ``--pipeline-parallel-size 2``, vLLM's multi-node executor), one
after the other, never together. For each: seconds from start to ``/health`` 200 (for
the group: both ranks started together, until rank 0 serves), then vLLM's own serving
benchmark client at a fixed request rate and closed-loop at a fixed concurrency (the
same client and columns as `compare.py`). Output: a markdown table on stdout and in
``<out>/multinode.md``, raw results as JSON.

On CPUs this measures the group's overhead (the activations crossing between the
ranks, the second process), never a speed-up: a model split across nodes is for a
model that does not fit on one node's GPUs, and only a GPU run says anything about real
models.

    python bench/multinode.py --out DIR [--request-rate 4] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from compare import COLUMNS, ENGINE_ARGS, SERVED, bench  # noqa: E402
from harness import GroupProcesses, ServerProcess, free_port  # noqa: E402


def _progress(step: str, started: float, **fields: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    elapsed = datetime.datetime.now().timestamp() - started
    print(f"[{elapsed:6.1f}s] {step} {extra}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the model and results")
    p.add_argument("--request-rate", type=float, default=4.0, help="fixed rate, req/s (default 4)")
    p.add_argument("--rate-prompts", type=int, default=60, help="requests at the rate (default 60)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrency (default 16)")
    p.add_argument("--max-prompts", type=int, default=160, help="requests (default 160)")
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens (default 64)")
    p.add_argument("--output-len", type=int, default=64, help="generated tokens (default 64)")
    args = p.parse_args(argv)
    started = datetime.datetime.now().timestamp()

    from kaito_inference.tiny_model import build_tiny_model

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    loads = [
        (f"rate {args.request_rate:g}/s", str(args.request_rate), args.rate_prompts, None),
        (f"concurrency {args.concurrency}", "inf", args.max_prompts, args.concurrency),
    ]
    results: dict[str, dict[str, Any]] = {}
    for setup in ("one node", "two nodes"):
        key = setup.replace(" ", "-")
        group: GroupProcesses | None = None
        if setup == "one node":
            head = ServerProcess(
                engine="vllm", model=model, served_model_name=SERVED, port=free_port(),
                extra_args=ENGINE_ARGS, log_path=out / f"{key}.log",
            )  # fmt: skip
            _progress("starting", started, setup=setup)
            head.start()
        else:
            group = GroupProcesses(model=model, logs=out, extra_args=ENGINE_ARGS)
            _progress("starting", started, setup=setup)
            group.start()
            head = group.head
        row: dict[str, Any] = {"ready_s": head.startup_seconds}
        _progress("ready", started, setup=setup, seconds=round(head.startup_seconds, 1))
        try:
            for load, rate, prompts, concurrency in loads:
                _progress("load", started, setup=setup, load=load)
                row[load] = bench(
                    head.base_url, model, out / f"{key}-{load.split()[0]}.json",
                    rate=rate, prompts=prompts, concurrency=concurrency, args=args,
                )  # fmt: skip
        finally:
            if group is not None:
                group.stop()
            else:
                head.stop()
        results[setup] = row

    lines = [
        "| setup | load | ready s | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for setup, row in results.items():
        for load, *_ in loads:
            cells = [fmt.format(row[load][key]) for key, _, fmt in COLUMNS]
            lines.append(f"| {setup} | {load} | {row['ready_s']:.0f} | " + " | ".join(cells) + " |")
    threads = os.environ.get("OMP_NUM_THREADS")
    host = f"{platform.node()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}"
    lines += ["", f"Machine: {host}; input {args.input_len} / output {args.output_len} tokens."]
    text = "\n".join(lines)
    print(text)
    (out / "multinode.md").write_text(text + "\n")
    (out / "multinode.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
