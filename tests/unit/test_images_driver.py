"""kaito_dev.images without building: names, the Debian mirror, the build's pip config,
and that every image it builds matches a Dockerfile's build arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kaito_dev import images
from kaito_dev.controlplane import REPO_ROOT, ControlPlaneError


def test_images_are_named_as_the_workloads_name_them() -> None:
    assert images.project_version() == "0.1.0"
    assert (
        images.image_name("127.0.0.1:5000", "inference", "0.1.0")
        == "127.0.0.1:5000/kaito-python/inference:0.1.0"
    )
    assert (
        images.image_name("myacr.azurecr.io/", "controller", "0.1.0")
        == "myacr.azurecr.io/kaito-python/controller:0.1.0"
    )
    assert [s.name for s in images.IMAGES if s.shipped] == ["controller", "inference", "tuning"]
    assert [s.name for s in images.IMAGES if not s.shipped] == ["curl"]


def test_only_loopback_registries_are_pushed_without_tls() -> None:
    assert images.is_loopback("127.0.0.1:5000")
    assert images.is_loopback("localhost:5000")
    assert not images.is_loopback("myacr.azurecr.io")
    assert not images.is_loopback("registry.example:5000/team")


def test_every_spec_matches_its_dockerfile() -> None:
    """The base image argument, the other build arguments and the named contexts a spec
    passes are ones its Dockerfile declares (buildah would only warn otherwise)."""
    for spec in images.IMAGES:
        text = (REPO_ROOT / spec.dockerfile).read_text()
        declared = set(re.findall(r"^ARG (\w+)", text, re.M))
        assert {spec.base_arg, "PIP_CONFIG_FILE", *spec.build_args} <= declared, spec.name
        for context in spec.contexts:
            assert f"COPY --from={context} " in text, spec.name
            assert (REPO_ROOT / spec.contexts[context]).is_dir()
        assert (REPO_ROOT / spec.context).is_dir()


def test_the_mirror_is_read_from_apts_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert images.debian_mirror(sources) == "http://mirror.invalid/debian"


def test_no_bookworm_source_is_a_clear_error(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.invalid/debian\nSuites: trixie\n")
    legacy = tmp_path / "sources.list"
    with pytest.raises(ControlPlaneError, match="no Debian bookworm archive"):
        images.debian_mirror(sources, legacy)
    legacy.write_text("# old style\ndeb http://mirror.invalid/old bookworm main\n")
    assert images.debian_mirror(sources, legacy) == "http://mirror.invalid/old"


def test_the_build_gets_the_machines_pip_options_with_local_folders_mounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(
        images,
        "machine_pip_config",
        lambda: {"find-links": str(wheels), "cert": str(ca), "default-timeout": "180"},
    )
    builder = images.Builder(tmp_path / "cache")
    volumes, conf = builder.pip_mounts()
    assert conf == "/run/kaito-build/pip.conf"
    text = (tmp_path / "cache" / "pip" / "pip.conf").read_text()
    assert "cert = /run/kaito-build/ca.crt" in text  # a copy inside the mounted folder
    assert f"find-links = {wheels}" in text
    assert (tmp_path / "cache" / "pip" / "ca.crt").read_text() == ca.read_text()
    top = "/" + "/".join(wheels.parts[1:3])
    assert f"--volume={top}:{top}:ro" in volumes
    assert f"--volume={tmp_path / 'cache' / 'pip'}:/run/kaito-build:ro" in volumes


def test_an_unknown_image_name_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="unknown image gpu-operator"):
        images.build_all(
            "127.0.0.1:1", ["gpu-operator"], builder=images.Builder(Path("/nonexistent"))
        )
