"""``kaito dev images`` (``make images``): build the three images with buildah and push them.

No Docker daemon and no registry on the internet here, so the images are built from the
same Dockerfiles with Debian's ``buildah`` on a base made with ``debootstrap``:

1. tools: ``hack/images.sh tools`` installs buildah, skopeo and debootstrap (Debian);
2. base: ``debootstrap --variant=minbase bookworm`` from the mirror apt uses, plus
   python3 and python3-venv, committed as ``localhost/kaito-base/debian:bookworm-<key>``
   and cached as an OCI archive under the kaito cache (``KAITO_CACHE``), keyed by the
   recipe, as the control-plane binaries are; the Dockerfiles take it as a build
   argument (``PYTHON_IMAGE``, ``CUDA_IMAGE``), whose defaults stay the real bases;
3. build: ``buildah build --layers`` (a second run reuses every unchanged step), with
   the machine's pip configuration (local wheel folders, its proxy's CA) mounted into
   RUN steps and named by ``PIP_CONFIG_FILE``; the inference image is its CPU variant
   (vLLM's CPU build, torch's local CPU wheel);
4. push: ``<registry>/kaito-python/{controller,inference,tuning}:<version>``, to the
   given registry (``--registry``, e.g. an ACR login server after ``buildah login``) or
   to a local ``docker-registry`` this command starts (``kaito_dev.registry``).

buildah's storage, run root, signature policy and registries configuration live under
``$KAITO_CACHE/images`` (nothing read from or written to /etc/containers). Progress
lines (``[images  12.3s] ...``) on every step; a long quiet step prints a heartbeat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError
from kaito_dev.registry import LocalRegistry

__all__ = [
    "IMAGES",
    "Builder",
    "BuiltImage",
    "ImageBuildError",
    "ImageSpec",
    "cache_root",
    "image_name",
    "project_version",
]

log = structlog.get_logger("kaito_dev.images")

TOOLS_SCRIPT = REPO_ROOT / "hack" / "images.sh"
SOURCE_URL = "https://github.com/kaito-project/kaito-python"
HEARTBEAT_S = 30.0

# The base image's recipe: every field goes into the cache key.
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_RECIPE_VERSION = 1

# pip options carried from the machine into the build (keys of `pip config list`).
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "default-timeout", "trusted-host")
BUILD_MOUNT = "/run/kaito-build"
# buildah's step lines, "STEP 3/9: ..." or "[1/2] STEP 3/8: ..." in a multi-stage build.
STEP_LINE = re.compile(r"(\[\d+/\d+\] )?(STEP \d+/\d+:|COMMIT )")


class ImageBuildError(ControlPlaneError):
    """A tool (debootstrap, buildah, skopeo) failed: the message names it, its log and
    the tail of its output."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, build context, named contexts and build arguments."""

    name: str
    dockerfile: str
    context: str
    base_arg: str
    build_args: Mapping[str, str] = field(default_factory=dict)
    contexts: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    shipped: bool = True
    """False for the local cluster's own tools (built with ``--only``, never released)."""


IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec(
        "controller",
        "images/controller/Dockerfile",
        ".",
        "PYTHON_IMAGE",
        description="KAITO gpu-provisioner and workspace controller",
    ),
    ImageSpec(
        "inference",
        "images/inference/Dockerfile",
        "images/inference",
        "CUDA_IMAGE",
        build_args={"VARIANT": "cpu"},
        contexts={"contracts": "src/kaito_contracts"},
        description="KAITO inference server (CPU build: vLLM's CPU package)",
    ),
    ImageSpec(
        "tuning",
        "images/tuning/Dockerfile",
        "images/tuning",
        "CUDA_IMAGE",
        contexts={"contracts": "src/kaito_contracts"},
        description="KAITO tuning job (LoRA/QLoRA) and data downloader",
    ),
    ImageSpec(
        "curl",
        "images/curl/Dockerfile",
        "images/curl",
        "BASE_IMAGE",
        description="curl for the local cluster's client pods (not part of KAITO)",
        shipped=False,
    ),
)


@dataclass(frozen=True)
class BuiltImage:
    spec: ImageSpec
    reference: str  # pushed as this, <registry>/kaito-python/<name>:<version>
    local: str  # in buildah's storage
    build_s: float
    push_s: float
    size_bytes: int  # uncompressed, as buildah's storage holds it
    pushed_bytes: int  # the compressed layers and config in the registry


def cache_root() -> Path:
    root = os.environ.get("KAITO_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaito"
    )
    return Path(root) / "images"


def project_version() -> str:
    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


def image_name(registry: str, name: str, version: str) -> str:
    """``<registry>/kaito-python/<name>:<version>``: the names the workloads use."""
    return f"{registry.rstrip('/')}/kaito-python/{name}:{version}"


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    return host in ("localhost", "127.0.0.1", "[::1]")


def debian_mirror(
    sources: Path = Path("/etc/apt/sources.list.d/debian.sources"),
    legacy: Path = Path("/etc/apt/sources.list"),
) -> str:
    """The Debian archive apt uses on this machine (the deb822 entry for bookworm)."""
    if sources.exists():
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith("#"):
                    fields[key.strip()] = value.strip()
            if BASE_SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                return parts[1]
    raise ImageBuildError(f"no Debian {BASE_SUITE} archive in {sources} or {legacy}")


def machine_pip_config() -> dict[str, str]:
    """The pip options this machine's pip uses (config files and PIP_* environment)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        check=True,
        capture_output=True,
        text=True,
    )
    options: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        option = key.split(".", 1)[-1]
        # Environment entries (":env:.") override the files', as pip applies them.
        if option in PIP_KEYS and (key.startswith(":env:") or option not in options):
            options[option] = value.strip().strip("'\"")
    return options


class Builder:
    """buildah and skopeo with their storage and configuration under ``root``."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        say: Callable[[str], None] | None = None,
        driver: str | None = None,
    ) -> None:
        self.root = root or cache_root()
        self.t0 = time.monotonic()
        self._say = say
        self.driver = driver or os.environ.get("KAITO_BUILDAH_DRIVER", "overlay")
        self.logs = self.root / "logs"

    # -- plumbing ---------------------------------------------------------------------

    def say(self, message: str) -> None:
        line = f"[images {time.monotonic() - self.t0:6.1f}s] {message}"
        if self._say is not None:
            self._say(line)
        else:
            print(line, flush=True)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
            "BUILDAH_ISOLATION": "chroot",
        }

    @property
    def policy(self) -> Path:
        return self.root / "policy.json"

    def prepare(self) -> None:
        """Install the tools (once per machine) and write buildah's configuration."""
        self.say("tools: buildah, skopeo, debootstrap (hack/images.sh)")
        self.run([str(TOOLS_SCRIPT), "tools"], label="tools")
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        (self.root / "storage.conf").write_text(
            "[storage]\n"
            f'driver = "{self.driver}"\n'
            f'graphroot = "{self.root / "storage"}"\n'
            f'runroot = "{self.root / "run"}"\n'
        )
        # No unqualified-search registries: a short name is a local image or an error.
        (self.root / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str,
        log_name: str | None = None,
        echo: Callable[[str], bool] | None = None,
        timeout: float = 3600.0,
    ) -> str:
        """Run a tool, its output to a log file; lines ``echo`` accepts become progress
        lines, and a quiet step prints a heartbeat every 30 s. Returns stdout+stderr."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{log_name or label}.log"
        start = time.monotonic()
        last = [start]
        lines: list[str] = []
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                text=True,
                errors="replace",
            )
            done = threading.Event()

            def heartbeat() -> None:
                while not done.wait(5.0):
                    if time.monotonic() - last[0] >= HEARTBEAT_S:
                        last[0] = time.monotonic()
                        self.say(f"{label}: still running ({time.monotonic() - start:.0f}s)")

            beat = threading.Thread(target=heartbeat, daemon=True)
            beat.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    lines.append(line)
                    if echo is not None and echo(line):
                        last[0] = time.monotonic()
                        self.say(f"{label}: {line.strip()[:160]}")
                proc.wait(timeout)
            finally:
                done.set()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = "".join(lines)
        if proc.returncode != 0:
            raise ImageBuildError(
                f"{label} failed (exit {proc.returncode}; log {log_path}):\n{text[-3000:]}"
            )
        return text

    def buildah(self, *args: str, label: str, echo: Callable[[str], bool] | None = None) -> str:
        return self.run(["buildah", *args], label=label, echo=echo)

    def has_image(self, name: str) -> bool:
        return (
            subprocess.run(
                ["buildah", "inspect", "--type", "image", name],
                env=self.env,
                capture_output=True,
            ).returncode
            == 0
        )

    # -- the base image ---------------------------------------------------------------

    def base_image(self) -> str:
        """The Debian base, from buildah's storage, the cached archive or debootstrap."""
        mirror = debian_mirror()
        recipe = {
            "suite": BASE_SUITE,
            "variant": BASE_VARIANT,
            "packages": BASE_PACKAGES,
            "mirror": mirror,
            "version": BASE_RECIPE_VERSION,
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        name = f"localhost/kaito-base/debian:{BASE_SUITE}-{key}"
        archive = self.root / "base" / f"debian-{BASE_SUITE}-{key}.oci.tar"
        if self.has_image(name):
            self.say(f"base: {name} (in buildah's storage)")
            return name
        if archive.exists():
            self.say(f"base: loading {archive.name} (cached)")
            self.buildah(
                "pull",
                "--signature-policy",
                str(self.policy),
                f"oci-archive:{archive}",
                label="base",
            )
            if self.has_image(name):
                return name
            raise ImageBuildError(f"{archive} did not load as {name}: delete it to rebuild")
        archive.parent.mkdir(parents=True, exist_ok=True)
        rootfs = archive.parent / f"rootfs-{key}"
        shutil.rmtree(rootfs, ignore_errors=True)
        self.say(
            f"base: debootstrap --variant={BASE_VARIANT} {BASE_SUITE} "
            f"(+{','.join(BASE_PACKAGES)}) from {mirror} (~1 min)"
        )
        self.run(
            [
                "debootstrap",
                f"--variant={BASE_VARIANT}",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(rootfs),
                mirror,
            ],
            label="debootstrap",
            echo=lambda line: (
                line.startswith("I: Retrieving Release")
                or line.startswith("I: Installing core")
                or line.startswith("I: Base system installed")
            ),
        )
        # apt in the image reads the machine's sources (bookworm, -updates, -security).
        sources = Path("/etc/apt/sources.list.d/debian.sources")
        if sources.exists():
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            shutil.copy(sources, rootfs / "etc/apt/sources.list.d/debian.sources")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        for lists in (rootfs / "var/lib/apt/lists").glob("*_dists_*"):
            lists.unlink()
        tarball = archive.parent / f"rootfs-{key}.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        container = self.buildah("from", "scratch", label="base").strip().splitlines()[-1]
        try:
            self.buildah("add", container, str(tarball), "/", label="base")
            self.buildah(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                "/bin/bash",
                "--label",
                f"org.opencontainers.image.title=debian-{BASE_SUITE}-{BASE_VARIANT}",
                "--label",
                f"org.opencontainers.image.description=debootstrap recipe {key}",
                container,
                label="base",
            )
            self.buildah("commit", "--rm", container, name, label="base")
        except ImageBuildError:
            self.buildah("rm", container, label="base")
            raise
        finally:
            tarball.unlink(missing_ok=True)
            shutil.rmtree(rootfs, ignore_errors=True)
        partial = archive.with_suffix(".partial")
        self.buildah(
            "push",
            "--signature-policy",
            str(self.policy),
            name,
            f"oci-archive:{partial}:{name}",
            label="base",
        )
        partial.rename(archive)
        self.say(f"base: {name} cached as {archive} ({archive.stat().st_size / 1e6:.0f} MB)")
        return name

    # -- builds -----------------------------------------------------------------------

    def pip_mounts(self) -> tuple[list[str], str]:
        """``-v`` flags and the in-build path of a pip.conf with this machine's options."""
        build_dir = self.root / "pip"
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        mounts: dict[str, str] = {str(build_dir): BUILD_MOUNT}
        lines = ["[global]"]
        for option, value in machine_pip_config().items():
            if option == "cert":
                shutil.copy(value, build_dir / "ca.crt")
                value = f"{BUILD_MOUNT}/ca.crt"
            elif option in ("find-links", "extra-index-url", "index-url"):
                for item in value.split():
                    path = item.removeprefix("file://")
                    if path.startswith("/") and Path(path).exists():
                        # The folder holding a local index's files, read-only.
                        top = "/" + "/".join(Path(path).parts[1:3])
                        mounts.setdefault(top, top)
            lines.append(f"{option} = {value}")
        (build_dir / "pip.conf").write_text("\n".join(lines) + "\n")
        flags = [f"--volume={src}:{dst}:ro" for src, dst in sorted(mounts.items())]
        return flags, f"{BUILD_MOUNT}/pip.conf"

    def build(
        self,
        spec: ImageSpec,
        *,
        base: str,
        version: str,
        revision: str,
        root: Path = REPO_ROOT,
        tag: str | None = None,
    ) -> str:
        """Build ``spec`` from the tree at ``root`` (default this checkout; another one, e.g.
        an earlier commit's, for upgrade tests) as ``localhost/kaito-python/<name>:<tag>``
        (default ``version``); returns that name."""
        local = f"localhost/kaito-python/{spec.name}:{tag or version}"
        volumes, pip_conf = self.pip_mounts()
        labels = {
            "org.opencontainers.image.title": f"kaito-{spec.name}",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.source": SOURCE_URL,
            "org.opencontainers.image.description": spec.description,
            "org.opencontainers.image.base.name": base,
        }
        args = {spec.base_arg: base, "PIP_CONFIG_FILE": pip_conf, **spec.build_args}
        argv = [
            "build",
            "--layers",
            # Docker's image format keeps the inference image's HEALTHCHECK (OCI has none).
            "--format=docker",
            "--network=host",
            "--isolation=chroot",
            "--signature-policy",
            str(self.policy),
            "--pull=never",
            "-f",
            str(root / spec.dockerfile),
            "-t",
            local,
            *volumes,
            *(f"--build-arg={k}={v}" for k, v in args.items()),
            *(f"--label={k}={v}" for k, v in labels.items()),
            *(f"--build-context={k}={root / v}" for k, v in spec.contexts.items()),
            str(root / spec.context),
        ]
        shown = ", ".join(f"{k}={v}" for k, v in args.items())
        self.say(f"build {spec.name}: {spec.dockerfile} ({shown})")
        self.run(
            ["buildah", *argv],
            label=f"build {spec.name}",
            log_name=f"build-{spec.name}",
            echo=lambda line: bool(STEP_LINE.match(line)),
        )
        return local

    def size(self, local: str) -> int:
        """The image's uncompressed size: its layers' sizes from buildah's layer records."""
        out = subprocess.run(
            ["buildah", "inspect", "--type", "image", local],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
        )
        diff_ids = json.loads(out.stdout)["OCIv1"]["rootfs"]["diff_ids"]
        store = self.root / "storage" / f"{self.driver}-layers" / "layers.json"
        records = {
            r.get("diff-digest"): int(r.get("diff-size") or 0)
            for r in json.loads(store.read_text())
        }
        return sum(records.get(d, 0) for d in diff_ids)

    def pushed_already(self, local: str, reference: str) -> int | None:
        """The pushed size when ``reference`` already names ``local`` (same config
        digest: a push would only re-compress every layer to find that out); else None."""
        try:
            manifest = json.loads(self.inspect_raw(reference))
        except (subprocess.CalledProcessError, ValueError):
            return None
        image_id = subprocess.run(
            ["buildah", "images", "--no-trunc", "--format", "{{.ID}}", local],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        ).stdout.strip()
        config = str((manifest.get("config") or {}).get("digest", ""))
        if not image_id or config.removeprefix("sha256:") != image_id.removeprefix("sha256:"):
            return None
        return int(manifest["config"]["size"]) + sum(int(x["size"]) for x in manifest["layers"])

    def push(self, local: str, reference: str) -> int:
        registry = reference.split("/", 1)[0]
        tls = ["--tls-verify=false"] if is_loopback(registry) else []
        if (size := self.pushed_already(local, reference)) is not None:
            self.say(f"push {reference}: the registry holds this image already")
            return size
        self.say(f"push {reference}")
        self.run(
            [
                "buildah",
                "push",
                "--signature-policy",
                str(self.policy),
                *tls,
                local,
                f"docker://{reference}",
            ],
            label=f"push {reference.rsplit('/', 1)[-1]}",
            log_name=f"push-{reference.rsplit('/', 1)[-1].split(':')[0]}",
        )
        manifest = json.loads(self.inspect_raw(reference))
        return int(manifest["config"]["size"]) + sum(int(x["size"]) for x in manifest["layers"])

    def inspect_raw(self, reference: str) -> str:
        registry = reference.split("/", 1)[0]
        tls = ["--tls-verify=false"] if is_loopback(registry) else []
        out = subprocess.run(
            ["skopeo", "inspect", "--raw", *tls, f"docker://{reference}"],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
        )
        return out.stdout


def build_all(
    registry: str,
    names: Iterable[str] | None = None,
    *,
    builder: Builder | None = None,
    revision: str | None = None,
) -> list[BuiltImage]:
    """Build the named images (the three shipped ones by default) and push them to
    ``registry``. ``revision``: the revision label (default the git commit; the local
    stack gives a fixed one, so that a commit that changes no image's content leaves
    every image as it was and nothing is pushed again)."""
    b = builder or Builder()
    wanted = list(names or [s.name for s in IMAGES if s.shipped])
    unknown = sorted(set(wanted) - {s.name for s in IMAGES})
    if unknown:
        raise ValueError(
            f"images: unknown image {', '.join(unknown)} "
            f"(one of {', '.join(s.name for s in IMAGES)})"
        )
    b.prepare()
    base = b.base_image()
    version, revision = project_version(), revision or git_revision()
    built = []
    for spec in (s for s in IMAGES if s.name in wanted):
        start = time.monotonic()
        local = b.build(spec, base=base, version=version, revision=revision)
        build_s = time.monotonic() - start
        size = b.size(local)
        reference = image_name(registry, spec.name, version)
        start = time.monotonic()
        pushed = b.push(local, reference)
        push_s = time.monotonic() - start
        b.say(
            f"{spec.name}: built in {build_s:.0f}s, {size / 1e6:.0f} MB; "
            f"pushed {reference} ({pushed / 1e6:.0f} MB compressed) in {push_s:.0f}s"
        )
        log.info(
            "image pushed",
            image=reference,
            build_s=round(build_s, 1),
            push_s=round(push_s, 1),
            size_bytes=size,
            pushed_bytes=pushed,
        )
        built.append(BuiltImage(spec, reference, local, build_s, push_s, size, pushed))
    return built


def table(built: Sequence[BuiltImage]) -> str:
    rows = ["| image | build | push | size | pushed (compressed) |", "|---|---|---|---|---|"]
    for img in built:
        rows.append(
            f"| `{img.reference}` | {img.build_s:.0f} s | {img.push_s:.0f} s "
            f"| {img.size_bytes / 1e6:.0f} MB | {img.pushed_bytes / 1e6:.0f} MB |"
        )
    return "\n".join(rows)


def running_stack_registry(dev_dir: Path) -> str | None:
    """The registry of a running `kaito dev up` stack in ``dev_dir``, if it answers."""
    stack = dev_dir / "stack.json"
    if not stack.exists():
        return None
    address = str(json.loads(stack.read_text()).get("registry") or "")
    if not address:
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
            return address
    except (urllib.error.URLError, OSError):
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=os.environ.get("REGISTRY") or None,
        help="push to HOST[:PORT][/PATH] (e.g. myacr.azurecr.io, after `buildah login`); "
        "default: the registry of a running `kaito dev up`, else a local docker-registry "
        "started for the push, its data kept in --registry-dir",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".kaito/dev"),
        help="the local stack's folder (default .kaito/dev), whose registry is used if it runs",
    )
    parser.add_argument(
        "--registry-dir",
        type=Path,
        default=Path(".kaito/images/registry"),
        help="the local registry's data when none runs (default .kaito/images/registry)",
    )
    parser.add_argument(
        "--only", action="append", choices=[s.name for s in IMAGES], help="build only these"
    )
    parser.set_defaults(func=cmd_images)


def cmd_images(args: argparse.Namespace) -> int:
    builder = Builder()
    registry = args.registry or running_stack_registry(args.dir.resolve())
    local: LocalRegistry | None = None
    try:
        if registry is None:
            local = LocalRegistry(args.registry_dir.resolve()).start()
            registry = local.address
            builder.say(f"local registry (docker-registry) at {registry}, data in {local.root}")
        else:
            builder.say(f"pushing to {registry}")
        built = build_all(registry, args.only, builder=builder)
    except (ControlPlaneError, ValueError) as e:
        builder.say(f"FAILED: {e}")
        return 1
    finally:
        if local is not None:
            local.stop()
    print("\n" + table(built), flush=True)
    if local is not None:
        print(
            f"\nThe images are stored in {local.root} (the registry was stopped after the "
            "push; `LocalRegistry(root).start()` serves them again)."
        )
    return 0
