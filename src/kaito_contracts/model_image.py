"""Model images: a preset's weights as an OCI image, for private presets and air-gapped
clusters (``presetOptions.modelImage``).

``kaito model package`` writes one (`build_model_image`, `push_model_image`) and the
``fetch-weights`` init container reads it (``kaito_inference.fetch.image``, with
`fetch_layer`), so the format lives here once, beside the adapter images it extends
(`kaito_contracts.oci`: the same references, credentials and registry client).

The format is the project's data-image layout: an ordinary OCI image whose layers hold
the model's files under ``data/`` (``/data`` in the image, as for adapter images and
``tuning.input.image``), so ``FROM scratch`` + ``COPY model/ /data/`` builds one too.
What `build_model_image` adds:

- **one layer per large file** (``large_file_bytes``, default 64 MiB: every weights
  shard), plus one layer for all the small files (config, tokenizer): the layers of a
  pull are independent, so they download in parallel, and a pull that breaks keeps the
  layers it finished and fetches only the rest;
- large-file layers are **plain tar** (``...layer.v1.tar``), not gzip: weights are
  near-incompressible (bf16/fp16 mantissas), and gzip would cost a CPU core per
  ~50 MB/s on both sides for a few percent; the small-files layer is gzip;
- a large file's layer is streamed from the file itself (tar header + the file +
  padding): hashed once when built, read again when pushed, never copied, so packaging
  a 140 GB model needs no second 140 GB;
- reproducible: entries sorted, owner 0, mtime 0, gzip without a timestamp, so the same
  files give the same digests and a second push uploads nothing;
- labelled with where the weights came from (`LABEL_MODEL_REPO`, `LABEL_MODEL_REVISION`,
  in the config's labels and the manifest's annotations) and typed by the manifest
  annotation ``kaito.sh/artifact-type: application/vnd.kaito.model.v1``.

A pull checks every layer's sha256 while it streams (the registry's digest is the only
checksum a registry-borne image has, and it covers every byte).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kaito_contracts.oci import (
    ANNOTATION_TITLE,
    DATA_PREFIX,
    DOCKER_LAYER,
    MEDIA_LAYER,
    Credentials,
    ImageRef,
    Registry,
    RegistryError,
    _add_file,
    _entries,
    _file_mode,
    _gzip_data_tar,
    _sha256,
    _tar_info,
    extract_data,
    image_config,
    image_manifest,
    open_blob,
    push_blob,
    push_manifest,
)

__all__ = [
    "DEFAULT_LARGE_FILE_BYTES",
    "EXCLUDED_NAMES",
    "LABEL_MODEL_REPO",
    "LABEL_MODEL_REVISION",
    "MEDIA_LAYER_TAR",
    "MODEL_ARTIFACT_TYPE",
    "Layer",
    "LayerRef",
    "ModelImage",
    "build_model_image",
    "fetch_layer",
    "model_layers",
    "push_model_image",
    "walk_files",
]

MODEL_ARTIFACT_TYPE = "application/vnd.kaito.model.v1"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
LABEL_MODEL_REPO = "kaito.sh/model-repo"
"""``org/name`` on Hugging Face, when the weights came from there."""
LABEL_MODEL_REVISION = "kaito.sh/model-revision"
"""The commit they came from."""
DEFAULT_LARGE_FILE_BYTES = 64 << 20
EXCLUDED_NAMES = frozenset({".cache", ".kaito-complete", ".kaito-complete.tmp", ".kaito-layers"})
"""Top-level names of a folder that are never packaged: the weights fetcher's
bookkeeping (``.cache/huggingface``, its completion marker), the puller's."""

_LAYER_TYPES = frozenset({MEDIA_LAYER, DOCKER_LAYER, MEDIA_LAYER_TAR, DOCKER_LAYER_TAR})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    """One built layer: its descriptor's fields and how to read its bytes again."""

    media_type: str
    digest: str
    size: int
    diff_id: str
    title: str
    """``data`` for the small-files layer, ``data/<path>`` for a large file's."""
    open: Callable[[], IO[bytes]]


@dataclass(frozen=True)
class ModelImage:
    layers: tuple[Layer, ...]
    config: bytes
    manifest: bytes
    files: int
    bytes: int
    """The model's files and their total size (what a pull writes)."""

    @property
    def manifest_digest(self) -> str:
        return _sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return _sha256(self.config)


# -- building ------------------------------------------------------------------------------


class _Stream(io.RawIOBase):
    """Reads the concatenation of ``parts`` (byte strings and a file's path) once."""

    def __init__(self, parts: Sequence[bytes | Path]) -> None:
        self._parts = list(parts)
        self._current: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._current is None:
                if not self._parts:
                    return 0
                part = self._parts.pop(0)
                self._current = io.BytesIO(part) if isinstance(part, bytes) else open(part, "rb")  # noqa: SIM115
            n = self._current.readinto(view)  # type: ignore[attr-defined]
            if n:
                return int(n)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


def _file_layer(path: Path, name: str, size: int, mode: int) -> Layer:
    """A plain-tar layer holding the one file ``path`` as ``name``, streamed from it."""
    header = _tar_info(name, directory=False, size=size, mode=mode).tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
    )
    body = len(header) + size + (-size) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE
    trailer = b"\0" * ((-size) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)
    trailer += b"\0" * ((-body) % tarfile.RECORDSIZE)
    parts: list[bytes | Path] = [header, path, trailer]
    h = hashlib.sha256()
    total = 0
    with _Stream(parts) as stream:
        while chunk := stream.read(_CHUNK):
            h.update(chunk)
            total += len(chunk)
    if total != len(header) + size + len(trailer):
        raise RegistryError("InvalidModel", f"{path} changed size while it was being read")
    digest = "sha256:" + h.hexdigest()
    return Layer(
        media_type=MEDIA_LAYER_TAR,
        digest=digest,
        size=total,
        diff_id=digest,
        title=name,
        open=lambda: io.BufferedReader(_Stream(parts), _CHUNK),
    )


def _small_files_layer(source: Path, files: Sequence[Path], workdir: Path) -> Layer:
    """One gzip layer with ``data/``, every folder and the small ``files``."""
    out_path = workdir / "small-files.tar.gz"
    dirs = sorted(
        {
            Path(*rel.parts[:i])
            for rel in (p.parent.relative_to(source) for p in files)
            for i in range(1, len(rel.parts) + 1)
        }
    )
    with open(out_path, "wb") as out, _gzip_data_tar(out) as written:
        for rel in dirs:
            written.tar.addfile(_tar_info(f"{DATA_PREFIX}/{rel.as_posix()}/", directory=True))
        for path in files:
            _add_file(written.tar, path, f"{DATA_PREFIX}/{path.relative_to(source).as_posix()}")
    return Layer(
        media_type=MEDIA_LAYER,
        digest=written.digest,
        size=written.compressed.size,
        diff_id=written.diff_id,
        title=DATA_PREFIX,
        open=lambda: open(out_path, "rb"),
    )


def _model_files(source: Path) -> list[Path]:
    """The files to package, sorted; a link or a device is refused, not followed."""
    files = []
    for path in _entries(source):
        rel = path.relative_to(source)
        if rel.parts[0] in EXCLUDED_NAMES:
            continue
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise RegistryError(
                "InvalidModel", f"{path}: not a regular file or folder (links are not packaged)"
            )
        if path.is_file():
            files.append(path)
    return files


def build_model_image(
    source: Path,
    workdir: Path,
    *,
    labels: Mapping[str, str] | None = None,
    large_file_bytes: int = DEFAULT_LARGE_FILE_BYTES,
    progress: Callable[[str, Mapping[str, object]], None] | None = None,
) -> ModelImage:
    """The model image of the files under ``source`` (the small-files layer is written
    into ``workdir``; large files are read in place). `RegistryError` ``InvalidModel``
    for a folder with no file, or with a link or a device in it."""
    say = progress or (lambda event, fields: None)
    if not source.is_dir():
        raise RegistryError("InvalidModel", f"{source} is not a folder")
    files = _model_files(source)
    if not files:
        raise RegistryError("InvalidModel", f"{source} holds no file to package")
    workdir.mkdir(parents=True, exist_ok=True)
    small = [p for p in files if p.stat().st_size < large_file_bytes]
    large = [p for p in files if p.stat().st_size >= large_file_bytes]
    layers: list[Layer] = []
    if small:
        layers.append(_small_files_layer(source, small, workdir))
        say("layer built", {"layer": DATA_PREFIX, "files": len(small), "bytes": layers[-1].size})
    for path in large:
        name = f"{DATA_PREFIX}/{path.relative_to(source).as_posix()}"
        layers.append(_file_layer(path, name, path.stat().st_size, _file_mode(path)))
        say("layer built", {"layer": name, "bytes": layers[-1].size, "digest": layers[-1].digest})
    config = image_config(
        labels,
        [layer.diff_id for layer in layers],
        [f"kaito model package: {layer.title}" for layer in layers],
    )
    manifest = image_manifest(
        config,
        [(layer.media_type, layer.digest, layer.size, layer.title) for layer in layers],
        MODEL_ARTIFACT_TYPE,
        labels,
    )
    return ModelImage(
        layers=tuple(layers),
        config=config,
        manifest=manifest,
        files=len(files),
        bytes=sum(p.stat().st_size for p in files),
    )


# -- pushing -------------------------------------------------------------------------------


def push_model_image(
    image: ModelImage,
    ref: ImageRef,
    credentials: Credentials,
    *,
    plain_http: bool | None = None,
    progress: Callable[[str, Mapping[str, object]], None] | None = None,
) -> str:
    """Push ``image`` to ``ref`` (layers the registry has are skipped, the manifest goes
    last so a half-pushed image never has a tag); the manifest's digest."""
    say = progress or (lambda event, fields: None)
    reg = Registry(ref.host, credentials, plain_http=plain_http, action="pushing", image=str(ref))
    for layer in image.layers:
        opened: list[IO[bytes]] = []

        def body(layer: Layer = layer, opened: list[IO[bytes]] = opened) -> IO[bytes]:
            f = layer.open()
            opened.append(f)
            return f

        try:
            uploaded = push_blob(reg, ref, layer.digest, layer.size, body)
        finally:
            for f in opened:
                f.close()
        say(
            "layer pushed" if uploaded else "layer already there",
            {"layer": layer.title, "digest": layer.digest, "bytes": layer.size},
        )
    push_blob(reg, ref, image.config_digest, len(image.config), lambda: image.config)
    digest = push_manifest(reg, ref, image.manifest)
    say("manifest pushed", {"digest": digest, "image": str(ref)})
    return digest


# -- pulling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRef:
    """A layer as the manifest describes it."""

    digest: str
    size: int
    media_type: str
    title: str


def model_layers(manifest: Mapping[str, Any]) -> list[LayerRef]:
    """The manifest's layers; `RegistryError` ``InvalidImage`` for a layer this puller
    cannot read (zstd, an encrypted or foreign media type) or a manifest with none."""
    out = []
    for layer in manifest.get("layers") or []:
        kind, digest = str(layer.get("mediaType")), str(layer.get("digest"))
        if kind not in _LAYER_TYPES:
            raise RegistryError(
                "InvalidImage",
                f"layer {digest} is {kind}; a model image has tar or tar+gzip layers "
                "(kaito model package writes them)",
            )
        title = str((layer.get("annotations") or {}).get(ANNOTATION_TITLE, ""))
        out.append(LayerRef(digest, int(layer.get("size") or 0), kind, title))
    if not out:
        raise RegistryError("InvalidImage", "the image has no layer")
    return out


class _Verifying(io.RawIOBase):
    """Reads ``body``, hashing and counting what passes (``on_bytes`` told each chunk)."""

    def __init__(self, body: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self.body, self.on_bytes = body, on_bytes
        self.hash, self.size = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.body.read(len(view))
        n = len(data)
        view[:n] = data
        if n:
            self.hash.update(data)
            self.size += n
            self.on_bytes(n)
        return n


def fetch_layer(
    reg: Registry,
    ref: ImageRef,
    layer: LayerRef,
    dest: Path,
    *,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> int:
    """Stream one layer from the registry onto ``dest`` (its ``data/`` members), checking
    its sha256 and size as it arrives; the number of files. `RegistryError`
    ``DigestMismatch`` when the bytes differ (what it wrote is then not to be trusted:
    the caller fetches the layer again)."""
    resp = open_blob(reg, ref, layer.digest)
    with contextlib.closing(resp.body):
        stream = _Verifying(resp.body, on_bytes)
        try:
            files = extract_data(io.BufferedReader(stream, _CHUNK), dest)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            # A truncated or corrupt stream: the digest check would fail too.
            raise reg._fail(
                "DigestMismatch", f"layer {layer.digest} is not a readable tar: {e}"
            ) from None
        while stream.read(_CHUNK):
            pass  # the tar's end padding: the digest covers every byte
    got = "sha256:" + stream.hash.hexdigest()
    if got != layer.digest or (layer.size and stream.size != layer.size):
        raise reg._fail(
            "DigestMismatch", f"layer {layer.digest} arrived as {got} ({stream.size} bytes)"
        )
    return files


def walk_files(root: Path, *, skip: frozenset[str] = EXCLUDED_NAMES) -> Iterator[Path]:
    """Every file under ``root`` but the top-level bookkeeping ``skip`` names."""
    for path in _entries(root):
        if path.relative_to(root).parts[0] in skip:
            continue
        if path.is_file() and not path.is_symlink():
            yield path
