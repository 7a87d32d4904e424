"""The committed manifests are the generators' output, and the CRD has the promised shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kaito.api import crds
from kaito.controllers.workspace.admission import cli, manifests, webhook

REPO = Path(__file__).resolve().parents[3]


def test_committed_crd_is_current() -> None:
    assert crds.main(["--check", "--dir", str(REPO / "deploy" / "crds")]) == 0, (
        "run `python -m kaito.api.crds`"
    )
    path = REPO / "deploy" / "crds" / crds.WORKSPACE_CRD.file_name
    assert path.read_text() == crds.WORKSPACE_CRD.render()


def test_committed_webhook_manifests_are_current() -> None:
    assert cli.main(["manifests", "--check", "--repo-root", str(REPO)]) == 0, (
        "run `python -m kaito.controllers.workspace.admission manifests`"
    )
    assert (REPO / manifests.MANIFEST_PATH).read_text() == manifests.manifests_yaml()


def test_webhook_manifests_check_finds_a_stale_file_where_it_is_told(tmp_path: Path) -> None:
    """The generator writes where it is pointed (a repo root or a file), not beside itself."""
    assert cli.main(["manifests", "--check", "--repo-root", str(tmp_path)]) == 1
    assert cli.main(["manifests", "--repo-root", str(tmp_path)]) == 0
    assert cli.main(["manifests", "--check", "--repo-root", str(tmp_path)]) == 0
    out = tmp_path / "elsewhere.yaml"
    assert cli.main(["manifests", "--out", str(out)]) == 0
    assert out.read_text() == manifests.manifests_yaml()


def test_crd_serves_both_versions_with_one_schema_and_one_storage() -> None:
    crd = crds.WORKSPACE_CRD.crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "workspaces.kaito.sh"
    assert spec["names"]["shortNames"] == ["wk", "wks"]
    assert spec["scope"] == "Namespaced"
    assert spec["conversion"] == {"strategy": "None"}
    versions = {v["name"]: v for v in spec["versions"]}
    assert set(versions) == {"v1alpha1", "v1beta1"}
    assert all(v["served"] for v in versions.values())
    assert sum(v["storage"] for v in versions.values()) == 1
    assert versions["v1alpha1"]["schema"] == versions["v1beta1"]["schema"]
    assert all(v["subresources"] == {"status": {}} for v in versions.values())


def test_crd_has_no_spec_wrapper() -> None:
    props = crds.WORKSPACE_CRD.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]
    assert list(props) == [
        "apiVersion",
        "kind",
        "metadata",
        "resource",
        "inference",
        "tuning",
        "status",
    ]


def test_printer_columns_match_the_quick_start() -> None:
    columns = crds.WORKSPACE_CRD.crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"].upper() for c in columns] == [
        "INSTANCE",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACEREADY",
        "AGE",
    ]
    by_name = {c["name"]: c for c in columns}
    assert by_name["Instance"]["jsonPath"] == ".resource.instanceType"
    assert (
        by_name["WorkspaceReady"]["jsonPath"]
        == '.status.conditions[?(@.type=="WorkspaceReady")].status'
    )
    assert by_name["Age"]["type"] == "date"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crds.WORKSPACE_CRD.crd()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return schema


def test_schema_is_structural() -> None:
    """No references, unions or titles; every node typed (Kubernetes' structural rule)."""
    schema = crd_schema()
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & set(node), path
        assert "type" in node, f"{path} has no type"


def test_schema_defaults_only_meaningful_scalars() -> None:
    schema = crd_schema()
    defaults = {path: node["default"] for path, node in _walk(schema) if "default" in node}
    assert defaults == {
        ".resource.count": 1,
        ".resource.instanceType": "Standard_NC24ads_A100_v4",
        ".inference.preset.accessMode": "public",
        ".tuning.preset.accessMode": "public",
    }


def test_workspace_conditions_keep_metav1_strictness_and_merge_by_type() -> None:
    """The shared Condition model is lenient (the Machine's knative conditions fit it); the
    Workspace's list still requires what metav1.Condition requires."""
    conditions = dict(_walk(crd_schema()))[".status.conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == [
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    ]


def test_free_form_fields_keep_unknown_fields() -> None:
    schema = crd_schema()
    nodes = dict(_walk(schema))
    for path in (
        ".inference.template",
        ".tuning.input.volumeSource",
        ".tuning.output.volumeSource",
    ):
        assert nodes[path]["x-kubernetes-preserve-unknown-fields"] is True, path


def test_webhook_manifest_registers_create_and_update_of_both_versions() -> None:
    docs = list(yaml.safe_load_all(manifests.manifests_yaml()))
    service, config = docs
    assert service["kind"] == "Service"
    assert service["spec"]["ports"][0]["port"] == 443
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": ["kaito.sh"],
            "apiVersions": ["v1alpha1", "v1beta1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["workspaces"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"]["path"] == webhook.PATH
    assert "caBundle" not in hook["clientConfig"]  # the controller patches it in
