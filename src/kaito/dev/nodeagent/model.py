"""The stand-in for a preset's baked-in weights: a tiny model built once, locally.

``<python> -m kaito_inference.tiny_model --output <state-dir>/tiny-model``, run lazily the
first time a pod needs ``/workspace/weights`` and cached across pods and agent runs (a
``.complete`` marker says the folder is whole).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("kaito.dev.nodeagent")

MODEL_NAME = "tiny-llama"
ANNOTATION_TEXT = f"{MODEL_NAME} (local stand-in for the preset's weights)"


class StandInModel:
    def __init__(self, folder: Path, *, python: str, env: Mapping[str, str]) -> None:
        self.folder = folder
        self._python = python
        self._env = dict(env)
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return (self.folder / ".complete").exists()

    async def ensure(self) -> Path:
        async with self._lock:
            if self.ready:
                return self.folder
            shutil.rmtree(self.folder, ignore_errors=True)
            log.info("building the tiny stand-in model", folder=str(self.folder))
            proc = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "kaito_inference.tiny_model",
                "--output",
                str(self.folder),
                env=self._env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                tail = out.decode(errors="replace")[-2000:]
                raise RuntimeError(f"building the tiny model failed ({proc.returncode}): {tail}")
            (self.folder / ".complete").write_text(MODEL_NAME + "\n")
            log.info("tiny stand-in model built", folder=str(self.folder))
            return self.folder
