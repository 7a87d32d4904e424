"""The hub emulator in this process, a small model folder, and the fetcher as the image
runs it: ``python -m kaito_inference.fetch`` under ``.venv-inference`` (the real
``huggingface_hub`` client), with ``HF_ENDPOINT`` on the emulator.

Needs ``.venv-inference``: the fetcher tests fail, not skip, without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kaito_dev.hfhub import HubEmulator

ROOT = Path(__file__).resolve().parents[3]
INFERENCE_PYTHON = ROOT / ".venv-inference" / "bin" / "python"
REPO = "kaito-test/tiny"
WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 300 * 1024


def make_model(folder: Path, seed: int = 0) -> Path:
    """A repo-shaped folder: an LFS weights file, small JSON files, a nested file."""
    folder.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(str(seed).encode()).digest()
    (folder / WEIGHTS).write_bytes((block * (WEIGHTS_SIZE // len(block) + 1))[:WEIGHTS_SIZE])
    (folder / "config.json").write_text(f'{{"model_type": "llama", "seed": {seed}}}\n')
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "vocab.txt").write_text("hello\nworld\n" * 50)
    return folder


def tree_digest(folder: Path) -> dict[str, str]:
    """path -> sha256 of every file, ignoring the client's and the fetcher's bookkeeping."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts and p.name != ".kaito-complete"
    }


@dataclass
class FetchRun:
    code: int
    stdout: str
    stderr: str
    termination: str | None


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubEmulator]:
    async with HubEmulator(tmp_path / "hub", tokens=["valid-but-not-granted"]) as h:
        yield h


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


@pytest.fixture
def inference_python() -> Path:
    if not INFERENCE_PYTHON.exists():
        pytest.fail(
            f"{INFERENCE_PYTHON} is missing: the fetcher runs under the image's interpreter "
            "(make setup-inference builds it)",
            pytrace=False,
        )
    return INFERENCE_PYTHON


class Fetcher:
    """Starts the fetcher as a subprocess against ``hub``; the emulator keeps serving
    from this event loop while it runs."""

    def __init__(self, python: Path, hub: HubEmulator, tmp: Path) -> None:
        self.python, self.hub, self.tmp = python, hub, tmp
        self.cache = tmp / "cache"
        self._n = 0

    async def start(
        self,
        *args: str,
        repo: str = REPO,
        revision: str = "main",
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[asyncio.subprocess.Process, Path]:
        self._n += 1
        term = self.tmp / f"termination-{self._n}"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KUBERNETES_", "POD_"))
        }
        environ.update(
            HF_ENDPOINT=self.hub.url,
            HOME=str(self.tmp / "home"),
            PYTHONPATH=f"{ROOT / 'images' / 'inference'}:{ROOT / 'src'}",
            **({"HF_TOKEN": token} if token is not None else {}),
            **(env or {}),
        )
        proc = await asyncio.create_subprocess_exec(
            str(self.python), "-m", "kaito_inference.fetch", "--repo", repo,
            "--revision", revision, "--cache-dir", str(self.cache),
            "--termination-log", str(term), "--log-format", "json", "--retry-wait", "0.2",
            *args, env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return proc, term

    async def wait(self, started: tuple[asyncio.subprocess.Process, Path]) -> FetchRun:
        proc, term = started
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        run = FetchRun(
            code=proc.returncode or 0,
            stdout=out.decode(),
            stderr=err.decode(),
            termination=term.read_text() if term.exists() else None,
        )
        if run.code not in (0, 1, 3, 4, 5, 6):
            print(run.stderr, file=sys.stderr)
        return run

    async def run(self, *args: str, **kw: object) -> FetchRun:
        return await self.wait(await self.start(*args, **kw))  # type: ignore[arg-type]


@pytest.fixture
def fetcher(inference_python: Path, hub: HubEmulator, tmp_path: Path) -> Fetcher:
    return Fetcher(inference_python, hub, tmp_path)
