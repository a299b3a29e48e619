"""A JSON response_format for Anthropic and Bedrock providers, as a forced tool call (ext_proc/wire/json_tool.py),
and through the Exchange that sends it and reads the answer back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.chat.translate import Exchange
from ext_proc.config import build_config
from ext_proc.errors import MalformedRequest
from ext_proc.wire import json_tool
from testkit import gateway_config

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "forecast", "description": "a forecast request", "schema": SCHEMA, "strict": True}}
CFG = build_config(gateway_config([
    {"name": "claude", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:9", "model": "claude-t", "default": True},
    {"name": "br", "provider_interface": "amazon_bedrock", "endpoint": "http://127.0.0.1:9", "model": "anthropic.claude-v2",
     "access_key": "k"},
]))
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "Oslo, 3 days"}], "response_format": FORMAT}


def test_a_json_schema_becomes_one_forced_tool_and_json_object_an_open_one() -> None:
    out = json_tool.as_tool_call(REQUEST, "Anthropic")
    assert "response_format" not in out and out["tool_choice"] == {"type": "function", "function": {"name": "json_output"}}
    (tool,) = out["tools"]
    assert tool["function"]["parameters"] == SCHEMA and "forecast a forecast request" in tool["function"]["description"]
    loose = json_tool.as_tool_call({**REQUEST, "response_format": {"type": "json_object"}}, "Anthropic")
    assert loose["tools"][0]["function"]["parameters"] == {"type": "object"}


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array"}}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
])
def test_what_a_forced_tool_cannot_say_is_a_400(change: dict[str, Any], param: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        json_tool.as_tool_call({**REQUEST, **change}, "Anthropic")
    assert info.value.param == param


def exchange(provider: str) -> tuple[Exchange, dict[str, Any]]:
    ex = Exchange("openai")
    req = ex.parse(json.dumps(REQUEST).encode())
    out, _ = ex.upstream_body(req, None, CFG.provider(provider))  # type: ignore[arg-type]
    assert out is not None
    return ex, json.loads(out)


def test_an_anthropic_provider_is_asked_for_the_tool_and_its_call_is_the_answers_content() -> None:
    ex, sent = exchange("claude")
    assert sent["tools"][0]["name"] == "json_output" and sent["tools"][0]["input_schema"] == SCHEMA
    assert sent["tool_choice"] == {"type": "tool", "name": "json_output"}
    ex.start_response(status="200", streaming=False)
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-t", "stop_reason": "tool_use",
              "content": [{"type": "text", "text": "Here it is:"},
                          {"type": "tool_use", "id": "toolu_1", "name": "json_output", "input": {"city": "Oslo", "days": 3}}],
              "usage": {"input_tokens": 5, "output_tokens": 7}}
    out = ex.response(json.dumps(answer).encode(), streaming=False, end_of_stream=True)
    assert out is not None
    (choice,) = json.loads(out)["choices"]
    assert json.loads(choice["message"]["content"]) == {"city": "Oslo", "days": 3}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


def test_an_anthropic_stream_of_the_tools_input_arrives_as_content_deltas() -> None:
    ex, _ = exchange("claude")
    ex.start_response(status="200", streaming=True)
    stream = sse([
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-t",
                                                                "content": [], "usage": {"input_tokens": 5, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": "toolu_1", "name": "json_output", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Os'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 'lo", "days": 3}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
        ("message_stop", {"type": "message_stop"}),
    ])
    out = b"".join(ex.response(stream[i:i + 97], streaming=True, end_of_stream=i + 97 >= len(stream)) or b""
                   for i in range(0, len(stream), 97))
    chunks = [json.loads(line[6:]) for line in out.decode().splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert json.loads(text) == {"city": "Oslo", "days": 3}
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c.get("choices"))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]] == ["stop"]
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_bedrock_provider_gets_the_tool_in_its_tool_config() -> None:
    ex, sent = exchange("br")
    spec = sent["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["name"] == "json_output" and spec["inputSchema"] == {"json": SCHEMA}
    assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": "json_output"}}
    ex.start_response(status="200", streaming=False)
    answer = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "json_output", "input": {"city": "Oslo", "days": 3}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}}
    out = ex.response(json.dumps(answer).encode(), streaming=False, end_of_stream=True)
    assert out is not None and json.loads(json.loads(out)["choices"][0]["message"]["content"]) == {"city": "Oslo", "days": 3}


def test_an_anthropic_clients_output_format_is_a_json_schema_for_an_openai_provider_and_the_tool_for_bedrock() -> None:
    """The anthropic SDK's messages.parse sends output_config.format; a chat provider gets response_format,
    and Bedrock (no such field either) the forced tool, whose call comes back as the message's text."""
    body = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "Oslo, 3 days"}],
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    ex = Exchange("anthropic")
    req = ex.parse(json.dumps(body).encode())
    assert req.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    out, _ = ex.upstream_body(req, None, CFG.provider("br"))  # type: ignore[arg-type]
    assert out is not None and json.loads(out)["toolConfig"]["toolChoice"] == {"tool": {"name": "json_output"}}
    ex.start_response(status="200", streaming=False)
    answer = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "json_output", "input": {"city": "Oslo", "days": 3}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}}
    message = json.loads(ex.response(json.dumps(answer).encode(), streaming=False, end_of_stream=True) or b"{}")
    assert [b["type"] for b in message["content"]] == ["text"] and json.loads(message["content"][0]["text"]) == {"city": "Oslo", "days": 3}
    assert message["stop_reason"] == "end_turn"
    with pytest.raises(MalformedRequest) as info:
        Exchange("anthropic").parse(json.dumps({**body, "output_config": {"format": {"type": "json_schema"}}}).encode())
    assert info.value.param == "output_config.format.schema"
