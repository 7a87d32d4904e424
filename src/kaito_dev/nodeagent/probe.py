"""Readiness probes, as kubelet runs them, against the pod's loopback IP.

``httpGet`` (2xx/3xx is success) and ``tcpSocket`` probes are run every
``min(periodSeconds, 1)`` seconds, so a container is reported ready about a second after
it is; ``successThreshold``/``failureThreshold`` are honoured, ``initialDelaySeconds``
is not (an early failing probe is harmless). ``exec`` probes cannot run here: such a
container is ready once running. Liveness and startup probes are not run at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from kaito.runtime.meta import Obj
from kaito_dev.nodeagent.status import ContainerState


async def probe_readiness(
    spec: Obj, st: ContainerState, *, ip: str, changed: Callable[[], None], log: Any
) -> None:
    """Probe ``spec``'s readinessProbe until cancelled; flip ``st.ready`` and call
    ``changed`` on each transition."""
    probe = spec["readinessProbe"]
    period = min(float(probe.get("periodSeconds") or 10), 1.0)
    timeout = float(probe.get("timeoutSeconds") or 1)
    need_ok = int(probe.get("successThreshold") or 1)
    need_fail = int(probe.get("failureThreshold") or 3)
    ok_streak = fail_streak = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        while True:
            ok = await probe_once(probe, spec, ip, http)
            ok_streak, fail_streak = (ok_streak + 1, 0) if ok else (0, fail_streak + 1)
            if ok and ok_streak >= need_ok and not st.ready:
                st.ready = True
                log.info("container ready", container=spec["name"])
                changed()
            elif not ok and fail_streak >= need_fail and st.ready:
                st.ready = False
                log.info("container not ready", container=spec["name"])
                changed()
            await asyncio.sleep(period)


def probe_port(value: Any, spec: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in spec.get("ports") or ():
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"probe port {value!r} names no container port")


async def probe_once(probe: Obj, spec: Obj, ip: str, http: aiohttp.ClientSession) -> bool:
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = probe_port(get.get("port", 80), spec)
            url = f"http://{ip}:{port}{get.get('path') or '/'}"
            async with http.get(url) as resp:
                return 200 <= resp.status < 400
        if "tcpSocket" in probe:
            port = probe_port(probe["tcpSocket"].get("port"), spec)
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1.0)
            writer.close()
            return True
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return False
    return True  # exec probes cannot run here: ready when running
