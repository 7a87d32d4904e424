"""Fixtures: the tiny model and adapters, a reference generator, one server per engine.

Every test that takes `server` runs once per engine; pytest groups them by engine, so
exactly one server process (started like a pod starts it) lives at a time and the
~30 s vLLM start is paid once per session. A missing engine fails the session: the
contract must hold for both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from harness import (
    MAX_CONCURRENT,
    MAX_MODEL_LEN,
    MAX_REQUEST_BYTES,
    MUTED_ADAPTER,
    Artifacts,
    Reference,
    ServerProcess,
)

ENGINES = ("transformers", "vllm")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [
        m for m in ("vllm", "transformers", "peft", "openai") if not importlib.util.find_spec(m)
    ]
    if missing:
        pytest.exit(
            f"the inference contract suite needs {', '.join(missing)}: run `make setup-inference`",
            returncode=3,
        )


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    from kaito_inference.tiny_model import build_lora_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    model = build_tiny_model(root / "model", max_position_embeddings=MAX_MODEL_LEN)
    adapters = root / "adapters"
    build_lora_adapter(model, adapters / "alpha", seed=1)
    build_lora_adapter(model, adapters / "beta", seed=2)
    shutil.copytree(adapters / "alpha", adapters / MUTED_ADAPTER)
    return Artifacts(root=root, model=model, adapters=adapters)


@pytest.fixture(scope="session")
def reference(artifacts: Artifacts) -> Reference:
    return Reference(artifacts)


@pytest.fixture(scope="session", params=ENGINES)
def server(
    request: pytest.FixtureRequest, artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    engine = request.param
    logs = Path(os.environ.get("INF_TEST_LOG_DIR") or tmp_path_factory.mktemp("logs"))
    logs.mkdir(parents=True, exist_ok=True)
    process = ServerProcess(
        engine=engine,
        model=artifacts.model,
        adapters_dir=artifacts.adapters,
        extra_args=[
            "--dtype",
            "float32",
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--max-concurrent-requests",
            str(MAX_CONCURRENT),
            "--max-request-bytes",
            str(MAX_REQUEST_BYTES),
        ],
        env={MUTED_ADAPTER: "0"},
        log_path=logs / f"server-{engine}.log",
    )
    process.start()
    yield process
    code = process.stop()
    assert code == 0, (
        f"{engine} server did not exit cleanly on SIGTERM ({code}); see {process.log_path}"
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60.0
    ) as c:
        yield c


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as c:
        yield c
