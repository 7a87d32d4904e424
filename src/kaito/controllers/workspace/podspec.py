"""What every pod the workspace controller runs has in common, inference or tuning.

- labels ``kaito.sh/workspace`` / ``kaito.sh/workspacenamespace`` (the Services and the
  workload's selector use the first);
- an owner reference to the Workspace, so deleting it garbage-collects the workload;
- scheduling: required node affinity on the Workspace's ``labelSelector`` (the nodes
  the controller provisioned or counted carry those labels), required pod anti-affinity
  on ``kaito.sh/workspace`` over ``kubernetes.io/hostname`` (one pod per node),
  tolerations for the GPU nodes' taints (``sku=gpu:NoSchedule`` and ``nvidia.com/gpu``);
- ``nvidia.com/gpu`` requests and limits of the node's GPU count (the plan's
  ``gpus_per_node``, the SKU's): one pod uses all of its node's GPUs;
- ``/dev/shm`` as an in-memory emptyDir (PyTorch's shared memory for data loaders and
  NCCL; the container runtime's 64 MiB default is far too small);
- the preset's weights (`weights_parts`): when the plan says they are fetched, an init
  container ``fetch-weights`` running the inference image's fetcher into the node's
  model cache, a hostPath (``DirectoryOrCreate``) mounted read-write there and read-only
  in the container that loads them; ``HF_TOKEN`` from ``presetOptions.modelAccessSecret``
  and ``POD_NAME``/``POD_NAMESPACE`` (the fetcher reports its progress on its own pod),
  ``HF_ENDPOINT`` when the controller's ``--hf-endpoint`` names a hub (a mirror);
  for a model image (``presetOptions.modelImage``) the same container runs the image
  fetch instead, with each of ``modelImagePullSecrets`` mounted read-only at
  ``/mnt/pull-secrets/<secret>`` (as for adapter images: kubelet never pulls a model
  image, our puller does) and, for an image named by tag, an emptyDir ``model-link``
  where the fetch links the image's cache folder for the server;
- the fetcher's identity (`fetcher_access`, `run_fetcher_as`): a pod that fetches runs
  as the Workspace's ServiceAccount ``<ws>-weights-fetcher``, whose Role may get and
  patch pods in the namespace (the ``kaito.sh/weights-progress`` annotation), all three
  owned by the Workspace. Only ``fetch-weights`` sees its token: every other container
  mounts an empty folder where the token would go, so the ServiceAccount admission
  plugin mounts it into none of them (the server and the tuning run keep the
  no-permission posture of a namespace's ``default`` ServiceAccount);
- a ``spec-hash`` annotation on each object, the hash of what the controller wants it
  to be: a reconcile whose desired object has the hash already on the live one writes
  nothing.

Pure functions over Workspace models and raw dicts; the reconciler does the I/O.
"""

from __future__ import annotations

import hashlib

import orjson

from kaito.api.workspace import (
    LABEL_WORKSPACE,
    LABEL_WORKSPACE_NAMESPACE,
    MODEL_ACCESS_SECRET_KEY,
    WORKSPACES,
    Workspace,
)
from kaito.controllers.workspace.nodes.selection import GPU_RESOURCE
from kaito.controllers.workspace.plan import Weights
from kaito.controllers.workspace.status.weights import FETCH_CONTAINER
from kaito.runtime.meta import Obj
from kaito.runtime.resource import ROLEBINDINGS, ROLES, SERVICEACCOUNTS, Resource

__all__ = [
    "ANNOTATION_SPEC_HASH",
    "FETCH_CONTAINER",
    "GPU_TOLERATIONS",
    "MODEL_CACHE_VOLUME",
    "MODEL_LINK_VOLUME",
    "fetcher_access",
    "fetcher_name",
    "gpu_resources",
    "object_meta",
    "owner_reference",
    "pod_labels",
    "run_fetcher_as",
    "scheduling",
    "shm_volume",
    "spec_hash",
    "weights_parts",
    "with_spec_hash",
]


ANNOTATION_SPEC_HASH = "kaito.sh/spec-hash"
"""On every object the controller writes: sha256 of the desired object, to skip no-op writes."""

GPU_TOLERATIONS: list[Obj] = [
    {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
]
HOSTNAME = "kubernetes.io/hostname"


def pod_labels(ws: Workspace) -> dict[str, str]:
    return {LABEL_WORKSPACE: ws.metadata.name, LABEL_WORKSPACE_NAMESPACE: ws.metadata.namespace}


def selector_labels(ws: Workspace) -> dict[str, str]:
    """The workload's selector (immutable once created, so only the name)."""
    return {LABEL_WORKSPACE: ws.metadata.name}


def owner_reference(ws: Workspace) -> Obj:
    return {
        "apiVersion": WORKSPACES.api_version,
        "kind": WORKSPACES.kind,
        "name": ws.metadata.name,
        "uid": ws.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(ws: Workspace, name: str, **annotations: str) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": ws.metadata.namespace,
        "labels": pod_labels(ws),
        "ownerReferences": [owner_reference(ws)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def gpu_resources(gpus: int) -> Obj:
    return {"requests": {GPU_RESOURCE: str(gpus)}, "limits": {GPU_RESOURCE: str(gpus)}}


def _node_selector_terms(ws: Workspace) -> list[Obj]:
    selector = ws.resource.label_selector
    expressions: list[Obj] = [
        {"key": key, "operator": "In", "values": [value]}
        for key, value in sorted(selector.match_labels.items())
    ]
    for req in selector.match_expressions:
        expr: Obj = {"key": req.key, "operator": req.operator}
        if req.values:
            expr["values"] = list(req.values)
        expressions.append(expr)
    return [{"matchExpressions": expressions}] if expressions else []


def scheduling(ws: Workspace) -> Obj:
    """affinity + tolerations for a pod of ``ws`` (merged into its pod spec)."""
    affinity: Obj = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector_labels(ws)},
                    "topologyKey": HOSTNAME,
                }
            ]
        }
    }
    terms = _node_selector_terms(ws)
    if terms:
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    return {"affinity": affinity, "tolerations": [dict(t) for t in GPU_TOLERATIONS]}


def shm_volume() -> tuple[Obj, Obj]:
    """(volume, mount) for ``/dev/shm``."""
    return (
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "dshm", "mountPath": "/dev/shm"},
    )


MODEL_CACHE_VOLUME = "model-cache"
MODEL_LINK_VOLUME = "model-link"
PULL_SECRETS_DIR = "/mnt/pull-secrets"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
"""The key of a ``kubernetes.io/dockerconfigjson`` Secret."""


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def weights_parts(weights: Weights | None, image: str) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(volumes, init containers, loader mounts) that bring the preset's weights to
    ``weights.model``; all empty when the image holds them (nothing is fetched).

    ``image`` is the project's inference image, which carries the fetcher."""
    if weights is None or not weights.fetch:
        return [], [], []
    volumes: list[Obj] = [
        {
            "name": MODEL_CACHE_VOLUME,
            "hostPath": {"path": weights.cache_dir, "type": "DirectoryOrCreate"},
        }
    ]
    command = list(weights.fetch)
    init_mounts: list[Obj] = [{"name": MODEL_CACHE_VOLUME, "mountPath": weights.cache_dir}]
    mounts: list[Obj] = [
        {"name": MODEL_CACHE_VOLUME, "mountPath": weights.cache_dir, "readOnly": True}
    ]
    env: list[Obj] = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
    ]
    if not weights.image:
        # The image is offline by default (the server must never reach the hub); this
        # container's one job is to download.
        env.append({"name": "HF_HUB_OFFLINE", "value": "0"})
        if weights.endpoint:
            env.append({"name": "HF_ENDPOINT", "value": weights.endpoint})
    for i, secret in enumerate(weights.pull_secrets):
        folder = f"{PULL_SECRETS_DIR}/{secret}"
        volumes.append(
            {
                "name": f"weights-pull-secret-{i}",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": DOCKER_CONFIG_KEY, "path": DOCKER_CONFIG_KEY}],
                },
            }
        )
        init_mounts.append(
            {"name": f"weights-pull-secret-{i}", "mountPath": folder, "readOnly": True}
        )
        command += ["--docker-config", f"{folder}/{DOCKER_CONFIG_KEY}"]
    if weights.link_dir:
        volumes.append({"name": MODEL_LINK_VOLUME, "emptyDir": {}})
        init_mounts.append({"name": MODEL_LINK_VOLUME, "mountPath": weights.link_dir})
        mounts.append({"name": MODEL_LINK_VOLUME, "mountPath": weights.link_dir, "readOnly": True})
    if weights.token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": weights.token_secret, "key": MODEL_ACCESS_SECRET_KEY}
                },
            }
        )
    init: Obj = {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "volumeMounts": init_mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return volumes, [init], mounts


API_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where the ServiceAccount admission plugin mounts a pod's API token (and where the
fetcher reads it), in every container that has no mount of its own there."""
NO_API_TOKEN_VOLUME = "no-api-token"
FETCHER_RULES: list[Obj] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
"""The fetcher's Role: its own pod's progress annotation (a Role cannot name a pod
whose name the ReplicaSet or Job controller picks, so: pods in the namespace)."""


def fetcher_name(ws: Workspace) -> str:
    """The ServiceAccount, Role and RoleBinding of the Workspace's weights fetcher."""
    return f"{ws.metadata.name}-weights-fetcher"


def fetcher_access(ws: Workspace) -> list[tuple[Resource, Obj]]:
    """ServiceAccount, Role (pods: get, patch) and RoleBinding for the fetcher, in the
    Workspace's namespace and owned by it, each carrying its spec hash."""
    name, namespace = fetcher_name(ws), ws.metadata.namespace
    rbac = "rbac.authorization.k8s.io"
    account: Obj = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_meta(ws, name)}
    role: Obj = {
        "apiVersion": ROLES.api_version,
        "kind": ROLES.kind,
        "metadata": object_meta(ws, name),
        "rules": [dict(r) for r in FETCHER_RULES],
    }
    binding: Obj = {
        "apiVersion": ROLEBINDINGS.api_version,
        "kind": ROLEBINDINGS.kind,
        "metadata": object_meta(ws, name),
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    return [
        (SERVICEACCOUNTS, with_spec_hash(account)),
        (ROLES, with_spec_hash(role)),
        (ROLEBINDINGS, with_spec_hash(binding)),
    ]


def fetches(pod_spec: Obj) -> bool:
    """The pod spec has a ``fetch-weights`` init container."""
    return any(c.get("name") == FETCH_CONTAINER for c in pod_spec.get("initContainers") or ())


def run_fetcher_as(ws: Workspace, pod_spec: Obj) -> None:
    """Run a fetching pod as the fetcher's ServiceAccount, its token visible only to
    ``fetch-weights`` (an empty folder over the token's path in every other container).
    Changes ``pod_spec`` in place; nothing for a pod that does not fetch."""
    if not fetches(pod_spec):
        return
    pod_spec["serviceAccountName"] = fetcher_name(ws)
    pod_spec["volumes"] = [
        *(pod_spec.get("volumes") or ()),
        {"name": NO_API_TOKEN_VOLUME, "emptyDir": {}},
    ]
    shadow = {"name": NO_API_TOKEN_VOLUME, "mountPath": API_TOKEN_DIR, "readOnly": True}
    for key in ("initContainers", "containers"):
        for c in pod_spec.get(key) or ():
            if c.get("name") != FETCH_CONTAINER:
                c["volumeMounts"] = [*(c.get("volumeMounts") or ()), dict(shadow)]


def spec_hash(obj: Obj) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def with_spec_hash(obj: Obj) -> Obj:
    """``obj`` with its own hash in ``kaito.sh/spec-hash`` (computed without it)."""
    digest = spec_hash(obj)
    meta = obj["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_SPEC_HASH: digest}
    return obj


def live_spec_hash(obj: Obj | None) -> str | None:
    if obj is None:
        return None
    return (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
