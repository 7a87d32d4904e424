"""``kaito dev chaos --seed S --cycles N --profile short|long``: one chaos run.

Starts its own local stack in ``--dir`` (a fresh control plane, the controllers installed
in it as pods on a real system node, the emulators; `kaito_dev.chaos.cluster`; it needs
root, as real nodes do, and stops all of it and restores the host at the end), prints
the plan (`schedule.render`) so a failing seed can be replayed, runs it with a progress
line per step, writes the markdown report to ``--out`` (default ``.kaito/chaos.md``) and
exits 1 when any cycle failed to converge within its bound, anything leaked (on the host
at the end too) or was duplicated, a stall showed no reason, or a component crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

from kaito_dev.chaos.schedule import PROFILES, plan, render

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="short")
    p.add_argument("--cycles", type=int, default=None, help="default: the profile's")
    p.add_argument("--dir", type=Path, default=Path(".kaito/chaos"), help="the stack's state")
    p.add_argument("--out", type=Path, default=Path(".kaito/chaos.md"), help="markdown report")
    p.add_argument("--plan-only", action="store_true", help="print the plan and exit")
    p.set_defaults(func=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    cycles = args.cycles if args.cycles is not None else profile.cycles
    if cycles < 1:
        raise SystemExit(f"--cycles must be at least 1, got {cycles}")
    steps = plan(seed, cycles, profile)
    print(render(seed, profile, steps), flush=True)
    print(f"replay with: kaito dev chaos --seed {seed} --cycles {cycles} --profile {profile.name}")
    if args.plan_only:
        return 0
    return asyncio.run(_run(args, seed, profile.name, steps))


async def _run(args: argparse.Namespace, seed: int, profile_name: str, steps: list) -> int:  # type: ignore[type-arg]
    from kaito.runtime.client import Client, ClientConfig
    from kaito_dev.chaos.cluster import ChaosCluster
    from kaito_dev.chaos.driver import ChaosRun

    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[chaos {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    data_dir: Path = args.dir.resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    cluster = ChaosCluster(data_dir, say=say)
    try:
        await cluster.start()
        async with Client(await ClientConfig.from_kubeconfig(cluster.kubeconfig)) as client:
            run = ChaosRun(cluster, client, seed=seed, profile=PROFILES[profile_name], say=say)
            report = await run.run(steps)
    finally:
        say("stopping the stack (the system node too) and restoring the host")
        left = cluster.stop()
        if left:
            say("LEFT BEHIND:\n  " + "\n  ".join(left))
    report.leaks += left
    text = report.markdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(report.as_json(), indent=2))
    print(text, flush=True)
    say(f"report written to {args.out}; logs in {data_dir / 'logs'}")
    if not report.ok:
        say(f"FAILED: {len(report.problems)} problem(s); replay with --seed {seed}")
        return 1
    return 0
