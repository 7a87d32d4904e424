"""The images a real local node needs and no registry can give us: made from one static binary.

``hack/node-tools.sh`` builds ``tiny`` (``hack/tiny/main.go``, Go, ``CGO_ENABLED=0``):
``tiny pause`` sleeps until SIGTERM/SIGINT, ``tiny env`` prints its environment and
sleeps, ``tiny http [ADDR]`` answers HTTP. This module packs it, by hand, as an OCI image
(one gzip layer holding ``/tiny``):

- `pause_archive` -- the pods' sandbox image, an OCI archive that each node's containerd
  imports under its ``sandbox_image`` name (``PAUSE_IMAGE``);
- `push_tiny` -- the same binary as ``<registry>/kaito-dev/tiny:<hash>``, pushed to a
  local registry over the registry HTTP API, for tests that pull a real image.

Archives are cached under ``~/.cache/kaito/node-images`` keyed by the binary's hash.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kaito_dev.controlplane import REPO_ROOT

__all__ = [
    "PAUSE_IMAGE",
    "NodeImageError",
    "OciImage",
    "cache_dir",
    "node_tools",
    "pause_archive",
    "push_tiny",
    "tiny_image",
]

TOOLS_SCRIPT = REPO_ROOT / "hack" / "node-tools.sh"
# The name each node's containerd knows its sandbox image by (never pulled).
PAUSE_IMAGE = "kaito.local/pause:tiny"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


class NodeImageError(RuntimeError):
    """Building, packing or pushing a node image failed; the message says which step."""


def cache_dir() -> Path:
    root = os.environ.get("KAITO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kaito"
    )
    return Path(root) / "node-images"


def node_tools() -> Path:
    """Install the host tools if missing and build-or-reuse ``tiny``; return the binary."""
    proc = subprocess.run(
        [str(TOOLS_SCRIPT), "all"], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise NodeImageError(f"hack/node-tools.sh failed (exit {proc.returncode}); see above")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class OciImage:
    """An image as blobs: the manifest, its config and its one layer."""

    manifest: bytes
    config: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        return {_digest(b): b for b in (self.config, self.layer)}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(binary: Path, *, entrypoint: list[str], cmd: list[str] | None = None) -> OciImage:
    """``binary`` as ``/tiny`` in a one-layer OCI image (byte-for-byte reproducible)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = binary.read_bytes()
        info = tarfile.TarInfo("tiny")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd or [], "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    return OciImage(manifest=manifest, config=config, layer=layer)


def write_oci_archive(image: OciImage, name: str, out: Path) -> Path:
    """An OCI image-layout tarball naming the image ``name`` (``ctr images import`` reads it)."""
    tag = name.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        f"blobs/sha256/{image.digest.split(':')[1]}": image.manifest,
        **{f"blobs/sha256/{d.split(':')[1]}": b for d, b in image.blobs().items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)
    return out


def pause_archive(binary: Path | None = None) -> Path:
    """The sandbox image's OCI archive (cached), named `PAUSE_IMAGE`."""
    binary = binary or node_tools()
    out = cache_dir() / f"pause-{binary.name}.oci.tar"
    if not out.exists():
        write_oci_archive(tiny_image(binary, entrypoint=["/tiny", "pause"]), PAUSE_IMAGE, out)
    return out


def push_tiny(
    registry: str, *, binary: Path | None = None, repository: str = "kaito-dev/tiny"
) -> str:
    """Push ``tiny`` (entrypoint ``/tiny``, default command ``pause``) to ``registry``
    (``host:port``, plain http, anonymous); return the image reference."""
    binary = binary or node_tools()
    image = tiny_image(binary, entrypoint=["/tiny"], cmd=["pause"])
    tag = binary.name.removeprefix("tiny-")
    base = f"http://{registry}/v2/{repository}"
    for digest, blob in image.blobs().items():
        if _request("HEAD", f"{base}/blobs/{digest}", ok=(200, 404)) == 200:
            continue
        location = _upload_location(f"{base}/blobs/uploads/", registry)
        sep = "&" if "?" in location else "?"
        _request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
            ok=(201,),
        )
    _request(
        "PUT",
        f"{base}/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": MANIFEST_TYPE},
        ok=(201,),
    )
    return f"{registry}/{repository}:{tag}"


def _upload_location(url: str, registry: str) -> str:
    req = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            location = resp.headers["Location"]
    except urllib.error.URLError as e:
        raise NodeImageError(f"push to {registry}: starting an upload failed: {e}") from e
    return location if location.startswith("http") else f"http://{registry}{location}"


def _request(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    ok: tuple[int, ...],
) -> int:
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as e:
        status = e.code
    except urllib.error.URLError as e:
        raise NodeImageError(f"{method} {url}: {e}") from e
    if status not in ok:
        raise NodeImageError(f"{method} {url}: HTTP {status} (expected {ok})")
    return status
