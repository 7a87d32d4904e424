"""The objects an inference Workspace runs as (WORKSPACE.md, reconcile step 5).

    objs = inference_objects(ws, plan, revision=rev)   # [(Resource, body), ...] in apply order

The preset, the engine, the GPUs per pod and the catalog's command line come from the
reconcile's `WorkspacePlan`; nothing here looks anything up.

- ConfigMap ``<ws>-inference-params`` with ``inference_config.yaml`` holding the engine
  parameters the command line uses (what runs, readable with ``kubectl get cm``), unless
  the Workspace names its own ConfigMap (``inference.config``), which is then mounted
  instead: the server applies the file after its command line, so the user's keys win;
- Service ``<ws>``: ``http`` 80 -> 5000 (and ``torch`` 29500 for multi-node presets),
  ClusterIP, or LoadBalancer with ``kaito.sh/enablelb: "True"``; for a StatefulSet it
  selects pod 0, the only one that serves HTTP;
- headless Service ``<ws>-headless`` for a StatefulSet (stable pod DNS for the workers);
- a StatefulSet's pods form one serving group (`group_args`): every pod gets
  ``--group-hosts`` (each pod's DNS name, pod 0 first), ``--group-port 29500`` and
  ``POD_NAME``, from which the server takes its rank; pod 0 serves the API and runs vLLM's
  head, the others join it (``images/inference/README.md``). ``multi_node_refusal`` says
  why a split model cannot run (only vLLM spans nodes);
- the workload: a Deployment with ``replicas = count`` (each node serves a full copy),
  or a StatefulSet when the preset is distributed and ``count > 1`` (one model across
  the nodes). One pod per node with all of its GPUs, probes on ``/health`` (a startup
  probe that allows 30 minutes for loading weights), the pod template annotated with
  the Workspace's revision hash, so a change to the Workspace rolls the pods.
  Rolling updates never surge: a GPU node cannot hold two copies of the model, so a
  surge pod would stay Pending forever and the rollout with it.
- the image: the project's inference image (the plan's, in the controller's registry)
  for every preset, or a private preset's own ``presetOptions.image``;
- the weights: an init container ``fetch-weights`` downloads the preset's repo at its
  pinned revision into the node's model cache (a hostPath, `podspec.weights_parts`),
  and ``--model`` is its folder there, mounted read-only; a private image or a preset
  built locally brings its own;
- adapters: an emptyDir at ``/mnt/adapter``; an adapter from an image gets an init
  container running the inference image, ``python -m kaito_inference.adapter_pull``,
  which pulls the adapter image over the registry API and writes its ``/data`` to
  ``/mnt/adapter/<name>`` (an adapter image has no shell to copy with, so kubelet does
  not run it); the adapter's ``imagePullSecrets`` are mounted for it at
  ``/mnt/pull-secrets/<secret>``, not added to the pod's (kubelet never pulls the
  adapter image). One from a volume is mounted there read-only; env
  ``<name>=<strength>``.
- the fetcher's identity: a pod that fetches runs as the Workspace's ServiceAccount
  ``<ws>-weights-fetcher`` (`podspec.fetcher_access`), applied before the workload;
- a custom ``inference.template`` runs as given (its pod spec), with the Workspace's
  labels, scheduling and GPU tolerations added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import yaml

from kaito.api.workspace import ANNOTATION_REVISION, Runtime, Workspace
from kaito.controllers.workspace import podspec
from kaito.controllers.workspace.plan import WorkspacePlan
from kaito.presets.catalog import Catalog, Preset, RuntimeChoice, inference_command
from kaito.runtime.meta import Obj
from kaito.runtime.resource import CONFIGMAPS, DEPLOYMENTS, SERVICES, STATEFULSETS, Resource

__all__ = [
    "CONFIG_DIR",
    "CONFIG_FILE",
    "HTTP_PORT",
    "TORCH_PORT",
    "WORKLOAD_CONTAINER",
    "InferencePlan",
    "inference_objects",
    "multi_node_refusal",
    "plan_inference",
]


HTTP_PORT = 5000
SERVICE_PORT = 80
TORCH_PORT = 29500
CONFIG_DIR = "/mnt/config"
CONFIG_FILE = "inference_config.yaml"
WORKLOAD_CONTAINER = "inference"
ANNOTATION_ENGINE = "kaito.sh/runtime-selected"
"""On the pod template: the engine that runs and why (``vllm: default engine``)."""

PULL_SECRETS_DIR = "/mnt/pull-secrets"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
"""The key of a ``kubernetes.io/dockerconfigjson`` Secret."""

STARTUP_FAILURES = 180
"""x 10 s: how long the startup probe gives the server to load weights (30 min)."""


@dataclass(frozen=True)
class InferencePlan:
    """The server's part of the plan: what the reconcile's `WorkspacePlan` and the
    Workspace decide about a preset's inference server, before any object is built."""

    workspace: WorkspacePlan
    preset: Preset
    runtime: RuntimeChoice
    stateful: bool
    """A StatefulSet (one model across ``count`` nodes) rather than a Deployment."""
    image: str
    pull_secrets: tuple[str, ...]
    config_map: str
    """The ConfigMap mounted at /mnt/config: the user's, or the generated one."""
    generated_config: bool


def config_map_name(ws: Workspace) -> str:
    return f"{ws.metadata.name}-inference-params"


def headless_name(ws: Workspace) -> str:
    return f"{ws.metadata.name}-headless"


POD_NAME_ENV: Obj = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
"""A group's pods find their rank in their name's StatefulSet ordinal."""


def group_hosts(ws: Workspace) -> list[str]:
    """The stable DNS name of each pod of a StatefulSet Workspace, pod 0 first."""
    name, ns = ws.metadata.name, ws.metadata.namespace
    return [f"{name}-{i}.{headless_name(ws)}.{ns}.svc" for i in range(ws.resource.count)]


def group_args(ws: Workspace) -> list[str]:
    """The server's flags for one model across the StatefulSet's pods: every pod's
    address (pod 0, vLLM's head and the API, first) and pod 0's torch port; each pod
    takes its rank from ``POD_NAME``."""
    return ["--group-hosts", ",".join(group_hosts(ws)), "--group-port", str(TORCH_PORT)]


def plan_inference(ws: Workspace, plan: WorkspacePlan) -> InferencePlan | None:
    """The server's plan for a preset Workspace; None for a custom template."""
    assert ws.inference is not None
    spec = ws.inference.preset
    if spec is None:
        return None
    preset, choice = plan.preset, plan.runtime
    assert preset is not None, "resolve_plan resolves an inference preset"
    assert choice is not None, "resolve_plan chooses an inference preset's engine"
    options = spec.options
    image = (
        options.image if spec.access_mode == "private" and options.image else plan.images.inference
    )
    secrets = [*options.image_pull_secrets]
    return InferencePlan(
        workspace=plan,
        preset=preset,
        runtime=choice,
        stateful=preset.distributed and ws.resource.count > 1,
        image=image,
        pull_secrets=tuple(dict.fromkeys(s for s in secrets if s)),
        config_map=ws.inference.config or config_map_name(ws),
        generated_config=not ws.inference.config,
    )


def multi_node_refusal(ws: Workspace, plan: WorkspacePlan) -> str | None:
    """Why a model split across nodes cannot run as planned, or None: only vLLM spans
    nodes (its multi-node executor), the transformers engine runs on one."""
    server = plan_inference(ws, plan)
    if server is None or not server.stateful or server.runtime.runtime is Runtime.VLLM:
        return None
    return (
        f"preset {server.preset.name} on {ws.resource.count} nodes needs the vLLM engine to "
        f"split the model across them, but the transformers engine was chosen "
        f"({server.runtime.reason}); the transformers engine runs on one node only. Remove "
        "the kaito.sh/runtime annotation or adapter strengths other than 1, or pick an "
        "instance type vLLM supports"
    )


# -- pieces ----------------------------------------------------------------------------


def _probe(path: str, *, period: int, failures: int, timeout: int = 5) -> Obj:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _probes() -> Obj:
    return {
        "startupProbe": _probe("/health", period=10, failures=STARTUP_FAILURES),
        "readinessProbe": _probe("/health", period=5, failures=3),
        "livenessProbe": _probe("/health", period=10, failures=6),
    }


def _adapter_parts(
    ws: Workspace, catalog: Catalog, image: str
) -> tuple[list[Obj], list[Obj], list[Obj], list[Obj]]:
    """(volumes, main-container mounts, init containers, env) for the adapters, which
    live under the catalog's ``adapters_dir`` (where the server looks for them); an
    adapter image is pulled by an init container running ``image`` (the server's), over
    plain http when the catalog names its registry (`Catalog.plain_http_args`)."""
    adapters_dir = catalog.defaults.adapters_dir
    assert ws.inference is not None
    adapters = ws.inference.adapters
    if not adapters:
        return [], [], [], []
    volumes: list[Obj] = [{"name": "adapters", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "adapters", "mountPath": adapters_dir}]
    inits: list[Obj] = []
    env: list[Obj] = []
    secret_volumes: dict[str, str] = {}
    for i, adapter in enumerate(adapters):
        source = adapter.source
        if source is None:
            continue
        target = f"{adapters_dir}/{source.name}"
        if source.volume_source:
            volume = f"adapter-{i}"
            volumes.append({"name": volume, **copy.deepcopy(source.volume_source)})
            mounts.append({"name": volume, "mountPath": target, "readOnly": True})
        elif source.image:
            command = [
                "python",
                "-m",
                "kaito_inference.adapter_pull",
                "--image",
                source.image,
                "--dest",
                target,
                *catalog.plain_http_args(source.image),
            ]
            init_mounts: list[Obj] = [{"name": "adapters", "mountPath": adapters_dir}]
            for secret in dict.fromkeys(s for s in source.image_pull_secrets if s):
                if secret not in secret_volumes:
                    secret_volumes[secret] = f"pull-secret-{len(secret_volumes)}"
                    volumes.append(
                        {
                            "name": secret_volumes[secret],
                            "secret": {
                                "secretName": secret,
                                "items": [{"key": DOCKER_CONFIG_KEY, "path": DOCKER_CONFIG_KEY}],
                            },
                        }
                    )
                folder = f"{PULL_SECRETS_DIR}/{secret}"
                command += ["--docker-config", f"{folder}/{DOCKER_CONFIG_KEY}"]
                init_mounts.append(
                    {"name": secret_volumes[secret], "mountPath": folder, "readOnly": True}
                )
            inits.append(
                {
                    "name": f"adapter-{i}",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": init_mounts,
                }
            )
        env.append({"name": source.name, "value": adapter.strength or "1.0"})
    return volumes, mounts, inits, env


def _engine_config(plan: InferencePlan) -> str:
    engine = plan.preset.engine(plan.runtime.runtime)
    assert engine is not None
    section: Obj = {"dtype": engine.dtype, "max_model_len": plan.preset.max_model_len}
    if plan.runtime.runtime is Runtime.VLLM and engine.gpu_memory_utilization is not None:
        section["gpu_memory_utilization"] = engine.gpu_memory_utilization
    section.update(engine.args)
    header = (
        f"# Generated by the workspace controller for preset {plan.preset.name}: the engine\n"
        f"# parameters its command line uses. Name your own ConfigMap in inference.config\n"
        f"# to override them (keys of the '{plan.runtime.runtime}' section become flags).\n"
    )
    return header + yaml.safe_dump({str(plan.runtime.runtime): section}, sort_keys=True)


def _pod_spec(ws: Workspace, plan: InferencePlan) -> Obj:
    assert ws.inference is not None
    adapter_volumes, adapter_mounts, inits, env = _adapter_parts(
        ws, plan.workspace.catalog, plan.image
    )
    shm, shm_mount = podspec.shm_volume()
    weights = plan.workspace.weights
    assert weights is not None, "resolve_plan resolves a preset's weights"
    weight_volumes, fetchers, weight_mounts = podspec.weights_parts(
        weights, plan.workspace.images.inference
    )
    inits = [*fetchers, *inits]
    command = inference_command(
        plan.preset,
        runtime=plan.runtime.runtime,
        sku=plan.workspace.sku,
        node_count=ws.resource.count if plan.stateful else 1,
        adapter_count=len(ws.inference.adapters),
        config_file=f"{CONFIG_DIR}/{CONFIG_FILE}",
        catalog=plan.workspace.catalog,
        model=weights.model,
    )
    ports = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if plan.stateful:
        ports.append({"name": "torch", "containerPort": TORCH_PORT, "protocol": "TCP"})
        command = [*command, *group_args(ws)]
        env = [*env, POD_NAME_ENV]
    container: Obj = {
        "name": WORKLOAD_CONTAINER,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": ports,
        "resources": podspec.gpu_resources(plan.workspace.gpus_per_node),
        **_probes(),
        "volumeMounts": [
            shm_mount,
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *weight_mounts,
            *adapter_mounts,
        ],
    }
    if env:
        container["env"] = env
    spec: Obj = {
        **podspec.scheduling(ws),
        "containers": [container],
        "volumes": [
            shm,
            {"name": "config", "configMap": {"name": plan.config_map}},
            *weight_volumes,
            *adapter_volumes,
        ],
        "terminationGracePeriodSeconds": 30,
    }
    if inits:
        spec["initContainers"] = inits
    if plan.pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in plan.pull_secrets]
    podspec.run_fetcher_as(ws, spec)
    return spec


def _template_pod_spec(ws: Workspace) -> Obj:
    """A custom template's pod spec with the Workspace's scheduling added."""
    assert ws.inference is not None
    assert ws.inference.template is not None
    spec = copy.deepcopy(ws.inference.template.get("spec") or {})
    sched = podspec.scheduling(ws)
    spec["affinity"] = {**(spec.get("affinity") or {}), **sched["affinity"]}
    tolerations = list(spec.get("tolerations") or [])
    spec["tolerations"] = tolerations + [t for t in sched["tolerations"] if t not in tolerations]
    return spec


def _template(ws: Workspace, pod_spec: Obj, revision: str, annotations: dict[str, str]) -> Obj:
    labels = podspec.pod_labels(ws)
    if ws.inference is not None and ws.inference.template is not None:
        user_meta = ws.inference.template.get("metadata") or {}
        labels = {**(user_meta.get("labels") or {}), **labels}
        annotations = {**(user_meta.get("annotations") or {}), **annotations}
    return {
        "metadata": {
            "labels": labels,
            "annotations": {**annotations, ANNOTATION_REVISION: revision},
        },
        "spec": pod_spec,
    }


def _workload(ws: Workspace, plan: InferencePlan | None, revision: str) -> tuple[Resource, Obj]:
    name = ws.metadata.name
    if plan is None:
        pod_spec, annotations = _template_pod_spec(ws), {}
    else:
        choice = plan.runtime
        pod_spec = _pod_spec(ws, plan)
        annotations = {ANNOTATION_ENGINE: f"{choice.runtime}: {choice.reason}"}
    template = _template(ws, pod_spec, revision, annotations)
    selector = {"matchLabels": podspec.selector_labels(ws)}
    if plan is not None and plan.stateful:
        return STATEFULSETS, {
            "apiVersion": STATEFULSETS.api_version,
            "kind": STATEFULSETS.kind,
            "metadata": podspec.object_meta(ws, name),
            "spec": {
                "replicas": ws.resource.count,
                "serviceName": headless_name(ws),
                "podManagementPolicy": "Parallel",
                "selector": selector,
                "template": template,
            },
        }
    return DEPLOYMENTS, {
        "apiVersion": DEPLOYMENTS.api_version,
        "kind": DEPLOYMENTS.kind,
        "metadata": podspec.object_meta(ws, name),
        "spec": {
            "replicas": ws.resource.count,
            "selector": selector,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": template,
        },
    }


def _services(ws: Workspace, plan: InferencePlan | None) -> list[Obj]:
    stateful = plan is not None and plan.stateful
    ports: list[Obj] = [
        {"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}
    ]
    if stateful:
        # protocol is a key of the ports list for server-side apply: it must be given.
        ports.append(
            {"name": "torch", "port": TORCH_PORT, "targetPort": TORCH_PORT, "protocol": "TCP"}
        )
    selector = podspec.selector_labels(ws)
    if stateful:
        selector = {**selector, "statefulset.kubernetes.io/pod-name": f"{ws.metadata.name}-0"}
    main: Obj = {
        "apiVersion": SERVICES.api_version,
        "kind": SERVICES.kind,
        "metadata": podspec.object_meta(ws, ws.metadata.name),
        "spec": {
            "type": "LoadBalancer" if ws.enable_load_balancer else "ClusterIP",
            "selector": selector,
            "ports": ports,
        },
    }
    if not stateful:
        return [main]
    headless: Obj = {
        "apiVersion": SERVICES.api_version,
        "kind": SERVICES.kind,
        "metadata": podspec.object_meta(ws, headless_name(ws)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": podspec.selector_labels(ws),
            "ports": ports,
        },
    }
    return [main, headless]


def inference_objects(
    ws: Workspace, plan: WorkspacePlan, *, revision: str
) -> list[tuple[Resource, Obj]]:
    """Every object of an inference Workspace, each carrying its spec hash: the weights
    fetcher's ServiceAccount, Role and RoleBinding first (the pods run as it)."""
    server = plan_inference(ws, plan)
    fetched = server is not None and plan.weights is not None and bool(plan.weights.fetch)
    access = podspec.fetcher_access(ws) if fetched else []
    out: list[tuple[Resource, Obj]] = []
    if server is not None and server.generated_config:
        out.append(
            (
                CONFIGMAPS,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": podspec.object_meta(ws, server.config_map),
                    "data": {CONFIG_FILE: _engine_config(server)},
                },
            )
        )
    out += [(SERVICES, svc) for svc in _services(ws, server)]
    out.append(_workload(ws, server, revision))
    return [*access, *((res, podspec.with_spec_hash(body)) for res, body in out)]
