"""The emulator's repositories on disk: published from local folders, content-addressed.

Layout under ``root``::

    blobs/<sha256>                     every file's bytes, once, whatever repo holds it
    repos/<org>--<name>/repo.json      {"id", "refs": {branch: commit}, "gated", "token_sha256"}
    repos/<org>--<name>/<commit>.json  the commit's files: path, size, git blob oid, sha256, lfs

A commit's sha is the SHA-1 of the repo id and its sorted (path, blob oid) pairs, so
publishing the same folder twice gives the same commit (a test can compute it ahead),
and any change to any file gives a new one; ``publish(..., commit=SHA)`` names the
commit instead (a stand-in served at the exact revision a preset pins; publishing other
files under the same sha replaces them, which the real hub never does). A branch
(``main`` by default) points at the last commit published to it; older commits stay
reachable by their sha, as on the hub.

Which files are "LFS" (served through the CDN redirect with ``X-Linked-Etag`` = sha256):
the hub decides by the repo's ``.gitattributes``; here, weight-like extensions and any
file of 10 MiB or more, which matches what the hub's default ``.gitattributes`` tracks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "LFS_MIN_SIZE",
    "LFS_SUFFIXES",
    "Commit",
    "HubStore",
    "RepoFile",
    "RepoNotFound",
    "RevisionNotFound",
]

LFS_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".onnx", ".msgpack",
     ".model", ".tflite", ".npz", ".pkl", ".zip", ".tar", ".gz"}
)  # fmt: skip
"""Suffixes the hub's default ``.gitattributes`` stores in LFS."""
LFS_MIN_SIZE = 10 * 1024 * 1024
"""Any file at least this big is LFS too (the hub's commit API rule)."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class RepoNotFound(LookupError):
    """No repository of that id: the hub answers 404 ``RepoNotFound`` (401 without a token)."""


class RevisionNotFound(LookupError):
    """The repository has no such branch or commit: the hub answers 404 ``RevisionNotFound``."""


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    oid: str
    """git blob SHA-1 of the file (of its LFS pointer for LFS files), as the hub reports."""
    sha256: str
    lfs: bool

    def pointer(self) -> bytes:
        """The git-lfs pointer file that stands in the git tree for an LFS file."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()


@dataclass(frozen=True)
class Commit:
    repo_id: str
    sha: str
    files: tuple[RepoFile, ...]

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)


@dataclass
class _Repo:
    id: str
    refs: dict[str, str]
    gated: bool = False
    token_sha256: str | None = None
    note: str | None = None


def git_blob_oid(data: bytes) -> str:
    """git's object id of a blob holding ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class HubStore:
    """Repositories under ``root`` (created if missing; what is there is served again)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "repos").mkdir(parents=True, exist_ok=True)

    # -- publishing --------------------------------------------------------------------

    def publish(
        self,
        repo_id: str,
        folder: Path,
        *,
        revision: str | None = None,
        commit: str | None = None,
        gated_token: str | None = None,
        note: str | None = None,
        exclude: Iterable[str] = (),
    ) -> str:
        """Publish every file under ``folder`` as a commit of ``repo_id`` on branch
        ``revision`` (default ``main``); returns the commit sha.

        ``commit``: the commit's sha (40 lowercase hex digits), instead of the one computed
        from the files; e.g. the revision a preset pins, served with other content.
        ``gated_token``: the repo is gated, and only this bearer token may download its
        files (metadata stays public, as on the hub). Publishing again without it keeps
        the repo's gating as it was.
        ``note``: a line about the repo (what it really holds), kept with it; publishing
        again without one keeps it. ``exclude``: paths (relative, posix) left out, besides
        ``.git/`` and ``.cache/``.
        """
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"repo_id {repo_id!r}: expected 'org/name' (letters, digits, ._-)")
        branch = revision or "main"
        if not _BRANCH.match(branch) or _SHA1.match(branch):
            raise ValueError(f"revision {branch!r}: expected a branch name (letters, digits, ._-)")
        if commit is not None and not _SHA1.match(commit):
            raise ValueError(f"commit {commit!r}: expected a full commit sha (40 hex digits)")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"folder {str(folder)!r}: not a directory")
        files = []
        skipped = set(exclude)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel.startswith(".git/") or rel.startswith(".cache/") or rel in skipped:
                continue
            files.append(self._add_blob(rel, path))
        if not files:
            raise ValueError(f"folder {str(folder)!r}: no files to publish")
        listing = json.dumps({"repo": repo_id, "files": [[f.path, f.oid] for f in files]})
        sha = commit or hashlib.sha1(listing.encode(), usedforsecurity=False).hexdigest()
        repo_dir = self._repo_dir(repo_id)
        repo_dir.mkdir(parents=True, exist_ok=True)
        _write_json(repo_dir / f"{sha}.json", {"files": [asdict(f) for f in files]})
        try:
            repo = self._load_repo(repo_id)
        except RepoNotFound:
            repo = _Repo(id=repo_id, refs={})
        repo.refs[branch] = sha
        if gated_token is not None:
            repo.gated, repo.token_sha256 = True, _token_digest(gated_token)
        if note is not None:
            repo.note = note
        _write_json(repo_dir / "repo.json", asdict(repo))
        return sha

    def _add_blob(self, rel: str, path: Path) -> RepoFile:
        sha256 = hashlib.sha256()
        size = path.stat().st_size
        sha1 = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha256.update(chunk)
                sha1.update(chunk)
        digest = sha256.hexdigest()
        blob = self.blob_path(digest)
        if not blob.exists():
            tmp = blob.with_name(f".{digest}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(blob)
        lfs = Path(rel).suffix.lower() in LFS_SUFFIXES or size >= LFS_MIN_SIZE
        entry = RepoFile(path=rel, size=size, oid=sha1.hexdigest(), sha256=digest, lfs=lfs)
        if lfs:  # the git tree holds the pointer, so the blob oid is the pointer's
            pointer = entry.pointer()
            entry = RepoFile(
                path=rel,
                size=size,
                oid=git_blob_oid(pointer),
                sha256=digest,
                lfs=True,
            )
        return entry

    # -- reading -----------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def repos(self) -> list[str]:
        return sorted(
            json.loads(p.read_text())["id"] for p in (self.root / "repos").glob("*/repo.json")
        )

    def gated(self, repo_id: str) -> bool:
        return self._load_repo(repo_id).gated

    def note(self, repo_id: str) -> str | None:
        return self._load_repo(repo_id).note

    def token_allowed(self, repo_id: str, token: str) -> bool:
        repo = self._load_repo(repo_id)
        return repo.token_sha256 == _token_digest(token)

    def known_token(self, token: str) -> bool:
        """Whether any gated repo accepts ``token`` (the hub's "valid credentials")."""
        digest = _token_digest(token)
        return any(
            json.loads(p.read_text()).get("token_sha256") == digest
            for p in (self.root / "repos").glob("*/repo.json")
        )

    def resolve(self, repo_id: str, revision: str) -> Commit:
        """A branch name or a full commit sha -> the commit; raises RepoNotFound or
        RevisionNotFound."""
        repo = self._load_repo(repo_id)
        sha = repo.refs.get(revision)
        if sha is None and _SHA1.match(revision):
            sha = revision
        manifest = self._repo_dir(repo_id) / f"{sha}.json" if sha else None
        if manifest is None or not manifest.exists():
            raise RevisionNotFound(revision)
        files = tuple(RepoFile(**f) for f in json.loads(manifest.read_text())["files"])
        return Commit(repo_id=repo_id, sha=str(sha), files=files)

    def _repo_dir(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id.replace("/", "--")

    def _load_repo(self, repo_id: str) -> _Repo:
        if not _REPO_ID.match(repo_id):
            raise RepoNotFound(repo_id)
        path = self._repo_dir(repo_id) / "repo.json"
        try:
            return _Repo(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RepoNotFound(repo_id) from None


def _write_json(path: Path, data: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
