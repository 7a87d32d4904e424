"""What may not change on a Workspace, and what is checked again when it changes.

Rules that judge the spec against the catalog are not re-run on update: a preset
deprecated after the workspace was created must not block the controller's own
metadata updates (finalizer removal on delete).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from kaito.api.workspace import ANNOTATION_RUNTIME, DataSource, Workspace
from kaito.controllers.workspace.admission.fields import FieldError
from kaito.controllers.workspace.admission.inference import check_adapters
from kaito.controllers.workspace.admission.metadata import check_runtime_annotation


def _dump(model: Any) -> Any:
    return model.to_dict() if model is not None else None


def _dump_list(items: Sequence[Any]) -> list[Any]:
    return [_dump(i) for i in items]


def _show(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "unset"
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return str(value)


def _input_identity(source: DataSource | None) -> dict[str, Any] | None:
    """Which data a tuning job trains on: the set of URLs (order does not matter, as
    upstream sorts them), the image, the volume, and the name."""
    if source is None:
        return None
    return {
        "name": source.name,
        "urls": sorted(source.urls),
        "image": source.image,
        "volumeSource": source.volume_source,
    }


def _check_input_identity(new: DataSource | None, old: DataSource | None) -> list[FieldError]:
    """The input's identity is immutable (a Workspace names one training run); its pull
    credentials (``imagePullSecrets``) may change, e.g. to rotate an expired token."""
    before, after = _input_identity(old), _input_identity(new)
    if before == after:
        return []
    if before is None or after is None:
        return [FieldError("tuning.input", f"field is immutable (was {_show(before)})")]
    return [
        FieldError(
            f"tuning.input.{key}",
            f"field is immutable: it names the data this workspace tunes on "
            f"(was {_show(before[key])}, now {_show(after[key])}); create a new workspace "
            "to tune on other data",
        )
        for key in before
        if before[key] != after[key]
    ]


def check_update(ws: Workspace, old: Workspace) -> list[FieldError]:
    """Immutable fields, the inference/tuning kind, and the adapters when they change."""
    errors: list[FieldError] = []
    if (ws.inference is None) != (old.inference is None) or (ws.tuning is None) != (
        old.tuning is None
    ):
        was = "inference" if old.inference is not None else "tuning"
        errors.append(
            FieldError(
                "inference, tuning",
                f"a workspace cannot switch between inference and tuning (it was {was}); "
                "create a new workspace",
            )
        )

    def immutable(field: str, new: Any, before: Any) -> None:
        if new != before:
            errors.append(
                FieldError(field, f"field is immutable (was {_show(before)}, now {_show(new)})")
            )

    immutable("resource.count", ws.resource.count, old.resource.count)
    immutable("resource.instanceType", ws.resource.instance_type, old.resource.instance_type)
    immutable(
        "resource.labelSelector",
        _dump(ws.resource.label_selector),
        _dump(old.resource.label_selector),
    )
    if ws.inference is not None and old.inference is not None:
        immutable("inference.preset", _dump(ws.inference.preset), _dump(old.inference.preset))
        if (ws.inference.template is None) != (old.inference.template is None):
            errors.append(
                FieldError(
                    "inference.template",
                    "cannot be set or unset after creation (preset vs template)",
                )
            )
        if _dump_list(ws.inference.adapters) != _dump_list(old.inference.adapters):
            errors += check_adapters(ws.inference)
    if ws.tuning is not None and old.tuning is not None:
        immutable("tuning.preset", _dump(ws.tuning.preset), _dump(old.tuning.preset))
        immutable("tuning.method", ws.tuning.method, old.tuning.method)
        errors += _check_input_identity(ws.tuning.input, old.tuning.input)
    if ws.metadata.annotations.get(ANNOTATION_RUNTIME) != old.metadata.annotations.get(
        ANNOTATION_RUNTIME
    ):
        errors += check_runtime_annotation(ws)
    return errors
