"""The data downloader init container: fetch training data over http(s) into a directory.

    python -m kaito_tuning.download --output /mnt/data URL... [--max-bytes N] [--timeout S]

What may be downloaded is the URL policy in ``kaito_contracts``, the one the operator's
webhook admits ``tuning.input.urls`` with: only http and https URLs (no file://, ftp://,
...), and only public addresses. The URL itself is checked first (scheme, names such as
``localhost`` and ``metadata.google.internal``, literal addresses); then every
connection, redirects included, resolves the host itself and refuses loopback, private,
link-local, cloud metadata (169.254.169.254, Azure's 168.63.129.16), shared, reserved
and multicast addresses, and connects to the very address it checked, so a name that
the webhook saw as public cannot be re-pointed at an internal service between admission
and download. ``--allow-private-addresses`` lifts the checks for an in-cluster mirror,
except for metadata services and the API server, which no mirror is. A download larger than
`--max-bytes` (counted while streaming, not trusted from Content-Length) or slower than
`--timeout` seconds in total is removed and fails the container. Files are written under
a temporary name and renamed when complete, so a crash never leaves a partial file with
the final name.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from kaito_contracts import address_reason, url_problem

from . import logs

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024**3
DEFAULT_TIMEOUT_S = 3600.0
_CHUNK = 1 << 20


class DownloadError(Exception):
    """A URL was refused or its download failed."""


def _filename(url: str, index: int) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return name if name and name not in (".", "..") else f"data-{index}"


def _refusal(host: str, address: str, *, allow_private: bool = False) -> str | None:
    """Why connecting to ``address`` (``host`` resolved) is refused, or None."""
    reason = address_reason(address, allow_private=allow_private)
    if reason is None:
        return None
    shown = host if host == address else f"{host} ({address})"
    return f"{shown} is {reason}; only public addresses may be downloaded from"


def url_refusal(url: str, *, allow_private: bool = False) -> str | None:
    """Why ``url`` is refused before any connection (the webhook's verdict), or None."""
    return url_problem(url, allow_private=allow_private)


def _guarded_connector(allow_private: bool) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` that checks each resolved address before using it."""

    def create_connection(
        address: tuple[str, int],
        timeout: float | object = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: tuple[str, int] | None = None,
        **_: object,
    ) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_rest, sockaddr in infos:
            reason = _refusal(host, str(sockaddr[0]), allow_private=allow_private)
            if reason is not None:
                raise DownloadError(reason)
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)  # type: ignore[arg-type]
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"cannot resolve {host}")

    return create_connection


def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    """urllib with every connection (redirects too) going through the address check."""
    connector = _guarded_connector(allow_private)
    tls = ssl.create_default_context()

    class GuardedHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self._create_connection = connector
            super().connect()

    class GuardedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:  # HTTPSConnection.connect wraps HTTPConnection.connect
            self._create_connection = connector
            super().connect()

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(GuardedHTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(GuardedHTTPSConnection, req, context=tls)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def download(
    url: str,
    output: Path,
    *,
    index: int,
    max_bytes: int,
    timeout: float,
    allow_private: bool = False,
) -> Path:
    """Fetch `url` into `output`; returns the file written."""
    refusal = url_refusal(url, allow_private=allow_private)
    if refusal is not None:
        raise DownloadError(refusal)
    output.mkdir(parents=True, exist_ok=True)
    target = output / _filename(url, index)
    partial = target.with_name(f".{target.name}.part")
    deadline = time.monotonic() + timeout
    received = 0
    try:
        opener = _opener(allow_private)
        with opener.open(url, timeout=min(timeout, 60.0)) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError(f"{url}: {declared} bytes exceeds the limit of {max_bytes}")
            with partial.open("wb") as f:
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"{url}: more than the limit of {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise DownloadError(f"{url}: not complete after {timeout}s")
                    f.write(chunk)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {exc}") from exc
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(target)
    log.info("downloaded", url=url, path=str(target), bytes=received)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kaito_tuning.download", description=__doc__.split("\n")[0]
    )
    p.add_argument("urls", nargs="+", help="http(s) URLs to fetch")
    p.add_argument("--output", type=Path, required=True, help="directory to write into")
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="per file (default 10 GiB)"
    )
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per file, seconds (default 3600)"
    )
    p.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="also download from loopback/private/link-local addresses (an in-cluster "
        "mirror); metadata services stay refused",
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    args = p.parse_args(argv)
    logs.configure(args.log_format)
    for index, url in enumerate(args.urls):
        try:
            download(
                url,
                args.output,
                index=index,
                max_bytes=args.max_bytes,
                timeout=args.timeout,
                allow_private=args.allow_private_addresses,
            )
        except DownloadError as exc:
            log.error("download failed", url=url, error=str(exc))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
