"""The Anthropic family through real Envoy and the ext_proc service, with the real SDKs as clients:

* an OpenAI client on egress whose request goes to an ``anthropic`` provider (translated to the
  Messages API and back, JSON and SSE, with ``x-api-key`` and ``anthropic-version``);
* an ``anthropic`` SDK client on ``POST /v1/messages`` (egress and ingress) whose request goes to an
  OpenAI-compatible provider (translated both ways) or to an Anthropic one (passed through).

The providers are ``testkit.fake_provider``'s fake, which speaks both APIs (its ``/v1/messages``
checks ``x-api-key``, ``anthropic-version`` and ``max_tokens`` as Anthropic does).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from ext_proc.config import Config
from ext_proc.control import supervisor as sv
from testkit import free_port, gateway_config
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

CLAUDE_KEY = "sk-ant-configured-key"
USER = [{"role": "user", "content": "hello claude"}]


@dataclass
class Stack:
    cfg: Config
    claude: FakeProvider
    oai: FakeProvider
    supervisor: sv.Supervisor

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{getattr(self.cfg, listener).port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeProvider(name="fake-claude") as claude, FakeProvider(name="fake-oai") as oai:
        providers: list[dict[str, Any]] = [
            {"name": "claude", "provider_interface": "anthropic", "endpoint": claude.base_url, "model": "claude-test",
             "access_key": "$CLAUDE_KEY"},
            {"name": "oai", "provider_interface": "openai", "endpoint": oai.base_url, "model": "gpt-test", "default": True,
             "access_key": "sk-oai-key"},
            # nothing listens there: Envoy answers for it
            {"name": "claude_down", "provider_interface": "anthropic", "endpoint": f"http://127.0.0.1:{free_port()}",
             "model": "claude-down", "access_key": "$CLAUDE_KEY"},
        ]
        with running_stack(tmp_path_factory, gateway_config(providers), {"CLAUDE_KEY": CLAUDE_KEY}) as (cfg, supervisor):
            yield Stack(cfg=cfg, claude=claude, oai=oai, supervisor=supervisor)


def oai_client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url("egress") + "/v1", api_key="sk-client-own", max_retries=0, timeout=10)


def claude_client(stack: Stack, listener: str = "egress") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url(listener), api_key="sk-ant-client-own", max_retries=0, timeout=10)


def test_an_openai_client_reaches_an_anthropic_provider_through_the_messages_api(stack: Stack) -> None:
    stack.claude.clear()
    resp = oai_client(stack).chat.completions.with_raw_response.create(
        model="claude-test", messages=[{"role": "system", "content": "be brief"}, *USER])
    completion = resp.parse()
    assert completion.choices[0].message.content == "fake-claude says: hello claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert resp.headers["x-sidegate-provider"] == "claude"
    (seen,) = stack.claude.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == CLAUDE_KEY and "authorization" not in seen.headers  # the client's key never leaves
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.json["system"] == "be brief" and seen.json["messages"] == [{"role": "user", "content": "hello claude"}]
    assert seen.json["max_tokens"] == 4096 and seen.json["model"] == "claude-test"


def test_an_openai_client_streams_from_an_anthropic_provider(stack: Stack) -> None:
    stream = oai_client(stack).chat.completions.create(
        model="claude-test", messages=USER, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-fake-chunks": "3"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake-claude says: hello claude"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2


def test_an_anthropic_provider_error_reaches_an_openai_client_with_its_status(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai_client(stack).chat.completions.create(model="claude-test", messages=USER, extra_headers={"x-fake-status": "529"})
    assert info.value.status_code == 529
    assert "simulated error 529" in json.dumps(info.value.body)


@pytest.mark.parametrize("listener", ["egress", "ingress"])
def test_an_anthropic_client_reaches_an_openai_provider(stack: Stack, listener: str) -> None:
    stack.oai.clear()
    message = claude_client(stack, listener).messages.create(
        model="gpt-test", max_tokens=100, system="be brief", messages=USER)  # type: ignore[arg-type]
    assert message.type == "message" and message.role == "assistant"
    assert [b.text for b in message.content if b.type == "text"] == ["fake-oai says: hello claude"]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 4
    (seen,) = stack.oai.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-oai-key" and "x-api-key" not in seen.headers
    assert seen.json["messages"][0] == {"role": "system", "content": "be brief"} and seen.json["max_tokens"] == 100


def test_an_anthropic_client_streams_from_an_openai_provider(stack: Stack) -> None:
    with claude_client(stack).messages.stream(model="gpt-test", max_tokens=100, messages=USER,  # type: ignore[arg-type]
                                              extra_headers={"x-fake-chunks": "4"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "fake-oai says: hello claude"
    assert final.stop_reason == "end_turn"


WEATHER = {"name": "weather", "description": "the weather in a city", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_clients_tool_loop_through_an_openai_provider(stack: Stack, stream: bool) -> None:
    """Claude Code's main path when a router sends it to an OpenAI model: tools, a tool_use answer
    (streamed as input_json_delta), then the tool_result turn, each translated both ways."""
    stack.oai.clear()
    client = claude_client(stack)
    kw: dict[str, Any] = {"model": "gpt-test", "max_tokens": 100, "tools": [WEATHER], "extra_headers": {"x-fake-tool": "weather"}}
    ask = [{"role": "user", "content": "rain in Oslo?"}]
    if stream:
        with client.messages.stream(messages=ask, **kw) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(messages=ask, **kw)
    assert message.stop_reason == "tool_use"
    text, use = message.content
    assert text.type == "text" and text.text == "fake-oai says: rain in Oslo?"
    assert use.type == "tool_use" and (use.name, use.input) == ("weather", {"q": "rain in Oslo?"})
    (seen,) = stack.oai.requests
    assert seen.json["tools"] == [{"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                                                    "parameters": WEATHER["input_schema"]}}]
    reply = client.messages.create(model="gpt-test", max_tokens=100, tools=[WEATHER], messages=[  # type: ignore[list-item]
        *ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 12 C"}]}])
    assert reply.stop_reason == "end_turn" and reply.content[0].type == "text"
    sent = stack.oai.requests[-1].json["messages"]
    assert sent[-2]["tool_calls"] == [{"id": use.id, "type": "function", "function": {"name": "weather", "arguments": '{"q": "rain in Oslo?"}'}}]
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 12 C"}


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_clients_tool_loop_through_an_anthropic_provider(stack: Stack, stream: bool) -> None:
    stack.claude.clear()
    client = oai_client(stack)
    tool = {"type": "function", "function": {"name": "weather", "description": "the weather in a city", "parameters": WEATHER["input_schema"]}}
    kw: dict[str, Any] = {"model": "claude-test", "tools": [tool], "extra_headers": {"x-fake-tool": "weather"}}
    ask = [{"role": "user", "content": "rain in Oslo?"}]
    if stream:
        with client.chat.completions.stream(messages=ask, **kw) as s:
            answer = s.get_final_completion()
    else:
        answer = client.chat.completions.create(messages=ask, **kw)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "fake-claude says: rain in Oslo?"
    (call,) = choice.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("weather", {"q": "rain in Oslo?"})
    (seen,) = stack.claude.requests
    assert seen.json["tools"] == [WEATHER]
    client.chat.completions.create(model="claude-test", tools=[tool], messages=[  # type: ignore[list-item]
        *ask, choice.message.model_dump(exclude_none=True, exclude={"parsed", "refusal"}),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 12 C"}])
    sent = stack.claude.requests[-1].json["messages"]
    assert sent[-2]["content"][-1] == {"type": "tool_use", "id": call.id, "name": "weather", "input": {"q": "rain in Oslo?"}}
    assert sent[-1]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 12 C"}]


def test_an_anthropic_client_to_an_anthropic_provider_is_passed_through_with_the_configured_key(stack: Stack) -> None:
    stack.claude.clear()
    with claude_client(stack).messages.stream(model="claude-test", max_tokens=50, messages=USER) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
    assert text == "fake-claude says: hello claude"
    (seen,) = stack.claude.requests
    assert seen.headers["x-api-key"] == CLAUDE_KEY  # the client's own key was removed, the provider's added
    assert seen.json["max_tokens"] == 50 and seen.json["stream"] is True


def test_a_malformed_messages_request_is_an_anthropic_400_and_not_forwarded(stack: Stack) -> None:
    stack.oai.clear()
    stack.claude.clear()
    req = urllib.request.Request(stack.url("egress") + "/v1/messages", method="POST", headers={"content-type": "application/json"},
                                 data=json.dumps({"model": "gpt-test", "messages": USER}).encode())  # no max_tokens
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310 (loopback)
    body = json.loads(info.value.read())
    assert info.value.code == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert stack.oai.requests == [] and stack.claude.requests == []


def test_an_anthropic_provider_that_is_down_is_a_502_naming_it_in_each_clients_shape(stack: Stack) -> None:
    """Envoy's own answer (OpenAI-shaped): an OpenAI client gets it as written, code
    upstream_unavailable (not read as Anthropic's error and recoded); an Anthropic client, whose
    request to an Anthropic provider is not translated, gets it as Anthropic's error."""
    with pytest.raises(openai.APIStatusError) as info:
        oai_client(stack).chat.completions.create(model="claude-down", messages=USER)
    assert info.value.status_code == 502
    error = info.value.response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "provider_claude_down" in error["message"]
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude_client(stack).messages.create(model="claude-down", max_tokens=20, messages=USER)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error" and "provider_claude_down" in body["error"]["message"]


def test_a_body_over_the_limit_is_an_anthropic_413_for_an_anthropic_client_and_not_forwarded(stack: Stack) -> None:
    """Envoy's own answer before ext_proc forwards anything, in the shape of the client's API."""
    stack.oai.clear()
    stack.claude.clear()
    limit = stack.cfg.egress.max_body_bytes
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude_client(stack).messages.create(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "x" * (limit + 1)}])
    assert caught.value.status_code == 413 and caught.value.response.headers["x-sidegate-error"] == "request_too_large"
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
    assert f"{limit} bytes" in body["error"]["message"] and "max_body_bytes" in body["error"]["message"]
    assert stack.oai.requests == [] and stack.claude.requests == []


def test_system_messages_alone_for_an_anthropic_provider_are_a_400_naming_what_to_send(stack: Stack) -> None:
    """OpenAI answers a conversation of system messages alone; Anthropic refuses one: sidegate says
    so before anything is forwarded, not the provider's "messages: Field required"."""
    stack.claude.clear()
    with pytest.raises(openai.BadRequestError) as info:
        oai_client(stack).chat.completions.create(model="claude-test", messages=[{"role": "system", "content": "Summarize: the meeting moved."}])
    error = info.value.response.json()["error"]
    assert error["param"] == "messages" and "send the request as a user message" in error["message"]
    assert stack.claude.requests == []


@pytest.mark.parametrize("listener", ["egress", "ingress"])
def test_both_sdks_list_the_models_a_client_can_name(stack: Stack, listener: str) -> None:
    """GET /v1/models (chat UIs and IDE clients ask it first): OpenAI's list for the openai SDK,
    Anthropic's for the anthropic SDK, each provider's model once, nothing sent upstream."""
    stack.claude.clear(), stack.oai.clear()
    openai_client = openai.OpenAI(base_url=stack.url(listener) + "/v1", api_key="sk-client-own", max_retries=0, timeout=10)
    listed = openai_client.models.list()
    assert [(m.id, m.owned_by) for m in listed.data] == [("claude-test", "anthropic"), ("gpt-test", "openai"), ("claude-down", "anthropic")]
    page = claude_client(stack, listener).models.list()
    assert [m.id for m in page.data] == ["claude-test", "gpt-test", "claude-down"] and page.has_more is False
    assert page.data[0].type == "model" and page.data[0].display_name == "claude-test"
    assert stack.claude.requests == [] and stack.oai.requests == []
    request = urllib.request.Request(stack.url(listener) + "/v1/models", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert info.value.code == 405 and "use GET" in json.loads(info.value.read())["error"]["message"]


class Query(pydantic.BaseModel):
    q: str


@pytest.mark.parametrize("how", ["chat", "chat-stream", "responses"])
def test_a_typed_answer_from_an_anthropic_provider(stack: Stack, how: str) -> None:
    """response_format (the openai SDK's parse, the Vercel AI SDK's generateObject) to a provider whose
    API has none: sent as a forced tool call, whose input comes back as the answer's JSON content."""
    stack.claude.clear()
    client, headers = oai_client(stack), {"x-fake-tool": "json_output"}  # the fake calls the tool with {"q": <user text>}
    if how == "chat":
        parsed = client.chat.completions.parse(model="claude-test", messages=[{"role": "user", "content": "typed"}], response_format=Query,
                                               extra_headers=headers).choices[0].message.parsed
    elif how == "chat-stream":
        with client.chat.completions.stream(model="claude-test", messages=[{"role": "user", "content": "typed"}], response_format=Query,
                                            extra_headers=headers) as s:
            parsed = s.get_final_completion().choices[0].message.parsed
    else:
        parsed = client.responses.parse(model="claude-test", input="typed", text_format=Query, extra_headers=headers).output_parsed
    assert parsed == Query(q="typed")
    (sent,) = stack.claude.requests
    assert sent.json["tool_choice"] == {"type": "tool", "name": "json_output"}
    assert sent.json["tools"][0]["input_schema"]["properties"] == {"q": {"title": "Q", "type": "string"}}


def test_count_tokens_is_the_anthropic_providers_own_count_or_sidegates_estimate(stack: Stack) -> None:
    """Claude Code calls /v1/messages/count_tokens?beta=true at start-up and as its context grows."""
    stack.claude.clear()
    client = claude_client(stack)
    messages: list[Any] = [{"role": "user", "content": "how many tokens are these six words"}]
    counted = client.messages.count_tokens(model="claude-test", messages=messages)
    assert counted.input_tokens == 7  # the fake counts words: the provider's own answer
    (seen,) = stack.claude.requests
    assert seen.path == "/v1/messages/count_tokens" and seen.headers["x-api-key"] == CLAUDE_KEY
    beta = client.beta.messages.count_tokens(model="claude-test", messages=messages, extra_query={"beta": "true"})  # as Claude Code asks
    assert beta.input_tokens == 7 and stack.claude.requests[-1].query_string == "beta=true"
    stack.oai.clear()
    raw = client.messages.with_raw_response.count_tokens(model="gpt-test", messages=messages, system="be brief")
    assert raw.headers["x-sidegate-estimate"] == "true" and raw.parse().input_tokens == 19  # ceil((8 + 35) chars / 4) + 4 a message
    assert stack.oai.requests == []
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="claude-test", messages="not a list")  # type: ignore[arg-type]


def test_embeddings_go_to_an_openai_provider_as_they_came(stack: Stack) -> None:
    """An app's openai client sends its embeddings to sidegate too: the default (OpenAI) provider gets
    them with the client's embedding model, and an Anthropic provider, which has none, is a 400."""
    stack.oai.clear(), stack.claude.clear()
    client = oai_client(stack)
    got = client.embeddings.create(model="text-embedding-3-small", input=["first text", "second"])  # the SDK asks for base64
    assert [len(d.embedding) for d in got.data] == [8, 8] and got.usage.prompt_tokens == 3
    (seen,) = stack.oai.requests
    assert seen.path == "/v1/embeddings" and seen.json["model"] == "text-embedding-3-small"
    assert seen.headers["authorization"] == "Bearer sk-oai-key"  # the provider's key, not the client's
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="claude-test", input="x")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "unsupported_provider"
    assert len(stack.oai.requests) == 1 and stack.claude.requests == []  # nothing forwarded


def test_an_anthropic_clients_typed_answer_from_an_openai_provider(stack: Stack) -> None:
    """The anthropic SDK's messages.parse (output_config.format) through an OpenAI provider: sent as
    response_format json_schema, the JSON text parsed back by the SDK."""
    stack.oai.clear()
    parsed = claude_client(stack).messages.parse(model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "typed"}],
                                                 output_format=Query, extra_headers={"x-fake-reply": '{"q": "typed"}'})
    assert parsed.parsed_output == Query(q="typed")
    (seen,) = stack.oai.requests
    assert seen.json["response_format"]["type"] == "json_schema"
    assert seen.json["response_format"]["json_schema"]["schema"]["properties"]["q"]["type"] == "string"
