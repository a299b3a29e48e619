"""OpenAI's Responses API (``POST /v1/responses``) through real Envoy and the ext_proc service, with
the ``openai`` SDK's ``client.responses`` as the client (its own types and stream accumulator check
every answer) and testkit's fake providers, which speak chat completions and Anthropic's Messages:

* JSON and streamed answers from an OpenAI-compatible provider (sent chat completions) and from an
  Anthropic one (sent Messages), with usage;
* a tool loop: a function call, then the function_call_output turn, translated both ways;
* stored responses (state_storage): previous_response_id and item_reference items resolved from
  what sidegate presented, for chat and Anthropic providers; ``store: false`` stores nothing;
* what sidegate cannot do (a response it never stored, OpenAI-hosted tools) is a 400 naming the
  parameter, and nothing is forwarded; a provider's error and a provider that is down keep their status;
* the response cache answers a repeated request, JSON and streamed, in the Responses shape;
* an output guard stops a secret in a streamed answer with a complete event stream;
* a ``native_responses`` provider gets the request as it came (reasoning items, a custom tool,
  previous_response_id) at its own /v1/responses, unless output guards need chat completions.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from ext_proc.config import Config
from testkit import free_port, gateway_config
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

SECRET = "db-password-7a1f9c22"
WEATHER = {"type": "function", "name": "weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


@dataclass
class Stack:
    cfg: Config
    oai: FakeProvider
    claude: FakeProvider

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.cfg.egress.port}/v1", api_key="sk-client", max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeProvider(name="fake-oai") as oai, FakeProvider(name="fake-claude") as claude:
        raw = gateway_config([
            {"name": "oai", "provider_interface": "openai", "endpoint": oai.base_url, "model": "gpt-test", "default": True, "access_key": "sk-oai"},
            {"name": "claude", "provider_interface": "anthropic", "endpoint": claude.base_url, "model": "claude-test", "access_key": "sk-ant"},
            {"name": "down", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{free_port()}", "model": "gpt-down", "access_key": "sk-x"},
        ], response_cache={"ttl": "600s"}, prompt_guards={"output_guards": {"secrets": {"values": [SECRET], "on_exception": {"message": "[withheld]"}}}})
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            yield Stack(cfg=cfg, oai=oai, claude=claude)


@pytest.mark.parametrize(("model", "provider", "path"), [("gpt-test", "oai", "/v1/chat/completions"), ("claude-test", "claude", "/v1/messages")])
def test_a_response_json_and_streamed_from_each_family(stack: Stack, model: str, provider: str, path: str) -> None:
    fake = stack.oai if provider == "oai" else stack.claude
    fake.clear()
    raw = stack.client().responses.with_raw_response.create(model=model, instructions="be brief", input="hello there", max_output_tokens=50,
                                                             extra_headers={"cache-control": "no-cache"})
    assert raw.headers["x-sidegate-provider"] == provider
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.output_text == f"fake-{fake.name[5:]} says: hello there"
    assert response.usage is not None and response.usage.output_tokens == 4 and response.instructions == "be brief"
    (seen,) = fake.requests
    assert seen.path == path
    if provider == "oai":
        assert seen.json["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
        assert seen.json["max_completion_tokens"] == 50 and "input" not in seen.json
    else:
        assert seen.json["system"] == "be brief" and seen.json["max_tokens"] == 50
    with stack.client().responses.stream(model=model, input=[{"role": "user", "content": "stream please"}],
                                         extra_headers={"x-fake-chunks": "3", "cache-control": "no-cache"}) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert len(deltas) == 3 and "".join(deltas) == final.output_text == f"fake-{fake.name[5:]} says: stream please"
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 4


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop(stack: Stack, model: str, stream: bool) -> None:
    client = stack.client()
    kw: dict[str, Any] = {"model": model, "tools": [WEATHER], "extra_headers": {"x-fake-tool": "weather", "cache-control": "no-cache"}}
    if stream:
        with client.responses.stream(input="rain in Oslo?", **kw) as s:
            response = s.get_final_response()
    else:
        response = client.responses.create(input="rain in Oslo?", **kw)
    call = next(o for o in response.output if o.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("weather", {"q": "rain in Oslo?"})
    fake = stack.oai if model == "gpt-test" else stack.claude
    fake.clear()
    after = client.responses.create(model=model, tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": "rain in Oslo?"}, {"type": "function_call", "call_id": call.call_id, "name": "weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 12 C"}], extra_headers={"cache-control": "no-cache"})
    assert after.status == "completed"
    sent = fake.requests[-1].json["messages"]
    if model == "gpt-test":
        assert sent[-2]["tool_calls"][0]["id"] == call.call_id
        assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 12 C"}
    else:
        assert sent[-2]["content"][-1] == {"type": "tool_use", "id": call.call_id, "name": "weather", "input": {"q": "rain in Oslo?"}}
        assert sent[-1]["content"] == [{"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny, 12 C"}]


def test_codexs_custom_tool_through_a_chat_provider(stack: Stack) -> None:
    """A custom tool (Codex's apply_patch) goes to a chat provider as a function of one string, its
    call comes back as a custom_tool_call, and the next turn's custom items as a tool call and result."""
    patch = {"type": "custom", "name": "apply_patch", "description": "Edit files."}
    client = stack.client()
    stack.oai.clear()
    with client.responses.stream(model="gpt-test", input="fix the bug", tools=[patch],  # type: ignore[list-item]
                                 extra_headers={"x-fake-tool": "apply_patch", "cache-control": "no-cache"}) as s:
        response = s.get_final_response()
    call = response.output[-1]
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == '{"q": "fix the bug"}'
    (sent,) = stack.oai.requests
    assert sent.json["tools"][0]["function"]["parameters"]["required"] == ["input"]
    client.responses.create(model="gpt-test", tools=[patch], input=[  # type: ignore[list-item]
        {"role": "user", "content": "fix the bug"}, {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}], extra_headers={"cache-control": "no-cache"})
    messages = stack.oai.requests[-1].json["messages"]
    assert messages[-2]["tool_calls"][0]["function"] == {"name": "apply_patch", "arguments": json.dumps({"input": "*** Begin Patch"})}
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Done!"}


@pytest.mark.parametrize(("kw", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
])
def test_what_sidegate_cannot_do_is_a_400_and_nothing_is_forwarded(stack: Stack, kw: dict[str, Any], param: str) -> None:
    stack.oai.clear()
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().responses.create(model="gpt-test", input="hi", **kw)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == param
    assert stack.oai.requests == []


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_previous_response_id_continues_a_conversation_a_chat_provider_never_stored(stack: Stack, model: str) -> None:
    """state_storage (on by default): sidegate stores what it presented, and a later request that
    names it gets the conversation so far sent to the provider, JSON and streamed."""
    client, fake = stack.client(), stack.oai if model == "gpt-test" else stack.claude
    first = client.responses.create(model=model, input="My name is Ann.", extra_headers={"x-fake-reply": "Hello Ann.", "cache-control": "no-cache"})
    assert first.store is True
    with client.responses.stream(model=model, previous_response_id=first.id, input="What is my name?",
                                 extra_headers={"x-fake-reply": "Ann.", "cache-control": "no-cache"}) as s:
        second = s.get_final_response()
    assert second.previous_response_id == first.id and second.output_text == "Ann."
    fake.clear()
    third = client.responses.create(model=model, previous_response_id=second.id, input="Thanks!", extra_headers={"cache-control": "no-cache"})
    assert third.output_text == f"fake-{fake.name[5:]} says: Thanks!"
    texts = [m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"]) for m in fake.requests[-1].json["messages"]]
    assert texts == ["My name is Ann.", "Hello Ann.", "What is my name?", "Ann.", "Thanks!"]


def test_a_tool_loop_that_refers_to_the_earlier_items_by_id(stack: Stack) -> None:
    """The Vercel AI SDK's way (its openai(model) speaks the Responses API): the second step sends the
    first step's message and function_call as item_reference items, then the function's output."""
    client = stack.client()
    with client.responses.stream(model="claude-test", input="rain in Oslo?", tools=[WEATHER],  # type: ignore[list-item]
                                 extra_headers={"x-fake-tool": "weather", "cache-control": "no-cache"}) as s:
        first = s.get_final_response()
    call = next(o for o in first.output if o.type == "function_call")
    stack.claude.clear()
    after = client.responses.create(model="claude-test", tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "input_text", "text": "rain in Oslo?"}]},
        *[{"type": "item_reference", "id": o.id} for o in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 12 C"}], extra_headers={"cache-control": "no-cache"})
    assert after.status == "completed"
    sent = stack.claude.requests[-1].json["messages"]
    assert sent[-2]["content"][-1] == {"type": "tool_use", "id": call.call_id, "name": "weather", "input": {"q": "rain in Oslo?"}}
    assert sent[-1]["content"] == [{"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny, 12 C"}]


def test_a_response_asked_not_to_be_stored_cannot_be_referred_to(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="gpt-test", input="forget me", store=False, extra_headers={"cache-control": "no-cache"})
    assert first.store is False
    stack.oai.clear()
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-test", previous_response_id=first.id, input="again")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "previous_response_not_found"
    assert stack.oai.requests == []


def test_a_provider_error_and_a_provider_down_keep_their_status(stack: Stack) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        stack.client().responses.create(model="gpt-test", input="hi", extra_headers={"x-fake-status": "429", "cache-control": "no-cache"})
    assert "simulated error 429" in str(limited.value)
    with pytest.raises(openai.APIStatusError) as down:
        stack.client().responses.create(model="gpt-down", input="hi")
    assert down.value.status_code == 502 and "down" in str(down.value)


def test_the_response_cache_answers_a_repeated_request_in_the_responses_shape(stack: Stack) -> None:
    client = stack.client()
    stack.oai.clear()
    first = client.responses.with_raw_response.create(model="gpt-test", input="what is a cache?")
    again = client.responses.with_raw_response.create(model="gpt-test", input="what is a cache?")
    assert (first.headers["x-sidegate-cache"], again.headers["x-sidegate-cache"]) == ("miss", "hit")
    assert again.parse().output_text == first.parse().output_text == "fake-oai says: what is a cache?"
    for _ in range(2):
        with client.responses.stream(model="gpt-test", input="and a streamed one?") as s:
            final = s.get_final_response()
        assert final.status == "completed" and final.output_text == "fake-oai says: and a streamed one?"
    assert len(stack.oai.requests) == 2  # one JSON, one stream: the repeats were answered from the cache


def test_an_output_guard_stops_a_secret_in_a_streamed_response(stack: Stack) -> None:
    with stack.client().responses.stream(model="gpt-test", input="the password?",
                                         extra_headers={"x-fake-reply": f"it is {SECRET} of course", "x-fake-chunk-chars": "4",
                                                        "cache-control": "no-cache"}) as s:
        seen = list(s)
    # the stream ends as OpenAI ends a stopped answer: response.incomplete (the SDK's get_final_response
    # waits for response.completed only, so the events are read here)
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert SECRET not in text and text.startswith("it i") and text.endswith("[withheld]")  # what was safe, then the message
    last = seen[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "content_filter" and last.response.output_text == text
    blocked = stack.client().responses.with_raw_response.create(model="gpt-test", input="the password?",
                                                                extra_headers={"x-fake-reply": f"it is {SECRET}", "cache-control": "no-cache"})
    assert blocked.headers["x-sidegate-guard"] == "output_blocked" and blocked.parse().output_text == "[withheld]"


def test_requests_are_counted_as_responses(stack: Stack) -> None:
    stack.client().responses.create(model="gpt-test", input="count me", extra_headers={"cache-control": "no-cache"})
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.cfg.ext_proc.http_port}/metrics", timeout=5) as r:  # noqa: S310
        metrics = r.read().decode()
    assert 'sidegate_requests_total{listener="egress",outcome="upstream_200",route="responses"}' in metrics


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, FakeProvider]]:
    """A provider with native_responses (OpenAI's own API has it by default), and no output guards."""
    with FakeProvider(name="fake-native") as fake:
        raw = gateway_config([{"name": "native", "provider_interface": "openai", "endpoint": fake.base_url, "model": "gpt-native",
                               "default": True, "access_key": "sk-native", "native_responses": True}])
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            yield cfg, fake


def output_tokens(cfg: Config) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ext_proc.http_port}/metrics", timeout=5) as r:  # noqa: S310
        found = re.search(r'^sidegate_llm_tokens_total\{direction="output",provider="native"\} (\S+)$', r.read().decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_responses_provider_gets_the_request_as_it_came(native: tuple[Config, FakeProvider], stream: bool) -> None:
    """Reasoning items, store, include, a custom tool and previous_response_id reach the provider's own
    /v1/responses (a model only the Responses API serves works), the answer comes back as the provider
    wrote it, and its tokens are counted."""
    cfg, fake = native
    fake.clear()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.egress.port}/v1", api_key="sk-client", max_retries=0, timeout=20)
    items: list[Any] = [{"role": "user", "content": "rain in Oslo?"},
                        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"},
                        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"q": "Oslo"}'},
                        {"type": "function_call_output", "call_id": "call_1", "output": "rain"}]
    apply_patch = {"type": "custom", "name": "apply_patch", "description": "edit files"}  # Codex's; no chat-completions form
    kw: dict[str, Any] = {"model": "gpt-5-codex", "input": items, "tools": [WEATHER, apply_patch], "store": False,
                          "include": ["reasoning.encrypted_content"], "previous_response_id": "resp_earlier",
                          "extra_headers": {"x-fake-tool": "weather"}}
    before = output_tokens(cfg)
    if stream:
        with client.responses.stream(**kw) as s:
            response = s.get_final_response()
    else:
        response = client.responses.create(**kw)
    assert response.output_text == "fake-native says: rain in Oslo?" and response.model == "gpt-native"
    assert output_tokens(cfg) == before + 5  # the provider's usage, read from its answer or its last event
    assert next(o for o in response.output if o.type == "function_call").name == "weather"
    (seen,) = fake.requests
    assert seen.path == "/v1/responses" and seen.headers["authorization"] == "Bearer sk-native"
    assert seen.json["model"] == "gpt-native" and seen.json["input"] == items and seen.json["include"] == ["reasoning.encrypted_content"]
    assert seen.json["store"] is False and seen.json.get("stream", False) is stream
    assert seen.json["tools"][1] == apply_patch and seen.json["previous_response_id"] == "resp_earlier"


def test_with_output_guards_a_native_provider_is_sent_chat_completions(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Output guards read chat completions, so a guarded stack translates even for a native_responses provider."""
    with FakeProvider(name="fake-native") as fake:
        raw = gateway_config([{"name": "native", "provider_interface": "openai", "endpoint": fake.base_url, "default": True,
                               "access_key": "sk-native", "native_responses": True}],
                             prompt_guards={"output_guards": {"secrets": {"values": [SECRET]}}})
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.egress.port}/v1", api_key="sk-client", max_retries=0, timeout=20)
            assert client.responses.create(model="gpt-x", input="hi").output_text == "fake-native says: hi"
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"]
