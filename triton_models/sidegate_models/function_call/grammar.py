"""GBNF grammars for the ``function_call`` engine, and reading back what they let the model write.

:class:`Grammar` turns a (normalized) value schema into llama.cpp GBNF rules: every key written by
the grammar, in schema order, on one line; the model only chooses values. :func:`stop_strings`,
:func:`parse_value` and :func:`salvage` read the text a grammar produced, complete or cut off.
"""

from __future__ import annotations

import json
import logging

from sidegate_models.function_call.schema import JSON, Tool, UnsupportedSchema, dump, value_kinds

log = logging.getLogger("sidegate.function_call")

def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# shared terminal rules; names are fixed, referenced by value rules
_BASE_RULES = {
    "str": '"\\"" chr* "\\""',
    "chr": '[^"\\\\\\x00-\\x1f\\x7f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])',
    "int": '"-"? ("0" | [1-9] [0-9]{0,17})',
    "num": 'int ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "bool": '"true" | "false"',
    "null": '"null"',
    "any": 'str | num | bool | null | anyarr | anyobj',
    "anyarr": '"[" (any (", " any)*)? "]"',
    "anyobj": '"{" (str ": " any (", " str ": " any)*)? "}"',
}
_BASE_DEPS = {"str": ["chr"], "num": ["int"], "any": ["str", "num", "bool", "null", "anyarr", "anyobj", "int", "chr"],
              "anyarr": ["any"], "anyobj": ["any", "str"]}


class Grammar:
    """Collects GBNF rules; :meth:`value` returns the name of a rule for a value schema."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._used_base: set[str] = set()
        self._n = 0

    def _base(self, name: str) -> str:
        stack = [name]
        while stack:
            n = stack.pop()
            if n not in self._used_base:
                self._used_base.add(n)
                stack.extend(_BASE_DEPS.get(n, []))
        return name

    def add(self, body: str, hint: str = "r") -> str:
        self._n += 1
        name = f"{hint}{self._n}"
        self.rules[name] = body
        return name

    def value(self, schema: dict[str, JSON]) -> str:
        """Rule name matching any JSON text valid for ``schema``'s shape (narrowing keywords aside)."""
        if "const" in schema:
            return self.add(gbnf_literal(dump(schema["const"])), "const")
        if "enum" in schema:
            return self.add(" | ".join(gbnf_literal(dump(v)) for v in schema["enum"]), "enum")
        alts = [s for kw in ("anyOf", "oneOf") for s in schema.get(kw, [])]
        if alts:
            base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            names = [self.value({**base, **alt}) for alt in alts]
            return self.add(" | ".join(names), "alt")
        t = schema.get("type")
        if isinstance(t, list):
            names = [self.value({**schema, "type": x}) for x in t]
            return self.add(" | ".join(names), "alt")
        if t is None:
            return self._base("any")
        if t == "string":
            return self._base("str")
        if t == "integer":
            return self._base("int")
        if t == "number":
            return self._base("num")
        if t == "boolean":
            return self._base("bool")
        if t == "null":
            return self._base("null")
        if t == "array":
            item = self.value(schema.get("items") or {})
            return self.add(f'"[" ({item} (", " {item})*)? "]"', "arr")
        if t == "object":
            return self._object(schema)
        raise UnsupportedSchema(f"type {t!r}")

    def _object(self, schema: dict[str, JSON]) -> str:
        props: dict[str, dict[str, JSON]] = schema.get("properties") or {}
        if not props:
            return self._base("anyobj")
        required = set(schema.get("required") or [])
        kv = {k: f'{gbnf_literal(dump(k) + ": ")} {self.value(s)}' for k, s in props.items()}
        req = [k for k in props if k in required]
        opt = [k for k in props if k not in required]
        if req:
            body = ' ", " '.join(kv[k] for k in req)
            body += "".join(f' (", " {kv[k]})?' for k in opt)
            return self.add(f'"{{" {body} "}}"', "obj")
        # no required key: any ordered subset of the optional ones
        alts = []
        for i, k in enumerate(opt):
            tail = "".join(f' (", " {kv[j]})?' for j in opt[i + 1:])
            alts.append(f"{kv[k]}{tail}")
        return self.add(f'"{{" ({" | ".join(alts)})? "}}"', "obj")

    def render(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{n} ::= {b}" for n, b in self.rules.items()]
        lines += [f"{n} ::= {_BASE_RULES[n]}" for n in sorted(self._used_base)]
        return "\n".join(lines) + "\n"


def stop_strings(schema: dict[str, JSON], delim: str) -> list[str]:
    """Stop strings that end a value followed by ``delim`` and can never occur inside it."""
    kinds = value_kinds(schema) | {"null"}
    stops: set[str] = set()
    for kind in kinds:
        if kind.startswith("literal:"):
            lit = kind[len("literal:"):]
            if delim in lit:
                return []
            stops.add(delim)
        elif kind in ("integer", "number", "boolean", "null"):
            stops.add(delim)
        elif kind == "string":
            stops.add('"' + delim)
        else:  # arrays, objects, any: the delimiter can occur inside
            return []
    if delim in stops and '"' + delim in stops:  # a bare delimiter could end inside the string
        stops.discard(delim)
        stops.add("null" + delim)
        if kinds - {"string", "null"}:
            return []
    return sorted(stops)


def parse_value(text: str, delim: str) -> tuple[JSON, str]:
    """(value, its JSON text) from what the runtime returned (stop string cut off, or not)."""
    body = text.strip()
    if body.endswith(delim):
        body = body[: -len(delim)].rstrip()
    for candidate in (body, body + '"', body + "null" if not body else None):
        if candidate is None:
            continue
        try:
            return json.loads(candidate), candidate
        except json.JSONDecodeError:
            continue
    log.warning("function_call: value %r cut off; treating it as not given", text[:80])
    return None, "null"


def salvage(text: str, tool: Tool) -> dict[str, JSON]:
    """Values that were complete before the output was cut off (the rest count as not given)."""
    out: dict[str, JSON] = {}
    dec = json.JSONDecoder()
    for k in tool.properties:
        key = dump(k) + ":"
        i = text.find(key)
        if i < 0:
            break
        j = i + len(key)
        while j < len(text) and text[j] == " ":
            j += 1
        try:
            out[k], _ = dec.raw_decode(text, j)
        except json.JSONDecodeError:
            break
    return out
