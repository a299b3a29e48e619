"""Overhead and memory: sidegate pass-through vs Envoy alone vs the provider itself (issue 6, parts 1 and 5).

The same OpenAI chat-completion request (1 kB and 100 kB bodies, ``stream`` false and true; the
fake provider streams 10 content chunks with no delay) is sent, at concurrency 1 and 32, to:

* ``direct``  — the fake provider (``testkit/fake_provider.py`` in its own process);
* ``envoy``   — a plain Envoy (same binary, hand-written minimal config: listener + router,
  same host rewrite / key injection / access log as sidegate's egress route, no ext_proc);
* ``egress``  — sidegate's egress listener (ext_proc on, pass-through to the default provider);
* ``ingress`` — sidegate's ingress listener with no prompt targets (straight to the provider).

The configurations are interleaved (every repeat runs every cell on every path, in a rotating
order) and the table shows medians over the repeats: req/s, p50/p99 latency, time to the first
response-body byte (TTFB, streams), CPU ms per request of ext_proc, Envoy and the provider
(utime+stime from ``/proc/<pid>/stat``), and the RSS of every process at rest and after the load.

    python -m bench overhead                     # ~4 minutes on 2 CPUs (5 repeats, stops early at --budget)
    python -m bench overhead --quick             # one repeat, small matrix (smoke test)
    python -m bench overhead --client asyncio    # what CI does (no wrk)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._harness import (
    FakeProviderProcess,
    LoadResult,
    PlainEnvoy,
    SidegateStack,
    client_run,
    cpu_seconds,
    csv_list,
    load_caption,
    loadavg,
    median,
    memory_kib,
    print_table,
    write_results,
    wrk_available,
    wrk_run,
)

PART = "overhead"
TARGETS: dict[str, str] = {
    "direct": "fake provider, direct",
    "envoy": "Envoy alone (router only)",
    "egress": "sidegate egress (ext_proc pass-through)",
    "ingress": "sidegate ingress (no prompt targets)",
    "egress_w2": "sidegate egress, ext_proc.workers: 2",
    "egress_nt": "sidegate egress, ext_proc.count_tokens: false (no response-body message for JSON)",
}
SIDEGATE = ("egress", "ingress", "egress_w2", "egress_nt")
# the paths served by a stack of their own: SidegateStack keyword arguments
EXTRA_STACKS: dict[str, dict[str, Any]] = {"egress_w2": {"workers": 2}, "egress_nt": {"extra": {"ext_proc": {"count_tokens": False}}}}
BODY_SIZES = {"1kB": 1024, "100kB": 100 * 1024}
CHUNKS = 10
ADDED_P50_TARGET_MS = 1.0  # issue 21: pass-through adds <= 1.0 ms p50 over Envoy alone (c=1, egress, 1 kB)
# issue 21's other targets, from the same run
RPS_RATIO_TARGET = 0.35  # sidegate egress / Envoy alone req/s at c=32
CPU_PER_REQ_TARGET_MS = 0.3  # ext_proc CPU per egress request
WORKERS_SPEEDUP_TARGET = 1.6  # req/s with ext_proc.workers 2 vs 1 at c=32
_FILLER = (
    "You are a helpful assistant for a travel agency. Answer briefly and politely, cite the booking "
    "reference when there is one, and never invent prices, flight numbers or opening hours. "
)


def chat_body(size: int, *, stream: bool, model: str = SidegateStack.MODEL) -> bytes:
    """A valid chat-completions request of exactly ``size`` bytes: a long system prompt (padding)
    and a short user turn, so the provider's reply stays small whatever the request size."""
    def build(pad: str) -> bytes:
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": pad},
                {"role": "user", "content": "Say hello to the benchmark."},
            ],
            "stream": stream,
            "max_tokens": 64,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    base = len(build(""))
    if size < base:
        raise ValueError(f"a chat body cannot be smaller than {base} bytes")
    n = size - base
    pad = (_FILLER * (n // len(_FILLER) + 1))[:n]
    out = build(pad)
    assert len(out) == size, (len(out), size)
    return out


# --------------------------------------------------------------------------- checks


def check_target(name: str, port: int, body: bytes, *, stream: bool) -> None:
    """One request through ``name``: a 200 with the provider's answer, ``x-sidegate-provider``
    set on sidegate's paths (so ext_proc really ran), and the whole SSE stream for streams."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json", "x-fake-chunks": str(CHUNKS)})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    problem = None
    if resp.status != 200:
        problem = f"status {resp.status}: {data[:300]!r}"
    elif name in SIDEGATE and resp.getheader("x-sidegate-provider") != SidegateStack.PROVIDER:
        problem = f"no x-sidegate-provider header (headers: {resp.getheaders()})"
    elif stream and (data.count(b"data: ") != CHUNKS + 3 or not data.endswith(b"data: [DONE]\n\n")):
        problem = f"expected {CHUNKS + 3} SSE events ending in [DONE], got {data[-300:]!r}"
    elif not stream and b'"chat.completion"' not in data:
        problem = f"not a chat completion: {data[:300]!r}"
    if problem:
        raise RuntimeError(f"{name} (port {port}, stream={stream}): {problem}")


# --------------------------------------------------------------------------- the run


def _procs(fp: FakeProviderProcess, plain: PlainEnvoy, sg: SidegateStack, extra: dict[str, SidegateStack]) -> dict[str, int]:
    out = {"provider": fp.pid, "envoy_plain": plain.pid, "envoy_sidegate": sg.envoy_pid, "ext_proc": sg.ext_proc_pid}
    for target, stack in extra.items():
        out[f"envoy@{target}"] = stack.envoy_pid
        out.update({f"ext_proc@{target}#{i + 1}": pid for i, pid in enumerate(stack.ext_proc_pids)})
    return out


def _envoy_of(target: str) -> str | None:
    if target in EXTRA_STACKS:
        return f"envoy@{target}"
    return {"envoy": "envoy_plain", "egress": "envoy_sidegate", "ingress": "envoy_sidegate"}.get(target)


def _ext_proc_cpu(target: str, cpu: dict[str, float]) -> float:
    """CPU seconds of ``target``'s ext_proc processes (every worker's)."""
    if target in EXTRA_STACKS:
        return sum(v for k, v in cpu.items() if k.startswith(f"ext_proc@{target}#"))
    return cpu["ext_proc"]


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback)
            return r.read().decode()
    except (OSError, ValueError):
        return ""


_PHASE = re.compile(r'^sidegate_ext_proc_phase_seconds_(sum|count)\{listener="(\w+)",phase="(\w+)"\} (\S+)$', re.M)
# http.<listener>.ext_proc.[<filter stat_prefix>.]stream_msgs_sent
_EXT_PROC_STAT = re.compile(r"^http\.(\w+)\.ext_proc\.(?:\w+\.)?(stream_msgs_sent|streams_started): (\d+)$", re.M)


def sidegate_counters(sg: SidegateStack, rename: str | None = None) -> dict[str, float]:
    """Envoy's ext_proc message counters and the ext_proc service's own handler time, per listener
    (``{"egress.msgs": ..., "egress.handler_s": ...}``); empty where a name is not found."""
    out: dict[str, float] = {}
    for m in _EXT_PROC_STAT.finditer(_get(f"http://127.0.0.1:{sg.cfg.admin_port}/stats?filter=ext_proc")):
        key = "msgs" if m.group(2) == "stream_msgs_sent" else "streams"
        out[f"{m.group(1)}.{key}"] = out.get(f"{m.group(1)}.{key}", 0) + float(m.group(3))
    for m in _PHASE.finditer(_get(f"http://127.0.0.1:{sg.cfg.ext_proc.http_port}/metrics")):
        if m.group(1) == "sum":
            out[f"{m.group(2)}.handler_s"] = out.get(f"{m.group(2)}.handler_s", 0) + float(m.group(4))
    if rename:  # egress.* -> egress_w2.* (...): the same listener of another stack
        out = {k.replace("egress.", f"{rename}.", 1): v for k, v in out.items() if k.startswith("egress.")}
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def one_run(
    args: argparse.Namespace, port: int, body: bytes, *, stream: bool, concurrency: int, pids: dict[str, int], workdir: Path,
    counters: Callable[[], dict[str, float]] | None = None,
) -> tuple[LoadResult, dict[str, float], LoadResult | None, dict[str, float]]:
    """One measured load run; returns (load result, CPU seconds per process, TTFB probe,
    increase of the ``counters()`` over the run)."""
    headers = {"x-fake-chunks": str(CHUNKS)}
    c0 = counters() if counters else {}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = (time.process_time(), _children_cpu())
    if args.client == "wrk":
        result = wrk_run(port, body, concurrency=concurrency, duration_s=args.duration, headers=headers, workdir=workdir)
    else:
        result = client_run(port, body, concurrency=concurrency, duration_s=args.duration, headers=headers)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["client"] = (time.process_time() - client_before[0]) + (_children_cpu() - client_before[1])
    c1 = counters() if counters else {}
    delta = {k: v - c0.get(k, 0) for k, v in c1.items()}
    probe = None
    if stream and args.client == "wrk":  # wrk cannot see the first byte: a short asyncio probe does
        probe = client_run(port, body, concurrency=concurrency, duration_s=args.ttfb_duration, headers=headers)
    return result, cpu, probe, delta


def _per_req_ms(cpu_s: float, requests: int) -> float:
    return cpu_s * 1000 / requests if requests else math.nan


def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    load_start = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="sidegate-bench-overhead-"))
    bodies = {label: BODY_SIZES[label] for label in args.bodies}
    cells = [(b, s, c) for b in bodies for s in args.streams for c in args.concurrency]
    runs: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        fp = stack.enter_context(FakeProviderProcess(workdir=workdir))
        plain = stack.enter_context(PlainEnvoy(fp.port, workdir=workdir))
        sg = stack.enter_context(SidegateStack(fp.port, workdir=workdir))
        extra = {t: stack.enter_context(SidegateStack(fp.port, workdir=workdir / t, **kw)) for t, kw in EXTRA_STACKS.items() if t in args.targets}
        ports = {"direct": fp.port, "envoy": plain.port, "egress": sg.egress_port, "ingress": sg.ingress_port}
        ports.update({t: st.egress_port for t, st in extra.items()})
        ports = {t: p for t, p in ports.items() if t in args.targets}
        pids = _procs(fp, plain, sg, extra)
        startup_s = time.monotonic() - started
        print(f"[overhead] stacks up in {startup_s:.1f}s (provider :{fp.port}, Envoy alone :{plain.port}, "
              f"sidegate egress :{sg.egress_port} ingress :{sg.ingress_port}); client: {args.client}; {load_caption()}",
              flush=True)
        for target, port in ports.items():
            for stream in (False, True):
                check_target(target, port, chat_body(1024, stream=stream), stream=stream)
        memory["rest"] = {name: memory_kib(pid) for name, pid in pids.items()}
        # warm-up: every path, body and mode (connection pools, first-use allocations)
        for target, port in ports.items():
            for label in bodies:
                for stream in args.streams:
                    client_run(port, chat_body(bodies[label], stream=stream), concurrency=4, duration_s=2,
                               max_requests=16, headers={"x-fake-chunks": str(CHUNKS)})
        after_runs: list[dict[str, dict[str, int | None]]] = []
        order = [t for t in TARGETS if t in ports]
        total = args.repeats * len(cells) * len(order)
        n = 0
        repeats_done = 0
        for rep in range(args.repeats):
            elapsed = time.monotonic() - started
            if rep and elapsed + (elapsed - startup_s) / rep > args.budget:
                print(f"[overhead] stopping after {rep} repeat(s): another would pass the {args.budget:.0f}s budget", flush=True)
                break
            repeats_done += 1
            for ci, (label, stream, conc) in enumerate(cells):
                body = chat_body(bodies[label], stream=stream)
                k = (rep + ci) % len(order)  # rotate: no path always runs first or last
                for target in order[k:] + order[:k]:
                    n += 1
                    load1 = loadavg()[0]
                    result, cpu, probe, delta = one_run(
                        args, ports[target], body, stream=stream, concurrency=conc, pids=pids, workdir=workdir,
                        counters=(lambda: sidegate_counters(extra[target], rename=target)) if target in extra
                        else (lambda: sidegate_counters(sg)) if target in SIDEGATE else None,
                    )
                    after_runs.append({name: memory_kib(pid) for name, pid in pids.items()})
                    envoy = _envoy_of(target)
                    reqs = result.requests
                    ttfb = probe.ttfb_p50_ms if probe is not None else (result.ttfb_p50_ms if stream else math.nan)
                    row = {
                        "repeat": rep,
                        "body": label,
                        "body_bytes": len(body),
                        "stream": stream,
                        "concurrency": conc,
                        "target": target,
                        "tool": result.tool,
                        "requests": reqs,
                        "errors": result.errors + (probe.errors if probe else 0),
                        "error_detail": {**result.error_detail, **(probe.error_detail if probe else {})},
                        "elapsed_s": result.elapsed_s,
                        "rps": result.rps,
                        "p50_ms": result.p50_ms,
                        "p99_ms": result.p99_ms,
                        "mean_ms": result.mean_ms,
                        "ttfb_p50_ms": ttfb,
                        "ttfb_requests": probe.requests if probe else (reqs if stream else 0),
                        "cpu_ms_per_req": {name: _per_req_ms(v, reqs) for name, v in cpu.items()},
                        "ext_proc_cpu_ms": _per_req_ms(_ext_proc_cpu(target, cpu), reqs) if target in SIDEGATE else math.nan,
                        "envoy_cpu_ms": _per_req_ms(cpu[envoy], reqs) if envoy else math.nan,
                        "provider_cpu_ms": _per_req_ms(cpu["provider"], reqs),
                        "client_cpu_ms": _per_req_ms(cpu["client"], reqs),
                        # Envoy -> ext_proc messages per request, and the part of ext_proc's CPU
                        # spent in sidegate's own handlers (the rest is gRPC and the event loop)
                        "ext_proc_msgs_per_req": delta[f"{target}.msgs"] / reqs if reqs and f"{target}.msgs" in delta else math.nan,
                        "ext_proc_handler_ms": _per_req_ms(delta[f"{target}.handler_s"], reqs) if f"{target}.handler_s" in delta else math.nan,
                        "loadavg_1m": load1,
                    }
                    runs.append(row)
                    if args.verbose:
                        print(f"[overhead] {n}/{total} {label:>5} stream={stream!s:5} c={conc:<2} {target:7} "
                              f"{row['rps']:8.0f} req/s p50 {row['p50_ms']:6.2f} ms p99 {row['p99_ms']:6.2f} ms "
                              f"ttfb {ttfb:6.2f} ms ext_proc {row['ext_proc_cpu_ms']:.3f} ms/req errors {row['errors']} "
                              f"load {load1:.2f}", flush=True)
                    elif n % len(order) == 0:
                        print(f"[overhead] {n}/{total} runs, {time.monotonic() - started:.0f}s, load {load1:.2f}", flush=True)
        memory["after_load"] = {name: memory_kib(pid) for name, pid in pids.items()}
        memory["max_after_run"] = {
            name: {"rss": max((m[name]["rss"] or 0) for m in after_runs)} for name in pids
        } if after_runs else {}
    return {
        "runs": runs,
        "repeats_done": repeats_done,
        "memory": memory,
        "startup_s": startup_s,
        "wall_s": time.monotonic() - started,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "cells": cells,
    }


# --------------------------------------------------------------------------- summaries


_METRICS = ("rps", "p50_ms", "p99_ms", "ttfb_p50_ms", "ext_proc_cpu_ms", "envoy_cpu_ms", "provider_cpu_ms", "client_cpu_ms",
            "ext_proc_msgs_per_req", "ext_proc_handler_ms", "loadavg_1m")


def summarize_runs(runs: list[dict[str, Any]], cells: list[tuple[str, bool, int]]) -> list[dict[str, Any]]:
    """Medians over the repeats per (body, stream, concurrency, target)."""
    out = []
    for label, stream, conc in cells:
        for target in TARGETS:
            mine = [r for r in runs if (r["body"], r["stream"], r["concurrency"], r["target"]) == (label, stream, conc, target)]
            if not mine:
                continue
            row: dict[str, Any] = {"body": label, "stream": stream, "concurrency": conc, "target": target,
                                   "repeats": len(mine), "requests": sum(r["requests"] for r in mine),
                                   "errors": sum(r["errors"] for r in mine)}
            for m in _METRICS:
                row[m] = median(r[m] for r in mine)
            out.append(row)
    return out


def compare(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """sidegate vs Envoy alone (and vs the provider) per cell."""
    by = {(r["body"], r["stream"], r["concurrency"], r["target"]): r for r in summary}
    out = []
    for (label, stream, conc, target), r in by.items():
        if target not in SIDEGATE:
            continue
        env, direct = by.get((label, stream, conc, "envoy")), by.get((label, stream, conc, "direct"))
        if env is None:
            continue
        added = r["p50_ms"] - env["p50_ms"]
        out.append({
            "body": label, "stream": stream, "concurrency": conc, "listener": target,
            "added_p50_ms": added,
            "p50_ratio": r["p50_ms"] / env["p50_ms"] if env["p50_ms"] else math.nan,
            "rps_ratio": r["rps"] / env["rps"] if env["rps"] else math.nan,
            "added_ttfb_ms_vs_envoy": r["ttfb_p50_ms"] - env["ttfb_p50_ms"] if stream else math.nan,
            "added_ttfb_ms_vs_provider": r["ttfb_p50_ms"] - direct["ttfb_p50_ms"] if stream and direct else math.nan,
            "envoy_p50_over_direct_ms": env["p50_ms"] - direct["p50_ms"] if direct else math.nan,
            "ext_proc_cpu_ms": r["ext_proc_cpu_ms"],
            "ext_proc_handler_ms": r["ext_proc_handler_ms"],
            "ext_proc_msgs_per_req": r["ext_proc_msgs_per_req"],
            "envoy_cpu_ms_added": r["envoy_cpu_ms"] - env["envoy_cpu_ms"],
            "meets_target": added <= ADDED_P50_TARGET_MS,
        })
    return out


def headline(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 21's four figures from this run (1 kB JSON bodies, egress): added p50 over Envoy
    alone at c=1, req/s sidegate / Envoy alone at c=32, ext_proc CPU per request (c=1 and c=32),
    req/s with ext_proc.workers 2 / 1 at c=32. NaN where the run did not measure a cell."""
    by = {(r["body"], r["stream"], r["concurrency"], r["target"]): r for r in summary}

    def get(conc: int, target: str, key: str) -> float:
        row = by.get(("1kB", False, conc, target))
        return float(row[key]) if row else math.nan

    hi = max((r["concurrency"] for r in summary), default=32)
    added = get(1, "egress", "p50_ms") - get(1, "envoy", "p50_ms")
    ratio = get(hi, "egress", "rps") / get(hi, "envoy", "rps")
    cpu1, cpu_hi = get(1, "egress", "ext_proc_cpu_ms"), get(hi, "egress", "ext_proc_cpu_ms")
    speedup = get(hi, "egress_w2", "rps") / get(hi, "egress", "rps")
    lean_added = get(1, "egress_nt", "p50_ms") - get(1, "envoy", "p50_ms")
    lean_ratio = get(hi, "egress_nt", "rps") / get(hi, "envoy", "rps")
    lean_cpu = get(hi, "egress_nt", "ext_proc_cpu_ms")
    return [
        {"what": "added p50 over Envoy alone, c=1, egress, 1 kB (ms)", "value": added, "target": f"<= {ADDED_P50_TARGET_MS}",
         "met": added <= ADDED_P50_TARGET_MS},
        {"what": f"req/s sidegate egress / Envoy alone, c={hi}", "value": ratio, "target": f">= {RPS_RATIO_TARGET}", "met": ratio >= RPS_RATIO_TARGET},
        {"what": "ext_proc CPU per egress request, c=1 (ms)", "value": cpu1, "target": f"<= {CPU_PER_REQ_TARGET_MS}", "met": cpu1 <= CPU_PER_REQ_TARGET_MS},
        {"what": f"ext_proc CPU per egress request, c={hi} (ms)", "value": cpu_hi, "target": f"<= {CPU_PER_REQ_TARGET_MS}",
         "met": cpu_hi <= CPU_PER_REQ_TARGET_MS},
        {"what": f"req/s ext_proc.workers 2 / 1, c={hi}, egress", "value": speedup, "target": f">= {WORKERS_SPEEDUP_TARGET}",
         "met": speedup >= WORKERS_SPEEDUP_TARGET},
        {"what": "count_tokens: false: added p50 over Envoy alone, c=1 (ms)", "value": lean_added, "target": f"<= {ADDED_P50_TARGET_MS}",
         "met": lean_added <= ADDED_P50_TARGET_MS},
        {"what": f"count_tokens: false: req/s / Envoy alone, c={hi}", "value": lean_ratio, "target": f">= {RPS_RATIO_TARGET}",
         "met": lean_ratio >= RPS_RATIO_TARGET},
        {"what": f"count_tokens: false: ext_proc CPU per request, c={hi} (ms)", "value": lean_cpu, "target": f"<= {CPU_PER_REQ_TARGET_MS}",
         "met": lean_cpu <= CPU_PER_REQ_TARGET_MS},
    ]


def print_tables(res: dict[str, Any], summary: list[dict[str, Any]], comparison: list[dict[str, Any]], args: argparse.Namespace) -> None:
    load = res["runs"] and [r["loadavg_1m"] for r in res["runs"]]
    load_text = (f"1-min load avg during the runs: median {median(load):.2f}, min {min(load):.2f}, max {max(load):.2f} "
                 f"on {os.cpu_count()} CPUs") if load else ""
    caption = (f"medians over {res['repeats_done']} repeat(s) of {args.duration:g}s runs, client {args.client}"
               f"{' (TTFB: asyncio probe, first SSE event)' if args.client == 'wrk' else ' (TTFB: first SSE event)'}; "
               f"{load_text}; CPU = utime+stime per request; wall {res['wall_s']:.0f}s")
    rows: list[list[Any] | None] = []
    last = None
    for r in summary:
        cell = (r["body"], r["stream"], r["concurrency"])
        if last is not None and cell != last:
            rows.append(None)
        last = cell
        rows.append([
            r["body"], "sse" if r["stream"] else "json", r["concurrency"], r["target"],
            r["rps"], r["p50_ms"], r["p99_ms"], r["ttfb_p50_ms"] if r["stream"] else None,
            r["ext_proc_cpu_ms"] if r["target"] in SIDEGATE else None,
            r["envoy_cpu_ms"] if r["target"] != "direct" else None,
            r["provider_cpu_ms"], r["errors"], r["loadavg_1m"],
        ])
    print_table(
        "Overhead: one chat completion, direct vs Envoy alone vs sidegate",
        ["body", "mode", "conc", "path", "req/s", "p50 ms", "p99 ms", "TTFB p50 ms",
         "ext_proc CPU ms/req", "Envoy CPU ms/req", "provider CPU ms/req", "errors", "load 1m"],
        rows, caption=caption, digits=2,
    )
    rows = []
    last = None
    for c in comparison:
        cell = (c["body"], c["stream"], c["concurrency"])
        if last is not None and cell != last:
            rows.append(None)
        last = cell
        rows.append([
            c["body"], "sse" if c["stream"] else "json", c["concurrency"], c["listener"],
            c["added_p50_ms"], c["p50_ratio"], c["rps_ratio"],
            c["added_ttfb_ms_vs_provider"] if c["stream"] else None,
            c["envoy_p50_over_direct_ms"], c["ext_proc_cpu_ms"], c["ext_proc_handler_ms"], c["ext_proc_msgs_per_req"],
            c["envoy_cpu_ms_added"],
            ("yes" if c["meets_target"] else "NO") if c["concurrency"] == 1 else ("yes" if c["meets_target"] else "no (saturated)"),
        ])
    print_table(
        "sidegate / Envoy alone (pass-through overhead)",
        ["body", "mode", "conc", "listener", "+p50 ms vs Envoy", "p50 ×", "req/s ×", "+TTFB ms vs provider",
         "Envoy +p50 ms vs direct", "ext_proc CPU ms/req", "of which handlers", "gRPC msgs/req",
         "Envoy +CPU ms/req", f"+p50 ≤ {ADDED_P50_TARGET_MS} ms"],
        rows, caption=f"target: pass-through adds ≤ {ADDED_P50_TARGET_MS} ms p50 over Envoy alone (at concurrency 1; "
                      "at 32 every process competes for the same CPUs, so the difference is queueing)",
    )
    print_table("Issue 21 targets (one run, Envoy alone measured beside)", ["what", "figure", "target", "met"],
                [[h["what"], h["value"], h["target"], "—" if math.isnan(h["value"]) else ("yes" if h["met"] else "NO")]
                 for h in headline(summary)], caption=caption, digits=2)
    mem = res["memory"]
    names = {"provider": "fake provider (python)", "envoy_plain": "Envoy alone", "envoy_sidegate": "sidegate Envoy",
             "ext_proc": "sidegate ext_proc (python)"}
    mib = lambda kib: kib / 1024 if kib else None  # noqa: E731
    rows = [[label, mib(mem["rest"][k]["rss"]), mib(mem["after_load"][k]["rss"]), mib(mem["max_after_run"].get(k, {}).get("rss")),
             mib(mem["after_load"][k]["hwm"])] for k, label in names.items()]
    print_table("Memory: RSS (MiB)", ["process", "at rest", "right after the load", "max after a run", "peak (VmHWM)"],
                rows, caption=load_caption(), digits=1)


# --------------------------------------------------------------------------- CLI




def _bool(text: str) -> bool:
    return {"true": True, "sse": True, "1": True, "false": False, "json": False, "0": False}[text.lower()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the whole interleaved matrix (default 5)")
    ap.add_argument("--budget", type=float, default=270, help="seconds: start no repeat that would end after this (default 270)")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per run (default 1; wrk rounds to whole seconds)")
    ap.add_argument("--ttfb-duration", type=float, default=0.5, help="seconds of the asyncio TTFB probe after a wrk stream run")
    ap.add_argument("--concurrency", type=csv_list(int), default=[1, 32], help="comma-separated (default 1,32)")
    ap.add_argument("--bodies", type=csv_list(str, set(BODY_SIZES)), default=list(BODY_SIZES), help="comma-separated of 1kB,100kB")
    ap.add_argument("--streams", type=csv_list(_bool), default=[False, True], help="comma-separated of false,true")
    ap.add_argument("--targets", type=csv_list(str, set(TARGETS)), default=list(TARGETS),
                    help=f"comma-separated of {','.join(TARGETS)} (default all; the headline needs envoy, egress, egress_w2 and egress_nt)")
    ap.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto", help="load generator (auto: wrk if installed)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, 1 s runs, 1 kB only")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.bodies = 1, 1.0, ["1kB"]
    if args.client == "auto":
        args.client = "wrk" if wrk_available() else "asyncio"
    elif args.client == "wrk" and not wrk_available():
        ap.error("--client wrk: wrk is not installed (apt-get install wrk), use --client asyncio")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    res = run_matrix(args)
    summary = summarize_runs(res["runs"], res["cells"])
    comparison = compare(summary)
    print_tables(res, summary, comparison, args)
    path = write_results(PART, {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "chunks_per_stream": CHUNKS,
        "added_p50_target_ms": ADDED_P50_TARGET_MS,
        "summary": summary,
        "comparison": comparison,
        "headline": headline(summary),
        "memory_kib": res["memory"],
        "loadavg_start": res["loadavg_start"],
        "loadavg_end": res["loadavg_end"],
        "repeats_done": res["repeats_done"],
        "startup_s": res["startup_s"],
        "wall_s": res["wall_s"],
        "runs": res["runs"],
    }, results_dir=args.out)
    print(f"[overhead] wrote {path} ({res['wall_s']:.0f}s)", flush=True)
    return 1 if any(r["errors"] for r in summary) else 0


if __name__ == "__main__":
    raise SystemExit(main())
