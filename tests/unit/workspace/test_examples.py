"""Every example under examples/ passes the webhook's rules and builds its workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.admission.validation import validate
from kaito.controllers.workspace.plan import resolve_plan
from kaito.controllers.workspace.tuning.job import tuning_job
from kaito.controllers.workspace.workload.inference import inference_objects
from kaito.presets.catalog import load_catalog

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
BODIES = {p.stem: yaml.safe_load(p.read_text()) for p in EXAMPLES}


async def no_configmaps(namespace: str, name: str) -> dict[str, Any] | None:
    return None


def test_the_quick_starts_two_files_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"kaito_workspace_phi_3.yaml", "kaito_workspace_phi_3_with_adapters.yaml"} <= names


@pytest.mark.parametrize("name", sorted(BODIES))
async def test_example_is_admitted_and_builds(name: str) -> None:
    body = BODIES[name]
    body["metadata"].setdefault("namespace", "default")
    assert await validate(body, read_configmap=no_configmaps) == []
    ws = Workspace.model_validate(body)
    if ws.tuning is not None:
        _, job = tuning_job(ws, resolve_plan(ws, load_catalog()), revision="r")
        assert job["kind"] == "Job"
    else:
        plan = resolve_plan(ws, load_catalog())
        kinds = [b["kind"] for _, b in inference_objects(ws, plan, revision="r")]
        assert kinds[-1] == "Deployment"
