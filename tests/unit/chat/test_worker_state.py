"""State the ext_proc workers of one ``sidegate up`` share (``ext_proc.workers`` > 1,
``shared_store.type: memory``): token budgets in one SQLite file, so a limit holds for the gateway
and not once per worker (real OS processes take from one file at once), and the response cache in
another, so an answer one worker stored is a hit on the others. A file that is locked or cannot be
opened counts the budget in the process (with a warning) or bypasses the cache: never a failed
request."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from ext_proc.chat.cache import CacheEntry, FileStore, MemoryStore, ResponseCacheService, StoreFailed
from ext_proc.chat.ratelimit import FileBuckets, MemoryBuckets, RateLimiter, RedisBuckets
from ext_proc.chat import shared_store
from ext_proc.chat.shared_store import prepare_workers_state
from ext_proc.config import RateLimit, ResponseCache, SharedStore
from ext_proc.errors import RateLimited
from ext_proc.names import BUCKETS_FILE, CACHE_FILE, WORKERS_STATE_ENV
from tests.unit.chat.test_shared_budgets import admitted, msgs, provider

# per day: over the few seconds a test takes the bucket refills ~1 token, less than one request
RULE = RateLimit(model="m", tokens=10_000, unit="day")


def _worker(path: str, start: object, out: object) -> None:
    """One ext_proc worker's limiter in its own process: 60 requests of 104 tokens, as fast as it
    can; (admitted, how many times the file failed). A lock is waited for up to 10 s, not
    shared_store's 250 ms: on a loaded machine a process may be descheduled while it holds the lock,
    and counting in the process then is the fallback's test below, not this one's."""
    async def run() -> tuple[int, int]:
        errors: list[str] = []
        rl = RateLimiter([RULE], buckets_file=path, store=SharedStore(timeout_s=10.0), on_store_error=errors.append)
        try:
            start.wait()  # type: ignore[attr-defined]
            return await admitted(rl, 60, 400), len(errors)
        finally:
            await rl.close()
    out.put(asyncio.run(run()))  # type: ignore[attr-defined]


def test_two_worker_processes_share_one_budget_exactly(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    prepare_workers_state(tmp_path)  # as the supervisor does before it starts the workers
    path = str(tmp_path / BUCKETS_FILE)
    procs = [ctx.Process(target=_worker, args=(path, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    # 2 x 60 requests of 104 tokens against 10,000: 96 fit, whichever worker gets them (each
    # worker with its own budget would admit 60 + 60)
    assert sum(n for n, _ in results) == 96 and all(failed == 0 for _, failed in results), results


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "new file"])
async def test_a_worker_opening_the_file_while_another_writes_waits_once_the_file_is_prepared(tmp_path: Path, prepared: bool) -> None:
    """Two workers' first requests at once: one holds the write lock while the other opens the file.
    On a file the supervisor prepared (WAL mode) the second waits its turn; on a new file its
    switch to WAL failed at once with "database is locked" and it counted in its own budget (seen
    in CI: 5 requests admitted against a budget of 4)."""
    if prepared:
        prepare_workers_state(tmp_path)
    path = tmp_path / BUCKETS_FILE
    holding, release = threading.Event(), threading.Event()

    def other_worker() -> None:  # its own connection, in its own thread, inside a write transaction
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        db.execute("CREATE TABLE IF NOT EXISTS other (k TEXT)")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO other VALUES ('x')")
        holding.set()
        release.wait(5)
        db.execute("COMMIT")
        db.close()

    writer = threading.Thread(target=other_worker)
    writer.start()
    assert holding.wait(5)
    errors: list[str] = []
    rl = RateLimiter([RULE], buckets_file=str(path), store=SharedStore(timeout_s=5.0), on_store_error=errors.append)
    threading.Timer(0.2, release.set).start()  # the other worker's transaction ends 0.2 s later
    try:
        assert await admitted(rl, 1, 400) == 1
        assert errors == ([] if prepared else ["OperationalError"])
    finally:
        release.set()
        writer.join(5)
        await rl.close()


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
            assert await admitted(rl, 100, 400) == 96  # this process's own bucket, no request refused for it
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
        await admitted(rl, 1, 400)  # the file exists and holds the bucket: 10,000 - 104
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another worker stuck inside a transaction
        try:
            assert await admitted(rl, 1, 400) == 1
            assert errors == ["OperationalError"]  # "database is locked", after 0.1 s, not forever
            assert memory._buckets  # counted in this process meanwhile
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await admitted(rl, 1, 400) == 1
        (level,) = sqlite3.connect(path).execute("SELECT level FROM buckets").fetchone()
        assert 10_000 - 2 * 104 <= level < 10_000 - 2 * 104 + 2  # two takes in the file, the locked one not
    finally:
        await rl.close()


def test_the_limiter_takes_the_file_the_supervisor_names_only_for_memory_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_STATE_ENV, str(tmp_path))
    assert isinstance(RateLimiter([RULE]).buckets, FileBuckets)
    assert isinstance(RateLimiter([RULE], store=SharedStore()).buckets, FileBuckets)
    assert isinstance(RateLimiter([RULE], store=SharedStore(type="redis", url="redis://127.0.0.1:1/0")).buckets, RedisBuckets)
    assert isinstance(RateLimiter([]).buckets, MemoryBuckets)  # no limits: nothing opened
    in_file = RateLimiter([RULE], store=SharedStore(timeout_s=0.05)).buckets
    assert isinstance(in_file, FileBuckets) and in_file.path == str(tmp_path / BUCKETS_FILE)
    assert in_file.file.timeout_s == 0.05  # shared_store.timeout: how long a locked file is waited for
    monkeypatch.delenv(WORKERS_STATE_ENV)
    assert isinstance(RateLimiter([RULE]).buckets, MemoryBuckets)  # one worker: its own process
    assert not (tmp_path / BUCKETS_FILE).exists()  # opened on the first request, not before


# --------------------------------------------------------------------------- the response cache


async def test_two_workers_share_cached_answers_with_expiry_and_least_recently_used_first(tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:  # every call a moment later, so "least recently used" has an order
        now[0] += 0.001
        return now[0]

    path = str(tmp_path / CACHE_FILE)
    a, b = FileStore(path, max_bytes=300, clock=clock), FileStore(path, max_bytes=300, clock=clock)
    try:
        await a.put("a", b"x" * 90, ttl_s=10)
        assert await b.get("a") == b"x" * 90  # stored by one worker, a hit on the other
        await b.put("b", b"x" * 90, ttl_s=10)
        assert await a.get("a") == b"x" * 90  # a is now the most recently used
        await a.put("c", b"x" * 90, ttl_s=10)  # 3 x 91 bytes fit
        await b.put("d", b"x" * 90, ttl_s=10)  # b goes
        assert await a.get("b") is None
        assert {k for k in "acd" if await b.get(k)} == {"a", "c", "d"}
        now[0] += 10
        assert await a.get("a") is None  # expired
        await b.put("huge", b"x" * 400, ttl_s=10)  # larger than the whole store: not kept
        assert await a.get("huge") is None
        await a.put("c", b"y", ttl_s=10)  # overwritten in place
        assert await b.get("c") == b"y"
    finally:
        await a.close()
        await b.close()


async def test_a_locked_or_unusable_cache_file_is_a_store_failure_not_a_wait(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    store = FileStore(str(path), max_bytes=1000, timeout_s=0.1)
    await store.put("k", b"v", ttl_s=10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreFailed) as info:
            await store.get("k")
        assert info.value.kind == "OperationalError"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.get("k") == b"v"  # opened again, the entry still there
    await store.close()
    with pytest.raises(StoreFailed):
        await FileStore(str(tmp_path / "no-such-dir" / CACHE_FILE), max_bytes=1000).get("k")


async def test_the_cache_takes_the_workers_file_and_bypasses_when_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ResponseCache(ttl_s=60)
    assert isinstance(ResponseCacheService(settings, SharedStore()).store, MemoryStore)  # one process: its own memory
    monkeypatch.setenv(WORKERS_STATE_ENV, str(tmp_path))
    one, two = ResponseCacheService(settings, SharedStore()), ResponseCacheService(settings, SharedStore())
    assert isinstance(one.store, FileStore) and one.store.path == str(tmp_path / CACHE_FILE)
    key = one.key(listener="egress", client_api="openai", provider="p", model="m", body={"messages": [{"role": "user", "content": "hi"}]})
    assert (await two.lookup(key, {})).result == "miss"
    assert await one.put(key, CacheEntry(body=b'{"ok": true}', content_type="application/json", provider="p"))
    hit = await two.lookup(key, {})
    assert hit.result == "hit" and hit.entry is not None and hit.entry.body == b'{"ok": true}'
    await one.close()
    await two.close()
    errors: list[str] = []
    monkeypatch.setenv(WORKERS_STATE_ENV, str(tmp_path / "gone"))
    broken = ResponseCacheService(settings, SharedStore(), on_store_error=errors.append)
    found = await broken.lookup(key, {})
    assert found.result == "bypass" and found.reason == "store_error" and errors == ["OperationalError"]
    await broken.close()


def test_a_store_that_keeps_failing_is_logged_once_per_interval(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    monkeypatch.setattr(shared_store.time, "monotonic", lambda: now[0])
    failures = shared_store.FailureLog(logging.getLogger("sidegate.test"), every_s=10)
    with caplog.at_level(logging.WARNING, logger="sidegate.test"):
        for _ in range(5):
            failures.warning("store %s failed", "x")
        now[0] += 10.5
        failures.warning("store %s failed", "y")
    assert [r.getMessage() for r in caplog.records] == ["store x failed", "store y failed"]
