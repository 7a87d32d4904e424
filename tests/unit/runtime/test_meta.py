"""The shared ObjectMeta and Condition models read both condition styles and dump for the API."""

from __future__ import annotations

from datetime import UTC, datetime

from kaito.runtime.meta import Condition, ObjectMeta


def test_a_knative_condition_without_reason_or_message_parses() -> None:
    cond = Condition.model_validate(
        {"type": "Ready", "status": "False", "severity": "Error", "lastTransitionTime": None}
    )
    assert (cond.reason, cond.message, cond.severity) == ("", "", "Error")
    assert cond.last_transition_time is None


def test_a_metav1_condition_parses_with_its_time_and_generation() -> None:
    cond = Condition.model_validate(
        {
            "type": "ResourceReady",
            "status": "True",
            "reason": "Ready",
            "message": "all nodes ready",
            "lastTransitionTime": "2024-05-01T10:00:00Z",
            "observedGeneration": 3,
        }
    )
    assert cond.last_transition_time == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert cond.observed_generation == 3 and cond.severity is None


def test_to_dict_writes_camel_case_rfc3339_and_leaves_out_what_is_unset() -> None:
    cond = Condition(
        type="Ready", status="True", last_transition_time=datetime(2024, 5, 1, tzinfo=UTC)
    )
    assert cond.to_dict() == {
        "type": "Ready",
        "status": "True",
        "reason": "",
        "message": "",
        "lastTransitionTime": "2024-05-01T00:00:00Z",
    }


def test_object_meta_reads_the_apiservers_metadata_and_ignores_the_rest() -> None:
    meta = ObjectMeta.model_validate(
        {
            "name": "ws1",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 2,
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "deletionTimestamp": "2024-05-01T11:00:00Z",
            "finalizers": ["karpenter.sh/termination"],
            "managedFields": [{"manager": "kubectl"}],
        }
    )
    assert (meta.name, meta.namespace, meta.resource_version, meta.generation) == (
        "ws1",
        "",
        "42",
        2,
    )
    assert meta.deletion_timestamp == datetime(2024, 5, 1, 11, tzinfo=UTC)
    assert "managedFields" not in meta.to_dict()
    assert ObjectMeta(name="m").to_dict() == {
        "name": "m",
        "namespace": "",
        "labels": {},
        "annotations": {},
        "finalizers": [],
    }
