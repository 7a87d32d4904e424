"""CustomResourceDefinition generation from pydantic models.

Why generate: the CRD's OpenAPI schema and the pydantic models describe the same
object; writing both by hand lets them drift, and a drifted schema silently prunes
fields the controller reads. The committed YAML under ``deploy/crds/`` is this module's
output, and a unit test fails when it is not current.

Kubernetes wants a *structural* OpenAPI v3.0 schema (apiextensions.k8s.io/v1), while
pydantic emits JSON Schema 2020-12. `structural_schema` bridges the two:

- ``$ref`` / ``$defs`` are inlined (Kubernetes allows no references);
- ``Optional[X]`` (``anyOf: [X, null]``) becomes ``X``: absence, not null, means unset;
- ``title`` is dropped, and so are model (class) docstrings: those explain the code to
  developers; field ``description`` is what ``kubectl explain`` shows users (whitespace
  folded to one line, reST ``literals`` unquoted: attribute docstrings are written for
  both readers);
- defaults are kept only for non-empty scalars (``count: 1``); an empty list, map or
  string default would only make the apiserver write noise into every object;
- a free-form ``dict[str, Any]`` becomes ``x-kubernetes-preserve-unknown-fields``;
- JSON Schema's numeric ``exclusiveMinimum``/``exclusiveMaximum`` become OpenAPI 3.0's
  ``minimum`` + boolean flag; ``const`` (a one-value ``Literal``) becomes an ``enum``;
- the one union Kubernetes takes, ``x-kubernetes-int-or-string`` (a quantity), keeps
  its ``anyOf: [integer, string]``;
- the root's ``metadata`` is ``type: object`` and never required: the apiserver owns it.

Anything else the bridge does not understand raises, so a new pydantic construct fails
the generator instead of producing a schema the apiserver rejects at install time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

_PASSTHROUGH = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "default",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's OpenAPI v3 structural schema (by alias), ready for a CRD version."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    root = _convert(raw, defs, path=model.__name__)
    root.pop("description", None)  # the root's description is the class docstring
    return root


def _description(text: str) -> str:
    return " ".join(text.split()).replace("``", "")


def _resolve(ref: str, defs: Mapping[str, Schema]) -> Schema:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise ValueError(f"cannot resolve schema reference {ref}")
    target = dict(defs[ref[len(prefix) :]])
    target.pop("description", None)  # a class docstring: for developers, not users
    return target


def _convert(node: Schema, defs: Mapping[str, Schema], *, path: str) -> Schema:
    node = dict(node)
    node.pop("title", None)
    if "$ref" in node:
        ref = node.pop("$ref")
        node = {**_resolve(ref, defs), **node}
        node.pop("title", None)
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    int_or_string_types = sorted(b.get("type", "") for b in node.get("anyOf", ()))
    if int_or_string and int_or_string_types != ["integer", "string"]:
        raise ValueError(f"{path}: int-or-string must be anyOf integer and string")
    for combinator in ("anyOf", "oneOf"):
        if combinator in node and not (int_or_string and combinator == "anyOf"):
            branches = [b for b in node.pop(combinator) if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"{path}: unions are not structural ({combinator})")
            node = {**_convert(branches[0], defs, path=path), **node}
    if "allOf" in node:
        branches = node.pop("allOf")
        if len(branches) != 1:
            raise ValueError(f"{path}: allOf with several branches is not structural")
        node = {**_convert(branches[0], defs, path=path), **node}

    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "description" in node:
        node["description"] = _description(node["description"])
    if "default" in node and not _keep_default(node["default"]):
        del node["default"]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in node and not isinstance(node[key], bool):
            node[bound] = node.pop(key)
            node[key] = True
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        node["type"] = "object"

    allowed = _PASSTHROUGH | {"exclusiveMinimum", "exclusiveMaximum"}
    unknown = set(node) - allowed - ({"anyOf"} if int_or_string else set())
    if unknown:
        raise ValueError(f"{path}: schema keywords Kubernetes does not take: {sorted(unknown)}")
    if "properties" in node:
        node["properties"] = {
            name: _convert(sub, defs, path=f"{path}.{name}")
            for name, sub in node["properties"].items()
        }
    if isinstance(node.get("items"), dict):
        node["items"] = _convert(node["items"], defs, path=f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(
            node["additionalProperties"], defs, path=f"{path}{{}}"
        )
    return _ordered(node)


_KEY_ORDER = (
    "type",
    "description",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)


def _ordered(node: Schema) -> Schema:
    """Type and description first, nested schemas last: the YAML reads top-down."""
    first = [k for k in _KEY_ORDER if k in node]
    nested = [k for k in ("required", "properties", "items", "additionalProperties") if k in node]
    rest = sorted(k for k in node if k not in first and k not in nested)
    return {k: node[k] for k in (*first, *rest, *nested)}


def _keep_default(value: object) -> bool:
    if value is None or isinstance(value, list | dict):
        return False
    return not (isinstance(value, str) and value == "")


@dataclass(frozen=True, kw_only=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry: what ``kubectl get`` shows."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    """0: always shown; 1: only with ``kubectl get -o wide``."""

    def to_dict(self) -> Schema:
        out: Schema = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def condition_column(name: str, condition_type: str) -> PrinterColumn:
    """A column showing the status of the condition of type ``condition_type``."""
    return PrinterColumn(
        name=name,
        json_path=f'.status.conditions[?(@.type=="{condition_type}")].status',
        description=f"status of the {condition_type} condition",
    )


AGE_COLUMN = PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")


@dataclass(frozen=True, kw_only=True)
class CrdSpec:
    """Everything about a CRD that is not its schema."""

    group: str
    kind: str
    plural: str
    singular: str
    versions: Sequence[str]
    storage_version: str
    scope: str = "Namespaced"
    short_names: Sequence[str] = ()
    categories: Sequence[str] = ()
    status_subresource: bool = True
    printer_columns: Sequence[PrinterColumn] = field(default_factory=tuple)
    description: str = ""
    """What ``kubectl explain <kind>`` says about the kind (default: nothing)."""


def custom_resource_definition(spec: CrdSpec, model: type[BaseModel]) -> Schema:
    """An apiextensions.k8s.io/v1 CRD whose versions all share ``model``'s schema.

    Conversion strategy None: the versions are the same schema under different names
    (the apiserver only rewrites ``apiVersion``), so no conversion webhook is needed.
    The root's ``metadata`` is reduced to ``type: object`` and dropped from ``required``:
    the apiserver owns its schema.
    """
    if spec.storage_version not in spec.versions:
        raise ValueError(f"storage version {spec.storage_version} is not among {spec.versions}")
    schema = structural_schema(model)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "the versioned schema of this object"}
    props["kind"] = {"type": "string", "description": "the REST resource this object represents"}
    props["metadata"] = {"type": "object"}
    ordered = {k: props[k] for k in ("apiVersion", "kind", "metadata")}
    ordered.update({k: v for k, v in props.items() if k not in ordered})
    schema["properties"] = ordered
    required = [r for r in schema.get("required", ()) if r != "metadata"]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    if spec.description:
        schema = _ordered({**schema, "description": spec.description})
    names: Schema = {
        "kind": spec.kind,
        "listKind": f"{spec.kind}List",
        "plural": spec.plural,
        "singular": spec.singular,
    }
    if spec.short_names:
        names["shortNames"] = list(spec.short_names)
    if spec.categories:
        names["categories"] = list(spec.categories)
    versions = []
    for name in spec.versions:
        version: Schema = {
            "name": name,
            "served": True,
            "storage": name == spec.storage_version,
            "schema": {"openAPIV3Schema": schema},
        }
        if spec.status_subresource:
            version["subresources"] = {"status": {}}
        if spec.printer_columns:
            version["additionalPrinterColumns"] = [c.to_dict() for c in spec.printer_columns]
        versions.append(version)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{spec.plural}.{spec.group}"},
        "spec": {
            "group": spec.group,
            "names": names,
            "scope": spec.scope,
            "conversion": {"strategy": "None"},
            "versions": versions,
        },
    }
