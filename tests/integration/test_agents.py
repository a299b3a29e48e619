"""Agent listeners (#19) through the real stack: Envoy + the ext_proc service + Triton's prompt_embed,
two fake OpenAI agents and a dead one, the real openai SDK as the client:
* a conversation goes to the agent whose description fits it, JSON and SSE (the stream as the agent
  sent it), with ``x-sidegate-agent`` naming it; a follow-up that names no topic stays there, a turn
  about the other agent's topic moves; small talk, or a request for no agent, goes to the default one;
* an agent that is down is a 502 naming it.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from ext_proc.config import Config
from testkit import gateway_config
from testkit.fake_provider import FakeProvider
from testkit.ports import free_port
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    cfg: Config
    weather: FakeProvider
    flights: FakeProvider

    def client(self) -> openai.OpenAI:
        port = self.cfg.agent_listeners[0].listener.port
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-client", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeProvider(name="weather-agent") as weather, FakeProvider(name="flight-agent") as flights:
        raw = gateway_config([{"name": "llm", "provider_interface": "openai", "endpoint": weather.base_url, "model": "m"}],
                             model_server={"mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(),
                                           "metrics_port": free_port(), "timeout": "30s"},
                             agents=[{"id": "weather_agent", "url": f"http://127.0.0.1:{weather.port}"},
                                     {"id": "flight_agent", "url": f"http://127.0.0.1:{flights.port}"},
                                     {"id": "hotel_agent", "url": f"http://127.0.0.1:{free_port()}"}])  # nothing listens there
        raw["listeners"]["agent_traffic"] = [{"type": "agent", "name": "travel", "port": free_port(), "agents": [
            {"id": "weather_agent", "description": "Weather forecasts: temperature, rain, wind and sunshine for any city"},
            {"id": "flight_agent", "description": "Flight information: departures, arrivals, delays and gates between airports",
             "default": True},
            {"id": "hotel_agent", "description": "Hotel room bookings and cancellations"}]}]
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            yield Stack(cfg=cfg, weather=weather, flights=flights)


def turns(*texts: str) -> list[Any]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_a_conversation_goes_to_the_agent_that_fits_and_a_follow_up_stays(stack: Stack) -> None:
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(model="any", messages=turns("What's the weather like in Seattle today?"))
    assert raw.headers["x-sidegate-agent"] == "weather_agent"
    assert raw.parse().choices[0].message.content == "weather-agent says: What's the weather like in Seattle today?"
    follow = turns("What's the weather like in Seattle today?", "Rainy, 12 degrees.", "And tomorrow?")
    raw = client.chat.completions.with_raw_response.create(model="any", messages=follow)
    assert raw.headers["x-sidegate-agent"] == "weather_agent"
    moved = follow + [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Is flight UA 123 from SEA to SFO delayed?"}]
    raw = client.chat.completions.with_raw_response.create(model="any", messages=moved)
    assert raw.headers["x-sidegate-agent"] == "flight_agent"
    assert json.loads(stack.flights.requests[-1].body)["messages"] == moved  # the conversation as the client sent it


def test_small_talk_and_requests_for_no_agent_go_to_the_default_one(stack: Stack) -> None:
    client = stack.client()
    for text in ("hi there!", "Help me write a cover letter for a nursing job"):
        raw = client.chat.completions.with_raw_response.create(model="any", messages=turns(text))
        assert raw.headers["x-sidegate-agent"] == "flight_agent", text  # default: true
    raw = client.chat.completions.with_raw_response.create(
        model="any", messages=turns("Will it rain in Oslo tomorrow?", "Light rain, 8 degrees.", "thanks!"))
    assert raw.headers["x-sidegate-agent"] == "weather_agent"  # small talk after a request stays with its agent
    url = f"http://127.0.0.1:{stack.cfg.ext_proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310
        assert 'sidegate_agent_routes_total{agent="flight_agent",how="default",listener="travel"}' in r.read().decode()


def test_a_stream_comes_back_as_the_agent_sent_it(stack: Stack) -> None:
    with stack.client().chat.completions.with_streaming_response.create(
            model="any", stream=True, messages=turns("Which gate does flight LH 400 depart from at Frankfurt airport?")) as resp:
        assert resp.headers["x-sidegate-agent"] == "flight_agent"
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "flight-agent says: Which gate does flight LH 400 depart from at Frankfurt airport?"


def test_an_agent_that_is_down_is_a_502_naming_it(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model="any", messages=turns("Book me a hotel room in Lisbon for two nights"))
    assert info.value.status_code == 502 and "agent_hotel_agent" in info.value.message
    url = f"http://127.0.0.1:{stack.cfg.ext_proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310
        metrics = r.read().decode()
    assert 'sidegate_agent_routes_total{agent="weather_agent",how="match",listener="travel"}' in metrics
