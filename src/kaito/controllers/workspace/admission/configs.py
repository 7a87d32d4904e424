"""Rules on the ConfigMaps a Workspace names: they exist, have the key, and parse.

"Parse" means the grammar shared with the images (``kaito_contracts``): what the
webhook admits here is what the inference server and the tuning job accept at run time.
The rule needs the cluster, so it takes a reader function: unit tests pass a dict, the
webhook passes the API client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.admission.fields import FieldError
from kaito_contracts import inference_config_problem, training_config_problem

INFERENCE_CONFIG_KEY = "inference_config.yaml"
TRAINING_CONFIG_KEY = "training_config.yaml"

ConfigMapReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]
"""``(namespace, name) -> ConfigMap object, or None when it does not exist``."""


def config_references(ws: Workspace) -> list[tuple[str, str, str]]:
    """``(field, ConfigMap name, key)`` for each ConfigMap the workspace names."""
    refs = []
    if ws.inference is not None and ws.inference.config:
        refs.append(("inference.config", ws.inference.config, INFERENCE_CONFIG_KEY))
    if ws.tuning is not None and ws.tuning.config:
        refs.append(("tuning.config", ws.tuning.config, TRAINING_CONFIG_KEY))
    return refs


async def check_configs(
    ws: Workspace, read: ConfigMapReader, *, only: Iterable[str] | None = None
) -> list[FieldError]:
    """The named ConfigMaps exist in the workspace's namespace, have the key, and parse."""
    wanted = set(only) if only is not None else None
    errors = []
    for field, name, key in config_references(ws):
        if wanted is not None and field not in wanted:
            continue
        where = f"ConfigMap {ws.metadata.namespace}/{name}"
        cm = await read(ws.metadata.namespace, name)
        if cm is None:
            errors.append(FieldError(field, f"{where} not found; create it before the workspace"))
            continue
        text = (cm.get("data") or {}).get(key)
        if text is None:
            errors.append(FieldError(field, f"{where} has no key {key}"))
            continue
        problem = (
            inference_config_problem(text)
            if key == INFERENCE_CONFIG_KEY
            else training_config_problem(text)
        )
        if problem:
            errors.append(FieldError(field, f"{key} in {where} {problem}"))
    return errors
