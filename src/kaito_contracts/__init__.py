"""The contracts the operator shares with the inference and tuning images, as data.

``contracts.json`` beside this module is the one source of truth for what two programs
must agree on: the grammar of ``inference_config.yaml`` and of ``training_config.yaml``
(JSON Schema 2020-12) and which tuning input URLs may be downloaded. The admission
webhook judges a user's ConfigMaps and URLs with it; the inference server and the tuning
job judge the same files, and the downloader the same URLs, with it at run time. So a
config the webhook admits is one the image accepts and the other way round, and the
downloader refuses what the webhook refuses (it once admitted Azure's WireServer,
168.63.129.16, which the webhook blocked). Parity tests feed one set of fixtures
(``tests/contracts/fixtures.json``) to every side.

This package is its own top-level package, not part of ``kaito``, because the images
are separate programs that must not import the operator (import-linter's independence
contract); it imports nothing from ``kaito``, ``kaito_inference`` or ``kaito_tuning``.
How each program gets it, always with ``contracts.json`` inside (read with
``importlib.resources``, so no path is guessed):

- the operator: the wheel carries it beside ``kaito`` (``pyproject.toml``), and so does
  the controller image, which installs the wheel;
- the inference and tuning images: their Dockerfiles COPY this folder to
  ``/workspace/kaito_contracts`` from a named build context
  (``docker build --build-context contracts=src/kaito_contracts images/inference``);
- development and tests: ``src/`` is on the path (the operator's editable install, the
  images' ``pytest.ini``).

The file's ``x-message`` annotations word the errors, so every side gives the same
reason. The webhook does not resolve host names (it stays fast and deterministic, and
DNS can change before the download); the downloader checks every address it actually
connects to with `address_reason`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import socket
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import yaml

__all__ = [
    "INFERENCE_CONFIG",
    "TRAINING_CONFIG",
    "UrlPolicy",
    "address_reason",
    "inference_config_problem",
    "load_contracts",
    "schema_problem",
    "training_config_problem",
    "url_policy",
    "url_problem",
]

INFERENCE_CONFIG = "inferenceConfig"
"""The key of ``inference_config.yaml``'s schema in ``contracts.json``."""
TRAINING_CONFIG = "trainingConfig"
"""The key of ``training_config.yaml``'s schema in ``contracts.json``."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def load_contracts() -> dict[str, Any]:
    """The parsed ``contracts.json`` (read once; each schema is checked when first used)."""
    text = resources.files(__name__).joinpath("contracts.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


# -- config files ---------------------------------------------------------------------


@functools.cache
def _validator(name: str) -> Any:
    schema = load_contracts()[name]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problem(name: str, document: Any) -> str | None:
    """The first reason ``document`` (a parsed YAML file) breaks schema ``name``
    (`INFERENCE_CONFIG` or `TRAINING_CONFIG`), worded by the failing subschema's
    ``x-message``, or None when it conforms.

    "First" is the shallowest error, then the file's order, so a wrong section is
    reported before the keys inside it and the answer is the same on every side.
    """
    errors = list(_validator(name).iter_errors(document))
    if not errors:
        return None
    return _word(min(errors, key=lambda e: len(e.absolute_path)))


def _word(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    template = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if not template:
        return f"{dotted or 'the file'}: {error.message}"
    return str(template).format(
        path=dotted,
        name=str(path[-1]) if path else "",
        type=type(error.instance).__name__,
        value=repr(error.instance),
    )


def _text_problem(name: str, text: str) -> str | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return f"does not parse as YAML: {' '.join(str(e).split())}"
    return schema_problem(name, {} if data is None else data)


def inference_config_problem(text: str) -> str | None:
    """What the inference server would refuse in this ``inference_config.yaml``, or None.

    An empty file is an empty mapping (no overrides)."""
    return _text_problem(INFERENCE_CONFIG, text)


def training_config_problem(text: str) -> str | None:
    """What the tuning job would refuse in this ``training_config.yaml``, or None.

    An empty file is an empty mapping (all defaults)."""
    return _text_problem(TRAINING_CONFIG, text)


# -- URL policy -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Blocked:
    reason: str
    liftable: bool


@dataclass(frozen=True)
class UrlPolicy:
    """``contracts.json``'s ``urlPolicy``, parsed: the first matching entry gives the
    reason; ``allow_private`` (the downloader's in-cluster mirror switch) skips the
    entries marked liftable."""

    schemes: frozenset[str]
    hostnames: dict[str, _Blocked]
    suffixes: tuple[tuple[str, _Blocked], ...]
    networks: tuple[tuple[IPNetwork, _Blocked], ...]

    def hostname_reason(self, host: str, *, allow_private: bool = False) -> str | None:
        """Why ``host`` (a name, any case, trailing dot or not) is refused, or None."""
        host = host.rstrip(".").lower()
        hits = [self.hostnames[host]] if host in self.hostnames else []
        hits += [b for suffix, b in self.suffixes if host.endswith(suffix)]
        return next((b.reason for b in hits if not (allow_private and b.liftable)), None)

    def address_reason(self, ip: IPAddress, *, allow_private: bool = False) -> str | None:
        """Why connecting to ``ip`` is refused, or None. An IPv4-mapped IPv6 address is
        judged as the IPv4 address it carries (a dual-stack socket reaches that one)."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return next(
            (
                b.reason
                for network, b in self.networks
                if ip in network and not (allow_private and b.liftable)
            ),
            None,
        )


@functools.cache
def url_policy() -> UrlPolicy:
    """The URL policy of ``contracts.json``."""
    raw = load_contracts()["urlPolicy"]

    def blocked(entry: dict[str, Any]) -> _Blocked:
        return _Blocked(reason=entry["reason"], liftable=bool(entry["liftable"]))

    names = raw["blockedHostnames"]
    return UrlPolicy(
        schemes=frozenset(raw["schemes"]),
        hostnames={h["name"]: blocked(h) for h in names if "name" in h},
        suffixes=tuple((h["suffix"], blocked(h)) for h in names if "suffix" in h),
        networks=tuple(
            (ipaddress.ip_network(n["cidr"]), blocked(n)) for n in raw["blockedNetworks"]
        ),
    )


def address_reason(address: str | IPAddress, *, allow_private: bool = False) -> str | None:
    """Why connecting to ``address`` is refused by the URL policy, or None.

    ``address`` may carry an IPv6 zone (``fe80::1%eth0``), as ``getaddrinfo`` returns it."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    return url_policy().address_reason(address, allow_private=allow_private)


def url_problem(url: str, *, allow_private: bool = False) -> str | None:
    """Why ``url`` must not be downloaded (not http(s); a loopback, private, link-local,
    metadata or otherwise non-public address, or a name for one), or None when it may be.

    Names are not resolved: a name that is not on the policy's list passes here, and
    the downloader checks the addresses it resolves to when it connects.
    """
    policy = url_policy()
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return f"{url} is not a valid URL: {e}"
    if parts.scheme not in policy.schemes:
        return f"{url} is not an http(s) URL"
    if not host:
        return f"{url} has no host"
    host = host.rstrip(".").lower()
    reason = policy.hostname_reason(host, allow_private=allow_private)
    if reason:
        return f"{url} points at {host}, {reason}; use a public URL"
    ip = _literal_ip(host)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    reason = policy.address_reason(ip, allow_private=allow_private)
    if reason:
        return f"{url} points at {ip}, {reason}; use a public URL"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, including the forms libc accepts ("127.1", "0x7f.1",
    "2130706433", "0177.0.0.1"): a downloader would connect to those too."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and not re.fullmatch(r"[a-f.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None
