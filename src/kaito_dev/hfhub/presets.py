"""A stand-in model under every preset's repository: what the local stack's hub serves.

The local stack has no internet and no GPU, so it cannot download a preset's weights;
instead the hub emulator serves one local model folder (the node agent's tiny stand-in)
under every ``huggingFace.repo`` of the preset catalog, at the exact revision the preset
pins (`HubStore.publish` with ``commit=``). A ``fetch-weights`` init container then takes
the real path (the real ``huggingface_hub`` client, the node's cache, its lock and
verification): only the bytes are a stand-in, and every such repo carries a note saying
so (in the emulator's log, its model info and ``/_emulator/state``).

Gated presets (``downloadAuthRequired``) are gated here too: only `DEV_TOKEN` downloads
them, so a Workspace of one needs a ``modelAccessSecret`` holding that token, as it would
need a real token on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kaito.presets.catalog import Catalog, load_catalog
from kaito_dev.hfhub.server import HubEmulator
from kaito_dev.hfhub.store import HubStore

__all__ = ["DEV_TOKEN", "PresetRepo", "preset_repos", "publish_stand_in", "stand_in_note"]

DEV_TOKEN = "hf_kaito_dev_stand_in"
"""The one token the local hub accepts for the gated presets' repos."""
LOCAL_MARKERS = (".complete", ".kaito-complete")
"""Completion markers of local folders (the node agent's model build, the fetcher's
cache), not model files: never published."""


@dataclass(frozen=True)
class PresetRepo:
    repo: str
    revision: str
    """The commit sha the presets pin."""
    presets: tuple[str, ...]
    gated: bool

    @property
    def ref(self) -> str:
        return f"{self.repo}@{self.revision}"


def preset_repos(catalog: Catalog | None = None) -> list[PresetRepo]:
    """Every repo@revision the catalog's presets fetch (deprecated ones too: an existing
    Workspace may still run one), in catalog order."""
    catalog = catalog or load_catalog()
    found: dict[tuple[str, str], PresetRepo] = {}
    for name in catalog.names(include_deprecated=True):
        preset = catalog.get(name)
        if preset is None or preset.hugging_face is None:
            continue
        key = (preset.hugging_face.repo, preset.hugging_face.revision)
        seen = found.get(key)
        found[key] = PresetRepo(
            repo=key[0],
            revision=key[1],
            presets=(*(seen.presets if seen else ()), name),
            gated=(seen is not None and seen.gated) or preset.download_auth_required,
        )
    return list(found.values())


def stand_in_note(repo: str, folder: Path) -> str:
    return (
        f"STAND-IN: this repo holds the local tiny model {folder.name!r}, not the weights "
        f"of {repo} (kaito dev: local testing only)"
    )


def publish_stand_in(
    hub: HubEmulator | HubStore, folder: Path, repos: list[PresetRepo] | None = None
) -> dict[str, str]:
    """Publish ``folder`` under each of ``repos`` (default: every preset's) at its pinned
    revision, gated with `DEV_TOKEN` where the preset is; returns ``repo@revision`` ->
    commit sha (the revision itself)."""
    published: dict[str, str] = {}
    for r in preset_repos() if repos is None else repos:
        published[r.ref] = hub.publish(
            r.repo,
            folder,
            commit=r.revision,
            gated_token=DEV_TOKEN if r.gated else None,
            note=stand_in_note(r.repo, folder),
            exclude=LOCAL_MARKERS,
        )
    return published
