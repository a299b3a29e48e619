"""Preference routing (ext_proc/chat/preferences.py) with a fake embedder: which provider a request
goes to, what is never re-routed, and a failing model server (end to end through Envoy and Triton:
tests/integration/test_preference_routing.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import numpy as np
import pytest

from ext_proc.chat.completions import ChatProcessor, Forward, preference_egress_router
from ext_proc.chat.endpoints import EndpointClient
from ext_proc.chat.pipeline import IngressPipeline
from ext_proc.chat.preferences import (
    JUDGE_PREFILL_TIMEOUT_S,
    ORDINARY_CHAT,
    PreferenceRouter,
    lead_word,
    preference_index,
    preference_views,
    user_turns,
)
from ext_proc.config import Config, ConfigError, RoutingPreference, build_config
from ext_proc.control.model_repo import needed_models
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models.base import RouteVerdict
from ext_proc.processor import Continue
from ext_proc.wire.openai import parse_chat_request
from testkit.configs import ENV, raw_config

DIM = 8
AXES = {"code": 0, "summar": 1}  # a preference view is embedded on the axis of the first of these words it has
NOISE = DIM - 1
CHAT = NOISE - 1  # any other text (the ORDINARY_CHAT lines among them) lies on this axis


def _axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


class Embedder:
    """Models.embed: a prompt "... AXIS=i SCORE=s ..." (or "i@s") has cosine s to axis i (several
    pairs: to each axis; the rest on a noise axis no preference has); a preference view lies on the axis of
    its keyword (AXES), any other text on CHAT."""

    def __init__(self, *, fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail = fail
        self.delay_s = delay_s
        self.calls: list[str] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += texts
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ModelServerError("Triton model prompt_embed is not ready", status=503)
        rows = []
        for text in texts:
            pairs = [(int(i or j), float(s or t)) for i, s, j, t in re.findall(r"AXIS=(\d) SCORE=([0-9.]+)|\b(\d)@([0-9.]+)", text)]
            if pairs:
                v = sum((s * _axis(i) for i, s in pairs), np.zeros(DIM, dtype=np.float32))
                rows.append(v + np.sqrt(max(0.0, 1 - float(v @ v))) * _axis(NOISE))
            else:
                i = next((a for w, a in AXES.items() if w in text.lower()), CHAT)
                rows.append(_axis(i))
        return np.stack(rows).astype(np.float32)


CONFIG_PROVIDERS = [
    {"name": "general", "provider_interface": "openai", "access_key": "$OPENAI_API_KEY", "model": "gpt-4o-mini", "default": True},
    {"name": "coder", "provider_interface": "openai", "access_key": "$OPENAI_API_KEY", "model": "code-model",
     "routing_preferences": [{"name": "code generation", "description": "writing new code from a description"}]},
    {"name": "reader", "provider_interface": "groq", "access_key": "$GROQ_API_KEY", "model": "llama",
     "routing_preferences": [{"name": "summarization", "description": "summarizing documents"}]},
]


def config(threshold: float = 0.5, extra: list[dict[str, Any]] | None = None, *, route_named_models: bool | None = None,
           **over: Any) -> Config:
    providers = [*CONFIG_PROVIDERS, *(extra or [])]
    named = {} if route_named_models is None else {"route_named_models": route_named_models}
    raw = raw_config(llm_providers=providers, overrides={"routing_preference_threshold": threshold, **named},
                     model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1"}, **over)
    return build_config(raw, env=ENV)


def request(*turns: str, **body: Any) -> Any:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return parse_chat_request(json.dumps({"messages": messages, **body}).encode())


async def test_a_fitting_prompt_goes_to_the_preferences_provider() -> None:
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(), models=Embedder(), metrics=metrics)
    route = await router.route(request("write a parser AXIS=0 SCORE=0.8"))
    assert (route.provider.name, route.preference, route.decided_by) == ("coder", "code generation", "embedding")
    assert route.score == pytest.approx(0.8, abs=1e-5)
    route = await router.route(request("tl;dr this AXIS=1 SCORE=0.6"))
    assert (route.provider.name, route.preference) == ("reader", "summarization")
    assert metrics.route_decisions.labels("code generation", "embedding")._value.get() == 1


async def test_below_the_threshold_goes_to_the_default_provider() -> None:
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(threshold=0.5), models=Embedder(), metrics=metrics)
    route = await router.route(request("write a parser AXIS=0 SCORE=0.45"))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "none")
    assert metrics.route_decisions.labels("none", "none")._value.get() == 1


async def test_the_threshold_is_configurable() -> None:
    router = PreferenceRouter(cfg=config(threshold=0.4), models=Embedder(), metrics=Metrics())
    assert (await router.route(request("write a parser AXIS=0 SCORE=0.45"))).preference == "code generation"


async def test_a_follow_up_turn_is_routed_with_the_turns_before_it() -> None:
    embedder = Embedder()
    router = PreferenceRouter(cfg=config(), models=embedder, metrics=Metrics())
    route = await router.route(request("write a parser AXIS=0 SCORE=0.8", "here it is", "now in rust please"))
    assert route.preference == "code generation"
    assert embedder.calls[-2:] == ["now in rust please", "write a parser AXIS=0 SCORE=0.8"]


async def test_only_the_head_of_a_turn_is_embedded() -> None:
    embedder = Embedder()
    router = PreferenceRouter(cfg=config(), models=embedder, metrics=Metrics())
    route = await router.route(request("write a parser AXIS=0 SCORE=0.8 for this long grammar: " + "expr := term + expr " * 50))
    # the head decides; the first 12 words are embedded with it (in the same call) for the ordinary-chat comparison only
    assert route.preference == "code generation"
    assert embedder.calls[-2:] == ["write a parser AXIS=0 SCORE=0.8 for", "write a parser AXIS=0 SCORE=0.8 for this long grammar: expr := term"]


async def test_preferences_are_embedded_once() -> None:
    embedder = Embedder()
    router = PreferenceRouter(cfg=config(), models=embedder, metrics=Metrics())
    await router.route(request("a AXIS=0 SCORE=0.8"))
    await router.route(request("b AXIS=1 SCORE=0.8"))
    assert embedder.calls.count("writing new code from a description") == 1


async def test_a_failing_model_server_sends_the_request_to_the_default(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(), models=Embedder(fail=True), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="sidegate.preferences"):
        route = await router.route(request("write a parser AXIS=0 SCORE=0.9"))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "unavailable")
    assert "sending the request to provider general" in caplog.text
    assert "prompt_embed is not ready" in caplog.text
    assert metrics.route_decisions.labels("none", "unavailable")._value.get() == 1


async def test_a_slow_model_server_sends_the_request_to_the_default(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ext_proc.chat.preferences.ROUTE_DEADLINE_S", 0.05)
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(), models=Embedder(delay_s=0.2), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="sidegate.preferences"):
        route = await router.route(request("write a parser AXIS=0 SCORE=0.9"))
    assert (route.provider.name, route.decided_by) == ("general", "unavailable")
    assert "prompt_embed did not answer within 0.05 s" in caplog.text


async def test_egress_routes_only_requests_that_name_no_provider() -> None:
    cfg = config()
    route = preference_egress_router(PreferenceRouter(cfg=cfg, models=Embedder(), metrics=Metrics()))
    code = "write a parser AXIS=0 SCORE=0.9"
    d = await route(cfg, {}, request(code, model="auto"))  # a model no provider serves: routed
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("coder", "code generation")
    assert d.body is not None and json.loads(d.body)["model"] == "code-model"
    d = await route(cfg, {}, request(code))  # no model at all: routed
    assert isinstance(d, Forward) and d.route == "code generation"
    d = await route(cfg, {}, request(code, model="llama"))  # a provider's model: not re-routed
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("reader", None)
    d = await route(cfg, {"x-arch-llm-provider-hint": "general"}, request(code, model="auto"))  # the hint decides
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("general", None)


async def test_with_route_named_models_a_named_model_is_re_routed_and_keeps_its_provider_when_nothing_fits() -> None:
    """plano's way (Claude Code and Codex always name a model): the preference decides first; a request
    that fits none goes to the provider of the model it names, with that model; the hint still decides."""
    cfg = config(route_named_models=True)
    assert cfg.route_named_models and not config().route_named_models
    metrics = Metrics()
    route = preference_egress_router(PreferenceRouter(cfg=cfg, models=Embedder(), metrics=metrics))
    d = await route(cfg, {}, request("write a parser AXIS=0 SCORE=0.9", model="llama"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("coder", "code generation")
    assert d.body is not None and json.loads(d.body)["model"] == "code-model"
    d = await route(cfg, {}, request("hello AXIS=1 SCORE=0.1", model="llama"))  # fits nothing: the named model's provider
    assert isinstance(d, Forward) and (d.provider.name, d.route, d.body) == ("reader", None, None)
    d = await route(cfg, {}, request("hello AXIS=1 SCORE=0.1", model="groq/llama"))  # family/model: sent as the provider reads it
    assert isinstance(d, Forward) and d.provider.name == "reader" and d.body is not None and json.loads(d.body)["model"] == "llama"
    d = await route(cfg, {}, request("hello AXIS=1 SCORE=0.1", model="auto"))  # a model no provider serves: the default
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("general", None)
    d = await route(cfg, {"x-arch-llm-provider-hint": "general"}, request("write a parser AXIS=0 SCORE=0.9", model="llama"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("general", None)
    assert metrics.route_decisions.labels("code generation", "embedding")._value.get() == 1


async def test_a_named_models_provider_takes_the_request_when_the_model_server_fails(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(route_named_models=True)
    route = preference_egress_router(PreferenceRouter(cfg=cfg, models=Embedder(fail=True), metrics=Metrics()))
    with caplog.at_level(logging.WARNING, logger="sidegate.preferences"):
        d = await route(cfg, {}, request("write a parser AXIS=0 SCORE=0.9", model="llama"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("reader", None)
    assert "sending the request to provider reader" in caplog.text


async def test_harness_reminders_and_tool_results_are_not_what_a_turn_is_routed_by() -> None:
    """Claude Code wraps project notes and todo lists in <system-reminder> blocks inside the user's
    turn, and a tool step's last user turn holds only tool results: the user's own words decide."""
    embedder = Embedder()
    router = PreferenceRouter(cfg=config(), models=embedder, metrics=Metrics())
    reminder = "<system-reminder>\nAs you answer, use this context: # claudeMd\nsummarize AXIS=1 SCORE=0.9 everything\n</system-reminder>"
    first = {"role": "user", "content": [{"type": "text", "text": reminder}, {"type": "text", "text": "write a parser AXIS=0 SCORE=0.8"},
                                         {"type": "text", "text": "<system-reminder>todo list is empty</system-reminder>"}]}
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]}
    step = [first, call, {"role": "tool", "tool_call_id": "c1", "content": "a.py b.py"},
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>the file a.py changed</system-reminder>"}]}]
    for messages in ([first], step):
        req = parse_chat_request(json.dumps({"model": "auto", "messages": messages}).encode())
        route = await router.route(req)
        assert route.preference == "code generation"
        assert embedder.calls[-1] == "write a parser AXIS=0 SCORE=0.8"
    assert not [c for c in embedder.calls if "claudeMd" in c or "todo" in c or "a.py" in c]
    assert user_turns(parse_chat_request(json.dumps({"messages": step}).encode())) == ["\nwrite a parser AXIS=0 SCORE=0.8\n"]


async def test_ingress_routes_prompts_for_the_llm() -> None:
    cfg = config()
    models: Any = Embedder()
    metrics = Metrics()
    preferences = PreferenceRouter(cfg=cfg, models=models, metrics=metrics)
    pipeline = IngressPipeline(cfg=cfg, models=models, endpoints=EndpointClient(cfg), metrics=metrics, preferences=preferences)
    d = await pipeline(cfg, {}, request("summarise this AXIS=1 SCORE=0.7"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("reader", "summarization")
    assert d.body is not None and json.loads(d.body)["model"] == "llama"
    d = await pipeline(cfg, {"x-arch-llm-provider-hint": "reader"}, request("summarise this AXIS=1 SCORE=0.7"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("general", None)  # not re-routed: as without preferences
    d = await pipeline(cfg, {}, request("hello AXIS=1 SCORE=0.1"))
    assert isinstance(d, Forward) and (d.provider.name, d.route) == ("general", None)


async def test_the_route_header_names_the_preference() -> None:
    cfg = config()
    route = preference_egress_router(PreferenceRouter(cfg=cfg, models=Embedder(), metrics=Metrics()))
    headers = {}
    for prompt, model in (("write a parser AXIS=0 SCORE=0.9", "auto"), ("write a parser AXIS=0 SCORE=0.9", "gpt-4o-mini")):
        proc = ChatProcessor(cfg=cfg, listener="egress", router=route, metrics=Metrics(), log=logging.LoggerAdapter(logging.getLogger("t")))
        await proc.request_headers({":method": "POST", ":path": "/v1/chat/completions"}, False)
        sent = await proc.request_body(json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode(), True)
        assert isinstance(sent, Continue)
        reply = await proc.response_headers({":status": "200", "content-type": "application/json"}, False)
        assert isinstance(reply, Continue)
        headers[model] = reply.set_headers
    assert headers["auto"]["x-sidegate-route"] == "code generation" and headers["auto"]["x-sidegate-provider"] == "coder"
    assert "x-sidegate-route" not in headers["gpt-4o-mini"] and headers["gpt-4o-mini"]["x-sidegate-provider"] == "general"


def test_preferences_load_prompt_embed() -> None:
    assert needed_models(config()) == ["prompt_embed"]
    assert not PreferenceRouter(cfg=config(), models=None, metrics=Metrics()).active


async def test_a_prompt_closer_to_ordinary_chat_goes_to_the_default() -> None:
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(threshold=0.3), models=Embedder(), metrics=metrics)
    # above the threshold, but nearer an ORDINARY_CHAT line than the preference: the default
    route = await router.route(request(f"discuss this 0@0.5 {CHAT}@0.6"))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "none")
    assert route.score == pytest.approx(0.5, abs=1e-5)
    assert metrics.route_decisions.labels("none", "none")._value.get() == 1
    route = await router.route(request(f"discuss this 0@0.6 {CHAT}@0.5"))
    assert (route.provider.name, route.preference, route.decided_by) == ("coder", "code generation", "embedding")


async def test_a_follow_up_closer_to_ordinary_chat_is_not_routed_by_the_turn_before() -> None:
    embedder = Embedder()
    router = PreferenceRouter(cfg=config(threshold=0.3), models=embedder, metrics=Metrics())
    follow_up = f"thanks, and 0@0.4 {CHAT}@0.8"
    route = await router.route(request("write a parser AXIS=0 SCORE=0.8", "here it is", follow_up))
    assert (route.provider.name, route.preference) == ("general", None)
    assert embedder.calls[-1] == follow_up  # the earlier turn was not embedded


async def test_ordinary_chat_lines_near_a_preference_are_left_out() -> None:
    # a preference without AXES words lies on CHAT, where every ORDINARY_CHAT line lies: all left out,
    # so the prompts of that kind go to it rather than to the default
    small_talk = {"name": "chatter", "provider_interface": "openai", "access_key": "$OPENAI_API_KEY", "model": "chat-model",
                  "routing_preferences": [{"name": "small talk", "description": "casual chit-chat and greetings"}]}
    router = PreferenceRouter(cfg=config(extra=[small_talk]), models=Embedder(), metrics=Metrics())
    route = await router.route(request(f"hey there AXIS={CHAT} SCORE=0.8"))
    assert (route.provider.name, route.preference) == ("chatter", "small talk")
    assert router._index is not None and router._index.anchor_texts == ()
    # without that preference the lines stay, and the same prompt is ordinary chat
    router = PreferenceRouter(cfg=config(), models=Embedder(), metrics=Metrics())
    assert (await router.route(request(f"hey there AXIS={CHAT} SCORE=0.8"))).preference is None
    assert router._index is not None and router._index.anchor_texts == ORDINARY_CHAT


async def test_a_turn_that_starts_by_naming_a_preference_goes_to_it() -> None:
    metrics = Metrics()
    router = PreferenceRouter(cfg=config(), models=Embedder(), metrics=metrics)
    # the embedding is nearest to code generation, and ordinary chat nearer still: the first word decides
    for prompt in (f"Summarize the ideas 0@0.4 {CHAT}@0.7", f"Can you please summarize {CHAT}@0.9",
                   f"Please summarise the ideas {CHAT}@0.9"):  # the British spelling too
        route = await router.route(request(prompt))
        assert (route.provider.name, route.preference, route.decided_by) == ("reader", "summarization", "named")
    assert metrics.route_decisions.labels("summarization", "named")._value.get() == 3
    # later in the turn it is only a word: the embedding decides
    route = await router.route(request(f"this long article: summarize {CHAT}@0.9"))
    assert route.preference is None
    # "generate" is in the name "code generation", but says no task: the embedding decides
    route = await router.route(request("Generate a poem about the sea AXIS=1 SCORE=0.1"))
    assert (route.preference, route.decided_by) == (None, "none")


def test_lead_word() -> None:
    assert lead_word("Can you please summarize this article?") == "summar"
    assert lead_word("How would you translate this") == "translat"
    assert lead_word("please, can you") is None
    # British spellings stem as the American ones do: "summarise" is a request to summarize
    assert lead_word("Please summarise this report") == lead_word("summarize it") == lead_word("summarization")
    assert lead_word("Could you analyse these figures") == lead_word("analyze") != lead_word("analysis")
    assert lead_word("Promise me") == lead_word("promise") and lead_word("noise") == "nois"
    assert lead_word("") is None


def test_only_a_word_of_one_preference_names_it() -> None:
    prefs = [RoutingPreference(name="code generation", description="writing new code"),
             RoutingPreference(name="code review", description="reviewing code for bugs"),
             RoutingPreference(name="translation", description="translating text into another language")]
    views = preference_views(prefs)
    index = preference_index(prefs, np.eye(len(views), 64, dtype=np.float32))
    # "code" is in two names, "generate" a generic verb: neither names a preference
    assert index.named == {"review": 1, "translat": 2}
    assert index.anchor_texts == ORDINARY_CHAT  # orthogonal to every view: all kept
    without = preference_index(prefs, np.eye(len(views) - len(ORDINARY_CHAT), 64, dtype=np.float32))
    assert without.anchor_texts == () and without.anchors.shape[0] == 0
    with pytest.raises(ValueError, match="embeddings for"):
        preference_index(prefs, np.eye(3, 64, dtype=np.float32))


async def test_a_turn_whose_first_12_words_are_ordinary_chat_goes_to_the_default() -> None:
    router = PreferenceRouter(cfg=config(threshold=0.3), models=Embedder(), metrics=Metrics())
    # its 6-word head fits code generation (0.6, no ordinary-chat line near); its first 12 words are nearer ordinary chat (0.8)
    route = await router.route(request(f"I want to build a 0@0.6 site, how {CHAT}@0.8 should I start"))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "none")
    route = await router.route(request("I want to build a 0@0.6 site, how should I start"))
    assert (route.provider.name, route.preference) == ("coder", "code generation")


# ------------------------------------------------------------------ the judge (overrides.routing_preference_judge)

class Judging(Embedder):
    """Embedder + Models.judge_route: the judge's P(preference) is ``p`` for every preference, P(none) ``p_none``."""

    def __init__(self, *, p: float = 0.8, p_none: float = 0.2, answer: str | None = None, fail: bool = False,
                 delay_s: float = 0.0) -> None:
        super().__init__()
        self.p, self.p_none, self.answer, self.judge_fail, self.judge_delay_s = p, p_none, answer, fail, delay_s
        self.judged: list[tuple[str, list[tuple[str, str]], float | None]] = []

    async def judge_route(self, text: str, categories: list[tuple[str, str]], *, timeout_s: float | None = None) -> RouteVerdict:
        self.judged.append((text, categories, timeout_s))
        await asyncio.sleep(self.judge_delay_s)
        if self.judge_fail:
            raise ModelServerError("Triton model function_call is not ready", status=503)
        return RouteVerdict(answer=self.answer, p={n: self.p for n, _ in categories}, p_none=self.p_none)


def judged_config(judge: Any = True, threshold: float = 0.3) -> Config:
    """config(threshold) with ``overrides.routing_preference_judge: judge``."""
    raw = raw_config(llm_providers=CONFIG_PROVIDERS, model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1"},
                     overrides={"routing_preference_threshold": threshold, "routing_preference_judge": judge})
    return build_config(raw, env=ENV)


NEAR = f"discuss this 0@0.50 {CHAT}@0.53"  # code generation 0.50, ordinary chat 0.53: within the default band (0.06)
FAR = f"discuss this 0@0.50 {CHAT}@0.80"  # ordinary chat far closer: the embedding alone decides


async def test_a_turn_in_the_judges_band_is_settled_by_the_judge() -> None:
    metrics = Metrics()
    models = Judging(p=0.8, p_none=0.2)  # P(code generation) / (P + P(none)) = 0.8 >= 0.6
    router = PreferenceRouter(cfg=judged_config(), models=models, metrics=metrics)
    route = await router.route(request(NEAR))
    assert (route.provider.name, route.preference, route.decided_by) == ("coder", "code generation", "judge")
    assert models.judged[-1] == (NEAR, [("code generation", "writing new code from a description"),
                                        ("summarization", "summarizing documents")], 1.5)
    assert metrics.route_decisions.labels("code generation", "judge")._value.get() == 1
    # the judge leaning to none: the default, where the embedding alone also sent it
    router = PreferenceRouter(cfg=judged_config(), models=Judging(p=0.5, p_none=0.5), metrics=Metrics())
    route = await router.route(request(NEAR))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "none")
    # no probabilities from the runtime: its answer decides
    router = PreferenceRouter(cfg=judged_config(), models=Judging(p=0.0, p_none=0.0, answer="code generation"), metrics=Metrics())
    assert (await router.route(request(NEAR))).preference == "code generation"


async def test_a_preference_near_ordinary_chat_can_be_turned_away_by_the_judge() -> None:
    # the embedding's match (0.55 vs 0.50 ordinary: in the band) is sent to the default when the judge says other
    router = PreferenceRouter(cfg=judged_config(), models=Judging(p=0.1, p_none=0.9), metrics=Metrics())
    route = await router.route(request(f"discuss this 0@0.55 {CHAT}@0.50"))
    assert (route.provider.name, route.preference, route.decided_by) == ("general", None, "none")
    router = PreferenceRouter(cfg=config(threshold=0.3), models=Judging(p=0.1, p_none=0.9), metrics=Metrics())
    assert (await router.route(request(f"discuss this 0@0.55 {CHAT}@0.50"))).preference == "code generation"  # no judge configured


async def test_outside_the_band_and_for_a_named_task_the_judge_is_not_asked() -> None:
    models = Judging(p=0.9, p_none=0.1)
    router = PreferenceRouter(cfg=judged_config(), models=models, metrics=Metrics())
    assert (await router.route(request(FAR))).preference is None
    assert (await router.route(request("write a parser 0@0.9"))).decided_by == "embedding"
    assert (await router.route(request(f"Summarize the ideas {CHAT}@0.7"))).decided_by == "named"
    assert [t for t, _, _ in models.judged] == ["hello"]  # only the start-up pre-fill of its listing


async def test_the_band_and_the_share_are_configurable() -> None:
    models = Judging(p=0.55, p_none=0.45)
    router = PreferenceRouter(cfg=judged_config({"band": 0.5, "threshold": 0.5, "timeout": "3s"}), models=models, metrics=Metrics())
    assert (await router.route(request(FAR))).decided_by == "judge"  # 0.3 apart: in a band of 0.5; 0.55 >= 0.5
    assert models.judged[-1][2] == 3.0
    cfg = judged_config({"band": 0.01})
    assert cfg.routing_judge is not None and (cfg.routing_judge.band, cfg.routing_judge.threshold) == (0.01, 0.6)
    assert judged_config(False).routing_judge is None


async def test_a_judge_that_fails_or_is_slow_leaves_the_embeddings_decision(caplog: pytest.LogCaptureFixture) -> None:
    for models, why in ((Judging(fail=True), "function_call is not ready"), (Judging(delay_s=0.3), "did not answer within 0.1 s")):
        metrics = Metrics()
        router = PreferenceRouter(cfg=judged_config({"timeout": "0.1s"}), models=models, metrics=metrics)
        await router.warm()
        if router._prefill is not None:
            await asyncio.gather(router._prefill, return_exceptions=True)
        with caplog.at_level(logging.WARNING, logger="sidegate.preferences"):
            route = await router.route(request(f"discuss this 0@0.55 {CHAT}@0.50"))
        assert (route.provider.name, route.preference, route.decided_by) == ("coder", "code generation", "embedding")
        assert why in caplog.text and "the embedding's decision stands" in caplog.text
        assert metrics.model_errors.labels("route_judge")._value.get() == 1


async def test_the_judges_listing_is_pre_filled_once_at_start() -> None:
    models = Judging()
    router = PreferenceRouter(cfg=judged_config(), models=models, metrics=Metrics())
    await router.warm()
    await router.warm()
    assert router._prefill is not None
    await router._prefill
    assert [(t, s) for t, _, s in models.judged] == [("hello", JUDGE_PREFILL_TIMEOUT_S)]
    without = Judging()
    await PreferenceRouter(cfg=config(), models=without, metrics=Metrics()).warm()
    assert without.judged == []


def test_the_judge_loads_function_call_and_is_warned_about_without_preferences() -> None:
    assert needed_models(judged_config()) == ["prompt_embed", "function_call"]
    assert needed_models(config()) == ["prompt_embed"]
    raw = raw_config(llm_providers=[CONFIG_PROVIDERS[0]], model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1"},
                     overrides={"routing_preference_judge": True})
    cfg = build_config(raw, env=ENV)
    assert "function_call" not in needed_models(cfg)
    assert any(w.startswith("overrides.routing_preference_judge: no provider has routing_preferences") for w in cfg.warnings)


def test_envoy_waits_for_the_judge_longer_than_its_deadline() -> None:
    # a slow judge must end in the embedding's decision, not in Envoy's ext_proc_timeout
    def built(judge: Any, message_timeout: str | None = None) -> Config:
        raw = raw_config(llm_providers=CONFIG_PROVIDERS, model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1"},
                         overrides={"routing_preference_judge": judge})
        raw["ext_proc"].pop("message_timeout")
        if message_timeout is not None:
            raw["ext_proc"]["message_timeout"] = message_timeout
        return build_config(raw, env=ENV)

    assert built(False).ext_proc.message_timeout_s == 10.0  # derived: nothing slower configured
    assert built(True).ext_proc.message_timeout_s == 11.5  # + the judge's 1.5 s
    assert built({"timeout": "20s"}).ext_proc.message_timeout_s == 30.0
    cfg = built(True, "3s")
    assert cfg.ext_proc.message_timeout_s == 3.0
    assert any(w.startswith("ext_proc.message_timeout: 3 s is shorter than a preference-routing decision with its judge") for w in cfg.warnings)
    assert not any("preference-routing decision" in w for w in built(True, "10s").warnings)


@pytest.mark.parametrize(("judge", "path", "words"), [
    ("yes", "overrides.routing_preference_judge", "expected true or false or a mapping"),
    ({"band": -0.1}, "overrides.routing_preference_judge.band", "expected at least 0"),
    ({"threshold": 1.5}, "overrides.routing_preference_judge.threshold", "expected at most 1"),
    ({"timeout": "soon"}, "overrides.routing_preference_judge.timeout", "expected a duration"),
    ({"margin": 0.1}, "overrides.routing_preference_judge.margin", "unknown key 'margin' (allowed: band, threshold, timeout)"),
])
def test_a_bad_judge_setting_is_refused_with_the_key_path(judge: Any, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        judged_config(judge)
    assert info.value.path == path and words in info.value.message, str(info.value)
