"""Serve the certificate that is on disk now, as controller-runtime's ``certwatcher``.

Certificates are rotated under running servers: cert-manager rewrites a Secret, the
kubelet swaps the mounted files. Restarting to pick them up drops connections and, for
a webhook with ``failurePolicy: Fail``, admission calls. So the watcher keeps the latest
certificate in its own `ssl.SSLContext` and swaps it in per handshake: the context the
listening socket gets has an SNI callback, which OpenSSL calls for every ClientHello
(with or without a server name), and which points the new connection at the latest
context. Connections already established keep the certificate they negotiated.

Changes are found by polling the two files' (mtime, size, inode) every ``poll_interval``
(default 10 s, controller-runtime's polling interval): the standard library has no
inotify, and a Secret volume update is a symlink swap, which ``stat`` through the path
sees. A pair that does not load (the certificate rewritten, the key not yet) keeps the
previous one serving and is tried again at the next poll.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import structlog

log = structlog.get_logger("kaito.runtime.certwatcher")

_Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stamp(*paths: Path) -> _Stamp:
    stats = [os.stat(p) for p in paths]
    a, b = ((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)
    return a, b


class CertWatcher:
    """A certificate/key pair on disk, reloaded when either file changes.

    Args:
        cert_file, key_file: PEM files; both are read at construction (a missing or
            broken pair raises there, as upstream's ``certwatcher.New``).
        poll_interval: seconds between checks in `watch`; default 10.
    """

    def __init__(
        self, cert_file: Path | str, key_file: Path | str, *, poll_interval: float = 10.0
    ) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.poll_interval = poll_interval
        self._stamp: _Stamp | None = None
        self._current = self._load()
        self._front = self._new_context()
        self._front.load_cert_chain(self.cert_file, self.key_file)
        self._front.sni_callback = self._select
        self.reloads = 0
        """How many times a changed pair was loaded (not counting the first load)."""

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context to serve with: every handshake gets the latest certificate."""
        return self._front

    def read_certificate(self) -> bool:
        """Load the pair if it changed since the last load; True when it did.

        Raises ``OSError``/``ssl.SSLError`` when the changed pair does not load; the
        previous certificate keeps serving.
        """
        if _stamp(self.cert_file, self.key_file) == self._stamp:
            return False
        self._current = self._load()
        self.reloads += 1
        log.info("certificate reloaded", cert=str(self.cert_file))
        return True

    async def watch(self) -> None:
        """Poll for changes until cancelled (the server that serves with it owns the task)."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.read_certificate()
            except (OSError, ssl.SSLError, ValueError) as e:
                log.warning("certificate reload failed", cert=str(self.cert_file), error=str(e))

    def _load(self) -> ssl.SSLContext:
        stamp = _stamp(self.cert_file, self.key_file)
        ctx = self._new_context()
        ctx.load_cert_chain(self.cert_file, self.key_file)
        self._stamp = stamp
        return ctx

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _select(
        self, conn: ssl.SSLSocket | ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        conn.context = self._current
