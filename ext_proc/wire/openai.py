"""The OpenAI chat-completions wire format: what sidegate synthesises and what it checks.

Usage::

    body = chat_completion("Which city?", model="sidegate-fc")            # dict, JSON-ready
    frames = sse_frames("Which city?", model="sidegate-fc")               # list[bytes], ends in [DONE]
    req = parse_chat_request(raw_bytes)                                   # raises MalformedRequest

Responses sidegate writes itself (guard messages, clarifying questions, endpoint replies, errors)
come from here, so every synthesised answer has the same shape as a provider's.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ext_proc.errors import MalformedRequest

__all__ = ["ChatRequest", "as_object", "chat_completion", "json_object", "nonnegative", "parse_chat_request", "sse_frames", "usage_from_body", "usage_from_sse"]

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    body: dict[str, Any]
    model: str | None
    stream: bool
    messages: list[dict[str, Any]]

    @property
    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def as_object(v: Any) -> dict[str, Any]:
    """``v`` when it is a JSON object, else an empty one (provider JSON is read defensively)."""
    return v if isinstance(v, dict) else {}


def nonnegative(v: Any) -> int:
    """``v`` when it is an integer of at least 0 (not a bool), else 0: counts and indices read defensively."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object (``what``: the API, for the error); MalformedRequest (400) otherwise."""
    if not raw:
        raise MalformedRequest(f"request body is empty: send a JSON {what} request", code="empty_body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise MalformedRequest(f"request body must be a JSON object, got {type(body).__name__}", code="invalid_body")
    return body


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat-completions request body; raise :class:`MalformedRequest` (400)."""
    body = json_object(raw, "chat-completions")
    if "messages" not in body:
        raise MalformedRequest("missing required parameter: 'messages'", code="missing_required_parameter", param="messages")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise MalformedRequest("'messages' must be a non-empty array of message objects", code="invalid_type", param="messages")
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise MalformedRequest(f"'{param}' must be an object, got {type(m).__name__}", code="invalid_type", param=param)
        role = m.get("role")
        if not isinstance(role, str):
            raise MalformedRequest(f"'{param}.role' must be a string", code="invalid_type", param=f"{param}.role")
        if role not in _ROLES:
            raise MalformedRequest(
                f"'{param}.role' must be one of {sorted(_ROLES)}, got {role!r}", code="invalid_value", param=f"{param}.role"
            )
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise MalformedRequest(
                f"'{param}.content' must be a string, an array of content parts or null", code="invalid_type", param=f"{param}.content"
            )
        if content is None and role in {"user", "system", "developer"}:
            raise MalformedRequest(f"'{param}.content' is required for role {role!r}", code="missing_required_parameter", param=f"{param}.content")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise MalformedRequest("'model' must be a string", code="invalid_type", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise MalformedRequest("'stream' must be a boolean", code="invalid_type", param="stream")
    for key, kinds, name in (("temperature", (int, float), "a number"), ("max_tokens", (int,), "an integer"), ("n", (int,), "an integer")):
        if key in body and body[key] is not None and (not isinstance(body[key], kinds) or isinstance(body[key], bool)):
            raise MalformedRequest(f"'{key}' must be {name}", code="invalid_type", param=key)
    return ChatRequest(body=body, model=model, stream=stream, messages=messages)


def _ids() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def chat_completion(
    content: str, *, model: str, metadata: dict[str, Any] | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A non-streaming chat completion with one assistant message."""
    cid, created = _ids()
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    if metadata:
        out["metadata"] = metadata
    return out


def sse_frames(content: str, *, model: str, metadata: dict[str, Any] | None = None) -> list[bytes]:
    """The same answer as ``chat.completion.chunk`` SSE frames: role, content, finish, ``[DONE]``."""
    cid, created = _ids()

    def frame(delta: dict[str, Any], finish: str | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if metadata and finish:
            chunk["metadata"] = metadata
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    return [
        frame({"role": "assistant", "content": ""}, None),
        frame({"content": content}, None),
        frame({}, "stop"),
        b"data: [DONE]\n\n",
    ]


def usage_from_body(raw: bytes) -> dict[str, int] | None:
    """``usage`` of a non-streaming completion, or None when absent or not JSON."""
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def usage_from_sse(buffer: bytes) -> tuple[dict[str, int] | None, bytes]:
    """Scan complete SSE events in ``buffer`` for a ``usage`` object; return it and the unparsed tail."""
    usage = None
    *events, tail = buffer.split(b"\n\n")
    for ev in events:
        for line in ev.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                try:
                    u = json.loads(line[5:].strip()).get("usage")
                except (ValueError, AttributeError):
                    continue
                if isinstance(u, dict):
                    usage = u
    return usage, tail
