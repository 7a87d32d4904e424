"""Incremental detokenization and stop strings, for engines that stream token ids.

vLLM does both itself; the transformers engine uses this. The algorithm is the usual
two-offset one (as in vLLM and TGI): decode a short window of recent tokens twice and
emit the difference, holding text back while it ends in an incomplete UTF-8 sequence.
While stop strings are set, the last `len(longest stop) - 1` characters are held back so
that streamed text never contains the start of a stop string that later completes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDecoder:
    """Feed token ids, get new text; reports a stop string when one completes."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._stop = tuple(stop)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._sent = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _append(self, ids: Sequence[int]) -> None:
        self._ids.extend(ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            old_len = len(self.text)
            self.text += window[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._check_stop(old_len)

    def _check_stop(self, old_len: int) -> None:
        for stop in self._stop:
            at = self.text.find(stop, max(0, old_len - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
                return

    def push(self, ids: Sequence[int]) -> str:
        """New text made available by `ids` (may be empty)."""
        if self.stopped:
            return ""
        self._append(ids)
        if self.stopped:
            return self._take(len(self.text))
        return self._take(len(self.text) - self._holdback)

    def finish(self) -> str:
        """Everything not yet returned, including text held back for stop strings."""
        if not self.stopped:
            old_len = len(self.text)
            window = self._decode(self._ids[self._prefix_offset :])
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            if len(window) > len(prefix):
                self.text += window[len(prefix) :]
                self._check_stop(old_len)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        chunk = self.text[self._sent : end]
        self._sent = end
        return chunk
