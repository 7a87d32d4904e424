"""The adapter init container: fetch an adapter image's ``/data`` into the adapters folder.

    python -m kaito_inference.adapter_pull --image REGISTRY/REPO:TAG \
        --dest /mnt/adapter/<name> \
        [--docker-config /mnt/pull-secrets/<secret>/.dockerconfigjson ...] \
        [--plain-http] [--termination-log /dev/termination-log]

Why our code pulls the image rather than kubelet running it: an adapter image (what
``kaito_tuning.push`` writes, or one a user built ``FROM scratch``) holds only ``/data``,
no shell and no ``cp``, so running it as a container cannot copy anything. This init
container runs the inference image itself, pulls the adapter image's manifest and layers
over the registry HTTP API v2 (``kaito_contracts.oci``: every layer's digest checked,
links and paths outside ``/data`` refused), and writes the files under ``/data`` to
``--dest``, which the server scans (an adapter is a folder with ``adapter_config.json``).
Credentials come from the ``kubernetes.io/dockerconfigjson`` Secrets named in
``inference.adapters[].source.imagePullSecrets``, mounted read-only; the first one with
an entry for the image's registry is used, none for a public image.

Exit codes: 0 written; 1 a failure a restart may fix (registry unreachable, 5xx); 3 one
it cannot (credentials refused, no such image, not an adapter). The termination message
says ``<Reason>: pulling <image>: <what to fix>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from kaito_contracts.oci import (
    Credentials,
    ImageRef,
    RegistryError,
    load_credentials,
    pull_adapter,
    write_termination,
)

from . import logs

log = structlog.get_logger(__name__)

FINAL = frozenset(
    {
        "Unauthorized",
        "Forbidden",
        "ImageNotFound",
        "InvalidImageReference",
        "InvalidAdapterImage",
        "InvalidSecret",
        "SecretNotFound",
        "DigestMismatch",
    }
)
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kaito_inference.adapter_pull", description=__doc__.split("\n")[0]
    )
    p.add_argument("--image", required=True, help="the adapter image: REGISTRY/REPOSITORY[:TAG]")
    p.add_argument("--dest", required=True, type=Path, help="the adapter's folder")
    p.add_argument(
        "--docker-config",
        type=Path,
        action="append",
        default=[],
        help="a .dockerconfigjson (a pull Secret); repeat for several",
    )
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="http instead of https (default: only for 127.0.0.1 and localhost)",
    )
    p.add_argument("--termination-log", type=Path, default=DEFAULT_TERMINATION_LOG)
    return p


def credentials_for(host: str, configs: Sequence[Path]) -> Credentials:
    """The first docker config's credentials for ``host`` (a Secret's folder name is
    the Secret's name, so messages name it)."""
    for path in configs:
        creds = load_credentials(path, host, source=f"secret {path.parent.name}")
        if creds:
            return creds
    names = ", ".join(p.parent.name for p in configs)
    return Credentials(source=f"imagePullSecrets ({names})" if configs else "")


def pull(image: str, dest: Path, configs: Sequence[Path], *, plain_http: bool | None) -> int:
    """Write the adapter image's ``/data`` to ``dest``; the number of files."""
    started = time.monotonic()
    ref = ImageRef.parse(image)

    def progress(event: str, fields: Mapping[str, object]) -> None:
        log.info(event, elapsed_s=round(time.monotonic() - started, 2), **fields)

    creds = credentials_for(ref.host, configs)
    files = pull_adapter(ref, dest, creds, plain_http=plain_http, progress=progress)
    if not (dest / "adapter_config.json").is_file():
        raise RegistryError(
            "InvalidAdapterImage",
            f"pulling {ref}: /data holds no adapter_config.json, so it is not a PEFT adapter",
        )
    log.info(
        "adapter written",
        image=str(ref),
        dest=str(dest),
        files=files,
        elapsed_s=round(time.monotonic() - started, 2),
    )
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    try:
        pull(
            args.image, args.dest, args.docker_config, plain_http=True if args.plain_http else None
        )
    except RegistryError as e:
        line = e.termination_line("pulling", args.image)
        log.error("adapter pull failed", reason=e.reason, error=line.partition(": ")[2])
        write_termination(args.termination_log, line)
        return 3 if e.reason in FINAL else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
