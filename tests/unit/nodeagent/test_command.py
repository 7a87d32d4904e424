"""Which containers run, and how a container's argv becomes a local argv."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.dev.nodeagent.command import is_runnable, module_of, translate
from kaito.dev.nodeagent.volumes import Mount, MountMap

PY = "/venv/bin/python"
MODEL = "/state/tiny-model"


def container(*argv: str, split: int = 3) -> dict[str, Any]:
    return {"name": "c", "image": "img", "command": list(argv[:split]), "args": list(argv[split:])}


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["python", "-m", "kaito_inference", "--model", "x"], "kaito_inference"),
        (["python3", "-m", "kaito_tuning", "--method", "lora"], "kaito_tuning"),
        (["python3", "-u", "-m", "kaito_tuning.download", "--url", "u"], "kaito_tuning.download"),
        (["/usr/bin/python3", "-mkaito_inference"], "kaito_inference"),
        (["python", "-m", "vllm.entrypoints.openai.api_server"], None),
        (["python", "script.py"], None),
        (["/bin/sh", "-c", "cp -r /data/. /mnt/adapter/x"], None),
        ([], None),
    ],
)
def test_only_the_projects_own_modules_are_runnable(argv: list[str], module: str | None) -> None:
    c = container(*argv, split=1)
    assert module_of(c) == module
    assert is_runnable(c) is (module is not None)


def test_mount_paths_are_rewritten_and_the_longest_mount_wins() -> None:
    mounts = MountMap(
        [
            Mount("/mnt/adapter", "/local/empty"),
            Mount("/mnt/adapter/my-adapter/", "/host/adapter"),
            Mount("/mnt/data", "/host/data"),
        ]
    )
    tr = translate(
        container(
            "python", "-m", "kaito_tuning",
            "--data", "/mnt/data",
            "--output=/mnt/adapter/my-adapter/out",
            "/mnt/adapter/other",
            "/mnt/datasets",  # shares a prefix, not a mount
            "--name", "/mnt",
        ),
        python=PY,
        mounts=mounts,
        pod_ip="127.0.1.1",
    )  # fmt: skip
    assert tr.argv == [
        PY, "-m", "kaito_tuning",
        "--data", "/host/data",
        "--output=/host/adapter/out",
        "/local/empty/other",
        "/mnt/datasets",
        "--name", "/mnt",
    ]  # fmt: skip
    assert tr.adaptations == []


def test_inference_server_gets_the_stand_in_model_cpu_flags_and_the_pod_ip() -> None:
    tr = translate(
        container(
            "python", "-m", "kaito_inference",
            "--model", "/workspace/weights",
            "--dtype", "bfloat16",
            "--tensor-parallel-size", "4",
            "--pipeline-parallel-size", "2",
            "--max-model-len", "4096",
            "--host", "0.0.0.0",
            "--port", "5000",
        ),
        python=PY,
        mounts=MountMap([]),
        pod_ip="127.0.1.7",
        stand_in_model=lambda: MODEL,
    )  # fmt: skip
    assert tr.argv == [
        PY, "-m", "kaito_inference",
        "--model", MODEL,
        "--dtype", "float32",
        "--tensor-parallel-size", "1",
        "--max-model-len", "2048",
        "--host", "127.0.1.7",
        "--port", "5000",
    ]  # fmt: skip
    assert tr.uses_stand_in_model
    assert len(tr.adaptations) == 6
    assert tr.adaptations[0].startswith("/workspace/weights -> a tiny local model")


def test_host_is_added_when_absent_and_inline_flags_are_adapted() -> None:
    tr = translate(
        container(
            "python", "-m", "kaito_inference", "--dtype=float16", "--model=/workspace/weights"
        ),
        python=PY,
        mounts=MountMap([]),
        pod_ip="127.0.1.2",
        stand_in_model=lambda: MODEL,
    )
    assert tr.argv == [
        PY, "-m", "kaito_inference", "--dtype", "float32", f"--model={MODEL}",
        "--host", "127.0.1.2",
    ]  # fmt: skip


def test_a_volume_mounted_at_the_weights_path_wins_over_the_stand_in() -> None:
    tr = translate(
        container(
            "python", "-m", "kaito_tuning", "--model", "/workspace/weights", "--dtype", "auto"
        ),
        python=PY,
        mounts=MountMap([Mount("/workspace/weights", "/host/weights")]),
        pod_ip="127.0.1.2",
        stand_in_model=lambda: MODEL,
    )
    assert tr.argv == [PY, "-m", "kaito_tuning", "--model", "/host/weights", "--dtype", "auto"]
    assert not tr.uses_stand_in_model
    assert tr.adaptations == []  # tuning is not a server: no --host


def test_untranslatable_container_raises() -> None:
    with pytest.raises(ValueError, match="not runnable"):
        translate(container("/bin/sh", "-c", "true"), python=PY, mounts=MountMap([]), pod_ip="x")
