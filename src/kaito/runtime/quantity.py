"""Kubernetes resource quantities (``120Gi``, ``4``, ``500m``, ``1e3``) as exact numbers.

kubernetes-asyncio ships no quantity parser (the synchronous client's
``utils.quantity`` was not carried over), so this is resource.Quantity's grammar:
binary suffixes (Ki..Ei), decimal suffixes (n, u, m, k, M, G, T, P, E) and decimal
exponents. ``Decimal`` keeps ``500m`` and ``0.1`` exact, which floats would not.
"""

from __future__ import annotations

import decimal
import re

__all__ = ["GIB", "parse_quantity", "quantity_gib"]

GIB = 2**30

_SUFFIX: dict[str, int | decimal.Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": decimal.Decimal("1e-9"),
    "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[A-Za-z]*)$")


def parse_quantity(value: int | float | str) -> decimal.Decimal:
    """The number a quantity stands for (``"120Gi"`` -> 128849018880). Raises ValueError."""
    if isinstance(value, int | float):
        return decimal.Decimal(value)
    m = _QUANTITY.match(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = m.groups()
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return decimal.Decimal(number + suffix)
    if suffix not in _SUFFIX:
        raise ValueError(f"{value!r} is not a quantity: unknown suffix {suffix!r}")
    return decimal.Decimal(number) * decimal.Decimal(_SUFFIX[suffix])


def quantity_gib(value: int | float | str) -> float:
    """A memory quantity in GiB (``"16.5Gi"`` -> 16.5). Raises ValueError."""
    return float(parse_quantity(value) / GIB)
