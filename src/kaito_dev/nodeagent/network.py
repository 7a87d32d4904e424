"""Pod IPs: one loopback address per pod, so every pod can listen on its own port 5000.

Linux routes all of 127.0.0.0/8 to the loopback interface, so ``127.0.<a>.<b>`` addresses
need no set-up. The pool hands out 127.0.1.1 upwards, skipping addresses other pods in
the cluster already report (another node agent may be running) and addresses where a
container port is already taken on this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable

FIRST = ipaddress.IPv4Address("127.0.1.1")
LAST = ipaddress.IPv4Address("127.0.255.254")


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


class IPPool:
    def __init__(self, in_use_elsewhere: Callable[[], Iterable[str]] = tuple) -> None:
        self._in_use_elsewhere = in_use_elsewhere
        self._taken: dict[str, str] = {}  # ip -> owner (pod uid)
        self._next = int(FIRST)

    def allocate(self, owner: str, ports: Iterable[int] = ()) -> str:
        """A free address for ``owner`` (the same one again if it already holds one)."""
        for ip, who in self._taken.items():
            if who == owner:
                return ip
        elsewhere = set(self._in_use_elsewhere())
        ports = list(ports)
        span = int(LAST) - int(FIRST) + 1
        fallback: str | None = None
        for step in range(span):
            candidate = str(
                ipaddress.IPv4Address(int(FIRST) + (self._next - int(FIRST) + step) % span)
            )
            if candidate in self._taken or candidate in elsewhere or candidate.endswith(".0"):
                continue
            if fallback is None:
                fallback = candidate
            if all(_port_free(candidate, p) for p in ports):
                self._next = int(ipaddress.IPv4Address(candidate)) + 1
                self._taken[candidate] = owner
                return candidate
            if step > 256:
                break
        if fallback is None:
            raise RuntimeError("no loopback address left for pods")
        self._taken[fallback] = owner
        return fallback

    def release(self, owner: str) -> None:
        for ip in [ip for ip, who in self._taken.items() if who == owner]:
            with contextlib.suppress(KeyError):
                del self._taken[ip]

    def __len__(self) -> int:
        return len(self._taken)
