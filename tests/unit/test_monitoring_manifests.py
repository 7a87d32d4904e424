"""deploy/monitoring/ cannot rot: what it selects exists in deploy/ and in the pods the
workspace controller renders (names, labels, namespaces, ports), the controllers really
bind their metrics where the manifests point, and none of it joins the default install.

The scrape config's relabeling is evaluated here in Python (`kubernetes_sd.relabel`);
tests/integration/test_monitoring_scrape_config.py has the real Prometheus evaluate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kaito.cli import build_parser
from tests.integration.kubernetes_sd import (
    DEPLOY,
    MONITORING,
    Pod,
    deploy_docs,
    deployments,
    kaito_pods,
    load_docs,
    scrape_targets,
)

Obj = dict[str, Any]
APP = "app.kubernetes.io/name"


def scrape_config() -> Obj:
    return dict(yaml.safe_load((MONITORING / "prometheus-scrape-config.yaml").read_text()))


def metrics_services() -> list[Obj]:
    return load_docs(MONITORING / "metrics-services.yaml")


def monitors(kind: str) -> list[Obj]:
    docs = load_docs(MONITORING / "servicemonitor.yaml")
    assert {d["apiVersion"] for d in docs} == {"monitoring.coreos.com/v1"}
    return [d for d in docs if d["kind"] == kind]


def ports_named(template: Obj, name: str) -> list[Obj]:
    return [
        p
        for c in template["spec"]["containers"]
        for p in c.get("ports") or ()
        if p.get("name") == name
    ]


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(pod: Pod) -> dict[str, str]:
    return dict((pod.template.get("metadata") or {}).get("labels") or {})


def test_every_controller_deployment_names_its_metrics_port_where_the_process_binds_it() -> None:
    deps = deployments()
    assert {d["metadata"]["labels"][APP] for d in deps} == {
        "gpu-provisioner",
        "kaito-workspace-controller",
    }
    for dep in deps:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[0] == "kaito", command  # the image's console script (Dockerfile)
        args = build_parser().parse_args(command[1:])
        bind_port = int(args.metrics_bind_address.rpartition(":")[2])
        (port,) = ports_named(dep["spec"]["template"], "metrics")
        assert port["containerPort"] == bind_port, dep["metadata"]["name"]
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(bind_port)


def test_the_scrape_config_scrapes_each_controller_metrics_port_and_the_inference_server() -> None:
    pods = kaito_pods()
    expected: dict[str, list[dict[str, str]]] = {}
    for pod in pods:
        labels = pod_labels(pod)
        if APP in labels:  # a controller: its port named metrics
            (port,) = ports_named(pod.template, "metrics")
            job = labels[APP]
            extra = {}
        elif ports_named(pod.template, "http"):  # an inference server (port 5000)
            (port,) = ports_named(pod.template, "http")
            assert port["containerPort"] == 5000
            job = "kaito-inference"
            extra = {"workspace": labels["kaito.sh/workspace"]}
        else:  # a tuning Job's pod: nothing to scrape
            continue
        expected.setdefault(job, []).append(
            {
                "job": job,
                "namespace": pod.namespace,
                "pod": pod.name,
                "instance": f"{pod.ip}:{port['containerPort']}",
                **extra,
            }
        )
    assert set(expected) == {"gpu-provisioner", "kaito-workspace-controller", "kaito-inference"}
    assert scrape_targets(scrape_config(), pods) == expected


def test_the_metrics_services_select_one_controller_each_and_target_its_metrics_port() -> None:
    deps = deployments()
    for svc in metrics_services():
        meta, spec = svc["metadata"], svc["spec"]
        selected = [
            d
            for d in deps
            if d["metadata"]["namespace"] == meta["namespace"]
            and matches(
                {"matchLabels": spec["selector"]}, d["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert len(selected) == 1, meta["name"]
        (dep,) = selected
        assert meta["labels"][APP] == dep["metadata"]["labels"][APP]
        (port,) = spec["ports"]
        assert port["name"] == "metrics"
        (container_port,) = ports_named(dep["spec"]["template"], port["targetPort"])
        assert port["port"] == container_port["containerPort"]
    assert len(metrics_services()) == len(deps)


def test_each_service_monitor_selects_exactly_its_metrics_service_and_port() -> None:
    services = [d for d in deploy_docs() if d["kind"] == "Service"] + metrics_services()
    jobs = set()
    for sm in monitors("ServiceMonitor"):
        spec = sm["spec"]
        namespaces = spec["namespaceSelector"]["matchNames"]
        selected = [
            s
            for s in services
            if s["metadata"]["namespace"] in namespaces
            and matches(spec["selector"], s["metadata"].get("labels") or {})
        ]
        assert [s["metadata"]["name"] for s in selected] == [f"{sm['metadata']['name']}-metrics"], (
            sm["metadata"]["name"]
        )
        (svc,) = selected
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint.get("path", "/metrics") == "/metrics"
        jobs.add(svc["metadata"]["labels"][spec["jobLabel"]])
    assert jobs == {"gpu-provisioner", "kaito-workspace-controller"}


def test_the_pod_monitor_scrapes_the_inference_server_and_no_other_pod() -> None:
    (pm,) = monitors("PodMonitor")
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {"any": True}  # pods live in the Workspace's namespace
    (endpoint,) = spec["podMetricsEndpoints"]
    scraped = [
        pod.name
        for pod in kaito_pods()
        if matches(spec["selector"], pod_labels(pod))
        and ports_named(pod.template, endpoint["port"])
    ]
    assert scraped == ["workspace-phi-3-mini-0"]
    assert endpoint["path"] == "/metrics"
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert [r["replacement"] for r in job] == ["kaito-inference"]


def test_the_scrape_config_and_the_monitors_use_the_same_job_names() -> None:
    jobs = {j["job_name"] for j in scrape_config()["scrape_configs"]}
    assert jobs == {"gpu-provisioner", "kaito-workspace-controller", "kaito-inference"}


def test_monitoring_is_an_opt_in_beside_the_default_install() -> None:
    default = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert not any("monitoring" in r for r in default["resources"])
    own = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert own["resources"] == ["metrics-services.yaml", "servicemonitor.yaml"]
    for name in own["resources"]:
        assert (MONITORING / name).is_file()
    namespaces = {d["metadata"]["name"] for d in deploy_docs() if d["kind"] == "Namespace"}
    for doc in metrics_services() + monitors("ServiceMonitor") + monitors("PodMonitor"):
        assert doc["metadata"]["namespace"] in namespaces
    readme = (MONITORING / "README.md").read_text()
    for name in Path(MONITORING).glob("*.yaml"):
        assert name.name in readme, f"README.md does not mention {name.name}"
