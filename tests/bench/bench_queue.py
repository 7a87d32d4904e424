"""Work-queue throughput: add/get/done cycles per second, one item at a time.

A script, not a test: timing belongs in `make bench-runtime`, not in the test suite.
It measures the uncontended hot path (every `get` finds an item, so nothing waits)
with and without the workqueue metrics. The target is 500k cycles/s.

    python tests/bench/bench_queue.py [--cycles N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from kaito.runtime.metrics import QueueMetrics
from kaito.runtime.workqueue import WorkQueue

TARGET = 500_000


async def cycles_per_second(cycles: int, *, metrics: QueueMetrics | None) -> float:
    queue: WorkQueue[int] = WorkQueue(name="bench", metrics=metrics)
    keys = [i & 1023 for i in range(cycles)]  # a realistic spread of distinct keys
    start = time.perf_counter()
    for key in keys:
        queue.add(key)
        item = await queue.get()
        queue.done(item)
    elapsed = time.perf_counter() - start
    queue.shutdown()
    return cycles / elapsed


async def main(cycles: int, repeats: int) -> None:
    for label, metrics in (("no metrics", None), ("metrics", QueueMetrics(registry=None))):
        best = max([await cycles_per_second(cycles, metrics=metrics) for _ in range(repeats)])
        verdict = "ok" if best >= TARGET else f"BELOW target {TARGET:,}"
        print(f"queue add/get/done ({label}): {best:,.0f} cycles/s ({verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300_000, help="cycles per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.repeats))
