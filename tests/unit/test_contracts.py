"""``kaito_contracts``: the data file is well formed and the policy is strict enough.

The verdicts themselves are the parity fixtures' job
(``tests/unit/workspace/test_contracts_parity.py`` and the images' twins).
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import jsonschema
import pytest

from kaito_contracts import (
    INFERENCE_CONFIG,
    TRAINING_CONFIG,
    address_reason,
    load_contracts,
    url_policy,
    url_problem,
)


def subschemas(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node, *(s for v in node.values() for s in subschemas(v))]
    if isinstance(node, list):
        return [s for v in node for s in subschemas(v)]
    return []


@pytest.mark.parametrize("name", [INFERENCE_CONFIG, TRAINING_CONFIG])
def test_the_config_schemas_are_draft_2020_12_and_every_message_formats(name: str) -> None:
    schema = load_contracts()[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    for sub in subschemas(schema):
        if "x-message" in sub:
            sub["x-message"].format(path="a.b", name="b", type="list", value="[1]")


def test_every_blocked_entry_parses_and_says_why() -> None:
    raw = load_contracts()["urlPolicy"]
    for entry in raw["blockedNetworks"]:
        ipaddress.ip_network(entry["cidr"])  # strict: no host bits set
        assert entry["reason"] and isinstance(entry["liftable"], bool), entry
    for entry in raw["blockedHostnames"]:
        assert ("name" in entry) != ("suffix" in entry), entry
        assert entry["reason"] and isinstance(entry["liftable"], bool), entry
    assert url_policy().schemes == {"http", "https"}


def test_metadata_services_stay_blocked_for_an_in_cluster_mirror() -> None:
    for address in ("169.254.169.254", "168.63.129.16", "fd00:ec2::254"):
        assert address_reason(address, allow_private=True) == "a cloud metadata address"
    assert url_problem("http://metadata.google.internal/", allow_private=True)
    assert address_reason("10.1.2.3", allow_private=True) is None
    assert url_problem("http://localhost:8080/d", allow_private=True) is None


def test_every_address_the_standard_library_calls_non_public_is_blocked() -> None:
    """The policy lists its networks as data rather than asking ``ipaddress.is_global``
    (whose tables change between Python versions); it must still block at least what
    the standard library of this Python calls non-public, multicast included."""
    rng = random.Random(11)
    samples: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for first in range(256):  # both ends of every /16 and a random address in it
        for second in range(256):
            base = (first << 24) | (second << 16)
            samples += [
                ipaddress.IPv4Address(base),
                ipaddress.IPv4Address(base | 0xFFFF),
                ipaddress.IPv4Address(base | rng.randrange(1 << 16)),
            ]
    for text in ("192.0.2.1", "198.51.100.7", "203.0.113.9", "192.0.0.171", "198.19.0.1"):
        samples.append(ipaddress.IPv4Address(text))
    for text in ("::", "::1", "fe80::1", "fc00::1", "fd12::1", "2001:db8::1", "100::1", "ff02::1"):
        samples.append(ipaddress.IPv6Address(text))
    for ip in samples:
        if not ip.is_global or ip.is_multicast:
            assert address_reason(ip) is not None, ip
