"""Model images against the real local registry (Debian's ``docker-registry``, htpasswd
auth on): ``kaito model package`` pushes a model folder; the ``fetch-weights`` init
container's command, exactly as the controller builds it for ``presetOptions.modelImage``
(its paths mapped onto a temporary node), pulls it with the images' interpreter
(``.venv-inference``) into the node's model cache. The registry's own access log counts
the requests: a second pull of a complete image makes no blob GET, a pinned one no
request at all, a resumed pull fetches only the layer it lacked, and a second package
uploads nothing. A wrong secret and an unknown tag end with their reasons.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito.api.workspace import Workspace
from kaito.cli import main as kaito_main
from kaito.controllers.workspace.plan import resolve_plan
from kaito.controllers.workspace.podspec import weights_parts
from kaito.presets.catalog import load_catalog
from kaito_dev.controlplane import free_port
from kaito_dev.registry import LocalRegistry, docker_config_json

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-inference" / "bin" / "python"
USER, PASSWORD = "kaito", "s3cret"
CACHE = "/var/lib/kaito/models"
CATALOG = load_catalog()


def image_env() -> dict[str, str]:
    if not PYTHON.exists():
        raise AssertionError(f"{PYTHON} is missing: run `make setup-inference`")
    paths = [ROOT / "images" / "inference", ROOT / "src"]  # src: kaito_contracts only
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "OMP_NUM_THREADS": "1"}


def registry_log(reg: LocalRegistry, method: str, part: str) -> int:
    """How many requests ``method`` on a URI containing ``part`` the registry completed."""
    count = 0
    for line in reg.log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if (
            entry.get("msg") == "response completed"
            and entry.get("http.request.method") == method
            and part in entry.get("http.request.uri", "")
        ):
            count += 1
    return count


def model_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in (".cache", ".kaito-complete")
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("reg"), users={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A made-up model folder as the weights fetcher leaves one: small files, two
    'shards' over the 1 MiB layer threshold the test packages with, a subfolder, and
    the fetcher's bookkeeping (which is not packaged)."""
    folder = tmp_path_factory.mktemp("model") / "phi-3"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(os.urandom(3 << 20))
    (folder / "model-00002-of-00002.safetensors").write_bytes(os.urandom((2 << 20) + 5))
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "x.metadata").write_text("bookkeeping")
    (folder / ".kaito-complete").write_text(
        json.dumps({"repo": "microsoft/Phi-3-mini-4k-instruct", "commit": "0a67737", "files": []})
    )
    return folder


def secret(folder: Path, name: str, body: str) -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / ".dockerconfigjson").write_text(body)
    return folder / name / ".dockerconfigjson"


def package(model: Path, image: str, config: Path) -> str:
    """``kaito model package`` (the CLI's entry point, in this process): the pinned image."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = kaito_main(
            ["model", "package", "--from-folder", str(model), "--image", image,
             "--docker-config", str(config), "--large-file-mib", "1"]
        )  # fmt: skip
    assert code == 0, out.getvalue()
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture(scope="module")
def pushed(
    registry: LocalRegistry, model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(tag, pinned reference) of the packaged model."""
    config = secret(tmp_path_factory.mktemp("login"), "docker", registry.docker_config_json())
    tag = f"{registry.address}/models/phi-3-mini:0a67737"
    return tag, package(model, tag, config)


def pull(
    image: str, node: Path, secret_body: str, *, pod: str = "pod-a"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the init container the controller builds for ``presetOptions.modelImage:
    image`` with one pull Secret, its paths mapped under ``node``; (run, termination log)."""
    ws = Workspace.model_validate(
        {
            "metadata": {"name": "ws", "namespace": "team", "uid": "u"},
            "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
            "inference": {
                "preset": {
                    "name": "phi-3-mini-4k-instruct",
                    "presetOptions": {"modelImage": image, "modelImagePullSecrets": ["acr-pull"]},
                }
            },
        }
    )
    weights = resolve_plan(ws, CATALOG).weights
    assert weights is not None
    _, (init,), _ = weights_parts(weights, CATALOG.images.inference)
    secret(node / "secrets", "acr-pull", secret_body)
    paths = {
        CACHE: str(node / "cache"),
        "/mnt/pull-secrets": str(node / "secrets"),
        "/mnt/model-image": str(node / pod / "model-image"),
    }

    def local(arg: str) -> str:
        for container, here in paths.items():
            if arg.startswith(container):
                return here + arg[len(container) :]
        return arg

    argv = [local(a) for a in init["command"]]
    assert argv[:3] == ["python", "-m", "kaito_inference.fetch.image"]
    log = node / pod / "termination-log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [str(PYTHON), *argv[1:], "--termination-log", str(log), "--retry-wait", "0.1",
         "--max-attempts", "2", "--log-format", "json"],
        env=image_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return run, log


def test_a_packaged_model_is_pulled_into_the_node_cache_byte_for_byte(
    registry: LocalRegistry, model: Path, pushed: tuple[str, str], tmp_path: Path
) -> None:
    tag, pinned = pushed
    run, _ = pull(tag, tmp_path, registry.docker_config_json())
    assert run.returncode == 0, run.stderr[-3000:]
    digest = pinned.split("@", 1)[1]
    target = tmp_path / "cache" / "oci" / digest.replace(":", "-")
    assert run.stdout.strip().splitlines()[-1] == str(target)
    assert model_files(target) == model_files(model)
    assert not (target / ".cache").exists()  # the fetcher's bookkeeping stayed behind
    marker = json.loads((target / ".kaito-complete").read_text())
    assert marker["digest"] == digest
    assert marker["image"] == tag
    assert {f["path"] for f in marker["files"]} == set(model_files(model))
    assert not (target / ".kaito-layers").exists()
    # The server's --model for a tag: the link the pull made in the pod's own folder.
    link = tmp_path / "pod-a" / "model-image" / "model"
    assert link.is_symlink() and link.resolve() == target.resolve()
    # The image, read back with the registry API: one layer per large file, labelled.
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(
        f"http://{registry.address}/v2/models/phi-3-mini/manifests/{digest}",
        headers={
            "Authorization": f"Basic {auth}",
            "Accept": "application/vnd.oci.image.manifest.v1+json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        manifest = json.loads(r.read())
    assert [(layer["mediaType"], layer["annotations"]["org.opencontainers.image.title"])
            for layer in manifest["layers"]] == [
        ("application/vnd.oci.image.layer.v1.tar+gzip", "data"),
        ("application/vnd.oci.image.layer.v1.tar", "data/model-00001-of-00002.safetensors"),
        ("application/vnd.oci.image.layer.v1.tar", "data/model-00002-of-00002.safetensors"),
    ]  # fmt: skip
    assert manifest["annotations"]["kaito.sh/artifact-type"] == "application/vnd.kaito.model.v1"
    assert manifest["annotations"]["kaito.sh/model-repo"] == "microsoft/Phi-3-mini-4k-instruct"
    assert manifest["annotations"]["kaito.sh/model-revision"] == "0a67737"


def test_a_second_pull_reuses_the_cache_without_a_blob_get(
    registry: LocalRegistry, pushed: tuple[str, str], tmp_path: Path
) -> None:
    tag, pinned = pushed
    first, _ = pull(tag, tmp_path, registry.docker_config_json())
    assert first.returncode == 0, first.stderr[-3000:]
    blobs, manifests = (
        registry_log(registry, "GET", "/blobs/"),
        registry_log(registry, "GET", "/manifests/"),
    )
    again, _ = pull(tag, tmp_path, registry.docker_config_json(), pod="pod-b")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "weights already cached" in again.stdout + again.stderr
    assert registry_log(registry, "GET", "/blobs/") == blobs
    assert registry_log(registry, "GET", "/manifests/") == manifests + 1  # the tag's digest
    assert (tmp_path / "pod-b" / "model-image" / "model").resolve() == (
        tmp_path / "pod-a" / "model-image" / "model"
    ).resolve()
    # Pinned by digest: no request at all, so a node restarts its pods while the
    # registry is unreachable (here: a reference to a port nobody listens on).
    offline = pinned.replace(registry.address, f"127.0.0.1:{free_port()}")
    cached, _ = pull(offline, tmp_path, registry.docker_config_json(), pod="pod-c")
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert registry_log(registry, "GET", "/manifests/") == manifests + 1


def test_a_broken_pull_resumes_with_the_layers_it_lacks(
    registry: LocalRegistry, model: Path, pushed: tuple[str, str], tmp_path: Path
) -> None:
    tag, pinned = pushed
    run, _ = pull(tag, tmp_path, registry.docker_config_json())
    assert run.returncode == 0, run.stderr[-3000:]
    target = tmp_path / "cache" / "oci" / pinned.split("@", 1)[1].replace(":", "-")
    marker = json.loads((target / ".kaito-complete").read_text())
    # As a pull killed during its last layer leaves it: no marker, that layer's file
    # partly written, the other layers listed as done.
    (target / ".kaito-complete").unlink()
    shard = target / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    (target / ".kaito-layers").write_text(json.dumps(marker["layers"][:2]))
    blobs = registry_log(registry, "GET", "/blobs/")
    resumed, _ = pull(tag, tmp_path, registry.docker_config_json(), pod="pod-b")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert registry_log(registry, "GET", "/blobs/") == blobs + 1
    assert model_files(target) == model_files(model)
    assert (target / ".kaito-complete").is_file()


def test_a_second_package_of_the_same_folder_uploads_nothing(
    registry: LocalRegistry, model: Path, pushed: tuple[str, str], tmp_path: Path
) -> None:
    tag, pinned = pushed
    uploads = registry_log(registry, "PUT", "/blobs/uploads/")
    config = secret(tmp_path, "docker", registry.docker_config_json())
    assert package(model, tag, config) == pinned  # reproducible: the same digest
    assert registry_log(registry, "PUT", "/blobs/uploads/") == uploads


def test_a_wrong_secret_is_unauthorized_and_leaves_no_weights(
    registry: LocalRegistry, pushed: tuple[str, str], tmp_path: Path
) -> None:
    tag, _ = pushed
    wrong = docker_config_json(registry.address, USER, "not-the-password")
    run, log = pull(tag, tmp_path, wrong)
    assert run.returncode == 3, run.stderr[-3000:]
    message = log.read_text()
    assert message.startswith(f"Unauthorized: pulling {tag}: the registry refused the credentials")
    assert "secret acr-pull" in message
    assert not (tmp_path / "cache" / "oci").exists() or not any(
        (tmp_path / "cache" / "oci").glob("*/.kaito-complete")
    )


def test_an_unknown_tag_is_image_not_found(
    registry: LocalRegistry, pushed: tuple[str, str], tmp_path: Path
) -> None:
    run, log = pull(
        f"{registry.address}/models/phi-3-mini:no-such-tag", tmp_path, registry.docker_config_json()
    )
    assert run.returncode == 7, run.stderr[-3000:]
    assert log.read_text().startswith(
        f"ImageNotFound: pulling {registry.address}/models/phi-3-mini:no-such-tag:"
    )


def test_packaging_refuses_a_folder_with_a_link(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").symlink_to("/etc/hostname")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = kaito_main(
            ["model", "package", "--from-folder", str(folder), "--image", "127.0.0.1:1/m:1"]
        )
    assert code == 1
    assert "InvalidModel: " in err.getvalue() and "weights.bin" in err.getvalue()
    shutil.rmtree(folder)
