"""The fetcher's pod annotation ``kaito.sh/weights-progress`` against the real
kube-apiserver of the test control plane, as a ServiceAccount allowed only to get and
patch pods in its namespace (the RBAC the workload's ServiceAccount needs)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from kaito.runtime.client import Client
from kaito.runtime.resource import NAMESPACES, PODS, SERVICEACCOUNTS, Resource
from kaito_dev.controlplane import ControlPlaneState
from kaito_dev.hfhub import Fault, FaultKind, HubEmulator, Scope
from tests.integration.hfhub.conftest import REPO, Fetcher

ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")

pytestmark = pytest.mark.cluster


async def test_progress_is_patched_onto_the_pod_annotation(
    client: Client,
    control_plane: ControlPlaneState,
    hub: HubEmulator,
    model: Path,
    fetcher: Fetcher,
    tmp_path: Path,
) -> None:
    ns = f"fetch-{uuid.uuid4().hex[:6]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    try:
        await client.create(SERVICEACCOUNTS, {"metadata": {"name": "fetcher"}}, ns)
        await client.create(
            ROLES,
            {
                "metadata": {"name": "fetcher"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
            },
            ns,
        )
        await client.create(
            ROLEBINDINGS,
            {
                "metadata": {"name": "fetcher"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "fetcher",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "fetcher", "namespace": ns}],
            },
            ns,
        )
        pod = {
            "metadata": {"name": "inference-0"},
            "spec": {
                "serviceAccountName": "fetcher",
                "containers": [{"name": "server", "image": "kaito/inference:dev"}],
            },
        }
        await client.create(PODS, pod, ns)
        answer = await client.request(
            "POST",
            SERVICEACCOUNTS.path(namespace=ns, name="fetcher", subresource="token"),
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
        )
        sa_dir = tmp_path / "serviceaccount"
        sa_dir.mkdir()
        (sa_dir / "token").write_text(answer["status"]["token"])
        shutil.copyfile(control_plane.ca_file, sa_dir / "ca.crt")
        server = urlparse(control_plane.server)

        hub.publish(REPO, model)
        # ~1.5 s of download, so several reports happen before the final one.
        hub.inject(
            Fault(FaultKind.SLOW, scope=Scope.CONTENT, bytes_per_second=200 * 1024, times=None)
        )
        run = await fetcher.run(
            "--serviceaccount-dir", str(sa_dir), "--report-interval", "0.5",
            "--progress-interval", "0.25",
            env={
                "POD_NAME": "inference-0",
                "POD_NAMESPACE": ns,
                "KUBERNETES_SERVICE_HOST": str(server.hostname),
                "KUBERNETES_SERVICE_PORT": str(server.port),
            },
        )  # fmt: skip
        assert run.code == 0, run.stderr
        assert "progress report failed" not in run.stderr
        got = await client.get(PODS, "inference-0", ns)
        progress = json.loads(got["metadata"]["annotations"]["kaito.sh/weights-progress"])
        assert set(progress) == {"bytesDone", "bytesTotal", "bytesPerSecond", "updated"}
        assert progress["bytesDone"] == progress["bytesTotal"] > 300 * 1024
        assert progress["bytesPerSecond"] > 0
        assert progress["updated"].endswith("Z")
        reports = [line for line in run.stderr.splitlines() if '"weights progress"' in line]
        assert len(reports) >= 3
    finally:
        await client.delete(NAMESPACES, ns)


async def test_a_failing_report_never_fails_the_fetch(
    hub: HubEmulator, model: Path, fetcher: Fetcher, tmp_path: Path
) -> None:
    """In-cluster settings that point nowhere: the fetch logs the failure and succeeds."""
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text("t")
    (sa_dir / "ca.crt").write_text("not a certificate")
    hub.publish(REPO, model)
    run = await fetcher.run(
        "--serviceaccount-dir", str(sa_dir),
        env={"POD_NAME": "p", "POD_NAMESPACE": "n", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
             "KUBERNETES_SERVICE_PORT": "1"},
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "progress report failed" in run.stderr
