"""Token buckets for ``ratelimits``: estimate, admit, refill, settle with the reported usage."""

from __future__ import annotations

import pytest

from ext_proc.chat.ratelimit import RateLimiter, estimate_tokens
from ext_proc.config import LlmProvider, RateLimit, Upstream
from ext_proc.errors import RateLimited, render_error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(name: str = "p", model: str = "m") -> LlmProvider:
    return LlmProvider(name=name, interface="openai", model=model, default=True,
                       upstream=Upstream(host="127.0.0.1", port=1, tls=False))


def msgs(chars: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * chars}]


def test_estimate_is_a_quarter_of_the_characters_plus_framing() -> None:
    assert estimate_tokens(msgs(400)) == 104
    assert estimate_tokens([{"role": "user", "content": [{"type": "text", "text": "abcd"}]}, {"role": "system", "content": "ab"}]) == 2 + 8


async def test_budget_is_spent_refilled_and_reported_with_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter([RateLimit(model="m", tokens=300, unit="minute")], clock=clock)
    await rl.admit(provider(), {}, msgs(400))  # 104
    await rl.admit(provider(), {}, msgs(400))  # 208
    with pytest.raises(RateLimited) as err:
        await rl.admit(provider(), {}, msgs(400))  # 92 left, 104 needed: 12 tokens at 5/s
    assert err.value.status == 429 and err.value.retry_after_s == 3
    rendered = render_error(err.value)
    assert rendered.status == 429 and rendered.headers["retry-after"] == "3"
    clock.now += 3
    await rl.admit(provider(), {}, msgs(400))


async def test_limit_applies_by_provider_name_or_model_only() -> None:
    rl = RateLimiter([RateLimit(model="p", tokens=10, unit="hour")])
    assert await rl.admit(provider(name="other", model="other"), {}, msgs(400)) is None
    with pytest.raises(RateLimited, match="larger than the rate limit"):
        await rl.admit(provider(name="p"), {}, msgs(400))


async def test_selector_keeps_one_budget_per_header_value_and_skips_requests_without_it() -> None:
    rl = RateLimiter([RateLimit(model="m", tokens=200, unit="day", selector_key="X-User")])
    await rl.admit(provider(), {"x-user": "a"}, msgs(400))
    with pytest.raises(RateLimited, match="X-User 'a'"):
        await rl.admit(provider(), {"x-user": "a"}, msgs(400))
    await rl.admit(provider(), {"x-user": "b"}, msgs(400))
    assert await rl.admit(provider(), {}, msgs(4000)) is None


async def test_selector_value_limits_only_that_value() -> None:
    rl = RateLimiter([RateLimit(model="m", tokens=200, unit="day", selector_key="x-tier", selector_value="free")])
    await rl.admit(provider(), {"x-tier": "free"}, msgs(400))
    with pytest.raises(RateLimited):
        await rl.admit(provider(), {"x-tier": "free"}, msgs(400))
    for _ in range(3):
        assert await rl.admit(provider(), {"x-tier": "paid"}, msgs(400)) is None


async def test_settle_charges_the_reported_usage_and_a_refund_never_overfills() -> None:
    clock = Clock()
    rl = RateLimiter([RateLimit(model="m", tokens=300, unit="minute")], clock=clock)
    charge = await rl.admit(provider(), {}, msgs(400))
    assert charge is not None
    await rl.settle(charge, 250)  # the answer was long: 146 more than estimated -> 50 left
    with pytest.raises(RateLimited):
        await rl.admit(provider(), {}, msgs(400))
    rl2 = RateLimiter([RateLimit(model="m", tokens=300, unit="minute")], clock=clock)
    charge = await rl2.admit(provider(), {}, msgs(400))
    assert charge is not None
    await rl2.settle(charge, 4)  # far less than estimated: refunded, capped at the limit
    await rl2.admit(provider(), {}, msgs(400))
    await rl2.admit(provider(), {}, msgs(400))
    with pytest.raises(RateLimited):
        await rl2.admit(provider(), {}, msgs(400))


async def test_a_request_the_provider_cannot_be_sent_takes_nothing_from_the_budget() -> None:
    """A 400 decided after routing (here: a Responses request with a tool that has no chat-completions
    form, for a provider sent chat completions) is answered before the rate limit is charged."""
    import json
    import logging

    from ext_proc.chat.completions import ChatProcessor, egress_router
    from ext_proc.config import build_config
    from ext_proc.metrics import Metrics
    from ext_proc.processor import Continue, Immediate
    from testkit import gateway_config

    cfg = build_config(gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "m",
                                        "default": True}]))
    limits = RateLimiter([RateLimit(model="m", tokens=30, unit="hour")])

    async def send(tools: list[dict[str, str]]) -> object:
        proc = ChatProcessor(cfg=cfg, listener="egress", router=egress_router, metrics=Metrics(),
                             log=logging.LoggerAdapter(logging.getLogger("test"), {}), ratelimits=limits, api="responses")
        await proc.request_headers({":path": "/v1/responses", ":method": "POST", "content-type": "application/json"}, False)
        return await proc.request_body(json.dumps({"model": "m", "input": "x" * 80, "tools": tools}).encode(), True)

    refused = await send([{"type": "local_shell"}])
    assert isinstance(refused, Immediate) and refused.status == 400 and b"tools[0].type" in refused.body
    assert isinstance(await send([]), Continue)  # the whole budget (about 28 of 30 tokens) was still there
