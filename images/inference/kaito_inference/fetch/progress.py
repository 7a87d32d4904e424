"""Download progress, measured on disk: a JSON log line every ~2 s and, in a pod, the
``kaito.sh/weights-progress`` annotation every ~5 s (`PodAnnotator`).

Why the disk and not the client's progress bars: ``snapshot_download``'s bars are
internal classes that change between releases; the bytes in the target (finished files
plus the client's ``*.incomplete`` temporaries) are what a user cares about and do not
depend on them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Protocol

import structlog

__all__ = ["ProgressReporter", "ProgressSink"]

log = structlog.get_logger("kaito_inference.fetch")


class ProgressSink(Protocol):
    """Somewhere besides the log that wants the numbers (the pod annotation)."""

    def report(self, done: int, total: int, rate: float, *, final: bool) -> None: ...


class ProgressReporter:
    """Polls the target while a download runs (a thread of its own).

    Args:
        interval: seconds between log lines; default 2.
        sink: also told, every ``sink_interval`` seconds and once at the end.
        sink_interval: default 5.
    """

    def __init__(
        self,
        *,
        interval: float = 2.0,
        sink: ProgressSink | None = None,
        sink_interval: float = 5.0,
    ) -> None:
        self.interval, self.sink, self.sink_interval = interval, sink, sink_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = Path()
        self._files: list[tuple[str, int]] = []
        self._t0 = 0.0

    @property
    def total(self) -> int:
        return sum(size for _, size in self._files)

    def start(self, target: Path, files: list[tuple[str, int]]) -> None:
        self._target, self._files = target, files
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fetch-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; one last log line and sink report with the final numbers."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        done = self.bytes_done()
        seconds = max(time.monotonic() - self._t0, 1e-6)
        rate = done / seconds
        log.info(
            "weights progress", bytes_done=done, bytes_total=self.total,
            bytes_per_second=round(rate), percent=_percent(done, self.total),
            seconds=round(seconds, 1), final=True,
        )  # fmt: skip
        self._report(done, rate, final=True)

    def bytes_done(self) -> int:
        """Finished files at their size plus the client's partial files."""
        done = 0
        for path, size in self._files:
            with contextlib.suppress(OSError):
                done += min((self._target / path).stat().st_size, size)
        partial = self._target / ".cache" / "huggingface" / "download"
        if partial.is_dir():
            for p in partial.rglob("*.incomplete"):
                with contextlib.suppress(OSError):
                    done += p.stat().st_size
        return min(done, self.total)

    def _run(self) -> None:
        last_t, last_done = self._t0, self.bytes_done()
        last_sink = self._t0
        while not self._stop.wait(self.interval):
            now, done = time.monotonic(), self.bytes_done()
            rate = (done - last_done) / max(now - last_t, 1e-6)
            log.info(
                "weights progress", bytes_done=done, bytes_total=self.total,
                bytes_per_second=round(max(rate, 0)), percent=_percent(done, self.total),
            )  # fmt: skip
            if now - last_sink >= self.sink_interval:
                self._report(done, max(rate, 0), final=False)
                last_sink = now
            last_t, last_done = now, done

    def _report(self, done: int, rate: float, *, final: bool) -> None:
        if self.sink is None:
            return
        try:
            self.sink.report(done, self.total, rate, final=final)
        except Exception as e:  # reporting never fails the fetch
            log.warning("progress report failed", error=str(e))


def _percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0
