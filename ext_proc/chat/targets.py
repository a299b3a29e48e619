"""Prompt targets as tools: their JSON schema, their arguments, and the HTTP call they make.

Everything here is plain data in, plain data out (no model, no network), so each rule of
DESIGN.md step 4-5 has its own unit test:

    schema = tool_schema(target)                          # what the function-calling model fills
    args, missing, problems = finalize_arguments(target, {"location": "Seattle", "days": "10"})
    call = endpoint_request(target, args)                 # method, path, query, JSON body, headers
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ext_proc.config import Parameter, PromptTarget
from ext_proc.names import ARCH_STATE_KEY

__all__ = [
    "EndpointCall",
    "PendingState",
    "clarifying_question",
    "coerce",
    "endpoint_request",
    "finalize_arguments",
    "tool_schema",
]

_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "array": "array", "object": "object"}


def tool_schema(target: PromptTarget) -> dict[str, Any]:
    """The target as an OpenAI tool (``{"type": "function", "function": {...}}``)."""
    props: dict[str, Any] = {}
    for p in target.parameters:
        prop: dict[str, Any] = {"type": _JSON_TYPES[p.type]}
        if p.description:
            prop["description"] = p.description + (f" (format: {p.format})" if p.format else "")
        if p.enum is not None:
            prop["enum"] = list(p.enum)
        if p.has_default:
            prop["default"] = p.default
        if p.type == "array":  # the item schema the config gives (e.g. integers), else strings
            prop["items"] = dict(p.items) if p.items else {"type": "string"}
        props[p.name] = prop
    return {
        "type": "function",
        "function": {
            "name": target.name,
            "description": target.description,
            "parameters": {
                "type": "object",
                "properties": props,
                "required": [p.name for p in target.parameters if p.required],
            },
        },
    }


class CoercionError(ValueError):
    pass


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def coerce(value: Any, ptype: str) -> Any:
    """Convert a model- or user-supplied value to the declared type, or raise :class:`CoercionError`."""
    if ptype == "string":
        if isinstance(value, (dict, list)):
            raise CoercionError(f"expected a string, got {type(value).__name__}")
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, bool) else str(value)
    if ptype == "integer":
        if isinstance(value, bool):
            raise CoercionError("expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip().replace(",", "")
            try:
                f = float(s)
            except ValueError:
                raise CoercionError(f"expected an integer, got {value!r}") from None
            if math.isfinite(f) and f.is_integer():
                return int(f)
        raise CoercionError(f"expected an integer, got {value!r}")
    if ptype == "number":
        if isinstance(value, bool):
            raise CoercionError("expected a number, got a boolean")
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value
        if isinstance(value, str):
            try:
                f = float(value.strip().replace(",", ""))
            except ValueError:
                raise CoercionError(f"expected a number, got {value!r}") from None
            if math.isfinite(f):
                return int(f) if f.is_integer() and "." not in value else f
        raise CoercionError(f"expected a number, got {value!r}")
    if ptype == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise CoercionError(f"expected true or false, got {value!r}")
    if ptype == "array":
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("["):
                try:
                    parsed = json.loads(s)
                except ValueError:
                    parsed = None
                if isinstance(parsed, list):
                    return parsed
            return [part.strip() for part in s.split(",") if part.strip()]
        return [value]
    if ptype == "object":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        raise CoercionError(f"expected an object, got {value!r}")
    raise CoercionError(f"unknown type {ptype!r}")


def _enum_match(value: Any, p: Parameter) -> Any:
    assert p.enum is not None
    if value in p.enum:
        return value
    if isinstance(value, str):  # "gbp" for enum ["GBP", ...]
        for allowed in p.enum:
            if isinstance(allowed, str) and allowed.lower() == value.strip().lower():
                return allowed
    raise CoercionError(f"must be one of {list(p.enum)}, got {value!r}")


def finalize_arguments(target: PromptTarget, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Coerce, check enums, fill defaults. Returns (arguments, missing required names, problems).

    A value that cannot be coerced or is outside its enum is dropped and reported in
    ``problems`` (name → why); if that parameter is required it is also ``missing``, so the user
    is asked for it again rather than the endpoint being called with a wrong value.
    """
    args: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for p in target.parameters:
        value = raw.get(p.name)
        if value is None or value == "":
            if p.has_default:
                args[p.name] = p.default
            continue
        try:
            value = coerce(value, p.type)
            if p.enum is not None:
                value = _enum_match(value, p)
        except CoercionError as exc:
            problems[p.name] = str(exc)
            if p.has_default:
                args[p.name] = p.default
            continue
        args[p.name] = value
    missing = [p.name for p in target.parameters if p.required and p.name not in args]
    return args, missing, problems


def clarifying_question(target: PromptTarget, missing: list[str], problems: dict[str, str] | None = None) -> str:
    """One short question asking for every missing required parameter, by its description."""
    problems = problems or {}
    by_name = {p.name: p for p in target.parameters}
    asks = []
    for name in missing:
        p = by_name[name]
        what = p.description.rstrip(".") if p.description else name.replace("_", " ")
        if what[:4].lower() == "the ":
            what = what[4:]
        extra = f" (one of {', '.join(map(str, p.enum))})" if p.enum else ""
        asks.append(f"{what}{extra}")
    joined = asks[0] if len(asks) == 1 else ", ".join(asks[:-1]) + " and " + asks[-1]
    notes = "".join(f" The {name.replace('_', ' ')} I understood is not valid: {why}." for name, why in problems.items() if name in missing)
    return f"Could you tell me the {joined}?{notes}"


@dataclass(frozen=True, kw_only=True)
class EndpointCall:
    method: str
    path: str  # with placeholders filled and the query string appended
    json_body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)


def endpoint_request(target: PromptTarget, args: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> EndpointCall:
    """Fill ``{name}`` placeholders (URL-encoded); the rest goes to the query (GET) or JSON body (POST).

    The ``default: true`` target's POST body also carries the conversation as the client sent it,
    ``{"messages": [...]}``, as Arch sends it: the prompt it serves matched no other target, so
    its endpoint has nothing else to go on (plano's RAG demo's default target summarises it)."""
    assert target.endpoint is not None
    ep = target.endpoint
    path = ep.path
    used: set[str] = set()
    for name, value in args.items():
        token = "{" + name + "}"
        if token in path:
            path = path.replace(token, quote(_as_text(value), safe=""))
            used.add(name)
    rest = {k: v for k, v in args.items() if k not in used}
    body = None
    if ep.http_method == "GET":
        if rest:
            from urllib.parse import urlencode

            query = urlencode([(k, _as_text(v)) for k, v in rest.items()])
            path += ("&" if "?" in path else "?") + query
    else:
        body = {"messages": messages or [], **rest} if target.default else rest
    return EndpointCall(method=ep.http_method, path=path, json_body=body, headers=dict(ep.http_headers))


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass(frozen=True, kw_only=True)
class PendingState:
    """What travels in ``metadata["x-arch-state"]`` between a clarifying question and its answer."""

    target: str
    arguments: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    def encode(self) -> str:
        return json.dumps({"pending_target": self.target, "arguments": self.arguments, "messages": self.messages})

    @classmethod
    def decode(cls, metadata: Any) -> PendingState | None:
        """From a request's top-level ``metadata``; None when absent or not ours (never an error)."""
        if not isinstance(metadata, dict):
            return None
        raw = metadata.get(ARCH_STATE_KEY)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                return None
        if not isinstance(raw, dict) or not isinstance(raw.get("pending_target"), str):
            return None
        args = raw.get("arguments")
        return cls(target=raw["pending_target"], arguments=args if isinstance(args, dict) else {})
