"""Which containers run, and how a container's argv becomes a local argv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaito_dev.nodeagent.command import is_runnable, module_of, translate
from kaito_dev.nodeagent.volumes import Mount, MountMap

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


FETCH = [
    "python", "-m", "kaito_inference.fetch",
    "--repo", "microsoft/Phi-3-mini-4k-instruct",
    "--revision", "0a67737cc96d2554230f90338b163bc6380a2a85",
    "--cache-dir", "/var/lib/kaito/models",
]  # fmt: skip
TARGET = "microsoft--Phi-3-mini-4k-instruct@0a67737cc96d2554230f90338b163bc6380a2a85"


def test_a_weights_fetch_copies_the_stand_in_model_into_the_folder_it_would_fill(
    tmp_path: Any,
) -> None:
    """With no hub in the stack, the fetch-weights init container puts the stand-in model
    where the fetch would have put the weights; a second pod finds it there."""
    import subprocess
    import sys

    stand_in = tmp_path / "tiny-model"
    stand_in.mkdir()
    (stand_in / "config.json").write_text("{}")
    cache = tmp_path / "node-disk" / "var" / "lib" / "kaito" / "models"
    cache.mkdir(parents=True)
    mounts = MountMap([Mount("/var/lib/kaito/models", str(cache))])
    c = container(*FETCH)
    tr = translate(c, python=sys.executable, mounts=mounts, pod_ip="127.0.1.1",
                   stand_in_model=lambda: str(stand_in))  # fmt: skip
    assert tr.uses_stand_in_model
    assert tr.adaptations == [
        f"fetch of microsoft/Phi-3-mini-4k-instruct@{TARGET.split('@')[1]} -> the tiny "
        f"stand-in model copied into /var/lib/kaito/models/{TARGET} (this stack has no hub "
        "to fetch from)"
    ]
    assert tr.argv[-1] == str(cache / TARGET)
    for expected in ("copied into", "already in the cache"):
        out = subprocess.run(tr.argv, capture_output=True, text=True, check=True).stdout
        assert expected in out
    assert (cache / TARGET / "config.json").read_text() == "{}"


def test_the_server_loading_from_the_cache_is_marked_as_serving_the_stand_in() -> None:
    mounts = MountMap([Mount("/var/lib/kaito/models", "/nd/models")])
    tr = translate(
        container("python", "-m", "kaito_inference", "--model",
                  f"/var/lib/kaito/models/{TARGET}", "--max-model-len", "4096"),
        python=PY, mounts=mounts, pod_ip="127.0.1.1", stand_in_model=lambda: MODEL,
    )  # fmt: skip
    assert tr.uses_stand_in_model
    assert tr.argv[tr.argv.index("--model") + 1] == f"/nd/models/{TARGET}"
    assert tr.argv[tr.argv.index("--max-model-len") + 1] == "2048"


def test_the_model_cache_hostpath_is_the_emulated_nodes_disk(tmp_path: Any) -> None:
    from kaito_dev.nodeagent.volumes import host_path

    disk = tmp_path / "node-disk"
    assert host_path("/var/lib/kaito/models", disk) == disk / "var/lib/kaito/models"
    assert host_path("/srv/data", disk) == Path("/srv/data")
    assert host_path("/var/lib/kaitoX", disk) == Path("/var/lib/kaitoX")


HUB = "http://127.0.0.1:40000"


def test_with_a_hub_the_weights_fetch_runs_the_real_fetcher_into_the_nodes_cache() -> None:
    """The stack's hub emulator serves the stand-in under the preset's repo: the fetch runs
    as written (only the cache path is the node's disk), and says where it downloads from."""
    mounts = MountMap([Mount("/var/lib/kaito/models", "/nd/models")])
    called: list[str] = []
    tr = translate(
        container(*FETCH), python=PY, mounts=mounts, pod_ip="127.0.1.1",
        stand_in_model=lambda: called.append("built") or MODEL, hf_endpoint=HUB,
    )  # fmt: skip
    assert tr.argv == [
        PY, "-m", "kaito_inference.fetch",
        "--repo", "microsoft/Phi-3-mini-4k-instruct",
        "--revision", TARGET.split("@")[1],
        "--cache-dir", "/nd/models",
    ]  # fmt: skip
    assert called == [], "the fetch never needs the local stand-in folder"
    assert tr.uses_stand_in_model
    (note,) = tr.adaptations
    assert note.startswith(f"fetch of microsoft/Phi-3-mini-4k-instruct@{TARGET.split('@')[1]}")
    assert HUB in note and "stand-in model, not the preset's weights" in note


def test_with_a_hub_the_server_loading_from_the_cache_serves_the_stand_in() -> None:
    mounts = MountMap([Mount("/var/lib/kaito/models", "/nd/models")])
    tr = translate(
        container("python", "-m", "kaito_inference", "--model",
                  f"/var/lib/kaito/models/{TARGET}", "--max-model-len", "4096"),
        python=PY, mounts=mounts, pod_ip="127.0.1.1", hf_endpoint=HUB,
    )  # fmt: skip
    assert tr.uses_stand_in_model
    assert tr.argv[tr.argv.index("--model") + 1] == f"/nd/models/{TARGET}"
    assert tr.argv[tr.argv.index("--max-model-len") + 1] == "2048"
    assert tr.adaptations[0] == (
        f"/var/lib/kaito/models/{TARGET}: the tiny stand-in model the weights fetch put in "
        "the node's cache"
    )


def test_with_a_hub_a_server_on_a_mounted_model_keeps_its_context() -> None:
    """Only the cache the hub filled holds the stand-in: another model keeps its length."""
    mounts = MountMap([Mount("/mnt/model", "/host/model")])
    tr = translate(
        container("python", "-m", "kaito_inference", "--model", "/mnt/model",
                  "--max-model-len", "4096"),
        python=PY, mounts=mounts, pod_ip="127.0.1.1", hf_endpoint=HUB,
    )  # fmt: skip
    assert not tr.uses_stand_in_model
    assert tr.argv[tr.argv.index("--max-model-len") + 1] == "4096"
