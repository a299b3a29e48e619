"""Token budgets in Redis (``shared_store: {type: redis}``), with a real redis-server: shared by
every limiter on it, atomic under concurrency, and what happens when Redis is down or corrupt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis

from ext_proc.chat.ratelimit import RateLimiter, StoreUnavailable
from ext_proc.config import LlmProvider, RateLimit, SharedStore, Upstream
from ext_proc.errors import RateLimited
from testkit import free_port
from testkit.redis_server import RedisServer

RULE = RateLimit(model="m", tokens=10_000, unit="minute")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as r:
        yield r


@pytest.fixture
def store(server: RedisServer, request: pytest.FixtureRequest) -> SharedStore:
    redis.Redis.from_url(server.url).flushdb()
    return SharedStore(type="redis", url=server.url, prefix=f"test-{request.node.name[:20]}:")


def provider() -> LlmProvider:
    return LlmProvider(name="p", interface="openai", model="m", default=True, upstream=Upstream(host="127.0.0.1", port=1, tls=False))


def msgs(chars: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * chars}]  # chars / 4 + 4 tokens


async def admitted(limiter: RateLimiter, n: int, chars: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await limiter.admit(provider(), {}, msgs(chars))
            ok += 1
        except RateLimited:
            pass
    return ok


async def test_four_limiters_on_one_redis_share_one_budget_exactly(store: SharedStore) -> None:
    limiters = [RateLimiter([RULE], store=store) for _ in range(4)]  # four processes' worth of clients
    try:
        # 4 x 60 concurrent requests of 104 tokens against 10,000 per minute: 96 fit, whoever sends them
        counts = await asyncio.gather(*(admitted(rl, 60, 400) for rl in limiters))
        assert sum(counts) == 96
        assert all(c > 0 for c in counts)
    finally:
        for rl in limiters:
            await rl.close()


async def test_a_settlement_is_seen_by_every_limiter(store: SharedStore) -> None:
    a, b = RateLimiter([RULE], store=store), RateLimiter([RULE], store=store)
    try:
        charge = await a.admit(provider(), {}, msgs(400))
        assert charge is not None
        await a.settle(charge, 9_950)  # the answer was long: 50 tokens left, for everyone
        with pytest.raises(RateLimited, match="left"):
            await b.admit(provider(), {}, msgs(400))
    finally:
        await a.close()
        await b.close()


async def test_the_budget_survives_a_limiter_restart(store: SharedStore) -> None:
    first = RateLimiter([RULE], store=store)
    await admitted(first, 90, 400)
    await first.close()
    again = RateLimiter([RULE], store=store)  # a restarted ext_proc: the budget is where it was
    try:
        assert await admitted(again, 10, 400) == 6
    finally:
        await again.close()


async def test_redis_down_with_fail_open_counts_locally_and_says_so() -> None:
    errors: list[str] = []
    down = SharedStore(type="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    # a frozen clock: 100 requests that each find Redis refusing took over 0.5 s on a busy machine,
    # and a bucket of 10,000 tokens a minute refills a 104-token request in 0.62 s (CI saw 97)
    rl = RateLimiter([RULE], store=down, on_store_error=errors.append, clock=lambda: 1000.0)
    try:
        assert await admitted(rl, 100, 400) == 96  # this process's own bucket
        assert errors and all(e in ("ConnectionError", "TimeoutError") for e in errors)
    finally:
        await rl.close()


async def test_redis_down_without_fail_open_is_a_503_naming_the_store() -> None:
    down = SharedStore(type="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, fail_open=False)
    rl = RateLimiter([RULE], store=down)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await rl.admit(provider(), {}, msgs(400))
        assert info.value.status == 503 and "shared_store.fail_open" in info.value.message
    finally:
        await rl.close()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_real_redis_answering_slowly_is_bounded_by_the_timeout(store: SharedStore, fail_open: bool) -> None:
    """CLIENT PAUSE: Redis holds every command for 2 s. With fail_open the request is admitted from
    this process's bucket after shared_store.timeout; without it, a 503; never a wait for Redis."""
    slow = SharedStore(type="redis", url=store.url, prefix=store.prefix, timeout_s=0.1, fail_open=fail_open)
    errors: list[str] = []
    rl = RateLimiter([RULE], store=slow, on_store_error=errors.append)
    client = redis.Redis.from_url(store.url or "")
    try:
        await rl.admit(provider(), {}, msgs(400))  # connected and the script loaded
        client.client_pause(2000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if fail_open:
            await rl.admit(provider(), {}, msgs(400))
        else:
            with pytest.raises(StoreUnavailable):
                await rl.admit(provider(), {}, msgs(400))
        assert loop.time() - start < 1.0 and errors == ["TimeoutError"]  # 100 ms timeout, Redis paused 2 s
    finally:
        client.client_unpause()
        await rl.close()


async def test_budgets_resume_in_redis_when_it_comes_back(server: RedisServer) -> None:
    with RedisServer() as own:
        store = SharedStore(type="redis", url=own.url, timeout_s=0.2)
        errors: list[str] = []
        hourly = RateLimit(model="m", tokens=10_000, unit="hour")  # no refill of a whole request while the test runs
        rl = RateLimiter([hourly], store=store, on_store_error=errors.append)
        try:
            await admitted(rl, 5, 400)
            own.stop()
            await admitted(rl, 5, 400)  # counted locally meanwhile
            assert errors
            own.start()
            errors.clear()
            await admitted(rl, 5, 400)
            assert not errors
            keys = redis.Redis.from_url(own.url).keys("sidegate:rl:*")
            assert len(keys) == 1  # the bucket is in Redis again
            other = RateLimiter([hourly], store=store, on_store_error=errors.append)  # another process, after the return
            try:
                assert await admitted(rl, 40, 400) + await admitted(other, 100, 400) == 96 - 5  # one budget again, shared
                assert not errors
            finally:
                await other.close()
        finally:
            await rl.close()


async def test_a_corrupt_bucket_starts_full_and_keys_stay_in_their_prefix(store: SharedStore) -> None:
    rl = RateLimiter([RULE], store=store)
    try:
        await rl.admit(provider(), {}, msgs(400))
        client = redis.Redis.from_url(store.url or "")
        (key,) = client.keys("*")
        assert key.decode().startswith(store.prefix + "rl:")
        client.hset(key, mapping={"level": "not a number", "stamp": json.dumps({"x": 1})})
        assert await admitted(rl, 96, 400) == 96  # reset to a full bucket, not an error
    finally:
        await rl.close()
