"""ext_proc.wire.bedrock: Amazon Bedrock's Converse API (JSON and event-stream) to and from OpenAI chat completions.

OpenAI shapes are checked with the ``openai`` SDK's own models; the event-stream framing with a
published vector (the empty message of AWS's event-stream test suite) and with frames written by
the fake provider's independent encoder (testkit.fake_provider.event_frame)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.errors import MalformedRequest, UpstreamError
from ext_proc.wire.bedrock import (
    ConverseToChatStream,
    EventStreamDecoder,
    chat_request_to_converse,
    converse_path,
    converse_to_chat_completion,
    error_body_to_chat,
    usage_from_converse,
)
from testkit.fake_provider import event_frame

EMPTY_MESSAGE = b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"  # AWS's test vector: no headers, no payload


def event(kind: str, data: dict[str, Any]) -> bytes:
    return event_frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, json.dumps(data).encode())


def chunks(sse: bytes) -> list[dict[str, Any]]:
    frames = [f for f in sse.decode().split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    return [json.loads(f[6:]) for f in frames if f != "data: [DONE]"]


def test_the_model_id_is_one_url_encoded_path_segment() -> None:
    assert converse_path("us.amazon.nova-pro-v1:0", stream=False) == "/model/us.amazon.nova-pro-v1%3A0/converse"
    assert converse_path("arn:aws:bedrock:us-west-2:1:inference-profile/x", stream=True, base_path="/proxy/") == \
        "/proxy/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A1%3Ainference-profile%2Fx/converse-stream"


def test_a_chat_request_becomes_a_converse_request() -> None:
    body = {
        "model": "m", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "a city's weather",
                                                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
    }
    out = chat_request_to_converse(body)
    assert "model" not in out and "stream" not in out  # both are in the path
    assert out["system"] == [{"text": "be brief"}]
    assert out["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert out["toolConfig"] == {"tools": [{"toolSpec": {"name": "weather", "description": "a city's weather",
                                                         "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                                 "toolChoice": {"any": {}}}
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_1", "name": "weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},  # merged: roles alternate
                                     {"text": "and "}, {"image": {"format": "png", "source": {"bytes": "iVBO"}}}]},
    ]


def test_no_max_tokens_sends_no_inference_config() -> None:
    assert "inferenceConfig" not in chat_request_to_converse({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def test_what_converse_cannot_take_is_a_clear_400() -> None:
    with pytest.raises(MalformedRequest) as info:  # a tool call whose arguments are not JSON
        chat_request_to_converse({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]})
    assert info.value.status == 400 and info.value.code == "invalid_tool_arguments" and "messages[1].tool_calls[0]" in info.value.message
    with pytest.raises(MalformedRequest) as info:
        chat_request_to_converse({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert info.value.param == "messages[0].content[0]" and "base64" in info.value.message


def test_a_converse_answer_becomes_a_chat_completion() -> None:
    raw = json.dumps({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Let me check."}, {"toolUse": {"toolUseId": "tu_1", "name": "weather", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 19, "cacheReadInputTokens": 4},
        "metrics": {"latencyMs": 100},
    }).encode()
    completion = ChatCompletion.model_validate(converse_to_chat_completion(raw, model="nova"))
    choice = completion.choices[0]
    assert completion.model == "nova" and choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "tu_1" and call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (14, 5)
    assert usage_from_converse(raw) == {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19,
                                        "prompt_tokens_details": {"cached_tokens": 4}}


def test_an_answer_that_is_not_converse_is_a_502() -> None:
    for raw in (b"<html>", b'{"choices": []}'):
        with pytest.raises(UpstreamError):
            converse_to_chat_completion(raw)


def test_a_bedrock_error_keeps_its_message_and_names_the_exception() -> None:
    body = json.loads(error_body_to_chat(b'{"message": "Too many requests, please wait"}', 429,
                                         "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"))
    assert body == {"error": {"message": "Too many requests, please wait", "type": "rate_limit_error", "param": None,
                              "code": "ThrottlingException"}}
    assert json.loads(error_body_to_chat(b"upstream connect error", 503))["error"]["message"] == "upstream connect error"


def test_the_decoder_reads_the_published_vector_and_frames_split_anywhere() -> None:
    d = EventStreamDecoder()
    (empty,) = d.feed(EMPTY_MESSAGE)
    assert empty.headers == {} and empty.payload == b""
    raw = event("messageStart", {"role": "assistant"}) + event("messageStop", {"stopReason": "end_turn"})
    got = []
    for i in range(len(raw)):  # one byte at a time
        got += d.feed(raw[i : i + 1])
    assert [m.headers[":event-type"] for m in got] == ["messageStart", "messageStop"] and not d.pending
    assert json.loads(got[1].payload) == {"stopReason": "end_turn"}


def test_a_corrupt_frame_is_refused() -> None:
    frame = bytearray(event("messageStart", {"role": "assistant"}))
    frame[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
    with pytest.raises(UpstreamError, match="checksum"):
        EventStreamDecoder().feed(bytes(frame))


def test_a_converse_stream_becomes_openai_chunks_with_text_tool_calls_and_usage() -> None:
    raw = b"".join([
        event("messageStart", {"role": "assistant", "p": "abc"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_1", "name": "weather"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": '}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 9}}),
    ])
    s = ConverseToChatStream(model="nova")
    out = b"".join(s.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + s.close()
    assert out.endswith(b"data: [DONE]\n\n")
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks(out)]
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    args = "".join(tc.function.arguments or "" for c in parsed if c.choices for tc in c.choices[0].delta.tool_calls or [] if tc.function)
    assert text == "Hello" and json.loads(args) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in parsed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert parsed[-1].usage is not None and parsed[-1].usage.total_tokens == 5 and s.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_stream_cut_mid_event_or_an_exception_ends_in_an_error_chunk() -> None:
    start, delta = event("messageStart", {"role": "assistant"}), event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
    s = ConverseToChatStream()
    out = s.feed(start + delta[: len(delta) // 2]) + s.close()  # cut in the middle of a frame
    last = chunks(out)[-1]
    assert "cut mid-stream" in last["error"]["message"] and not out.endswith(b"[DONE]\n\n")
    s = ConverseToChatStream()
    throttled = event_frame({":exception-type": "throttlingException", ":content-type": "application/json", ":message-type": "exception"},
                            b'{"message": "Too many tokens, please wait"}')
    out = s.feed(start + throttled) + s.close()
    assert chunks(out)[-1]["error"] == {"message": "Too many tokens, please wait", "type": "throttlingException", "param": None,
                                        "code": "throttlingException"}


def test_the_usage_chunk_comes_only_when_asked_for() -> None:
    raw = event("messageStart", {"role": "assistant"}) + event("messageStop", {"stopReason": "end_turn"}) + \
        event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}})
    s = ConverseToChatStream(include_usage=False)
    out = s.feed(raw) + s.close()
    assert out.endswith(b"data: [DONE]\n\n") and all("usage" not in c for c in chunks(out))
    assert s.usage == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}  # still read, for metrics and rate limits
