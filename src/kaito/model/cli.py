"""``kaito model package``: a folder of weights -> a model image in a registry.

    kaito model package --from-folder DIR --image REGISTRY/REPO:TAG
        [--preset NAME | --repo ORG/NAME --revision REV] [--docker-config PATH]
        [--plain-http] [--large-file-mib 64]

Prints the pushed image pinned by digest (``REGISTRY/REPO@sha256:...``), the value for a
Workspace's ``presetOptions.modelImage``. Exit 1 with ``<Reason>: <message>`` on stderr
when the folder or the registry refuses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kaito.model.package import default_docker_config, package_folder, source_labels
from kaito_contracts.oci import RegistryError


def add_commands(sub: Any) -> None:
    model = sub.add_parser("model", help="model weights as OCI images")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    p = model_sub.add_parser(
        "package",
        help="build a model image from a folder and push it",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--from-folder",
        type=Path,
        required=True,
        help="the model's files (e.g. what python -m kaito_inference.fetch wrote)",
    )
    p.add_argument("--image", required=True, help="where to push: REGISTRY/REPOSITORY[:TAG]")
    p.add_argument(
        "--preset", default="", help="label the image with a catalog preset and its repo@revision"
    )
    p.add_argument("--repo", default="", help="label: the Hugging Face repo the weights are from")
    p.add_argument("--revision", default="", help="label: the commit they are from")
    p.add_argument(
        "--docker-config",
        type=Path,
        default=None,
        help="credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="http instead of https (default: only for 127.0.0.1 and localhost)",
    )
    p.add_argument(
        "--large-file-mib",
        type=int,
        default=64,
        help="files this large get a layer of their own (default 64)",
    )
    p.set_defaults(func=run_package)


def run_package(args: argparse.Namespace) -> int:
    repo, revision = args.repo, args.revision
    if args.preset:
        from kaito.presets.catalog import load_catalog

        preset = load_catalog().get(args.preset)
        if preset is None:
            print(f"--preset: unknown preset {args.preset!r}", file=sys.stderr)
            return 2
        if preset.hugging_face is not None:
            repo = repo or preset.hugging_face.repo
            revision = revision or preset.hugging_face.revision
    if args.large_file_mib < 1:
        print("--large-file-mib: must be >= 1", file=sys.stderr)
        return 2
    labels = source_labels(args.from_folder, repo=repo, revision=revision, preset=args.preset)
    try:
        result = package_folder(
            args.from_folder,
            args.image,
            docker_config=args.docker_config or default_docker_config(),
            labels=labels,
            plain_http=True if args.plain_http else None,
            large_file_bytes=args.large_file_mib << 20,
        )
    except RegistryError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(result.image, flush=True)
    return 0
