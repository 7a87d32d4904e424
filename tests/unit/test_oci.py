"""``kaito_contracts.oci``'s pure parts: references, docker configs, challenges, the layer.

The registry protocol itself is tested against the real registry
(``tests/integration/test_adapter_images.py``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from kaito_contracts.oci import (
    ImageRef,
    RegistryError,
    _challenge,
    build_adapter_image,
    extract_data,
    load_credentials,
)


def test_references_need_a_registry_host() -> None:
    assert ImageRef.parse("myacr.azurecr.io/adapters/a:0.1") == ImageRef(
        "myacr.azurecr.io", "adapters/a", "0.1"
    )
    assert ImageRef.parse("127.0.0.1:5000/a").tag == "latest"
    assert str(ImageRef.parse("localhost/a:1")) == "localhost/a:1"
    pinned = ImageRef.parse("reg.io/a@sha256:" + "0" * 64)
    assert pinned.reference == "sha256:" + "0" * 64
    for bad, words in [
        ("adapter:0.1", "names no registry host"),
        ("library/adapter", "names no registry host"),
        ("reg.io/Upper:1", "bad repository"),
        ("reg.io/a:b@d", "bad digest"),
        ("", "empty"),
    ]:
        with pytest.raises(RegistryError, match=words) as e:
            ImageRef.parse(bad)
        assert e.value.reason == "InvalidImageReference"


def test_credentials_are_found_by_registry_key_as_docker_normalises_it(tmp_path: Path) -> None:
    config = tmp_path / ".dockerconfigjson"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://myacr.azurecr.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},  # user:pa:ss
                    "other.io": {"username": "u", "password": "p"},
                    "token.io": {"identitytoken": "refresh"},
                }
            }
        )
    )
    acr = load_credentials(config, "myacr.azurecr.io", source="secret s")
    assert (acr.username, acr.password, acr.source) == ("user", "pa:ss", "secret s")
    assert load_credentials(config, "OTHER.io").password == "p"
    assert load_credentials(config, "token.io").identity_token == "refresh"
    assert not load_credentials(config, "elsewhere.io")
    assert not load_credentials(None, "other.io")


def test_unreadable_secrets_have_their_own_reasons(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as e:
        load_credentials(tmp_path / "missing", "a.io", source="secret s")
    assert e.value.reason == "SecretNotFound"
    (tmp_path / "bad").write_text('{"credsStore": "desktop"}')
    with pytest.raises(RegistryError, match="no 'auths'") as e:
        load_credentials(tmp_path / "bad", "a.io")
    assert e.value.reason == "InvalidSecret"


def test_challenges_are_parsed_as_the_distribution_spec_writes_them() -> None:
    assert _challenge(
        'Bearer realm="https://myacr.azurecr.io/oauth2/token",service="myacr.azurecr.io",'
        'scope="repository:a:pull,push"'
    ) == (
        "bearer",
        {
            "realm": "https://myacr.azurecr.io/oauth2/token",
            "service": "myacr.azurecr.io",
            "scope": "repository:a:pull,push",
        },
    )
    assert _challenge('Basic realm="kaito-dev"') == ("basic", {"realm": "kaito-dev"})


def test_the_layer_is_reproducible_and_holds_the_files_under_data(tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01" * 1000)
    one = build_adapter_image(src, tmp_path / "one", labels={"kaito.sh/preset": "p"})
    two = build_adapter_image(src, tmp_path / "two", labels={"kaito.sh/preset": "p"})
    assert (one.layer_digest, one.manifest_digest) == (two.layer_digest, two.manifest_digest)
    blob = one.layer.read_bytes()
    assert one.layer_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert one.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert tar.getnames() == ["data", "data/sub", "data/adapter_config.json", "data/sub/w.bin"]
        assert {m.mtime for m in tar.getmembers()} == {0}
    dest = tmp_path / "dest"
    assert extract_data(io.BytesIO(blob), dest) == 2
    assert (dest / "sub" / "w.bin").read_bytes() == b"\x00\x01" * 1000


def _layer(*members: tarfile.TarInfo) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    raw.seek(0)
    return raw


def test_a_layer_cannot_write_outside_the_destination(tmp_path: Path) -> None:
    escape = tarfile.TarInfo("data/../../etc/x")
    escape.size = 1
    with pytest.raises(RegistryError, match="leaves /data"):
        extract_data(_layer(escape), tmp_path / "d")
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(RegistryError, match="link or device"):
        extract_data(_layer(link), tmp_path / "d")
    outside = tarfile.TarInfo("etc/passwd")
    outside.size = 1
    assert extract_data(_layer(outside), tmp_path / "d") == 0  # only /data is the adapter


def test_symlinks_in_an_adapter_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "a" / "link").symlink_to("/etc/passwd")
    with pytest.raises(RegistryError, match="not a regular file") as e:
        build_adapter_image(tmp_path / "a", tmp_path / "w")
    assert e.value.reason == "InvalidAdapter"
