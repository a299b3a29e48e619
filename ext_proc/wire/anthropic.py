"""The Anthropic Messages wire format, and its translation to and from OpenAI chat completions.

Usage::

    req = parse_messages_request(raw_bytes)              # MessagesRequest; raises MalformedRequest (400)
    chat_body = messages_request_to_chat(req.body)      # Anthropic request -> OpenAI chat request (dict)
    msg_body = chat_request_to_messages(chat_req.body)  # OpenAI chat request -> Anthropic request (dict)

    completion = message_to_chat_completion(raw)        # Anthropic message JSON -> chat.completion (dict)
    message = chat_completion_to_message(raw)           # chat.completion JSON -> Anthropic message (dict)

    s = MessagesToChatStream()                          # Anthropic SSE events -> chat.completion.chunk SSE
    out = s.feed(chunk) ...; out = s.close()            # bytes in as they arrive, bytes out to emit
    s = ChatToMessagesStream()                          # chat.completion.chunk SSE -> Anthropic SSE events

    usage = usage_from_message(raw)                     # {"prompt_tokens", "completion_tokens", "total_tokens"}
    scan = MessagesUsageScanner(); usage = scan.feed(chunk)   # the same, once, from an Anthropic SSE stream

    rendered = render_anthropic_error(exc, request_id=rid)    # RenderedError with Anthropic's error body
    body = error_body_to_chat(raw, status)              # an Anthropic upstream error body in OpenAI shape
    body = error_body_to_messages(raw, status)          # an OpenAI upstream error body in Anthropic shape

Naming: *messages* is Anthropic's API (``POST /v1/messages``), *chat* is OpenAI's
(``POST /v1/chat/completions``). Everything here is pure: no I/O, no clock except ``created``
timestamps and generated ids.

Contracts
---------
* :func:`parse_messages_request` checks what Anthropic itself requires (``model``, ``max_tokens``,
  ``messages`` with ``user``/``assistant`` roles, well-formed ``text``/``image``/``tool_use``/
  ``tool_result`` blocks, ``system``, ``tools``, ``tool_choice``, ``stop_sequences``, sampling knobs,
  ``stream``, ``metadata``). Messages read ``"<path>: <what is wrong>"`` like Anthropic's own
  (``max_tokens: Field required``), with ``param`` = the path. Block types it does not know are
  accepted untouched (they pass through to an Anthropic provider; translation refuses them).
* The request translators assume a body that passed the matching parser
  (:func:`parse_messages_request` / :func:`ext_proc.wire.openai.parse_chat_request`) and raise
  :class:`MalformedRequest` (400) for what has no counterpart on the other side: ``document``
  blocks and server tools towards OpenAI; tool-call arguments that are not a JSON object, legacy
  ``functions``, ``n > 1``, audio and file parts towards Anthropic; a JSON ``response_format`` too
  here (:class:`~ext_proc.chat.translate.Exchange` first turns it into a forced tool call:
  :mod:`ext_proc.wire.json_tool`).
* Anthropic requires ``max_tokens``: an OpenAI request without ``max_completion_tokens`` or
  ``max_tokens`` gets :data:`DEFAULT_MAX_TOKENS` (4096, Arch's default too).
* The response translators take the provider's JSON (bytes or an already parsed dict) and raise
  :class:`UpstreamError` (502) when it is not an answer of the expected shape, or, towards
  Anthropic, when a tool call's arguments are not a JSON object.
* Usage is always returned in OpenAI's shape, which is what metrics and rate limits read.
  Anthropic's ``input_tokens`` exclude cached prompt tokens, so ``prompt_tokens`` =
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` and
  ``prompt_tokens_details.cached_tokens`` = ``cache_read_input_tokens`` (and back).
* Stream translators are fed bytes exactly as they arrive (split anywhere, even inside a UTF-8
  character or between ``\\r`` and ``\\n``) and return the bytes to emit now; :meth:`close` at
  end of stream returns the rest. An upstream ``error`` event becomes the other side's in-stream
  error (OpenAI: ``data: {"error": {...}}``, which the ``openai`` SDK raises as ``APIError``;
  Anthropic: ``event: error``), after which the stream ends without ``[DONE]`` /
  ``message_stop``; so does a stream cut before its end.

What has no translation (dropped, documented rather than refused): ``thinking`` /
``redacted_thinking`` blocks and deltas, ``citations``, ``top_k``, ``tool_result.is_error``,
``cache_control``, ``service_tier`` (towards OpenAI); ``frequency_penalty``, ``presence_penalty``,
``seed``, ``logprobs``, ``logit_bias``, ``stream_options``, message ``name`` (towards Anthropic).
OpenAI temperatures above 1 are clamped to Anthropic's maximum of 1. Images inside a
``tool_result`` travel towards OpenAI in a user message right after the ``role: tool`` message
(OpenAI tool messages carry text only).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.errors import MalformedRequest, RenderedError, UpstreamError, render_error
from ext_proc.wire.openai import as_object, json_object, nonnegative

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatChunkTranslator",
    "first_choice",
    "ChatToMessagesStream",
    "MessagesRequest",
    "MessagesToChatStream",
    "MessagesUsageScanner",
    "anthropic_error_type",
    "chat_completion_to_message",
    "chat_request_to_messages",
    "error_body_to_chat",
    "error_body_to_messages",
    "load_answer",
    "message_to_chat_completion",
    "messages_request_to_chat",
    "parse_messages_request",
    "render_anthropic_error",
    "usage_from_keys",
    "usage_from_message",
    "usage_from_message_sse",
]

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent to Anthropic for an OpenAI request that names none (Anthropic requires one)."""

_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# stop_reason -> finish_reason, and back (Arch: to_openai_streaming.rs / to_anthropic.rs)
_FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}

# Anthropic's error types (https://docs.anthropic.com/en/api/errors), and the status each goes with.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --------------------------------------------------------------------------------------------------
# Request: parse and check


@dataclass(frozen=True, kw_only=True)
class MessagesRequest:
    """A checked ``POST /v1/messages`` body; ``body`` is the parsed JSON, unchanged."""

    body: dict[str, Any]
    model: str
    max_tokens: int
    stream: bool
    messages: list[dict[str, Any]]
    system: str

    @property
    def last_user_text(self) -> str:
        """Text of the last user message that has any (tool results are not the user's words)."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                text = _blocks_text(m["content"])
                if text:
                    return text
        return ""


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _bad(path: str, what: str, code: str = "invalid_type") -> MalformedRequest:
    return MalformedRequest(f"{path}: {what}" if path else what, code=code, param=path or None)


def _missing(path: str) -> MalformedRequest:
    return _bad(path, "Field required", "missing_required_parameter")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _require_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    if key not in obj:
        raise _missing(f"{path}.{key}")
    value = obj[key]
    if not isinstance(value, str):
        raise _bad(f"{path}.{key}", "Input should be a valid string")
    return value


def _check_image(block: Mapping[str, Any], path: str) -> None:
    source = block.get("source")
    if source is None:
        raise _missing(f"{path}.source")
    if not isinstance(source, dict):
        raise _bad(f"{path}.source", "Input should be an object")
    kind = source.get("type")
    if kind == "base64":
        media = _require_str(source, "media_type", f"{path}.source")
        if media not in _IMAGE_MEDIA_TYPES:
            raise _bad(f"{path}.source.media_type", f"Input should be one of {', '.join(map(repr, _IMAGE_MEDIA_TYPES))}", "invalid_value")
        _require_str(source, "data", f"{path}.source")
    elif kind == "url":
        _require_str(source, "url", f"{path}.source")
    else:
        raise _bad(f"{path}.source.type", f"Input should be 'base64' or 'url', got {kind!r}", "invalid_value")


def _check_block(block: Any, path: str, role: str, *, in_tool_result: bool = False) -> None:
    if not isinstance(block, dict):
        raise _bad(path, "Input should be an object")
    kind = block.get("type")
    if kind is None:
        raise _missing(f"{path}.type")
    if not isinstance(kind, str):
        raise _bad(f"{path}.type", "Input should be a valid string")
    if kind == "text":
        _require_str(block, "text", path)
    elif kind == "image":
        _check_image(block, path)
    elif in_tool_result:
        if kind in ("tool_use", "tool_result"):
            raise _bad(f"{path}.type", f"'{kind}' blocks are not allowed inside a tool_result", "invalid_value")
    elif kind == "tool_use":
        if role != "assistant":
            raise _bad(f"{path}.type", "'tool_use' blocks are only allowed in assistant messages", "invalid_value")
        _require_str(block, "id", path)
        _require_str(block, "name", path)
        if "input" not in block:
            raise _missing(f"{path}.input")
        if not isinstance(block["input"], dict):
            raise _bad(f"{path}.input", "Input should be an object")
    elif kind == "tool_result":
        if role != "user":
            raise _bad(f"{path}.type", "'tool_result' blocks are only allowed in user messages", "invalid_value")
        _require_str(block, "tool_use_id", path)
        content = block.get("content")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                _check_block(inner, f"{path}.content.{j}", role, in_tool_result=True)
        elif content is not None and not isinstance(content, str):
            raise _bad(f"{path}.content", "Input should be a valid string or a list of content blocks")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise _bad(f"{path}.is_error", "Input should be a valid boolean")
    # other types (document, thinking, redacted_thinking, server tool blocks, ...) pass unchecked


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _bad("tools", "Input should be a valid list")
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad(path, "Input should be an object")
        name = _require_str(tool, "name", path)
        if not name:
            raise _bad(f"{path}.name", "String should have at least 1 character", "invalid_value")
        if tool.get("type") in (None, "custom"):
            if "input_schema" not in tool:
                raise _missing(f"{path}.input_schema")
            if not isinstance(tool["input_schema"], dict):
                raise _bad(f"{path}.input_schema", "Input should be an object")
            if "description" in tool and not isinstance(tool["description"], str):
                raise _bad(f"{path}.description", "Input should be a valid string")


def _check_tool_choice(choice: Any) -> None:
    if not isinstance(choice, dict):
        raise _bad("tool_choice", "Input should be an object")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICES:
        raise _bad("tool_choice.type", f"Input should be one of {', '.join(map(repr, _TOOL_CHOICES))}, got {kind!r}", "invalid_value")
    if kind == "tool":
        _require_str(choice, "name", "tool_choice")
    if "disable_parallel_tool_use" in choice and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")


def parse_messages_request(raw: bytes) -> MessagesRequest:
    """Parse and check an Anthropic ``POST /v1/messages`` body; raise :class:`MalformedRequest` (400)."""
    body = json_object(raw, "Messages API")
    if "model" not in body:
        raise _missing("model")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise _bad("model", "Input should be a non-empty string")
    if "max_tokens" not in body:
        raise _missing("max_tokens")
    max_tokens = body["max_tokens"]
    if not _is_int(max_tokens):
        raise _bad("max_tokens", "Input should be a valid integer")
    if max_tokens < 1:
        raise _bad("max_tokens", "Input should be greater than or equal to 1", "invalid_value")

    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _bad("messages", "Input should be a valid list")
    if not messages:
        raise _bad("messages", "List should have at least 1 item", "invalid_value")
    for i, m in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(m, dict):
            raise _bad(path, "Input should be an object")
        if "role" not in m:
            raise _missing(f"{path}.role")
        role = m["role"]
        if role not in _ROLES:
            raise _bad(f"{path}.role", f"Input should be 'user' or 'assistant', got {role!r}", "invalid_value")
        if "content" not in m:
            raise _missing(f"{path}.content")
        content = m["content"]
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"{path}.content.{j}", role)
        elif not isinstance(content, str):
            raise _bad(f"{path}.content", "Input should be a valid string or a list of content blocks")

    system = body.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _bad(f"system.{j}", "system blocks must be text blocks", "invalid_value")
            _require_str(block, "text", f"system.{j}")
    elif system is not None and not isinstance(system, str):
        raise _bad("system", "Input should be a valid string or a list of text blocks")

    if body.get("tools") is not None:
        _check_tools(body["tools"])
    if body.get("tool_choice") is not None:
        _check_tool_choice(body["tool_choice"])
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _bad("stop_sequences", "Input should be a list of strings")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None and not _is_number(body[key]):
            raise _bad(key, "Input should be a valid number")
    if body.get("top_k") is not None and not _is_int(body["top_k"]):
        raise _bad("top_k", "Input should be a valid integer")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "Input should be an object")
        if metadata.get("user_id") is not None and not isinstance(metadata["user_id"], str):
            raise _bad("metadata.user_id", "Input should be a valid string")
    return MessagesRequest(
        body=body, model=model, max_tokens=max_tokens, stream=stream, messages=messages, system=_system_text(system)
    )


def _system_text(system: Any) -> str:
    if isinstance(system, list):
        return "\n".join(b["text"] for b in system)
    return system if isinstance(system, str) else ""


# --------------------------------------------------------------------------------------------------
# Request: Anthropic -> OpenAI


def _image_to_part(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block["source"]
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url}}


def _untranslatable(path: str, kind: str) -> MalformedRequest:
    return _bad(path, f"'{kind}' content has no OpenAI chat-completions form; this model's provider cannot take it", "unsupported_content")


def _parts_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Only text: one string (every OpenAI-compatible server takes it); otherwise the part list."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result_messages(block: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool_result -> the role=tool message, and image parts that must travel in a user message."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        texts = []
        for j, inner in enumerate(content):
            if inner["type"] == "text":
                texts.append(inner["text"])
            elif inner["type"] == "image":
                images.append(_image_to_part(inner))
            else:
                raise _untranslatable(f"{path}.content.{j}", inner["type"])
        text = "\n".join(texts)
    else:
        text = content or ""
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _user_to_chat(content: str | list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_to_part(block))
        elif kind == "tool_result":
            tool_message, images = _tool_result_messages(block, f"{path}.content.{j}")
            tool_messages.append(tool_message)
            parts.extend(images)
        else:
            raise _untranslatable(f"{path}.content.{j}", kind)
    out = tool_messages  # OpenAI wants tool answers right after the assistant's tool_calls
    if parts:
        out.append({"role": "user", "content": _parts_content(parts)})
    elif not tool_messages:
        out.append({"role": "user", "content": ""})
    return out


def _assistant_to_chat(content: str | list[dict[str, Any]], path: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": json.dumps(block["input"])}}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: OpenAI has no place for it
        else:
            raise _untranslatable(f"{path}.content.{j}", kind)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def messages_request_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic request (checked by :func:`parse_messages_request`) as an OpenAI chat request.

    ``system`` becomes the first message; ``tool_result`` blocks become ``role: tool`` messages
    placed before the rest of their user message; ``tool_use`` blocks become ``tool_calls``;
    images become ``image_url`` parts (base64 as a ``data:`` URL); ``max_tokens`` stays
    ``max_tokens`` (what every OpenAI-compatible server reads); ``stop_sequences`` -> ``stop``;
    ``metadata.user_id`` -> ``user``; ``output_config.format`` (structured output: the ``anthropic``
    SDK's ``messages.parse``) -> a ``json_schema`` ``response_format``; a streaming request asks for
    usage (``stream_options.include_usage``) so the answer can report it.
    """
    out: dict[str, Any] = {"model": body["model"], "messages": []}
    system = _system_text(body.get("system"))
    if system:
        out["messages"].append({"role": "system", "content": system})
    for i, m in enumerate(body["messages"]):
        if m["role"] == "user":
            out["messages"].extend(_user_to_chat(m["content"], f"messages.{i}"))
        else:
            out["messages"].append(_assistant_to_chat(m["content"], f"messages.{i}"))
    out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    tools = body.get("tools")
    if tools:
        out["tools"] = []
        for i, tool in enumerate(tools):
            if tool.get("type") not in (None, "custom"):
                raise _bad(f"tools.{i}.type", f"server tool {tool['type']!r} has no OpenAI chat-completions form", "unsupported_content")
            function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
            if tool.get("description"):
                function["description"] = tool["description"]
            out["tools"].append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice["type"]
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use") and tools:
            out["parallel_tool_calls"] = False
    fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("output_config.format.schema", "Field required (a JSON schema object)", "missing_required_parameter")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    return out


# --------------------------------------------------------------------------------------------------
# Request: OpenAI -> Anthropic

_DATA_URL = re.compile(r"^data:([^;,]+);base64,(.*)$", re.DOTALL)


def _part_to_block(part: Any, path: str) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"type": "text", "text": part} if part else None
    if not isinstance(part, dict):
        raise _bad(path, "content parts must be objects")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{path}.text", "must be a string")
        return {"type": "text", "text": text} if text else None
    if kind == "refusal":
        refusal = part.get("refusal")
        return {"type": "text", "text": refusal} if isinstance(refusal, str) and refusal else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise _bad(f"{path}.image_url.url", "must be a string")
        m = _DATA_URL.match(url)
        if m:
            if m.group(1) not in _IMAGE_MEDIA_TYPES:
                raise _bad(f"{path}.image_url.url", f"image type {m.group(1)!r} is not one of {', '.join(_IMAGE_MEDIA_TYPES)}", "invalid_value")
            return {"type": "image", "source": {"type": "base64", "media_type": m.group(1), "data": m.group(2)}}
        if url.startswith(("https://", "http://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise _bad(f"{path}.image_url.url", "must be an http(s) URL or a base64 data: URL", "invalid_value")
    raise _bad(f"{path}.type", f"content part {kind!r} has no Anthropic Messages form", "unsupported_content")


def _content_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(path, "must be a string or an array of content parts")
    blocks = [_part_to_block(p, f"{path}[{j}]") for j, p in enumerate(content)]
    return [b for b in blocks if b is not None]


def _tool_input(arguments: Any, path: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _bad(path, f"tool call arguments must be a JSON object, got {str(arguments)[:80]!r}", "invalid_tool_arguments")
    return value


def _block_content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(blocks) == 1 and blocks[0]["type"] == "text" and set(blocks[0]) == {"type", "text"}:
        return str(blocks[0]["text"])
    return blocks


def chat_request_to_messages(body: Mapping[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """An OpenAI chat request (checked by ``parse_chat_request``) as an Anthropic Messages request.

    ``system``/``developer`` messages join (in order, blank-line separated) into ``system``;
    ``tool`` messages become ``tool_result`` blocks of a user message; ``tool_calls`` become
    ``tool_use`` blocks; consecutive messages of one role are merged (Anthropic wants every
    result of a parallel tool call in the one user message after it, results first);
    ``max_completion_tokens`` or ``max_tokens`` or ``default_max_tokens``; ``stop`` ->
    ``stop_sequences``; ``user`` -> ``metadata.user_id``; ``parallel_tool_calls: false`` ->
    ``tool_choice.disable_parallel_tool_use``.
    """
    for key in ("functions", "function_call"):
        if body.get(key) is not None:
            raise _bad(key, "legacy function calling is not translated to Anthropic: use 'tools' and 'tool_choice'", "unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("n", "Anthropic returns one choice: 'n' must be 1", "unsupported_parameter")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise _bad("response_format", f"response_format {fmt.get('type')!r} is not translated to Anthropic", "unsupported_parameter")

    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1][0] == role:
            merged = turns[-1][1]
            for b in blocks:  # tool results first: after the last tool_result already there
                if b["type"] == "tool_result":
                    at = max((k + 1 for k, x in enumerate(merged) if x["type"] == "tool_result"), default=0)
                    merged.insert(at, b)
                else:
                    merged.append(b)
        else:
            turns.append((role, list(blocks)))

    for i, m in enumerate(body["messages"]):
        path = f"messages[{i}]"
        role = m.get("role")
        if role in ("system", "developer"):
            text = "\n".join(b["text"] for b in _content_blocks(m.get("content"), f"{path}.content") if b["type"] == "text")
            if text:
                system.append(text)
        elif role == "user":
            add("user", _content_blocks(m.get("content"), f"{path}.content"))
        elif role == "assistant":
            blocks = _content_blocks(m.get("content"), f"{path}.content")
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise _bad(f"{path}.tool_calls", "must be an array")
            for j, call in enumerate(calls):
                cpath = f"{path}.tool_calls[{j}]"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _bad(f"{cpath}.function.name", "must be a string")
                if not isinstance(call.get("id"), str):
                    raise _bad(f"{cpath}.id", "must be a string")
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": _tool_input(fn.get("arguments"), f"{cpath}.function.arguments")}
                )
            add("assistant", blocks)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise _bad(f"{path}.tool_call_id", "is required for role 'tool'", "missing_required_parameter")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            text = "\n".join(b["text"] for b in _content_blocks(m.get("content"), f"{path}.content") if b["type"] == "text")
            if text:
                result["content"] = text
            add("user", [result])
        else:
            raise _bad(f"{path}.role", f"role {role!r} is not translated to Anthropic", "unsupported_parameter")

    if not turns:  # OpenAI answers a conversation of system messages alone; Anthropic refuses it
        raise _bad("messages", "the provider's API needs a user message besides the system ones (Anthropic's and Bedrock's do, "
                               "OpenAI's does not): send the request as a user message", "invalid_value")
    out: dict[str, Any] = {"model": body.get("model"), "messages": [{"role": r, "content": _block_content(b)} for r, b in turns]}
    if system:
        out["system"] = "\n\n".join(system)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        out["tools"] = []
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad(f"tools[{i}]", "only {type: function, function: {name, ...}} tools are translated to Anthropic", "unsupported_parameter")
            spec: dict[str, Any] = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
            if fn.get("description"):
                spec["description"] = fn["description"]
            out["tools"].append(spec)
    choice = body.get("tool_choice")
    anthropic_choice: dict[str, Any] | None = None
    if isinstance(choice, str):
        if choice not in ("auto", "required", "none"):
            raise _bad("tool_choice", f"must be 'auto', 'required', 'none' or a function, got {choice!r}", "invalid_value")
        anthropic_choice = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if not isinstance(name, str):
            raise _bad("tool_choice.function.name", "must be a string", "invalid_value")
        anthropic_choice = {"type": "tool", "name": name}
    if body.get("parallel_tool_calls") is False and tools:
        anthropic_choice = anthropic_choice or {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    if anthropic_choice is not None:
        out["tool_choice"] = anthropic_choice
    return out


# --------------------------------------------------------------------------------------------------
# Responses


def load_answer(raw: bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """A provider's JSON answer as an object (``what``: the answer expected, for the error), or UpstreamError."""
    if isinstance(raw, Mapping):
        return raw
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpstreamError(f"the provider's answer is not JSON ({what} expected): {exc}") from exc
    if not isinstance(answer, dict):
        raise UpstreamError(f"the provider's answer is not a JSON object ({what} expected)")
    return answer


def _chat_usage(usage: Any) -> dict[str, Any]:
    """Anthropic ``usage`` -> OpenAI ``usage`` (prompt_tokens counts cached prompt tokens too)."""
    return usage_from_keys(usage, "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def usage_from_keys(usage: Any, uncached: str, cache_read: str, cache_write: str, output: str) -> dict[str, Any]:
    """An upstream's ``usage`` object (read by its own key names) -> OpenAI ``usage``: prompt_tokens
    counts the uncached, cache-read and cache-written prompt tokens; cache reads are also
    ``prompt_tokens_details.cached_tokens``. Anything missing or not a count is 0."""
    u = usage if isinstance(usage, Mapping) else {}
    cached = nonnegative(u.get(cache_read))
    prompt = nonnegative(u.get(uncached)) + cached + nonnegative(u.get(cache_write))
    completion = nonnegative(u.get(output))
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _messages_usage(usage: Any) -> dict[str, int]:
    """OpenAI ``usage`` -> Anthropic ``usage`` (input_tokens without the cached ones)."""
    u = usage if isinstance(usage, Mapping) else {}
    details = u.get("prompt_tokens_details")
    cached = nonnegative(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    prompt = nonnegative(u.get("prompt_tokens"))
    out = {"input_tokens": max(prompt - cached, 0), "output_tokens": nonnegative(u.get("completion_tokens"))}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def message_to_chat_completion(raw: bytes | Mapping[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """An Anthropic message (the JSON answer of ``/v1/messages``) as an OpenAI ``chat.completion``.

    Text blocks join into ``content``; ``tool_use`` blocks become ``tool_calls`` (arguments a JSON
    string); ``stop_reason`` -> ``finish_reason``; ``model`` (when given) replaces the answer's.
    """
    msg = load_answer(raw, "an Anthropic message")
    content = msg.get("content")
    if msg.get("type") != "message" or not isinstance(content, list):
        raise UpstreamError("the provider's answer is not an Anthropic message (type 'message' with a content list)")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": str(msg.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or str(msg.get("model", "")),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH_REASON.get(str(msg.get("stop_reason")), "stop")}
        ],
        "usage": _chat_usage(msg.get("usage")),
    }


def first_choice(raw: bytes | Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(a ``chat.completion``, its first choice); :class:`UpstreamError` (502) when it is not JSON or has no choices."""
    completion = load_answer(raw, "a chat completion")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the provider's answer has no choices")
    return completion, choices[0]


def chat_completion_to_message(raw: bytes | Mapping[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic message (first choice only).

    Raises :class:`UpstreamError` (502) for an answer without choices, or a tool call whose
    arguments are not a JSON object (Anthropic's ``tool_use.input`` must be one).
    """
    completion, choice = first_choice(raw)
    message = as_object(choice.get("message"))
    blocks: list[dict[str, Any]] = []
    try:
        blocks.extend(_content_blocks(message.get("content"), "content"))
    except MalformedRequest as exc:
        raise UpstreamError(f"the provider's answer has content Anthropic cannot carry: {exc.message}") from exc
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": message["refusal"]})
    for j, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        try:
            arguments = _tool_input(fn.get("arguments"), f"tool_calls[{j}].function.arguments")
        except MalformedRequest as exc:
            raise UpstreamError(f"the provider answered a tool call whose arguments are not a JSON object: {exc.message}") from exc
        blocks.append({"type": "tool_use", "id": str(call.get("id") or _tool_id()), "name": str(fn.get("name", "")), "input": arguments})
    return {
        "id": str(completion.get("id") or _message_id()),
        "type": "message",
        "role": "assistant",
        "model": model or str(completion.get("model", "")),
        "content": blocks,
        "stop_reason": _STOP_REASON.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": _messages_usage(completion.get("usage")),
    }


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


# --------------------------------------------------------------------------------------------------
# SSE


class SSEReader:
    """Incremental ``text/event-stream`` parser: bytes in, complete ``(event, data)`` pairs out."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        buf = self._buf + chunk
        out: list[tuple[str, str]] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, nl if nl >= 0 else n)
            if cr >= 0:
                if cr + 1 == n:
                    break  # a \n may follow in the next chunk
                end, nxt = cr, cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            self._line(buf[start:end].decode("utf-8", errors="replace"), out)
            start = nxt
        self._buf = buf[start:]
        return out

    def _line(self, line: str, out: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                out.append((self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)

    def finish(self) -> list[tuple[str, str]]:
        """End of stream: an event whose lines all arrived but whose blank line did not still counts
        (lenient, for servers that end on ``data: [DONE]\\n``); a line cut short does not."""
        if self._buf.strip() or not self._data:
            return []
        out = [(self._event or "message", "\n".join(self._data))]
        self._event, self._data = "", []
        return out

    @property
    def pending(self) -> bool:
        """Part of an event is buffered: the stream was cut mid-event if it ends now."""
        return bool(self._buf.strip()) or bool(self._data)


class ChatChunkTranslator:
    """What a translator of OpenAI ``chat.completion.chunk`` SSE into another API's events shares:
    the SSE reading, ``[DONE]``, chunks that are not JSON objects or carry an ``error``, choice 0's
    ``delta`` and a tool call's key; a stream that ends after its ``finish_reason`` but without
    ``[DONE]`` completes, one cut before it fails. A subclass writes what each of those becomes:
    the first chunk (:meth:`_start`), a run of text (:meth:`_text`), a piece of a tool call
    (:meth:`_tool_call`), the finish_reason (:meth:`_close`), the end (:meth:`_complete`), an
    error (:meth:`_fail`: the API's error type, a message) and an ``error`` chunk
    (:meth:`_upstream_error`). The last chunk with ``usage`` is kept in ``_usage``."""

    BROKEN = "api_error"  # the subclass API's error type for a stream that is not what it should be

    def __init__(self) -> None:
        self._reader = SSEReader()
        self._last_tool_key: Any = None
        self._finish_reason: str | None = None
        self._usage: Any = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for _event, data in self._reader.feed(chunk):
            if self.done:
                break
            out.append(self._data(data))
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream stream: complete when it got its finish_reason, else an error."""
        out = b"".join(self._data(data) for _event, data in self._reader.finish() if not self.done)
        if self.done:
            return out
        if self._finish_reason is not None and not self._reader.pending:
            return out + self._complete()  # some servers omit [DONE]
        return out + self._fail(self.BROKEN, "the provider's stream ended before its finish_reason (cut mid-stream)")

    def _data(self, data: str) -> bytes:
        if data.strip() == "[DONE]":
            return self._complete()
        try:
            chunk = json.loads(data)
        except ValueError:
            return self._fail(self.BROKEN, f"the provider sent an SSE event that is not JSON: {data[:80]!r}")
        if not isinstance(chunk, dict):
            return self._fail(self.BROKEN, f"the provider sent an SSE event that is not a JSON object: {data[:80]!r}")
        if chunk.get("error") is not None:
            return self._upstream_error(chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])})
        out = [self._start(chunk)]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None) if isinstance(choices, list) else None
        if choice is None:
            return b"".join(out)
        delta = as_object(choice.get("delta"))
        for field in ("content", "refusal"):
            text = delta.get(field)
            if isinstance(text, str) and text:
                out.append(self._text(text))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out.append(self._tool_call(self._tool_key(call), call, as_object(call.get("function"))))
        if choice.get("finish_reason"):
            self._finish_reason = str(choice["finish_reason"])
            out.append(self._close())
        return b"".join(out)

    def _tool_key(self, call: Mapping[str, Any]) -> Any:
        """Which tool call a delta continues: its index (some OpenAI-compatible servers leave it out:
        then its id, else the call before)."""
        key = call.get("index")
        if key is None:
            key = call.get("id") or self._last_tool_key
        self._last_tool_key = key
        return key

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _tool_call(self, key: Any, call: Mapping[str, Any], function: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    def _close(self) -> bytes:
        raise NotImplementedError

    def _complete(self) -> bytes:
        raise NotImplementedError

    def _fail(self, etype: str, message: str) -> bytes:
        raise NotImplementedError

    def _upstream_error(self, error: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


def _anthropic_event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **payload}, separators=(",", ":")).encode() + b"\n\n"


def anthropic_error_type(status: int, given: Any = None) -> str:
    """Anthropic's error type for a status (``given`` when it is one of Anthropic's types)."""
    if isinstance(given, str) and given in _ANTHROPIC_ERROR_TYPES.values():
        return given
    if status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


class MessagesToChatStream:
    """Anthropic Messages SSE events -> OpenAI ``chat.completion.chunk`` SSE ending in ``data: [DONE]``.

    ``message_start`` -> a ``{role: assistant}`` chunk; text deltas -> ``content``; a ``tool_use``
    block -> a ``tool_calls`` entry (OpenAI index = the tool's position among the message's tool
    calls, not the Anthropic block index) whose ``input_json_delta`` s become ``arguments``;
    ``message_delta`` -> the ``finish_reason`` chunk; ``message_stop`` -> the usage chunk
    (``choices: []``, only with ``include_usage``, as OpenAI does for
    ``stream_options.include_usage``) and ``[DONE]``; ``ping`` -> an SSE comment (keeps proxies
    awake, ignored by clients); ``error`` -> ``data: {"error": {...}}`` and the end.
    ``model`` replaces the upstream's model name in the chunks; :attr:`usage` holds the OpenAI-
    shaped usage once ``message_delta`` has arrived.
    """

    def __init__(self, *, model: str | None = None, include_usage: bool = False, created: int | None = None) -> None:
        self._reader = SSEReader()
        self._model = model
        self._include_usage = include_usage
        self._created = created if created is not None else int(time.time())
        self._id = ""
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._upstream_usage: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event, data in self._reader.feed(chunk):
            if self.done:
                break
            out.append(self._event(event, data))
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream stream: nothing more if it ended properly, else an error chunk."""
        out = b"".join(self._event(event, data) for event, data in self._reader.finish() if not self.done)
        if self.done:
            return out
        return out + self._error("upstream_error", "the provider's stream ended before message_stop (cut mid-stream)")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        self._id = self._id or f"chatcmpl-{uuid.uuid4().hex[:24]}"
        body = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model or "",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _error(self, etype: str, message: str) -> bytes:
        self.done = True
        body = {"error": {"message": message, "type": etype, "param": None, "code": etype}}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _event(self, event: str, data: str) -> bytes:
        try:
            payload = json.loads(data)
        except ValueError:
            return self._error("upstream_error", f"the provider sent an SSE event that is not JSON: {data[:80]!r}")
        if not isinstance(payload, dict):
            return self._error("upstream_error", f"the provider sent an SSE event that is not a JSON object: {data[:80]!r}")
        kind = payload.get("type", event)
        if kind == "message_start":
            message = as_object(payload.get("message"))
            self._id = self._id or str(message.get("id") or "")
            self._model = self._model or str(message.get("model") or "")
            if isinstance(message.get("usage"), dict):
                self._upstream_usage.update(message["usage"])
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = as_object(payload.get("content_block"))
            if block.get("type") == "text":
                return self._chunk({"content": block["text"]}) if block.get("text") else b""
            if block.get("type") == "tool_use":
                index = len(self._tools)
                self._tools[nonnegative(payload.get("index"))] = index
                initial = block.get("input")
                call = {
                    "index": index,
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": json.dumps(initial) if initial else ""},
                }
                return self._chunk({"tool_calls": [call]})
            return b""  # thinking, server tools, ...: no OpenAI form
        if kind == "content_block_delta":
            delta = as_object(payload.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._chunk({"content": delta["text"]})
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool_index = self._tools.get(nonnegative(payload.get("index")))
                if tool_index is not None:
                    return self._chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": delta["partial_json"]}}]})
            return b""  # thinking_delta, signature_delta, citations_delta
        if kind == "message_delta":
            if isinstance(payload.get("usage"), dict):
                self._upstream_usage.update({k: v for k, v in payload["usage"].items() if v is not None})
            self.usage = _chat_usage(self._upstream_usage)
            delta = as_object(payload.get("delta"))
            return self._chunk({}, _FINISH_REASON.get(str(delta.get("stop_reason")), "stop"))
        if kind == "message_stop":
            self.done = True
            out = b""
            if self._include_usage:
                usage = self.usage or _chat_usage(self._upstream_usage)
                body = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model or "",
                    "choices": [],
                    "usage": usage,
                }
                out = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
            return out + b"data: [DONE]\n\n"
        if kind == "ping":
            return b": ping\n\n"
        if kind == "error":
            error = as_object(payload.get("error"))
            return self._error(str(error.get("type") or "api_error"), str(error.get("message") or "the provider reported an error mid-stream"))
        return b""  # content_block_stop, and event types newer than this module


class ChatToMessagesStream(ChatChunkTranslator):
    """OpenAI ``chat.completion.chunk`` SSE -> Anthropic Messages SSE events, in Anthropic's order.

    ``message_start`` first (id and model from the first chunk, usage 0: OpenAI reports usage
    last); one content block per run of text and per tool call, each opened with
    ``content_block_start`` and closed with ``content_block_stop`` before the next opens; at
    ``[DONE]`` (or the end of a stream that had a ``finish_reason``) ``message_delta`` with the
    stop reason and usage (input and output tokens), then ``message_stop``. Only choice 0 is
    translated. ``data: {"error": ...}`` -> ``event: error`` and the end; a stream cut before
    its ``finish_reason`` ends with an ``error`` event too.
    """

    def __init__(self, *, model: str | None = None, message_id: str | None = None) -> None:
        super().__init__()
        self._model = model
        self._id = message_id
        self._started = False
        self._open: int | None = None  # Anthropic index of the open block
        self._open_is_text = False
        self._next_index = 0
        self._tools: dict[Any, int] = {}  # OpenAI tool call key -> Anthropic block index
        self.usage: dict[str, Any] | None = None

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        self._id = self._id or str(chunk.get("id") or "") or _message_id()
        self._model = self._model or str(chunk.get("model") or "")
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _anthropic_event("message_start", {"message": message})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return _anthropic_event("content_block_stop", {"index": index})

    def _open_block(self, block: dict[str, Any], *, text: bool) -> tuple[bytes, int]:
        out = self._close_block()
        index = self._next_index
        self._next_index += 1
        self._open, self._open_is_text = index, text
        return out + _anthropic_event("content_block_start", {"index": index, "content_block": block}), index

    def _fail(self, etype: str, message: str) -> bytes:
        self.done = True
        return _anthropic_event("error", {"error": {"type": etype, "message": message}})

    def _upstream_error(self, error: Mapping[str, Any]) -> bytes:
        return self._fail(anthropic_error_type(500, error.get("type")), str(error.get("message") or "the provider reported an error mid-stream"))

    def _complete(self) -> bytes:
        self.done = True
        out = self._start({}) + self._close_block()
        usage = _messages_usage(self._usage)
        self.usage = _chat_usage(usage) if self._usage is not None else None
        stop = _STOP_REASON.get(self._finish_reason, "end_turn") if self._finish_reason else "end_turn"
        delta = {"stop_reason": stop, "stop_sequence": None}
        return out + _anthropic_event("message_delta", {"delta": delta, "usage": usage}) + _anthropic_event("message_stop", {})

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open is None or not self._open_is_text:
            out, _ = self._open_block({"type": "text", "text": ""}, text=True)
        return out + _anthropic_event("content_block_delta", {"index": self._open, "delta": {"type": "text_delta", "text": text}})

    def _tool_call(self, key: Any, call: Mapping[str, Any], function: Mapping[str, Any]) -> bytes:
        out = b""
        index = self._tools.get(key)
        if index is None:
            block = {"type": "tool_use", "id": str(call.get("id") or _tool_id()), "name": str(function.get("name") or ""), "input": {}}
            out, index = self._open_block(block, text=False)
            self._tools[key] = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += _anthropic_event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return out

    def _close(self) -> bytes:
        return self._close_block()


# --------------------------------------------------------------------------------------------------
# Usage


def usage_from_message(raw: bytes) -> dict[str, Any] | None:
    """OpenAI-shaped ``usage`` of an Anthropic JSON answer, or None when absent or not JSON."""
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None
    return _chat_usage(usage) if isinstance(usage, dict) else None


class MessagesUsageScanner:
    """OpenAI-shaped usage of an Anthropic SSE stream, fed chunk by chunk.

    Anthropic reports input tokens in ``message_start`` and the final output tokens in
    ``message_delta``; :meth:`feed` returns the combined usage once, when ``message_delta``
    arrives, and None otherwise (so a caller that counts each returned usage counts it once).
    """

    def __init__(self) -> None:
        self._reader = SSEReader()
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> dict[str, Any] | None:
        result = None
        for _event, data in self._reader.feed(chunk):
            if '"usage"' not in data:
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            if payload.get("type") == "message_start" and isinstance(payload.get("message"), dict):
                usage = payload["message"].get("usage")
                if isinstance(usage, dict):
                    self._usage.update(usage)
            elif payload.get("type") == "message_delta" and isinstance(payload.get("usage"), dict):
                self._usage.update({k: v for k, v in payload["usage"].items() if v is not None})
                result = _chat_usage(self._usage)
        return result


def usage_from_message_sse(raw: bytes) -> dict[str, Any] | None:
    """OpenAI-shaped usage of a whole Anthropic SSE stream, or None when it has no ``message_delta``."""
    return MessagesUsageScanner().feed(raw if raw.endswith(b"\n\n") else raw + b"\n\n")


# --------------------------------------------------------------------------------------------------
# Errors


def render_anthropic_error(exc: BaseException, *, request_id: str = "") -> RenderedError:
    """:func:`ext_proc.errors.render_error`, with Anthropic's body:
    ``{"type": "error", "error": {"type": "invalid_request_error", "message": ...}, "request_id": ...}``.

    Status and headers (``content-type``, the sidegate error code header, ``retry-after``,
    ``x-request-id``) are render_error's; the error type is the one Anthropic answers that status
    with (404 ``not_found_error``, 413 ``request_too_large``, ...; as Envoy's own replies get it).
    """
    rendered = render_error(exc, request_id=request_id)
    error = json.loads(rendered.body)["error"]
    body: dict[str, Any] = {"type": "error", "error": {"type": anthropic_error_type(rendered.status), "message": error["message"]}}
    if request_id:
        body["request_id"] = request_id
    return RenderedError(status=rendered.status, body=json.dumps(body).encode(), headers=rendered.headers)


def _upstream_error(raw: bytes, status: int) -> tuple[str | None, str]:
    """The (type, message) of an error body in either shape; the raw text when neither."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        etype = error.get("type")
        return (etype if isinstance(etype, str) else None), error["message"]
    if isinstance(error, str):
        return None, error
    text = raw.decode("utf-8", errors="replace").strip()[:500]
    return None, text or f"the provider answered status {status} with no error message"


def error_body_to_chat(raw: bytes, status: int) -> bytes:
    """An upstream error body (Anthropic's shape, or anything) as OpenAI's ``{"error": {...}}``."""
    etype, message = _upstream_error(raw, status)
    etype = etype or anthropic_error_type(status)
    return json.dumps({"error": {"message": message, "type": etype, "param": None, "code": etype}}).encode()


def error_body_to_messages(raw: bytes, status: int) -> bytes:
    """An upstream error body (OpenAI's shape, or anything) as Anthropic's ``{"type": "error", ...}``."""
    etype, message = _upstream_error(raw, status)
    return json.dumps({"type": "error", "error": {"type": anthropic_error_type(status, etype), "message": message}}).encode()
