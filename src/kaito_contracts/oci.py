"""Adapter images: the OCI image the tuning job pushes and an inference pod pulls.

The format is a contract between two programs (``kaito_tuning.push`` writes it,
``kaito_inference.adapter_pull`` reads it), so it lives here once, with the registry
protocol both speak (the OCI distribution spec, HTTP API v2). Standard library only:
the images carry no Go ``oras``/``crane`` binary and need none.

An adapter image is an ordinary OCI image (``application/vnd.oci.image.manifest.v1+json``)
whose single ``tar+gzip`` layer holds the adapter's files under ``data/``, so that a
container runtime that pulls it sees them at ``/data`` (the layout upstream KAITO's
adapter images use). The config (``application/vnd.oci.image.config.v1+json``) has the
layer's ``diff_id`` in ``rootfs`` and labels naming what the adapter was trained for.
The layer is reproducible: entries sorted, owner 0, mtime 0, gzip without a timestamp,
so the same adapter bytes always give the same digest and a second push uploads nothing.

Authentication reads a docker config (the ``.dockerconfigjson`` key of a
``kubernetes.io/dockerconfigjson`` Secret) and answers the registry's challenge as the
distribution spec describes: ``WWW-Authenticate: Basic`` (distribution with htpasswd)
gets the Secret's username and password; ``Bearer realm=...,service=...,scope=...``
(ACR, Docker Hub, Harbor) sends them to the token realm and retries with the token it
returns (an ``identitytoken`` is exchanged with the OAuth2 refresh-token grant).

Every failure is a `RegistryError` whose ``reason`` is one CamelCase word (the Kubernetes
convention) and whose message names the image, the registry and what to fix;
``str(error)`` is ``"<Reason>: <message>"``, the shape a container's termination message
takes so the workspace controller can lift the reason onto the Workspace's conditions.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = [
    "ADAPTER_ARTIFACT_TYPE",
    "DATA_PREFIX",
    "LABEL_PRESET",
    "LABEL_WORKSPACE",
    "MEDIA_CONFIG",
    "MEDIA_LAYER",
    "MEDIA_MANIFEST",
    "AdapterImage",
    "Credentials",
    "ImageRef",
    "Registry",
    "RegistryError",
    "build_adapter_image",
    "extract_data",
    "load_credentials",
    "pull_adapter",
    "push_blob",
    "push_image",
    "resolve_manifest",
]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ADAPTER_ARTIFACT_TYPE = "application/vnd.kaito.adapter.v1"
"""The manifest's ``artifactType`` annotation value (informative; the image is a plain image)."""
DATA_PREFIX = "data"
"""The layer's folder: the adapter's files are at ``/data`` in the image."""
LABEL_PRESET = "kaito.sh/preset"
LABEL_WORKSPACE = "kaito.sh/workspace"
ANNOTATION_TITLE = "org.opencontainers.image.title"

_CHUNK = 1 << 20
_ACCEPT = ", ".join((MEDIA_MANIFEST, DOCKER_MANIFEST, MEDIA_INDEX, DOCKER_LIST))
_GZIP_LAYERS = frozenset({MEDIA_LAYER, DOCKER_LAYER})
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[A-Fa-f0-9:]+\])(?::[0-9]{{1,5}})?$"
)
"""distribution/reference's domain: DNS labels or a bracketed IPv6 address, a port."""
_NAME_MAX = 255


class RegistryError(Exception):
    """A registry operation failed: ``reason`` (one CamelCase word) and ``message``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def termination_line(self, action: str, image: str) -> str:
        """``<Reason>: <action> <image>: <message>`` (the prefix only once): what a
        pusher or puller leaves as its container's termination message."""
        message = self.message
        if not message.startswith(f"{action} "):
            message = f"{action} {image}: {message}"
        return f"{self.reason}: {message}"


def write_termination(path: Path, line: str) -> None:
    """``line`` on stderr and in the termination-message file ``path`` (kubelet shows it
    on the pod); no such file outside a pod is fine, stderr carries it."""
    print(line, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        path.write_text(line + "\n")


# -- references and credentials ------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """``host[:port]/repository[:tag][@sha256:...]``; the host is required (no implicit
    Docker Hub: an adapter goes to the user's registry, and a missing host is a typo)."""

    host: str
    repository: str
    tag: str = "latest"
    digest: str = ""

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        text = ref.strip()
        if not text:
            raise RegistryError("InvalidImageReference", "the image reference is empty")
        host, sep, rest = text.partition("/")
        if not sep or not ("." in host or ":" in host or host == "localhost"):
            raise RegistryError(
                "InvalidImageReference",
                f"{ref!r} names no registry host: write it in full, "
                "e.g. myregistry.azurecr.io/adapters/my-adapter:0.1.0",
            )
        if not _HOST.match(host):
            raise RegistryError(
                "InvalidImageReference",
                f"{ref!r}: bad registry host {host!r} (letters, digits, '-' and '.', "
                "an optional :port)",
            )
        digest = ""
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.match(digest):
                raise RegistryError("InvalidImageReference", f"{ref!r}: bad digest {digest!r}")
        tag = ""
        name = rest
        if ":" in rest.rsplit("/", 1)[-1]:
            name, tag = rest.rsplit(":", 1)
            if not _TAG.match(tag):
                raise RegistryError("InvalidImageReference", f"{ref!r}: bad tag {tag!r}")
        if not _REPO.match(name):
            raise RegistryError(
                "InvalidImageReference",
                f"{ref!r}: bad repository {name!r} (lowercase letters, digits, '.', '_', '-', '/')",
            )
        if len(host) + 1 + len(name) > _NAME_MAX:
            raise RegistryError(
                "InvalidImageReference",
                f"{ref!r}: the name (registry and repository) is longer than {_NAME_MAX} "
                "characters",
            )
        return cls(host=host, repository=name, tag=tag or "latest", digest=digest)

    @property
    def reference(self) -> str:
        """What ``/manifests/<reference>`` takes: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        tail = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.host}/{self.repository}{tail}"


@dataclass(frozen=True)
class Credentials:
    """What a docker config holds for one registry."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    source: str = ""
    """Where they came from (``secret acr-secret``), for messages."""

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token)


def _registry_key(key: str) -> str:
    """``https://host/v1/`` -> ``host``: how docker normalises an ``auths`` key."""
    key = key.strip()
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0].lower()


def load_credentials(path: Path | None, host: str, *, source: str = "") -> Credentials:
    """The credentials ``path`` (a docker config / ``.dockerconfigjson``) holds for
    ``host``; empty ones when ``path`` is None or has no entry for it."""
    label = source or (str(path) if path else "")
    if path is None:
        return Credentials(source=label)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(
            "SecretNotFound", f"{label}: no docker config at {path} (is the Secret mounted?)"
        ) from None
    except (OSError, ValueError) as e:
        raise RegistryError(
            "InvalidSecret", f"{label}: {path} is not a docker config (JSON): {e}"
        ) from None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        raise RegistryError(
            "InvalidSecret",
            f"{label}: {path} has no 'auths' object; a kubernetes.io/dockerconfigjson Secret "
            'holds {"auths": {"<registry>": {"username": ..., "password": ...}}}',
        )
    for key, entry in auths.items():
        if _registry_key(str(key)) != host.lower() or not isinstance(entry, dict):
            continue
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth") and not username:
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(
                    "InvalidSecret", f"{label}: the 'auth' of {key} is not base64 user:password"
                ) from None
        return Credentials(
            username=username,
            password=password,
            identity_token=str(entry.get("identitytoken") or ""),
            source=label,
        )
    return Credentials(source=label)


# -- the registry client -------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by `Registry._send`, which drops the registry's Authorization
    on a redirect to another host (blob storage signs its own URLs)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in re.finditer(r'([A-Za-z_]+)=(?:"([^"]*)"|([^,\s]*))', rest)
    }
    return scheme.lower(), params


@dataclass
class _Response:
    status: int
    headers: Message
    body: IO[bytes]


@dataclass
class Registry:
    """One registry host, authenticated per repository scope as its challenges ask.

    ``plain_http`` defaults to True for loopback hosts only (``127.0.0.1``,
    ``localhost``), as container runtimes treat them; every other host is https.
    """

    host: str
    credentials: Credentials = field(default_factory=Credentials)
    plain_http: bool | None = None
    timeout: float = 60.0
    action: str = "pushing"
    image: str = ""
    _auth: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.plain_http is None:
            name = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host
            self.plain_http = name in ("127.0.0.1", "localhost", "[::1]")
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def base(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    def _fail(self, reason: str, detail: str) -> RegistryError:
        return RegistryError(reason, f"{self.action} {self.image or self.host}: {detail}")

    def _open(
        self, method: str, url: str, headers: Mapping[str, str], data: IO[bytes] | bytes | None
    ) -> _Response:
        req = urllib.request.Request(url, method=method, headers=dict(headers))
        if data is not None:
            req.data = data
        try:
            resp = self._opener.open(req, timeout=self.timeout)
            return _Response(resp.status, resp.headers, resp)
        except urllib.error.HTTPError as e:
            return _Response(e.code, e.headers, e)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise self._fail(
                "RegistryUnreachable",
                f"cannot reach the registry at {self.base}: {reason}",
            ) from None

    def _credentials_hint(self) -> str:
        src = self.credentials.source
        if self.credentials:
            return f"the registry refused the credentials of {src or 'the docker config'}"
        if src:
            return (
                f"the registry demands credentials and {src} has none for {self.host} "
                "(its 'auths' must name this registry)"
            )
        return "the registry demands credentials and none were given (imagePushSecret)"

    def _token(self, params: Mapping[str, str], scope: str) -> str:
        realm = params.get("realm", "")
        if not realm:
            raise self._fail("RegistryError", "a Bearer challenge without a realm")
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        creds = self.credentials
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if creds.identity_token:
            # The OAuth2 refresh-token grant (docker's identitytoken, ACR's AAD tokens).
            data = urllib.parse.urlencode(
                {**query, "grant_type": "refresh_token", "refresh_token": creds.identity_token}
            ).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._open("POST", realm, headers, data)
        else:
            if creds:
                basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            sep = "&" if "?" in realm else "?"
            resp = self._open("GET", realm + sep + urllib.parse.urlencode(query), headers, None)
        with contextlib.closing(resp.body):
            body = resp.body.read()
        if resp.status in (401, 403):
            raise self._fail("Unauthorized", self._credentials_hint())
        if resp.status != 200:
            raise self._fail(
                "RegistryError", f"the token service {realm} answered {resp.status}: {body[:200]!r}"
            )
        try:
            answer = json.loads(body)
            return str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, AttributeError):
            raise self._fail("RegistryError", f"the token service {realm} sent no token") from None

    def _authorize(self, challenge: str, scope: str) -> None:
        scheme, params = _challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise self._fail("Unauthorized", self._credentials_hint())
            creds = self.credentials
            basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            self._auth[scope] = f"Basic {basic}"
        elif scheme == "bearer":
            self._auth[scope] = f"Bearer {self._token(params, scope)}"
        else:
            raise self._fail("RegistryError", f"unsupported authentication scheme {scheme!r}")

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        data: Callable[[], IO[bytes] | bytes] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> _Response:
        """``method`` ``path`` (``/v2/...`` or an absolute upload URL), authenticating for
        ``scope`` on a 401 and retrying once; redirects followed, without the registry's
        Authorization on another host. ``data`` is a factory: a retry needs a fresh body."""
        url = path if "://" in path else self.base + path
        for attempt in range(2):
            hdrs = dict(headers or {})
            if scope in self._auth:
                hdrs["Authorization"] = self._auth[scope]
            resp = self._open(method, url, hdrs, data() if data else None)
            for _ in range(5):
                if resp.status not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                    break
                with contextlib.closing(resp.body):
                    resp.body.read()
                target = urllib.parse.urljoin(url, resp.headers.get("Location", ""))
                same = urllib.parse.urlsplit(target).netloc == urllib.parse.urlsplit(url).netloc
                resp = self._open(method, target, hdrs if same else {}, None)
            if resp.status == 401 and attempt == 0:
                challenge = resp.headers.get("WWW-Authenticate", "")
                with contextlib.closing(resp.body):
                    resp.body.read()
                if not challenge:
                    raise self._fail("Unauthorized", self._credentials_hint())
                self._authorize(challenge, scope)
                continue
            break
        if resp.status in ok:
            return resp
        with contextlib.closing(resp.body):
            text = resp.body.read(2000).decode(errors="replace")
        if resp.status == 401:
            raise self._fail("Unauthorized", self._credentials_hint())
        if resp.status == 403:
            raise self._fail(
                "Forbidden",
                f"{self.credentials.source or 'these credentials'} may not "
                f"{'push to' if 'push' in scope else 'pull from'} this repository",
            )
        if resp.status == 404 and method in ("GET", "HEAD") and "/manifests/" in path:
            raise self._fail("ImageNotFound", f"the registry has no such image ({text.strip()})")
        raise self._fail("RegistryError", f"{method} {path} answered {resp.status}: {text.strip()}")


# -- building ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterImage:
    """A built adapter image: the layer (a gzip file), its config and manifest bytes."""

    layer: Path
    layer_digest: str
    layer_size: int
    diff_id: str
    config: bytes
    manifest: bytes

    @property
    def config_digest(self) -> str:
        return _sha256(self.config)

    @property
    def manifest_digest(self) -> str:
        return _sha256(self.manifest)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to ``out``."""

    def __init__(self, out: _Writer) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _tar_info(name: str, *, directory: bool, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _file_mode(path: Path) -> int:
    """0o755 for an executable file, else 0o644 (the only modes a layer member keeps)."""
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """Add the regular file ``path`` to ``tar`` as ``name`` (normalised owner and time)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        tar.addfile(_tar_info(name, directory=False, size=size, mode=_file_mode(path)), f)


@dataclass
class _GzipData:
    """What `_gzip_data_tar` wrote: the tar to fill and, once closed, its two hashes."""

    tar: tarfile.TarFile
    compressed: _Hashing
    plain: _Hashing

    @property
    def digest(self) -> str:
        return "sha256:" + self.compressed.hash.hexdigest()

    @property
    def diff_id(self) -> str:
        return "sha256:" + self.plain.hash.hexdigest()


@contextlib.contextmanager
def _gzip_data_tar(out: _Writer) -> Iterator[_GzipData]:
    """A reproducible tar+gzip layer written to ``out``, its ``data/`` folder already in."""
    compressed = _Hashing(out)
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        plain = _Hashing(gz)
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info(f"{DATA_PREFIX}/", directory=True))
            yield _GzipData(tar, compressed, plain)


def image_config(
    labels: Mapping[str, str] | None, diff_ids: list[str], history: list[str]
) -> bytes:
    """An image config's canonical bytes: amd64/linux, ``labels``, one history entry a layer."""
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": dict(sorted((labels or {}).items()))},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": h} for h in history],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def image_manifest(
    config: bytes,
    layers: list[tuple[str, str, int, str]],
    artifact_type: str,
    labels: Mapping[str, str] | None,
) -> bytes:
    """An image manifest's canonical bytes; ``layers`` as (media type, digest, size, title)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _sha256(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": size,
                    "annotations": {ANNOTATION_TITLE: title},
                }
                for media_type, digest, size, title in layers
            ],
            "annotations": {"kaito.sh/artifact-type": artifact_type, **dict(labels or {})},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _entries(source: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(source):
        dirs.sort()
        base = Path(root)
        for d in dirs:
            yield base / d
        for f in sorted(files):
            yield base / f


def build_adapter_image(
    source: Path, workdir: Path, *, labels: Mapping[str, str] | None = None
) -> AdapterImage:
    """Build the adapter image of the files under ``source`` into ``workdir``.

    Regular files and folders only: a symlink or device in an adapter folder is refused
    (`RegistryError` ``InvalidAdapter``) rather than silently dropped or followed.
    """
    if not source.is_dir():
        raise RegistryError("InvalidAdapter", f"{source} is not a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    layer = workdir / "layer.tar.gz"
    with open(layer, "wb") as out:
        with _gzip_data_tar(out) as written:
            files = 0
            for path in _entries(source):
                name = f"{DATA_PREFIX}/{path.relative_to(source).as_posix()}"
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    raise RegistryError("InvalidAdapter", f"{path}: not a regular file or folder")
                if path.is_dir():
                    written.tar.addfile(_tar_info(name + "/", directory=True))
                    continue
                _add_file(written.tar, path, name)
                files += 1
        if files == 0:
            raise RegistryError("InvalidAdapter", f"{source} holds no file to push")
    diff_id, digest = written.diff_id, written.digest
    config = image_config(labels, [diff_id], ["kaito_tuning.push: the adapter under /data"])
    manifest = image_manifest(
        config,
        [(MEDIA_LAYER, digest, written.compressed.size, DATA_PREFIX)],
        ADAPTER_ARTIFACT_TYPE,
        labels,
    )
    return AdapterImage(
        layer=layer,
        layer_digest=digest,
        layer_size=written.compressed.size,
        diff_id=diff_id,
        config=config,
        manifest=manifest,
    )


# -- pushing -------------------------------------------------------------------------------


def push_blob(
    reg: Registry, ref: ImageRef, digest: str, size: int, open_body: Callable[[], IO[bytes] | bytes]
) -> bool:
    """Upload one blob unless the registry has it; True when it was uploaded."""
    scope = f"repository:{ref.repository}:pull,push"
    head = reg.request("HEAD", f"/v2/{ref.repository}/blobs/{digest}", scope=scope, ok=(200, 404))
    head.body.close()
    if head.status == 200:
        return False
    start = reg.request(
        "POST", f"/v2/{ref.repository}/blobs/uploads/", scope=scope, ok=(202,), data=lambda: b""
    )
    start.body.close()
    location = start.headers.get("Location", "")
    if not location:
        raise reg._fail("RegistryError", "the upload answer has no Location")
    url = urllib.parse.urljoin(reg.base + "/", location)
    url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
    done = reg.request(
        "PUT",
        url,
        scope=scope,
        ok=(201,),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        data=open_body,
    )
    done.body.close()
    return True


def push_image(
    image: AdapterImage,
    ref: ImageRef,
    credentials: Credentials,
    *,
    plain_http: bool | None = None,
    progress: Callable[[str, Mapping[str, object]], None] | None = None,
) -> str:
    """Push ``image`` to ``ref``; the manifest's digest. Blobs the registry already has
    are skipped (HEAD), the manifest goes last so a half-pushed image never has a tag."""
    say = progress or (lambda event, fields: None)
    reg = Registry(ref.host, credentials, plain_http=plain_http, action="pushing", image=str(ref))
    files: list[IO[bytes]] = []

    def layer_body() -> IO[bytes]:
        f = open(image.layer, "rb")  # noqa: SIM115 - closed below, after the request
        files.append(f)
        return f

    try:
        uploaded = push_blob(reg, ref, image.layer_digest, image.layer_size, layer_body)
        say(
            "layer pushed" if uploaded else "layer already there",
            {"digest": image.layer_digest, "bytes": image.layer_size},
        )
        uploaded = push_blob(reg, ref, image.config_digest, len(image.config), lambda: image.config)
        say(
            "config pushed" if uploaded else "config already there", {"digest": image.config_digest}
        )
    finally:
        for f in files:
            f.close()
    digest = push_manifest(reg, ref, image.manifest)
    say("manifest pushed", {"digest": digest, "image": str(ref)})
    return digest


def push_manifest(reg: Registry, ref: ImageRef, manifest: bytes) -> str:
    """PUT ``manifest`` under ``ref``'s tag (after its blobs); its digest, checked against
    what the registry says it stored."""
    want = _sha256(manifest)
    resp = reg.request(
        "PUT",
        f"/v2/{ref.repository}/manifests/{ref.tag}",
        scope=f"repository:{ref.repository}:pull,push",
        ok=(201,),
        headers={"Content-Type": MEDIA_MANIFEST},
        data=lambda: manifest,
    )
    resp.body.close()
    digest = resp.headers.get("Docker-Content-Digest") or want
    if digest != want:
        raise reg._fail("RegistryError", f"the registry stored manifest {digest}, not {want}")
    return digest


def open_blob(reg: Registry, ref: ImageRef, digest: str) -> _Response:
    """GET one blob of ``ref``'s repository (the caller reads and closes its body)."""
    return reg.request(
        "GET", f"/v2/{ref.repository}/blobs/{digest}", scope=f"repository:{ref.repository}:pull"
    )


# -- pulling -------------------------------------------------------------------------------


def resolve_manifest(reg: Registry, ref: ImageRef) -> tuple[str, dict[str, Any]]:
    """(digest, manifest) of the image ``ref`` names: a tag resolved to what it points at
    now, a multi-platform index to its linux/amd64 image. A pinned digest is checked
    against the bytes that arrive; a tag's digest is the sha256 of those bytes."""
    scope = f"repository:{ref.repository}:pull"
    reference = ref.reference
    for _ in range(2):
        resp = reg.request(
            "GET",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope=scope,
            headers={"Accept": _ACCEPT},
        )
        with contextlib.closing(resp.body):
            body = resp.body.read()
        if ref.digest and reference == ref.digest and _sha256(body) != ref.digest:
            raise reg._fail("DigestMismatch", f"the manifest's digest is {_sha256(body)}")
        try:
            doc: dict[str, Any] = json.loads(body)
        except ValueError:
            raise reg._fail("RegistryError", "the manifest is not JSON") from None
        kind = doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0]
        if kind not in (MEDIA_INDEX, DOCKER_LIST):
            if reference.startswith("sha256:") and _sha256(body) != reference:
                raise reg._fail("DigestMismatch", f"the manifest's digest is {_sha256(body)}")
            return _sha256(body), doc
        # A multi-platform index: the linux/amd64 image, or the only one.
        entries = doc.get("manifests") or []
        chosen = [
            m
            for m in entries
            if (m.get("platform") or {}).get("os", "linux") == "linux"
            and (m.get("platform") or {}).get("architecture", "amd64") == "amd64"
        ] or entries[:1]
        if not chosen:
            raise reg._fail("InvalidAdapterImage", "the image index lists no image")
        reference = str(chosen[0]["digest"])
    raise reg._fail("InvalidAdapterImage", "an image index inside an image index")


def _member_target(dest: Path, name: str) -> Path | None:
    """Where a layer member under ``data/`` goes inside ``dest`` (None: outside data/)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or parts[0] != DATA_PREFIX:
        return None
    rest = parts[1:]
    if any(p == ".." for p in rest):
        raise RegistryError("InvalidAdapterImage", f"layer member {name!r} leaves /data")
    return dest.joinpath(*rest) if rest else dest


def extract_data(layer: IO[bytes], dest: Path) -> int:
    """Apply one layer's ``data/`` members onto ``dest`` (a tar, gzip-compressed or not);
    the number of files.

    Regular files and folders are written; whiteouts (``.wh.<name>``) delete what an
    earlier layer wrote; links and devices are refused, so a layer can never write
    outside ``dest``."""
    files = 0
    with tarfile.open(fileobj=layer, mode="r|*") as tar:
        for member in tar:
            target = _member_target(dest, member.name)
            if target is None:
                continue
            if target.name.startswith(".wh."):
                victim = target.with_name(target.name[4:])
                if victim.is_dir():
                    shutil.rmtree(victim)
                elif victim.exists():
                    victim.unlink()
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                files += 1
            else:
                raise RegistryError(
                    "InvalidAdapterImage",
                    f"layer member {member.name!r} is a link or device; an adapter holds files",
                )
    return files


def pull_adapter(
    ref: ImageRef,
    dest: Path,
    credentials: Credentials,
    *,
    plain_http: bool | None = None,
    progress: Callable[[str, Mapping[str, object]], None] | None = None,
) -> int:
    """Fetch the image ``ref`` and write what its layers hold under ``/data`` to ``dest``
    (replaced as a whole, so a re-run never mixes two adapters); the number of files.
    Every layer's digest is checked while it streams to disk."""
    say = progress or (lambda event, fields: None)
    reg = Registry(ref.host, credentials, plain_http=plain_http, action="pulling", image=str(ref))
    _, manifest = resolve_manifest(reg, ref)
    layers = manifest.get("layers") or []
    say("manifest fetched", {"image": str(ref), "layers": len(layers)})
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        files = 0
        for layer in layers:
            kind, digest = str(layer.get("mediaType")), str(layer.get("digest"))
            if kind not in _GZIP_LAYERS:
                raise reg._fail("InvalidAdapterImage", f"layer {digest} is {kind}, not tar+gzip")
            resp = open_blob(reg, ref, digest)
            with tempfile.TemporaryFile(dir=dest.parent) as blob, contextlib.closing(resp.body):
                h, size = hashlib.sha256(), 0
                while chunk := resp.body.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    blob.write(chunk)
                if "sha256:" + h.hexdigest() != digest:
                    raise reg._fail(
                        "DigestMismatch", f"layer {digest} arrived as sha256:{h.hexdigest()}"
                    )
                blob.seek(0)
                try:
                    files += extract_data(blob, staging)
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise reg._fail("InvalidAdapterImage", f"layer {digest}: {e}") from None
            say("layer extracted", {"digest": digest, "bytes": size})
        if files == 0:
            raise reg._fail("InvalidAdapterImage", "the image holds no file under /data")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files
