"""The response cache (``response_cache``) on egress: what a hit costs next to a pass-through.

One stack (sidegate's ext_proc + its Envoy, started by the supervisor) with
``response_cache: {ttl: 600s}`` (the memory store) in front of the fake provider in its own
process. At concurrency 1 for ``--seconds`` each, alternating rounds:

* ``pass-through``: the request with ``cache-control: no-cache`` (the cache is bypassed: neither
  read nor written), so it goes to the provider as any request of a config without a cache;
* ``hit``: one fixed request, cached once before the rounds, so every request is a hit.

Reported: p50/p99 of each, the hit's p50 minus the pass-through's ("added over a pass-through";
negative: a hit is faster, it skips the provider), and the provider calls during the hit rounds,
read from ext_proc's own metrics (``sidegate_upstream_responses_total``: must not move).

    python -m bench cache [--seconds 10] [--rounds 3]
    python -m bench cache --semantic [ARGS]     (the semantic cache's precision: bench/cache_semantic.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._harness import (  # noqa: E402
    FakeProviderProcess,
    SidegateStack,
    client_run,
    ext_proc_counters,
    load_caption,
    median,
    print_table,
    write_results,
)

PART = "cache"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "what is a response cache?"}]}).encode()


def upstream_responses(stack: SidegateStack) -> float:
    return sum(ext_proc_counters(stack.cfg.ext_proc.http_port, "sidegate_upstream_responses_total").values())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--semantic" in argv:
        from bench import cache_semantic

        return cache_semantic.main([a for a in argv if a != "--semantic"])
    ap = argparse.ArgumentParser(prog="python -m bench cache", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per round and kind (default 10)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    runs: dict[str, list[dict[str, float]]] = {"pass-through": [], "hit": []}
    provider_calls_during_hits = 0.0
    with FakeProviderProcess() as fp, SidegateStack(fp.port, extra={"response_cache": {"ttl": "600s"}}) as sg:
        port = sg.egress_port
        first = client_run(port, BODY, concurrency=1, duration_s=5, max_requests=1)  # the miss that stores it
        assert first.errors == 0, first.error_detail
        client_run(port, BODY, concurrency=1, duration_s=2, headers={"cache-control": "no-cache"})  # warm both paths
        client_run(port, BODY, concurrency=1, duration_s=2)
        for _ in range(args.rounds):
            r = client_run(port, BODY, concurrency=1, duration_s=args.seconds, headers={"cache-control": "no-cache"})
            runs["pass-through"].append({"p50": r.p50_ms, "p99": r.p99_ms, "n": r.requests, "errors": r.errors})
            before = upstream_responses(sg)
            r = client_run(port, BODY, concurrency=1, duration_s=args.seconds)
            provider_calls_during_hits += upstream_responses(sg) - before
            runs["hit"].append({"p50": r.p50_ms, "p99": r.p99_ms, "n": r.requests, "errors": r.errors})

    p50 = {k: median(x["p50"] for x in v) for k, v in runs.items()}
    p99 = {k: median(x["p99"] for x in v) for k, v in runs.items()}
    added = p50["hit"] - p50["pass-through"]
    rows = [(k, sum(int(x["n"]) for x in runs[k]), sum(int(x["errors"]) for x in runs[k]), p50[k], p99[k]) for k in runs]
    print_table("bench cache: egress at c=1, the memory store", ["kind", "requests", "errors", "p50 ms", "p99 ms"], rows,
                caption=load_caption(f"hit p50 minus pass-through p50: {added:+.2f} ms; provider calls during the hit rounds: "
                                     f"{provider_calls_during_hits:.0f}; medians of {args.rounds} rounds of {args.seconds:g} s"))
    write_results(PART, {"rounds": runs, "p50_ms": p50, "p99_ms": p99, "added_p50_ms": added,
                         "provider_calls_during_hits": provider_calls_during_hits})
    return 0 if added <= 2.0 and provider_calls_during_hits == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
