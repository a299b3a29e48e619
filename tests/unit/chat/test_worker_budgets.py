"""Token budgets shared by the ext_proc workers of one ``sidegate up`` (``ext_proc.workers`` > 1,
``shared_store.type: memory``): one SQLite file, so a limit holds for the gateway and not once
per worker. Real OS processes take from one file at once; a file that is locked or cannot be
opened counts in the process instead, with a warning, and never fails a request."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from ext_proc.chat.ratelimit import FileBuckets, MemoryBuckets, RateLimiter, RedisBuckets
from ext_proc.config import LlmProvider, RateLimit, SharedStore, Upstream
from ext_proc.errors import RateLimited
from ext_proc.names import BUCKETS_ENV

# per day: over the few seconds a test takes the bucket refills ~1 token, less than one request
RULE = RateLimit(model="m", tokens=10_000, unit="day")


def provider() -> LlmProvider:
    return LlmProvider(name="p", interface="openai", model="m", default=True, upstream=Upstream(host="127.0.0.1", port=1, tls=False))


def msgs(chars: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * chars}]  # chars / 4 + 4 tokens


async def admitted(limiter: RateLimiter, n: int, chars: int = 400) -> int:
    ok = 0
    for _ in range(n):
        try:
            await limiter.admit(provider(), {}, msgs(chars))
            ok += 1
        except RateLimited:
            pass
    return ok


def _worker(path: str, start: object, out: object) -> None:
    """One ext_proc worker's limiter in its own process: 60 requests of 104 tokens, as fast as it can."""
    async def run() -> int:
        rl = RateLimiter([RULE], buckets_file=path)
        try:
            start.wait()  # type: ignore[attr-defined]
            return await admitted(rl, 60)
        finally:
            await rl.close()
    out.put(asyncio.run(run()))  # type: ignore[attr-defined]


def test_two_worker_processes_share_one_budget_exactly(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    path = str(tmp_path / "buckets.sqlite")
    procs = [ctx.Process(target=_worker, args=(path, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    counts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    # 2 x 60 requests of 104 tokens against 10,000: 96 fit, whichever worker gets them (each
    # worker with its own budget would admit 60 + 60)
    assert sum(counts) == 96, counts


async def test_a_settlement_and_a_restart_are_seen_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "buckets.sqlite")
    a, b = RateLimiter([RULE], buckets_file=path), RateLimiter([RULE], buckets_file=path)
    try:
        assert isinstance(a.buckets, FileBuckets)
        charge = await a.admit(provider(), {}, msgs(400))
        assert charge is not None
        await a.settle(charge, 9_950)  # a long answer: 50 tokens left, for every worker
        with pytest.raises(RateLimited, match="50 left"):
            await b.admit(provider(), {}, msgs(400))
    finally:
        await a.close()
        await b.close()
    again = RateLimiter([RULE], buckets_file=path)  # a restarted worker finds the budget where it was
    try:
        with pytest.raises(RateLimited):
            await again.admit(provider(), {}, msgs(400))
        assert await admitted(again, 3, chars=100) == 1  # 29 tokens fit once in the 50 left
    finally:
        await again.close()


async def test_a_file_that_cannot_be_opened_counts_in_the_process_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[str] = []
    rl = RateLimiter([RULE], buckets_file=str(tmp_path / "no-such-dir" / "buckets.sqlite"), on_store_error=errors.append)
    try:
        with caplog.at_level(logging.WARNING, logger="sidegate.ratelimit"):
            assert await admitted(rl, 100) == 96  # this process's own bucket, no request refused for it
        assert errors and set(errors) == {"OperationalError"}
        assert "counting in this process" in caplog.text and "no-such-dir" in caplog.text
    finally:
        await rl.close()


async def test_a_file_locked_longer_than_the_timeout_counts_locally_then_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "buckets.sqlite"
    errors: list[str] = []
    memory = MemoryBuckets()
    buckets = FileBuckets(path, fallback=memory, timeout_s=0.1, on_error=errors.append)
    rl = RateLimiter([RULE], buckets_file=str(path))
    rl.buckets = buckets
    try:
        await admitted(rl, 1)  # the file exists and holds the bucket: 10,000 - 104
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker stuck inside a transaction
        try:
            assert await admitted(rl, 1) == 1
            assert errors == ["OperationalError"]  # "database is locked", after 0.1 s, not forever
            assert memory._buckets  # counted in this process meanwhile
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await admitted(rl, 1) == 1
        (level,) = sqlite3.connect(path).execute("SELECT level FROM buckets").fetchone()
        assert 10_000 - 2 * 104 <= level < 10_000 - 2 * 104 + 2  # two takes in the file, the locked one not
    finally:
        await rl.close()


def test_the_limiter_takes_the_file_the_supervisor_names_only_for_memory_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUCKETS_ENV, str(tmp_path / "b.sqlite"))
    assert isinstance(RateLimiter([RULE]).buckets, FileBuckets)
    assert isinstance(RateLimiter([RULE], store=SharedStore()).buckets, FileBuckets)
    assert isinstance(RateLimiter([RULE], store=SharedStore(type="redis", url="redis://127.0.0.1:1/0")).buckets, RedisBuckets)
    assert isinstance(RateLimiter([]).buckets, MemoryBuckets)  # no limits: nothing opened
    monkeypatch.delenv(BUCKETS_ENV)
    assert isinstance(RateLimiter([RULE]).buckets, MemoryBuckets)  # one worker: its own process
    assert not (tmp_path / "b.sqlite").exists()  # opened on the first request, not before
