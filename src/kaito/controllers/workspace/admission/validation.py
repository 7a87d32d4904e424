"""Every admission rule for Workspaces (WORKSPACE.md, "Validation"), as plain functions.

The webhook (``webhook.py``) is transport; the rules are here so they can be tested
one by one without TLS, and the same code answers the apiserver. Every error names the
field it is about and, where numbers are compared, the numbers on both sides, because a
user reading ``kubectl apply``'s output has nothing else to go on.

The CRD's OpenAPI schema already rejects wrong types and missing required fields
before the webhook is called; these rules cover what a schema cannot say: known
presets and SKUs, enough GPUs, one-of choices, safe URLs, ConfigMaps that parse, and
immutable fields.

Rules that need the cluster (ConfigMaps exist) take a reader function, so unit tests
pass a dict and the webhook passes the API client.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from kaito.api.workspace import (
    ANNOTATION_RUNTIME,
    MAX_ADAPTERS,
    AdapterSpec,
    DataDestination,
    DataSource,
    InferenceSpec,
    PresetSpec,
    Runtime,
    TuningMethod,
    TuningSpec,
    Workspace,
)
from kaito.presets.catalog import Catalog, Preset, load_catalog
from kaito.presets.skus import GpuSku, get_sku

INFERENCE_CONFIG_KEY = "inference_config.yaml"
TRAINING_CONFIG_KEY = "training_config.yaml"
TRAINING_SECTIONS = (
    "ModelConfig",
    "QuantizationConfig",
    "LoraConfig",
    "TrainingArguments",
    "DatasetConfig",
)
OTHER_GPU_SIZES_PREFIX = "Standard_N"
"""Azure's GPU families; sizes not in the SKU table are accepted without memory checks."""

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)

METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # Azure / AWS / GCP instance metadata
        ipaddress.ip_address("168.63.129.16"),  # Azure WireServer (a public address!)
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)
BLOCKED_HOSTNAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "instance-data", "kubernetes.default"}
)
"""Names that resolve to loopback or metadata services; the downloader re-checks the
resolved address at fetch time (DNS can change between admission and download), so
the webhook does not resolve names itself: it stays fast and deterministic."""


@dataclass(frozen=True, order=True)
class FieldError:
    """One rejected field: ``resource.instanceType: instance type X has ...``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


ConfigMapReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]
"""``(namespace, name) -> ConfigMap object, or None when it does not exist``."""


def _gib(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + "Gi"


def _plural(n: int | float, word: str) -> str:
    return f"{n:g} {word}" if n == 1 else f"{n:g} {word}s"


def _one_of(choices: Sequence[tuple[str, bool]]) -> tuple[int, str]:
    given = [name for name, present in choices if present]
    return len(given), ", ".join(given) if given else "none"


# -- parsing --------------------------------------------------------------------------


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


# -- create ---------------------------------------------------------------------------


def check_create(
    ws: Workspace,
    *,
    catalog: Catalog | None = None,
    sku_lookup: Callable[[str], GpuSku | None] = get_sku,
) -> list[FieldError]:
    """The rules for a new Workspace (everything but ConfigMaps, see `check_configs`).

    The GPU checks use the preset's serving figures for tuning workspaces too: the
    catalog has no separate tuning figures, and a node that cannot hold the model for
    inference cannot tune it either.
    """
    cat = catalog or load_catalog()
    errors: list[FieldError] = []
    name = ws.metadata.name
    if len(name) > 63 or not _DNS1123_LABEL.match(name):
        errors.append(
            FieldError(
                "metadata.name",
                f'"{name}" is not a DNS-1123 label: at most 63 lower-case letters, digits '
                "and '-', starting and ending with a letter or digit (it names Services)",
            )
        )
    errors += _check_runtime_annotation(ws)
    count, given = _one_of(
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
        inf_errors, preset = _check_inference(ws.inference, cat)
        errors += inf_errors
    if ws.tuning is not None:
        tun_errors, tuning_preset = _check_tuning(ws, ws.tuning, cat)
        errors += tun_errors
        preset = preset or tuning_preset
    errors += _check_resource(ws, preset, sku_lookup)
    return errors


def _check_runtime_annotation(ws: Workspace) -> list[FieldError]:
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


def _check_preset(
    spec: PresetSpec | None, path: str, cat: Catalog
) -> tuple[list[FieldError], Preset | None]:
    if spec is None:
        return [FieldError(path, "required: name the base model (a preset)")], None
    preset = cat.get(spec.name)
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
    if spec.access_mode == "private" and not spec.options.image:
        errors.append(
            FieldError(
                f"{path}.presetOptions.image",
                "accessMode private needs presetOptions.image (the private model image)",
            )
        )
    return errors, preset


def _check_inference(inf: InferenceSpec, cat: Catalog) -> tuple[list[FieldError], Preset | None]:
    errors: list[FieldError] = []
    count, given = _one_of(
        [("preset", inf.preset is not None), ("template", inf.template is not None)]
    )
    if count != 1:
        errors.append(
            FieldError("inference", f"exactly one of preset and template must be set, got {given}")
        )
    preset = None
    if inf.preset is not None:
        preset_errors, preset = _check_preset(inf.preset, "inference.preset", cat)
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
        elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
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
        count, given = _one_of(
            [("image", bool(source.image)), ("volumeSource", source.volume_source is not None)]
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
        try:
            strength = float(adapter.strength)
        except ValueError:
            strength = math.nan
        if not math.isfinite(strength):
            errors.append(
                FieldError(
                    f"{path}.strength",
                    f'"{adapter.strength}" is not a number; use a float in [0, 1]',
                )
            )
        elif not 0.0 <= strength <= 1.0:
            errors.append(FieldError(f"{path}.strength", f"{adapter.strength} is outside [0, 1]"))
    return errors


def _check_tuning(
    ws: Workspace, tuning: TuningSpec, cat: Catalog
) -> tuple[list[FieldError], Preset | None]:
    errors: list[FieldError] = []
    methods = " or ".join(m.value for m in TuningMethod)
    if not tuning.method:
        errors.append(FieldError("tuning.method", f"required: {methods}"))
    elif tuning.method not in {m.value for m in TuningMethod}:
        errors.append(
            FieldError("tuning.method", f'"{tuning.method}" is not a tuning method; use {methods}')
        )
    preset_errors, preset = _check_preset(tuning.preset, "tuning.preset", cat)
    errors += preset_errors
    if preset is not None and not preset.tuning:
        able = ", ".join(n for n in cat.names() if cat.presets[n].tuning)
        errors.append(
            FieldError(
                "tuning.preset.name",
                f"preset {preset.name} does not support tuning; presets that do: {able}",
            )
        )
    errors += _check_input(tuning.input)
    errors += _check_output(tuning.output)
    if ws.resource.count != 1:
        errors.append(
            FieldError("resource.count", f"tuning runs on one node; got {ws.resource.count}")
        )
    return errors, preset


def _check_input(source: DataSource | None) -> list[FieldError]:
    if source is None:
        return [FieldError("tuning.input", "required: exactly one of urls, image and volumeSource")]
    count, given = _one_of(
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
    errors = []
    for i, url in enumerate(source.urls):
        problem = url_problem(url)
        if problem:
            errors.append(FieldError(f"tuning.input.urls[{i}]", problem))
    return errors


def _check_output(dest: DataDestination | None) -> list[FieldError]:
    if dest is None:
        return [FieldError("tuning.output", "required: exactly one of image and volumeSource")]
    count, given = _one_of(
        [("image", bool(dest.image)), ("volumeSource", dest.volume_source is not None)]
    )
    if count != 1:
        return [
            FieldError(
                "tuning.output", f"exactly one of image and volumeSource must be set, got {given}"
            )
        ]
    if dest.image and not dest.image_push_secret:
        return [
            FieldError(
                "tuning.output.imagePushSecret",
                f"pushing the adapter to {dest.image} needs imagePushSecret "
                "(a Secret with push credentials)",
            )
        ]
    return []


def url_problem(url: str) -> str | None:
    """Why ``url`` must not be downloaded (not http(s); loopback, private, link-local or
    metadata address), or None when it may be."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return f"{url} is not a valid URL: {e}"
    if parts.scheme not in ("http", "https"):
        return f"{url} is not an http(s) URL"
    if not host:
        return f"{url} has no host"
    host = host.rstrip(".").lower()
    if host in BLOCKED_HOSTNAMES or host.endswith(".localhost"):
        return f"{url} points at {host}, a local or metadata service; use a public URL"
    ip = _literal_ip(host)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    kind = None
    if ip in METADATA_ADDRESSES:
        kind = "a cloud metadata address"
    elif ip.is_loopback:
        kind = "a loopback address"
    elif ip.is_unspecified:
        kind = "the unspecified address (it reaches the local host)"
    elif ip.is_link_local:
        kind = "a link-local address"
    elif ip.is_private:
        kind = "a private address"
    elif not ip.is_global or ip.is_multicast:
        kind = "not a public address"
    if kind:
        return f"{url} points at {ip}, {kind}; use a public URL"
    return None


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, including the forms libc accepts ("127.1", "0x7f.1",
    "2130706433"): a downloader would connect to those too."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and not re.fullmatch(r"[a-f.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _check_resource(
    ws: Workspace,
    preset: Preset | None,
    sku_lookup: Callable[[str], GpuSku | None],
) -> list[FieldError]:
    instance_type = ws.resource.instance_type
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
    return check_capacity(preset, sku, ws.resource.count)


def check_capacity(preset: Preset, sku: GpuSku, count: int) -> list[FieldError]:
    """GPU count, per-GPU memory and total GPU memory of ``count`` x ``sku`` vs ``preset``.

    The SKU table gives memory in GB as Azure publishes it and presets in Gi; they are
    compared number for number, as Kaito does (the table's figures are the GPUs' nominal
    sizes, which are binary in practice: a "16 GB" V100 has 16 GiB).
    """
    hint = ' (annotation kaito.sh/bypass-resource-checks: "True" skips this check)'
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
                f"{_plural(preset.gpus, 'GPU')}" + hint,
            )
        )
    per_gpu = sku.gpu_memory_per_gpu_gb
    if per_gpu < preset.per_gpu_memory_gib:
        errors.append(
            FieldError(
                "resource.instanceType",
                f"instance type {sku.name} has {_gib(per_gpu)} of memory per GPU; preset "
                f"{preset.name} needs {_gib(preset.per_gpu_memory_gib)} per GPU" + hint,
            )
        )
    total = count * sku.gpu_memory_gb
    if total < preset.total_gpu_memory_gib:
        errors.append(
            FieldError(
                "resource.instanceType",
                f"{subject} {_gib(total)} of GPU memory in total; preset {preset.name} needs "
                f"{_gib(preset.total_gpu_memory_gib)}" + hint,
            )
        )
    return errors


# -- ConfigMaps -----------------------------------------------------------------------


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


def _load_mapping(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return None, f"does not parse as YAML: {' '.join(str(e).split())}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"must be a YAML mapping, got {type(data).__name__}"
    return data, None


def inference_config_problem(text: str) -> str | None:
    """What the inference server would refuse in this inference_config.yaml, or None.

    The server turns the ``vllm:`` / ``transformers:`` sections into flags, so each must
    be a mapping of scalars (images/inference, ``--config-file``).
    """
    data, problem = _load_mapping(text)
    if data is None:
        return problem
    for engine in Runtime:
        section = data.get(engine.value)
        if section is None:
            continue
        if not isinstance(section, dict):
            return f"has a {engine.value} section that is not a mapping"
        for flag, value in section.items():
            if isinstance(value, dict | list):
                return f"sets {engine.value}.{flag} to a {type(value).__name__}; flags take scalars"
    return None


def training_config_problem(text: str) -> str | None:
    """What the tuning entrypoint would refuse in this training_config.yaml, or None."""
    data, problem = _load_mapping(text)
    if data is None:
        return problem
    root = data.get("training_config", data)
    if not isinstance(root, dict):
        return "has a training_config that is not a mapping"
    for section in TRAINING_SECTIONS:
        if root.get(section) is not None and not isinstance(root[section], dict):
            return f"has a {section} that is not a mapping"
    return None


# -- update ---------------------------------------------------------------------------


def _dump(model: Any) -> Any:
    return model.to_dict() if model is not None else None


def check_update(ws: Workspace, old: Workspace) -> list[FieldError]:
    """What may not change, and the adapters (revalidated when they change).

    Rules that judge the spec against the catalog are not re-run on update: a preset
    deprecated after the workspace was created must not block the controller's own
    metadata updates (finalizer removal on delete).
    """
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
        immutable("tuning.input", _dump(ws.tuning.input), _dump(old.tuning.input))
    if ws.metadata.annotations.get(ANNOTATION_RUNTIME) != old.metadata.annotations.get(
        ANNOTATION_RUNTIME
    ):
        errors += _check_runtime_annotation(ws)
    return errors


def _dump_list(items: Sequence[Any]) -> list[Any]:
    return [_dump(i) for i in items]


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return str(value)


# -- the whole review -----------------------------------------------------------------


async def validate(
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    read_configmap: ConfigMapReader,
    catalog: Catalog | None = None,
) -> list[FieldError]:
    """All errors for creating ``obj`` (``old`` None) or updating ``old`` to ``obj``."""
    ws, errors = parse(obj)
    if ws is None:
        return errors
    if old is None:
        return check_create(ws, catalog=catalog) + await check_configs(ws, read_configmap)
    before, _ = parse(old)
    if before is None:  # stored before the schema tightened: judge it as a new object
        return check_create(ws, catalog=catalog)
    errors = check_update(ws, before)
    changed = [
        field
        for (field, name, _), (old_field, old_name, _) in _pairs(ws, before)
        if name != old_name or field != old_field
    ]
    if changed:
        errors += await check_configs(ws, read_configmap, only=changed)
    return errors


def _pairs(
    ws: Workspace, old: Workspace
) -> list[tuple[tuple[str, str, str], tuple[str, str, str]]]:
    old_refs = {field: (field, name, key) for field, name, key in config_references(old)}
    return [(ref, old_refs.get(ref[0], ("", "", ""))) for ref in config_references(ws)]
