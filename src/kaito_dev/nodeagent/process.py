"""One container run as a local process: start, wait, stop, log.

The process gets its own process group (so stopping it also stops what it spawned, e.g.
vLLM's engine process) and ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the agent
even when the agent is killed without cleaning up. stdout and stderr are appended to the
container's log file; `log_tail` gives the lines of the current run (kubelet's
``FallbackToLogsOnError`` termination message).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("kaito_dev.nodeagent")

_PR_SET_PDEATHSIG = 1
STATE_ENV = "KAITO_NODE_AGENT_STATE"
"""Set in every container's environment to the agent's state folder, so that whatever a
container spawned (inherited environment) can be found again by `orphans`."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Without libc (not Linux) the process-group kill on stop still applies.
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ContainerProcess:
    """A started container process. ``await wait()`` is the exit code."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, log_offset: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.log_offset = log_offset

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> ContainerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            offset = out.tell()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                cwd=str(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return cls(proc, log_path, offset)

    async def wait(self) -> int:
        code = await self.proc.wait()
        # Whatever the container spawned goes with it (kubelet kills the whole cgroup).
        self._signal_group(signal.SIGKILL)
        return code

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; the exit code."""
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                log.info("container did not stop in time, killing", pid=self.pid, grace=grace)
            self._signal_group(signal.SIGKILL)
        return await self.proc.wait()

    def kill_now(self) -> None:
        """Synchronous last resort (agent shutting down without a loop to wait on).

        Only while the process is unreaped: afterwards its PID (the group id) may
        belong to someone else."""
        if self.proc.returncode is None:
            self._signal_group(signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self.log_offset, size - 64 * 1024))
                data = f.read()
        except OSError:
            return ""
        tail = data.decode(errors="replace").splitlines()[-lines:]
        return "\n".join(tail)


def orphans(state_dir: Path) -> list[int]:
    """Live processes started (directly or not) by an agent on ``state_dir``.

    PR_SET_PDEATHSIG kills a dead agent's direct children; what they spawned (e.g.
    vLLM's worker process) may live on. Such processes carry `STATE_ENV` in their
    environment, inherited from the container process.
    """
    marker = f"{STATE_ENV}={state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in environ and ") Z " not in stat:
            found.append(int(entry.name))
    return found


def kill_orphans(state_dir: Path) -> list[int]:
    """SIGKILL every `orphans` process; return their PIDs."""
    pids = orphans(state_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        log.warning("killed processes left by a previous agent", pids=pids)
    return pids
