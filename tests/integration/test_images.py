"""`make images` for real: the three images built with buildah from their Dockerfiles,
pushed to a local docker-registry, and read back from it.

The build reuses buildah's layer cache (``$KAITO_CACHE/images``): the first run on a
machine builds everything (the inference image's vLLM install is most of it), later runs
only push. Each image is checked from what the registry serves: its config (entrypoint,
command, user, OCI labels), every layer blob present at its size, the packages in the
layers, and its entrypoint run in a container made from the pulled image.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito_dev.images import IMAGES, Builder, BuiltImage, build_all, project_version
from kaito_dev.registry import LocalRegistry

pytestmark = pytest.mark.timeout(3600)

EXPECTED: dict[str, dict[str, Any]] = {
    "controller": {
        "entrypoint": ["kaito"],
        "cmd": ["--help"],
        "user": "65532:65532",
        "files": ["opt/kaito/bin/kaito"],
        "run": ["kaito", "workspace-controller", "--help"],
    },
    "inference": {
        "entrypoint": ["python", "-m", "kaito_inference"],
        "cmd": ["--help"],
        "user": "",
        "files": ["workspace/kaito_inference/app.py", "workspace/kaito_contracts/contracts.json"],
        "run": ["python", "-m", "kaito_inference", "--help"],
    },
    "tuning": {
        "entrypoint": ["python", "-m", "kaito_tuning"],
        "cmd": ["--help"],
        "user": "",
        "files": ["workspace/kaito_tuning/train.py", "workspace/kaito_contracts/contracts.json"],
        "run": ["python", "-m", "kaito_tuning", "--help"],
    },
    # The local cluster's client pod (not shipped: `make images` leaves it out).
    "curl": {
        "entrypoint": ["curl"],
        "cmd": ["--help"],
        "user": "65532:65532",
        "files": ["usr/bin/curl"],
        "run": ["curl", "--help"],
    },
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def builder() -> Builder:
    return Builder()


@pytest.fixture(scope="module")
def built(registry: LocalRegistry, builder: Builder) -> dict[str, BuiltImage]:
    images = build_all(registry.address, [s.name for s in IMAGES], builder=builder)
    return {img.spec.name: img for img in images}


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=60) as r:
        body: bytes = r.read()
        return body


def _skopeo(builder: Builder, *args: str) -> Any:
    out = subprocess.run(
        ["skopeo", *args], check=True, capture_output=True, text=True, env=builder.env
    )
    return json.loads(out.stdout)


def test_every_image_is_in_the_registry_under_its_workload_name(
    built: dict[str, BuiltImage], registry: LocalRegistry
) -> None:
    assert set(built) == {s.name for s in IMAGES} == set(EXPECTED)
    catalog = json.loads(_get(f"http://{registry.address}/v2/_catalog"))["repositories"]
    assert sorted(catalog) == [f"kaito-python/{n}" for n in sorted(EXPECTED)]
    for name, img in built.items():
        assert img.reference == f"{registry.address}/kaito-python/{name}:{project_version()}"
        tags = json.loads(_get(f"http://{registry.address}/v2/kaito-python/{name}/tags/list"))
        assert tags["tags"] == [project_version()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_pulled_config_has_the_entrypoint_and_the_oci_labels(
    name: str, built: dict[str, BuiltImage], builder: Builder
) -> None:
    img = built[name]
    config = _skopeo(
        builder, "inspect", "--config", "--raw", "--tls-verify=false", f"docker://{img.reference}"
    )
    want = EXPECTED[name]
    assert config["config"]["Entrypoint"] == want["entrypoint"]
    assert config["config"]["Cmd"] == want["cmd"]
    assert config["config"].get("User", "") == want["user"]
    if name == "inference":  # kept because the images are built in Docker's format
        assert config["config"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == f"kaito-{name}"
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.source"].startswith("https://")
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.description"]
    # The build's pip configuration (PIP_CONFIG_FILE) is a build argument, not shipped.
    assert not any(e.startswith("PIP_CONFIG_FILE=") for e in config["config"].get("Env", []))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_layers_are_served_and_hold_the_packages(
    name: str, built: dict[str, BuiltImage], registry: LocalRegistry
) -> None:
    repo = f"http://{registry.address}/v2/kaito-python/{name}"
    manifest = json.loads(
        _get(
            f"{repo}/manifests/{project_version()}",
            accept="application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.oci.image.manifest.v1+json",
        )
    )
    assert manifest["layers"], name
    found: set[str] = set()
    for layer in manifest["layers"]:
        head = urllib.request.Request(f"{repo}/blobs/{layer['digest']}", method="HEAD")
        with urllib.request.urlopen(head, timeout=30) as r:
            assert int(r.headers["Content-Length"]) == layer["size"], layer["digest"]
        if layer["size"] > 64 * 1024 * 1024:
            continue  # the dependency layers: present at their size is enough here
        with tarfile.open(fileobj=io.BytesIO(_get(f"{repo}/blobs/{layer['digest']}"))) as tar:
            found |= {m.name.removeprefix("./") for m in tar.getmembers()}
    missing = [f for f in EXPECTED[name]["files"] if f not in found]
    assert not missing, f"{name}: {missing} in no layer"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_entrypoint_runs_in_a_container_from_the_pulled_image(
    name: str, built: dict[str, BuiltImage], builder: Builder, tmp_path: Path
) -> None:
    img = built[name]
    env = builder.env
    policy = ["--signature-policy", str(builder.policy)]
    container = subprocess.run(
        ["buildah", "from", *policy, "--tls-verify=false", "--pull-always", img.reference],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    try:
        run = subprocess.run(
            ["buildah", "run", "--isolation=chroot", container, "--", *EXPECTED[name]["run"]],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "usage:" in run.stdout.lower(), run.stdout[-2000:]
