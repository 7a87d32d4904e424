"""``kaito dev hf-hub``: serve the hub emulator until SIGTERM/SIGINT.

    kaito dev hf-hub --root .kaito/dev/hf-hub --port 0 \\
        --publish kaito-dev/tiny=./model[@main|@<commit sha>] --gated kaito-dev/tiny=TOKEN \\
        [--publish-presets ./stand-in-model]

prints ``HF_ENDPOINT=<url>`` and one ``published <repo>@<revision> <sha>`` line per
repo, then serves. ``@REVISION`` is a branch, or a full commit sha to serve the folder
under (e.g. a preset's pinned revision). ``--publish-presets FOLDER`` publishes FOLDER
as a stand-in under every preset's repo at its pinned revision (`presets`), each with a
note saying it is a stand-in. ``--state-file`` also writes them as JSON for programs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path(".kaito/dev/hf-hub")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def add_arguments(p: Any) -> None:
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="the hub's port; default 0 (a free one)")
    p.add_argument(
        "--cdn-port", type=int, default=0, help="the LFS blob host's port; default 0 (a free one)"
    )
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"repos on disk (default {DEFAULT_ROOT})"
    )
    p.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="REPO=FOLDER[@REVISION]",
        help="publish a local folder as REPO (org/name) on branch REVISION (default main), "
        "or as commit REVISION when it is a full commit sha; repeatable",
    )
    p.add_argument(
        "--publish-presets",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="publish FOLDER as a stand-in under every preset's repo at its pinned revision "
        "(gated presets: only the token kaito_dev.hfhub.presets.DEV_TOKEN)",
    )
    p.add_argument(
        "--gated",
        action="append",
        default=[],
        metavar="REPO=TOKEN",
        help="make a published REPO gated: only bearer TOKEN downloads its files; repeatable",
    )
    p.add_argument("--state-file", type=Path, default=None, help="write url and shas as JSON")
    p.set_defaults(func=cmd_hf_hub)


def parse_publish(value: str) -> tuple[str, Path, str | None]:
    """``org/name=./folder@rev`` -> (repo, folder, rev); a ValueError names the mistake."""
    repo, sep, rest = value.partition("=")
    if not sep or not repo or not rest:
        raise ValueError(f"--publish {value!r}: expected REPO=FOLDER[@REVISION]")
    folder, at, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    return repo, Path(folder), (revision or None) if at else None


def _is_commit(revision: str | None) -> bool:
    return revision is not None and bool(_COMMIT.match(revision))


def cmd_hf_hub(args: argparse.Namespace) -> int:
    try:
        publish = [parse_publish(v) for v in args.publish]
        gated = dict(_parse_gated(v) for v in args.gated)
    except ValueError as e:
        print(f"kaito dev hf-hub: {e}", file=sys.stderr)
        return 2
    unknown = set(gated) - {repo for repo, _, _ in publish}
    if unknown:
        print(f"kaito dev hf-hub: --gated {sorted(unknown)}: not published", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, publish, gated))


def _parse_gated(value: str) -> tuple[str, str]:
    repo, sep, token = value.partition("=")
    if not sep or not repo or not token:
        raise ValueError(f"--gated {value!r}: expected REPO=TOKEN")
    return repo, token


async def _run(
    args: argparse.Namespace, publish: list[tuple[str, Path, str | None]], gated: dict[str, str]
) -> int:
    from kaito.runtime.entrypoint import run_until_stopped
    from kaito_dev.hfhub.presets import DEV_TOKEN, preset_repos, publish_stand_in, stand_in_note
    from kaito_dev.hfhub.server import HubEmulator

    hub = HubEmulator(args.root.resolve(), host=args.host, port=args.port, cdn_port=args.cdn_port)
    shas: dict[str, str] = {}
    stand_ins: dict[str, str] = {}
    flag = "--publish"
    try:
        for repo, folder, revision in publish:
            commit = revision if _is_commit(revision) else None
            sha = hub.publish(
                repo,
                folder,
                revision=None if commit else revision,
                commit=commit,
                gated_token=gated.get(repo),
            )
            shas[f"{repo}@{revision or 'main'}"] = sha
        if args.publish_presets is not None:
            flag = "--publish-presets"
            stand_ins = publish_stand_in(hub, args.publish_presets.resolve())
    except ValueError as e:
        print(f"kaito dev hf-hub: {flag}: {e}", file=sys.stderr)
        return 2
    await hub.start()
    try:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        for ref, sha in shas.items():
            print(f"published {ref} {sha}", flush=True)
        if stand_ins:
            folder = args.publish_presets.resolve()
            print(
                f"published {len(stand_ins)} preset repos at their pinned revisions, each "
                f"holding a STAND-IN: the local model in {folder}, not the presets' weights",
                flush=True,
            )
            for r in preset_repos():
                print(
                    f"published {r.ref} ({', '.join(r.presets)})"
                    f"{' gated: token ' + DEV_TOKEN if r.gated else ''}: "
                    f"{stand_in_note(r.repo, folder)}",
                    flush=True,
                )
        print(
            f"Inject a fault:\n  curl -s -XPOST {hub.url}/_emulator/faults "
            """-d '{"kind": "reset", "scope": "content", "after_bytes": 1024}'""",
            flush=True,
        )
        if args.state_file is not None:
            args.state_file.write_text(
                json.dumps(
                    {
                        "url": hub.url,
                        "cdn": hub.cdn_url,
                        "published": {**shas, **stand_ins},
                        "stand_ins": sorted(stand_ins),
                    },
                    indent=1,
                )
            )
        stopped = asyncio.Event()

        async def serve() -> None:
            await stopped.wait()

        return await run_until_stopped(serve, stopped.set)
    finally:
        await hub.stop()
