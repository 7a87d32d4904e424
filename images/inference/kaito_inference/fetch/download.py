"""The fetch itself: lock, resolve, download, verify, mark complete.

Why our own resolve before ``snapshot_download``: when the hub answers an error to the
revision lookup (401, 404 repo, 5xx), ``snapshot_download`` falls back to whatever is in
``local_dir`` and may return an incomplete folder without raising. Resolving the revision
and listing the files first with `HfApi` raises the client's typed errors, gives the
total size for progress and the disk check, and gives the sizes and hashes to verify.
``snapshot_download`` is then called with the commit sha, so every file comes from the
same commit even if the branch moves meanwhile.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from kaito_inference.fetch.progress import ProgressReporter

__all__ = ["MARKER", "FetchError", "FetchResult", "Reason", "WantedFile", "fetch", "target_dir"]

log = structlog.get_logger("kaito_inference.fetch")

MARKER = ".kaito-complete"
"""Written last, in the target: the commit and the verified file list."""


class Reason(enum.StrEnum):
    """The first word of the termination message; the exit code says the same."""

    UNAUTHORIZED = "Unauthorized"
    REVISION_NOT_FOUND = "RevisionNotFound"
    REPOSITORY_NOT_FOUND = "RepositoryNotFound"
    DISK_FULL = "DiskFull"
    DOWNLOAD_FAILED = "DownloadFailed"
    IMAGE_NOT_FOUND = "ImageNotFound"
    """A model image (``fetch.image``): the registry has no such repository or tag."""
    INVALID_IMAGE = "InvalidImage"
    """A model image whose layers hold no model (no file under /data, zstd layers)."""

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    Reason.DOWNLOAD_FAILED: 1,
    Reason.UNAUTHORIZED: 3,
    Reason.REVISION_NOT_FOUND: 4,
    Reason.REPOSITORY_NOT_FOUND: 5,
    Reason.DISK_FULL: 6,
    Reason.IMAGE_NOT_FOUND: 7,
    Reason.INVALID_IMAGE: 8,
}


class FetchError(Exception):
    """A final failure: ``reason`` plus a message a user can act on."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class _Transient(Exception):
    """A failure worth another attempt (5xx, connection, short or corrupt file)."""


@dataclass(frozen=True)
class WantedFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None


@dataclass(frozen=True)
class FetchResult:
    target: Path
    commit: str
    files: int
    bytes: int
    downloaded: bool
    """False when the target was complete already (no request made)."""
    seconds: float


def target_dir(cache_dir: Path, repo: str, revision: str) -> Path:
    """``<cache-dir>/<org>--<name>@<revision>`` (a ``/`` in a branch name becomes ``--``)."""
    return cache_dir / f"{repo.replace('/', '--')}@{revision.replace('/', '--')}"


def fetch(
    repo: str,
    revision: str,
    cache_dir: Path,
    *,
    token: str | None,
    max_attempts: int = 5,
    retry_wait: float = 2.0,
    progress: ProgressReporter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Make ``target_dir(cache_dir, repo, revision)`` hold the verified repo; raises
    `FetchError` (final) when it cannot."""
    t0 = time.monotonic()
    target = target_dir(cache_dir, repo, revision)
    done = _completed(target)
    if done is not None:
        log.info("weights already cached", repo=repo, revision=revision, target=str(target))
        return _result(target, done, downloaded=False, t0=t0)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(target.with_name(target.name + ".lock"), repo=repo):
            done = _completed(target)
            if done is not None:
                log.info("weights fetched by another fetcher", repo=repo, target=str(target))
                return _result(target, done, downloaded=False, t0=t0)
            last: Exception | None = None
            for attempt in range(1, max_attempts + 1):
                try:
                    marker = _download(repo, revision, target, token=token, progress=progress)
                    return _result(target, marker, downloaded=True, t0=t0)
                except _Transient as e:
                    last = e
                    if attempt == max_attempts:
                        break
                    wait = min(retry_wait * 2 ** (attempt - 1), 30.0)
                    log.warning(
                        "fetch attempt failed, retrying", repo=repo, attempt=attempt,
                        of=max_attempts, wait_seconds=wait, error=str(e),
                    )  # fmt: skip
                    sleep(wait)
            raise FetchError(
                Reason.DOWNLOAD_FAILED,
                f"{repo}@{revision}: gave up after {max_attempts} attempts: {last}",
            )
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FetchError(Reason.DISK_FULL, f"{cache_dir}: {e.strerror}") from e
        raise FetchError(Reason.DOWNLOAD_FAILED, f"{cache_dir}: {e}") from e


def _result(target: Path, marker: dict[str, Any], *, downloaded: bool, t0: float) -> FetchResult:
    return FetchResult(
        target=target,
        commit=str(marker["commit"]),
        files=len(marker["files"]),
        bytes=sum(int(f["size"]) for f in marker["files"]),
        downloaded=downloaded,
        seconds=round(time.monotonic() - t0, 3),
    )


# -- the lock and the marker ----------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(path: Path, *, repo: str) -> Iterator[None]:
    """``flock(LOCK_EX)`` on ``path``; logs every ~10 s while another fetcher holds it.
    The kernel drops the lock when its holder dies, so a crashed pod never wedges it."""
    with path.open("a+") as f:
        t0 = next_log = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= next_log:
                    log.info(
                        "waiting for another fetcher", repo=repo, lock=str(path),
                        waited_seconds=round(now - t0, 1),
                    )  # fmt: skip
                    next_log = now + 10
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _completed(target: Path) -> dict[str, Any] | None:
    """The marker, if the target is complete: the marker parses and every listed file is
    there at its size (a stat each; hashes were checked before the marker was written)."""
    try:
        marker = json.loads((target / MARKER).read_text())
        for f in marker["files"]:
            if (target / f["path"]).stat().st_size != int(f["size"]):
                return None
        return dict(marker)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_marker(
    target: Path, repo: str, revision: str, commit: str, files: list[WantedFile]
) -> dict[str, Any]:
    marker = {
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "completed": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": [
            {"path": f.path, "size": f.size, **({"sha256": f.sha256} if f.sha256 else {})}
            for f in files
        ],
    }
    tmp = target / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    tmp.replace(target / MARKER)
    return marker


# -- one attempt ---------------------------------------------------------------------------


def _download(
    repo: str, revision: str, target: Path, *, token: str | None, progress: ProgressReporter | None
) -> dict[str, Any]:
    import httpx2
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile

    auth: str | bool = token or False  # False: never a token file from $HOME
    api = HfApi(token=auth)
    try:
        commit = api.model_info(repo, revision=revision).sha
        assert commit is not None, "the hub's model info has no sha"
        files = [
            WantedFile(
                path=f.path,
                size=f.lfs.size if f.lfs else f.size,
                blob_id=f.blob_id,
                sha256=f.lfs.sha256 if f.lfs else None,
            )
            for f in api.list_repo_tree(repo, revision=commit, recursive=True)
            if isinstance(f, RepoFile)
        ]
        total = sum(f.size for f in files)
        log.info(
            "fetching weights", repo=repo, revision=revision, commit=commit, files=len(files),
            bytes_total=total, target=str(target),
        )  # fmt: skip
        _check_free_space(target, files)
        if progress is not None:
            progress.start(target, [(f.path, f.size) for f in files])
        try:
            snapshot_download(
                repo,
                revision=commit,
                local_dir=target,
                cache_dir=target / ".cache" / "huggingface" / "hub",
                token=auth,
                max_workers=4,
            )
        finally:
            if progress is not None:
                progress.stop()
    except GatedRepoError as e:
        status = e.response.status_code if e.response is not None else 401
        why = (
            "the repo is gated and no token was given (HF_TOKEN is empty)"
            if not token
            else f"the token was refused ({status}: not granted access to this gated repo)"
        )
        raise FetchError(
            Reason.UNAUTHORIZED, f"{repo}: {why}; set presetOptions.modelAccessSecret"
        ) from e
    except RevisionNotFoundError as e:
        raise FetchError(
            Reason.REVISION_NOT_FOUND, f"{repo}: revision {revision!r} does not exist"
        ) from e
    except RepositoryNotFoundError as e:
        raise FetchError(
            Reason.REPOSITORY_NOT_FOUND,
            f"{repo}: no such repository (or it is private and the token has no access)",
        ) from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise FetchError(
                Reason.UNAUTHORIZED,
                f"{repo}: the hub refused the token ({status} {_server_message(e)}); "
                "set presetOptions.modelAccessSecret to a Secret holding a valid token",
            ) from e
        raise _Transient(f"hub answered {status}: {_server_message(e)}") from e
    except (LocalEntryNotFoundError, httpx2.TransportError) as e:
        raise _Transient(f"{type(e).__name__}: {_first_line(e)}") from e
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _Transient(f"{type(e).__name__}: {_first_line(e)}") from e
    bad = _verify(target, files)
    if bad:
        for path, why in bad:
            log.warning("file failed verification, removed", repo=repo, file=path, reason=why)
            (target / path).unlink(missing_ok=True)
        raise _Transient(f"{len(bad)} file(s) failed verification: {bad[0][0]}: {bad[0][1]}")
    marker = _write_marker(target, repo, revision, commit, files)
    log.info("weights verified", repo=repo, commit=commit, files=len(files), bytes=total)
    return marker


def _check_free_space(target: Path, files: list[WantedFile]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    missing = 0
    for f in files:
        try:
            present = (target / f.path).stat().st_size
        except OSError:
            present = 0
        missing += 0 if present == f.size else f.size
    free = shutil.disk_usage(target).free
    if missing > free:
        raise OSError(
            errno.ENOSPC,
            f"needs {missing} more bytes for the weights, {free} free on the cache volume",
        )


def _verify(target: Path, files: list[WantedFile]) -> list[tuple[str, str]]:
    """(path, why) of every file whose size or hash differs from the hub's listing."""
    bad = []
    for f in files:
        path = target / f.path
        try:
            size = path.stat().st_size
        except OSError:
            bad.append((f.path, "missing"))
            continue
        if size != f.size:
            bad.append((f.path, f"size {size}, expected {f.size}"))
            continue
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                sha256.update(chunk)
                if f.sha256 is None:
                    sha1.update(chunk)
        if f.sha256 is not None and sha256.hexdigest() != f.sha256:
            bad.append((f.path, f"sha256 {sha256.hexdigest()}, expected {f.sha256}"))
        elif f.sha256 is None and sha1.hexdigest() != f.blob_id:
            bad.append((f.path, f"git blob {sha1.hexdigest()}, expected {f.blob_id}"))
    return bad


def _server_message(e: Any) -> str:
    response = getattr(e, "response", None)
    message = response.headers.get("X-Error-Message") if response is not None else None
    return str(message or getattr(e, "server_message", None) or _first_line(e))


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
