"""The pusher sidecar: push the trained adapter to a registry as an image.

    python -m kaito_tuning.push --image REGISTRY/REPO:TAG --source /mnt/output \
        [--docker-config /mnt/push-secret/.dockerconfigjson --secret-name NAME] \
        [--wait-for /mnt/output/kaito_tuning_complete.json] \
        [--fail-marker /mnt/output/kaito_tuning_failed] [--label KEY=VALUE ...] \
        [--plain-http] [--termination-log /dev/termination-log]

It runs beside the tuning container in the tuning Job's pod (the workspace controller's
``tuning/job.py``), sharing the output folder. The contract with the tuning container is
two files in that folder: the tuning run writes ``kaito_tuning_complete.json`` last when
it succeeded (``kaito_tuning.train``), and the container's shell wrapper touches
``kaito_tuning_failed`` when it exited non-zero. The pusher polls for either: on success
it pushes; on failure it exits 1 without pushing, so the pod (and, after its retries, the
Job) fails instead of the sidecar waiting forever. A tuning container killed outright
(OOMKilled: its wrapper dies too) writes neither; ``--max-wait`` bounds that wait.

The image is the adapter image of ``kaito_contracts.oci`` (one tar+gzip layer, the
adapter's files under ``/data``, an OCI config with ``rootfs`` and labels), pushed with
the registry HTTP API v2, authenticated from the ``kubernetes.io/dockerconfigjson``
Secret mounted at ``--docker-config``.

Exit codes: 0 pushed; 1 tuning failed, or a push that a retry may fix (registry
unreachable, 5xx); 2 bad arguments; 3 a push no retry can fix (credentials refused,
bad image reference, invalid adapter folder). The last line on stderr and the file at
``--termination-log`` (kubelet's termination message, shown on the pod and lifted onto
the Workspace by the controller) say ``<Reason>: pushing <image>: <what to fix>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from kaito_contracts.oci import (
    ImageRef,
    RegistryError,
    build_adapter_image,
    load_credentials,
    push_image,
    write_termination,
)

from . import logs

log = structlog.get_logger(__name__)

FINAL = frozenset(
    {
        "Unauthorized",
        "Forbidden",
        "InvalidImageReference",
        "InvalidAdapter",
        "InvalidSecret",
        "SecretNotFound",
    }
)
"""Reasons no retry of the pod can fix (exit code 3)."""
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kaito_tuning.push", description=__doc__.split("\n")[0]
    )
    p.add_argument("--image", required=True, help="where to push: REGISTRY/REPOSITORY[:TAG]")
    p.add_argument("--source", required=True, type=Path, help="the adapter folder")
    p.add_argument("--docker-config", type=Path, help="a .dockerconfigjson (the push Secret)")
    p.add_argument("--secret-name", default="", help="the Secret's name, for messages")
    p.add_argument("--wait-for", type=Path, help="push once this file exists (tuning done)")
    p.add_argument("--fail-marker", type=Path, help="exit 1 once this file exists (tuning failed)")
    p.add_argument("--max-wait", type=float, default=0.0, help="seconds; default 0, no limit")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (default 5)")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE image label")
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="http instead of https (default: only for 127.0.0.1 and localhost)",
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        default=DEFAULT_TERMINATION_LOG,
        help=f"where the failure reason is written (default {DEFAULT_TERMINATION_LOG})",
    )
    p.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto", help="default auto"
    )
    return p


class TuningFailed(Exception):
    """The tuning container wrote its failure marker: there is nothing to push."""


def wait_for_tuning(done: Path, failed: Path | None, *, poll: float, max_wait: float) -> None:
    """Return once ``done`` exists; `TuningFailed` once ``failed`` does (or time runs out)."""
    started = time.monotonic()
    last_said = started
    while True:
        if failed is not None and failed.exists():
            raise TuningFailed(f"the tuning container failed ({failed} exists); nothing to push")
        if done.exists():
            log.info(
                "tuning finished", marker=str(done), waited_s=round(time.monotonic() - started, 1)
            )
            return
        now = time.monotonic()
        if max_wait and now - started > max_wait:
            raise TuningFailed(f"no {done} after {max_wait:.0f}s; nothing to push")
        if now - last_said >= 60:
            log.info("waiting for the tuning run", marker=str(done), elapsed_s=round(now - started))
            last_said = now
        time.sleep(poll)


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--label {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def push(
    *,
    image: str,
    source: Path,
    docker_config: Path | None,
    secret_name: str,
    labels: Mapping[str, str],
    plain_http: bool | None,
) -> str:
    """Build and push the adapter image; its manifest digest. `RegistryError` on failure."""
    started = time.monotonic()
    ref = ImageRef.parse(image)
    source_label = f"secret {secret_name}" if secret_name else str(docker_config or "")
    try:
        creds = load_credentials(docker_config, ref.host, source=source_label)
    except RegistryError as e:
        raise RegistryError(e.reason, f"pushing {ref}: {e.message}") from None
    with tempfile.TemporaryDirectory(prefix="kaito-push-") as work:
        built = build_adapter_image(source, Path(work), labels=labels)
        log.info(
            "adapter image built",
            image=str(ref),
            layer=built.layer_digest,
            bytes=built.layer_size,
            elapsed_s=round(time.monotonic() - started, 2),
        )

        def progress(event: str, fields: Mapping[str, object]) -> None:
            log.info(event, elapsed_s=round(time.monotonic() - started, 2), **fields)

        return push_image(built, ref, creds, plain_http=plain_http, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format)
    try:
        labels = _labels(args.label)
    except ValueError as e:
        write_termination(args.termination_log, f"InvalidArgument: {e}")
        return 2
    try:
        if args.wait_for is not None:
            wait_for_tuning(args.wait_for, args.fail_marker, poll=args.poll, max_wait=args.max_wait)
        digest = push(
            image=args.image,
            source=args.source,
            docker_config=args.docker_config,
            secret_name=args.secret_name,
            labels=labels,
            plain_http=True if args.plain_http else None,
        )
    except TuningFailed as e:
        log.error("not pushed", reason="TuningFailed", error=str(e))
        write_termination(args.termination_log, f"TuningFailed: {e}")
        return 1
    except RegistryError as e:
        line = e.termination_line("pushing", args.image)
        log.error("push failed", reason=e.reason, error=line.partition(": ")[2])
        write_termination(args.termination_log, line)
        return 3 if e.reason in FINAL else 1
    log.info("adapter pushed", image=args.image, digest=digest, labels=labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
