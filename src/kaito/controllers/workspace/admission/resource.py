"""Rules on the base model (the preset) and the nodes it runs on (``resource``).

The GPU checks use the preset's serving figures for tuning workspaces too: the catalog
has no separate tuning figures, and a node that cannot hold the model for inference
cannot tune it either.
"""

from __future__ import annotations

from collections.abc import Callable

from kaito.api.workspace import MODEL_ACCESS_SECRET_KEY, PresetSpec, Workspace
from kaito.controllers.workspace.admission.fields import DNS1123_SUBDOMAIN, FieldError
from kaito.presets.catalog import Catalog, Preset
from kaito.presets.skus import GpuSku
from kaito_contracts.oci import ImageRef, RegistryError

OTHER_GPU_SIZES_PREFIX = "Standard_N"
"""Azure's GPU families; sizes not in the SKU table are admitted with a warning
(`resource_warnings`) and without memory checks."""

BYPASS_HINT = ' (annotation kaito.sh/bypass-resource-checks: "True" skips this check)'


def _gib(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + "Gi"


def _plural(n: int | float, word: str) -> str:
    return f"{n:g} {word}" if n == 1 else f"{n:g} {word}s"


def check_preset(
    spec: PresetSpec | None, path: str, cat: Catalog
) -> tuple[list[FieldError], Preset | None]:
    """The preset at ``path`` is known, not deprecated, has its private image, and
    names its token Secret when it is gated."""
    if spec is None:
        return [FieldError(path, "required: name the base model (a preset)")], None
    preset = cat.get(spec.name)
    if preset is not None and preset.name != spec.name:
        # Preset names are case-sensitive, as upstream's are: the name is also a label
        # value and an image name, where case matters.
        return [
            FieldError(
                f"{path}.name",
                f'unknown preset "{spec.name}" (preset names are case-sensitive); '
                f'did you mean "{preset.name}"?',
            )
        ], None
    if preset is None:
        known = ", ".join(cat.names())
        return [
            FieldError(f"{path}.name", f'unknown preset "{spec.name}"; known presets: {known}')
        ], None
    errors = []
    if preset.deprecated:
        errors.append(
            FieldError(
                f"{path}.name",
                f"preset {preset.name} is deprecated and no longer accepted; use another "
                f"{preset.family} preset: "
                + ", ".join(p for p in cat.names() if cat.presets[p].family == preset.family),
            )
        )
    options = spec.options
    if spec.access_mode == "private" and not (options.image or options.model_image):
        errors.append(
            FieldError(
                f"{path}.presetOptions.image",
                "accessMode private needs presetOptions.image (the private model image) "
                "or presetOptions.modelImage (an image holding only the weights)",
            )
        )
    errors += _check_model_image(spec, path)
    errors += _check_model_access(spec, preset, path)
    return errors, preset


def _check_model_image(spec: PresetSpec, path: str) -> list[FieldError]:
    """A model image is a valid reference, the only source of the weights, and its pull
    Secrets are Secret names."""
    options, field = spec.options, f"{path}.presetOptions.modelImage"
    errors = []
    for i, secret in enumerate(options.model_image_pull_secrets):
        if len(secret) > 253 or not DNS1123_SUBDOMAIN.match(secret):
            errors.append(
                FieldError(
                    f"{path}.presetOptions.modelImagePullSecrets[{i}]",
                    f'"{secret}" is not a valid Secret name (a DNS-1123 subdomain)',
                )
            )
    if not options.model_image:
        if options.model_image_pull_secrets:
            errors.append(
                FieldError(
                    f"{path}.presetOptions.modelImagePullSecrets",
                    "set only with presetOptions.modelImage (they are its pull credentials)",
                )
            )
        return errors
    try:
        ImageRef.parse(options.model_image)
    except RegistryError as e:
        errors.append(FieldError(field, e.message))
    if spec.access_mode == "private" and options.image:
        errors.append(
            FieldError(
                field,
                "conflicts with presetOptions.image: with accessMode private that image "
                "brings its own weights; set one of presetOptions.image and "
                "presetOptions.modelImage",
            )
        )
    if options.model_access_secret:
        errors.append(
            FieldError(
                f"{path}.presetOptions.modelAccessSecret",
                "conflicts with presetOptions.modelImage: the weights come from that image, "
                "not from Hugging Face; its credentials go in "
                "presetOptions.modelImagePullSecrets",
            )
        )
    return errors


def _check_model_access(spec: PresetSpec, preset: Preset, path: str) -> list[FieldError]:
    """A gated preset fetched from the hub names the Secret holding its token."""
    secret = spec.options.model_access_secret
    field = f"{path}.presetOptions.modelAccessSecret"
    if secret and (len(secret) > 253 or not DNS1123_SUBDOMAIN.match(secret)):
        return [FieldError(field, f'"{secret}" is not a valid Secret name (a DNS-1123 subdomain)')]
    fetched = (
        preset.hugging_face is not None
        and not (spec.access_mode == "private" and spec.options.image)
        and not spec.options.model_image
    )
    if preset.download_auth_required and fetched and not secret:
        assert preset.hugging_face is not None
        return [
            FieldError(
                field,
                f"preset {preset.name} is gated on Hugging Face ({preset.hugging_face.repo}): "
                f"name a Secret in the workspace's namespace whose key "
                f"{MODEL_ACCESS_SECRET_KEY} holds a token with access to it",
            )
        ]
    return []


def check_resource(
    ws: Workspace,
    preset: Preset | None,
    sku_lookup: Callable[[str], GpuSku | None],
) -> list[FieldError]:
    """A GPU instance type, large enough for the preset unless checks are bypassed.

    A custom ``inference.template`` runs whatever the user's pod needs, so any instance
    type is admitted for it, as upstream does (a CPU size for a CPU workload included).
    """
    instance_type = ws.resource.instance_type
    if ws.inference is not None and ws.inference.template is not None:
        return []
    sku = sku_lookup(instance_type)
    if sku is None:
        if instance_type.startswith(OTHER_GPU_SIZES_PREFIX):
            return []
        return [
            FieldError(
                "resource.instanceType",
                f"unknown instance type {instance_type}; use a GPU size (Standard_N*), "
                "e.g. Standard_NC6s_v3, Standard_NC24ads_A100_v4",
            )
        ]
    if preset is None or ws.bypass_resource_checks:
        return []
    if not preset.distributed and ws.resource.count > 1:
        # Each node runs a full copy: count adds replicas, not capacity.
        return [
            FieldError(
                e.field,
                f"{e.message.removesuffix(BYPASS_HINT)}; preset {preset.name} cannot span "
                f"nodes, so resource.count {ws.resource.count} runs {ws.resource.count} "
                "copies, each on one node" + BYPASS_HINT,
            )
            for e in check_capacity(preset, sku, 1)
        ]
    return check_capacity(preset, sku, ws.resource.count)


def check_label_selector(ws: Workspace) -> list[FieldError]:
    """Every ``matchExpressions`` entry can become a node label.

    The selector does two jobs: it picks the nodes the workspace runs on, and its labels
    are put on the Machines/NodeClaims the controller creates, whose nodes must then
    match it. Only a key=value pair can be put on a node, so only ``In`` with exactly one
    value (a ``matchLabels`` entry written longhand) is admitted. ``In`` with several
    values leaves the value to pick; ``Exists`` leaves the value to invent; ``NotIn``
    and ``DoesNotExist`` describe labels a node must *not* carry, so a selector made of
    them also matches every unlabeled node in the cluster (system and CPU nodes
    included), which the controller would count as the workspace's.
    """
    errors = []
    for i, req in enumerate(ws.resource.label_selector.match_expressions):
        field = f"resource.labelSelector.matchExpressions[{i}]"
        if req.operator == "In" and len(req.values) == 1:
            continue
        if req.operator == "In":
            why = (
                f"In with {len(req.values)} values cannot become a node label "
                "(a node carries one value per key)"
            )
        elif req.operator in ("NotIn", "Exists", "DoesNotExist"):
            why = (
                f"{req.operator} cannot become a node label, so provisioned nodes could "
                "not be made to match it"
            )
        else:
            why = f'"{req.operator}" is not a label selector operator'
        errors.append(
            FieldError(
                field,
                f"{why}; use matchLabels ({req.key}: <value>) or In with exactly one value",
            )
        )
    return errors


def resource_warnings(ws: Workspace, sku_lookup: Callable[[str], GpuSku | None]) -> list[str]:
    """What is admitted unchecked: a GPU-family size the SKU table does not know."""
    instance_type = ws.resource.instance_type
    if ws.inference is not None and ws.inference.template is not None:
        return []
    if sku_lookup(instance_type) is None and instance_type.startswith(OTHER_GPU_SIZES_PREFIX):
        return [
            f"resource.instanceType: {instance_type} is not in KAITO's GPU SKU table; "
            "admitted without checking its GPU count and memory against the preset"
        ]
    return []


def check_capacity(preset: Preset, sku: GpuSku, count: int) -> list[FieldError]:
    """GPU count, per-GPU memory and total GPU memory of ``count`` x ``sku`` vs ``preset``.

    The SKU table gives memory in GB as Azure publishes it and presets in Gi; they are
    compared number for number, as Kaito does (the table's figures are the GPUs' nominal
    sizes, which are binary in practice: a "16 GB" V100 has 16 GiB).
    """
    errors = []
    subject = (
        f"instance type {sku.name} has"
        if count == 1
        else f"{count} x instance type {sku.name} have"
    )
    gpus = count * sku.gpus
    if gpus < preset.gpus:
        errors.append(
            FieldError(
                "resource.instanceType",
                f"{subject} {_plural(gpus, 'GPU')}; preset {preset.name} needs "
                f"{_plural(preset.gpus, 'GPU')}" + BYPASS_HINT,
            )
        )
    per_gpu = sku.gpu_memory_per_gpu_gb
    if per_gpu < preset.per_gpu_memory_gib:
        errors.append(
            FieldError(
                "resource.instanceType",
                f"instance type {sku.name} has {_gib(per_gpu)} of memory per GPU; preset "
                f"{preset.name} needs {_gib(preset.per_gpu_memory_gib)} per GPU" + BYPASS_HINT,
            )
        )
    total = count * sku.gpu_memory_gb
    if total < preset.total_gpu_memory_gib:
        errors.append(
            FieldError(
                "resource.instanceType",
                f"{subject} {_gib(total)} of GPU memory in total; preset {preset.name} needs "
                f"{_gib(preset.total_gpu_memory_gib)}" + BYPASS_HINT,
            )
        )
    return errors
