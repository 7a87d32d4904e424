"""images/controller/Dockerfile, checked without a Docker daemon: its base, user and
entrypoint, that the build context carries what the wheel needs, that the operator's
dependencies never pull torch, and that deploy/ runs the image it documents."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, entry_points, requires
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kaito import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "controller" / "Dockerfile"
DEPLOY = ROOT / "deploy"
UID = 65532
HEAVY = {"torch", "vllm", "transformers", "nvidia-cudnn-cu12", "triton"}

Obj = dict[str, Any]


def pyproject() -> Obj:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def documented_image() -> str:
    """The image name the Dockerfile's header builds (``docker build ... -t NAME .``)."""
    match = re.search(r"docker build .*?-t (\S+) \.", DOCKERFILE.read_text(), re.S)
    assert match, "the Dockerfile's header does not show its docker build command"
    return match.group(1)


def controller_deployments() -> list[Obj]:
    docs = []
    for path in sorted(DEPLOY.glob("*/deployment.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    return docs


def test_the_image_is_python_3_11_slim_and_runs_kaito_as_a_non_root_user() -> None:
    steps = instructions()
    args = dict(s[1].split("=", 1) for s in steps if s[0] == "ARG" and "=" in s[1])
    bases = [
        args.get(b.strip("${}"), b) for k, rest in steps if k == "FROM" for b in [rest.split()[0]]
    ]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    final = final_stage()
    users = [rest for k, rest in final if k == "USER"]
    assert users == [f"{UID}:{UID}"], users  # numeric: runAsNonRoot can verify it
    assert ("ENTRYPOINT", '["kaito"]') in final
    entrypoint_index = final.index(("ENTRYPOINT", '["kaito"]'))
    assert all(k != "USER" for k, _ in final[entrypoint_index:])
    assert json.loads(dict(final)["CMD"]) == ["--help"]


def test_the_entrypoint_is_the_packages_console_script() -> None:
    assert pyproject()["project"]["scripts"] == {"kaito": "kaito.cli:main"}
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "kaito"]
    assert script.value == "kaito.cli:main"
    assert script.load() is cli.main
    # Both controllers are subcommands of that script.
    for command in ("gpu-provisioner", "workspace-controller"):
        args = cli.build_parser().parse_args([command])
        assert args.command == command and callable(args.func)


def ignored(path: str, patterns: list[str]) -> bool:
    """Roughly Docker's .dockerignore matching (no `!` exceptions used here)."""
    for pattern in patterns:
        p = pattern.rstrip("/")
        if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p):
            return True
        if p.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], p[3:]):
            return True
    return False


def test_the_build_context_carries_what_the_wheel_needs_and_no_virtualenv() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)
    for excluded in (".git", ".venv", ".venv-inference", ".mypy_cache", "src/kaito/__pycache__"):
        assert ignored(excluded, patterns), excluded
    project = pyproject()
    needed = ["pyproject.toml", project["project"]["readme"], "constraints.txt"]
    needed += project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = [
        src
        for k, rest in instructions()
        if k == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not ignored(path, patterns), f"{path} is excluded from the build context"
        assert any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied), path
    for src in copied:
        assert (ROOT / src).exists() and not ignored(src, patterns), src


def test_the_operator_never_pulls_torch() -> None:
    """The installed distribution's dependency closure (extras excluded) has no ML stack."""
    seen: set[str] = set()
    pending = ["kaito"]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue  # a platform-specific dependency not installed here
        for raw in reqs:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
    assert "azure-mgmt-containerservice" in seen  # the walk did reach the dependencies
    assert not seen & HEAVY, sorted(seen & HEAVY)
    assert distribution("kaito").version == pyproject()["project"]["version"]


def test_deploy_runs_the_image_the_dockerfile_documents_tagged_with_the_package_version() -> None:
    image = documented_image()
    name, _, tag = image.rpartition(":")
    assert tag == pyproject()["project"]["version"]
    assert f'org.opencontainers.image.version="{tag}"' in DOCKERFILE.read_text()
    deps = controller_deployments()
    assert {d["metadata"]["name"] for d in deps} == {
        "gpu-provisioner",
        "kaito-workspace-controller",
    }
    for dep in deps:
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == image, dep["metadata"]["name"]
        assert container["command"][0] == "kaito"  # on the image's PATH
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert name.endswith("/controller")


def test_a_read_only_root_gets_a_writable_tmp_where_the_process_needs_one() -> None:
    """The webhook's TLS key passes through a temporary directory (kaito.runtime.pki), so
    the workspace controller needs /tmp writable: an emptyDir under a read-only root."""
    for dep in controller_deployments():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if "workspace-controller" not in container["command"]:
            continue
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or ()}
        assert "/tmp" in mounts, f"{dep['metadata']['name']}: no volume at /tmp"
        volumes = {v["name"]: v for v in pod.get("volumes") or ()}
        assert "emptyDir" in volumes[mounts["/tmp"]]
