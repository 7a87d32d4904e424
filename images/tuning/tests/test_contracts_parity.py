"""The tuning job's side of the contracts shared with the operator's webhook.

The cases are ``tests/contracts/fixtures.json`` at the repository's root, the very
ones the webhook's tests judge (``tests/unit/workspace/test_contracts_parity.py``):
the training config loader and the downloader give each the webhook's verdict and
reason. For a URL the downloader has two checks, the URL before connecting and every
address it connects to; a literal address is judged the same by both (the address as
libc reads it, "127.1" included), and `download` itself refuses before any connection.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from kaito_tuning import download as downloader
from kaito_tuning.config import ConfigError, load_config

FIXTURES = json.loads(
    (Path(__file__).parents[3] / "tests" / "contracts" / "fixtures.json").read_text("utf-8")
)
URLS = [pytest.param(c, id=c["url"]) for c in FIXTURES["urls"]]


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c["name"]) for c in FIXTURES["trainingConfig"]]
)
def test_training_config_verdicts(case: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "training_config.yaml"
    path.write_text(case["text"])
    if case["valid"]:
        load_config(path)
    else:
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert case.get("reason", "") in str(raised.value)


def literal_address(url: str) -> str | None:
    """The address a URL's host is, when it is one (libc's reading, no DNS)."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return None
    return str(infos[0][4][0])


@pytest.mark.parametrize("case", URLS)
def test_url_verdicts(case: dict[str, Any], tmp_path: Path) -> None:
    refusal = downloader.url_refusal(case["url"])
    address = literal_address(case["url"])
    at_connect = downloader._refusal("host", address) if address else None
    if case["valid"]:
        assert refusal is None
        assert at_connect is None
        return
    assert case["reason"] in (refusal or ""), refusal
    if address is not None:
        assert case["reason"] in (at_connect or ""), at_connect
    with pytest.raises(downloader.DownloadError, match=re.escape(case["reason"])):
        downloader.download(case["url"], tmp_path, index=0, max_bytes=10, timeout=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", [u for u in URLS if "liftable" in u.values[0]])
def test_an_in_cluster_mirror_lifts_only_what_the_policy_marks_liftable(
    case: dict[str, Any],
) -> None:
    refusal = downloader.url_refusal(case["url"], allow_private=True)
    assert (refusal is None) == case["liftable"], refusal
    address = literal_address(case["url"])
    if address is not None:
        at_connect = downloader._refusal("host", address, allow_private=True)
        assert (at_connect is None) == case["liftable"], at_connect
