"""Structured output for providers whose API has no ``response_format``: Anthropic and Bedrock.

A chat request's ``response_format`` (``json_schema``: the answer must match the schema;
``json_object``: any JSON object) is what the ``openai`` SDK's ``parse``, the Vercel AI SDK's
``generateObject`` and most agent frameworks send for typed answers. Anthropic's Messages API and
Bedrock's Converse API take no such field, but both force a tool call and validate the call's input
against the tool's schema. So, as LiteLLM does for these providers:

* :func:`as_tool_call`: the chat request gets one tool, :data:`JSON_TOOL`, whose ``parameters``
  are the schema (``{"type": "object"}`` for ``json_object``), and ``tool_choice`` forcing it; the
  ``response_format`` goes. A request with tools of its own is refused (400): forcing the JSON tool
  would take their calls away;
* :func:`completion_content` and :class:`ContentStream`: the provider's answer, once in chat
  completions' shape, has that call's arguments as the message ``content`` (the JSON text), no
  tool call, and ``finish_reason`` ``stop`` (``length`` when cut), as an OpenAI provider answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ext_proc.errors import MalformedRequest
from ext_proc.wire.anthropic import SSEReader

__all__ = ["JSON_TOOL", "ContentStream", "as_tool_call", "completion_content", "wants_json"]

JSON_TOOL = "json_output"


def wants_json(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, Mapping) and fmt.get("type") in ("json_schema", "json_object")


def as_tool_call(body: Mapping[str, Any], provider_api: str) -> dict[str, Any]:
    """``body`` (with a JSON ``response_format``: :func:`wants_json`) with that format as a forced tool call."""
    fmt = body["response_format"]
    if body.get("tools"):
        raise MalformedRequest(f"response_format: {fmt['type']!r} together with tools is not translated to {provider_api} (its "
                               "structured output is a forced tool call, which would take the tools' calls away): send one or "
                               "the other", code="unsupported_parameter", param="response_format")
    description = "Give your whole answer as this tool's input: a JSON object."
    schema: Any = {"type": "object"}
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
            raise MalformedRequest("response_format.json_schema: expected an object with 'name' and 'schema'", code="invalid_value",
                                   param="response_format.json_schema")
        schema = spec.get("schema") or {"type": "object"}
        if schema.get("type", "object") != "object":
            raise MalformedRequest(f"response_format.json_schema.schema: {provider_api} takes a schema whose root is an object "
                                   f"(type 'object'), not {schema.get('type')!r}", code="unsupported_parameter",
                                   param="response_format.json_schema.schema")
        what = " ".join(str(x) for x in (spec.get("name"), spec.get("description")) if x)
        if what:
            description = f"{description} It is: {what}"
    out = {k: v for k, v in body.items() if k not in ("response_format", "tool_choice", "parallel_tool_calls")}
    out["tools"] = [{"type": "function", "function": {"name": JSON_TOOL, "description": description, "parameters": schema}}]
    out["tool_choice"] = {"type": "function", "function": {"name": JSON_TOOL}}
    return out


def _finish(reason: Any) -> Any:
    return "stop" if reason == "tool_calls" else reason


def completion_content(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (the translated answer) with the JSON tool's arguments as its content."""
    for choice in completion.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict) and (c.get("function") or {}).get("name") == JSON_TOOL]
        if calls:
            message["content"] = "".join(str(c["function"].get("arguments") or "") for c in calls)
            message.pop("tool_calls", None)
        choice["finish_reason"] = _finish(choice.get("finish_reason"))
    return completion


class ContentStream:
    """Chat-completion chunks (SSE, as the translators write them) with the JSON tool's argument
    deltas as ``content`` deltas; other text the provider streamed is left out (it is not JSON)."""

    def __init__(self) -> None:
        self._reader = SSEReader()

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(data) for _, data in self._reader.feed(chunk))

    def close(self) -> bytes:
        return b"".join(self._event(data) for _, data in self._reader.finish())

    @staticmethod
    def _event(data: str) -> bytes:
        try:
            chunk = json.loads(data) if data.startswith("{") else None
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return f"data: {data}\n\n".encode()  # [DONE], an error event: as they came
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            calls = delta.pop("tool_calls", None) or []
            delta.pop("content", None)
            text = "".join(str((c.get("function") or {}).get("arguments") or "") for c in calls if isinstance(c, dict))
            if text:
                delta["content"] = text
            choice["finish_reason"] = _finish(choice.get("finish_reason"))
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
