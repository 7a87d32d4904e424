"""The model preset catalog (``models.yaml``) and the command line each preset runs.

A preset turns a name in a Workspace (``phi-3-mini-4k-instruct``) into everything the
controller needs: GPU count and memory for the webhook's checks, disk for the Machine,
and the inference server's command line for the engine the node's GPU can run. The
`Catalog` carries the GPU SKU table (``skus.yaml``, `kaito.presets.skus`) beside the
presets, so that one object answers both questions; the workspace controller is given
one and resolves each reconcile's plan from it.

The figures are data (``models.yaml`` beside this module), not code, so adding a model
is a reviewed data change. The loader checks every entry when the catalog is first read
and names the bad one, because a typo found at admission time would be a 500 for users.

Engine choice (`select_runtime`), in order:

1. the ``kaito.sh/runtime`` annotation (``vllm`` | ``transformers``), when the preset
   supports that engine;
2. transformers when the preset has no vLLM parameters;
3. transformers when the SKU's GPU cannot run vLLM (compute capability < 7.5: V100,
   e.g. Standard_NC6s_v3) — vLLM's kernels need Turing or newer;
4. transformers when an adapter asks for a strength other than 1: vLLM applies LoRA
   adapters at full weight, only the transformers engine merges them weighted;
5. vLLM otherwise.

Images and weights: every preset runs the project's own images,
``<registry>/kaito-python/inference:<version>`` and ``.../tuning:<version>`` (`Images`;
the registry is the workspace controller's one setting, `Catalog.with_image_registry`,
default `DEFAULT_IMAGE_REGISTRY`). A preset's weights are data: an init container runs
`fetch_command` to download ``huggingFace.repo`` at its pinned revision into the node's
model cache, and the server loads `model_path` (``<cache>/<org>--<name>@<revision>``).
"""

from __future__ import annotations

import dataclasses
import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from kaito import __version__
from kaito.api.workspace import Runtime
from kaito.presets.skus import GpuSku, load_skus
from kaito.runtime.quantity import quantity_gib
from kaito_contracts.oci import ImageRef

__all__ = [
    "DEFAULT_IMAGE_REGISTRY",
    "MODEL_LINK_DIR",
    "VLLM_MIN_COMPUTE_CAPABILITY",
    "Catalog",
    "Defaults",
    "EngineParams",
    "Images",
    "Preset",
    "RuntimeChoice",
    "check_hf_endpoint",
    "check_image_registry",
    "check_plain_http_registry",
    "fetch_command",
    "image_fetch_command",
    "image_model_path",
    "inference_command",
    "load_catalog",
    "model_path",
    "select_runtime",
]

DEFAULT_IMAGE_REGISTRY = "ghcr.io/kaito-project"
"""Where the project's images are published, the default of ``--image-registry``
(the controller's own image in deploy/ is ``ghcr.io/kaito-project/kaito-python/controller``)."""

VLLM_MIN_COMPUTE_CAPABILITY = (7, 5)
"""vLLM's CUDA kernels need Turing (7.5) or newer; V100 (7.0) runs the transformers engine."""

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
"""bfloat16 needs Ampere (8.0) or newer; older GPUs get float16 instead."""


class _Data(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Scalar = str | int | float | bool


class EngineParams(_Data):
    """One engine's settings for a preset (merged over the catalog's defaults)."""

    dtype: str
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    args: dict[str, Scalar] = Field(default_factory=dict)
    """Extra flags, ``{"enforce-eager": true}`` -> ``--enforce-eager``."""


class HuggingFaceSource(_Data):
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
    """``<org>/<name>`` on the hub."""
    revision: str = Field(pattern=r"^[0-9a-f]{40}$")
    """A commit, so a preset always means the same bytes."""

    @property
    def cache_name(self) -> str:
        """The folder of this repo@revision in the model cache (the fetcher's layout)."""
        return f"{self.repo.replace('/', '--')}@{self.revision}"


class Preset(_Data):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    family: str
    hugging_face: HuggingFaceSource | None
    gpus: int = Field(ge=0)
    total_gpu_memory: str = Field(alias="totalGPUMemory")
    per_gpu_memory: str = Field(alias="perGPUMemory")
    disk: str
    max_model_len: int = Field(gt=0)
    vllm: EngineParams | None
    transformers: EngineParams
    tuning: bool = False
    distributed: bool = False
    download_auth_required: bool = False
    deprecated: bool = False

    @field_validator("total_gpu_memory", "per_gpu_memory", "disk")
    @classmethod
    def _quantity(cls, value: str) -> str:
        quantity_gib(value)
        return value

    @property
    def total_gpu_memory_gib(self) -> float:
        return quantity_gib(self.total_gpu_memory)

    @property
    def per_gpu_memory_gib(self) -> float:
        return quantity_gib(self.per_gpu_memory)

    def engine(self, runtime: Runtime) -> EngineParams | None:
        return self.vllm if runtime is Runtime.VLLM else self.transformers


class ImageRepositories(_Data):
    inference: str
    tuning: str


class Defaults(_Data):
    images: ImageRepositories
    """The images' repositories under the registry (``kaito-python/inference``)."""
    command: list[str]
    fetch_command: list[str]
    """The weights fetcher in the inference image (``python -m kaito_inference.fetch``)."""
    image_fetch_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "kaito_inference.fetch.image"]
    )
    """Its sibling for a model image (``presetOptions.modelImage``)."""
    model_cache_dir: str
    """The node-local model cache (a hostPath): one folder per repo@revision."""
    weights_dir: str
    """The weights of a preset no fetch brings: a private preset's image, or local."""
    adapters_dir: str
    port: int
    vllm: EngineParams
    transformers: EngineParams


def check_hf_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is "" or an http(s) URL with a host and no query; else ValueError."""
    if not endpoint:
        return ""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"hub endpoint {endpoint!r}: give an http(s)://host[:port] URL")
    if parsed.query or parsed.fragment or " " in endpoint:
        raise ValueError(f"hub endpoint {endpoint!r}: no query, fragment or spaces")
    return endpoint.rstrip("/")


def check_image_registry(registry: str) -> str:
    """``registry`` without a trailing slash; ValueError naming what is wrong with it.

    A registry host, optionally with a port and a path (``myacr.azurecr.io``,
    ``127.0.0.1:5000/kaito``): no scheme, no tag, no whitespace."""
    value = registry.strip().rstrip("/")
    if not value:
        raise ValueError("the image registry is empty (e.g. myacr.azurecr.io)")
    if "://" in value:
        raise ValueError(f"image registry {registry!r}: give a host[:port][/path], no scheme")
    path = value.partition("/")[2]
    if any(c.isspace() for c in value) or "@" in value or ":" in path:
        raise ValueError(
            f"image registry {registry!r}: give a host[:port][/path], no tag, digest or spaces"
        )
    return value


def check_plain_http_registry(host: str) -> str:
    """``host`` (a registry ``host[:port]``, as image references write it); ValueError
    naming what is wrong with it: no scheme, no path, no spaces."""
    value = host.strip()
    if not value or "://" in value or "/" in value or any(c.isspace() for c in value):
        raise ValueError(
            f"plain-http registry {host!r}: give a registry host[:port] "
            "(e.g. 10.0.0.4:5000), no scheme or path"
        )
    return value


@dataclass(frozen=True)
class Images:
    """The project's own images every preset runs, resolved for one registry."""

    registry: str
    inference: str
    """``<registry>/kaito-python/inference:<version>``: the server and the weights fetcher."""
    tuning: str
    """``<registry>/kaito-python/tuning:<version>``: the tuning entrypoint and downloader."""


@dataclass(frozen=True)
class Catalog:
    """The presets (``models.yaml``) and the GPU SKU table (``skus.yaml``) together, with
    the registry the project's images are pulled from."""

    defaults: Defaults
    presets: dict[str, Preset]
    skus: Mapping[str, GpuSku] = field(default_factory=dict)
    """VM sizes keyed lower-cased; empty means every size is unknown (CPU-only)."""
    image_registry: str = DEFAULT_IMAGE_REGISTRY
    hf_endpoint: str = ""
    """The Hugging Face hub the weights fetchers download from (their ``HF_ENDPOINT``);
    empty: huggingface_hub's default, the public hub."""
    plain_http_registries: frozenset[str] = frozenset()
    """Registry hosts (``host[:port]``) the adapter pusher, the adapter puller and the
    model-image fetcher reach over plain http, like a container runtime's insecure
    registries; every other host is https (loopback excepted: `kaito_contracts.oci`)."""

    @property
    def images(self) -> Images:
        repos, reg = self.defaults.images, self.image_registry
        return Images(
            registry=reg,
            inference=f"{reg}/{repos.inference}:{__version__}",
            tuning=f"{reg}/{repos.tuning}:{__version__}",
        )

    def with_image_registry(self, registry: str) -> Catalog:
        """This catalog with its images in ``registry`` (checked, `check_image_registry`)."""
        return dataclasses.replace(self, image_registry=check_image_registry(registry))

    def with_hf_endpoint(self, endpoint: str) -> Catalog:
        """This catalog with its weights fetched from the hub at ``endpoint`` (checked,
        `check_hf_endpoint`); "" keeps the public hub."""
        return dataclasses.replace(self, hf_endpoint=check_hf_endpoint(endpoint))

    def with_plain_http_registries(self, hosts: Sequence[str]) -> Catalog:
        """This catalog reaching ``hosts`` over plain http (each checked,
        `check_plain_http_registry`)."""
        checked = frozenset(check_plain_http_registry(h) for h in hosts)
        return dataclasses.replace(self, plain_http_registries=checked)

    def plain_http_args(self, image: str) -> list[str]:
        """``["--plain-http"]`` when ``image``'s registry is one of
        `plain_http_registries`, else ``[]`` (our pullers and pushers take that flag; a
        malformed reference gets ``[]`` and their own clear refusal)."""
        if not self.plain_http_registries:
            return []
        host = image.strip().partition("/")[0]  # a reference without a host names none of them
        return ["--plain-http"] if host in self.plain_http_registries else []

    def get(self, name: str) -> Preset | None:
        """The preset called ``name`` (any case), or None."""
        return self.presets.get(name.lower())

    def sku(self, vm_size: str) -> GpuSku | None:
        """The SKU for ``vm_size`` (any case), or None when the table does not know it."""
        return self.skus.get(vm_size.lower())

    def names(self, *, include_deprecated: bool = False) -> list[str]:
        return sorted(n for n, p in self.presets.items() if include_deprecated or not p.deprecated)


def _merge_engine(default: EngineParams, given: Any) -> dict[str, Any]:
    base = default.model_dump(by_alias=True)
    if not isinstance(given, dict):
        raise ValueError(f"engine parameters must be a mapping, got {given!r}")
    merged = {**base, **given}
    merged["args"] = {**base["args"], **(given.get("args") or {})}
    return merged


def parse_catalog(data: Any, *, skus: Mapping[str, GpuSku] | None = None) -> Catalog:
    """Check and build the catalog from ``models.yaml``'s content (and ``skus``, the SKU
    table keyed lower-cased); errors name the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        raise ValueError("models.yaml: expected a mapping with 'defaults' and a list 'presets'")
    try:
        defaults = Defaults.model_validate(data.get("defaults"))
    except ValidationError as e:
        raise ValueError(f"models.yaml: defaults are invalid: {e}") from e
    presets: dict[str, Preset] = {}
    for i, entry in enumerate(data["presets"]):
        label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        try:
            if not isinstance(entry, dict):
                raise ValueError("an entry must be a mapping")
            raw = dict(entry)
            if raw.get("vllm", {}) is not None:
                raw["vllm"] = _merge_engine(defaults.vllm, raw.get("vllm", {}))
            raw["transformers"] = _merge_engine(defaults.transformers, raw.get("transformers", {}))
            preset = Preset.model_validate(raw)
        except (ValidationError, ValueError) as e:
            raise ValueError(f"models.yaml: preset {label} is invalid: {e}") from e
        if preset.name in presets:
            raise ValueError(f"models.yaml: preset {preset.name} is listed twice")
        presets[preset.name] = preset
    return Catalog(defaults=defaults, presets=presets, skus=dict(skus or {}))


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog with the packaged SKU table; read and checked once per process."""
    text = resources.files("kaito.presets").joinpath("models.yaml").read_text(encoding="utf-8")
    return parse_catalog(yaml.safe_load(text), skus=load_skus())


# -- runtime selection ----------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str
    """Why this engine: logged, and shown in the workload's annotations."""


def _needs_strength(strength: str | None) -> bool:
    if strength is None or not strength.strip():
        return False
    try:
        return float(strength) != 1.0
    except ValueError:
        return False  # the webhook rejects it; not this function's concern


def select_runtime(
    preset: Preset,
    sku: GpuSku | None,
    *,
    requested: str | None = None,
    adapter_strengths: Sequence[str | None] = (),
) -> RuntimeChoice:
    """The engine ``preset`` runs on for this SKU (rules in the module docstring)."""
    if requested:
        try:
            wanted = Runtime(requested.strip().lower())
        except ValueError:
            wanted = None
        if wanted is not None and preset.engine(wanted) is not None:
            return RuntimeChoice(wanted, "requested by the kaito.sh/runtime annotation")
    if preset.vllm is None:
        return RuntimeChoice(Runtime.TRANSFORMERS, f"preset {preset.name} has no vLLM support")
    if sku is not None and sku.compute_capability_tuple < VLLM_MIN_COMPUTE_CAPABILITY:
        return RuntimeChoice(
            Runtime.TRANSFORMERS,
            f"{sku.name} has {sku.gpu} GPUs (compute capability {sku.compute_capability}); "
            f"vLLM needs {'.'.join(map(str, VLLM_MIN_COMPUTE_CAPABILITY))} or newer",
        )
    if any(_needs_strength(s) for s in adapter_strengths):
        return RuntimeChoice(
            Runtime.TRANSFORMERS, "an adapter has a strength other than 1, which vLLM cannot apply"
        )
    return RuntimeChoice(Runtime.VLLM, "default engine")


# -- the weights ----------------------------------------------------------------------


def model_path(preset: Preset, defaults: Defaults) -> str:
    """Where the server and the tuning run find ``preset``'s weights: its folder in the
    node's model cache, or ``weightsDir`` for a preset built locally."""
    if preset.hugging_face is None:
        return defaults.weights_dir
    return f"{defaults.model_cache_dir}/{preset.hugging_face.cache_name}"


def fetch_command(preset: Preset, defaults: Defaults) -> list[str]:
    """The init container's command that fills `model_path` (the inference image's
    fetcher); ValueError for a preset with no hub source."""
    hf = preset.hugging_face
    if hf is None:
        raise ValueError(f"preset {preset.name} has no huggingFace source to fetch")
    return [
        *defaults.fetch_command,
        "--repo",
        hf.repo,
        "--revision",
        hf.revision,
        "--cache-dir",
        defaults.model_cache_dir,
    ]


MODEL_LINK_DIR = "/mnt/model-image"
"""A pod's own folder (an emptyDir) where the image fetch links ``model`` to the cache
folder of a model image named by tag (whose digest only the fetch learns)."""


def image_model_path(image: str, defaults: Defaults) -> str:
    """Where the server loads a model image's weights: the image's folder in the node's
    model cache, ``<cache>/oci/sha256-<hex>``, when ``image`` is pinned by digest;
    else the link the fetch makes to it, ``MODEL_LINK_DIR/model``. A reference that does
    not parse raises `kaito_contracts.oci.RegistryError` (the webhook refuses those)."""
    ref = ImageRef.parse(image)
    if ref.digest:
        return f"{defaults.model_cache_dir}/oci/{ref.digest.replace(':', '-')}"
    return f"{MODEL_LINK_DIR}/model"


def image_fetch_command(image: str, defaults: Defaults) -> list[str]:
    """The init container's command that pulls the model image ``image`` into the node's
    model cache (and links it where `image_model_path` says, for a tag); the pull
    Secrets' ``--docker-config`` flags are the pod builder's (it mounts them)."""
    argv = [
        *defaults.image_fetch_command,
        "--image",
        image,
        "--cache-dir",
        defaults.model_cache_dir,
    ]
    if not ImageRef.parse(image).digest:
        argv += ["--link", f"{MODEL_LINK_DIR}/model"]
    return argv


# -- the command line -----------------------------------------------------------------


def _dtype(dtype: str, sku: GpuSku | None) -> str:
    if (
        dtype == "bfloat16"
        and sku is not None
        and sku.compute_capability_tuple < BF16_MIN_COMPUTE_CAPABILITY
    ):
        return "float16"
    return dtype


def _flags(args: dict[str, Scalar]) -> list[str]:
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out += [flag, "false"]
        else:
            out += [flag, str(value)]
    return out


def inference_command(
    preset: Preset,
    *,
    runtime: Runtime,
    sku: GpuSku | None,
    node_count: int = 1,
    adapter_count: int = 0,
    config_file: str | None = None,
    catalog: Catalog | None = None,
    model: str | None = None,
) -> list[str]:
    """The inference container's command: ``python -m kaito_inference --engine ...``.

    - ``--model``: ``model``, by default the preset's `model_path`;
    - ``--served-model-name`` is the preset's name, the id clients put in ``model``;
    - ``--dtype``: the preset's, with bfloat16 lowered to float16 on pre-Ampere GPUs;
    - ``--gpu-memory-utilization`` (vLLM only: transformers allocates as it goes);
    - ``--max-model-len``: the preset's context;
    - ``--tensor-parallel-size``: the GPUs of one node (the SKU's), so one pod uses all
      of its node's GPUs; multi-node vLLM adds ``--pipeline-parallel-size`` = nodes;
    - LoRA: ``--enable-lora --adapters-dir /mnt/adapter`` when adapters exist (vLLM
      also ``--max-loras`` = their number, so every adapter fits in one batch);
    - the preset's extra engine flags, then ``--config-file`` (the user's
      inference_config.yaml: the server applies it after everything else).
    """
    cat = catalog or load_catalog()
    engine = preset.engine(runtime)
    if engine is None:
        raise ValueError(f"preset {preset.name} does not support the {runtime} engine")
    gpus_per_node = sku.gpus if sku is not None else max(1, preset.gpus // max(1, node_count))
    argv = [
        *cat.defaults.command,
        "--engine",
        str(runtime),
        "--model",
        model or model_path(preset, cat.defaults),
        "--served-model-name",
        preset.name,
        "--dtype",
        _dtype(engine.dtype, sku),
        "--max-model-len",
        str(preset.max_model_len),
        "--tensor-parallel-size",
        str(max(1, gpus_per_node)),
        "--port",
        str(cat.defaults.port),
    ]
    if runtime is Runtime.VLLM:
        if engine.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
        if node_count > 1:
            argv += ["--pipeline-parallel-size", str(node_count)]
    if adapter_count > 0:
        argv += ["--enable-lora", "--adapters-dir", cat.defaults.adapters_dir]
        if runtime is Runtime.VLLM:
            argv += ["--max-loras", str(adapter_count)]
    argv += _flags(engine.args)
    if config_file:
        argv += ["--config-file", config_file]
    return argv
