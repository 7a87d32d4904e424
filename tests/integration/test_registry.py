"""The local OCI registry (Debian's docker-registry): anonymous, and with basic auth on."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from kaito_dev.registry import LocalRegistry


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, Message]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def test_anonymous_registry_serves_the_distribution_api(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "reg") as reg:
        status, headers = _get(f"http://{reg.address}/v2/")
        assert status == 200
        assert headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
        status, _ = _get(f"http://{reg.address}/v2/_catalog")
        assert status == 200
    assert reg.process is None


def test_registry_with_users_challenges_and_checks_the_password(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "reg", users={"kaito": "s3cret"}) as reg:
        status, headers = _get(f"http://{reg.address}/v2/")
        assert status == 401
        assert headers.get("WWW-Authenticate", "").startswith("Basic realm=")
        assert _get(f"http://{reg.address}/v2/", ("kaito", "wrong"))[0] == 401
        assert _get(f"http://{reg.address}/v2/", ("kaito", "s3cret"))[0] == 200
        config = json.loads(reg.docker_config_json())
        entry = config["auths"][reg.address]
        assert base64.b64decode(entry["auth"]).decode() == "kaito:s3cret"


def test_anonymous_registry_has_no_credentials_to_give(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "reg")
    with pytest.raises(ValueError, match="anonymous"):
        reg.docker_config_json()
