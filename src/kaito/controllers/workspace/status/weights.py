"""A pod's weights fetch, as the controller reads it: ``DownloadingWeights`` and its numbers.

The ``fetch-weights`` init container (images/inference, ``python -m
kaito_inference.fetch``) merge-patches its own pod's annotation
``kaito.sh/weights-progress`` every ~5 s and once at the end with compact JSON:
``{"bytesDone": 1288490188, "bytesTotal": 8160000000, "bytesPerSecond": 47500000,
"updated": "2026-08-01T10:00:05Z"}``. While that container runs, the Workspace's
``InferenceReady`` (a tuning Workspace's ``WorkspaceReady``) says::

    DownloadingWeights  pod phi-3-7d9c-x: fetching microsoft/Phi-3-mini-4k-instruct@0a67737:
                        1.2 GiB of 7.6 GiB (16%), 45.3 MiB/s

("starting" before the first report; a pod whose ServiceAccount may not patch it never
reports, and the message says only that it is fetching). A failed fetch is not read
here: it exits non-zero with a ``<Reason>: message`` termination message
(``Unauthorized``, ``RevisionNotFound``, ``RepositoryNotFound``, ``DiskFull``,
``DownloadFailed``), which `readiness.pod_problem` turns into the condition's reason.

Pure functions over raw pods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kaito.runtime.meta import Obj

__all__ = [
    "ANNOTATION_WEIGHTS_PROGRESS",
    "FETCH_CONTAINER",
    "WeightsProgress",
    "fetching_message",
    "format_bytes",
    "read_progress",
]

FETCH_CONTAINER = "fetch-weights"
"""The init container that fetches a preset's weights into the node's model cache."""
ANNOTATION_WEIGHTS_PROGRESS = "kaito.sh/weights-progress"
"""On the fetching pod, written by the fetcher itself (``kaito_inference.fetch.podreport``)."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """``1288490188`` -> ``1.2 GiB`` (binary units, one decimal above bytes)."""
    value, unit = float(max(n, 0)), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


class WeightsProgress:
    """One ``kaito.sh/weights-progress`` report."""

    __slots__ = ("done", "rate", "total", "updated")

    def __init__(self, done: int, total: int, rate: int, updated: str) -> None:
        self.done, self.total, self.rate, self.updated = done, total, rate, updated

    def __str__(self) -> str:
        if self.total <= 0:
            return "starting"
        percent = min(100, int(100 * self.done / self.total))
        return (
            f"{format_bytes(self.done)} of {format_bytes(self.total)} ({percent}%), "
            f"{format_bytes(self.rate)}/s"
        )


def read_progress(pod: Obj) -> WeightsProgress | None:
    """The pod's last progress report; None without one (or a malformed one)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_WEIGHTS_PROGRESS)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return WeightsProgress(
            done=int(data["bytesDone"]),
            total=int(data["bytesTotal"]),
            rate=int(data.get("bytesPerSecond") or 0),
            updated=str(data.get("updated") or ""),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return str(argv[i + 1])
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _what(pod: Obj) -> str:
    """``org/name@rev7`` from the fetch container's command line, or ``the weights``."""
    for c in (pod.get("spec") or {}).get("initContainers") or ():
        if c.get("name") != FETCH_CONTAINER:
            continue
        argv = [*(c.get("command") or ()), *(c.get("args") or ())]
        repo, revision = _flag(argv, "--repo"), _flag(argv, "--revision")
        if repo:
            return f"{repo}@{revision[:7]}" if revision else repo
    return "the weights"


def fetching_message(pod: Obj) -> str | None:
    """``pod X: fetching org/name@rev: 1.2 GiB of 7.6 GiB (16%), 45.3 MiB/s`` while the
    pod's ``fetch-weights`` container runs; None otherwise."""
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or ()
    running = any(
        cs.get("name") == FETCH_CONTAINER and "running" in (cs.get("state") or {})
        for cs in statuses
    )
    if not running:
        return None
    progress = read_progress(pod)
    name = pod["metadata"]["name"]
    return f"pod {name}: fetching {_what(pod)}: {progress if progress else 'starting'}"
