"""Label selectors: the string syntax of ``kubectl -l`` and metav1.LabelSelector.

Needed on the client side because the cache answers ``list(label_selector=...)``
without a round trip, with the same meaning the apiserver gives the same string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REQ = re.compile(
    r"""^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*
    (?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        # notin matches objects without the key, as upstream does
        return labels.get(self.key) not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_selector(selector: str) -> Selector:
    """Parse ``a=b,c!=d,e in (f,g),h,!i``; raise ValueError naming the bad requirement."""
    reqs: list[Requirement] = []
    for part in _split(selector):
        m = _REQ.match(part)
        if not m:
            raise ValueError(f"invalid label selector requirement {part.strip()!r}")
        key, op, val, neg = m["key"], (m["op"] or "").strip(), m["val"], m["neg"]
        if neg:
            if op:
                raise ValueError(f"invalid label selector requirement {part.strip()!r}")
            reqs.append(Requirement(key, "!"))
        elif not op:
            reqs.append(Requirement(key, "exists"))
        elif op in ("=", "=="):
            reqs.append(Requirement(key, "in", frozenset([val or ""])))
        elif op == "!=":
            reqs.append(Requirement(key, "notin", frozenset([val or ""])))
        else:
            if not (val and val.startswith("(")):
                raise ValueError(f"{op} needs a parenthesised value list in {part.strip()!r}")
            values = frozenset(v.strip() for v in val[1:-1].split(",") if v.strip())
            reqs.append(Requirement(key, op, values))
    return Selector(tuple(reqs))


def selector_from_label_selector(spec: Mapping[str, Any] | None) -> Selector:
    """A metav1.LabelSelector (``matchLabels`` + ``matchExpressions``) as a `Selector`."""
    if not spec:
        return Selector(())
    reqs = [
        Requirement(k, "in", frozenset([v])) for k, v in (spec.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in spec.get("matchExpressions") or ():
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise ValueError(f"unknown label selector operator {expr.get('operator')!r}")
        reqs.append(Requirement(expr["key"], op, frozenset(expr.get("values") or ())))
    return Selector(tuple(reqs))
