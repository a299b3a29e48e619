"""Tool schemas for the ``function_call`` engine: what a tool is, which JSON Schema it may use.

:func:`normalize_tool` turns an OpenAI tool (or a bare function object) into a :class:`Tool` whose
``parameters`` use only what the constrained decoder can express (type aliases mapped, enums
filtered to their type); anything else is :class:`UnsupportedSchema`. Also here: how values are
written (:func:`dump`), checked (:func:`validator`), which kinds a value may take
(:func:`value_kinds`), and what a parameter's description says about its values
(:func:`listed_form`, :func:`described_default`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

JSON = Any

# keywords the grammar cannot express and that change what a value *is*
_UNSUPPORTED = (
    "$ref", "$dynamicRef", "allOf", "not", "if", "then", "else", "patternProperties",
    "dependentSchemas", "dependentRequired", "prefixItems", "contains", "propertyNames",
    "unevaluatedProperties", "unevaluatedItems",
)
_TYPE_ALIASES = {
    "str": "string", "string": "string", "text": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "double": "number", "number": "number",
    "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "tuple": "array",
    "dict": "object", "object": "object", "hashmap": "object",
    "null": "null", "none": "null",
    "any": None,  # anything
}


class UnsupportedSchema(ValueError):
    """The tool's parameter schema uses something the constrained decoder cannot express."""


class Tool:
    """A normalized function: ``name``, ``description``, ``parameters`` (JSON Schema object)."""

    __slots__ = ("name", "description", "parameters", "properties", "required")

    def __init__(self, name: str, description: str, parameters: dict[str, JSON]) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters
        self.properties: dict[str, dict[str, JSON]] = parameters.get("properties", {})
        self.required: list[str] = [k for k in parameters.get("required", []) if k in self.properties]


def normalize_tool(tool: dict[str, JSON]) -> Tool:
    if not isinstance(tool, dict):
        raise UnsupportedSchema("a tool must be a JSON object")
    fn = tool.get("function") if tool.get("type") == "function" or "function" in tool else tool
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise UnsupportedSchema("a tool needs a function name")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    params = _normalize(copy.deepcopy(params), "parameters")
    if params.get("type") != "object":
        raise UnsupportedSchema("parameters: the top level must be an object schema")
    if params.get("additionalProperties") not in (None, False, True) and not params.get("properties"):
        raise UnsupportedSchema("parameters: free-form top-level objects are not supported")
    for key in params.get("required", []):
        if key not in params.get("properties", {}):
            raise UnsupportedSchema(f"parameters: required {key!r} is not a property")
    return Tool(fn["name"], str(fn.get("description") or ""), params)


def _normalize(schema: JSON, where: str) -> dict[str, JSON]:
    if schema is True or schema == {}:
        return {}
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: a schema must be an object, got {schema!r}")
    for kw in _UNSUPPORTED:
        if kw in schema:
            raise UnsupportedSchema(f"{where}: {kw!r} is not supported by the constrained decoder")
    t = schema.get("type")
    if isinstance(t, str):
        if t.lower() not in _TYPE_ALIASES:
            raise UnsupportedSchema(f"{where}: unknown type {t!r}")
        mapped = _TYPE_ALIASES[t.lower()]
        if mapped is None:
            schema.pop("type")
        else:
            schema["type"] = mapped
    elif isinstance(t, list):
        mapped_list: list[str] = []
        for x in t:
            if not isinstance(x, str) or x.lower() not in _TYPE_ALIASES:
                raise UnsupportedSchema(f"{where}: unknown type {x!r}")
            m = _TYPE_ALIASES[x.lower()]
            if m is None:
                mapped_list = []
                break
            mapped_list.append(m)
        if mapped_list:
            schema["type"] = list(dict.fromkeys(mapped_list))
        else:
            schema.pop("type")
    elif t is not None:
        raise UnsupportedSchema(f"{where}: bad type {t!r}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise UnsupportedSchema(f"{where}: enum must be a non-empty list")
    if "enum" in schema and "type" in schema:
        # BFCL writes enums of numbers under a string type etc.; keep only members of the type
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        kept = [v for v in schema["enum"] if any(_is_type(v, ty) for ty in types)]
        schema["enum"] = kept or schema["enum"]
        if not kept:
            schema.pop("type")
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {k: _normalize(v, f"{where}.{k}") for k, v in schema["properties"].items()}
        if "type" not in schema:
            schema["type"] = "object"
    elif "properties" in schema:
        raise UnsupportedSchema(f"{where}: properties must be an object")
    if "items" in schema:
        if isinstance(schema["items"], list):  # draft-4 tuple form
            raise UnsupportedSchema(f"{where}: tuple-form items are not supported")
        schema["items"] = _normalize(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _normalize(schema["additionalProperties"], f"{where}.*")
    for kw in ("anyOf", "oneOf"):
        if kw in schema:
            if not isinstance(schema[kw], list) or not schema[kw]:
                raise UnsupportedSchema(f"{where}: {kw} must be a non-empty list")
            schema[kw] = [_normalize(s, f"{where}.{kw}[{i}]") for i, s in enumerate(schema[kw])]
    for key in ("required",):
        if key in schema and not isinstance(schema[key], list):
            schema.pop(key)  # BFCL/Arch sometimes write required: true on a property
    # a default that does not validate would confuse jsonschema users; leave it, only descriptive
    return schema


def _is_type(v: JSON, t: str) -> bool:
    if t == "string":
        return isinstance(v, str)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "null":
        return v is None
    if t == "array":
        return isinstance(v, list)
    if t == "object":
        return isinstance(v, dict)
    return False


def dump(value: JSON) -> str:
    """JSON on one line, spaced as models usually read and write it (``{"a": 1, "b": 2}``)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


_VALIDATORS: dict[str, Any] = {}


def validator(schema: dict[str, JSON]) -> Any:
    import jsonschema

    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        if len(_VALIDATORS) > 1024:
            _VALIDATORS.clear()
        _VALIDATORS[key] = v
    return v


def value_kinds(schema: dict[str, JSON]) -> set[str]:
    """The JSON kinds a value of ``schema`` may take ("enum:<delims>" for enum literals)."""
    if "const" in schema or "enum" in schema:
        lits = [schema["const"]] if "const" in schema else schema["enum"]
        return {"literal:" + dump(v) for v in lits}
    alts = [a for kw in ("anyOf", "oneOf") for a in schema.get(kw, [])]
    if alts:
        return set().union(*(value_kinds(a) for a in alts))
    t = schema.get("type")
    if t is None:
        return {"any"}
    return set(t) if isinstance(t, list) else {t}


_QUOTED_RE = re.compile(r"'([^'\n]{1,40})'|\"([^\"\n]{1,40})\"")


def _key(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower()).removesuffix("s")


def listed_form(value: str, schema: dict[str, JSON]) -> str:
    """The value as the parameter's description spells it, when the description quotes the
    values it takes ("Valid values include: 'spades', 'hearts'") and the model wrote one of
    them in another form (case, spacing, punctuation, singular/plural: "heart" → "hearts")."""
    if "enum" in schema or "const" in schema or not value.strip():
        return value
    listed = [a or b for a, b in _QUOTED_RE.findall(str(schema.get("description") or ""))]
    if value in listed:
        return value
    matches = {lit for lit in listed if _key(lit) == _key(value) and _key(lit)}
    return matches.pop() if len(matches) == 1 else value


_DEFAULT_RE = re.compile(r"\bdefaults?(?: value)?(?: is| to|:|=)\s*(?P<v>'[^']*'|\"[^\"]*\"|[-+]?\d+(?:\.\d+)?|true|false)",
                         re.IGNORECASE)


def described_default(schema: dict[str, JSON]) -> JSON:
    """The default a parameter's description states in words ("Default is 52", "defaults to
    'roast'"), when the schema has no ``default`` keyword: a quoted string, a number or a
    boolean, read as the parameter's type; None when there is none or it does not parse."""
    m = _DEFAULT_RE.search(str(schema.get("description") or ""))
    if m is None:
        return None
    raw, kinds = m.group("v"), value_kinds(schema)
    if raw[0] in "'\"":
        return raw[1:-1] if "string" in kinds and raw[1:-1] else None
    if raw.lower() in ("true", "false"):
        return (raw.lower() == "true") if "boolean" in kinds else None
    number = float(raw)
    if "integer" in kinds and number.is_integer():
        return int(number)
    return number if "number" in kinds else None
