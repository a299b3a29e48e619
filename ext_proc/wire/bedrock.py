"""Amazon Bedrock's Converse API, and its translation to and from OpenAI chat completions.

Usage::

    path = converse_path(model, stream=True)               # /model/<id>/converse-stream (id URL-encoded)
    body = chat_request_to_converse(chat_req.body)         # OpenAI chat request -> Converse request (dict)
    completion = converse_to_chat_completion(raw, model=m) # Converse JSON answer -> chat.completion (dict)
    s = ConverseToChatStream(model=m)                      # event-stream bytes -> chat.completion.chunk SSE
    out = s.feed(chunk) ...; out = s.close()
    usage = usage_from_converse(raw)                       # OpenAI-shaped usage of a JSON answer
    body = error_body_to_chat(raw, status)                 # a Bedrock error body in OpenAI shape

Bedrock answers ``POST /model/{modelId}/converse`` with JSON and ``.../converse-stream`` with
AWS *event-stream* framing (``application/vnd.amazon.eventstream``: binary frames, each a
prelude of total and header lengths with a CRC32, typed headers such as ``:event-type``, a JSON
payload and a CRC32 of the whole frame), not SSE. :class:`EventStreamDecoder` reads that framing.

Authentication follows Arch (plano's ``llm_gateway``): the provider's ``access_key`` (a Bedrock
API key, ``$AWS_BEARER_TOKEN_BEDROCK`` in Arch's demos) goes as ``Authorization: Bearer``, which
Envoy adds per route like every OpenAI-compatible family's key. AWS SigV4 signing with IAM access
keys is not implemented.

The request goes OpenAI -> Anthropic Messages (:func:`ext_proc.wire.anthropic.chat_request_to_messages`,
which checks and refuses what has no counterpart, e.g. tool-call arguments that are not a JSON
object) -> Converse, block by block: ``text``, ``image`` (base64 only: Converse takes no image
URL), ``toolUse``, ``toolResult``; ``system``; ``inferenceConfig`` (``maxTokens`` only when the
client set one, ``temperature``, ``topP``, ``stopSequences``); ``toolConfig`` (``tool_choice:
none`` has no Converse form: the tools stay, the choice is left to the model).
"""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ext_proc.errors import MalformedRequest, UpstreamError
from ext_proc.wire import anthropic
from ext_proc.wire.openai import as_object, nonnegative

__all__ = [
    "EVENT_STREAM_TYPE",
    "ConverseToChatStream",
    "EventMessage",
    "EventStreamDecoder",
    "chat_request_to_converse",
    "converse_path",
    "converse_to_chat_completion",
    "error_body_to_chat",
    "usage_from_converse",
]

EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"

# stopReason -> finish_reason
_FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                408: "timeout_error", 424: "upstream_error", 429: "rate_limit_error"}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def converse_path(model: str, *, stream: bool, base_path: str = "") -> str:
    """Where a Converse request for ``model`` goes; the model id is one URL-encoded path segment (``:`` -> ``%3A``)."""
    return f"{base_path.rstrip('/')}/model/{quote(model, safe='')}/converse{'-stream' if stream else ''}"


# --------------------------------------------------------------------------------------------------
# Request: OpenAI -> Converse


def _bad(path: str, what: str, code: str = "unsupported_content") -> MalformedRequest:
    return MalformedRequest(f"{path}: {what}", code=code, param=path)


def _block(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"text": block["text"]}
    if kind == "image":
        source = block["source"]
        if source.get("type") != "base64":
            raise _bad(path, "Bedrock's Converse API takes images as bytes only: send a base64 data: URL, not an http(s) URL")
        return {"image": {"format": _IMAGE_FORMATS[source["media_type"]], "source": {"bytes": source["data"]}}}
    if kind == "tool_use":
        return {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
    if kind == "tool_result":
        content = block.get("content")
        texts = [content] if isinstance(content, str) else [b.get("text", "") for b in content or [] if isinstance(b, dict)]
        return {"toolResult": {"toolUseId": block["tool_use_id"], "content": [{"text": t} for t in texts if t] or [{"text": ""}]}}
    raise _bad(path, f"{kind!r} content has no Converse form")


def chat_request_to_converse(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request (checked by ``parse_chat_request``) as a Converse request (no ``modelId``: it is in the path)."""
    msgs = anthropic.chat_request_to_messages(body)
    out: dict[str, Any] = {"messages": []}
    for i, m in enumerate(msgs["messages"]):
        content = m["content"]
        blocks = [{"text": content}] if isinstance(content, str) else [_block(b, f"messages[{i}].content[{j}]") for j, b in enumerate(content)]
        out["messages"].append({"role": m["role"], "content": blocks})
    if msgs.get("system"):
        out["system"] = [{"text": msgs["system"]}]
    inference: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = max_tokens
    if "temperature" in msgs:
        inference["temperature"] = msgs["temperature"]
    if "top_p" in msgs:
        inference["topP"] = msgs["top_p"]
    if msgs.get("stop_sequences"):
        inference["stopSequences"] = msgs["stop_sequences"]
    if inference:
        out["inferenceConfig"] = inference
    if msgs.get("tools"):
        tools = []
        for t in msgs["tools"]:
            spec: dict[str, Any] = {"name": t["name"], "inputSchema": {"json": t["input_schema"]}}
            if t.get("description"):
                spec["description"] = t["description"]
            tools.append({"toolSpec": spec})
        config: dict[str, Any] = {"tools": tools}
        choice = msgs.get("tool_choice") or {}
        if choice.get("type") == "any":
            config["toolChoice"] = {"any": {}}
        elif choice.get("type") == "tool":
            config["toolChoice"] = {"tool": {"name": choice["name"]}}
        elif choice.get("type") == "auto":
            config["toolChoice"] = {"auto": {}}
        out["toolConfig"] = config
    return out


# --------------------------------------------------------------------------------------------------
# Responses


def _chat_usage(usage: Any) -> dict[str, Any]:
    """Converse ``usage`` -> OpenAI ``usage`` (prompt_tokens counts cache reads and writes too)."""
    return anthropic.usage_from_keys(as_object(usage), "inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens", "outputTokens")


def _load(raw: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    return anthropic.load_answer(raw, "a Bedrock Converse answer")


def converse_to_chat_completion(raw: bytes | Mapping[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """A Converse answer as an OpenAI ``chat.completion``: text blocks join into ``content``,
    ``toolUse`` blocks become ``tool_calls``, ``stopReason`` -> ``finish_reason``."""
    answer = _load(raw)
    message = as_object(as_object(answer.get("output")).get("message"))
    content = message.get("content")
    if not isinstance(content, list):
        raise UpstreamError("the provider's answer is not a Bedrock Converse answer (output.message.content is not a list)")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        block = as_object(block)
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append({"id": str(use.get("toolUseId", "")), "type": "function",
                          "function": {"name": str(use.get("name", "")), "arguments": json.dumps(use.get("input") or {})}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or "",
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": _FINISH_REASON.get(str(answer.get("stopReason")), "stop")}],
        "usage": _chat_usage(answer.get("usage")),
    }


def usage_from_converse(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
        return None
    return _chat_usage(answer["usage"])


def error_body_to_chat(raw: bytes, status: int, error_type: str | None = None) -> bytes:
    """A Bedrock error (``{"message": ...}``, the exception name in ``x-amzn-errortype``) as OpenAI's ``{"error": {...}}``."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        payload = None
    message = None
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("Message")
    if not isinstance(message, str) or not message:
        message = raw.decode("utf-8", errors="replace").strip()[:500] or f"the provider answered status {status} with no error message"
    code = (error_type or "").split(":", 1)[0] or None
    etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code or etype}}).encode()


# --------------------------------------------------------------------------------------------------
# The event-stream framing


@dataclass(frozen=True)
class EventMessage:
    headers: dict[str, Any]
    payload: bytes


_PRELUDE = struct.Struct(">III")
_MAX_FRAME = 16 * 1024 * 1024  # AWS: a message is at most 16 MiB


def _headers(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(data):
        n = data[i]
        name = data[i + 1 : i + 1 + n].decode()
        i += 1 + n
        kind = data[i]
        i += 1
        value: Any
        if kind in (0, 1):
            value = kind == 0
        elif kind in (2, 3, 4, 5, 8):
            size = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8}[kind]
            value = int.from_bytes(data[i : i + size], "big", signed=True)
            i += size
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, i)
            raw = data[i + 2 : i + 2 + length]
            value = raw.decode() if kind == 7 else raw
            i += 2 + length
        elif kind == 9:
            value = data[i : i + 16]
            i += 16
        else:
            raise UpstreamError(f"the provider's event stream has a header of unknown type {kind}")
        out[name] = value
    return out


class EventStreamDecoder:
    """``application/vnd.amazon.eventstream`` bytes in (split anywhere), whole checked messages out."""

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def feed(self, chunk: bytes) -> list[EventMessage]:
        self._buf += chunk
        out: list[EventMessage] = []
        while len(self._buf) >= _PRELUDE.size:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(self._buf)
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                raise UpstreamError("the provider's event stream is corrupt (prelude checksum mismatch)")
            if total > _MAX_FRAME or total < _PRELUDE.size + headers_len + 4:
                raise UpstreamError(f"the provider's event stream is corrupt (a frame of {total} bytes)")
            if len(self._buf) < total:
                break
            frame, self._buf = self._buf[:total], self._buf[total:]
            (crc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(frame[:-4]) != crc:
                raise UpstreamError("the provider's event stream is corrupt (message checksum mismatch)")
            start = _PRELUDE.size
            out.append(EventMessage(_headers(frame[start : start + headers_len]), frame[start + headers_len : total - 4]))
        return out


class ConverseToChatStream:
    """A ``converse-stream`` answer -> OpenAI ``chat.completion.chunk`` SSE ending in ``data: [DONE]``.

    ``messageStart`` -> the ``{role: assistant}`` chunk; ``contentBlockDelta`` text -> ``content``;
    a ``toolUse`` block -> a ``tool_calls`` entry whose ``input`` deltas become ``arguments``;
    ``messageStop`` -> the ``finish_reason`` chunk; ``metadata`` (Bedrock's last event) -> the usage
    chunk (``choices: []``, only with ``include_usage``, as OpenAI does for ``stream_options.include_usage``)
    and ``[DONE]``. An exception message (``:message-type: exception``,
    e.g. ``throttlingException``) becomes ``data: {"error": {...}}`` and ends the stream, and so
    does a stream cut before ``messageStop``. :attr:`usage`: OpenAI-shaped, once ``metadata`` came.
    """

    def __init__(self, *, model: str | None = None, include_usage: bool = True) -> None:
        self._decoder = EventStreamDecoder()
        self._include_usage = include_usage
        self._model = model or ""
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # Converse block index -> OpenAI tool_calls index
        self._stopped = False
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        try:
            messages = self._decoder.feed(chunk)
        except UpstreamError as exc:
            return self._error("upstream_error", exc.message)
        return b"".join(self._message(m) for m in messages if not self.done)

    def close(self) -> bytes:
        if self.done:
            return b""
        if self._stopped:  # messageStop came, metadata did not: the answer is whole
            self.done = True
            return b"data: [DONE]\n\n"
        return self._error("upstream_error", "the provider's stream ended before messageStop (cut mid-stream)")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _error(self, etype: str, message: str) -> bytes:
        self.done = True
        body = {"error": {"message": message, "type": etype, "param": None, "code": etype}}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _message(self, m: EventMessage) -> bytes:
        kind = m.headers.get(":message-type", "event")
        try:
            payload = json.loads(m.payload) if m.payload else {}
        except (UnicodeDecodeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            return self._error("upstream_error", f"the provider sent an event whose payload is not a JSON object: {m.payload[:80]!r}")
        if kind in ("exception", "error"):
            name = str(m.headers.get(":exception-type") or m.headers.get(":error-code") or "api_error")
            return self._error(name, str(payload.get("message") or payload.get("Message") or m.headers.get(":error-message")
                                         or f"the provider reported {name} mid-stream"))
        event = m.headers.get(":event-type")
        index = nonnegative(payload.get("contentBlockIndex"))
        if event == "messageStart":
            return self._chunk({"role": "assistant", "content": ""})
        if event == "contentBlockStart":
            use = as_object(as_object(payload.get("start")).get("toolUse"))
            if not use:
                return b""
            self._tools[index] = len(self._tools)
            call = {"index": self._tools[index], "id": str(use.get("toolUseId", "")), "type": "function",
                    "function": {"name": str(use.get("name", "")), "arguments": ""}}
            return self._chunk({"tool_calls": [call]})
        if event == "contentBlockDelta":
            delta = as_object(payload.get("delta"))
            if isinstance(delta.get("text"), str) and delta["text"]:
                return self._chunk({"content": delta["text"]})
            partial = as_object(delta.get("toolUse")).get("input")
            if isinstance(partial, str) and partial and index in self._tools:
                return self._chunk({"tool_calls": [{"index": self._tools[index], "function": {"arguments": partial}}]})
            return b""  # reasoningContent, citations: no OpenAI form
        if event == "messageStop":
            self._stopped = True
            return self._chunk({}, _FINISH_REASON.get(str(payload.get("stopReason")), "stop"))
        if event == "metadata":
            self.usage = _chat_usage(payload.get("usage"))
            self.done = True
            if not self._include_usage:
                return b"data: [DONE]\n\n"
            body = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                    "choices": [], "usage": self.usage}
            return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n" + b"data: [DONE]\n\n"
        return b""  # contentBlockStop, and event types newer than this module
