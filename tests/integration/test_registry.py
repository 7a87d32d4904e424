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


def test_an_authenticated_listener_on_the_hosts_address_shares_the_loopback_ones_images(
    tmp_path: Path,
) -> None:
    """The stack's registry for pods (`Stack.start_pod_registry`): pushed to over plain
    http with its credentials at a non-loopback address, read anonymously on loopback."""
    from kaito_contracts.oci import (
        Credentials,
        ImageRef,
        RegistryError,
        build_adapter_image,
        load_credentials,
        pull_adapter,
        push_image,
    )
    from kaito_dev.stack import pod_reachable_address

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    storage = tmp_path / "storage"
    host = pod_reachable_address()
    with (
        LocalRegistry(tmp_path / "loopback", storage=storage) as local,
        LocalRegistry(tmp_path / "pods", host=host, storage=storage, users={"k": "pw"}) as pods,
    ):
        assert pods.address.startswith(f"{host}:") and not host.startswith("127.")
        config = tmp_path / "config.json"
        config.write_text(pods.docker_config_json())
        ref = ImageRef.parse(f"{pods.address}/adapters/a:1")
        creds = load_credentials(config, ref.host, source="test")
        built = build_adapter_image(adapter, tmp_path / "work")
        with pytest.raises(RegistryError, match=r"RegistryUnreachable: .* https://"):
            push_image(built, ref, creds)  # not loopback: https unless told otherwise
        push_image(built, ref, creds, plain_http=True)
        assert _get(f"http://{pods.address}/v2/adapters/a/tags/list")[0] == 401
        status, _ = _get(f"http://{local.address}/v2/adapters/a/tags/list")
        assert status == 200
        out = tmp_path / "out"
        files = pull_adapter(
            ImageRef.parse(f"{local.address}/adapters/a:1"), out, Credentials(source="")
        )
        assert files == 2 and (out / "adapter_config.json").is_file()
