"""Prompt-target flow end to end: full flow, guard-blocked and default-target latency with a per-stage breakdown (issue 6 part 3, issue 4 targets).

A whole sidegate stack (Envoy + ext_proc + Triton with prompt_embed, prompt_guard (an ensemble
of prompt_embed and prompt_guard_head) and function_call on CPU, started by sidegate's
supervisor on free 127.0.0.1 ports) in front of a fake LLM provider and a fake app (both
``testkit/fake_provider.py``; the app answers the targets' endpoints through ``routes=``),
configured like ``tests/integration/test_pipeline.py``: the jailbreak guard, the weather target
(``location``, ``days`` required, ``units`` an optional enum; POST /weather), the currency
target (GET /exchange/{currency_symbol}) and a default target (POST /default, its reply returned
as is). Requests, ``stream: false``, one at a time on a keep-alive connection to the ingress
listener:

* ``full_flow`` — nine weather prompts in turn ("how is the weather in seattle for the next 10
  days", ...), a new one each request: guard → intent →
  function call → POST /weather (through Envoy's internal listener) → the fake LLM answers with
  the endpoint's reply as context;
* ``currency_flow`` — "what is the exchange rate for gbp": the same with a one-parameter tool
  and a GET with the value in the path;
* ``guard_blocked`` — a jailbreak prompt: the guard answers, nothing is forwarded;
* ``default_target`` — "hello" (no target matches → the default target's endpoint). If the
  guard blocks "hello" (it flagged some short greetings), "tell me a joke about cats" is used
  instead and the table says so.

Every answer is checked (the endpoint was called with the right arguments, the LLM was or was
not called, the guard header), so a fast wrong answer cannot pass as a fast one. The scenarios
are interleaved (each round runs every scenario, in a rotating order); the p50 is over all
requests. Stage breakdown: ext_proc's ``sidegate_stage_seconds`` histogram (guard, intent,
function_call, endpoint) is scraped from its ``/metrics`` before and after every request, so the
difference of each stage's ``_sum`` is that request's time in the stage; "rest" is end-to-end
minus the stages (Envoy, the ext_proc gRPC exchange and its own handling, the LLM call).
The pass-through without targets vs Envoy alone is ``bench/overhead.py``.

    python -m bench flow                 # ~2 minutes on 2 busy CPUs
    python -m bench flow --quick         # 3 rounds (smoke test)
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._harness import REPO_ROOT, free_port, load_caption, loadavg, median, percentile, print_table, write_results
from bench.stages import CURRENCY_TARGET, JAILBREAK_PROMPT, WEATHER_PROMPTS, WEATHER_TARGET, weather_args_ok

PART = "flow"

FULL_FLOW_P50_TARGET_MS = 1200.0
FAST_P50_TARGET_MS = 30.0  # guard-blocked and default-target
GUARD_REPLY = "I can only help with weather forecasts and exchange rates."
DEFAULT_REPLY = {"reply": "Hello from the default target!"}
DEFAULT_PROMPT = "hello"
DEFAULT_FALLBACK = "tell me a joke about cats"
STAGES = ("guard", "intent", "function_call", "endpoint")


@dataclass(frozen=True)
class Scenario:
    name: str  # the table row
    kind: str  # what is checked: full_flow, currency_flow, guard_blocked, default_target
    prompt: str
    description: str
    target_ms: float | None


WEATHER_PROMPT = WEATHER_PROMPTS[0][0]
# full_flow requests take bench/stages.py's weather prompts in turn: a prompt sent again right
# after itself would find its own text in llama.cpp's cache and embed from prompt_embed's cache
_weather_turn = itertools.count()
CURRENCY_PROMPT = "what is the exchange rate for gbp"


def scenarios(default_prompt: str = DEFAULT_PROMPT) -> dict[str, Scenario]:
    full = "guard → intent → function call → POST /weather → fake LLM"
    return {s.name: s for s in [
        Scenario("full_flow_same_tool", "full_flow", WEATHER_PROMPT, full + "; the previous function call was for the same "
                 "target (its tool prefix is in llama.cpp's cache)", FULL_FLOW_P50_TARGET_MS),
        Scenario("full_flow_after_switch", "full_flow", WEATHER_PROMPT, full + "; the previous function call was for the "
                 "currency target (tool prefix evaluated again)", FULL_FLOW_P50_TARGET_MS),
        Scenario("currency_flow", "currency_flow", CURRENCY_PROMPT,
                 "guard → intent → function call → GET /exchange/GBP → fake LLM; after a weather call", None),
        Scenario("guard_blocked", "guard_blocked", JAILBREAK_PROMPT, "the guard answers; nothing forwarded", FAST_P50_TARGET_MS),
        Scenario("default_target", "default_target", default_prompt, "guard → intent (no match) → POST /default, reply returned as is",
                 FAST_P50_TARGET_MS),
    ]}


# One round, in this order: function calls alternate targets the way mixed traffic does, and the
# fast requests (no function call: the llama.cpp prefix cache is untouched) sit between them.
ROUND = ("currency_flow", "full_flow_after_switch", "guard_blocked", "default_target", "full_flow_same_tool",
         "guard_blocked", "default_target", "guard_blocked", "default_target")
AGGREGATES = {"full_flow (all)": "full_flow"}  # extra rows: every scenario of that kind


# --------------------------------------------------------------------------- the stack


def _weather(req: Any) -> tuple[int, Any]:
    body = req.json or {}
    return 200, {"location": body.get("location"), "forecast": [{"day": i + 1, "temperature_c": 10 + i} for i in range(body.get("days") or 0)]}


def _exchange(req: Any) -> tuple[int, Any]:
    return 200, {"from": "USD", "to": req.path.rsplit("/", 1)[-1], "rate": 0.79}


def _default(req: Any) -> tuple[int, Any]:
    return 200, DEFAULT_REPLY


ROUTES = {"/weather": _weather, "/exchange/": _exchange, "/default": _default}


def flow_config(llm_url: str, app_port: int, *, with_targets: bool = True) -> dict[str, Any]:
    """The pipeline test's config: guard, weather (3 params), currency and default targets."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from testkit import gateway_config

    raw = gateway_config(
        [{"name": "fake-llm", "provider_interface": "openai", "endpoint": llm_url, "model": "fake-model", "default": True}],
        listeners={"ingress_traffic": {"timeout": "30s"}},
        ext_proc={"message_timeout": "30s"},
    )
    raw.update(
        endpoints={"app": {"endpoint": f"127.0.0.1:{app_port}", "timeout": "5s"}},
        system_prompt="GLOBAL SYSTEM PROMPT",
        prompt_guards={"input_guards": {"jailbreak": {"on_exception": {"message": GUARD_REPLY}}}},
        overrides={"prompt_target_intent_matching_threshold": 0.3},
        model_server={"mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(),
                      "timeout": "30s"},
    )
    if with_targets:
        raw["prompt_targets"] = [
            WEATHER_TARGET,
            CURRENCY_TARGET,
            {"name": "default_target", "default": True, "description": "Everything else.",
             "endpoint": {"name": "app", "path": "/default", "http_method": "POST"}, "auto_llm_dispatch_on_response": False},
        ]
    return raw


class FlowStack:
    """Fake LLM + fake app (in this process) and sidegate (Envoy, ext_proc, Triton) by its supervisor."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "sidegate-home"
        self.supervisor: Any = None
        self.cfg: Any = None
        self.llm: Any = None
        self.app: Any = None
        self.startup_s = math.nan
        self._old_home: str | None = None

    def __enter__(self) -> FlowStack:
        import yaml

        from ext_proc.config import load_config
        from ext_proc.control import supervisor as sv
        from ext_proc.control.envoy_bootstrap import write_bootstrap

        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from testkit.fake_provider import FakeProvider

        self.home.mkdir(parents=True, exist_ok=True)
        # the packaged GGUF is assembled once per $SIDEGATE_HOME: reuse the one already built
        real_models = Path(os.environ.get("SIDEGATE_HOME", Path.home() / ".sidegate")) / "models"
        if real_models.is_dir():
            os.symlink(real_models, self.home / "models")
        self._old_home = os.environ.get("SIDEGATE_HOME")
        os.environ["SIDEGATE_HOME"] = str(self.home)
        try:
            self.llm = FakeProvider(name="fake-llm").start()
            self.app = FakeProvider(name="app", routes=ROUTES).start()
            path = self.home / "flow.yaml"
            path.write_text(yaml.safe_dump(flow_config(self.llm.base_url, self.app.port)))
            self.cfg = load_config(path)
            bootstrap = write_bootstrap(self.cfg, sv.home() / "run")
            services = sv.services_for(self.cfg, str(path), demo=False, bootstrap=bootstrap)
            self.supervisor = sv.Supervisor(services, config_path=str(path), on_event=lambda s, st: None)
            t0 = time.monotonic()
            if not self.supervisor.start_all():
                raise RuntimeError(f"the stack did not start:\n{self.logs()}")
            self.startup_s = time.monotonic() - t0
        except BaseException:
            self.__exit__()
            raise
        return self

    def logs(self, n: int = 2000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted((self.home / "logs").glob("*.log")))

    def __exit__(self, *exc: object) -> None:
        try:
            if self.supervisor is not None:
                self.supervisor.stop_all()
            for fp in (self.app, self.llm):
                if fp is not None:
                    fp.stop()
        finally:
            if self._old_home is None:
                os.environ.pop("SIDEGATE_HOME", None)
            else:
                os.environ["SIDEGATE_HOME"] = self._old_home

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.ext_proc.http_port}/metrics"


# --------------------------------------------------------------------------- requests and checks


_STAGE = re.compile(r'^sidegate_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$', re.M)
_PHASE = re.compile(r'^sidegate_ext_proc_phase_seconds_sum\{listener="ingress",phase="(\w+)"\} (\S+)$', re.M)


def parse_stage_metrics(text: str) -> dict[str, float]:
    """``{"guard.sum": s, "guard.count": n, ..., "phase.request_body": s}`` from ext_proc's /metrics."""
    out = {f"{m.group(2)}.{m.group(1)}": float(m.group(3)) for m in _STAGE.finditer(text)}
    out.update({f"phase.{m.group(1)}": float(m.group(2)) for m in _PHASE.finditer(text)})
    return out


def scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback)
            return parse_stage_metrics(r.read().decode())
    except OSError:
        return {}


def stage_breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds → ms per stage that ran during one request (its count went up), plus ext_proc's
    ingress phase handler time (``ext_proc_ms``: every phase summed)."""
    out = {}
    for stage in STAGES:
        if after.get(f"{stage}.count", 0) > before.get(f"{stage}.count", 0):
            out[stage] = (after.get(f"{stage}.sum", 0) - before.get(f"{stage}.sum", 0)) * 1000
    phases = [k for k in after if k.startswith("phase.")]
    if phases:
        out["ext_proc_handlers"] = sum(after[k] - before.get(k, 0) for k in phases) * 1000
    return out


def function_call_threads(log: Path) -> int | None:
    """The llama.cpp thread count function_call logged at load ("function_call: … warm-up 3.1s, 1 threads")."""
    try:
        m = re.findall(r"function_call: .* loaded in .*warm-up [\d.]+s, (\d+) threads", log.read_text(errors="replace"))
    except OSError:
        return None
    return int(m[-1]) if m else None


class Client:
    """One keep-alive HTTP/1.1 connection to the ingress listener."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, prompt: str) -> tuple[int, float, dict[str, str], bytes]:
        body = json.dumps({"model": "any", "messages": [{"role": "user", "content": prompt}]}).encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            t0 = time.perf_counter()
            try:
                self.conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - t0
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, elapsed, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def check(name: str, status: int, headers: dict[str, str], data: bytes, app_calls: list[Any], llm_calls: list[Any],
          expect: tuple[str, str, int] = WEATHER_PROMPTS[0]) -> str | None:
    """None when the answer is what the scenario must produce, else what is wrong."""
    if status != 200:
        return f"status {status}: {data[:200]!r}"
    try:
        content = json.loads(data)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {data[:200]!r}"
    blocked = headers.get("x-sidegate-guard") == "blocked"
    if name == "guard_blocked":
        return None if blocked and content == GUARD_REPLY and not app_calls and not llm_calls else f"not blocked: {content[:120]!r}"
    if blocked:
        return "blocked by the guard"
    if name == "full_flow":
        calls = [c for c in app_calls if c.path == "/weather"]
        if len(calls) != 1 or not weather_args_ok(calls[0].json, expect):
            return f"weather endpoint calls: {[c.json for c in calls]} (content {content[:120]!r})"
        return None if len(llm_calls) == 1 and content.startswith("fake-llm says:") else f"LLM not called once: {content[:120]!r}"
    if name == "currency_flow":
        calls = [c for c in app_calls if c.path.startswith("/exchange/")]
        if len(calls) != 1 or calls[0].path != "/exchange/GBP":
            return f"exchange endpoint calls: {[c.path for c in calls]} (content {content[:120]!r})"
        return None if len(llm_calls) == 1 else "LLM not called once"
    if name == "default_target":
        ok = [c.path for c in app_calls] == ["/default"] and not llm_calls
        with_reply = _json_or_none(content) == DEFAULT_REPLY
        return None if ok and with_reply else f"not the default target: app {[c.path for c in app_calls]}, llm {len(llm_calls)}, {content[:120]!r}"
    return f"unknown scenario {name}"


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def one_request(stack: FlowStack, client: Client, sc: Scenario) -> dict[str, Any]:
    stack.app.clear()
    stack.llm.clear()
    expect = WEATHER_PROMPTS[next(_weather_turn) % len(WEATHER_PROMPTS)] if sc.kind == "full_flow" else (sc.prompt, "", 0)
    before = scrape(stack.metrics_url)
    status, elapsed, headers, data = client.post(expect[0])
    after = scrape(stack.metrics_url)
    problem = check(sc.kind, status, headers, data, stack.app.requests, stack.llm.requests, expect)
    return {"scenario": sc.name, "kind": sc.kind, "prompt": expect[0], "ms": elapsed * 1000, "ok": problem is None, "problem": problem,
            "stages_ms": stage_breakdown(before, after) if before and after else {}, "loadavg_1m": loadavg()[0]}


# --------------------------------------------------------------------------- summaries and tables


def _row(name: str, mine: list[dict[str, Any]], *, prompt: str, what: str, target_ms: float | None) -> dict[str, Any]:
    ok = [r for r in mine if r["ok"]]
    lat = [r["ms"] for r in ok]
    row: dict[str, Any] = {
        "scenario": name, "prompt": prompt, "what": what, "requests": len(mine), "ok": len(ok),
        "failed": len(mine) - len(ok), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else math.nan, "target_p50_ms": target_ms,
        "loadavg_1m": median(r["loadavg_1m"] for r in mine),
    }
    stages: dict[str, float] = {}
    for stage in (*STAGES, "ext_proc_handlers"):
        values = [r["stages_ms"][stage] for r in ok if stage in r.get("stages_ms", {})]
        if values:
            stages[stage] = percentile(values, 50)
    rest = [r["ms"] - sum(v for k, v in r["stages_ms"].items() if k in STAGES) for r in ok if r.get("stages_ms")]
    if rest:
        stages["rest"] = percentile(rest, 50)
    row["stages_p50_ms"] = stages
    row["breakdown"] = "metrics" if stages else "none (end to end only)"
    row["meets_target"] = None if target_ms is None or not lat else row["p50_ms"] <= target_ms
    row["problems"] = sorted({r["problem"] for r in mine if r["problem"]})[:5]
    return row


def summarize(requests: list[dict[str, Any]], scs: dict[str, Scenario]) -> list[dict[str, Any]]:
    """Per scenario (and per aggregate of a kind): p50/p99/mean of the correct answers, and the
    p50 of each stage that ran (over the requests where it ran)."""
    out = []
    for sc in scs.values():
        mine = [r for r in requests if r["scenario"] == sc.name]
        if mine:
            out.append(_row(sc.name, mine, prompt=sc.prompt, what=sc.description, target_ms=sc.target_ms))
    for name, kind in AGGREGATES.items():
        members = [sc for sc in scs.values() if sc.kind == kind]
        mine = [r for r in requests if r.get("kind") == kind]
        if len(members) > 1 and mine:
            row = _row(name, mine, prompt=members[0].prompt, what=f"every {kind} request above",
                       target_ms=members[0].target_ms)
            at = max(i for i, r in enumerate(out) if r["scenario"] in {m.name for m in members})
            out.insert(at + 1, row)
    return out


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def print_tables(summary: list[dict[str, Any]], *, notes: list[str], rounds: int, startup_s: float) -> None:
    rows = []
    for r in summary:
        st = r["stages_p50_ms"]
        rows.append([r["scenario"], r["ok"], r["failed"], r["p50_ms"], r["p99_ms"],
                     st.get("guard"), st.get("intent"), st.get("function_call"), st.get("endpoint"), st.get("rest"),
                     f"≤ {r['target_p50_ms']:g}" if r["target_p50_ms"] is not None else "-", _yes(r["meets_target"]), r["loadavg_1m"]])
    caption = (f"one request at a time, stream false, {rounds} interleaved round(s); stage columns: p50 of the per-request "
               "difference of ext_proc's sidegate_stage_seconds (guard and intent run side by side, so they overlap and rest can "
               f"be negative; full_flow requests take {len(WEATHER_PROMPTS)} weather prompts in turn, a new one each time; the other scenarios repeat "
               "one prompt, so prompt_embed answers it from its cache of recent vectors: a new prompt adds one embedding, "
               "~12 ms, see `stages`); rest = end to end − stages (Envoy, ext_proc's gRPC "
               "exchange and handling, the fake "
               f"LLM call); stack started in {startup_s:.0f}s; " + "; ".join(notes) + ("; " if notes else "") + load_caption())
    print_table("Prompt-target flow through sidegate (Envoy + ext_proc + Triton on CPU), latency ms",
                ["scenario", "ok", "failed", "p50", "p99", "guard", "intent", "function call", "endpoint", "rest",
                 "target p50", "meets", "load 1m"], rows, caption=caption, digits=1)
    prompts = [[r["scenario"], r["prompt"], r["what"]] for r in summary]
    print_table("Scenarios", ["scenario", "prompt", "path"], prompts)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench flow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="rounds (default 12); one round: " + ", ".join(ROUND))
    ap.add_argument("--budget", type=float, default=300, help="seconds: start no round that would end after this (default 300)")
    ap.add_argument("--no-currency", action="store_true", help="skip the currency flow")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 rounds")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every request")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    load_start = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="sidegate-bench-flow-"))
    notes: list[str] = []
    requests: list[dict[str, Any]] = []
    rounds_done = 0
    with FlowStack(workdir) as stack:
        print(f"[flow] stack up in {stack.startup_s:.0f}s; {load_caption()}", flush=True)
        client = Client(stack.cfg.ingress.port)
        scs = scenarios()
        order = [n for n in ROUND if not (args.no_currency and n == "currency_flow")]
        # "hello" may be flagged by the guard: then the default target is measured with another prompt
        probe = one_request(stack, client, scs["default_target"])
        if not probe["ok"]:
            notes.append(f"default target: {DEFAULT_PROMPT!r} was not answered by the default target ({probe['problem']}), "
                         f"measured with {DEFAULT_FALLBACK!r}")
            scs = scenarios(DEFAULT_FALLBACK)
        for name in order:  # warm-up: one round (the first calls after start are slow)
            one_request(stack, client, scs[name])
        print(f"[flow] warm; {'; '.join(notes) or 'hello goes to the default target'}; {load_caption()}", flush=True)
        round_s: list[float] = []
        for rnd in range(args.rounds):
            if rnd and time.monotonic() + max(round_s) > started + args.budget:
                print(f"[flow] budget: stopping after {rnd} round(s)", flush=True)
                break
            r0 = time.monotonic()
            for name in order:
                r = one_request(stack, client, scs[name])
                r["round"] = rnd
                requests.append(r)
                if args.verbose or not r["ok"]:
                    st = " ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
                    print(f"[flow] r{rnd} {name:22} {r['ms']:8.1f} ms {'ok' if r['ok'] else 'FAILED: ' + str(r['problem'])} [{st}]",
                          flush=True)
            round_s.append(time.monotonic() - r0)
            rounds_done = rnd + 1
            if not args.verbose and rounds_done % 4 == 0:
                print(f"[flow] {rounds_done}/{args.rounds} rounds, {time.monotonic() - started:.0f}s; {load_caption()}", flush=True)
        client.close()
        startup_s = stack.startup_s
        fc_threads = function_call_threads(stack.home / "logs" / "triton.log")
    if fc_threads:
        notes.append(f"function_call runs {fc_threads} llama.cpp thread(s) (chosen from the free cores at load)")
    summary = summarize(requests, scs)
    if not any(r["stages_p50_ms"] for r in summary):
        notes.append("no stage breakdown: ext_proc's /metrics has no sidegate_stage_seconds (end to end only)")
    print_tables(summary, notes=notes, rounds=rounds_done, startup_s=startup_s)
    wall = time.monotonic() - started
    path = write_results(PART, {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"full_flow_p50_ms": FULL_FLOW_P50_TARGET_MS, "guard_blocked_p50_ms": FAST_P50_TARGET_MS,
                    "default_target_p50_ms": FAST_P50_TARGET_MS},
        "notes": notes,
        "summary": summary,
        "round": list(ROUND),
        "function_call_threads": fc_threads,
        "rounds_done": rounds_done,
        "startup_s": startup_s,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "wall_s": wall,
        "requests": requests,
    }, results_dir=args.out)
    print(f"[flow] wrote {path} ({wall:.0f}s)", flush=True)
    return 1 if any(r["failed"] for r in summary) else 0


if __name__ == "__main__":
    raise SystemExit(main())
