"""Volumes as local folders, and nested mounts as symlinks."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from kaito_dev.nodeagent.volumes import (
    Mount,
    MountMap,
    UnsupportedVolume,
    VolumeNotReady,
    container_mounts,
    link_nested_mounts,
    pod_dir_name,
    realise_volumes,
)

Obj = dict[str, Any]


def pod(volumes: list[Obj]) -> Obj:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "0123456789abcdef"},
        "spec": {"volumes": volumes},
    }


async def test_each_volume_type_becomes_a_local_folder(tmp_path: Path) -> None:
    objects = {
        ("ConfigMap", "cfg"): {"data": {"inference_config.yaml": "a: 1\n", "other": "x"}},
        ("Secret", "sec"): {"data": {"token": base64.b64encode(b"s3cret").decode()}},
    }

    async def fetch(kind: str, name: str) -> Obj | None:
        return objects.get((kind, name))

    host = tmp_path / "host" / "output"
    p = pod(
        [
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            {"name": "out", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
            {
                "name": "cfg",
                "configMap": {
                    "name": "cfg",
                    "items": [
                        {"key": "inference_config.yaml", "path": "conf/i.yaml", "mode": 0o600}
                    ],
                },
            },
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
        ]
    )
    pod_dir = tmp_path / "pods" / pod_dir_name(p)
    assert pod_dir.name == "ns_p_01234567"
    local = await realise_volumes(p, pod_dir, fetch)
    assert local["shm"] == str(pod_dir / "volumes" / "shm")
    assert (pod_dir / "volumes" / "shm").is_dir()
    assert local["out"] == str(host)
    assert host.is_dir()
    cfg = Path(local["cfg"]) / "conf" / "i.yaml"
    assert cfg.read_text() == "a: 1\n"
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert not (Path(local["cfg"]) / "other").exists()
    token = Path(local["sec"]) / "token"
    assert token.read_bytes() == b"s3cret"
    assert token.stat().st_mode & 0o777 == 0o400


async def test_missing_sources_are_retried_and_unknown_types_refused(tmp_path: Path) -> None:
    async def fetch(kind: str, name: str) -> Obj | None:
        return None

    with pytest.raises(VolumeNotReady, match="ConfigMap nope not found"):
        await realise_volumes(pod([{"name": "c", "configMap": {"name": "nope"}}]), tmp_path, fetch)
    optional = pod([{"name": "c", "configMap": {"name": "nope", "optional": True}}])
    assert "c" in await realise_volumes(optional, tmp_path, fetch)
    with pytest.raises(UnsupportedVolume, match="persistentVolumeClaim"):
        await realise_volumes(
            pod([{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}]), tmp_path, fetch
        )


def test_nested_mounts_show_up_inside_the_parent_as_symlinks(tmp_path: Path) -> None:
    parent, child, deeper = tmp_path / "empty", tmp_path / "host-adapter", tmp_path / "deep"
    for d in (parent, child, deeper):
        d.mkdir()
    (child / "adapter_config.json").write_text("{}")
    c = {
        "volumeMounts": [
            {"name": "adapter", "mountPath": "/mnt/adapter"},
            {"name": "mine", "mountPath": "/mnt/adapter/my-adapter"},
            {"name": "deep", "mountPath": "/mnt/adapter/a/b"},
        ]
    }
    mounts = container_mounts(c, {"adapter": str(parent), "mine": str(child), "deep": str(deeper)})
    links = link_nested_mounts(mounts)
    assert sorted(os.path.relpath(link, parent) for link in links) == ["a/b", "my-adapter"]
    assert sorted(os.listdir(parent)) == ["a", "my-adapter"]
    assert (parent / "my-adapter" / "adapter_config.json").read_text() == "{}"
    assert link_nested_mounts(mounts) == []  # idempotent


def test_mount_map_matches_whole_path_segments() -> None:
    m = MountMap([Mount("/mnt/data", "/l/data"), Mount("/", "/l/root")])
    assert m.translate("/mnt/data") == "/l/data"
    assert m.translate("/mnt/data/x.jsonl") == "/l/data/x.jsonl"
    assert m.translate("/mnt/database") == "/mnt/database"
    assert m.translate("relative/mnt/data") == "relative/mnt/data"
    assert m.covers("/mnt/data/x")
    assert not m.covers("/etc/passwd")  # a mount at / is not used to rewrite everything
