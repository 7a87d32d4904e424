"""Pod volumes as local folders, and the container-path -> local-path map of a container.

Each pod gets ``<state-dir>/pods/<namespace>_<name>_<uid8>/``; its volumes live under
``volumes/<volume name>`` there:

- ``emptyDir`` (any medium, ``Memory`` too): a folder;
- ``hostPath``: the path itself on this machine (created for ``DirectoryOrCreate`` or no
  type, touched for ``FileOrCreate``); never removed by the agent. Paths under
  `NODE_DISK_PREFIXES` (``/var/lib/kaito``: the node's model cache) are the emulated
  node's own disk instead, ``<node-disk>/var/lib/kaito/...`` (``node_disk``), so the
  local stack never writes to this machine's ``/var/lib``;
- ``configMap`` / ``secret``: a folder with one file per key (or per ``items`` entry,
  ``mode``/``defaultMode`` applied), read from the API when the pod starts;
- anything else: `UnsupportedVolume`, which the agent reports on the pod.

A container's ``volumeMounts`` become a `MountMap`. Nested mounts (an emptyDir at
``/mnt/adapter`` and a hostPath at ``/mnt/adapter/x``) are realised with a symlink inside
the parent's local folder that points at the child's local path, so a process listing
the parent sees the child (`link_nested_mounts`).
"""

from __future__ import annotations

import base64
import os
import posixpath
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kaito.runtime.meta import Obj

Fetch = Callable[[str, str], Awaitable[Obj | None]]
"""(kind "ConfigMap"|"Secret", name) -> the object, or None when it does not exist."""


NODE_DISK_PREFIXES = ("/var/lib/kaito",)
"""hostPaths that live on the emulated node's disk (a folder of the agent), not this machine's."""


def host_path(path: str, node_disk: Path | None) -> Path:
    """The local folder of hostPath ``path``: under ``node_disk`` for `NODE_DISK_PREFIXES`."""
    normalized = _norm(path)
    if node_disk is not None and any(
        normalized == p or normalized.startswith(p + "/") for p in NODE_DISK_PREFIXES
    ):
        return node_disk / normalized.lstrip("/")
    return Path(path)


class UnsupportedVolume(Exception):
    """A volume type the node agent cannot realise locally."""


class VolumeNotReady(Exception):
    """A volume's source is missing (e.g. its ConfigMap): retried, as kubelet does."""


def pod_dir_name(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace', 'default')}_{meta['name']}_{str(meta.get('uid', ''))[:8]}"


def _norm(path: str) -> str:
    normalized = posixpath.normpath(path)
    return "/" if normalized in ("/", "//") else normalized


@dataclass(frozen=True)
class Mount:
    container_path: str
    local_path: str


class MountMap:
    """Container paths -> local paths for one container; the longest mount path wins."""

    def __init__(self, mounts: Iterable[Mount]) -> None:
        self.mounts = sorted(
            (Mount(_norm(m.container_path), m.local_path) for m in mounts),
            key=lambda m: len(m.container_path),
            reverse=True,
        )

    def _match(self, path: str) -> Mount | None:
        if not path.startswith("/"):
            return None
        for m in self.mounts:
            root = m.container_path
            if root == "/":
                continue
            if path == root or path.startswith(root + "/"):
                return m
        return None

    def covers(self, path: str) -> bool:
        return self._match(path) is not None

    def translate(self, path: str) -> str:
        """The local path of container path ``path``; other strings come back unchanged."""
        m = self._match(path)
        if m is None:
            return path
        rest = path[len(m.container_path) :]
        return m.local_path + rest

    def nested(self) -> list[tuple[Mount, Mount]]:
        """(parent, child) pairs where the child's mount path lies inside the parent's:
        the closest enclosing parent for each child."""
        pairs = []
        for child in self.mounts:
            for parent in self.mounts:  # longest first: the first enclosing one is closest
                if parent is child or parent.container_path == "/":
                    continue
                if child.container_path.startswith(parent.container_path + "/"):
                    pairs.append((parent, child))
                    break
        return pairs


def link_nested_mounts(mounts: MountMap) -> list[Path]:
    """Symlink each nested mount's local path into its parent's local folder."""
    links = []
    for parent, child in mounts.nested():
        rel = child.container_path[len(parent.container_path) + 1 :]
        link = Path(parent.local_path) / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if os.readlink(link) == child.local_path:
                continue
            link.unlink()
        elif link.exists():
            continue  # a real file or folder is there already; leave it alone
        link.symlink_to(child.local_path)
        links.append(link)
    return links


def container_mounts(container: Obj, volumes: dict[str, str]) -> MountMap:
    """The `MountMap` of ``container`` given volume name -> local path."""
    mounts = []
    for vm in container.get("volumeMounts") or ():
        local = volumes.get(vm["name"])
        if local is None:
            raise UnsupportedVolume(f"volumeMount {vm['name']} names no volume of the pod")
        sub = vm.get("subPath")
        if sub:
            local = str(Path(local) / sub)
            if not Path(local).exists():
                Path(local).mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(vm["mountPath"], local))
    return MountMap(mounts)


def _write_keys(folder: Path, data: dict[str, bytes], source: Obj) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    default_mode = source.get("defaultMode")
    items = source.get("items")
    files: list[tuple[str, bytes, int | None]] = []
    if items:
        for item in items:
            if item["key"] in data:
                files.append((item["path"], data[item["key"]], item.get("mode", default_mode)))
            elif not source.get("optional"):
                raise VolumeNotReady(f"key {item['key']} is missing")
    else:
        files = [(k, v, default_mode) for k, v in data.items()]
    for rel, content, mode in files:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if mode is not None:
            path.chmod(int(mode))


async def realise_volumes(
    pod: Obj, pod_dir: Path, fetch: Fetch, *, node_disk: Path | None = None
) -> dict[str, str]:
    """Create every volume of ``pod`` locally; return volume name -> local path."""
    out: dict[str, str] = {}
    base = pod_dir / "volumes"
    for vol in pod.get("spec", {}).get("volumes") or ():
        name = vol["name"]
        local = base / name
        if "emptyDir" in vol:
            local.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in vol:
            hp = vol["hostPath"]
            local = host_path(hp["path"], node_disk)
            kind = hp.get("type") or ""
            if kind in ("", "DirectoryOrCreate"):
                local.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                local.parent.mkdir(parents=True, exist_ok=True)
                local.touch(exist_ok=True)
            elif not local.exists():
                raise VolumeNotReady(f"hostPath {local} ({kind}) does not exist")
        elif "configMap" in vol or "secret" in vol:
            is_cm = "configMap" in vol
            source = vol["configMap"] if is_cm else vol["secret"]
            obj_name = source.get("name") if is_cm else source.get("secretName")
            kind = "ConfigMap" if is_cm else "Secret"
            obj = await fetch(kind, str(obj_name))
            if obj is None:
                if not source.get("optional"):
                    raise VolumeNotReady(f"{kind} {obj_name} not found")
                obj = {}
            data: dict[str, bytes] = {}
            if is_cm:
                data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
                data.update(
                    {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                )
            else:
                data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            _write_keys(local, data, source)
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise UnsupportedVolume(
                f"volume {name} of type {', '.join(kinds) or 'unknown'} is not supported by "
                "the node agent (emptyDir, hostPath, configMap and secret are)"
            )
        out[name] = str(local)
    return out
