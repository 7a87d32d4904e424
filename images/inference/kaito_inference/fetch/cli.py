"""Arguments, environment and exit codes of ``python -m kaito_inference.fetch``.

    python -m kaito_inference.fetch --repo ORG/NAME --revision REV --cache-dir DIR
        [--termination-log PATH] [--max-attempts 5] [--retry-wait 2]

Environment: ``HF_ENDPOINT`` (the hub; default the public one), ``HF_TOKEN`` (for gated
repos; the controller fills it from ``presetOptions.modelAccessSecret``), and for the
progress annotation ``POD_NAME``, ``POD_NAMESPACE`` plus the in-cluster service.
Prints the target folder on stdout and exits 0, or writes one line starting with a
`Reason` to the termination-message file and exits with that reason's code (1
DownloadFailed, 3 Unauthorized, 4 RevisionNotFound, 5 RepositoryNotFound, 6 DiskFull;
2 for bad arguments).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from kaito_inference import logs
from kaito_inference.fetch.download import FetchError, fetch
from kaito_inference.fetch.podreport import DEFAULT_SERVICEACCOUNT_DIR, PodAnnotator
from kaito_inference.fetch.progress import ProgressReporter

__all__ = ["main", "parse_args"]

log = structlog.get_logger("kaito_inference.fetch")

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kaito_inference.fetch",
        description="Fetch one Hugging Face repo@revision into the node-local model cache.",
    )
    p.add_argument("--repo", required=True, help="the repo id, org/name")
    p.add_argument("--revision", default="main", help="a commit sha (presets pin one) or branch")
    p.add_argument(
        "--cache-dir", type=Path, required=True, help="the model cache (a hostPath on nodes)"
    )
    add_common_arguments(p, attempts="download")
    return parse_checked(p, argv, _check)


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not _REPO.match(args.repo):
        p.error(f"--repo {args.repo!r}: expected org/name (letters, digits, ._-)")
    if not args.revision or args.revision.startswith("/") or ".." in args.revision:
        p.error(f"--revision {args.revision!r}: expected a commit sha or a branch name")


def add_common_arguments(p: argparse.ArgumentParser, *, attempts: str) -> None:
    """The options both fetchers take: failure report, retries, progress and logs."""
    p.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        help=f"where a failure's one-line reason goes (default {DEFAULT_TERMINATION_LOG} "
        "when writable, else nowhere)",
    )
    p.add_argument("--max-attempts", type=int, default=5, help=f"{attempts} attempts; default 5")
    p.add_argument(
        "--retry-wait", type=float, default=2.0, help="seconds before the first retry, doubling"
    )
    p.add_argument("--progress-interval", type=float, default=2.0, help="log line every N s")
    p.add_argument(
        "--report-interval", type=float, default=5.0, help="pod annotation every N s; default 5"
    )
    p.add_argument(
        "--serviceaccount-dir",
        type=Path,
        default=DEFAULT_SERVICEACCOUNT_DIR,
        help=f"token and ca.crt for the progress annotation (default {DEFAULT_SERVICEACCOUNT_DIR})",
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")


def parse_checked(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
) -> argparse.Namespace:
    """Parse ``argv``, run the fetcher's own ``check`` (it calls ``p.error``), then the
    common ones."""
    args = p.parse_args(argv)
    check(p, args)
    if args.max_attempts < 1:
        p.error("--max-attempts: must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(fmt=args.log_format)
    # The fetcher is the one step that goes online; the client reads these at import.
    os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    token = os.environ.get("HF_TOKEN", "").strip() or None
    annotator = PodAnnotator.from_environment(args.serviceaccount_dir)
    progress = ProgressReporter(
        interval=args.progress_interval, sink=annotator, sink_interval=args.report_interval
    )
    log.info(
        "weights fetch starting", repo=args.repo, revision=args.revision,
        cache_dir=str(args.cache_dir), endpoint=os.environ.get("HF_ENDPOINT", "(default)"),
        token=token is not None, pod_progress=annotator is not None,
    )  # fmt: skip
    try:
        result = fetch(
            args.repo,
            args.revision,
            args.cache_dir,
            token=token,
            max_attempts=args.max_attempts,
            retry_wait=args.retry_wait,
            progress=progress,
        )
    except FetchError as e:
        log.error("weights fetch failed", reason=str(e.reason), message=e.message)
        _terminate(args.termination_log, str(e))
        return e.reason.exit_code
    log.info(
        "weights ready", repo=args.repo, commit=result.commit, target=str(result.target),
        files=result.files, bytes=result.bytes, downloaded=result.downloaded,
        seconds=result.seconds,
    )  # fmt: skip
    print(result.target, flush=True)
    return 0


def _terminate(path: Path | None, line: str) -> None:
    """One line (Kubernetes keeps 4096 bytes) in the termination-message file."""
    if path is None:
        if not os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
            return
        path = DEFAULT_TERMINATION_LOG
    try:
        path.write_text(line.replace("\n", " ")[:4000] + "\n")
    except OSError as e:
        log.warning("termination message not written", path=str(path), error=str(e))
    print(line, file=sys.stderr, flush=True)
