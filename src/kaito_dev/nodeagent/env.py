"""A container's environment for a local process.

The base is what the images set (``PYTHONPATH`` at the project's image sources) plus what
CPU-only, offline runs need (``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``, ...). On top
come the container's ``envFrom`` and ``env``: plain ``value`` entries (``$(VAR)``
references expanded, as kubelet does), ``valueFrom`` ``configMapKeyRef``/``secretKeyRef``
read from the API, and the ``fieldRef``s ``metadata.name``/``metadata.namespace``/
``metadata.uid``/``spec.nodeName``/``status.podIP``/``status.hostIP``. Anything else is
skipped with a log line.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping

import structlog

from kaito.runtime.meta import Obj
from kaito_dev.nodeagent.status import HOST_IP
from kaito_dev.nodeagent.volumes import Fetch

log = structlog.get_logger("kaito_dev.nodeagent")


CPU_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def base_env(pythonpath: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
    env.update(CPU_ENV)
    env["PYTHONPATH"] = pythonpath
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _field(pod: Obj, path: str, pod_ip: str) -> str | None:
    meta = pod["metadata"]
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.hostIP": HOST_IP,
    }
    value = values.get(path)
    return None if value is None else str(value)


def _decode(kind: str, value: str) -> str:
    return base64.b64decode(value).decode(errors="replace") if kind == "Secret" else value


async def container_env(
    pod: Obj,
    container: Obj,
    *,
    base: Mapping[str, str],
    pod_ip: str,
    fetch: Fetch,
    translate_path: Callable[[str], str] = lambda v: v,
) -> dict[str, str]:
    """The process environment of ``container`` (see the module docstring).

    ``translate_path`` maps values that are container paths under a mount to local paths.
    """
    env = dict(base)
    cache: dict[tuple[str, str], Obj | None] = {}

    async def get(kind: str, name: str) -> Obj | None:
        if (kind, name) not in cache:
            cache[(kind, name)] = await fetch(kind, name)
        return cache[(kind, name)]

    own: dict[str, str] = {}
    for src in container.get("envFrom") or ():
        prefix = src.get("prefix", "")
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = src.get(key)
            if ref is None:
                continue
            obj = await get(kind, ref["name"])
            if obj is None:
                log.warning("envFrom source missing, skipped", kind=kind, name=ref["name"])
                continue
            for k, v in (obj.get("data") or {}).items():
                own[prefix + k] = _decode(kind, v)
    for entry in container.get("env") or ():
        name = entry["name"]
        if "value" in entry:
            own[name] = _REF.sub(
                lambda m: own.get(m.group(1), m.group(0)), str(entry.get("value") or "")
            )
            continue
        source = entry.get("valueFrom") or {}
        value: str | None = None
        if "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "ConfigMap" if "configMapKeyRef" in source else "Secret"
            ref = source.get("configMapKeyRef") or source.get("secretKeyRef") or {}
            obj = await get(kind, ref.get("name", ""))
            raw = (obj or {}).get("data", {}).get(ref.get("key", ""))
            if raw is None:
                log.warning("env source missing, skipped", env=name, kind=kind, ref=ref)
                continue
            value = _decode(kind, raw)
        elif "fieldRef" in source:
            value = _field(pod, source["fieldRef"].get("fieldPath", ""), pod_ip)
        if value is None:
            log.warning("env entry not supported by the node agent, skipped", env=name)
            continue
        own[name] = value
    env.update({k: translate_path(v) for k, v in own.items()})
    return env
