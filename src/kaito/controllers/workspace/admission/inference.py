"""Rules on ``inference``: preset or template, and the LoRA adapters."""

from __future__ import annotations

import math

from kaito.api.workspace import MAX_ADAPTERS, AdapterSpec, InferenceSpec
from kaito.controllers.workspace.admission.fields import DNS1123_SUBDOMAIN, FieldError, one_of
from kaito.controllers.workspace.admission.resource import check_preset
from kaito.presets.catalog import Catalog, Preset
from kaito_contracts.oci import ImageRef, RegistryError


def check_inference(inf: InferenceSpec, cat: Catalog) -> tuple[list[FieldError], Preset | None]:
    """Exactly one of preset and template, a known preset, valid adapters; and the preset."""
    errors: list[FieldError] = []
    count, given = one_of(
        [("preset", inf.preset is not None), ("template", inf.template is not None)]
    )
    if count != 1:
        errors.append(
            FieldError("inference", f"exactly one of preset and template must be set, got {given}")
        )
    preset = None
    if inf.preset is not None:
        preset_errors, preset = check_preset(inf.preset, "inference.preset", cat)
        errors += preset_errors
    errors += check_adapters(inf)
    return errors, preset


def check_adapters(inf: InferenceSpec) -> list[FieldError]:
    """Adapters: at most 10, named (unique DNS-1123 subdomains), a source, a strength in [0, 1]."""
    errors: list[FieldError] = []
    adapters = inf.adapters
    if not adapters:
        return errors
    if inf.preset is None:
        errors.append(
            FieldError(
                "inference.adapters",
                "adapters need inference.preset (a base model to load them on)",
            )
        )
    if len(adapters) > MAX_ADAPTERS:
        errors.append(
            FieldError(
                "inference.adapters",
                f"{len(adapters)} adapters given; at most {MAX_ADAPTERS} are allowed",
            )
        )
    seen: dict[str, int] = {}
    for i, adapter in enumerate(adapters):
        errors += _check_adapter(adapter, f"inference.adapters[{i}]", seen, i)
    return errors


def _check_adapter(
    adapter: AdapterSpec, path: str, seen: dict[str, int], index: int
) -> list[FieldError]:
    errors: list[FieldError] = []
    source = adapter.source
    if source is None:
        errors.append(
            FieldError(
                f"{path}.source", "required: an adapter needs a name and an image or volumeSource"
            )
        )
    else:
        name = source.name
        if not name:
            errors.append(FieldError(f"{path}.source.name", "required: the adapter's name"))
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            errors.append(
                FieldError(
                    f"{path}.source.name",
                    f'"{name}" is not a DNS-1123 subdomain: lower-case letters, digits, '
                    "'-' and '.', starting and ending with a letter or digit",
                )
            )
        elif name in seen:
            errors.append(
                FieldError(
                    f"{path}.source.name",
                    f'duplicate adapter name "{name}" (also inference.adapters[{seen[name]}])',
                )
            )
        else:
            seen[name] = index
        count, given = one_of(
            [("image", bool(source.image)), ("volumeSource", source.volume_source is not None)]
        )
        if source.image:
            try:
                ImageRef.parse(source.image)
            except RegistryError as e:
                errors.append(
                    FieldError(f"{path}.source.image", f"not a valid image reference: {e.message}")
                )
        if source.urls:
            errors.append(
                FieldError(
                    f"{path}.source.urls", "adapters come from an image or a volumeSource, not urls"
                )
            )
        elif count != 1:
            errors.append(
                FieldError(
                    f"{path}.source",
                    f"exactly one of image and volumeSource must be set, got {given}",
                )
            )
    if adapter.strength is not None:
        errors += _check_strength(adapter.strength, f"{path}.strength")
    return errors


def _check_strength(value: str, path: str) -> list[FieldError]:
    try:
        strength = float(value)
    except ValueError:
        strength = math.nan
    if not math.isfinite(strength):
        return [FieldError(path, f'"{value}" is not a number; use a float in [0, 1]')]
    if not 0.0 <= strength <= 1.0:
        return [FieldError(path, f"{value} is outside [0, 1]")]
    return []
