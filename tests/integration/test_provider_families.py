"""Every provider family but Anthropic's through real Envoy with the real openai and anthropic SDKs: JSON and
SSE, each to a fake at the family's own path, with its own key header (Anthropic's family:
test_anthropic.py)."""

from __future__ import annotations

from collections.abc import Iterator
import json
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from ext_proc.config import Config
from ext_proc.control import supervisor as sv
from testkit import gateway_config
from testkit.fake_provider import FAKE_AWS_KEYS, FakeProvider
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

# family -> (the base path its provider serves, the path a chat request reaches, the key header and its value)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "openai": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "mistral": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "groq": ("/openai/v1", "/openai/v1/chat/completions", "authorization", "Bearer sk-family"),
    "deepseek": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "together_ai": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "xai": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "ollama": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "vllm": ("/v1", "/v1/chat/completions", "authorization", "Bearer sk-family"),
    "gemini": ("/v1beta/openai", "/v1beta/openai/chat/completions", "authorization", "Bearer sk-family"),
    "azure_openai": ("", "/openai/deployments/model-azure_openai/chat/completions", "api-key", "sk-family"),
    # Converse API; a stream goes to .../converse-stream and comes back in AWS event-stream framing
    "amazon_bedrock": ("", "/model/model-amazon_bedrock/converse", "authorization", "Bearer sk-family"),
}


def upstream_path(family: str, stream: bool) -> str:
    return FAMILIES[family][1] + ("-stream" if stream and family == "amazon_bedrock" else "")


@dataclass
class Stack:
    cfg: Config
    fake: FakeProvider
    supervisor: sv.Supervisor


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeProvider(name="fake-family") as fake:
        providers: list[dict[str, Any]] = [
            {"name": family, "provider_interface": family, "endpoint": f"http://127.0.0.1:{fake.port}{base}",
             "model": f"model-{family}", "access_key": "$FAMILY_KEY", "default": family == "openai"}
            for family, (base, *_rest) in FAMILIES.items()
        ]
        # Arch's passthrough_auth, headers ($VAR too) and http_host
        providers.append({"name": "passthrough", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{fake.port}/v1",
                          "model": "model-passthrough", "passthrough_auth": True, "http_host": "llm.example.internal",
                          "headers": {"x-team": "blue", "x-team-token": "tok-$FAMILY_KEY"}})
        # Bedrock with IAM keys: every request signed with SigV4, which the fake checks
        providers.append({"name": "bedrock-iam", "provider_interface": "amazon_bedrock", "base_url": f"http://127.0.0.1:{fake.port}",
                          "model": "us.amazon.nova-pro-v1:0", "aws_access_key_id": "$AWS_KEY_ID",
                          "aws_secret_access_key": "$AWS_SECRET", "aws_region": "us-west-2"})
        with running_stack(tmp_path_factory, gateway_config(providers), {"FAMILY_KEY": "sk-family", "AWS_KEY_ID": next(iter(FAKE_AWS_KEYS)),
                                                                               "AWS_SECRET": FAKE_AWS_KEYS[next(iter(FAKE_AWS_KEYS))]}) as (cfg, supervisor):
            yield Stack(cfg=cfg, fake=fake, supervisor=supervisor)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_gets_its_path_its_key_header_and_answers(stack: Stack, family: str, stream: bool) -> None:
    _, _, key_header, key_value = FAMILIES[family]
    path = upstream_path(family, stream)
    stack.fake.clear()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}/v1", api_key="sk-client-own", max_retries=0, timeout=10)
    messages = [{"role": "user", "content": f"hello {family}"}]
    if stream:
        chunks = list(client.chat.completions.create(model=f"model-{family}", messages=messages, stream=True))  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model=f"model-{family}", messages=messages).choices[0].message.content or ""  # type: ignore[arg-type]
    assert text == f"fake-family says: hello {family}"
    (seen,) = stack.fake.requests
    assert seen.path == path
    assert seen.headers[key_header] == key_value
    other = "api-key" if key_header == "authorization" else "authorization"
    assert other not in seen.headers  # the client's own key never leaves, and only one key header is sent
    if family == "azure_openai":
        assert seen.query == {"api-version": "2024-10-21"}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_answers_an_anthropic_client_on_the_messages_api(stack: Stack, family: str, stream: bool) -> None:
    _, _, key_header, key_value = FAMILIES[family]
    path = upstream_path(family, stream)
    stack.fake.clear()
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}", api_key="sk-ant-client-own", max_retries=0, timeout=10)
    messages = [{"role": "user", "content": f"hello {family}"}]
    if stream:
        with client.messages.stream(model=f"model-{family}", max_tokens=64, messages=messages) as s:  # type: ignore[arg-type]
            text = "".join(s.text_stream)
    else:
        message = client.messages.create(model=f"model-{family}", max_tokens=64, messages=messages)  # type: ignore[arg-type]
        text = "".join(b.text for b in message.content if b.type == "text")
    assert text == f"fake-family says: hello {family}"
    (seen,) = stack.fake.requests
    assert seen.path == path and seen.headers[key_header] == key_value and "x-api-key" not in seen.headers
    max_tokens = seen.json["inferenceConfig"]["maxTokens"] if family == "amazon_bedrock" else seen.json["max_tokens"]
    assert max_tokens == 64


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_tool_calls_usage_and_errors_reach_an_openai_client(stack: Stack, stream: bool) -> None:
    """A Converse toolUse becomes an OpenAI tool call (event-stream deltas included); a Bedrock
    ThrottlingException becomes a 429 the SDK raises, with Bedrock's message."""
    stack.fake.clear()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}/v1", api_key="sk-client-own", max_retries=0, timeout=10)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    kw: dict[str, Any] = {"model": "model-amazon_bedrock", "messages": [{"role": "user", "content": "rain in Oslo?"}], "tools": tools,
                          "extra_headers": {"x-fake-tool": "weather"}}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        name = next(tc.function.name for tc in calls if tc.function and tc.function.name)
        arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = next(c.usage for c in chunks if c.usage)
    else:
        answer = client.chat.completions.create(**kw)
        assert answer.choices[0].message.tool_calls
        call = answer.choices[0].message.tool_calls[0]
        name, arguments, finish, usage = call.function.name, call.function.arguments, [answer.choices[0].finish_reason], answer.usage  # type: ignore[union-attr]
    assert (name, json.loads(arguments), finish) == ("weather", {"q": "rain in Oslo?"}, ["tool_calls"])
    assert usage is not None and usage.prompt_tokens == 3
    (seen,) = stack.fake.requests
    assert seen.json["toolConfig"]["tools"][0]["toolSpec"]["name"] == "weather"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(stream=stream, model="model-amazon_bedrock", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"x-fake-status": "429"})
    assert "simulated error 429" in str(info.value) and info.value.code == "ThrottlingException"


def test_passthrough_auth_forwards_the_clients_own_key_with_the_configured_headers_and_host(stack: Stack) -> None:
    stack.fake.clear()
    egress = f"http://127.0.0.1:{stack.cfg.egress.port}"
    openai_client = openai.OpenAI(base_url=f"{egress}/v1", api_key="sk-virtual-1", max_retries=0, timeout=10)
    answer = openai_client.chat.completions.create(model="model-passthrough", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "fake-family says: hi"
    anthropic_client = anthropic.Anthropic(base_url=egress, api_key="sk-virtual-2", max_retries=0, timeout=10)
    anthropic_client.messages.create(model="model-passthrough", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    first, second = stack.fake.requests
    for seen, key in ((first, "sk-virtual-1"), (second, "sk-virtual-2")):  # an x-api-key becomes the Bearer this provider reads
        assert seen.headers["authorization"] == f"Bearer {key}" and "x-api-key" not in seen.headers
        assert (seen.headers["x-team"], seen.headers["x-team-token"], seen.headers["host"]) == ("blue", "tok-sk-family", "llm.example.internal")


@pytest.mark.parametrize("family", ["anthropic_client", "amazon_bedrock"])
def test_a_tool_call_whose_arguments_are_not_json_is_a_400_and_not_forwarded(stack: Stack, family: str) -> None:
    stack.fake.clear()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}/v1", api_key="sk-client-own", max_retries=0, timeout=10)
    messages: list[Any] = [{"role": "user", "content": "weather?"},
                           {"role": "assistant", "content": None,
                            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{city: Paris"}}]},
                           {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    if family == "amazon_bedrock":
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="model-amazon_bedrock", messages=messages)
        assert info.value.code == "invalid_tool_arguments" and "messages[1].tool_calls[0].function.arguments" in str(info.value)
    else:  # an Anthropic client's tool_use input is an object by the SDK's types: a broken one is refused before translation
        raw = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}", api_key="k", max_retries=0, timeout=10)
        with pytest.raises(anthropic.BadRequestError) as ainfo:
            raw.messages.create(model="model-openai", max_tokens=16, messages=[  # type: ignore[list-item]
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "weather", "input": "{city: Paris"}]}])
        assert ainfo.value.status_code == 400 and "input" in str(ainfo.value)
    assert stack.fake.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_with_iam_keys_signs_each_request_with_sigv4(stack: Stack, stream: bool) -> None:
    """The fake Bedrock answers 403 unless the signature over the host, path, date and body checks out."""
    stack.fake.clear()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.cfg.egress.port}/v1", api_key="sk-client-own", max_retries=0, timeout=10)
    messages: Any = [{"role": "user", "content": "signed hello"}]
    if stream:
        chunks = client.chat.completions.create(model="us.amazon.nova-pro-v1:0", messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="us.amazon.nova-pro-v1:0", messages=messages).choices[0].message.content or ""
    assert text == "fake-family says: signed hello"
    (seen,) = stack.fake.requests
    assert seen.path == "/model/us.amazon.nova-pro-v1:0/converse" + ("-stream" if stream else "")  # sent as %3A, decoded by the server
    assert seen.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={next(iter(FAKE_AWS_KEYS))}/")
    assert "/us-west-2/bedrock/aws4_request" in seen.headers["authorization"] and "sk-client-own" not in str(dict(seen.headers))
