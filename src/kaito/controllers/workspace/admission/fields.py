"""What every admission rule returns, and the small phrasing helpers they share.

Every error names the field it is about and, where numbers are compared, the numbers
on both sides, because a user reading ``kubectl apply``'s output has nothing else to go
on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, order=True)
class FieldError:
    """One rejected field: ``resource.instanceType: instance type X has ...``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def one_of(choices: Sequence[tuple[str, bool]]) -> tuple[int, str]:
    """How many of the named choices are present, and their names ("none" if none)."""
    given = [name for name, present in choices if present]
    return len(given), ", ".join(given) if given else "none"
