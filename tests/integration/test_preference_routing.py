"""routing_preferences through the real stack (issue 19): Envoy, the ext_proc service and Triton
serving prompt_embed, fake providers, the openai SDK as the client. The decision itself (thresholds,
follow-up turns, metrics) is unit-tested in tests/unit/chat/test_preferences.py; its accuracy is
measured by ``python -m bench routing_eval``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from ext_proc.config import Config
from ext_proc.control import supervisor as sv
from testkit import free_port, gateway_config
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

CODE = "Write a python function that returns the n-th Fibonacci number"
SUMMARY = "Summarize this article in three bullet points: the city council voted to extend the tram line to the airport."
UNRELATED = "who won the fifa world cup in 2022?"


def providers(general: FakeProvider, special: FakeProvider) -> list[dict[str, Any]]:
    return [
        {"name": "general", "provider_interface": "openai", "endpoint": general.base_url, "model": "general-model", "default": True,
         "access_key": "sk-general"},
        {"name": "coder", "provider_interface": "openai", "endpoint": special.base_url, "model": "code-model", "access_key": "sk-coder",
         "routing_preferences": [{"name": "code generation", "description": "writing new code: functions, scripts, classes or programs"}]},
        {"name": "reader", "provider_interface": "openai", "endpoint": special.base_url, "model": "read-model", "access_key": "sk-reader",
         "routing_preferences": [{"name": "summarization", "description": "summarizing articles, documents or conversations"}]},
    ]


@dataclass
class Stack:
    cfg: Config
    general: FakeProvider
    special: FakeProvider

    def client(self, listener: str, **headers: str) -> openai.OpenAI:
        port = getattr(self.cfg, listener).port
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-client", max_retries=0, timeout=30,
                             default_headers=headers or None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeProvider(name="fake-general") as general, FakeProvider(name="fake-special") as special:
        raw = gateway_config(providers(general, special), model_server={
            "mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(), "timeout": "30s"})
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            yield Stack(cfg=cfg, general=general, special=special)


@pytest.mark.parametrize("listener", ["egress", "ingress"])
def test_a_prompt_goes_to_the_provider_whose_preference_fits(stack: Stack, listener: str) -> None:
    for prompt, provider, route, model in ((CODE, "coder", "code generation", "code-model"),
                                           (SUMMARY, "reader", "summarization", "read-model")):
        stack.special.clear()
        raw = stack.client(listener).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}])
        assert raw.headers["x-sidegate-provider"] == provider, prompt
        assert raw.headers["x-sidegate-route"] == route
        assert [r.json["model"] for r in stack.special.requests] == [model]  # the chosen provider's own model was sent
        assert raw.parse().choices[0].message.content == f"fake-special says: {prompt}"


def test_a_prompt_that_fits_no_preference_goes_to_the_default(stack: Stack) -> None:
    stack.general.clear()
    raw = stack.client("egress").chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": UNRELATED}])
    assert raw.headers["x-sidegate-provider"] == "general" and "x-sidegate-route" not in raw.headers
    assert len(stack.general.requests) == 1


def test_a_named_model_or_a_hint_is_not_re_routed(stack: Stack) -> None:
    stack.general.clear()
    named = stack.client("egress").chat.completions.with_raw_response.create(
        model="general-model", messages=[{"role": "user", "content": CODE}])
    hinted = stack.client("egress", **{"x-arch-llm-provider-hint": "general"}).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CODE}])
    for raw in (named, hinted):
        assert raw.headers["x-sidegate-provider"] == "general" and "x-sidegate-route" not in raw.headers
    assert len(stack.general.requests) == 2


def test_streaming_answers_carry_the_route(stack: Stack) -> None:
    with stack.client("egress").chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": CODE}], stream=True) as raw:
        assert raw.headers["x-sidegate-route"] == "code generation"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == f"fake-special says: {CODE}"


def test_anthropic_messages_are_routed_too(stack: Stack) -> None:
    stack.special.clear()
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}", api_key="sk-client", max_retries=0, timeout=30)
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=64, messages=[{"role": "user", "content": CODE}])
    assert raw.headers["x-sidegate-route"] == "code generation" and raw.headers["x-sidegate-provider"] == "coder"
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == f"fake-special says: {CODE}"
    assert [r.json["model"] for r in stack.special.requests] == ["code-model"]  # translated to chat completions for coder


def decision(stack: Stack, path: str, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.cfg.egress.port}/routing/v1/{path}", method="POST",
                                     data=body if isinstance(body, bytes) else json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_plano_routing_decision_endpoints_say_where_a_request_would_go_and_send_it_nowhere(stack: Stack) -> None:
    stack.general.clear(), stack.special.clear()
    code = [{"role": "user", "content": CODE}]
    for path, body in (("chat/completions", {"model": "auto", "messages": code}),
                       ("messages", {"model": "auto", "max_tokens": 64, "messages": code}),
                       ("responses", {"model": "auto", "input": CODE})):
        status, answer = decision(stack, path, body, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        assert (status, answer) == (200, {"models": ["openai/code-model"], "route": "code generation", "provider": "coder",
                                          "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}), path
    status, answer = decision(stack, "chat/completions", {"messages": [{"role": "user", "content": UNRELATED}]})
    assert status == 200 and (answer["route"], answer["provider"], answer["models"]) == (None, "general", ["openai/general-model"])
    status, answer = decision(stack, "chat/completions", {"model": "auto", "messages": code}, **{"x-arch-llm-provider-hint": "reader"})
    assert (answer["route"], answer["provider"]) == (None, "reader")
    assert decision(stack, "chat/completions", b"{not json")[0] == 400
    status, error = decision(stack, "messages", {"model": "auto", "messages": code})  # no max_tokens: Anthropic's own 400
    assert status == 400 and error["type"] == "error" and "max_tokens" in error["error"]["message"]
    assert stack.general.requests == [] and stack.special.requests == []


def test_a_responses_tool_step_that_names_the_response_before_it_goes_where_that_went(stack: Stack) -> None:
    """The tool step of a Responses API loop carries only the function's output and the earlier
    response's id: the stored conversation makes the step go where the user's request went, and the
    routing-decision endpoint says the same (without it, a turn of tool output alone fits nothing)."""
    tool = {"type": "function", "name": "run_tests", "description": "run the tests", "parameters": {"type": "object", "properties": {}}}
    client = stack.client("egress")
    first = client.responses.with_raw_response.create(model="auto", input=CODE, tools=[tool],  # type: ignore[list-item]
                                                      extra_headers={"x-fake-tool": "run_tests"})
    assert first.headers["x-sidegate-route"] == "code generation"
    call = next(o for o in first.parse().output if o.type == "function_call")
    step = {"model": "auto", "previous_response_id": first.parse().id, "tools": [tool],
            "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "2 passed"}]}
    status, answer = decision(stack, "responses", step)
    assert (status, answer["route"], answer["provider"]) == (200, "code generation", "coder")
    stack.special.clear()
    second = client.responses.with_raw_response.create(**step)
    assert second.headers["x-sidegate-route"] == "code generation" and second.headers["x-sidegate-provider"] == "coder"
    sent = stack.special.requests[-1].json["messages"]
    assert sent[0] == {"role": "user", "content": CODE} and sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "2 passed"}


def test_claude_code_naming_its_model_is_re_routed_with_route_named_models(tmp_path_factory: pytest.TempPathFactory) -> None:
    """plano's Claude Code router demo: the client always names its model. With overrides.route_named_models
    a code request goes to the code generation preference's provider (an OpenAI one, the stream translated
    back), a tool step that follows it goes there too, and a request that fits no preference goes to the
    provider of the model it names. The user's words decide, not Claude Code's <system-reminder> blocks."""
    with FakeProvider(name="fake-claude") as claude, FakeProvider(name="fake-special") as special:
        raw = gateway_config([
            {"name": "sonnet", "provider_interface": "anthropic", "endpoint": claude.base_url, "model": "claude-sonnet-4-6",
             "default": True, "access_key": "sk-claude"},
            *providers(claude, special)[1:]], model_server={
            "mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(), "timeout": "30s"})
        raw["overrides"] = {"route_named_models": True}
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{cfg.egress.port}", api_key="sk-client", max_retries=0, timeout=30)
            reminder = {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use this context:\n"
                                                "# claudeMd\nSummarize your changes at the end.\n</system-reminder>"}
            first = {"role": "user", "content": [reminder, {"type": "text", "text": CODE}]}
            kw: dict[str, Any] = {
                "model": "claude-sonnet-4-6", "max_tokens": 32000,
                "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
                "tools": [{"name": "Bash", "description": "Run a shell command",
                           "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]}
            tool_step = [first, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "fib.py"}]}]
            for messages in ([first], tool_step):
                with client.messages.stream(messages=messages, **kw) as stream:
                    text = "".join(stream.text_stream)
                    assert stream.response.headers["x-sidegate-route"] == "code generation"
                    assert stream.response.headers["x-sidegate-provider"] == "coder"
                assert text.startswith("fake-special says: ") and text.endswith(CODE)  # the reminder reaches the model
            assert [r.json["model"] for r in special.requests] == ["code-model", "code-model"]  # chat completions, translated
            assert special.requests[-1].json["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": "fib.py"}
            other = client.messages.with_raw_response.create(messages=[{"role": "user", "content": UNRELATED}], **kw)
            assert other.headers["x-sidegate-provider"] == "sonnet" and "x-sidegate-route" not in other.headers
            assert [(r.path, r.json["model"]) for r in claude.requests] == [("/v1/messages", "claude-sonnet-4-6")]
            hinted = client.messages.with_raw_response.create(messages=[{"role": "user", "content": CODE}],
                                                              extra_headers={"x-arch-llm-provider-hint": "sonnet"}, **kw)
            assert hinted.headers["x-sidegate-provider"] == "sonnet" and "x-sidegate-route" not in hinted.headers


def test_model_server_down_goes_to_the_default_provider(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Preferences configured, the model server unreachable: the default provider answers (never a 5xx) and the log says why."""
    with FakeProvider(name="fake-general") as general, FakeProvider(name="fake-special") as special:
        raw = gateway_config(providers(general, special),
                             model_server={"mode": "remote", "endpoint": f"grpc://127.0.0.1:{free_port()}", "timeout": "2s"})
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.egress.port}/v1", api_key="sk-client", max_retries=0, timeout=30)
            answer = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": CODE}])
            assert answer.status_code == 200
            assert answer.headers["x-sidegate-provider"] == "general" and "x-sidegate-route" not in answer.headers
            assert special.requests == [] and len(general.requests) == 1
            log = "\n".join(p.read_text() for p in (sv.home() / "logs").glob("*.log"))
            assert "routing preferences not matched, sending the request to provider general" in log


def test_with_the_judge_function_call_settles_the_decision(tmp_path_factory: pytest.TempPathFactory) -> None:
    """overrides.routing_preference_judge through Triton's function_call (a band that takes every turn, so each is judged)."""
    with FakeProvider(name="fake-general") as general, FakeProvider(name="fake-special") as special:
        raw = gateway_config(providers(general, special), model_server={
            "mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(), "timeout": "30s"})
        raw["overrides"] = {"routing_preference_judge": {"band": 2.0, "timeout": "30s"}}
        # the judge's deadline decides, as a user's config without ext_proc.message_timeout gets it (derived, longer
        # than the judge's timeout): testkit's 5 s answered 504 ext_proc_timeout when the first judged turn came
        # while the judge's listing was still pre-filling on a loaded machine
        del raw["ext_proc"]["message_timeout"]
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            assert cfg.ext_proc.message_timeout_s > 30
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.egress.port}/v1", api_key="sk-client", max_retries=0, timeout=60)
            code = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": CODE}])
            assert code.headers["x-sidegate-route"] == "code generation" and code.headers["x-sidegate-provider"] == "coder"
            # small talk, which the judge sorts as "other" (alone it is weak at "none": "who won the fifa world cup" is
            # summarization to it, one reason it only takes the embedding's unsure band by default)
            other = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "Hi! How are you today?"}])
            assert other.headers["x-sidegate-provider"] == "general" and "x-sidegate-route" not in other.headers
            with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ext_proc.http_port}/metrics", timeout=5) as r:  # noqa: S310
                metrics = r.read().decode()
            assert 'sidegate_route_decisions_total{decided_by="judge",preference="code generation"} 1.0' in metrics
            assert [r.json["model"] for r in special.requests] == ["code-model"] and len(general.requests) == 1
