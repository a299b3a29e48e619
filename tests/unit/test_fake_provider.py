"""The fake provider, driven by the real openai client: it must look like OpenAI to it."""

from __future__ import annotations

import json
from typing import Any
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `tests.` imports
from testkit.fake_provider import Behaviour, FakeProvider, chunk_content  # noqa: E402

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def fp() -> Iterator[FakeProvider]:
    with FakeProvider(name="fake-a") as provider:
        yield provider


@pytest.fixture(autouse=True)
def _reset(fp: FakeProvider) -> None:
    fp.clear()
    fp.defaults = Behaviour()


def client(fp: FakeProvider, base_url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url or fp.base_url, api_key="sk-test-123", max_retries=0, timeout=5)


def test_non_stream_completion(fp: FakeProvider) -> None:
    raw = client(fp).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    r = raw.parse()
    assert raw.headers["x-fake-provider"] == "fake-a"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.model == "gpt-4o-mini"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "fake-a says: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_stream_with_usage(fp: FakeProvider) -> None:
    chunks = list(
        client(fp).chat.completions.create(
            model="m1", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.model == "m1" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert content == ["fake-a ", "says: ", "hello ", "there"]  # one chunk per word
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_wire_format(fp: FakeProvider) -> None:
    req = urllib.request.Request(
        f"{fp.base_url}/chat/completions",
        data=json.dumps({"model": "m", "messages": USER, "stream": True}).encode(),
        headers={"content-type": "application/json", "x-fake-chunks": "7", "x-fake-reply": "a b"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    deltas = [p["choices"][0]["delta"].get("content") for p in payloads[1:-1]]
    assert len(deltas) == 7 and "".join(deltas) == "a b a b a b a"
    assert "usage" not in payloads[0]  # only with stream_options.include_usage


def test_stream_content_equals_non_stream(fp: FakeProvider) -> None:
    c = client(fp)
    body = c.chat.completions.create(model="m", messages=USER).choices[0].message.content
    streamed = "".join(
        ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="m", messages=USER, stream=True) if ch.choices
    )
    assert streamed == body


async def test_async_client_stream_and_not(fp: FakeProvider) -> None:
    ac = openai.AsyncOpenAI(base_url=fp.base_url, api_key="sk-async", max_retries=0, timeout=5)
    r = await ac.chat.completions.create(model="m", messages=USER, extra_headers={"x-fake-reply": "async ok"})
    assert r.choices[0].message.content == "async ok"
    stream = await ac.chat.completions.create(model="m", messages=USER, stream=True, extra_headers={"x-fake-chunks": "3"})
    parts = [ch.choices[0].delta.content async for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert len(parts) == 3 and "".join(parts) == "fake-a says: hello there"
    await ac.close()


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_error_status(fp: FakeProvider, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(fp).chat.completions.create(model="m", messages=USER, extra_headers={"x-fake-status": str(status)})
    assert info.value.status_code == status
    err = info.value.body
    assert isinstance(err, dict) and set(err) >= {"message", "type", "param", "code"}  # openai unwraps "error"


def test_fail_next_then_recover(fp: FakeProvider) -> None:
    fp.fail_next(503, times=2)
    c = client(fp)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="m", messages=USER)
    assert c.chat.completions.create(model="m", messages=USER).choices[0].message.content
    fp.set_defaults(status=429)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="m", messages=USER)


def test_delay_header(fp: FakeProvider) -> None:
    t0 = time.monotonic()
    client(fp).chat.completions.create(model="m", messages=USER, extra_headers={"x-fake-delay-ms": "300"})
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=fp.base_url, api_key="k", max_retries=0, timeout=0.1).chat.completions.create(
            model="m", messages=USER, extra_headers={"x-fake-delay-ms": "1000"}
        )


def test_chunk_delay_streams_incrementally(fp: FakeProvider) -> None:
    stream = client(fp).chat.completions.create(
        model="m", messages=USER, stream=True, extra_headers={"x-fake-chunk-delay-ms": "100", "x-fake-chunks": "3"}
    )
    arrivals = [(time.monotonic(), ch) for ch in stream]
    assert len(arrivals) == 5  # role, 3 content, finish
    assert arrivals[0][1].choices[0].delta.role == "assistant"
    assert arrivals[-1][0] - arrivals[0][0] >= 0.3  # frames arrive as they are written, not all at the end


def test_base_path_variant_and_models(fp: FakeProvider) -> None:
    base = f"http://127.0.0.1:{fp.port}/openai/v1"
    r = client(fp, base).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content == "fake-a says: hello there"
    assert fp.requests[-1].path == "/openai/v1/chat/completions"
    assert [m.id for m in client(fp).models.list()] == ["gpt-4o-mini"]


def test_requests_recorded(fp: FakeProvider) -> None:
    client(fp).chat.completions.create(model="gpt-4o-mini", messages=USER, extra_headers={"X-Trace": "t1"})
    (rec,) = fp.wait_for_requests(1)
    assert rec.method == "POST" and rec.path == "/v1/chat/completions"
    assert rec.headers["Authorization"] == rec.headers["authorization"] == "Bearer sk-test-123"
    assert rec.headers["x-trace"] == "t1"
    assert rec.json["model"] == "gpt-4o-mini" and rec.json["messages"] == USER
    assert json.loads(rec.body) == rec.json and rec.received_at > 0
    fp.clear()
    assert fp.requests == []


def test_bad_requests_are_rejected(fp: FakeProvider) -> None:
    c = client(fp)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="", messages=USER)
    with pytest.raises(openai.NotFoundError):
        c.get("/nope", cast_to=object)


def test_closed_port_refuses() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=2).chat.completions.create(
            model="m", messages=USER
        )


def test_chunk_content_joins_back() -> None:
    text = "fake-a says:  two  spaces "
    assert "".join(chunk_content(text, None)) == text
    for n in (1, 2, 3):
        assert len(chunk_content(text, n)) == n and "".join(chunk_content(text, n)) == text
    assert chunk_content(text, 0) == []
    assert len(chunk_content("one", 4)) == 4


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
ANTHROPIC_TOOL = {"name": "weather", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_in_openais_shape_as_the_sdk_reads_it(fp: FakeProvider, stream: bool) -> None:
    client = openai.OpenAI(base_url=fp.base_url, api_key="sk-test", max_retries=0)
    kw: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "rain in Oslo?"}], "tools": [TOOL],
                             "extra_headers": {"x-fake-tool": "weather"}}
    if stream:
        with client.chat.completions.stream(**kw) as s:  # type: ignore[arg-type]
            answer = s.get_final_completion()
    else:
        answer = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    choice = answer.choices[0]
    call = choice.message.tool_calls[0]
    assert (choice.finish_reason, call.function.name, json.loads(call.function.arguments)) == ("tool_calls", "weather", {"q": "rain in Oslo?"})
    assert choice.message.content == "fake-a says: rain in Oslo?"
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-tool": "weather"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_use_in_anthropics_shape_as_the_sdk_reads_it(fp: FakeProvider, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{fp.port}", api_key="sk-test", max_retries=0)
    kw: dict[str, object] = {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "rain in Oslo?"}],
                             "tools": [ANTHROPIC_TOOL], "extra_headers": {"x-fake-tool": "weather"}}
    if stream:
        with client.messages.stream(**kw) as s:  # type: ignore[arg-type]
            message = s.get_final_message()
    else:
        message = client.messages.create(**kw)  # type: ignore[call-overload]
    assert message.stop_reason == "tool_use"
    text, use = message.content
    assert text.type == "text" and text.text == "fake-a says: rain in Oslo?"
    assert use.type == "tool_use" and (use.name, use.input) == ("weather", {"q": "rain in Oslo?"})
    with pytest.raises(anthropic.BadRequestError, match="not in tools"):
        client.messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-fake-tool": "weather"})


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_as_the_sdk_reads_it(fp: FakeProvider, stream: bool) -> None:
    c = client(fp)
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    kw: dict[str, Any] = {"model": "gpt-x", "input": [{"role": "user", "content": [{"type": "input_text", "text": "rain in Oslo?"}]}],
                          "tools": [tool], "extra_headers": {"x-fake-tool": "weather", "x-fake-chunks": "3"}}
    if stream:
        with c.responses.stream(**kw) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            response = s.get_final_response()
        assert len(deltas) == 3
    else:
        response = c.responses.create(**kw)
    assert response.status == "completed" and response.output_text == "fake-a says: rain in Oslo?" and response.model == "gpt-x"
    call = response.output[1]
    assert call.type == "function_call" and (call.name, json.loads(call.arguments)) == ("weather", {"q": "rain in Oslo?"})
    assert response.usage is not None and response.usage.output_tokens == 5  # word counts
    with pytest.raises(openai.BadRequestError, match="input"):
        c.responses.create(model="gpt-x", input=[])
