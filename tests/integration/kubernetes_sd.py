"""Prometheus' Kubernetes pod discovery, reproduced for the pods KAITO runs.

Debian's Prometheus is built without Kubernetes service discovery (its promtool rejects
``kubernetes_sd_configs``), and there is no kubelet here to run pods anyway. So the
monitoring tests describe the pods that *would* exist (the controllers' pod templates
from deploy/, the inference and tuning pods the workspace controller renders) as the
target groups ``role: pod`` discovery yields for them, with the same
``__meta_kubernetes_*`` labels, and hand them to Prometheus as static configs: its own
relabeling then decides which targets survive and with which labels.

- `kaito_pods`: the pods, as ``(namespace, name, pod template)``.
- `pod_targets`: one pod's discovered targets (one per container port).
- `with_static_discovery`: a scrape config whose ``kubernetes_sd_configs`` (role pod)
  are replaced by static target groups of those pods, honouring ``namespaces.names``.
- `relabel`: Prometheus' keep/drop/replace relabeling in Python, for unit tests.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = ROOT / "examples"
MONITORING = DEPLOY / "monitoring"

Obj = dict[str, Any]
Labels = dict[str, str]


@dataclass(frozen=True)
class Pod:
    """A pod as discovery sees it: where it runs, its template, its (made-up) IP."""

    namespace: str
    name: str
    template: Obj
    ip: str


def load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def deploy_docs() -> list[Obj]:
    """Every object of the default install (deploy/, monitoring/ excluded)."""
    docs: list[Obj] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        rel = path.relative_to(DEPLOY)
        if rel.parts[0] in ("monitoring", "crds") or path.name == "kustomization.yaml":
            continue
        docs += load_docs(path)
    return docs


def deployments() -> list[Obj]:
    return [d for d in deploy_docs() if d["kind"] == "Deployment"]


def _workspace(body: Obj, namespace: str) -> Any:
    from kaito.api.workspace import Workspace

    meta = {**body["metadata"], "namespace": namespace, "uid": "u-1"}
    return Workspace.model_validate({**body, "metadata": meta})


def inference_template(namespace: str = "default") -> tuple[str, Obj]:
    """The quick start Workspace's inference pod template: (workspace name, template)."""
    from kaito.controllers.workspace.plan import resolve_plan
    from kaito.controllers.workspace.workload.inference import inference_objects
    from kaito.presets.catalog import load_catalog

    ws = _workspace(
        yaml.safe_load((EXAMPLES / "kaito_workspace_phi_3.yaml").read_text()), namespace
    )
    for _, body in inference_objects(ws, resolve_plan(ws, load_catalog()), revision="0" * 64):
        if body["kind"] in ("Deployment", "StatefulSet"):
            return ws.metadata.name, dict(body["spec"]["template"])
    raise AssertionError("the quick start renders no workload")


def tuning_template(namespace: str = "default") -> tuple[str, Obj]:
    """A tuning Workspace's Job pod template: (workspace name, template)."""
    from kaito.controllers.workspace.plan import resolve_plan
    from kaito.controllers.workspace.tuning.job import tuning_job
    from kaito.presets.catalog import load_catalog

    ws = _workspace(
        {
            "metadata": {"name": "tune-phi-3"},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"apps": "tune"}},
            },
            "tuning": {
                "preset": {"name": "phi-3-mini-4k-instruct"},
                "method": "qlora",
                "input": {"urls": ["https://example.com/data.jsonl"]},
                "output": {"image": "registry.example/out:0.0.1", "imagePushSecret": "push"},
            },
        },
        namespace,
    )
    _, job = tuning_job(ws, resolve_plan(ws, load_catalog()), revision="0" * 64)
    return ws.metadata.name, dict(job["spec"]["template"])


def kaito_pods() -> list[Pod]:
    """One pod per controller Deployment (in its namespace), one inference pod and one
    tuning pod (in the Workspace namespace ``default``), each with its own IP."""
    pods = []
    for i, dep in enumerate(deployments(), start=1):
        meta = dep["metadata"]
        pods.append(
            Pod(meta["namespace"], f"{meta['name']}-0", dep["spec"]["template"], f"10.0.0.{i}")
        )
    name, template = inference_template()
    pods.append(Pod("default", f"{name}-0", template, "10.0.1.1"))
    name, template = tuning_template()
    pods.append(Pod("default", f"{name}-0", template, "10.0.1.2"))
    return pods


_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _sanitize(name: str) -> str:
    return _INVALID.sub("_", name)


def pod_targets(pod: Pod) -> list[Labels]:
    """The targets ``role: pod`` discovery yields for a Running, Ready pod: one per
    declared container port (a container without ports yields one without a port)."""
    meta = pod.template.get("metadata") or {}
    common: Labels = {
        "__meta_kubernetes_namespace": pod.namespace,
        "__meta_kubernetes_pod_name": pod.name,
        "__meta_kubernetes_pod_ip": pod.ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for key, value in (meta.get("labels") or {}).items():
        common[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
        common[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        common[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = str(value)
        common[f"__meta_kubernetes_pod_annotationpresent_{_sanitize(key)}"] = "true"
    targets = []
    spec = pod.template["spec"]
    for init, containers in ((False, spec["containers"]), (True, spec.get("initContainers") or [])):
        for c in containers:
            base = {
                **common,
                "__meta_kubernetes_pod_container_name": c["name"],
                "__meta_kubernetes_pod_container_image": c.get("image", ""),
                "__meta_kubernetes_pod_container_init": str(init).lower(),
            }
            ports = c.get("ports") or []
            if not ports:
                targets.append({**base, "__address__": pod.ip})
            for port in ports:
                targets.append(
                    {
                        **base,
                        "__address__": f"{pod.ip}:{port['containerPort']}",
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                        "__meta_kubernetes_pod_container_port_protocol": port.get(
                            "protocol", "TCP"
                        ),
                    }
                )
    return targets


def _discovered(sd: Obj, pods: Iterable[Pod]) -> list[Labels]:
    unsupported = set(sd) - {"role", "namespaces"}
    assert sd.get("role") == "pod" and not unsupported, f"only role pod is emulated: {sd}"
    names = (sd.get("namespaces") or {}).get("names")
    return [t for p in pods if not names or p.namespace in names for t in pod_targets(p)]


def with_static_discovery(config: Obj, pods: Iterable[Pod]) -> Obj:
    """``config`` with each job's Kubernetes pod discovery replaced by static target
    groups of ``pods`` (one group per target, its labels the discovered meta labels)."""
    pods = list(pods)
    out = copy.deepcopy(config)
    for job in out["scrape_configs"]:
        groups = []
        for sd in job.pop("kubernetes_sd_configs", []):
            for labels in _discovered(sd, pods):
                address = labels.pop("__address__")
                groups.append({"targets": [address], "labels": labels})
        if groups:
            job.setdefault("static_configs", []).extend(groups)
    return out


def relabel(labels: Mapping[str, str], rules: Iterable[Obj]) -> Labels | None:
    """Prometheus' ``keep``, ``drop`` and ``replace`` relabeling (anchored regexes); the
    labels after the rules, or None when a rule drops the target."""
    out = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(
            out.get(s, "") for s in rule.get("source_labels", [])
        )
        match = re.fullmatch(str(rule.get("regex", "(.*)")), value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            value = match.expand(str(rule.get("replacement", "$1")).replace("$", "\\"))
            if value:
                out[rule["target_label"]] = value
            else:  # Prometheus deletes a label set to the empty string
                out.pop(rule["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            raise AssertionError(f"relabel action {action} is not emulated")
    return out


def scrape_targets(config: Obj, pods: Iterable[Pod]) -> dict[str, list[Labels]]:
    """Per job, the targets that survive relabeling, with their visible labels (those not
    starting with ``__``, plus ``job`` and ``instance`` as Prometheus sets them)."""
    pods = list(pods)
    result: dict[str, list[Labels]] = {}
    for job in config["scrape_configs"]:
        kept = []
        for sd in job.get("kubernetes_sd_configs", []):
            for discovered in _discovered(sd, pods):
                labels = relabel(
                    {"job": job["job_name"], **discovered}, job.get("relabel_configs", [])
                )
                if labels is None:
                    continue
                labels.setdefault("instance", labels["__address__"])
                kept.append({k: v for k, v in labels.items() if not k.startswith("__")})
        result[job["job_name"]] = kept
    return result
