"""The data downloader init container: fetch training data over http(s) into a directory.

    python -m kaito_tuning.download --output /mnt/data URL... [--max-bytes N] [--timeout S]

Only http and https URLs are accepted (no file://, ftp://, ...); a download larger than
`--max-bytes` (counted while streaming, not trusted from Content-Length) or slower than
`--timeout` seconds in total is removed and fails the container. Files are written under
a temporary name and renamed when complete, so a crash never leaves a partial file with
the final name.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import structlog

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


def download(url: str, output: Path, *, index: int, max_bytes: int, timeout: float) -> Path:
    """Fetch `url` into `output`; returns the file written."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(
            f"{url}: only http and https URLs are allowed, not {scheme or 'none'!r}"
        )
    output.mkdir(parents=True, exist_ok=True)
    target = output / _filename(url, index)
    partial = target.with_name(f".{target.name}.part")
    deadline = time.monotonic() + timeout
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, 60.0)) as response:
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
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    args = p.parse_args(argv)
    logs.configure(args.log_format)
    for index, url in enumerate(args.urls):
        try:
            download(url, args.output, index=index, max_bytes=args.max_bytes, timeout=args.timeout)
        except DownloadError as exc:
            log.error("download failed", url=url, error=str(exc))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
