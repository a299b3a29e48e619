"""Token budgets shared on Redis (``shared_store: {type: redis}``): N processes hammer one budget.

A real ``redis-server`` (testkit/redis_server.py) on a free 127.0.0.1 port, and ``--processes``
OS processes (default 4), each with its own :class:`ext_proc.chat.ratelimit.RateLimiter` and
Redis connection, as each ext_proc process has. They send ``--requests`` admissions each
(concurrently, ``--concurrency`` at a time per process) of a fixed prompt against one budget of
``--tokens`` per minute; the run is short next to a minute, so the refill during it is small and
is counted (Redis's clock, from the first to the last admission). Reported: tokens admitted
against what the budget allowed (tokens + the refill), the error in %, and the admission latency
p50/p99 per process. Then the same with Redis stopped halfway (``fail_open``): client errors
(must be 0) and how many admissions were counted locally.

    python -m bench shared_store [--processes 4] [--tokens 10000] [--requests 400]

Only the limiter runs in these processes (not Envoy or the rest of ext_proc): the budget is what
is shared, and that is what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._harness import percentile, print_table, write_results  # noqa: E402

PART = "shared_store"
PROMPT = [{"role": "user", "content": "x" * 400}]  # 104 tokens by the limiter's estimate


def _worker(url: str, tokens: int, requests: int, concurrency: int, pace_s: float, ready: Any, go: Any, out: Any) -> None:
    from ext_proc.chat.ratelimit import RateLimiter
    from ext_proc.config import LlmProvider, RateLimit, SharedStore, Upstream
    from ext_proc.errors import RateLimited

    provider = LlmProvider(name="p", interface="openai", model="m", default=True, upstream=Upstream(host="127.0.0.1", port=1, tls=False))
    errors: list[str] = []
    limiter = RateLimiter([RateLimit(model="m", tokens=tokens, unit="minute")],
                          store=SharedStore(type="redis", url=url, timeout_s=0.25), on_store_error=errors.append)

    async def run() -> dict[str, Any]:
        admitted = refused = failed = 0
        latencies: list[float] = []
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            nonlocal admitted, refused, failed
            async with sem:
                t0 = time.perf_counter()
                try:
                    await limiter.admit(provider, {}, PROMPT)
                    admitted += 1
                except RateLimited:
                    refused += 1
                except Exception:  # noqa: BLE001 - a client error: what must not happen
                    failed += 1
                latencies.append((time.perf_counter() - t0) * 1000)
                if pace_s:
                    await asyncio.sleep(pace_s)

        await limiter.buckets.take([], 0)  # connect first: the run measures admissions, not connection set-up
        ready.put(1)
        go.wait(60)  # every process starts at once
        await asyncio.gather(*(one(i) for i in range(requests)))
        await limiter.close()
        return {"admitted": admitted, "refused": refused, "failed": failed, "latencies": latencies, "store_errors": len(errors)}

    out.put(asyncio.run(run()))


def _round(url: str, args: argparse.Namespace, *, stop_redis: Any = None, pace_s: float = 0.0) -> list[dict[str, Any]]:
    """One run of every process; ``stop_redis``: (seconds after all started, the function that stops it)."""
    ctx = mp.get_context("spawn")
    ready: Any = ctx.Queue()
    queue: Any = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, args.tokens, args.requests, args.concurrency, pace_s, ready, go, queue))
             for _ in range(args.processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    if stop_redis is not None:
        time.sleep(stop_redis[0])
        stop_redis[1]()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def _now(client: Any) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench shared_store", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=10_000, help="budget per minute (default 10000)")
    ap.add_argument("--requests", type=int, default=400, help="admissions per process (default 400)")
    ap.add_argument("--concurrency", type=int, default=8, help="in flight per process (default 8)")
    args = ap.parse_args(argv)

    import redis

    from testkit.redis_server import RedisServer

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        t0 = _now(client)
        results = _round(server.url, args)
        t1 = _now(client)
        per = 104
        admitted = sum(r["admitted"] for r in results) * per
        refill = args.tokens / 60 * (t1 - t0)  # at most this much more may be admitted during the run
        allowed = args.tokens + refill
        error_pct = (admitted - args.tokens) / args.tokens * 100
        within = args.tokens - per <= admitted <= allowed  # never over, and short by at most one request
        rows = [(f"process {i}", r["admitted"], r["refused"], r["failed"], percentile(r["latencies"], 50), percentile(r["latencies"], 99))
                for i, r in enumerate(results)]
        print_table(f"bench shared_store: {args.processes} processes, one Redis budget of {args.tokens} tokens/minute",
                    ["process", "admitted", "refused (429)", "client errors", "p50 ms", "p99 ms"], rows,
                    caption=f"tokens admitted {admitted:,} vs the budget {args.tokens:,}: {error_pct:+.2f} % (the refill during the "
                            f"{t1 - t0:.2f} s run allowed at most {refill:,.0f} more; {per} tokens per request)")

        client.flushdb()
        failover = _round(server.url, args, stop_redis=(0.3, server.stop), pace_s=0.02)
        failed = sum(r["failed"] for r in failover)
        local = sum(r["store_errors"] for r in failover)
        print_table("bench shared_store: Redis stopped 0.3 s into a paced run (fail_open)",
                    ["processes", "admissions", "client errors", "failed store calls (counted locally)"],
                    [(args.processes, sum(r["admitted"] + r["refused"] for r in failover), failed, local)])
    write_results(PART, {
        "processes": args.processes, "tokens": args.tokens, "requests": args.requests, "concurrency": args.concurrency,
        "admitted_tokens": admitted, "allowed_tokens": allowed, "error_pct": error_pct,
        "p50_ms": [percentile(r["latencies"], 50) for r in results],
        "failover": {"client_errors": failed, "store_errors": local},
    })
    return 0 if within and abs(error_pct) <= 2 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
