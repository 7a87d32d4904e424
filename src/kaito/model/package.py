"""Build a model image from a folder and push it (``kaito model package``).

    package_folder(Path("models/phi-3"), "myacr.azurecr.io/models/phi-3:0a67737",
                   docker_config=Path("~/.docker/config.json").expanduser())

Where the weights come from is a folder. From the hub, that folder is what the weights
fetcher writes (``python -m kaito_inference.fetch --repo R --revision V --cache-dir D``,
in the inference image or its environment): the one verified download path (resume,
sizes and hashes, a lock), and the same bytes a pod would fetch, without a second
Hugging Face client in the operator's dependencies. Its completion marker
(``.kaito-complete``) names the repo and commit, which become the image's labels; the
fetcher's bookkeeping (``.cache/``, the marker) is not packaged.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from kaito_contracts.model_image import (
    DEFAULT_LARGE_FILE_BYTES,
    LABEL_MODEL_REPO,
    LABEL_MODEL_REVISION,
    build_model_image,
    push_model_image,
)
from kaito_contracts.oci import Credentials, ImageRef, load_credentials

__all__ = ["PackageResult", "default_docker_config", "package_folder", "source_labels"]

log = structlog.get_logger("kaito.model")

LABEL_PRESET = "kaito.sh/preset"
FETCH_MARKER = ".kaito-complete"


@dataclass(frozen=True)
class PackageResult:
    image: str
    """The pushed reference, pinned: ``host/repository@sha256:...``."""
    digest: str
    layers: int
    files: int
    bytes: int
    seconds: float


def default_docker_config() -> Path | None:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, when it exists (what
    ``docker login`` / ``az acr login`` write)."""
    folder = os.environ.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"
    return path if path.is_file() else None


def source_labels(
    folder: Path, *, repo: str = "", revision: str = "", preset: str = ""
) -> dict[str, str]:
    """The image's labels: what the caller says, else what the fetcher's marker in
    ``folder`` says (repo and commit)."""
    labels: dict[str, str] = {}
    try:
        marker = json.loads((folder / FETCH_MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if isinstance(marker, dict):
        repo = repo or str(marker.get("repo") or "")
        revision = revision or str(marker.get("commit") or marker.get("revision") or "")
    if repo:
        labels[LABEL_MODEL_REPO] = repo
    if revision:
        labels[LABEL_MODEL_REVISION] = revision
    if preset:
        labels[LABEL_PRESET] = preset
    return labels


def package_folder(
    folder: Path,
    image: str,
    *,
    docker_config: Path | None = None,
    labels: Mapping[str, str] | None = None,
    plain_http: bool | None = None,
    large_file_bytes: int = DEFAULT_LARGE_FILE_BYTES,
    workdir: Path | None = None,
) -> PackageResult:
    """Build the model image of ``folder`` and push it to ``image``; progress lines
    (step, elapsed) go to the log. Raises `kaito_contracts.oci.RegistryError`."""
    t0 = time.monotonic()
    ref = ImageRef.parse(image)

    def progress(event: str, fields: Mapping[str, object]) -> None:
        log.info(event, elapsed_s=round(time.monotonic() - t0, 2), **fields)

    creds = (
        load_credentials(docker_config, ref.host, source=str(docker_config))
        if docker_config is not None
        else Credentials()
    )
    log.info(
        "packaging model", folder=str(folder), image=str(ref), labels=dict(labels or {}),
        credentials=bool(creds), docker_config=str(docker_config) if docker_config else None,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kaito-model-", dir=workdir) as tmp:
        built = build_model_image(
            folder,
            Path(tmp),
            labels=labels,
            large_file_bytes=large_file_bytes,
            progress=progress,
        )
        progress(
            "image built",
            {"layers": len(built.layers), "files": built.files, "bytes": built.bytes},
        )
        digest = push_model_image(built, ref, creds, plain_http=plain_http, progress=progress)
    pinned = f"{ref.host}/{ref.repository}@{digest}"
    seconds = round(time.monotonic() - t0, 2)
    log.info("model image pushed", image=str(ref), pinned=pinned, seconds=seconds)
    return PackageResult(
        image=pinned,
        digest=digest,
        layers=len(built.layers),
        files=built.files,
        bytes=built.bytes,
        seconds=seconds,
    )
