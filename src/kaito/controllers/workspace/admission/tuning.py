"""Rules on ``tuning``: method, a preset that supports tuning, input, output, one node.

Input URLs are judged by the URL policy shared with the tuning image's downloader
(``kaito_contracts``), which checks them again when it connects.
"""

from __future__ import annotations

from kaito.api.workspace import DataDestination, DataSource, TuningMethod, TuningSpec, Workspace
from kaito.controllers.workspace.admission.fields import FieldError, one_of
from kaito.controllers.workspace.admission.resource import check_preset
from kaito.presets.catalog import Catalog, Preset
from kaito_contracts import url_problem
from kaito_contracts.oci import ImageRef, RegistryError


def check_tuning(
    ws: Workspace, tuning: TuningSpec, cat: Catalog
) -> tuple[list[FieldError], Preset | None]:
    """The tuning rules, and the preset (None when it is unknown)."""
    errors: list[FieldError] = []
    methods = " or ".join(m.value for m in TuningMethod)
    if not tuning.method:
        errors.append(FieldError("tuning.method", f"required: {methods}"))
    elif tuning.method not in {m.value for m in TuningMethod}:
        errors.append(
            FieldError("tuning.method", f'"{tuning.method}" is not a tuning method; use {methods}')
        )
    preset_errors, preset = check_preset(tuning.preset, "tuning.preset", cat)
    errors += preset_errors
    if preset is not None and not preset.tuning:
        able = ", ".join(n for n in cat.names() if cat.presets[n].tuning)
        errors.append(
            FieldError(
                "tuning.preset.name",
                f"preset {preset.name} does not support tuning; presets that do: {able}",
            )
        )
    errors += check_input(tuning.input)
    errors += check_output(tuning.output)
    if ws.resource.count != 1:
        errors.append(
            FieldError("resource.count", f"tuning runs on one node; got {ws.resource.count}")
        )
    return errors, preset


def check_input(source: DataSource | None) -> list[FieldError]:
    """Exactly one of urls, image and volumeSource; every URL allowed by the URL policy."""
    if source is None:
        return [FieldError("tuning.input", "required: exactly one of urls, image and volumeSource")]
    count, given = one_of(
        [
            ("urls", bool(source.urls)),
            ("image", bool(source.image)),
            ("volumeSource", source.volume_source is not None),
        ]
    )
    if count != 1:
        return [
            FieldError(
                "tuning.input",
                f"exactly one of urls, image and volumeSource must be set, got {given}",
            )
        ]
    errors = image_ref_errors("tuning.input.image", source.image)
    for i, url in enumerate(source.urls):
        problem = url_problem(url)
        if problem:
            errors.append(FieldError(f"tuning.input.urls[{i}]", problem))
    return errors


def image_ref_errors(field: str, image: str | None) -> list[FieldError]:
    """``image`` parses by the OCI reference grammar the images use (`ImageRef`)."""
    if not image:
        return []
    try:
        ImageRef.parse(image)
    except RegistryError as e:
        return [FieldError(field, f"not a valid image reference: {e.message}")]
    return []


def check_output(dest: DataDestination | None) -> list[FieldError]:
    """Exactly one of image and volumeSource; an image push needs its secret."""
    if dest is None:
        return [FieldError("tuning.output", "required: exactly one of image and volumeSource")]
    count, given = one_of(
        [("image", bool(dest.image)), ("volumeSource", dest.volume_source is not None)]
    )
    if count != 1:
        return [
            FieldError(
                "tuning.output", f"exactly one of image and volumeSource must be set, got {given}"
            )
        ]
    ref_errors = image_ref_errors("tuning.output.image", dest.image)
    if ref_errors:
        return ref_errors
    if dest.image and not dest.image_push_secret:
        return [
            FieldError(
                "tuning.output.imagePushSecret",
                f"pushing the adapter to {dest.image} needs imagePushSecret "
                "(a Secret with push credentials)",
            )
        ]
    return []
