"""The webhook's side of the contracts shared with the images (``kaito_contracts``).

``tests/contracts/fixtures.json`` holds the cases; the inference and tuning images run
the same cases through their own parsers and downloader
(``images/*/tests/test_contracts_parity.py``). Here every case goes through `validate`,
the webhook's whole review: a ConfigMap holding the file, a tuning workspace with the
URL as its input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaito.controllers.workspace.admission.validation import validate
from tests.unit.workspace.specs import QUICK_START, TUNING, workspace

FIXTURES = json.loads(
    (Path(__file__).parents[2] / "contracts" / "fixtures.json").read_text(encoding="utf-8")
)


def cases(kind: str) -> list[Any]:
    return [pytest.param(case, id=case.get("name") or case["url"]) for case in FIXTURES[kind]]


async def review(obj: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> list[str]:
    async def read(namespace: str, name: str) -> dict[str, Any] | None:
        return configmaps.get(name)

    return [str(e) for e in await validate(obj, read_configmap=read)]


def assert_verdict(case: dict[str, Any], errors: list[str], field: str) -> None:
    ours = [e for e in errors if e.startswith(f"{field}:")]
    assert len(ours) == len(errors), errors  # nothing else in the workspace is wrong
    if case["valid"]:
        assert ours == []
    else:
        assert len(ours) == 1, ours
        assert case.get("reason", "") in ours[0], ours[0]


@pytest.mark.parametrize("case", cases("inferenceConfig"))
async def test_inference_config_verdicts(case: dict[str, Any]) -> None:
    obj = workspace(QUICK_START, inference__config="params")
    errors = await review(obj, {"params": {"data": {"inference_config.yaml": case["text"]}}})
    assert_verdict(case, errors, "inference.config")


@pytest.mark.parametrize("case", cases("trainingConfig"))
async def test_training_config_verdicts(case: dict[str, Any]) -> None:
    obj = workspace(TUNING, tuning__config="params")
    errors = await review(obj, {"params": {"data": {"training_config.yaml": case["text"]}}})
    assert_verdict(case, errors, "tuning.config")


@pytest.mark.parametrize("case", cases("urls"))
async def test_url_verdicts(case: dict[str, Any]) -> None:
    obj = workspace(TUNING, tuning__input={"urls": [case["url"]]})
    assert_verdict(case, await review(obj, {}), "tuning.input.urls[0]")


def test_the_fixtures_cover_both_verdicts_and_the_wireserver() -> None:
    for kind in ("inferenceConfig", "trainingConfig", "urls"):
        assert {c["valid"] for c in FIXTURES[kind]} == {True, False}, kind
    urls = {c["url"]: c for c in FIXTURES["urls"]}
    assert urls["https://168.63.129.16/machine?comp=goalstate"]["valid"] is False
