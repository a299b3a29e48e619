"""The local default LLM provider: the `openai` client through Envoy to chat_llm on Triton."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
import yaml

from ext_proc.config import Config, load_config
from testkit import free_port, gateway_config

from .conftest import start_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("xllamacpp", reason="chat_llm needs xllamacpp (make install)")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    home = tmp_path_factory.mktemp("sidegate-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIDEGATE_HOME", str(home))
    raw = gateway_config([{"name": "local", "provider_interface": "sidegate", "model": "qwen-local", "default": True}])
    raw["model_server"] = {"mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(), "timeout": "60s"}
    raw["listeners"]["egress_traffic"]["timeout"] = "60s"
    path = home / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    supervisor = start_stack(cfg, path)
    try:
        yield cfg
    finally:
        supervisor.stop_all()
        mp.undo()


def client(cfg: Config) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.egress.port}/v1", api_key="none", max_retries=0, timeout=120)


def test_local_model_answers_without_an_api_key(local: Config) -> None:
    out = client(local).chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "What is the capital of France? One word."}], max_tokens=8, temperature=0
    )
    assert "paris" in (out.choices[0].message.content or "").lower()
    assert out.model == "qwen-local"
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_local_model_streams_tokens(local: Config) -> None:
    stream = client(local).chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "List the numbers from 1 to 5, separated by commas. Output only the numbers."}],
        max_tokens=32,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3  # token by token, not one blob
    assert {c.model for c in chunks} == {"qwen-local"}  # the provider's model, as the JSON answer names it
    assert "1" in "".join(pieces) and "4" in "".join(pieces)


def test_bad_request_to_the_local_model_is_a_clear_400(local: Config) -> None:
    with pytest.raises(openai.BadRequestError):
        client(local).chat.completions.create(model="anything", messages=[{"role": "nobody", "content": "x"}])


def test_a_conversation_longer_than_the_window_is_a_clear_400(local: Config) -> None:
    """As OpenAI answers a prompt over the context length: 400 naming both sizes, at once."""
    text = "Lorem ipsum dolor sit amet. " * 3600  # ~100 kB, ~25k tokens for a 4,096-token window
    start = time.monotonic()
    with pytest.raises(openai.BadRequestError) as info:
        client(local).chat.completions.create(model="anything", messages=[{"role": "user", "content": text}])
    assert time.monotonic() - start < 10
    assert info.value.code == "model_input_invalid"
    assert "exceeds the available context size" in str(info.value) and "4096" in str(info.value)
