"""Every admission rule for Workspaces (WORKSPACE.md, "Validation"): the whole review.

The webhook (``webhook.py``) is transport; the rules are plain functions so they can be
tested one by one without TLS, and the same code answers the apiserver. This module
parses the object and runs the rules, which live by concept beside it:

- ``metadata``: the name and the runtime annotation;
- ``resource``: the preset and the GPUs it needs;
- ``inference``: preset or template, adapters;
- ``tuning``: method, input (URLs by the shared URL policy), output;
- ``configs``: the ConfigMaps named, judged by the config grammar shared with the
  images (``kaito_contracts``);
- ``update``: immutable fields.

The CRD's OpenAPI schema already rejects wrong types and missing required fields
before the webhook is called; these rules cover what a schema cannot say: known
presets and SKUs, enough GPUs, one-of choices, safe URLs, ConfigMaps that parse, and
immutable fields. Every error is a `FieldError` naming its field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from kaito.api.workspace import Workspace
from kaito.controllers.workspace.admission.configs import (
    ConfigMapReader,
    check_configs,
    config_references,
)
from kaito.controllers.workspace.admission.fields import FieldError, one_of
from kaito.controllers.workspace.admission.inference import check_inference
from kaito.controllers.workspace.admission.metadata import check_name, check_runtime_annotation
from kaito.controllers.workspace.admission.resource import (
    check_label_selector,
    check_resource,
    resource_warnings,
)
from kaito.controllers.workspace.admission.tuning import check_tuning
from kaito.controllers.workspace.admission.update import check_update
from kaito.presets.catalog import Catalog, Preset, load_catalog
from kaito.presets.skus import GpuSku

__all__ = ["ConfigMapReader", "FieldError", "check_create", "parse", "validate", "warnings"]


def parse(obj: dict[str, Any]) -> tuple[Workspace | None, list[FieldError]]:
    """The object as a `Workspace`, or the type errors (which the CRD schema should
    already have caught; they still come back as field errors, never as a crash)."""
    try:
        return Workspace.model_validate(obj), []
    except ValidationError as e:
        errors = []
        for err in e.errors():
            path = "".join(
                f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                for i, p in enumerate(err["loc"])
            )
            errors.append(FieldError(path or "(root)", err["msg"]))
        return None, errors


def check_create(
    ws: Workspace,
    *,
    catalog: Catalog | None = None,
    sku_lookup: Callable[[str], GpuSku | None] | None = None,
) -> list[FieldError]:
    """The rules for a new Workspace (everything but ConfigMaps, see `check_configs`).

    The presets and SKUs come from ``catalog`` (default: the packaged one);
    ``sku_lookup`` overrides its SKU table, for rules tested against made-up sizes.
    """
    cat = catalog or load_catalog()
    lookup = sku_lookup or cat.sku
    errors = check_name(ws) + check_runtime_annotation(ws)
    count, given = one_of(
        [("inference", ws.inference is not None), ("tuning", ws.tuning is not None)]
    )
    if count != 1:
        errors.append(
            FieldError(
                "inference, tuning", f"exactly one of inference and tuning must be set, got {given}"
            )
        )
    preset: Preset | None = None
    if ws.inference is not None:
        inf_errors, preset = check_inference(ws.inference, cat)
        errors += inf_errors
    if ws.tuning is not None:
        tun_errors, tuning_preset = check_tuning(ws, ws.tuning, cat)
        errors += tun_errors
        preset = preset or tuning_preset
    errors += check_resource(ws, preset, lookup) + check_label_selector(ws)
    return errors


def warnings(obj: dict[str, Any], *, catalog: Catalog | None = None) -> list[str]:
    """What is admitted but unchecked (kubectl prints these as ``Warning:`` lines)."""
    ws, errors = parse(obj)
    if ws is None or errors:
        return []
    return resource_warnings(ws, (catalog or load_catalog()).sku)


async def validate(
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    read_configmap: ConfigMapReader,
    catalog: Catalog | None = None,
) -> list[FieldError]:
    """All errors for creating ``obj`` (``old`` None) or updating ``old`` to ``obj``.

    On update, only the ConfigMaps whose reference changed are read again: one that
    was valid when named may since have been edited by its owner, and an unrelated
    update (a label, the finalizer) must not be blocked by it.
    """
    ws, errors = parse(obj)
    if ws is None:
        return errors
    if old is None:
        return check_create(ws, catalog=catalog) + await check_configs(ws, read_configmap)
    before, _ = parse(old)
    if before is None:  # stored before the schema tightened: judge it as a new object
        return check_create(ws, catalog=catalog)
    errors = check_update(ws, before)
    old_refs = {field: name for field, name, _ in config_references(before)}
    changed = [field for field, name, _ in config_references(ws) if old_refs.get(field) != name]
    if changed:
        errors += await check_configs(ws, read_configmap, only=changed)
    return errors
