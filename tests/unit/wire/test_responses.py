"""OpenAI's Responses API as a view of chat completions (ext_proc/wire/responses.py). Every answer is
checked against the ``openai`` SDK's own types (pydantic), and streams with the SDK's accumulator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ext_proc.errors import MalformedRequest, UpstreamError
from ext_proc.wire.responses import ChatToResponsesStream, chat_completion_to_response, responses_request_to_chat

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "weather", "description": "the weather", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


def chat(body: dict[str, Any]) -> dict[str, Any]:
    return responses_request_to_chat(json.dumps(body).encode())


def test_a_string_input_with_instructions_and_the_options_that_map() -> None:
    out = chat({"model": "gpt-5", "input": "hi", "instructions": "be brief", "max_output_tokens": 50, "temperature": 0.2,
                "reasoning": {"effort": "low", "summary": "auto"}, "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}},
                                                                            "verbosity": "low"},
                "tools": [WEATHER], "tool_choice": {"type": "function", "name": "weather"}, "store": True, "include": ["x"],
                "stream": True, "parallel_tool_calls": False, "top_logprobs": 2})
    assert out == {
        "model": "gpt-5", "temperature": 0.2, "parallel_tool_calls": False, "top_logprobs": 2, "logprobs": True, "stream": True,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 50,
        "tools": [{"type": "function", "function": {"name": "weather", "description": "the weather", "parameters": WEATHER["parameters"]}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "verbosity": "low", "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        "reasoning_effort": "low", "stream_options": {"include_usage": True},
    }


def test_input_items_become_the_chat_conversation() -> None:
    out = chat({"input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "rain "}, {"type": "input_text", "text": "in Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"q": "Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"q": "Bergen"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "sun"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "and this?"}, {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
    ]})
    assert out["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "rain in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"q": "Oslo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"q": "Bergen"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "tool", "tool_call_id": "c2", "content": "sun"},
        {"role": "user", "content": [{"type": "text", "text": "and this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}]},
    ]
    first = chat({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]})["messages"]
    assert first == [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "Previous response with id 'resp_1' not found"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation", "stores no conversations"),
    ({"input": "hi", "background": True}, "background", "without background"),
    ({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "stored prompt templates"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search' run inside OpenAI"),
    ({"input": "hi", "tools": [{"type": "local_shell"}]}, "tools[0].type", "'local_shell' have no chat-completions form"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "Missing required parameter"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id", "Item with id 'msg_1' not found"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "'web_search_call' are not supported"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "expected one of"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type", "'input_file'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0].image_url", "file_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments", "expected a string"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output", "expected a string"),
    ({"input": 5}, "input", "expected a string or an array"),
    ({"input": []}, "input", "the input is empty"),
    ({"model": "m"}, "input", "Missing required parameter"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "at least 1"),
    ({"input": "hi", "tool_choice": {"type": "allowed_tools"}}, "tool_choice", "expected 'auto'"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type", "expected 'text'"),
    ({"input": "hi", "frobnicate": 1}, "frobnicate", "unknown parameter"),
])
def test_what_sidegate_cannot_do_or_openai_would_refuse_is_a_400_naming_the_param(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        chat(body)
    assert info.value.status == 400 and info.value.param == param and words in info.value.message


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        responses_request_to_chat(b"{nope")


REQUEST = {"model": "gpt-5", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "rain in Oslo?"}],
           "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}], "max_completion_tokens": 99}


def completion(finish: str = "tool_calls") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-5-2025",
            "choices": [{"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"q": "Oslo"}'}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 4},
                      "completion_tokens_details": {"reasoning_tokens": 2}}}


def test_a_chat_completion_is_a_response_the_sdk_reads() -> None:
    response = Response.model_validate(chat_completion_to_response(json.dumps(completion()).encode(), request=REQUEST))
    assert (response.status, response.model, response.created_at, response.instructions, response.max_output_tokens) == (
        "completed", "gpt-5-2025", 1700000000, "be brief", 99)
    assert response.id.startswith("resp_") and response.output_text == "Let me check." and response.store is False
    message, call = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"q": "Oslo"}')
    assert [t.name for t in response.tools] == ["weather"]  # type: ignore[union-attr]
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 7, 19)
    assert response.usage.input_tokens_details.cached_tokens == 4 and response.usage.output_tokens_details.reasoning_tokens == 2


def test_an_answer_cut_by_the_token_limit_is_incomplete() -> None:
    response = Response.model_validate(chat_completion_to_response(completion("length"), request=REQUEST))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_an_answer_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="no choices"):
        chat_completion_to_response(b'{"choices": []}', request=REQUEST)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-5-2025",
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAM = b"".join([
    chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me "}), chunk({"content": "check."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
    chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}), b"data: [DONE]\n\n",
])


def events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name, data = block.split("\n", 1)
            event = EVENTS.validate_python(json.loads(data.removeprefix("data: ")))
            assert name == f"event: {event.type}"
            out.append(event)
    return out


def accumulate(raw: bytes) -> Response:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events(raw):
        state.handle_event(event)
    return state._completed_response  # type: ignore[return-value]


def test_a_chat_stream_is_the_responses_event_stream_the_sdk_accumulates() -> None:
    stream = ChatToResponsesStream(request=REQUEST)
    raw = stream.feed(STREAM) + stream.close()
    seen = events(raw)
    assert [e.type for e in seen] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    final = accumulate(raw)
    assert final.status == "completed" and final.output_text == "Let me check."
    call = final.output[1]
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == ("call_1", "weather", '{"q": "Oslo"}')
    assert final.usage is not None and final.usage.total_tokens == 19


def test_a_stream_split_at_every_byte_says_the_same() -> None:
    stream = ChatToResponsesStream(request=REQUEST)
    raw = b"".join(stream.feed(STREAM[i:i + 1]) for i in range(len(STREAM))) + stream.close()
    final = accumulate(raw)
    assert final.output_text == "Let me check." and final.output[1].arguments == '{"q": "Oslo"}'  # type: ignore[union-attr]


def test_a_stream_cut_by_the_token_limit_ends_incomplete_and_one_without_done_still_completes() -> None:
    stream = ChatToResponsesStream(request=REQUEST)
    raw = stream.feed(chunk({"content": "Once upon"}) + chunk({}, "length")) + stream.close()
    last = events(raw)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    stream = ChatToResponsesStream(request=REQUEST)
    assert events(stream.feed(chunk({"content": "hi"}) + chunk({}, "stop")) + stream.close())[-1].type == "response.completed"


@pytest.mark.parametrize("tail", [
    b'data: {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": "more',  # cut mid-event
    b"",  # ended before its finish_reason
])
def test_an_error_or_a_cut_mid_stream_is_an_error_event_and_a_failed_response(tail: bytes) -> None:
    stream = ChatToResponsesStream(request=REQUEST)
    raw = stream.feed(chunk({"content": "Once upon"}) + tail) + stream.close()
    seen = events(raw)
    assert [e.type for e in seen[-2:]] == ["error", "response.failed"]
    assert seen[-1].response.status == "failed" and seen[-1].response.error is not None
    if b"overloaded" in tail:
        assert (seen[-2].code, seen[-2].message) == ("overloaded", "overloaded")


PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch"}}


def test_a_custom_tool_is_a_function_of_one_string_and_its_calls_come_back_as_custom_tool_calls() -> None:
    out = chat({"input": [{"role": "user", "content": "fix it"},
                          {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch\n"},
                          {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"}],
                "tools": [PATCH_TOOL], "tool_choice": {"type": "custom", "name": "apply_patch"}})
    (tool,) = out["tools"]
    assert tool["function"]["name"] == "apply_patch" and tool["function"]["parameters"]["required"] == ["input"]
    assert tool["function"]["description"] == "Edit files.\n\nThe input follows this lark grammar:\nstart: begin_patch hunk+ end_patch"
    assert out["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == json.dumps({"input": "*** Begin Patch\n"})
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "Done!"}
    answer = completion()
    answer["choices"][0]["message"]["tool_calls"] = [{"id": "call_9", "type": "function", "function": {
        "name": "apply_patch", "arguments": json.dumps({"input": "*** Begin Patch\n*** End Patch"})}}]
    response = Response.model_validate(chat_completion_to_response(answer, request=out, custom=frozenset({"apply_patch"})))
    call = response.output[1]
    assert call.type == "custom_tool_call" and (call.call_id, call.name, call.input) == ("call_9", "apply_patch", "*** Begin Patch\n*** End Patch")
    assert response.tools[0].type == "custom"
    stream = ChatToResponsesStream(request=out, custom=frozenset({"apply_patch"}))
    raw = stream.feed(b"".join([
        chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "apply_patch", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"input": "*** Begin'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' Patch"}'}}]}), chunk({}, "tool_calls"), b"data: [DONE]\n\n"])) + stream.close()
    assert [e.type for e in events(raw)][2:6] == ["response.output_item.added", "response.custom_tool_call_input.delta",
                                                  "response.custom_tool_call_input.done", "response.output_item.done"]
    final = accumulate(raw)
    assert final.output[0].type == "custom_tool_call" and final.output[0].input == "*** Begin Patch"  # type: ignore[union-attr]
