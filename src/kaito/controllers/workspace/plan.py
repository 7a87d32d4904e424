"""What a reconcile decides about a Workspace before it builds anything: its plan.

    plan = resolve_plan(ws, catalog)     # PresetNotFound for a preset the catalog lacks

The preset, the instance type's SKU, the engine and the disk are looked up once, at the
top of a reconcile, in the `Catalog` the controller was given (the packaged
``models.yaml`` and ``skus.yaml``, or a test's own), and the plan is passed down to the
pure builders: the Machines or NodeClaims (disk), the inference objects (preset, engine,
GPUs, the catalog's command line and directories) and the tuning Job (preset, GPUs).
So no builder reaches for a module-level catalog, and every builder of one reconcile
sees the same answers.

The plan also carries the images every pod runs (the catalog's `Images`, for the
controller's ``--image-registry``) and where the preset's weights come from (`Weights`),
in this order: already in the image (a private preset's own ``presetOptions.image``);
pulled from a model image (``presetOptions.modelImage``) into the node's model cache;
fetched from the preset's Hugging Face repo into that cache; or, for a preset built
locally, at the catalog's ``weightsDir``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaito.api.workspace import ANNOTATION_RUNTIME, PresetSpec, Workspace
from kaito.presets.catalog import (
    MODEL_LINK_DIR,
    Catalog,
    Defaults,
    Images,
    Preset,
    RuntimeChoice,
    fetch_command,
    image_fetch_command,
    image_model_path,
    model_path,
    select_runtime,
)
from kaito.presets.skus import GpuSku

__all__ = ["DEFAULT_DISK", "PresetNotFound", "Weights", "WorkspacePlan", "resolve_plan"]


DEFAULT_DISK = "100Gi"
"""The Machines' disk when the Workspace runs a custom template (no preset to ask)."""


class PresetNotFound(ValueError):
    """The Workspace names a preset the catalog does not have (the webhook refuses these,
    so it means the webhook was bypassed or the catalog shrank under a live Workspace)."""


@dataclass(frozen=True)
class Weights:
    """Where a preset's weights come from for one Workspace."""

    model: str
    """The path the server (``--model``) and the tuning run load."""
    fetch: tuple[str, ...] = ()
    """The init container's command that downloads them into the node's model cache;
    empty when the image already holds them."""
    cache_dir: str = ""
    """The node's model cache (a hostPath) when they are fetched."""
    token_secret: str = ""
    """``presetOptions.modelAccessSecret``: the Secret whose ``HF_TOKEN`` the fetch reads."""
    image: str = ""
    """``presetOptions.modelImage``: the model image the fetch pulls (empty: the hub)."""
    pull_secrets: tuple[str, ...] = ()
    """``presetOptions.modelImagePullSecrets``: dockerconfigjson Secrets for that pull."""
    endpoint: str = ""
    """The hub the fetch downloads from (the fetcher's ``HF_ENDPOINT``); empty: the
    public hub."""
    link_dir: str = ""
    """The pod's own folder where the fetch links a model image named by tag (`model`
    is in it); empty when ``model`` names the cache folder itself."""


@dataclass(frozen=True)
class WorkspacePlan:
    """Everything a reconcile of one Workspace takes from the catalog."""

    catalog: Catalog
    """The catalog the plan was resolved from: its defaults build the command line."""
    preset: Preset | None
    """The inference or tuning preset; None for a custom inference template."""
    sku: GpuSku | None
    """The instance type's SKU; None for a VM size the table does not know."""
    runtime: RuntimeChoice | None
    """The engine an inference preset runs on, and why; None for tuning and templates."""
    disk: str
    """The OS disk each Machine/NodeClaim asks for: the preset's, or `DEFAULT_DISK`."""
    gpus_per_node: int
    """``nvidia.com/gpu`` of each pod: the SKU's GPUs (one pod uses all of its node's);
    for a size outside the table, the preset's share per node; else 1."""
    weights: Weights | None = None
    """The preset's weights; None for a custom template."""

    @property
    def defaults(self) -> Defaults:
        return self.catalog.defaults

    @property
    def images(self) -> Images:
        """The project's inference and tuning images, in the controller's registry."""
        return self.catalog.images


def _preset_spec(ws: Workspace) -> PresetSpec | None:
    if ws.inference is not None:
        return ws.inference.preset
    if ws.tuning is not None:
        return ws.tuning.preset
    return None


def _gpus_per_node(ws: Workspace, preset: Preset | None, sku: GpuSku | None) -> int:
    if sku is not None:
        return sku.gpus
    if preset is not None and preset.gpus > 0:
        return max(1, -(-preset.gpus // ws.resource.count))
    return 1


def _weights(spec: PresetSpec, preset: Preset, catalog: Catalog) -> Weights:
    options, defaults, endpoint = spec.options, catalog.defaults, catalog.hf_endpoint
    if spec.access_mode == "private" and options.image:
        return Weights(model=defaults.weights_dir)  # the user's image holds them
    if options.model_image:
        model = image_model_path(options.model_image, defaults)
        return Weights(
            model=model,
            fetch=(
                *image_fetch_command(options.model_image, defaults),
                *catalog.plain_http_args(options.model_image),
            ),
            cache_dir=defaults.model_cache_dir,
            image=options.model_image,
            pull_secrets=tuple(dict.fromkeys(s for s in options.model_image_pull_secrets if s)),
            link_dir="" if model.startswith(defaults.model_cache_dir) else MODEL_LINK_DIR,
        )
    if preset.hugging_face is None:
        return Weights(model=model_path(preset, defaults))
    return Weights(
        model=model_path(preset, defaults),
        fetch=tuple(fetch_command(preset, defaults)),
        cache_dir=defaults.model_cache_dir,
        token_secret=options.model_access_secret,
        endpoint=endpoint,
    )


def resolve_plan(ws: Workspace, catalog: Catalog) -> WorkspacePlan:
    """The plan of ``ws``; raises `PresetNotFound` for a preset ``catalog`` lacks."""
    spec = _preset_spec(ws)
    preset = catalog.get(spec.name) if spec is not None else None
    if spec is not None and preset is None:
        raise PresetNotFound(
            f"preset {spec.name} is not in the catalog; pick one the webhook accepts"
        )
    sku = catalog.sku(ws.resource.instance_type)
    runtime = None
    if preset is not None and ws.inference is not None:
        runtime = select_runtime(
            preset,
            sku,
            requested=ws.metadata.annotations.get(ANNOTATION_RUNTIME),
            adapter_strengths=[a.strength for a in ws.inference.adapters],
        )
    return WorkspacePlan(
        catalog=catalog,
        preset=preset,
        sku=sku,
        runtime=runtime,
        disk=preset.disk if preset is not None else DEFAULT_DISK,
        gpus_per_node=_gpus_per_node(ws, preset, sku),
        weights=(
            _weights(spec, preset, catalog) if spec is not None and preset is not None else None
        ),
    )
