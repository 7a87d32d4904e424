"""``python -m kaito_inference.fetch.image``: fill the node-local model cache from a model
image (``presetOptions.modelImage``), the ``fetch-weights`` init container's other form.

    python -m kaito_inference.fetch.image --image REGISTRY/REPO[:TAG|@sha256:...]
        --cache-dir DIR [--docker-config /mnt/pull-secrets/<secret>/.dockerconfigjson ...]
        [--link PATH] [--plain-http] [--termination-log PATH] [--max-attempts 5]

The same cache, lock, marker and reasons as the Hugging Face fetch (the package
docstring), keyed by the image's manifest digest:

- target: ``<cache-dir>/oci/sha256-<hex>/`` holds the files the image has under
  ``/data`` (`kaito_contracts.model_image`); two tags of one image share it, and a tag
  that moves to new bytes gets a new folder (nothing is overwritten under a server);
- a pinned reference (``@sha256:...``) whose target carries ``.kaito-complete`` is
  reused at once, without a request, so a node restarts its pods with the registry
  unreachable; a tag costs one manifest GET to learn its digest, and no blob GET when
  the target is complete;
- one pull per node: ``flock`` on ``<target>.lock``;
- verified and resumable per layer: every layer's sha256 is checked as it streams
  (`kaito_contracts.model_image.fetch_layer`), layers download in parallel, and the
  layers a broken pull finished are listed in ``<target>/.kaito-layers`` and not
  fetched again; bounded retries for what a retry may fix (unreachable, 5xx, a digest
  mismatch), then ``DownloadFailed``;
- ``--link PATH``: a symlink to the target at ``PATH`` (the pod's own emptyDir), which
  is what ``--model`` names when the reference is a tag and the controller could not
  know the digest;
- failures: one line ``<Reason>: pulling <image>: <what to fix>`` in the termination
  message, exit code of the reason (3 Unauthorized — credentials refused, missing or
  not a docker config —, 7 ImageNotFound, 8 InvalidImage, 6 DiskFull, 1 DownloadFailed;
  2 for bad arguments).

Credentials come from the ``kubernetes.io/dockerconfigjson`` Secrets of
``presetOptions.modelImagePullSecrets``, mounted read-only (the first one with an entry
for the image's registry is used; none for a public image).
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from kaito_contracts.model_image import LayerRef, fetch_layer, model_layers, walk_files
from kaito_contracts.oci import ImageRef, Registry, RegistryError, resolve_manifest
from kaito_inference import logs
from kaito_inference.adapter_pull import credentials_for
from kaito_inference.fetch.cli import _terminate, add_common_arguments, parse_checked
from kaito_inference.fetch.download import MARKER, FetchError, Reason, _completed, _exclusive
from kaito_inference.fetch.podreport import PodAnnotator
from kaito_inference.fetch.progress import ProgressSink

__all__ = ["ImagePull", "image_target", "main", "parse_args", "pull_image"]

log = structlog.get_logger("kaito_inference.fetch")

LAYERS_DONE = ".kaito-layers"
"""In the target while a pull is incomplete: the digests of the layers already written."""

_FINAL = {
    "Unauthorized": Reason.UNAUTHORIZED,
    "Forbidden": Reason.UNAUTHORIZED,
    "SecretNotFound": Reason.UNAUTHORIZED,
    "InvalidSecret": Reason.UNAUTHORIZED,
    "ImageNotFound": Reason.IMAGE_NOT_FOUND,
    "InvalidImage": Reason.INVALID_IMAGE,
    "InvalidAdapterImage": Reason.INVALID_IMAGE,  # resolve_manifest's word for a bad index
}
"""Registry failures no retry fixes, and the fetch reason each one is."""

T = TypeVar("T")


def image_target(cache_dir: Path, digest: str) -> Path:
    """``<cache-dir>/oci/sha256-<hex>``: the folder of one image's files in the cache."""
    return cache_dir / "oci" / digest.replace(":", "-")


@dataclass(frozen=True)
class ImagePull:
    target: Path
    digest: str
    files: int
    bytes: int
    downloaded: bool
    """False when the target was complete already (no layer fetched)."""
    seconds: float


# -- progress --------------------------------------------------------------------------


class _Meter:
    """Bytes received, logged every ``interval`` s and told to ``sink`` every
    ``sink_interval`` s (the pod annotation) while a pull runs."""

    def __init__(
        self, total: int, *, interval: float, sink: ProgressSink | None, sink_interval: float
    ) -> None:
        self.total, self.interval, self.sink, self.sink_interval = (
            total,
            interval,
            sink,
            sink_interval,
        )
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pull-progress", daemon=True)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def __enter__(self) -> _Meter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        seconds = max(time.monotonic() - self._t0, 1e-6)
        self._line(self.done / seconds, final=True, seconds=round(seconds, 1))
        self._report(self.done / seconds, final=True)

    def _line(self, rate: float, **extra: object) -> None:
        log.info(
            "weights progress", bytes_done=self.done, bytes_total=self.total,
            bytes_per_second=round(rate),
            percent=round(100.0 * self.done / self.total, 1) if self.total else 100.0, **extra,
        )  # fmt: skip

    def _report(self, rate: float, *, final: bool) -> None:
        if self.sink is None:
            return
        try:
            self.sink.report(min(self.done, self.total), self.total, rate, final=final)
        except Exception as e:  # reporting never fails the pull
            log.warning("progress report failed", error=str(e))

    def _run(self) -> None:
        last_t, last_done, last_sink = self._t0, 0, self._t0
        while not self._stop.wait(self.interval):
            now, done = time.monotonic(), self.done
            rate = max(done - last_done, 0) / max(now - last_t, 1e-6)
            self._line(rate)
            if now - last_sink >= self.sink_interval:
                self._report(rate, final=False)
                last_sink = now
            last_t, last_done = now, done


# -- the pull --------------------------------------------------------------------------


class _Transient(Exception):
    """A failure another attempt may cure (a reset, a 5xx): retried, then DownloadFailed."""


def _classify(e: RegistryError) -> FetchError | _Transient:
    reason = _FINAL.get(e.reason)
    if reason is not None:
        return FetchError(reason, e.message)
    return _Transient(str(e))


def _attempts(
    what: Callable[[], T], *, image: str, max_attempts: int, retry_wait: float,
    sleep: Callable[[float], None],
) -> T:  # fmt: skip
    """``what()``, retried on transient failures; `FetchError` when it cannot succeed."""
    last: Exception | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            return what()
        except RegistryError as e:
            err = _classify(e)
            if isinstance(err, FetchError):
                raise err from e
            last = err
        except (_Transient, http.client.HTTPException) as e:
            last = e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            last = e
        if attempt < max_attempts:
            wait = min(retry_wait * 2 ** (attempt - 1), 30.0)
            log.warning(
                "pull attempt failed, retrying", image=image, attempt=attempt, of=max_attempts,
                wait_seconds=wait, error=str(last),
            )  # fmt: skip
            sleep(wait)
    raise FetchError(
        Reason.DOWNLOAD_FAILED, f"pulling {image}: gave up after {max_attempts} attempts: {last}"
    )


def _done_layers(target: Path) -> set[str]:
    try:
        return set(json.loads((target / LAYERS_DONE).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _fetch_layers(
    reg: Registry, ref: ImageRef, layers: list[LayerRef], target: Path, meter: _Meter,
    workers: int,
) -> None:  # fmt: skip
    """One attempt: every layer not yet done, ``workers`` at a time, into ``target``."""
    done = _done_layers(target)
    todo = [layer for layer in layers if layer.digest not in done]
    meter.add(sum(layer.size for layer in layers if layer.digest in done))
    missing = sum(layer.size for layer in todo)
    free = shutil.disk_usage(target).free
    if missing > free:
        raise OSError(
            errno.ENOSPC, f"needs {missing} more bytes for the weights, {free} free on the cache"
        )
    lock = threading.Lock()

    def one(layer: LayerRef) -> None:
        t0 = time.monotonic()
        files = fetch_layer(reg, ref, layer, target, on_bytes=meter.add)
        with lock:
            done.add(layer.digest)
            (target / LAYERS_DONE).write_text(json.dumps(sorted(done)))
        log.info(
            "layer written", image=str(ref), layer=layer.title or layer.digest,
            digest=layer.digest, bytes=layer.size, files=files,
            seconds=round(time.monotonic() - t0, 2),
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="layer") as pool:
        futures = [pool.submit(one, layer) for layer in todo]
    for future in futures:
        # A failed layer's bytes were never trusted (it is not in LAYERS_DONE): the next
        # attempt writes it again over whatever it left.
        error = future.exception()
        if error is not None:
            raise error


def _write_marker(
    target: Path, ref: ImageRef, digest: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    files = [(p.relative_to(target).as_posix(), p.stat().st_size) for p in walk_files(target)]
    if not files:
        raise FetchError(
            Reason.INVALID_IMAGE, f"pulling {ref}: the image holds no file under /data"
        )
    marker = {
        "image": str(ref),
        "digest": digest,
        "commit": digest,
        "annotations": manifest.get("annotations") or {},
        "layers": [str(layer.get("digest")) for layer in manifest.get("layers") or []],
        "completed": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": [{"path": path, "size": size} for path, size in files],
    }
    tmp = target / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    tmp.replace(target / MARKER)
    (target / LAYERS_DONE).unlink(missing_ok=True)
    return marker


def _result(target: Path, marker: dict[str, Any], *, downloaded: bool, t0: float) -> ImagePull:
    return ImagePull(
        target=target,
        digest=str(marker["digest"]),
        files=len(marker["files"]),
        bytes=sum(int(f["size"]) for f in marker["files"]),
        downloaded=downloaded,
        seconds=round(time.monotonic() - t0, 3),
    )


def link_to(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replaced atomically (a restarted pod re-points it)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def pull_image(
    image: str,
    cache_dir: Path,
    configs: Sequence[Path] = (),
    *,
    plain_http: bool | None = None,
    max_attempts: int = 5,
    retry_wait: float = 2.0,
    workers: int = 4,
    progress_interval: float = 2.0,
    sink: ProgressSink | None = None,
    sink_interval: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ImagePull:
    """Make ``image_target(cache_dir, <digest>)`` hold the image's verified files;
    raises `FetchError` (final) when it cannot."""
    t0 = time.monotonic()
    ref = ImageRef.parse(image)
    if ref.digest:
        done = _completed(image_target(cache_dir, ref.digest))
        if done is not None:
            log.info(
                "weights already cached",
                image=str(ref),
                target=str(image_target(cache_dir, ref.digest)),
            )
            return _result(image_target(cache_dir, ref.digest), done, downloaded=False, t0=t0)
    try:
        creds = credentials_for(ref.host, configs)
    except RegistryError as e:  # a Secret that is missing or not a docker config
        raise FetchError(Reason.UNAUTHORIZED, f"pulling {ref}: {e.message}") from e
    reg = Registry(ref.host, creds, plain_http=plain_http, action="pulling", image=str(ref))

    def attempts(what: Callable[[], T]) -> T:
        return _attempts(
            what, image=str(ref), max_attempts=max_attempts, retry_wait=retry_wait, sleep=sleep
        )

    try:
        digest, manifest = attempts(lambda: resolve_manifest(reg, ref))
        target = image_target(cache_dir, digest)
        done = _completed(target)
        if done is not None:
            log.info("weights already cached", image=str(ref), digest=digest, target=str(target))
            return _result(target, done, downloaded=False, t0=t0)
        try:
            layers = model_layers(manifest)
        except RegistryError as e:
            raise FetchError(Reason.INVALID_IMAGE, f"pulling {ref}: {e.message}") from e
        total = sum(layer.size for layer in layers)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(target.with_name(target.name + ".lock"), repo=str(ref)):
            done = _completed(target)
            if done is not None:
                log.info("weights fetched by another fetcher", image=str(ref), target=str(target))
                return _result(target, done, downloaded=False, t0=t0)
            target.mkdir(parents=True, exist_ok=True)
            log.info(
                "pulling weights", image=str(ref), digest=digest, layers=len(layers),
                bytes_total=total, target=str(target),
            )  # fmt: skip
            meter = _Meter(
                total, interval=progress_interval, sink=sink, sink_interval=sink_interval
            )
            with meter:
                attempts(lambda: _fetch_layers(reg, ref, layers, target, _fresh(meter), workers))
            marker = _write_marker(target, ref, digest, manifest)
            return _result(target, marker, downloaded=True, t0=t0)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FetchError(
                Reason.DISK_FULL, f"pulling {ref} into {cache_dir}: {e.strerror}"
            ) from e
        raise FetchError(Reason.DOWNLOAD_FAILED, f"pulling {ref} into {cache_dir}: {e}") from e


def _fresh(meter: _Meter) -> _Meter:
    """The meter, reset for an attempt (what earlier attempts counted is re-counted)."""
    meter.done = 0
    return meter


# -- the command -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kaito_inference.fetch.image",
        description="Pull one model image into the node-local model cache.",
    )
    p.add_argument("--image", required=True, help="REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]")
    p.add_argument("--cache-dir", type=Path, required=True, help="the model cache (a hostPath)")
    p.add_argument(
        "--docker-config", type=Path, action="append", default=[],
        help="a .dockerconfigjson (a pull Secret); repeat for several",
    )  # fmt: skip
    p.add_argument("--link", type=Path, default=None, help="a symlink to the target, made here")
    p.add_argument(
        "--plain-http", action="store_true",
        help="http instead of https (default: only for 127.0.0.1 and localhost)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=4, help="layers fetched at once; default 4")
    add_common_arguments(p, attempts="pull")
    return parse_checked(p, argv, _check)


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        ImageRef.parse(args.image)
    except RegistryError as e:
        p.error(f"--image: {e.message}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(fmt=args.log_format)
    annotator = PodAnnotator.from_environment(args.serviceaccount_dir)
    log.info(
        "weights pull starting", image=args.image, cache_dir=str(args.cache_dir),
        pull_secrets=len(args.docker_config), pod_progress=annotator is not None,
    )  # fmt: skip
    try:
        result = pull_image(
            args.image, args.cache_dir, args.docker_config,
            plain_http=True if args.plain_http else None, max_attempts=args.max_attempts,
            retry_wait=args.retry_wait, workers=args.workers,
            progress_interval=args.progress_interval, sink=annotator,
            sink_interval=args.report_interval,
        )  # fmt: skip
        if args.link is not None:
            try:
                link_to(args.link, result.target)
            except OSError as e:
                raise FetchError(Reason.DOWNLOAD_FAILED, f"linking {args.link}: {e}") from e
    except FetchError as e:
        message = (
            e.message if e.message.startswith("pulling ") else f"pulling {args.image}: {e.message}"
        )
        log.error("weights pull failed", reason=str(e.reason), message=message)
        _terminate(args.termination_log, f"{e.reason}: {message}")
        return e.reason.exit_code
    log.info(
        "weights ready", image=args.image, digest=result.digest, target=str(result.target),
        files=result.files, bytes=result.bytes, downloaded=result.downloaded,
        seconds=result.seconds, link=str(args.link) if args.link else None,
    )  # fmt: skip
    print(result.target, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
