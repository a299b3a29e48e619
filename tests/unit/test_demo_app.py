"""The demo app (deploy/demo/app.py): every route, and the openai client against its /v1."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

APP_PATH = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "app.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sidegate_demo_app", APP_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load()


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(demo.make_app(), host="127.0.0.1")) as c:
        yield c


@pytest.fixture
def llm(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0, timeout=5)


async def test_healthz(client: TestClient) -> None:
    r = await client.get("/healthz")
    assert r.status == 200 and await r.json() == {"status": "ok"}


async def test_chat_non_stream(llm: openai.AsyncOpenAI) -> None:
    r = await llm.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi there"}])
    assert r.object == "chat.completion" and r.model == "demo-echo"
    assert r.choices[0].message.content == demo.echo_reply("hi there")
    assert r.choices[0].message.content.startswith("(demo-echo) You said: hi there.")
    assert r.usage is not None and r.usage.prompt_tokens == 2 and r.usage.total_tokens > 2
    assert [m.id for m in (await llm.models.list()).data] == ["demo-echo"]


async def test_chat_stream(llm: openai.AsyncOpenAI) -> None:
    stream = await llm.chat.completions.create(
        model="demo-echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo.echo_reply("second")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 5


async def test_chat_stream_frames(client: TestClient) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = (await r.text()).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(json.loads(e.removeprefix("data: "))["object"] == "chat.completion.chunk" for e in events[:-2])


async def test_chat_bad_request(llm: openai.AsyncOpenAI, client: TestClient) -> None:
    with pytest.raises(openai.BadRequestError):
        await llm.chat.completions.create(model="demo-echo", messages=[])
    r = await client.post("/v1/chat/completions", data=b"not json")
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"


async def test_weather(client: TestClient) -> None:
    r = await client.post("/weather", json={"location": "Seattle", "days": 3})
    assert r.status == 200
    body = await r.json()
    assert body["location"] == "Seattle" and len(body["forecast"]) == 3
    day = body["forecast"][0]
    assert set(day) == {"date", "temperature_c", "condition"} and isinstance(day["temperature_c"], float)
    again = await (await client.post("/weather", json={"location": " seattle ", "days": 3})).json()
    assert again["forecast"] == body["forecast"]  # stable per location
    other = await (await client.post("/weather", json={"location": "Lisbon", "days": 3})).json()
    assert other["forecast"] != body["forecast"]
    default = await (await client.post("/weather", json={"location": "Seattle"})).json()
    assert len(default["forecast"]) == 7 and default["forecast"][:3] == body["forecast"]


@pytest.mark.parametrize(
    "payload",
    [{}, {"location": ""}, {"days": 3}, {"location": "Paris", "days": 0}, {"location": "Paris", "days": 17}, {"location": "Paris", "days": "3"}, {"location": "Paris", "days": True}, [1]],
)
async def test_weather_bad_request(client: TestClient, payload: object) -> None:
    r = await client.post("/weather", json=payload)
    assert r.status == 400 and "message" in (await r.json())["error"]


async def test_weather_not_json(client: TestClient) -> None:
    r = await client.post("/weather", data=b"{oops", headers={"content-type": "application/json"})
    assert r.status == 400


async def test_exchange(client: TestClient) -> None:
    r = await client.get("/exchange/eur")
    assert r.status == 200 and await r.json() == {"from": "USD", "to": "EUR", "rate": demo.USD_RATES["EUR"]}
    assert len(demo.USD_RATES) >= 10
    r = await client.get("/exchange/XYZ")
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_currency"


async def test_default_target(client: TestClient) -> None:
    r = await client.post("/default", json={"messages": [{"role": "user", "content": "hello"}]})
    assert r.status == 200 and "sidegate demo" in (await r.json())["reply"]


def test_runs_standalone_and_logs_each_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(APP_PATH), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "ok"}
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "demo app did not start"
                time.sleep(0.05)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert '"GET /healthz HTTP/1.1" 200' in out
