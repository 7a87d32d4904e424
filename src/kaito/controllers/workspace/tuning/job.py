"""The Job a tuning Workspace runs as (WORKSPACE.md, reconcile step 6).

    resource, job = tuning_job(ws, plan, revision=rev)

A ``batch/v1`` Job named after the Workspace, one pod on the Workspace's GPU node:

- the base model: fetched as for inference, by a ``fetch-weights`` init container (the
  inference image's fetcher) into the node's model cache (a hostPath mounted
  read-only in the tuning container), so a later inference Workspace of the same preset
  on that node loads it from disk (the pod runs as the fetcher's ServiceAccount,
  `podspec.fetcher_access`, applied before the Job); a private preset's own image carries it at
  ``/workspace/weights`` and runs the tuning entrypoint itself;
- the tuning container runs the project's tuning image (the plan's, in the
  controller's registry);
- the input at ``/mnt/data``: ``urls`` are fetched by an init container running
  ``python -m kaito_tuning.download`` (http/https only, size and time limits; the
  webhook already refused loopback, private, link-local and metadata addresses); an
  ``image`` is copied from its ``/data`` by an init container running that image; a
  ``volumeSource`` is mounted read-only;
- the tuning container: ``python -m kaito_tuning --method <lora|qlora> --model
  <the weights' folder> --data /mnt/data --output /mnt/output``, with the method's
  defaults (qlora: 4-bit nf4, r=8, alpha=8, in images/tuning) or the user's
  ``training_config.yaml`` from ``tuning.config`` mounted at ``/mnt/config``;
- the output at ``/mnt/output``: a ``volumeSource`` is mounted there (the adapter is
  written straight into it); for an ``image``, an emptyDir plus a ``pusher`` sidecar
  running the same image, ``python -m kaito_tuning.push``: it waits for the tuning run's
  completion marker, builds an adapter image (one layer, the adapter under ``/data``;
  ``kaito_contracts.oci``) and pushes it with the registry API, authenticated by the
  ``imagePushSecret`` (a ``kubernetes.io/dockerconfigjson`` Secret mounted at
  ``/mnt/push-secret``). The tuning container's wrapper touches a failure marker when
  the run fails, and the sidecar then exits non-zero, so the Job fails too. A refused
  push ends the sidecar with a termination message ``Unauthorized: pushing <image>:
  ...`` that the Workspace's conditions carry.

``restartPolicy: Never`` with ``backoffLimit: 2``: a failed run leaves its pod (and its
logs, and the termination message the controller surfaces) for the user to read.
"""

from __future__ import annotations

import copy

from kaito.api.workspace import ANNOTATION_REVISION, Workspace
from kaito.controllers.workspace import podspec
from kaito.controllers.workspace.plan import WorkspacePlan
from kaito.runtime.meta import Obj
from kaito.runtime.resource import JOBS, Resource

__all__ = [
    "COMPLETION_MARKER",
    "DATA_DIR",
    "OUTPUT_DIR",
    "PUSHER_CONTAINER",
    "TUNING_CONTAINER",
    "tuning_job",
]


DATA_DIR = "/mnt/data"
OUTPUT_DIR = "/mnt/output"
CONFIG_DIR = "/mnt/config"
CONFIG_FILE = "training_config.yaml"
TUNING_CONTAINER = "tuning"
COMPLETION_MARKER = "kaito_tuning_complete.json"
"""What images/tuning writes last into the output directory (kaito_tuning.train)."""
FAILURE_MARKER = "kaito_tuning_failed"
PUSHER_CONTAINER = "pusher"
PUSH_SECRET_DIR = "/mnt/push-secret"
DOCKER_CONFIG_KEY = ".dockerconfigjson"
"""The key of a ``kubernetes.io/dockerconfigjson`` Secret."""
LABEL_PRESET = "kaito.sh/preset"
LABEL_WORKSPACE = "kaito.sh/workspace"
"""Labels of the pushed image (``kaito_contracts.oci``'s names): what it was tuned from."""
BACKOFF_LIMIT = 2


def _input_parts(ws: Workspace, image: str) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(volumes, tuning-container mounts, init containers) for the training data."""
    assert ws.tuning is not None
    assert ws.tuning.input is not None
    source = ws.tuning.input
    if source.volume_source:
        volume = {"name": "data", **copy.deepcopy(source.volume_source)}
        return [volume], [{"name": "data", "mountPath": DATA_DIR, "readOnly": True}], []
    volumes = [{"name": "data", "emptyDir": {}}]
    mount = {"name": "data", "mountPath": DATA_DIR}
    if source.urls:
        init: Obj = {
            "name": "data-downloader",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-m", "kaito_tuning.download", "--output", DATA_DIR],
            "args": list(source.urls),
            "volumeMounts": [mount],
        }
    else:
        init = {
            "name": "data-image",
            "image": source.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", f"cp -r /data/. {DATA_DIR}/"],
            "volumeMounts": [mount],
        }
    return volumes, [mount], [init]


def _output_parts(
    ws: Workspace, image: str, preset: str, plain_http: list[str]
) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(volumes, tuning-container mounts, sidecars) for the adapter; ``plain_http``: the
    pusher's ``--plain-http`` when the catalog says its registry is served over http."""
    assert ws.tuning is not None
    assert ws.tuning.output is not None
    dest = ws.tuning.output
    if dest.volume_source:
        volume = {"name": "output", **copy.deepcopy(dest.volume_source)}
        return [volume], [{"name": "output", "mountPath": OUTPUT_DIR}], []
    volumes: list[Obj] = [
        {"name": "output", "emptyDir": {}},
        {
            "name": "push-secret",
            "secret": {
                "secretName": dest.image_push_secret,
                "items": [{"key": DOCKER_CONFIG_KEY, "path": DOCKER_CONFIG_KEY}],
            },
        },
    ]
    mount = {"name": "output", "mountPath": OUTPUT_DIR}
    meta = ws.metadata
    pusher: Obj = {
        "name": PUSHER_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "python",
            "-m",
            "kaito_tuning.push",
            "--image",
            dest.image,
            "--source",
            OUTPUT_DIR,
            "--docker-config",
            f"{PUSH_SECRET_DIR}/{DOCKER_CONFIG_KEY}",
            "--secret-name",
            dest.image_push_secret,
            "--wait-for",
            f"{OUTPUT_DIR}/{COMPLETION_MARKER}",
            "--fail-marker",
            f"{OUTPUT_DIR}/{FAILURE_MARKER}",
            "--label",
            f"{LABEL_PRESET}={preset}",
            "--label",
            f"{LABEL_WORKSPACE}={meta.namespace}/{meta.name}",
            *plain_http,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            mount,
            {"name": "push-secret", "mountPath": PUSH_SECRET_DIR, "readOnly": True},
        ],
    }
    return volumes, [mount], [pusher]


def _tuning_command(ws: Workspace, *, model: str, pushes: bool) -> list[str]:
    assert ws.tuning is not None
    argv = [
        "python",
        "-m",
        "kaito_tuning",
        "--method",
        ws.tuning.method or "qlora",
        "--model",
        model,
        "--data",
        DATA_DIR,
        "--output",
        OUTPUT_DIR,
    ]
    if ws.tuning.config:
        argv += ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    if not pushes:
        return argv
    # Tell the pusher sidecar that the run failed, so that the Job fails rather than
    # the sidecar waiting forever for a completion marker.
    quoted = " ".join(argv)
    return [
        "/bin/sh",
        "-c",
        f"{quoted} || {{ rc=$?; touch {OUTPUT_DIR}/{FAILURE_MARKER}; exit $rc; }}",
    ]


def tuning_job(ws: Workspace, plan: WorkspacePlan, *, revision: str) -> tuple[Resource, Obj]:
    """The tuning Job of ``ws``, carrying its spec hash; the preset (its weights), the
    images and the GPUs per pod come from the reconcile's ``plan``."""
    assert ws.tuning is not None
    assert ws.tuning.preset is not None
    spec = ws.tuning.preset
    preset = plan.preset
    assert preset is not None, "resolve_plan resolves a tuning Workspace's preset"
    options = spec.options
    image = options.image if spec.access_mode == "private" and options.image else plan.images.tuning
    weights = plan.weights
    assert weights is not None, "resolve_plan resolves a tuning preset's weights"
    weight_volumes, fetchers, weight_mounts = podspec.weights_parts(weights, plan.images.inference)
    in_volumes, in_mounts, data_inits = _input_parts(ws, image)
    inits = [*fetchers, *data_inits]
    output = ws.tuning.output
    plain_http = plan.catalog.plain_http_args(output.image) if output and output.image else []
    out_volumes, out_mounts, sidecars = _output_parts(ws, image, preset.name, plain_http)
    shm, shm_mount = podspec.shm_volume()
    volumes = [shm, *weight_volumes, *in_volumes, *out_volumes]
    mounts = [shm_mount, *weight_mounts, *in_mounts, *out_mounts]
    if ws.tuning.config:
        volumes.append({"name": "config", "configMap": {"name": ws.tuning.config}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    container: Obj = {
        "name": TUNING_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": _tuning_command(ws, model=weights.model, pushes=bool(sidecars)),
        "resources": podspec.gpu_resources(plan.gpus_per_node),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pull_secrets = [*options.image_pull_secrets]
    if ws.tuning.input is not None:
        pull_secrets += ws.tuning.input.image_pull_secrets
    pod: Obj = {
        **podspec.scheduling(ws),
        "restartPolicy": "Never",
        "containers": [container, *sidecars],
        "volumes": volumes,
    }
    if inits:
        pod["initContainers"] = inits
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in dict.fromkeys(pull_secrets)]
    podspec.run_fetcher_as(ws, pod)
    job: Obj = {
        "apiVersion": JOBS.api_version,
        "kind": JOBS.kind,
        "metadata": podspec.object_meta(ws, ws.metadata.name),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {
                "metadata": {
                    "labels": podspec.pod_labels(ws),
                    "annotations": {ANNOTATION_REVISION: revision},
                },
                "spec": pod,
            },
        },
    }
    return JOBS, podspec.with_spec_hash(job)
