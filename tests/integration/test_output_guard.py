"""``prompt_guards.output_guards`` through real Envoy and the ext_proc service, with a fake provider
speaking SSE and the real openai and anthropic SDKs as clients:

* a secret streamed a few characters per SSE frame never reaches the client: the stream ends with a
  ``content_filter`` chunk carrying the guard's message, and the text before it arrives intact;
* a JSON answer quoting the request's own system prompt is replaced (``x-sidegate-guard: output_blocked``);
* an ingress answer quoting the config's ``system_prompt`` is stopped; a clean stream arrives whole;
* an Anthropic client's stream is stopped with events its SDK reads (``stop_reason: refusal``);
* an answer larger than the listener may buffer is a 502 ``output_guard_unchecked``, not sent unchecked.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from ext_proc.config import Config
from testkit import gateway_config
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

SECRET = "nw-prod-7f3a9c2e5b1d"
SYSTEM = ("You are Ava, the support assistant of Northwind Bank. Never reveal account numbers. "
          "Escalate fraud reports to the duty officer at extension 4471.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, FakeProvider]]:
    with FakeProvider(name="fake") as fp:
        raw = gateway_config(
            [{"name": "fake", "provider_interface": "openai", "endpoint": fp.base_url, "model": "m", "default": True,
              "access_key": "sk-x"}],
            listeners={"egress_traffic": {"max_body_bytes": 64 * 1024}},
            system_prompt=SYSTEM,
            prompt_guards={"output_guards": {
                "system_prompt_leak": {"on_exception": {"message": "[withheld: system prompt]"}},
                "secrets": {"values": ["$APP_DB_PASSWORD"], "on_exception": {"message": "[withheld: secret]"}},
            }},
        )
        with running_stack(tmp_path_factory, raw, env={"APP_DB_PASSWORD": SECRET}) as (cfg, _):
            yield cfg, fp


def openai_client(cfg: Config, listener: str = "egress") -> openai.OpenAI:
    port = cfg.egress.port if listener == "egress" else cfg.ingress.port
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-client", max_retries=0, timeout=20)


def test_a_secret_streamed_a_few_characters_a_frame_never_reaches_the_client(stack: tuple[Config, FakeProvider]) -> None:
    cfg, _ = stack
    reply = f"Sure, the database password is {SECRET}, use it carefully."
    chunks = list(openai_client(cfg).chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "password?"}],
        extra_headers={"x-fake-reply": reply, "x-fake-chunk-chars": "5"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert SECRET[:5] not in text and SECRET[-5:] not in text and "carefully" not in text
    assert text.startswith("Sure, the database password is") and text.endswith("[withheld: secret]")
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_a_guarded_stream_is_held_back_at_most_one_chunk(stack: tuple[Config, FakeProvider]) -> None:
    """Frames 150 ms apart: each piece of text reaches the client when the next frame arrives, not at the end."""
    cfg, _ = stack
    start, arrivals = time.perf_counter(), []
    for c in openai_client(cfg).chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-reply": "one two three four five six", "x-fake-chunk-delay-ms": "150"}):
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6 and arrivals[-1] - arrivals[0] > 0.5, arrivals  # spread out, not one burst at the end


def test_a_json_answer_quoting_the_requests_own_system_prompt_is_replaced(stack: tuple[Config, FakeProvider]) -> None:
    cfg, _ = stack
    own = "Internal: the discount code for VIP customers is applied only after manager approval on Fridays."
    raw = openai_client(cfg).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": own}, {"role": "user", "content": "rules?"}],
        extra_headers={"x-fake-reply": "My rules say the discount code for VIP customers is applied only after manager approval."})
    answer = raw.parse()
    assert raw.headers["x-sidegate-guard"] == "output_blocked"
    assert answer.choices[0].message.content == "[withheld: system prompt]" and answer.choices[0].finish_reason == "content_filter"


def test_ingress_answers_are_guarded_and_clean_streams_arrive_whole(stack: tuple[Config, FakeProvider]) -> None:
    cfg, _ = stack
    client = openai_client(cfg, "ingress")
    leak = "As instructed: escalate fraud reports to the duty officer at extension 4471."
    chunks = list(client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "who handles fraud?"}],
                                                 extra_headers={"x-fake-reply": leak}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "4471" not in text and text.endswith("[withheld: system prompt]")
    clean = "Fraud is handled by our specialist team; call the number on your card."
    chunks = list(client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "who handles fraud?"}],
                                                 extra_headers={"x-fake-reply": clean, "x-fake-chunk-chars": "3"}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == clean
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_anthropic_clients_stream_is_stopped_with_a_refusal(stack: tuple[Config, FakeProvider]) -> None:
    cfg, _ = stack
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{cfg.egress.port}", api_key="sk-client", max_retries=0, timeout=20)
    with client.messages.stream(model="m", max_tokens=100, messages=[{"role": "user", "content": "key?"}],
                                extra_headers={"x-fake-reply": f"The key: {SECRET}. Bye.", "x-fake-chunk-chars": "4"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert SECRET[:4] not in text and text.endswith("[withheld: secret]") and final.stop_reason == "refusal"


def test_an_answer_too_large_to_check_is_a_502_not_sent_unchecked(stack: tuple[Config, FakeProvider]) -> None:
    cfg, fp = stack
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "long"}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{cfg.egress.port}/v1/chat/completions", data=body, method="POST",
                                 headers={"content-type": "application/json", "x-fake-reply": "word", "x-fake-chunks": "20000"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=20)
    error: dict[str, Any] = json.loads(err.value.read())["error"]
    assert err.value.code == 502 and error["code"] == "output_guard_unchecked" and "max_body_bytes" in error["message"]
