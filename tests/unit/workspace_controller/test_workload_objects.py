"""The inference workload and the tuning Job a Workspace asks for: shapes, not I/O."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from kaito.api.workspace import ANNOTATION_REVISION, Workspace
from kaito.controllers.workspace import podspec
from kaito.controllers.workspace.plan import resolve_plan
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects, multi_node_refusal
from kaito.presets.catalog import load_catalog
from kaito.runtime.resource import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
REV = "a" * 64
CATALOG = load_catalog()
PHI3_REVISION = "0a67737cc96d2554230f90338b163bc6380a2a85"

Obj = dict[str, Any]

FETCHER_ACCESS = [SERVICEACCOUNTS, ROLES, ROLEBINDINGS]
"""Applied first for every preset whose weights are fetched: the pods run as it."""
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_TOKEN = {"name": "no-api-token", "mountPath": TOKEN_DIR, "readOnly": True}


def workspace(body: Obj, namespace: str = "default") -> Workspace:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace, "uid": "u-1"}}
    return Workspace.model_validate(body)


def example(name: str) -> Workspace:
    return workspace(yaml.safe_load((EXAMPLES / name).read_text()))


def by_kind(objs: list[tuple[Any, Obj]]) -> dict[str, Obj]:
    return {body["kind"]: body for _, body in objs}


def test_quick_start_runs_a_deployment_with_all_gpus_probes_and_gpu_scheduling() -> None:
    ws = example("kaito_workspace_phi_3.yaml")
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    assert [r for r, _ in objs] == [*FETCHER_ACCESS, CONFIGMAPS, SERVICES, DEPLOYMENTS]
    kinds = by_kind(objs)
    dep = kinds["Deployment"]
    assert dep["metadata"]["name"] == "workspace-phi-3-mini"
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Workspace",
        "workspace-phi-3-mini",
        "u-1",
        True,
    )
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"][ANNOTATION_REVISION] == REV
    # V100 cannot run vLLM: the transformers engine, and the template says why.
    assert template["metadata"]["annotations"]["kaito.sh/runtime-selected"].startswith(
        "transformers: Standard_NC6s_v3 has V100"
    )
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    cmd = container["command"]
    assert cmd[:3] == ["python", "-m", "kaito_inference"]
    assert cmd[cmd.index("--engine") + 1] == "transformers"
    assert cmd[cmd.index("--served-model-name") + 1] == "phi-3-mini-4k-instruct"
    assert cmd[cmd.index("--dtype") + 1] == "float16"  # bfloat16 lowered on V100
    assert cmd[cmd.index("--config-file") + 1] == "/mnt/config/inference_config.yaml"
    assert "--enable-lora" not in cmd
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 5000, "scheme": "HTTP"}
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        >= 30 * 60
    )
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "apps", "operator": "In", "values": ["phi-3"]}]}
    ]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"

    svc = kinds["Service"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 5000, "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == {"kaito.sh/workspace": "workspace-phi-3-mini"}
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["inference_config.yaml"])
    assert config == {"transformers": {"dtype": "bfloat16", "max_model_len": 4096}}
    for _, body in objs:
        assert body["metadata"]["labels"] == {
            "kaito.sh/workspace": "workspace-phi-3-mini",
            "kaito.sh/workspacenamespace": "default",
        }
        assert len(body["metadata"]["annotations"][podspec.ANNOTATION_SPEC_HASH]) == 16


def test_adapter_image_is_pulled_by_an_init_container_running_the_server_image() -> None:
    ws = example("kaito_workspace_phi_3_with_adapters.yaml")
    pod = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["Deployment"][
        "spec"
    ]["template"]["spec"]
    fetch, init = pod["initContainers"]
    assert fetch["name"] == "fetch-weights"  # the weights first, then the adapters
    (container,) = pod["containers"]
    # The adapter image has no shell: our puller (in the server's image) fetches it.
    assert init["image"] == container["image"]
    assert init["command"] == [
        "python",
        "-m",
        "kaito_inference.adapter_pull",
        "--image",
        "myacr.azurecr.io/adapter:0.0.1",
        "--dest",
        "/mnt/adapter/phi-3-adapter",
    ]
    assert init["volumeMounts"] == [{"name": "adapters", "mountPath": "/mnt/adapter"}, NO_TOKEN]
    assert "imagePullSecrets" not in pod
    assert container["env"] == [{"name": "phi-3-adapter", "value": "1.0"}]
    cmd = container["command"]
    assert cmd[cmd.index("--adapters-dir") + 1] == "/mnt/adapter"
    assert "--enable-lora" in cmd
    assert {"name": "adapters", "mountPath": "/mnt/adapter"} in container["volumeMounts"]


def test_adapter_pull_secrets_are_mounted_for_the_puller_not_given_to_kubelet() -> None:
    ws = example("kaito_workspace_phi_3_with_adapters.yaml")
    body = ws.model_dump(by_alias=True, exclude_none=True)
    first = body["inference"]["adapters"][0]
    first["source"]["imagePullSecrets"] = ["acr-pull", "acr-pull"]
    second = {
        "source": {
            "name": "b",
            "image": "myacr.azurecr.io/b:1",
            "imagePullSecrets": ["acr-pull", "other"],
        }
    }
    body["inference"]["adapters"].append(second)
    ws = workspace(body)
    pod = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["Deployment"][
        "spec"
    ]["template"]["spec"]
    assert "imagePullSecrets" not in pod  # kubelet never pulls an adapter image
    _fetch, first_init, second_init = pod["initContainers"]
    assert first_init["command"][-2:] == [
        "--docker-config",
        "/mnt/pull-secrets/acr-pull/.dockerconfigjson",
    ]
    assert second_init["command"][-4:] == [
        "--docker-config",
        "/mnt/pull-secrets/acr-pull/.dockerconfigjson",
        "--docker-config",
        "/mnt/pull-secrets/other/.dockerconfigjson",
    ]
    assert {"name": "pull-secret-1", "mountPath": "/mnt/pull-secrets/other", "readOnly": True} in (
        second_init["volumeMounts"]
    )
    secrets = [v for v in pod["volumes"] if "secret" in v]
    assert secrets == [
        {
            "name": "pull-secret-0",
            "secret": {
                "secretName": "acr-pull",
                "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
            },
        },
        {
            "name": "pull-secret-1",
            "secret": {
                "secretName": "other",
                "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
            },
        },
    ]
    (container,) = pod["containers"]
    assert all("pull-secret" not in m["name"] for m in container["volumeMounts"])


def test_adapter_from_a_volume_is_mounted_read_only_under_its_name() -> None:
    ws = example("kaito_workspace_phi_3_with_adapters.yaml")
    body = ws.model_dump(by_alias=True, exclude_none=True)
    body["inference"]["adapters"][0]["source"] = {
        "name": "tuned",
        "volumeSource": {"hostPath": {"path": "/srv/adapters/tuned"}},
    }
    body["inference"]["adapters"][0]["strength"] = "0.5"
    ws2 = workspace(body)
    pod = by_kind(inference_objects(ws2, resolve_plan(ws2, CATALOG), revision=REV))["Deployment"][
        "spec"
    ]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-weights"]
    assert {"name": "adapter-0", "hostPath": {"path": "/srv/adapters/tuned"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "adapter-0", "mountPath": "/mnt/adapter/tuned", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert container["env"] == [{"name": "tuned", "value": "0.5"}]


def test_a_distributed_preset_on_several_nodes_is_a_statefulset_with_a_headless_service() -> None:
    ws = workspace(
        {
            "metadata": {"name": "llama-70b", "annotations": {}},
            "resource": {
                "instanceType": "Standard_NC96ads_A100_v4",
                "count": 2,
                "labelSelector": {"matchLabels": {"apps": "llama"}},
            },
            "inference": {"preset": {"name": "llama-3.3-70b-instruct"}},
        }
    )
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    assert [r for r, _ in objs] == [*FETCHER_ACCESS, CONFIGMAPS, SERVICES, SERVICES, STATEFULSETS]
    main, headless, sts = objs[4][1], objs[5][1], objs[6][1]
    assert main["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "llama-70b-0"
    assert [p["port"] for p in main["spec"]["ports"]] == [80, 29500]
    assert headless["metadata"]["name"] == "llama-70b-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == "llama-70b-headless"
    assert sts["spec"]["replicas"] == 2
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    assert cmd[cmd.index("--engine") + 1] == "vllm"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4"
    assert cmd[cmd.index("--pipeline-parallel-size") + 1] == "2"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_a_statefulsets_pods_form_one_group_pod_0_first_each_rank_from_its_name() -> None:
    ws = workspace(
        {
            "metadata": {"name": "llama-70b", "annotations": {}},
            "resource": {
                "instanceType": "Standard_NC48ads_A100_v4",
                "count": 2,
                "labelSelector": {"matchLabels": {"apps": "llama"}},
            },
            "inference": {"preset": {"name": "llama-3.3-70b-instruct"}},
        },
        namespace="models",
    )
    sts = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    # TP = the GPUs of one node (the SKU's 2), PP = the nodes.
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--pipeline-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--group-hosts") + 1] == (
        "llama-70b-0.llama-70b-headless.models.svc,llama-70b-1.llama-70b-headless.models.svc"
    )
    assert cmd[cmd.index("--group-port") + 1] == "29500"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_each_pods_command_parses_with_the_server_into_its_rank_of_one_vllm_group() -> None:
    """Contract across programs: the StatefulSet's argv, read by the server's parser with
    each pod's name, gives vLLM's multi-node arguments for that pod's rank."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "images" / "inference"))
    from kaito_inference.config import parse_settings
    from kaito_inference.group import make_group

    ws = workspace(
        {
            "metadata": {"name": "llama-70b", "annotations": {}},
            "resource": {
                "instanceType": "Standard_NC48ads_A100_v4",
                "count": 3,
                "labelSelector": {"matchLabels": {"apps": "llama"}},
            },
            "inference": {"preset": {"name": "llama-3.3-70b-instruct"}},
        },
        namespace="models",
    )
    sts = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    argv = container["command"][len(CATALOG.defaults.command) :]
    at = argv.index("--config-file")  # the mounted ConfigMap, not here
    settings = parse_settings(argv[:at] + argv[at + 2 :])
    assert settings.engine_extra["pipeline_parallel_size"] == 3
    assert settings.tensor_parallel_size == 2
    for rank in range(3):
        group = make_group(
            settings.group_hosts,
            settings.group_rank,
            settings.group_port,
            settings.port,
            pod_name=f"llama-70b-{rank}",
        )
        assert group is not None
        assert group.vllm_args() == {
            "distributed_executor_backend": "mp",
            "nnodes": 3,
            "node_rank": rank,
            "master_addr": "llama-70b-0.llama-70b-headless.models.svc",
            "master_port": 29500,
        }


def test_a_deployment_has_no_group() -> None:
    ws = example("kaito_workspace_phi_3.yaml")
    deploy = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--group-hosts" not in container["command"]
    assert "POD_NAME" not in [e["name"] for e in container.get("env", [])]


def test_load_balancer_annotation_and_runtime_annotation() -> None:
    body = yaml.safe_load((EXAMPLES / "kaito_workspace_phi_3.yaml").read_text())
    body["metadata"]["annotations"] = {"kaito.sh/enablelb": "True", "kaito.sh/runtime": "vllm"}
    body["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    ws = workspace(body)
    kinds = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))
    assert kinds["Service"]["spec"]["type"] == "LoadBalancer"
    cmd = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--engine") + 1] == "vllm"
    assert "--gpu-memory-utilization" in cmd


def test_a_custom_template_keeps_its_containers_and_gains_gpu_scheduling() -> None:
    ws = workspace(
        {
            "metadata": {"name": "custom"},
            "resource": {
                "instanceType": "Standard_NC6s_v3",
                "labelSelector": {"matchLabels": {"apps": "custom"}},
            },
            "inference": {
                "template": {
                    "metadata": {"labels": {"team": "a"}},
                    "spec": {"containers": [{"name": "srv", "image": "my/image:1"}]},
                }
            },
        }
    )
    objs = inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV)
    assert [r for r, _ in objs] == [SERVICES, DEPLOYMENTS]
    template = objs[1][1]["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "a"
    assert template["metadata"]["labels"]["kaito.sh/workspace"] == "custom"
    assert template["spec"]["containers"] == [{"name": "srv", "image": "my/image:1"}]
    assert template["spec"]["tolerations"]


def test_spec_hash_changes_with_the_revision_and_only_then() -> None:
    ws = example("kaito_workspace_phi_3.yaml")
    one = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["Deployment"]
    again = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))["Deployment"]
    other = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision="b" * 64))[
        "Deployment"
    ]
    assert podspec.live_spec_hash(one) == podspec.live_spec_hash(again)
    assert podspec.live_spec_hash(one) != podspec.live_spec_hash(other)


def tuning_workspace(input_: Obj, output: Obj, **extra: Any) -> Workspace:
    return workspace(
        {
            "metadata": {"name": "tune-phi-3"},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"apps": "tune"}},
            },
            "tuning": {
                "preset": {"name": "phi-3-mini-4k-instruct"},
                "method": "qlora",
                "input": input_,
                "output": output,
                **extra,
            },
        }
    )


def test_tuning_with_urls_downloads_then_pushes_with_a_sidecar() -> None:
    ws = tuning_workspace(
        {"urls": ["https://example.com/data.jsonl"]},
        {"image": "myacr.azurecr.io/out:0.0.1", "imagePushSecret": "acr-secret"},
        config="my-training-config",
    )
    res, job = tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)
    assert res is JOBS
    assert job["metadata"]["name"] == "tune-phi-3"
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    fetch, init = pod["initContainers"]
    assert fetch["name"] == "fetch-weights"
    assert fetch["image"] == "ghcr.io/kaito-project/kaito-python/inference:0.1.0"
    assert init["command"] == ["python", "-m", "kaito_tuning.download", "--output", "/mnt/data"]
    assert init["args"] == ["https://example.com/data.jsonl"]
    tuning, pusher = pod["containers"]
    assert tuning["image"] == init["image"] == "ghcr.io/kaito-project/kaito-python/tuning:0.1.0"
    script = tuning["command"][-1]
    assert script.startswith(
        "python -m kaito_tuning --method qlora --model /var/lib/kaito/models/"
        f"microsoft--Phi-3-mini-4k-instruct@{PHI3_REVISION} --data /mnt/data "
        "--output /mnt/output --config /mnt/config/training_config.yaml || "
    )
    assert tuning["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert script.endswith("|| { rc=$?; touch /mnt/output/kaito_tuning_failed; exit $rc; }")
    assert pusher["image"] == tuning["image"]  # the tuning image carries kaito_tuning.push
    assert pusher["command"] == [
        "python",
        "-m",
        "kaito_tuning.push",
        "--image",
        "myacr.azurecr.io/out:0.0.1",
        "--source",
        "/mnt/output",
        "--docker-config",
        "/mnt/push-secret/.dockerconfigjson",
        "--secret-name",
        "acr-secret",
        "--wait-for",
        "/mnt/output/kaito_tuning_complete.json",
        "--fail-marker",
        "/mnt/output/kaito_tuning_failed",
        "--label",
        "kaito.sh/preset=phi-3-mini-4k-instruct",
        "--label",
        "kaito.sh/workspace=default/tune-phi-3",
    ]
    assert pusher["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "push-secret", "mountPath": "/mnt/push-secret", "readOnly": True} in pusher[
        "volumeMounts"
    ]
    assert {"name": "output", "mountPath": "/mnt/output"} in pusher["volumeMounts"]
    assert {
        "name": "push-secret",
        "secret": {
            "secretName": "acr-secret",
            "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
        },
    } in pod["volumes"]
    assert {"name": "config", "configMap": {"name": "my-training-config"}} in pod["volumes"]


def test_tuning_with_volumes_mounts_them_and_runs_the_tuner_directly() -> None:
    ws = tuning_workspace(
        {"volumeSource": {"hostPath": {"path": "/srv/data"}}},
        {"volumeSource": {"hostPath": {"path": "/srv/out"}}},
    )
    _, job = tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-weights"]
    (tuning,) = pod["containers"]
    assert tuning["command"] == [
        "python",
        "-m",
        "kaito_tuning",
        "--method",
        "qlora",
        "--model",
        f"/var/lib/kaito/models/microsoft--Phi-3-mini-4k-instruct@{PHI3_REVISION}",
        "--data",
        "/mnt/data",
        "--output",
        "/mnt/output",
    ]
    assert {"name": "data", "hostPath": {"path": "/srv/data"}} in pod["volumes"]
    assert {"name": "output", "mountPath": "/mnt/output"} in tuning["volumeMounts"]
    assert {"name": "data", "mountPath": "/mnt/data", "readOnly": True} in tuning["volumeMounts"]


def test_a_fetching_pod_runs_as_the_workspaces_fetcher_whose_role_may_only_get_and_patch_pods() -> (
    None
):
    ws = example("kaito_workspace_phi_3.yaml")
    objs = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))
    name = f"{ws.metadata.name}-weights-fetcher"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        meta = objs[kind]["metadata"]
        assert meta["name"] == name
        assert meta["namespace"] == "default"
        assert meta["ownerReferences"][0]["uid"] == "u-1"  # garbage-collected with it
        assert meta["annotations"][podspec.ANNOTATION_SPEC_HASH]
    assert objs["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
    ]
    binding = objs["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    assert {"name": "no-api-token", "emptyDir": {}} in pod["volumes"]


def test_only_the_fetch_sees_the_fetchers_token_every_other_container_shadows_it() -> None:
    ws = example("kaito_workspace_phi_3.yaml")
    body = ws.model_dump(by_alias=True, mode="json", exclude_none=True)
    body["inference"]["adapters"] = [
        {"source": {"name": "a1", "image": "registry.example/a1:v1"}, "strength": "0.5"}
    ]
    ws = workspace(body)
    objs = by_kind(inference_objects(ws, resolve_plan(ws, CATALOG), revision=REV))
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}
    assert set(containers) == {"fetch-weights", "adapter-0", "inference"}
    for name, c in containers.items():
        shadowed = NO_TOKEN in c["volumeMounts"]
        assert shadowed == (name != "fetch-weights"), name


def test_a_tuning_pod_that_fetches_runs_as_the_fetcher_too() -> None:
    ws = example("kaito_workspace_tuning_phi_3.yaml")
    _res, job = tuning_job(ws, resolve_plan(ws, CATALOG), revision=REV)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{ws.metadata.name}-weights-fetcher"
    for c in [*pod["initContainers"], *pod["containers"]]:
        if c["name"] == "fetch-weights":
            assert NO_TOKEN not in c["volumeMounts"]
        else:
            assert NO_TOKEN in c["volumeMounts"]


def test_a_custom_template_or_an_image_with_its_weights_fetches_nothing_and_gets_no_identity() -> (
    None
):
    ws = example("kaito_workspace_phi_3.yaml")
    body = ws.model_dump(by_alias=True, mode="json", exclude_none=True)
    body["inference"]["preset"]["accessMode"] = "private"
    body["inference"]["preset"]["presetOptions"] = {"image": "registry.example/phi-3:mine"}
    private = workspace(body)
    objs = inference_objects(private, resolve_plan(private, CATALOG), revision=REV)
    assert [r for r, _ in objs] == [CONFIGMAPS, SERVICES, DEPLOYMENTS]
    pod = by_kind(objs)["Deployment"]["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert all(v["name"] != "no-api-token" for v in pod["volumes"])


def test_a_model_split_across_nodes_is_refused_when_the_transformers_engine_is_chosen() -> None:
    body: Obj = {
        "metadata": {"name": "llama-70b", "annotations": {}},
        "resource": {
            "instanceType": "Standard_NC48ads_A100_v4",
            "count": 2,
            "labelSelector": {"matchLabels": {"apps": "llama"}},
        },
        "inference": {"preset": {"name": "llama-3.3-70b-instruct"}},
    }
    assert multi_node_refusal(workspace(body), resolve_plan(workspace(body), CATALOG)) is None
    body["inference"]["adapters"] = [
        {"source": {"name": "a", "image": "registry.example/a:1"}, "strength": "0.5"}
    ]
    ws = workspace(body)
    refusal = multi_node_refusal(ws, resolve_plan(ws, CATALOG))
    assert refusal is not None
    assert refusal.startswith(
        "preset llama-3.3-70b-instruct on 2 nodes needs the vLLM engine to split the model"
    )
    assert "an adapter has a strength other than 1" in refusal
