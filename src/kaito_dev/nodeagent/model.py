"""The stand-in for a preset's baked-in weights: a tiny model built once, locally.

``<python> -m kaito_inference.tiny_model --output <state-dir>/tiny-model`` copies the
tiny Llama pre-trained on the Python documentation (cached once per machine under
``$KAITO_CACHE/tiny-models/<recipe key>``, built there the first time: about a minute and
a half on 2 cores, its progress lines go to this log) into the folder, run the first time
a pod needs ``/workspace/weights`` in each agent run: it returns at once when the folder
already holds the current model, and replaces an older one (a ``.complete`` marker says
the folder is whole).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("kaito_dev.nodeagent")

MODEL_NAME = "tiny-llama"
ANNOTATION_TEXT = (
    f"{MODEL_NAME} (local stand-in for the preset's weights, "
    "pre-trained briefly on the Python documentation)"
)
_PASSED = ("HOME", "KAITO_CACHE")
"""Where the pre-trained model is cached (``$KAITO_CACHE`` or ``~/.cache/kaito``)."""


class StandInModel:
    def __init__(self, folder: Path, *, python: str, env: Mapping[str, str]) -> None:
        self.folder = folder
        self._python = python
        self._env = {**{k: os.environ[k] for k in _PASSED if k in os.environ}, **env}
        self._lock = asyncio.Lock()
        self._checked = False

    @property
    def ready(self) -> bool:
        return self._checked and (self.folder / ".complete").exists()

    async def ensure(self) -> Path:
        async with self._lock:
            if self.ready:
                return self.folder
            (self.folder / ".complete").unlink(missing_ok=True)
            log.info("preparing the tiny stand-in model", folder=str(self.folder))
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
            assert proc.stdout is not None
            tail: list[str] = []
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail = [*tail[-40:], line]
                if line.startswith("[tiny-model] "):
                    log.info("tiny stand-in model", progress=line.removeprefix("[tiny-model] "))
            if await proc.wait() != 0:
                text = "\n".join(tail)[-2000:]
                raise RuntimeError(f"building the tiny model failed ({proc.returncode}): {text}")
            (self.folder / ".complete").write_text(MODEL_NAME + "\n")
            self._checked = True
            log.info("tiny stand-in model ready", folder=str(self.folder))
            return self.folder
