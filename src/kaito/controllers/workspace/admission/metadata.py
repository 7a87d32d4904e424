"""Rules on the Workspace's metadata: its name and the runtime annotation."""

from __future__ import annotations

from kaito.api.workspace import ANNOTATION_RUNTIME, Runtime, Workspace
from kaito.controllers.workspace.admission.fields import DNS1123_LABEL, FieldError


def check_name(ws: Workspace) -> list[FieldError]:
    """The name is a DNS-1123 label: it names the workspace's Services."""
    name = ws.metadata.name
    if len(name) <= 63 and DNS1123_LABEL.match(name):
        return []
    return [
        FieldError(
            "metadata.name",
            f'"{name}" is not a DNS-1123 label: at most 63 lower-case letters, digits '
            "and '-', starting and ending with a letter or digit (it names Services)",
        )
    ]


def check_runtime_annotation(ws: Workspace) -> list[FieldError]:
    """``kaito.sh/runtime``, when set, names a runtime (any case, spaces ignored)."""
    value = ws.metadata.annotations.get(ANNOTATION_RUNTIME)
    if value is None or value.strip().lower() in {r.value for r in Runtime}:
        return []
    choices = " or ".join(r.value for r in Runtime)
    return [
        FieldError(
            f"metadata.annotations[{ANNOTATION_RUNTIME}]",
            f'"{value}" is not a runtime; use {choices}',
        )
    ]
