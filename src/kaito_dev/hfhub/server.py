"""A Hugging Face hub on aiohttp that the real ``huggingface_hub`` client downloads from.

Point the client at it with ``HF_ENDPOINT=<url>``. What ``snapshot_download`` and
``hf_hub_download`` (huggingface_hub 2.4) ask, and what this server answers, as the hub does:

- ``GET /api/models/{org}/{name}[/revision/{rev}]`` -> the model info: ``sha`` (the
  commit the revision resolves to: a branch, or a full commit sha), ``siblings``
  (``?blobs=true`` adds ``size``, ``blobId`` and ``lfs``), ``gated``.
- ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=true`` -> the files
  (``type``, ``path``, ``size``, ``oid``; ``lfs: {oid: sha256, size, pointerSize}``) and
  folders. One page: the hub pages at 1000 entries, our repos are small.
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}``: a regular file -> 200 with
  ``ETag`` (the git blob sha-1), ``X-Repo-Commit``, ``Content-Length``; an LFS file ->
  302 to the blob host (a second port, so another origin: the client drops the
  ``Authorization`` header there, as with the hub's CDN) with ``X-Linked-Etag`` (the
  sha256), ``X-Linked-Size`` and ``X-Repo-Commit``. The blob host checks the URL's
  signature and expiry. Both honour ``Range: bytes=a-[b]`` (206, ``Content-Range``;
  416 when unsatisfiable): the client resumes a broken download with it.
- errors carry the hub's ``X-Error-Code`` / ``X-Error-Message`` headers, which the client
  turns into its typed errors: ``RepoNotFound`` (401 without a token, 404 with one),
  ``RevisionNotFound`` (404), ``EntryNotFound`` (404), ``GatedRepo`` (401 without a
  token, 403 with a valid token the repo does not grant); a bearer token no repo knows
  is 401 "Invalid credentials in Authorization header" on every route, as on the hub.

Content is published from local folders (`HubStore.publish`); faults (`faults.py`) are
injected in-process or over ``/_emulator/faults``; every hub request is recorded
(`requests`, `count`, `bytes_sent`; ``GET /_emulator/requests``) so tests can prove
what crossed the wire. The control surface has no auth: loopback dev/test use only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web

from kaito.runtime.faults import add_fault_routes
from kaito.runtime.httpserver import HttpServer
from kaito_dev.hfhub.faults import Fault, FaultInjector, FaultKind, Scope
from kaito_dev.hfhub.store import Commit, HubStore, RepoFile, RepoNotFound, RevisionNotFound

__all__ = ["HubEmulator", "RecordedRequest"]

log = structlog.get_logger("kaito_dev.hfhub")

_CHUNK = 64 * 1024
_URL_TTL = 3600
"""Seconds a signed blob URL stays valid (the hub's CDN URLs last about an hour)."""
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RecordedRequest:
    method: str
    route: str
    """info | tree | resolve | cdn"""
    repo: str | None
    file: str | None
    status: int = 0
    range: str | None = None
    """The request's Range header, if any."""
    bytes_sent: int = 0
    """File bytes written to the connection (0 for HEAD and JSON answers)."""
    token: bool = False
    """Whether it carried a bearer token."""


_RECORD = web.RequestKey("record", RecordedRequest)


def _hub_error(status: int, code: str | None, message: str, **headers: str) -> web.Response:
    h = {"X-Error-Message": message, **headers}
    if code is not None:
        h["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=h)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive); None: no/ignored Range; "unsatisfiable"."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":  # suffix: the last N bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 and size > 0 else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class HubEmulator:
    """``async with HubEmulator(root) as hub``: the hub on ``hub.url``, blobs on ``hub.cdn_url``.

    Args:
        root: where published repos live (created if missing; repos already there are
            served again, so a restarted emulator keeps its content).
        host, port: where the hub listens; port 0 (default) picks a free one.
        cdn_port: where the LFS blob host listens; 0 (default) picks a free one.
        tokens: bearer tokens that are valid without granting any gated repo (a gated
            repo's own token is always valid); default none.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        tokens: Iterable[str] = (),
    ) -> None:
        self.store = HubStore(Path(root))
        self.host, self.port, self.cdn_port = host, port, cdn_port
        self.tokens = set(tokens)
        self.faults = FaultInjector()
        self.requests: list[RecordedRequest] = []
        self._secret = secrets.token_bytes(16)
        self._hub: HttpServer | None = None
        self._cdn: HttpServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The hub's address: what ``HF_ENDPOINT`` is set to."""
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self.host}:{self.cdn_port}"

    async def start(self) -> None:
        hub = web.Application(middlewares=[self._middleware])
        r = hub.router
        r.add_get("/api/models/{org}/{name}", self._info, name="info")
        r.add_get("/api/models/{org}/{name}/revision/{rev}", self._info, name="info-rev")
        r.add_get("/api/models/{org}/{name}/tree/{rev}", self._tree, name="tree")
        r.add_get("/api/models/{org}/{name}/tree/{rev}/{path:.+}", self._tree, name="tree-path")
        r.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve, name="resolve")
        r.add_get("/_emulator/requests", self._control_requests)
        r.add_get("/_emulator/state", self._control_state)
        add_fault_routes(r, self.faults, Fault.from_json)
        r.add_post("/_emulator/repos", self._control_publish)
        cdn = web.Application(middlewares=[self._middleware])
        cdn.router.add_get("/repos/{repo_dir}/{sha256}", self._blob, name="cdn")
        self._hub = HttpServer(hub, host=self.host, port=self.port, name="hf-hub-emulator")
        self._cdn = HttpServer(cdn, host=self.host, port=self.cdn_port, name="hf-hub-cdn")
        await self._hub.start()
        await self._cdn.start()
        self.port, self.cdn_port = int(self._hub.port or 0), int(self._cdn.port or 0)
        log.info(
            "hf hub emulator listening", url=self.url, cdn=self.cdn_url, root=str(self.store.root)
        )

    async def stop(self) -> None:
        for server in (self._hub, self._cdn):
            if server is not None:
                await server.stop()
        self._hub = self._cdn = None

    async def __aenter__(self) -> HubEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the Python API for tests and the demo ---------------------------------------------

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
        """Publish ``folder`` as ``repo_id`` on branch ``revision`` (default main); returns
        the commit sha (deterministic: the same files give the same sha), or ``commit``
        when given (the sha to serve the files under, e.g. a preset's pinned revision).
        ``note`` says what the repo really holds: logged here, kept with the repo, shown
        in its model info (``cardData.kaito_note``) and ``/_emulator/state``.
        ``exclude``: relative paths left out (besides ``.git/`` and ``.cache/``)."""
        sha = self.store.publish(
            repo_id, folder, revision=revision, commit=commit, gated_token=gated_token,
            note=note, exclude=exclude,
        )  # fmt: skip
        log.info(
            "repo published", repo=repo_id, revision=revision or "main", sha=sha,
            gated=self.store.gated(repo_id), **({"note": note} if note else {}),
        )  # fmt: skip
        return sha

    def inject(self, fault: Fault) -> Fault:
        """Act on matching requests with ``fault`` (see `faults.py`)."""
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(
        self,
        *,
        route: str | None = None,
        method: str | None = None,
        file: str | None = None,
        status: int | None = None,
        ranged: bool | None = None,
    ) -> int:
        """How many recorded requests match every given filter."""
        return len(self._select(route, method, file, status, ranged))

    def bytes_sent(self, *, file: str | None = None) -> int:
        """File bytes the hub and the blob host wrote (for ``file``, or all)."""
        return sum(r.bytes_sent for r in self._select(None, None, file, None, None))

    def _select(
        self,
        route: str | None,
        method: str | None,
        file: str | None,
        status: int | None,
        ranged: bool | None,
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (route is None or r.route == route)
            and (method is None or r.method == method)
            and (file is None or r.file == file)
            and (status is None or r.status == status)
            and (ranged is None or (r.range is not None) == ranged)
        ]

    # -- middleware: record, reject unknown tokens, server-error faults ---------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        if route is None:  # the control surface and 404s are not hub traffic
            return await handler(request)
        route = route.removesuffix("-rev").removesuffix("-path")
        m = request.match_info
        repo = m["repo_dir"].replace("--", "/", 1) if route == "cdn" else f"{m['org']}/{m['name']}"
        file = request.query.get("file") if route == "cdn" else m.get("path")
        token = _bearer(request)
        rec = RecordedRequest(
            method=request.method,
            route=route,
            repo=repo,
            file=file,
            range=request.headers.get("Range"),
            token=token is not None,
        )
        request[_RECORD] = rec
        self.requests.append(rec)
        scope = {"info": Scope.API, "tree": Scope.API, "resolve": Scope.RESOLVE}.get(
            route, Scope.CDN
        )
        fault = self.faults.take(
            scope, file, content=request.method == "GET" and route in ("resolve", "cdn"),
            kinds=(FaultKind.SERVER_ERROR,),
        )  # fmt: skip
        if fault is not None:
            response: web.StreamResponse = _hub_error(
                fault.status,
                None,
                "Internal Error - We're working hard to fix this as soon as possible!",
            )
        elif route != "cdn" and token is not None and not self._valid_token(token):
            response = _hub_error(401, None, INVALID_CREDENTIALS)
        else:
            response = await handler(request)
        rec.status = response.status
        log.debug(
            "hub request", method=request.method, route=route, repo=repo, file=file,
            status=response.status, range=rec.range, bytes=rec.bytes_sent,
        )  # fmt: skip
        return response

    def _valid_token(self, token: str) -> bool:
        return token in self.tokens or self.store.known_token(token)

    # -- the hub's routes ------------------------------------------------------------------

    def _commit(self, request: web.Request) -> Commit | web.Response:
        m = request.match_info
        repo_id = f"{m['org']}/{m['name']}"
        try:
            return self.store.resolve(repo_id, m.get("rev", "main"))
        except RepoNotFound:
            authed = _bearer(request) is not None
            return _hub_error(401 if not authed else 404, "RepoNotFound", "Repository not found")
        except RevisionNotFound:
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {m.get('rev', 'main')}")

    async def _info(self, request: web.Request) -> web.Response:
        commit = self._commit(request)
        if isinstance(commit, web.Response):
            return commit
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for f in commit.files:
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(f.pointer())}
            siblings.append(s)
        gated = self.store.gated(commit.repo_id)
        note = self.store.note(commit.repo_id)
        return web.json_response(
            {
                **({"cardData": {"kaito_note": note}} if note else {}),
                "_id": commit.sha[:24],
                "id": commit.repo_id,
                "modelId": commit.repo_id,
                "author": commit.repo_id.split("/")[0],
                "sha": commit.sha,
                "private": False,
                "gated": "manual" if gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        commit = self._commit(request)
        if isinstance(commit, web.Response):
            return commit
        prefix = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for f in commit.files:
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1 :] if prefix else f.path
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:i])
                if (recursive or i == 1) and folder not in folders:
                    folders.add(folder)
                    oid = hashlib.sha1(folder.encode(), usedforsecurity=False).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
            if len(parts) == 1 or recursive:
                entries.append(_tree_entry(f))
        if prefix and not entries:
            return _hub_error(
                404, "EntryNotFound", f'{prefix} does not exist on "{request.match_info["rev"]}"'
            )
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        commit = self._commit(request)
        if isinstance(commit, web.Response):
            return commit
        path = request.match_info["path"]
        token = _bearer(request)
        if self.store.gated(commit.repo_id):
            message = f"Access to model {commit.repo_id} is restricted"
            if token is None:
                return _hub_error(
                    401, "GatedRepo", f"{message}. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    **{"X-Repo-Commit": commit.sha},
                )  # fmt: skip
            if not self.store.token_allowed(commit.repo_id, token):
                return _hub_error(
                    403, "GatedRepo", f"{message} and you are not in the authorized list. "
                    f"Visit {self.url}/{commit.repo_id} to ask for access.",
                    **{"X-Repo-Commit": commit.sha},
                )  # fmt: skip
        f = commit.file(path)
        if f is None:
            return _hub_error(
                404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit.sha}
            )
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{f.oid}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=0, must-revalidate",
        }
        if f.lfs:
            headers.update(
                {
                    "Location": self._signed_url(commit.repo_id, f),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                }
            )
            return web.Response(
                status=302, headers=headers, text=f"Found. Redirecting to {headers['Location']}"
            )
        return await self._send(request, f, headers, Scope.RESOLVE)

    # -- the blob host -----------------------------------------------------------------------

    def _signed_url(self, repo_id: str, f: RepoFile) -> str:
        repo_dir = repo_id.replace("/", "--")
        expires = int(time.time()) + _URL_TTL
        signature = self._sign(repo_dir, f.sha256, f.path, expires)
        return (
            f"{self.cdn_url}/repos/{repo_dir}/{f.sha256}?file={quote(f.path, safe='')}"
            f"&Expires={expires}&Signature={signature}"
        )

    def _sign(self, repo_dir: str, sha256: str, file: str, expires: int) -> str:
        msg = f"{repo_dir}\n{sha256}\n{file}\n{expires}".encode()
        return hmac.new(self._secret, msg, "sha256").hexdigest()

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        m, q = request.match_info, request.query
        try:
            expires = int(q.get("Expires", ""))
        except ValueError:
            expires = 0
        expected = self._sign(m["repo_dir"], m["sha256"], q.get("file", ""), expires)
        if not hmac.compare_digest(expected, q.get("Signature", "")) or expires < time.time():
            return web.Response(
                status=403, text="AccessDenied: request has expired or its signature does not match"
            )
        blob = self.store.blob_path(m["sha256"])
        if not blob.exists():
            return web.Response(status=404, text="NoSuchKey")
        f = RepoFile(
            path=q.get("file", ""), size=blob.stat().st_size, oid="", sha256=m["sha256"], lfs=True
        )
        name = Path(f.path).name
        headers = {
            "ETag": f'"{f.sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": (
                f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
            ),
        }
        return await self._send(request, f, headers, Scope.CDN)

    # -- streaming file bytes: Range, slow and reset faults -----------------------------------

    async def _send(
        self, request: web.Request, f: RepoFile, headers: dict[str, str], scope: Scope
    ) -> web.StreamResponse:
        rec = request[_RECORD]
        rng = _parse_range(request.headers.get("Range"), f.size)
        if rng == "unsatisfiable":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
        start, end = rng if isinstance(rng, tuple) else (0, f.size - 1)
        length = end - start + 1 if f.size else 0
        headers = {**headers, "Content-Type": "application/octet-stream"}
        status = 200
        if isinstance(rng, tuple):
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        if request.method == "HEAD":
            return web.Response(status=status, headers={**headers, "Content-Length": str(length)})
        reset = self.faults.take(scope, f.path, content=True, kinds=(FaultKind.RESET,))
        slow = self.faults.take(scope, f.path, content=True, kinds=(FaultKind.SLOW,))
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        limit = length if reset is None else min(length, reset.after_bytes)
        chunk = _CHUNK if slow is None else max(1, min(_CHUNK, slow.bytes_per_second // 10))
        t0 = time.monotonic()
        with self.store.blob_path(f.sha256).open("rb") as blob:
            blob.seek(start)
            while rec.bytes_sent < limit:
                data = blob.read(min(chunk, limit - rec.bytes_sent))
                if not data:
                    break
                await response.write(data)
                rec.bytes_sent += len(data)
                if slow is not None:
                    ahead = rec.bytes_sent / slow.bytes_per_second - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        if reset is not None and limit < length:
            log.info("injected reset", file=f.path, after_bytes=rec.bytes_sent, of=length)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    # -- control surface (no auth: loopback dev/test use only) -----------------------------

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests[-10000:]])

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "url": self.url,
                "cdn": self.cdn_url,
                "repos": self.store.repos(),
                "notes": {r: n for r in self.store.repos() if (n := self.store.note(r))},
                "faults": [f.to_json() for f in self.faults.faults],
                "requests": len(self.requests),
                "bytesSent": self.bytes_sent(),
            }
        )

    async def _control_publish(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or "repo_id" not in body or "folder" not in body:
                raise ValueError("repo_id and folder: required")
            sha = self.publish(
                str(body["repo_id"]),
                Path(body["folder"]),
                revision=body.get("revision"),
                commit=body.get("commit"),
                gated_token=body.get("gated_token"),
                note=body.get("note"),
            )
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"repo_id": body["repo_id"], "sha": sha}, status=201)


def _tree_entry(f: RepoFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size, "path": f.path}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer())}
    return entry
