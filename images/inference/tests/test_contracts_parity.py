"""The inference server's side of the contracts shared with the operator's webhook.

The cases are ``tests/contracts/fixtures.json`` at the repository's root, the very
ones the webhook's tests judge (``tests/unit/workspace/test_contracts_parity.py``): a
file the webhook admits parses here, on either engine, and one it refuses is refused
here with the same reason, so a user never learns at pod start what ``kubectl apply``
could have said.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import INFERENCE_DIR
from kaito_inference.config import ConfigError, parse_settings

FIXTURES = json.loads(
    (INFERENCE_DIR.parents[1] / "tests" / "contracts" / "fixtures.json").read_text("utf-8")
)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c["name"]) for c in FIXTURES["inferenceConfig"]]
)
@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_inference_config_verdicts(case: dict[str, Any], engine: str, tmp_path: Path) -> None:
    path = tmp_path / "inference_config.yaml"
    path.write_text(case["text"])
    argv = ["--model", "/m", "--engine", engine, "--config-file", str(path)]
    if case["valid"]:
        parse_settings(argv)
    else:
        with pytest.raises(ConfigError) as raised:
            parse_settings(argv)
        assert case.get("reason", "") in str(raised.value)
