"""ext_proc/chat/translate.py: one request between the client's API and the provider's."""

from __future__ import annotations

import json

import pytest

from ext_proc.chat.completions import synthesized
from ext_proc.chat.translate import Exchange
from ext_proc.config import build_config
from ext_proc.errors import MalformedRequest
from ext_proc.processor import Immediate
from testkit import gateway_config

CFG = build_config(gateway_config([
    {"name": "claude", "provider_interface": "claude", "endpoint": "http://127.0.0.1:9/v1", "model": "claude-x", "access_key": "k"},
    {"name": "oai", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "default": True},
]))
CLAUDE, OAI = CFG.provider("claude"), CFG.provider("oai")
MESSAGES = json.dumps({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_same_api_on_both_sides_changes_nothing() -> None:
    ex = Exchange("openai")
    assert ex.upstream_body(ex.parse(CHAT), None, OAI) == (None, None) and not ex.translating
    ex = Exchange("anthropic")
    assert ex.upstream_body(ex.parse(MESSAGES), None, CLAUDE) == (None, None)


def test_the_other_api_gets_a_translated_body_the_providers_model_and_its_path() -> None:
    ex = Exchange("openai")
    body, path = ex.upstream_body(ex.parse(CHAT), None, CLAUDE)
    assert path == "/v1/messages" and json.loads(body) == {"model": "claude-x", "max_tokens": 4096, "messages": [
        {"role": "user", "content": "hi"}]}
    ex = Exchange("anthropic")
    body, path = ex.upstream_body(ex.parse(MESSAGES), None, OAI)
    assert path == "/v1/chat/completions" and json.loads(body)["max_tokens"] == 10


def test_a_rewritten_body_for_an_anthropic_client_is_sent_in_the_providers_api() -> None:
    ex = Exchange("anthropic")
    req = ex.parse(MESSAGES)
    rewritten = json.dumps({"model": "m", "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": "hi"}]}).encode()
    body, path = ex.upstream_body(req, rewritten, CLAUDE)
    assert path is None and json.loads(body)["system"] == "ctx"  # same API, same path; the pipeline's body, translated


@pytest.mark.parametrize("stream", [False, True])
def test_sidegates_own_answer_reaches_an_anthropic_client_in_its_shape(stream: bool) -> None:
    ex = Exchange("anthropic")
    req = ex.parse(json.dumps({**json.loads(MESSAGES), "stream": stream}).encode())
    reply = ex.answer(synthesized(req, "Sorry, no.", model="sidegate-guard", headers={"x-sidegate-guard": "blocked"}))
    assert reply.status == 200 and reply.headers["x-sidegate-guard"] == "blocked"
    if stream:
        events = [line.split(": ", 1)[1] for line in reply.body.decode().splitlines() if line.startswith("event: ")]
        assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events
    else:
        message = json.loads(reply.body)
        assert message["type"] == "message" and message["content"] == [{"type": "text", "text": "Sorry, no."}]


def test_errors_reach_an_anthropic_client_in_its_shape() -> None:
    ex = Exchange("anthropic")
    rendered = ex.error(MalformedRequest("messages: Field required"), request_id="r1")
    body = json.loads(rendered.body)
    assert rendered.status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    openai_error = Immediate(status=429, body=json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode())
    assert json.loads(ex.answer(openai_error).body)["error"]["message"] == "slow down"


def test_a_fallback_must_speak_the_providers_api() -> None:
    raw = gateway_config([
        {"name": "claude", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:9/v1", "default": True, "fallbacks": ["oai"]},
        {"name": "oai", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1"},
    ])
    with pytest.raises(Exception, match=r"fallbacks\[0\].*speaks the openai API"):
        build_config(raw)


BEDROCK = build_config(gateway_config([{"name": "br", "provider_interface": "amazon_bedrock", "default": True,
                                        "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com", "model": "amazon.nova-lite-v1:0"}])).llm_providers[0]


def test_an_anthropic_client_reads_bedrocks_answer_and_error_in_anthropics_shape() -> None:
    ex = Exchange("anthropic")
    body, path = ex.upstream_body(ex.parse(MESSAGES), None, BEDROCK)
    assert path == "/model/amazon.nova-lite-v1%3A0/converse" and json.loads(body)["inferenceConfig"] == {"maxTokens": 10}
    ex.start_response(status="200", streaming=False)
    answer = json.dumps({"output": {"message": {"role": "assistant", "content": [{"text": "hello"}]}}, "stopReason": "max_tokens",
                         "usage": {"inputTokens": 2, "outputTokens": 10}}).encode()
    assert ex.usage(answer, streaming=False) == {"prompt_tokens": 2, "completion_tokens": 10, "total_tokens": 12}
    message = json.loads(ex.response(answer, streaming=False, end_of_stream=True) or b"")
    assert (message["type"], message["content"], message["stop_reason"]) == ("message", [{"type": "text", "text": "hello"}], "max_tokens")
    ex = Exchange("anthropic")
    ex.upstream_body(ex.parse(MESSAGES), None, BEDROCK)
    ex.start_response(status="429", streaming=False, error_type="ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/")
    error = json.loads(ex.response(b'{"message": "Too many requests"}', streaming=False, end_of_stream=True) or b"")
    assert error == {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many requests"}}


# Envoy's local reply when a provider cannot be reached (the bootstrap's mapper, %UPSTREAM_CLUSTER% filled)
UNREACHABLE = json.dumps({"error": {"code": "upstream_unavailable", "param": None, "type": "upstream_error",
                                    "message": "sidegate could not reach the upstream provider_claude (upstream connect error ...)"}}).encode()


@pytest.mark.parametrize("provider", [CLAUDE, BEDROCK], ids=["anthropic", "bedrock"])
def test_envoys_own_error_reaches_an_openai_client_as_written_whatever_the_provider_speaks(provider) -> None:  # type: ignore[no-untyped-def]
    """A provider that is down is 502 upstream_unavailable for an OpenAI client (README's errors
    table), not the provider's error translator's reading of Envoy's JSON (code lost, or the whole
    JSON as the message)."""
    ex = Exchange("openai")
    ex.upstream_body(ex.parse(CHAT), None, provider)
    ex.start_response(status="502", streaming=False)
    out = ex.response(UNREACHABLE, streaming=False, end_of_stream=True)
    assert json.loads(out if out is not None else UNREACHABLE) == json.loads(UNREACHABLE)
    # the provider's own errors are still translated
    ex = Exchange("openai")
    ex.upstream_body(ex.parse(CHAT), None, provider)
    ex.start_response(status="529", streaming=False)
    own = (b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}' if provider is CLAUDE
           else b'{"message": "Overloaded"}')
    error = json.loads(ex.response(own, streaming=False, end_of_stream=True) or b"")["error"]
    assert error["message"] == "Overloaded" and error["code"] != "upstream_unavailable"


def test_envoys_own_error_reaches_an_anthropic_client_in_its_shape() -> None:
    ex = Exchange("anthropic")
    ex.upstream_body(ex.parse(MESSAGES), None, OAI)
    ex.start_response(status="502", streaming=False)
    error = json.loads(ex.response(UNREACHABLE, streaming=False, end_of_stream=True) or b"")
    assert error["type"] == "error" and error["error"]["message"].startswith("sidegate could not reach the upstream provider_claude")


def test_envoys_own_error_reaches_an_anthropic_client_of_an_anthropic_provider_in_its_shape() -> None:
    """No translation between the two (same API), but Envoy's answer is OpenAI-shaped: an Anthropic
    client gets it as Anthropic's error; the provider's own errors pass on untouched."""
    ex = Exchange("anthropic")
    ex.upstream_body(ex.parse(MESSAGES), None, CLAUDE)
    assert not ex.translating
    ex.start_response(status="502", streaming=False)
    error = json.loads(ex.response(UNREACHABLE, streaming=False, end_of_stream=True) or b"")
    assert error["type"] == "error" and error["error"]["message"].startswith("sidegate could not reach the upstream provider_claude")
    own = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    assert ex.response(own, streaming=False, end_of_stream=True) is None


NATIVE = build_config(gateway_config([
    {"name": "native", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-n", "native_responses": True, "default": True},
])).provider("native")
RESPONSES = json.dumps({"model": "m", "input": [{"role": "user", "content": "hi"}, {"type": "reasoning", "id": "rs_1", "summary": []}],
                        "store": False}).encode()


def test_a_responses_request_goes_to_a_native_provider_as_it_came_and_is_translated_otherwise() -> None:
    ex = Exchange("responses")
    body, path = ex.upstream_body(ex.parse(RESPONSES), None, NATIVE)
    assert ex.native and not ex.reshaping and path is None  # the client's path: /v1/responses
    assert json.loads(body) == {**json.loads(RESPONSES), "model": "gpt-n"}  # reasoning item and store kept; the provider's model
    assert ex.usage(b'{"usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}}', streaming=False)["total_tokens"] == 8
    ex = Exchange("responses")
    body, path = ex.upstream_body(ex.parse(RESPONSES), None, OAI)  # not native: chat completions
    assert not ex.native and ex.reshaping and path == "/v1/chat/completions"
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]
    ex = Exchange("responses")
    req = ex.parse(RESPONSES)
    piped = json.dumps({"model": "m", "messages": [{"role": "system", "content": "ctx"}, {"role": "user", "content": "hi"}]}).encode()
    body, path = ex.upstream_body(req, piped, NATIVE)  # the pipeline changed the conversation: its body, as chat completions
    assert not ex.native and path == "/v1/chat/completions" and json.loads(body)["messages"][0]["content"] == "ctx"
    ex = Exchange("responses")
    _, path = ex.upstream_body(ex.parse(RESPONSES), None, NATIVE, native_ok=False)  # e.g. output guards configured
    assert not ex.native and path == "/v1/chat/completions"


def test_a_native_streams_usage_is_read_from_its_last_response_event() -> None:
    ex = Exchange("responses")
    ex.upstream_body(ex.parse(RESPONSES), None, NATIVE)
    ex.start_response(status="200", streaming=True)
    done = {"type": "response.completed", "response": {"usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}}}
    raw = b'event: response.created\ndata: {"type": "response.created", "response": {"usage": null}}\n\n' + \
        b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n"
    assert ex.usage(raw[:70], streaming=True) is None
    assert ex.usage(raw[70:], streaming=True) == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
                                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert ex.present(raw, streaming=True, end_of_stream=True) is None  # sent as the provider wrote it


def test_what_has_no_chat_form_goes_to_a_native_provider_and_is_a_400_for_any_other() -> None:
    """Codex sends custom tools (apply_patch) and may chain with previous_response_id: OpenAI's own
    API takes that as it came; a provider sent chat completions cannot, and nothing is forwarded."""
    codex = json.dumps({"model": "gpt-5-codex", "previous_response_id": "resp_1", "prompt_cache_key": "k",
                        "tools": [{"type": "custom", "name": "apply_patch"}, {"type": "function", "name": "shell", "parameters": {}},
                                  {"type": "local_shell"}],
                        "input": [{"role": "user", "content": "fix the bug"}], "some_new_option": 1}).encode()
    ex = Exchange("responses")
    req = ex.parse(codex)
    assert req.last_user_text == "fix the bug" and [t["function"]["name"] for t in req.body["tools"]] == ["apply_patch", "shell"]
    body, path = ex.upstream_body(req, None, NATIVE)
    assert ex.native and json.loads(body) == {**json.loads(codex), "model": "gpt-n"}
    ex = Exchange("responses")
    with pytest.raises(MalformedRequest) as info:
        ex.upstream_body(ex.parse(codex), None, OAI)
    assert info.value.param == "previous_response_id" and info.value.code == "previous_response_not_found"
