"""ext_proc.wire.anthropic: the Anthropic Messages API, and its translation to and from OpenAI chat completions.

OpenAI shapes are checked with the ``openai`` SDK's own models (and its real stream reader, fed
through a mock transport); Anthropic shapes with the ``anthropic`` SDK's models when it is
installed, and always with the event-order checker below.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.errors import MalformedRequest, RateLimited, UpstreamError
from ext_proc.wire.anthropic import (
    DEFAULT_MAX_TOKENS,
    ChatToMessagesStream,
    MessagesToChatStream,
    MessagesUsageScanner,
    chat_completion_to_message,
    chat_request_to_messages,
    error_body_to_chat,
    error_body_to_messages,
    message_to_chat_completion,
    messages_request_to_chat,
    parse_messages_request,
    render_anthropic_error,
    usage_from_message,
    usage_from_message_sse,
)
from ext_proc.wire.openai import parse_chat_request


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


anthropic = _optional("anthropic")
httpx = _optional("httpx2") or _optional("httpx")

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def anthropic_request(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}], **extra}


# -------------------------------------------------------------------------------------------------
# Helpers: read SSE independently of the module, check Anthropic event order, rebuild the message


def sse(data: bytes) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        event, datas = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                datas.append(line[6:])
        if datas:
            out.append((event, "\n".join(datas)))
    return out


def chat_chunks(data: bytes) -> list[dict[str, Any]]:
    """The chunks of an OpenAI SSE stream; it must end in [DONE] and each chunk must validate."""
    events = sse(data)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    return chunks


def chat_accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    text, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for choice in c["choices"]:
            d = choice["delta"]
            text += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.get("id") or call["id"]
                call["name"] += (tc.get("function") or {}).get("name") or ""
                call["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"text": text, "tool_calls": [calls[i] for i in sorted(calls)], "finish_reason": finish}


def anthropic_accumulate(data: bytes) -> dict[str, Any]:
    """Replay Anthropic events as a client would, asserting Anthropic's order; return the message."""
    events = [(e, json.loads(d)) for e, d in sse(data)]
    for name, payload in events:
        assert payload["type"] == name
        if anthropic is not None:
            from pydantic import TypeAdapter

            TypeAdapter(anthropic.types.RawMessageStreamEvent).validate_python(payload)
    assert events[0][0] == "message_start", [e for e, _ in events]
    assert events[-1][0] == "message_stop"
    message = json.loads(json.dumps(events[0][1]["message"]))
    open_block: int | None = None
    partial: dict[int, str] = {}
    seen_delta = False
    for name, p in events[1:-1]:
        assert not seen_delta or name == "ping", f"{name} after message_delta"
        if name == "content_block_start":
            assert open_block is None, "a block opened before the previous one closed"
            assert p["index"] == len(message["content"])
            message["content"].append(dict(p["content_block"]))
            open_block = p["index"]
        elif name == "content_block_delta":
            assert p["index"] == open_block
            block, delta = message["content"][p["index"]], p["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                partial[p["index"]] = partial.get(p["index"], "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert p["index"] == open_block
            if p["index"] in partial:
                message["content"][p["index"]]["input"] = json.loads(partial[p["index"]])
            open_block = None
        elif name == "message_delta":
            assert open_block is None
            message.update(p["delta"])
            message["usage"].update(p["usage"])
            seen_delta = True
        else:
            assert name == "ping", name
    assert seen_delta
    validate_message(message)
    return dict(message)


def validate_message(message: dict[str, Any]) -> None:
    assert message["type"] == "message" and message["role"] == "assistant"
    assert isinstance(message["content"], list) and isinstance(message["usage"]["input_tokens"], int)
    if anthropic is not None:
        anthropic.types.Message.model_validate(message)


# -------------------------------------------------------------------------------------------------
# Parsing and checking requests


def test_a_full_request_parses() -> None:
    body = anthropic_request(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}]},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}, {"type": "document", "source": {}}]},
        ],
        tools=[{"name": "weather", "description": "d", "input_schema": WEATHER_SCHEMA}, {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.2,
        top_p=0.9,
        top_k=5,
        stream=True,
        metadata={"user_id": "u1"},
    )
    req = parse_messages_request(raw(body))
    assert (req.model, req.max_tokens, req.stream) == ("claude-sonnet-4", 256, True)
    assert req.system == "Be brief.\nBe kind."
    assert req.last_user_text == "And tomorrow?"
    assert req.body == body


@pytest.mark.parametrize(
    "body, message, param",
    [
        (b"", "request body is empty: send a JSON Messages API request", None),
        (b"[1]", "request body must be a JSON object, got list", None),
        (raw({"max_tokens": 5, "messages": []}), "model: Field required", "model"),
        (raw({"model": "m", "messages": [{"role": "user", "content": "x"}]}), "max_tokens: Field required", "max_tokens"),
        (raw(anthropic_request(max_tokens="5")), "max_tokens: Input should be a valid integer", "max_tokens"),
        (raw(anthropic_request(max_tokens=0)), "max_tokens: Input should be greater than or equal to 1", "max_tokens"),
        (raw(anthropic_request(messages=[])), "messages: List should have at least 1 item", "messages"),
        (raw({"model": "m", "max_tokens": 5}), "messages: Field required", "messages"),
        (raw(anthropic_request(messages=[{"role": "system", "content": "x"}])), "messages.0.role: Input should be 'user' or 'assistant', got 'system'", "messages.0.role"),
        (raw(anthropic_request(messages=[{"role": "user"}])), "messages.0.content: Field required", "messages.0.content"),
        (raw(anthropic_request(messages=[{"role": "user", "content": 3}])), "messages.0.content: Input should be a valid string or a list of content blocks", "messages.0.content"),
        (raw(anthropic_request(messages=[{"role": "user", "content": [{"type": "text"}]}])), "messages.0.content.0.text: Field required", "messages.0.content.0.text"),
        (raw(anthropic_request(messages=[{"role": "user", "content": [{"text": "x"}]}])), "messages.0.content.0.type: Field required", "messages.0.content.0.type"),
        (
            raw(anthropic_request(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"}}]}])),
            "messages.0.content.0.source.media_type: Input should be one of 'image/jpeg', 'image/png', 'image/gif', 'image/webp'",
            "messages.0.content.0.source.media_type",
        ),
        (
            raw(anthropic_request(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}])),
            "messages.0.content.0.type: 'tool_use' blocks are only allowed in assistant messages",
            "messages.0.content.0.type",
        ),
        (
            raw(anthropic_request(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]}])),
            "messages.0.content.0.input: Input should be an object",
            "messages.0.content.0.input",
        ),
        (
            raw(anthropic_request(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}])),
            "messages.0.content.0.tool_use_id: Field required",
            "messages.0.content.0.tool_use_id",
        ),
        (raw(anthropic_request(system=[{"type": "image"}])), "system.0: system blocks must be text blocks", "system.0"),
        (raw(anthropic_request(tools=[{"name": "weather"}])), "tools.0.input_schema: Field required", "tools.0.input_schema"),
        (raw(anthropic_request(tool_choice={"type": "required"})), "tool_choice.type: Input should be one of 'auto', 'any', 'tool', 'none', got 'required'", "tool_choice.type"),
        (raw(anthropic_request(tool_choice={"type": "tool"})), "tool_choice.name: Field required", "tool_choice.name"),
        (raw(anthropic_request(stop_sequences="END")), "stop_sequences: Input should be a list of strings", "stop_sequences"),
        (raw(anthropic_request(temperature="hot")), "temperature: Input should be a valid number", "temperature"),
        (raw(anthropic_request(stream="yes")), "stream: Input should be a valid boolean", "stream"),
        (raw(anthropic_request(metadata={"user_id": 7})), "metadata.user_id: Input should be a valid string", "metadata.user_id"),
    ],
)
def test_malformed_requests_are_400_in_anthropic_shape(body: bytes, message: str, param: str | None) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_messages_request(body)
    assert (caught.value.message, caught.value.param, caught.value.status) == (message, param, 400)
    rendered = render_anthropic_error(caught.value, request_id="req_1")
    assert rendered.status == 400
    assert json.loads(rendered.body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": "req_1",
    }
    assert rendered.headers["content-type"] == "application/json"


def test_not_json_names_the_problem() -> None:
    with pytest.raises(MalformedRequest, match="request body is not valid JSON") as caught:
        parse_messages_request(b"{nope")
    assert caught.value.code == "invalid_json"


def test_render_anthropic_error_keeps_status_headers_and_maps_the_type() -> None:
    limited = render_anthropic_error(RateLimited("over budget", retry_after_s=7))
    assert limited.status == 429 and limited.headers["retry-after"] == "7"
    assert json.loads(limited.body) == {"type": "error", "error": {"type": "rate_limit_error", "message": "over budget"}}
    bad_gateway = json.loads(render_anthropic_error(UpstreamError("boom")).body)
    assert bad_gateway["error"]["type"] == "api_error"
    timeout = json.loads(render_anthropic_error(UpstreamError("slow", status=504)).body)
    assert timeout["error"]["type"] == "timeout_error"
    bug = json.loads(render_anthropic_error(RuntimeError("secret"), request_id="r9").body)
    assert bug["error"]["type"] == "api_error" and "secret" not in bug["error"]["message"] and "r9" in bug["error"]["message"]


# -------------------------------------------------------------------------------------------------
# Requests: Anthropic -> OpenAI


def test_messages_request_to_chat_maps_every_part() -> None:
    body = anthropic_request(
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}], "is_error": False},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        tools=[{"name": "weather", "description": "Weather by city", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.3,
        top_p=0.8,
        top_k=4,
        stream=True,
        metadata={"user_id": "u1"},
    )
    chat = messages_request_to_chat(parse_messages_request(raw(body)).body)
    assert chat == {
        "model": "claude-sonnet-4",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "rain"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 256,
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA, "description": "Weather by city"}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    parse_chat_request(raw(chat))  # sidegate's own OpenAI check accepts it


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_tool_choice_both_ways(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    chat = messages_request_to_chat(anthropic_request(tools=tools, tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert chat_request_to_messages(chat)["tool_choice"] == choice


def test_a_tool_result_only_message_yields_no_empty_user_message_and_images_follow_the_tool_message() -> None:
    body = anthropic_request(
        messages=[
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "here"}, {"type": "image", "source": {"type": "url", "url": "https://x/s.png"}}],
                    }
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    )
    assert messages_request_to_chat(body)["messages"][1:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "here"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/s.png"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            anthropic_request(messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}]),
            "messages.0.content.0: 'document' content has no OpenAI chat-completions form; this model's provider cannot take it",
        ),
        (
            anthropic_request(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "tools.0.type: server tool 'web_search_20250305' has no OpenAI chat-completions form",
        ),
    ],
)
def test_untranslatable_anthropic_content_is_400(body: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        messages_request_to_chat(parse_messages_request(raw(body)).body)
    assert caught.value.message == message and caught.value.status == 400


# -------------------------------------------------------------------------------------------------
# Requests: OpenAI -> Anthropic


def test_chat_request_to_messages_maps_every_part() -> None:
    body = {
        "model": "claude-sonnet-4",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "Thanks, and tomorrow?", "name": "alice"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather by city", "parameters": WEATHER_SCHEMA}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "stop": "END",
        "temperature": 1.5,
        "top_p": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "seed": 3,
    }
    parse_chat_request(raw(body))
    out = chat_request_to_messages(body)
    assert out == {
        "model": "claude-sonnet-4",
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4A"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
                    {"type": "text", "text": "Thanks, and tomorrow?"},
                ],
            },
        ],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 1.0,
        "top_p": 0.5,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u1"},
        "tools": [{"name": "weather", "input_schema": WEATHER_SCHEMA, "description": "Weather by city"}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    parse_messages_request(raw(out))  # what Anthropic would check


def test_max_tokens_prefers_max_completion_tokens_and_defaults_to_4096() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert DEFAULT_MAX_TOKENS == 4096
    assert chat_request_to_messages({"model": "m", "messages": msgs})["max_tokens"] == 4096
    assert chat_request_to_messages({"model": "m", "messages": msgs}, default_max_tokens=100)["max_tokens"] == 100
    assert chat_request_to_messages({"model": "m", "messages": msgs, "max_tokens": 50})["max_tokens"] == 50
    assert chat_request_to_messages({"model": "m", "messages": msgs, "max_tokens": 50, "max_completion_tokens": 70})["max_tokens"] == 70


@pytest.mark.parametrize(
    "body, message, param",
    [
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}]}]},
            "messages[0].tool_calls[0].function.arguments: tool call arguments must be a JSON object, got '{city: Paris'",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
            "messages[0].tool_calls[0].function.arguments: tool call arguments must be a JSON object, got '[1, 2]'",
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id: is required for role 'tool'", "messages[0].tool_call_id"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role: role 'function' is not translated to Anthropic", "messages[0].role"),
        (
            {"messages": [{"role": "system", "content": "Summarize: the meeting moved to 3pm."}]},
            "messages: the provider's API needs a user message besides the system ones (Anthropic's and Bedrock's do, "
            "OpenAI's does not): send the request as a user message",
            "messages",
        ),
        ({"messages": [], "functions": [{"name": "f"}]}, "functions: legacy function calling is not translated to Anthropic: use 'tools' and 'tool_choice'", "functions"),
        ({"messages": [], "n": 2}, "n: Anthropic returns one choice: 'n' must be 1", "n"),
        ({"messages": [], "response_format": {"type": "json_object"}}, "response_format: response_format 'json_object' is not translated to Anthropic", "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type: content part 'input_audio' has no Anthropic Messages form",
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
            "messages[0].content[0].image_url.url: must be an http(s) URL or a base64 data: URL",
            "messages[0].content[0].image_url.url",
        ),
    ],
)
def test_untranslatable_openai_requests_are_400(body: dict[str, Any], message: str, param: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        chat_request_to_messages({"model": "m", **body})
    assert (caught.value.message, caught.value.param, caught.value.status) == (message, param, 400)


def test_anthropic_request_round_trips_through_openai() -> None:
    body = anthropic_request(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                ],
            },
        ],
        tools=[{"name": "weather", "description": "d", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "tool", "name": "weather"},
        stop_sequences=["END", "STOP"],
        temperature=0.5,
        top_p=0.9,
        stream=True,
        metadata={"user_id": "u1"},
    )
    assert chat_request_to_messages(messages_request_to_chat(body)) == body


def test_openai_request_round_trips_through_anthropic() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "max_tokens": 99,
        "temperature": 0.5,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA, "description": "d"}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "user": "u1",
    }
    assert messages_request_to_chat(chat_request_to_messages(body)) == body


# -------------------------------------------------------------------------------------------------
# Responses


ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
        {"type": "text", "text": "Let me check Paris."},
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris", "days": 2}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 40, "output_tokens": 12, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5},
}


def test_message_to_chat_completion() -> None:
    validate_message(ANTHROPIC_MESSAGE)
    out = message_to_chat_completion(raw(ANTHROPIC_MESSAGE))
    ChatCompletion.model_validate(out)
    assert out["id"] == "msg_01" and out["object"] == "chat.completion" and out["model"] == "claude-sonnet-4-20250514"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check Paris.",
                "refusal": None,
                "tool_calls": [{"id": "toolu_01", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 2}'}}],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert out["usage"] == {"prompt_tokens": 145, "completion_tokens": 12, "total_tokens": 157, "prompt_tokens_details": {"cached_tokens": 100}}
    assert message_to_chat_completion(ANTHROPIC_MESSAGE, model="alias")["model"] == "alias"


@pytest.mark.parametrize(
    "stop_reason, finish_reason",
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop")],
)
def test_stop_reason_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    msg = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    assert message_to_chat_completion(msg)["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize(
    "finish_reason, stop_reason",
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_finish_reason_to_stop_reason(finish_reason: str | None, stop_reason: str) -> None:
    completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish_reason}]}
    assert chat_completion_to_message(completion)["stop_reason"] == stop_reason


def test_chat_completion_to_message() -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking both.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10}},
    }
    ChatCompletion.model_validate(completion)
    out = chat_completion_to_message(raw(completion))
    validate_message(out)
    assert out == {
        "id": "chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 10},
    }


def test_responses_round_trip() -> None:
    msg = {**ANTHROPIC_MESSAGE, "content": ANTHROPIC_MESSAGE["content"][1:], "usage": {"input_tokens": 40, "output_tokens": 12, "cache_read_input_tokens": 100}}
    assert chat_completion_to_message(message_to_chat_completion(msg)) == msg
    completion = message_to_chat_completion(msg)
    assert message_to_chat_completion(chat_completion_to_message(completion)) | {"created": 0} == completion | {"created": 0}


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"<html>bad gateway</html>", "the provider's answer is not JSON"),
        (raw({"choices": []}), "the provider's answer has no choices"),
        (
            raw({"choices": [{"message": {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}}]}),
            "the provider answered a tool call whose arguments are not a JSON object",
        ),
    ],
)
def test_bad_openai_answers_are_upstream_errors(answer: bytes, message: str) -> None:
    with pytest.raises(UpstreamError, match=message) as caught:
        chat_completion_to_message(answer)
    assert caught.value.status == 502


def test_bad_anthropic_answers_are_upstream_errors() -> None:
    with pytest.raises(UpstreamError, match="not an Anthropic message"):
        message_to_chat_completion(raw({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))


# -------------------------------------------------------------------------------------------------
# Streams: Anthropic -> OpenAI


def anthropic_event(kind: str, **payload: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, ensure_ascii=False)}\n\n".encode()


ANTHROPIC_SSE = b"".join(
    [
        anthropic_event(
            "message_start",
            message={
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-20250514",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 4},
            },
        ),
        anthropic_event("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
        anthropic_event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Paris, then."}),
        anthropic_event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "abc"}),
        anthropic_event("content_block_stop", index=0),
        anthropic_event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
        anthropic_event("ping"),
        anthropic_event("content_block_delta", index=1, delta={"type": "text_delta", "text": "Checking "}),
        anthropic_event("content_block_delta", index=1, delta={"type": "text_delta", "text": "Paris — ☀️ maybe."}),
        anthropic_event("content_block_stop", index=1),
        anthropic_event("content_block_start", index=2, content_block={"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {}}),
        anthropic_event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": ""}),
        anthropic_event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"city": "Pa'}),
        anthropic_event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": 'ris"}'}),
        anthropic_event("content_block_stop", index=2),
        anthropic_event("content_block_start", index=3, content_block={"type": "tool_use", "id": "toolu_02", "name": "weather", "input": {}}),
        anthropic_event("content_block_delta", index=3, delta={"type": "input_json_delta", "partial_json": '{"city": "Rome"}'}),
        anthropic_event("content_block_stop", index=3),
        anthropic_event("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 89}),
        anthropic_event("message_stop"),
    ]
)


def translate_anthropic(data: bytes, pieces: list[bytes] | None = None, **kwargs: Any) -> bytes:
    stream = MessagesToChatStream(created=1700000000, **kwargs)
    out = b"".join(stream.feed(p) for p in (pieces if pieces is not None else [data]))
    return out + stream.close()


def test_anthropic_stream_to_openai_chunks() -> None:
    stream = MessagesToChatStream(created=1700000000, include_usage=True)
    out = stream.feed(ANTHROPIC_SSE) + stream.close()
    chunks = chat_chunks(out)
    assert {c["id"] for c in chunks} == {"msg_01"} and {c["model"] for c in chunks} == {"claude-sonnet-4-20250514"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chat_accumulate(chunks) == {
        "text": "Checking Paris — ☀️ maybe.",
        "tool_calls": [
            {"id": "toolu_01", "name": "weather", "arguments": '{"city": "Paris"}'},
            {"id": "toolu_02", "name": "weather", "arguments": '{"city": "Rome"}'},
        ],
        "finish_reason": "tool_calls",
    }
    # OpenAI tool indexes count tool calls (0, 1), not Anthropic blocks (2, 3)
    assert [tc["index"] for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])] == [0, 0, 0, 1, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 29,
        "completion_tokens": 89,
        "total_tokens": 118,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert stream.usage == chunks[-1]["usage"]
    assert b": ping\n\n" in out
    assert not any("thinking" in json.dumps(c) for c in chunks)


def test_anthropic_stream_without_include_usage_has_no_usage_chunk() -> None:
    chunks = chat_chunks(translate_anthropic(ANTHROPIC_SSE))
    assert all(c["choices"] for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_anthropic_stream_split_at_every_byte_gives_the_same_output() -> None:
    whole = translate_anthropic(ANTHROPIC_SSE, include_usage=True)
    for i in range(len(ANTHROPIC_SSE) + 1):
        assert translate_anthropic(ANTHROPIC_SSE, [ANTHROPIC_SSE[:i], ANTHROPIC_SSE[i:]], include_usage=True) == whole, i
    one_by_one = [ANTHROPIC_SSE[i : i + 1] for i in range(len(ANTHROPIC_SSE))]
    assert translate_anthropic(ANTHROPIC_SSE, one_by_one, include_usage=True) == whole
    crlf = ANTHROPIC_SSE.replace(b"\n", b"\r\n")
    assert translate_anthropic(crlf, [crlf[i : i + 1] for i in range(len(crlf))], include_usage=True) == whole


def test_anthropic_error_event_mid_stream_becomes_an_openai_stream_error() -> None:
    cut = ANTHROPIC_SSE.index(b"event: content_block_start\ndata: {\"type\": \"content_block_start\", \"index\": 2")
    data = ANTHROPIC_SSE[:cut] + anthropic_event("error", error={"type": "overloaded_error", "message": "Overloaded"}) + anthropic_event("message_stop")
    out = translate_anthropic(data)
    events = sse(out)
    assert events[-1] == (None, json.dumps({"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}}, separators=(",", ":")))
    assert b"[DONE]" not in out


def test_anthropic_stream_cut_mid_event_ends_with_an_error() -> None:
    data = ANTHROPIC_SSE[: ANTHROPIC_SSE.index("Paris —".encode()) + 7]  # inside the dash's UTF-8 bytes
    out = translate_anthropic(data)
    last = json.loads(sse(out)[-1][1])
    assert last["error"]["type"] == "upstream_error" and "cut mid-stream" in last["error"]["message"]
    assert b"[DONE]" not in out


@pytest.mark.skipif(httpx is None, reason="the openai SDK's HTTP library is not importable")
def test_the_openai_sdk_reads_the_translated_stream_and_its_error() -> None:
    def client(body: bytes, content_type: str) -> openai.OpenAI:
        assert httpx is not None
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers={"content-type": content_type}))
        return openai.OpenAI(api_key="k", base_url="http://sidegate.test/v1", http_client=httpx.Client(transport=transport), max_retries=0)

    stream = client(translate_anthropic(ANTHROPIC_SSE, include_usage=True), "text/event-stream").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking Paris — ☀️ maybe."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 89

    errored = ANTHROPIC_SSE[: ANTHROPIC_SSE.index(b"event: message_delta")] + anthropic_event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    stream = client(translate_anthropic(errored), "text/event-stream").chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream)

    completion = client(raw(message_to_chat_completion(ANTHROPIC_MESSAGE)), "application/json").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].type == "function"
    assert calls[0].function.arguments == '{"city": "Paris", "days": 2}'


# -------------------------------------------------------------------------------------------------
# Streams: OpenAI -> Anthropic


def chat_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    chunk: dict[str, Any] = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunk["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    chunk.update(extra)
    ChatCompletionChunk.model_validate(chunk)
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


OPENAI_SSE = b"".join(
    [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Checking "}),
        chat_chunk({"content": "both — ☀️."}),
        chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]}),
        chat_chunk({}, "tool_calls"),
        chat_chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10}}),
        b"data: [DONE]\n\n",
    ]
)


def translate_openai(pieces: list[bytes], **kwargs: Any) -> bytes:
    stream = ChatToMessagesStream(**kwargs)
    return b"".join(stream.feed(p) for p in pieces) + stream.close()


def test_openai_stream_to_anthropic_events() -> None:
    stream = ChatToMessagesStream()
    out = stream.feed(OPENAI_SSE) + stream.close()
    assert [e for e, _ in sse(out)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = anthropic_accumulate(out)
    assert message == {
        "id": "chatcmpl-9",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [
            {"type": "text", "text": "Checking both — ☀️."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 10},
    }
    assert stream.usage == {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10}}


def test_openai_stream_split_at_every_byte_gives_the_same_output() -> None:
    whole = translate_openai([OPENAI_SSE])
    for i in range(len(OPENAI_SSE) + 1):
        assert translate_openai([OPENAI_SSE[:i], OPENAI_SSE[i:]]) == whole, i
    assert translate_openai([OPENAI_SSE[i : i + 1] for i in range(len(OPENAI_SSE))]) == whole


def test_openai_stream_without_done_or_usage_still_closes_the_message() -> None:
    data = chat_chunk({"role": "assistant", "content": "Hi"}) + chat_chunk({}, "length")
    message = anthropic_accumulate(translate_openai([data], model="alias"))
    assert message["model"] == "alias" and message["stop_reason"] == "max_tokens"
    assert message["content"] == [{"type": "text", "text": "Hi"}] and message["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_an_empty_openai_stream_is_still_a_well_formed_message() -> None:
    message = anthropic_accumulate(translate_openai([b"data: [DONE]\n\n"], model="m", message_id="msg_x"))
    assert (message["id"], message["content"], message["stop_reason"]) == ("msg_x", [], "end_turn")


def test_text_after_a_tool_call_opens_a_new_block() -> None:
    data = b"".join(
        [
            chat_chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            chat_chunk({"content": "done"}),
            chat_chunk({}, "stop"),
            b"data: [DONE]\n\n",
        ]
    )
    message = anthropic_accumulate(translate_openai([data]))
    assert message["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}, {"type": "text", "text": "done"}]


def test_openai_error_mid_stream_becomes_an_anthropic_error_event() -> None:
    data = chat_chunk({"content": "Hel"}) + b'data: {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}\n\n' + chat_chunk({"content": "lo"})
    events = [(e, json.loads(d)) for e, d in sse(translate_openai([data]))]
    assert [e for e, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}
    if anthropic is not None:
        from pydantic import TypeAdapter

        TypeAdapter(anthropic.types.ErrorResponse).validate_python(events[-1][1])


def test_openai_stream_cut_mid_event_ends_with_an_error_event() -> None:
    data = OPENAI_SSE[: OPENAI_SSE.index(b'Paris') + 3]
    events = [(e, json.loads(d)) for e, d in sse(translate_openai([data]))]
    assert events[-1][0] == "error" and "cut mid-stream" in events[-1][1]["error"]["message"]
    assert "message_stop" not in [e for e, _ in events]


# -------------------------------------------------------------------------------------------------
# Usage and error bodies


def test_usage_from_message_body_and_stream() -> None:
    assert usage_from_message(raw(ANTHROPIC_MESSAGE)) == {
        "prompt_tokens": 145,
        "completion_tokens": 12,
        "total_tokens": 157,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert usage_from_message(b"not json") is None and usage_from_message(raw({"type": "message"})) is None
    expected = {"prompt_tokens": 29, "completion_tokens": 89, "total_tokens": 118, "prompt_tokens_details": {"cached_tokens": 4}}
    assert usage_from_message_sse(ANTHROPIC_SSE) == expected
    assert usage_from_message_sse(ANTHROPIC_SSE[: ANTHROPIC_SSE.index(b"event: message_delta")]) is None
    scanner = MessagesUsageScanner()
    found = [u for i in range(len(ANTHROPIC_SSE)) if (u := scanner.feed(ANTHROPIC_SSE[i : i + 1])) is not None]
    assert found == [expected]  # once, complete, however the stream is cut


def test_message_delta_usage_with_input_tokens_wins_over_message_start() -> None:
    data = anthropic_event("message_start", message={"usage": {"input_tokens": 0, "output_tokens": 0}}) + anthropic_event(
        "message_delta", delta={"stop_reason": "end_turn"}, usage={"input_tokens": 50, "output_tokens": 7, "cache_read_input_tokens": None}
    )
    assert usage_from_message_sse(data) == {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}


def test_error_bodies_both_ways() -> None:
    anthropic_body = raw({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"})
    assert json.loads(error_body_to_chat(anthropic_body, 529)) == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}
    }
    openai_body = raw({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
    assert json.loads(error_body_to_messages(openai_body, 401)) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Incorrect API key provided"},
    }
    assert json.loads(error_body_to_messages(b"upstream connect error", 503)) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream connect error"},
    }
    assert json.loads(error_body_to_chat(b"", 429))["error"]["type"] == "rate_limit_error"
    assert json.loads(error_body_to_messages(raw({"error": {"message": "x", "type": "server_error"}}), 500))["error"]["type"] == "api_error"


@pytest.mark.skipif(anthropic is None, reason="the anthropic SDK is not installed in this environment")
def test_the_anthropic_sdk_accepts_the_translated_shapes() -> None:
    """Also done inside validate_message / anthropic_accumulate whenever the SDK is there."""
    assert anthropic is not None
    anthropic.types.Message.model_validate(chat_completion_to_message(message_to_chat_completion(ANTHROPIC_MESSAGE)))
    anthropic_accumulate(translate_openai([OPENAI_SSE]))


@pytest.mark.skipif(anthropic is None or httpx is None, reason="the anthropic SDK is not installed in this environment")
def test_the_anthropic_sdk_reads_the_translated_stream_answer_and_error() -> None:
    assert anthropic is not None and httpx is not None

    def client(body: bytes, content_type: str) -> Any:
        assert anthropic is not None and httpx is not None
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers={"content-type": content_type}))
        return anthropic.Anthropic(api_key="k", base_url="http://sidegate.test", http_client=httpx.Client(transport=transport), max_retries=0)

    ask = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    with client(translate_openai([OPENAI_SSE]), "text/event-stream").messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "Checking both — ☀️."
    assert [(b.type, getattr(b, "input", None)) for b in final.content[1:]] == [("tool_use", {"city": "Paris"}), ("tool_use", {"city": "Rome"})]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("tool_use", 20, 9)

    message = client(raw(chat_completion_to_message(message_to_chat_completion(ANTHROPIC_MESSAGE))), "application/json").messages.create(**ask)
    assert message.stop_reason == "tool_use" and message.content[-1].input == {"city": "Paris", "days": 2}

    errored = chat_chunk({"content": "Hel"}) + b'data: {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}\n\n'
    with pytest.raises(anthropic.APIStatusError, match="Rate limit reached"):
        with client(translate_openai([errored]), "text/event-stream").messages.stream(**ask) as stream:
            stream.get_final_message()


def test_streams_ending_without_the_last_blank_line_still_finish() -> None:
    openai_tail = OPENAI_SSE[: -len(b"\n")]  # ends on "data: [DONE]\n"
    assert translate_openai([openai_tail]) == translate_openai([OPENAI_SSE])
    anthropic_tail = ANTHROPIC_SSE[: -len(b"\n")]
    assert translate_anthropic(anthropic_tail) == translate_anthropic(ANTHROPIC_SSE)
    cut_line = OPENAI_SSE[: -len(b"NE]\n\n")]  # "data: [DO": a line cut short is a cut stream
    assert sse(translate_openai([cut_line]))[-1][0] == "error"
