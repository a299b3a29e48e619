"""Token rate limits (``ratelimits`` in the config): over budget → ``429``, nothing forwarded.

Each ``ratelimits[]`` entry is a token bucket that holds at most ``limit.tokens`` and refills at
``limit.tokens`` per ``limit.unit``. It applies to requests forwarded to a provider whose
``name`` or ``model`` equals the entry's ``model``, on both listeners (egress calls and the
ingress pipeline's LLM calls). With a ``selector``, a request is counted only when it carries
the header ``selector.key`` (and, when ``selector.value`` is given, only with that value); one
bucket is kept per header value, so ``selector: {key: x-user-id}`` is a budget per user.

Counting, without a tokenizer (tiktoken would fetch its files at run time): before forwarding,
the prompt is estimated at one token per 4 characters of message text (plus 4 per message), and
that much is taken from the bucket; a request that does not fit gets 429 with ``retry-after``.
When the provider's answer reports ``usage.total_tokens``, the difference to the estimate is
charged too, so long answers use up the budget they cost: the bucket may go below zero and later
requests wait until it refills.

Where the buckets live (``shared_store``): on this host (``memory``, the default: in the ext_proc
process, or, with ``ext_proc.workers`` > 1, in a SQLite file every worker of one ``sidegate up``
shares, :class:`FileBuckets`, so the limit holds for the gateway and not once per worker; empty
after ``sidegate up`` starts again), or in Redis (``redis``): every process on one Redis shares
one budget, and a restart keeps it. A charge or a settlement is one Lua script run
by Redis (atomic: no read-modify-write race between processes), on Redis's own clock. Redis down,
slow (``shared_store.timeout``) or answering nonsense: with ``fail_open`` (the default) the
request is counted in this process's buckets instead, logged and counted in
``sidegate_shared_store_errors``; without it, ``503 shared_store_unavailable``. A bucket whose
stored value is corrupt starts full again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ext_proc.chat.shared_store import FailureLog, SharedFile, redis_client, redis_errors, workers_file
from ext_proc.config import LlmProvider, RateLimit, SharedStore
from ext_proc.errors import RateLimited, SidegateError
from ext_proc.names import BUCKETS_FILE
from ext_proc.wire.openai import content_text

__all__ = ["Charge", "FileBuckets", "MemoryBuckets", "RateLimiter", "RedisBuckets", "StoreUnavailable", "estimate_tokens"]

log = logging.getLogger("sidegate.ratelimit")

_MAX_BUCKETS = 10_000  # per limit: selector values beyond this share the oldest buckets' fate (evicted)


def estimate_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """~4 characters per token (OpenAI's rule of thumb), plus 4 tokens of framing per message."""
    chars = n = 0
    for m in messages:
        n += 1
        chars += len(content_text(m.get("content")))
    return math.ceil(chars / 4) + 4 * n


@dataclass(frozen=True)
class BucketKey:
    """One token bucket: its store key, size and refill rate (tokens per second)."""

    key: str
    capacity: float
    rate: float


class Buckets(Protocol):
    async def take(self, buckets: list[BucketKey], amount: int) -> tuple[bool, list[float]]:
        """Refill, then take ``amount`` from every bucket if each holds that much (all or none);
        (taken, each bucket's level before taking)."""

    async def add(self, buckets: list[BucketKey], delta: float) -> None:
        """Refill, then change every bucket by ``-delta`` (a refund never overfills)."""


@dataclass
class _Bucket:
    level: float
    stamp: float


class MemoryBuckets:
    """Buckets in this process (at most ``max_buckets``: the oldest go first)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = _MAX_BUCKETS) -> None:
        self._clock = clock
        self._max = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    def _refilled(self, k: BucketKey, now: float) -> _Bucket:
        b = self._buckets.get(k.key)
        if b is None:
            if len(self._buckets) >= self._max:
                self._buckets.pop(next(iter(self._buckets)))
            b = self._buckets[k.key] = _Bucket(level=k.capacity, stamp=now)
        else:
            b.level = min(k.capacity, b.level + (now - b.stamp) * k.rate)
            b.stamp = now
        return b

    async def take(self, buckets: list[BucketKey], amount: int) -> tuple[bool, list[float]]:
        now = self._clock()
        found = [self._refilled(k, now) for k in buckets]
        levels = [b.level for b in found]
        if all(level >= amount for level in levels):
            for b in found:
                b.level -= amount
            return True, levels
        return False, levels

    async def add(self, buckets: list[BucketKey], delta: float) -> None:
        now = self._clock()
        for k in buckets:
            b = self._refilled(k, now)
            b.level = min(k.capacity, b.level - delta)


class FileBuckets:
    """Buckets in a SQLite file that several processes on one host share: the ext_proc workers of
    one ``sidegate up`` (``ext_proc.workers`` > 1 with ``shared_store.type: memory``), so a limit
    holds for the gateway, not for each worker, and a restarted worker keeps the budget.

    One ``BEGIN IMMEDIATE`` transaction per take or settlement (SQLite's write lock: no
    read-modify-write race between processes), on the wall clock (every process on the host
    agrees; ~30 us a take here). A file that cannot be used (locked longer than ``timeout_s``, unreadable,
    a disk error) counts the request in ``fallback``, this process's buckets, with a warning."""

    _CLEAN_EVERY = 1000  # takes between two sweeps of buckets that have refilled (idle ones go)

    def __init__(self, path: str | Path, *, fallback: MemoryBuckets | None = None, timeout_s: float = 0.25,
                 clock: Callable[[], float] = time.time, on_error: Callable[[str], None] | None = None) -> None:
        self.file = SharedFile(path, "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, level REAL NOT NULL, "
                               "stamp REAL NOT NULL, capacity REAL NOT NULL, rate REAL NOT NULL)", timeout_s=timeout_s, clock=clock)
        self.path = self.file.path
        self._fallback = fallback or MemoryBuckets()
        self._on_error = on_error or (lambda kind: None)
        self._takes = 0
        self._log = FailureLog(log)

    def _failed(self, exc: sqlite3.Error) -> None:
        kind = type(exc).__name__
        self._on_error(kind)
        self._log.warning("token budgets file %s failed (%s: %s): counting in this process", self.path, kind, exc)

    def _levels(self, db: sqlite3.Connection, buckets: list[BucketKey], now: float) -> list[float]:
        out = []
        for k in buckets:
            row = db.execute("SELECT level, stamp FROM buckets WHERE key = ?", (k.key,)).fetchone()
            level = k.capacity if row is None else min(k.capacity, row[0] + max(0.0, now - row[1]) * k.rate)
            out.append(level)
        return out

    def _store(self, db: sqlite3.Connection, buckets: list[BucketKey], levels: list[float], now: float) -> None:
        db.executemany("INSERT OR REPLACE INTO buckets (key, level, stamp, capacity, rate) VALUES (?, ?, ?, ?, ?)",
                       [(k.key, lv, now, k.capacity, k.rate) for k, lv in zip(buckets, levels, strict=True)])

    async def take(self, buckets: list[BucketKey], amount: int) -> tuple[bool, list[float]]:
        def change(db: sqlite3.Connection, now: float) -> tuple[bool, list[float]]:
            levels = self._levels(db, buckets, now)
            ok = all(level >= amount for level in levels)
            if ok:
                self._store(db, buckets, [level - amount for level in levels], now)
            self._takes += 1
            if self._takes % self._CLEAN_EVERY == 0:
                db.execute("DELETE FROM buckets WHERE level + (? - stamp) * rate >= capacity", (now,))
            return ok, levels

        try:
            return self.file.run(change)
        except sqlite3.Error as exc:
            self._failed(exc)
            return await self._fallback.take(buckets, amount)

    async def add(self, buckets: list[BucketKey], delta: float) -> None:
        def change(db: sqlite3.Connection, now: float) -> None:
            levels = self._levels(db, buckets, now)
            self._store(db, buckets, [min(k.capacity, level - delta) for k, level in zip(buckets, levels, strict=True)], now)

        try:
            self.file.run(change)
        except sqlite3.Error as exc:
            self._failed(exc)
            await self._fallback.add(buckets, delta)

    async def close(self) -> None:
        self.file.close()


# KEYS: the buckets; ARGV: amount, then capacity and rate of each bucket. Redis's clock, so every
# process agrees; a missing or corrupt bucket starts full; idle buckets expire once full again.
_REFILL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function refilled(i, key)
  local cap, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local v = redis.call('HMGET', key, 'level', 'stamp')
  local level, stamp = tonumber(v[1]), tonumber(v[2])
  if level == nil or stamp == nil or level ~= level then level, stamp = cap, now end
  return math.min(cap, level + math.max(0, now - stamp) * rate), cap, rate
end
local function store(key, level, cap, rate)
  redis.call('HSET', key, 'level', string.format('%.6f', level), 'stamp', string.format('%.6f', now))
  redis.call('PEXPIRE', key, math.ceil((cap - math.min(level, cap) + cap) / rate * 1000) + 1000)
end
"""
_TAKE_LUA = _REFILL_LUA + """
local amount = tonumber(ARGV[1])
local levels, ok = {}, 1
for i, key in ipairs(KEYS) do
  levels[i] = {refilled(i, key)}
  if levels[i][1] < amount then ok = 0 end
end
local out = {ok}
for i, key in ipairs(KEYS) do
  local level, cap, rate = levels[i][1], levels[i][2], levels[i][3]
  out[i + 1] = string.format('%.6f', level)
  if ok == 1 then level = level - amount end
  store(key, level, cap, rate)
end
return out
"""
_ADD_LUA = _REFILL_LUA + """
local delta = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local level, cap, rate = refilled(i, key)
  store(key, math.min(cap, level - delta), cap, rate)
end
return 1
"""


class StoreUnavailable(SidegateError):
    status = 503
    type = "server_error"
    code = "shared_store_unavailable"


class RedisBuckets:
    """Buckets in Redis, shared by every process that uses the same Redis and ``prefix``; falls back
    to ``fallback`` (this process's buckets) when Redis fails and ``fail_open``."""

    def __init__(self, store: SharedStore, *, fallback: MemoryBuckets | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._redis = redis_client(store)
        self._errors = redis_errors()
        # a reply that is not the script's counts as Redis failing too
        self._take_errors: tuple[type[BaseException], ...] = (*self._errors, ValueError, TypeError, IndexError)
        self._take = self._redis.register_script(_TAKE_LUA)
        self._add = self._redis.register_script(_ADD_LUA)
        self._fallback = fallback or MemoryBuckets()
        self._on_error = on_error or (lambda kind: None)
        self._log = FailureLog(log)

    def _failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self._on_error(kind)
        self._log.warning("shared store %s failed (%s: %s): %s", self.store.url, kind, exc,
                          "counting in this process" if self.store.fail_open else "answering 503")
        if not self.store.fail_open:
            raise StoreUnavailable(f"the shared store (Redis at {self.store.url}) is unavailable ({kind}): "
                                   "token budgets cannot be checked; set shared_store.fail_open: true to count locally meanwhile")

    async def _run(self, script: Any, buckets: list[BucketKey], first: float) -> Any:
        args: list[float] = [first]
        for k in buckets:
            args += [k.capacity, k.rate]
        return await asyncio.wait_for(script(keys=[k.key for k in buckets], args=args), self.store.timeout_s)

    async def take(self, buckets: list[BucketKey], amount: int) -> tuple[bool, list[float]]:
        try:
            out = await self._run(self._take, buckets, amount)
            return int(out[0]) == 1, [float(v) for v in out[1:]]
        except self._take_errors as exc:
            self._failed(exc)
            return await self._fallback.take(buckets, amount)

    async def add(self, buckets: list[BucketKey], delta: float) -> None:
        try:
            await self._run(self._add, buckets, delta)
        except self._errors as exc:
            try:
                self._failed(exc)
            except StoreUnavailable:
                return  # the answer has gone out already: nothing to refuse; the settlement is lost
            await self._fallback.add(buckets, delta)

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass
class Charge:
    """What one admitted request took, so the real usage can be settled when the answer comes."""

    estimate: int
    buckets: list[BucketKey]


@dataclass(frozen=True)
class _Limit:
    rule: RateLimit
    rate: float  # tokens per second
    ident: str  # the rule in bucket keys: its model, size and unit, hashed

    def key(self, prefix: str, selector: str | None) -> BucketKey:
        value = "*" if selector is None else (selector if len(selector) <= 64 else hashlib.sha256(selector.encode()).hexdigest())
        return BucketKey(key=f"{prefix}rl:{self.ident}:{value}", capacity=float(self.rule.tokens), rate=self.rate)


class RateLimiter:
    def __init__(self, rules: Iterable[RateLimit], *, clock: Callable[[], float] = time.monotonic,
                 store: SharedStore | None = None, on_store_error: Callable[[str], None] | None = None,
                 buckets_file: str | None = None) -> None:
        self._limits = []
        for r in rules:
            ident = hashlib.sha256(f"{r.model}|{r.tokens}|{r.unit}|{r.selector_key}|{r.selector_value}".encode()).hexdigest()[:12]
            self._limits.append(_Limit(rule=r, rate=r.tokens / r.per_seconds, ident=ident))
        self._prefix = store.prefix if store is not None else "sidegate:"
        memory = MemoryBuckets(clock=clock)
        self.buckets: Buckets = memory
        if store is not None and store.type == "redis" and self._limits:
            self.buckets = RedisBuckets(store, fallback=memory, on_error=on_store_error)
        elif self._limits and (shared_file := buckets_file if buckets_file is not None else workers_file(BUCKETS_FILE)):
            # several ext_proc workers on this host: one budget for all of them, not one each
            self.buckets = FileBuckets(shared_file, fallback=memory, on_error=on_store_error,
                                       timeout_s=store.timeout_s if store is not None else SharedStore.timeout_s)

    def __bool__(self) -> bool:
        return bool(self._limits)

    def _applicable(self, provider: LlmProvider, headers: Mapping[str, str]) -> list[tuple[_Limit, str | None]]:
        out = []
        for lim in self._limits:
            rule = lim.rule
            if rule.model not in (provider.name, provider.model):
                continue
            key = None
            if rule.selector_key:
                key = headers.get(rule.selector_key.lower())
                if key is None or (rule.selector_value is not None and key != rule.selector_value):
                    continue
            out.append((lim, key))
        return out

    async def admit(self, provider: LlmProvider, headers: Mapping[str, str], messages: Iterable[Mapping[str, Any]]) -> Charge | None:
        """Take the request's estimated tokens from every bucket that applies, or raise :class:`RateLimited`."""
        applicable = self._applicable(provider, headers)
        if not applicable:
            return None
        estimate = estimate_tokens(messages)
        for lim, _ in applicable:
            rule = lim.rule
            if estimate > rule.tokens:
                raise RateLimited(
                    f"the request (about {estimate} tokens) is larger than the rate limit for {rule.model!r} "
                    f"({rule.tokens} tokens per {rule.unit}): send a shorter prompt or raise ratelimits[].limit.tokens",
                    retry_after_s=None,
                )
        keys = [lim.key(self._prefix, sel) for lim, sel in applicable]
        taken, levels = await self.buckets.take(keys, estimate)
        if not taken:
            (lim, sel), level = next(((a, lv) for a, lv in zip(applicable, levels) if lv < estimate))
            rule = lim.rule
            wait = math.ceil((estimate - level) / lim.rate)
            who = f" for {rule.selector_key} {sel!r}" if rule.selector_key else ""
            raise RateLimited(
                f"rate limit exceeded for {rule.model!r}{who}: {rule.tokens} tokens per {rule.unit}; "
                f"about {estimate} tokens requested, {max(0, int(level))} left; retry in {wait} s",
                retry_after_s=wait,
            )
        return Charge(estimate=estimate, buckets=keys)

    async def settle(self, charge: Charge, total_tokens: int) -> None:
        """Charge the difference between the provider's reported usage and the estimate taken."""
        extra = total_tokens - charge.estimate
        if extra != 0:
            await self.buckets.add(charge.buckets, extra)

    async def close(self) -> None:
        close = getattr(self.buckets, "close", None)
        if close is not None:
            await close()
