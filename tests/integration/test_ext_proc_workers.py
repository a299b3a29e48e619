"""``ext_proc.workers: 2`` through a real Envoy and two real ext_proc processes started by the
supervisor, against a fake provider (issue 21 items 3 and 5): both workers serve, /metrics sums
them, a worker killed mid-stream fails only its own requests, a stopped (slow) worker leaves the
rotation and comes back, a body of exactly ``max_body_bytes`` goes through and one byte more is 413;
with ``ext_proc.count_tokens: false`` a JSON answer takes 3 gRPC messages, not 4 (issue 21 item 2);
a token rate limit holds for the two workers together, not once per worker; a chain of Responses
API requests, each naming the response before it, holds whichever worker answers each."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ext_proc.config import Config
from ext_proc.control import supervisor as sv
from testkit import gateway_config
from testkit.fake_provider import FakeProvider
from testkit.ports import free_ports_spaced

from .conftest import running_stack

pytestmark = pytest.mark.integration

MAX_BODY = 65536
USER = [{"role": "user", "content": "hello workers"}]
BUDGET_USER = "budget-test"


@dataclass
class Workers:
    cfg: Config
    provider: FakeProvider
    supervisor: sv.Supervisor

    def post(self, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
        data = body if body is not None else json.dumps({"model": "m", "messages": USER}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.cfg.egress.port}/v1/chat/completions", data=data, method="POST",
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback)
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback)
            return str(r.read().decode())

    def hosts(self) -> dict[int, dict[str, str]]:
        """Envoy's view of each worker of the ext_proc cluster, by gRPC port: rq_total, health_flags, ..."""
        out: dict[int, dict[str, str]] = {}
        for line in self.get(f"http://127.0.0.1:{self.cfg.admin_port}/clusters").splitlines():
            m = re.match(r"^sidegate_ext_proc::127\.0\.0\.1:(\d+)::(\w+)::(.*)$", line)
            if m:
                out.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3)
        return out

    def worker_port(self, i: int) -> int:
        return self.cfg.ext_proc.worker_ports(i)[0]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    with FakeProvider(name="fake-w") as fp:
        raw = gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": fp.base_url, "model": "m", "default": True,
                               "access_key": "sk-workers"}])
        raw["ext_proc"].update(workers=2, port=free_ports_spaced(2, 1), http_port=free_ports_spaced(2, 1), count_tokens=False)
        raw["listeners"]["egress_traffic"]["max_body_bytes"] = MAX_BODY
        # a budget for one user only (the other tests send no x-user-id): 500 tokens a day; the
        # workers' file waits up to 5 s for a lock (a worker descheduled while it holds it, on a
        # loaded machine, would otherwise send the other to count in its own process)
        raw["ratelimits"] = [{"model": "m", "selector": {"key": "x-user-id", "value": BUDGET_USER}, "limit": {"tokens": 500, "unit": "day"}}]
        raw["shared_store"] = {"type": "memory", "timeout": "5s"}
        with running_stack(tmp_path_factory, raw) as (cfg, supervisor):
            watcher = threading.Thread(target=supervisor.watch, daemon=True)  # restarts what dies, as `sidegate up` does
            watcher.start()
            try:
                yield Workers(cfg, fp, supervisor)
            finally:
                supervisor.stopping = True
                watcher.join(10)


def _wait(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _sum(metrics: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M))


def test_each_worker_is_a_service_and_both_serve_and_metrics_sum_them(workers: Workers) -> None:
    names = [s.name for s in workers.supervisor.services]
    assert names[:2] == ["ext_proc-1", "ext_proc-2"], names
    pids = {workers.supervisor.procs[n].pid for n in names[:2]}
    assert len(pids) == 2
    state = json.loads((sv.home() / "state.json").read_text())
    assert {s["name"]: s["status"] for s in state["services"]}["ext_proc-2"] == "healthy"
    metrics_url = f"http://127.0.0.1:{workers.cfg.ext_proc.http_port}/metrics"
    before = _sum(workers.get(metrics_url), "sidegate_requests_total")
    hosts_before = {p: int(h.get("rq_total", "0")) for p, h in workers.hosts().items()}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: workers.post(), range(40)))
    assert [r[0] for r in results] == [200] * 40
    assert all(r[1]["x-sidegate-provider"] == "p" for r in results)
    served = {p: int(h.get("rq_total", "0")) - hosts_before.get(p, 0) for p, h in workers.hosts().items()}
    assert set(served) == {workers.worker_port(0), workers.worker_port(1)}
    assert all(n > 0 for n in served.values()), served  # least request spreads the streams over both
    # worker 1's /metrics counts the requests either worker served, and so does worker 2's
    for i in range(2):
        url = f"http://127.0.0.1:{workers.cfg.ext_proc.worker_ports(i)[1]}/metrics"
        assert _sum(workers.get(url), "sidegate_requests_total") - before == 40


def test_a_rate_limit_holds_for_both_workers_together(workers: Workers) -> None:
    """500 tokens a day for one user: 4 requests of 104 tokens fit, whichever worker takes them
    (each worker with a budget of its own admitted up to 8 of these 12)."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "abc " * 100}]}).encode()  # 100 + 4 tokens
    # a 4-word answer: the provider's usage (100 + 4 words) is the estimate, nothing to settle
    headers = {"x-user-id": BUDGET_USER, "x-fake-reply": "ok ok ok ok"}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: workers.post(body, headers), range(12)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * 4 + [429] * 8, statuses
    refused = json.loads(next(r[2] for r in results if r[0] == 429))
    assert refused["error"]["code"] == "rate_limit_exceeded" and BUDGET_USER in refused["error"]["message"]
    assert all(int(r[1]["retry-after"]) > 0 for r in results if r[0] == 429)


def test_without_token_counting_a_json_answer_skips_ext_proc_and_arrives_whole(workers: Workers) -> None:
    """ext_proc.count_tokens: false: 3 messages per request (no response body), the answer intact."""
    stats = f"http://127.0.0.1:{workers.cfg.admin_port}/stats?filter=ext_proc"
    metrics_url = f"http://127.0.0.1:{workers.cfg.ext_proc.http_port}/metrics"

    def sent() -> int:
        return sum(int(m.group(1)) for m in re.finditer(r"^http\.egress\.ext_proc\.\S*stream_msgs_sent: (\d+)$", workers.get(stats), re.M))

    before, tokens = sent(), _sum(workers.get(metrics_url), "sidegate_llm_tokens_total")
    status, headers, body = workers.post()
    assert status == 200 and headers["x-sidegate-provider"] == "p"
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"] == "fake-w says: hello workers" and answer["usage"]["total_tokens"] > 0
    assert sent() - before == 3
    assert _sum(workers.get(metrics_url), "sidegate_llm_tokens_total") == tokens  # the price: not counted


def test_a_body_of_exactly_max_body_bytes_goes_through_and_one_more_byte_is_413(workers: Workers) -> None:
    base = json.dumps({"model": "m", "messages": [{"role": "user", "content": ""}]}, separators=(",", ":")).encode()
    for size, status in ((MAX_BODY, 200), (MAX_BODY + 1, 413)):
        pad = size - len(base)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * pad}]}, separators=(",", ":")).encode()
        assert len(body) == size
        workers.provider.clear()
        got, _, answer = workers.post(body)
        assert got == status, answer[:300]
        if status == 200:
            (seen,) = workers.provider.requests
            assert seen.json["messages"][0]["content"] == "x" * pad  # forwarded whole
        else:
            assert json.loads(answer)["error"]["code"] == "request_too_large"
            assert workers.provider.requests == []


def test_a_chain_of_responses_holds_whichever_worker_answers_each(workers: Workers) -> None:
    """state_storage with the default (memory) store and two workers: each request names the response
    before it, and Envoy spreads them over both workers: the provider gets the whole conversation."""
    before = {port: int(h.get("rq_total", "0")) for port, h in workers.hosts().items()}
    previous: str | None = None
    for i in range(6):
        body = {"model": "m", "input": f"turn {i}", **({"previous_response_id": previous} if previous else {})}
        request = urllib.request.Request(f"http://127.0.0.1:{workers.cfg.egress.port}/v1/responses", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=15) as r:  # noqa: S310
            previous = json.loads(r.read())["id"]
    sent = [m["content"] for m in workers.provider.requests[-1].json["messages"]]
    assert sent == [x for i in range(6) for x in (f"turn {i}", f"fake-w says: turn {i}")][:-1]
    after = {port: int(h.get("rq_total", "0")) for port, h in workers.hosts().items()}
    assert all(after[port] > before.get(port, 0) for port in after), (before, after)  # both workers took part


def test_a_stopped_worker_leaves_the_rotation_and_comes_back(workers: Workers) -> None:
    """A worker that stops answering (SIGSTOP: as slow as a worker gets) fails its health checks
    and Envoy stops sending it streams; the requests go to the other one; SIGCONT brings it back."""
    proc = workers.supervisor.procs["ext_proc-2"]
    port = workers.worker_port(1)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert _wait(lambda: "failed_active_hc" in workers.hosts()[port].get("health_flags", ""), timeout=10), workers.hosts()
        before = int(workers.hosts()[port].get("rq_total", "0"))
        started = time.monotonic()
        results = [workers.post(timeout=10) for _ in range(10)]
        assert [r[0] for r in results] == [200] * 10
        assert time.monotonic() - started < 5  # none waited for the stopped worker's message timeout
        assert int(workers.hosts()[port].get("rq_total", "0")) == before
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert _wait(lambda: workers.hosts()[port].get("health_flags") == "healthy", timeout=10), workers.hosts()
    back = int(workers.hosts()[port].get("rq_total", "0"))

    def serves_again() -> bool:
        assert workers.post()[0] == 200
        return int(workers.hosts()[port].get("rq_total", "0")) > back

    assert _wait(serves_again, timeout=15), workers.hosts()  # it gets streams again


def test_a_worker_killed_mid_stream_fails_its_own_requests_and_the_rest_go_on(workers: Workers) -> None:
    """Requests waiting on a slow provider hold one ext_proc stream each, on both workers; worker 1
    is SIGKILLed: the requests whose stream it held fail as failure_mode_allow: false says (503
    ext_proc_unavailable, not forwarded unchecked), the others complete; requests sent before
    Envoy's health checks notice may fail the same way, none after; the supervisor restarts it."""
    sup = workers.supervisor
    victim = sup.procs["ext_proc-1"]
    assert _wait(lambda: all(h.get("health_flags") == "healthy" for h in workers.hosts().values()))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        workers.provider.clear()
        slow = [pool.submit(workers.post, None, {"x-fake-delay-ms": "1500"}) for _ in range(8)]
        # every request has passed ext_proc's body phase and waits on the provider, its stream open
        assert _wait(lambda: len(workers.provider.requests) >= 8 or all(f.done() for f in slow), timeout=10)
        assert sum(int(h.get("rq_active", "0")) > 0 for h in workers.hosts().values()) == 2, workers.hosts()
        os.kill(victim.pid, signal.SIGKILL)
        # the victim's requests fail at once; the others still wait on the provider
        assert _wait(lambda: any(f.done() for f in slow), timeout=5)
        after = [workers.post(timeout=10) for _ in range(10)]  # while the victim is down or restarting
        outcomes = [f.result() for f in slow]
    statuses = sorted(r[0] for r in outcomes)
    failed = [json.loads(r[2])["error"]["code"] for r in outcomes if r[0] != 200]
    assert 0 < len(failed) < 8, statuses  # some streams were on the victim, some on the other worker
    assert set(failed) == {"ext_proc_unavailable"}, [r[2][:200] for r in outcomes if r[0] != 200]
    assert {r[0] for r in outcomes if r[0] != 200} == {503}
    # sent before Envoy's health checks found the victim gone: a refused stream fails closed too
    assert {(r[0], None if r[0] == 200 else json.loads(r[2])["error"]["code"]) for r in after} <= {(200, None), (503, "ext_proc_unavailable")}
    assert _wait(lambda: "failed_active_hc" in workers.hosts()[workers.worker_port(0)].get("health_flags", "")
                 or (sup.procs["ext_proc-1"].pid != victim.pid and next(s for s in sup.services if s.name == "ext_proc-1").status == "healthy"),
                 timeout=10)
    assert [workers.post()[0] for _ in range(10)] == [200] * 10  # once it is out of the rotation (or back), nothing fails
    assert _wait(lambda: sup.procs["ext_proc-1"].pid != victim.pid and next(
        s for s in sup.services if s.name == "ext_proc-1").status == "healthy", timeout=30)


def test_an_answer_one_worker_cached_is_a_hit_on_the_other(tmp_path_factory: pytest.TempPathFactory) -> None:
    """response_cache with the default (memory) store and two workers: the provider answers once,
    whichever worker gets the repeats (each worker with a cache of its own missed once more)."""
    with FakeProvider(name="fake-c") as fp:
        raw = gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": fp.base_url, "model": "m", "default": True,
                               "access_key": "sk-cache"}])
        raw["ext_proc"].update(workers=2, port=free_ports_spaced(2, 1), http_port=free_ports_spaced(2, 1))
        raw["response_cache"] = {"ttl": "600s"}
        raw["shared_store"] = {"type": "memory", "timeout": "5s"}  # a lock waited for, not a bypass, on a loaded machine
        with running_stack(tmp_path_factory, raw) as (cfg, _):
            one = Workers(cfg, fp, _)
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "cached once for both workers"}]}).encode()
            status, headers, first = one.post(body)
            assert status == 200 and headers["x-sidegate-cache"] == "miss"
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                repeats = list(pool.map(lambda _: one.post(body), range(12)))
            assert [(r[0], r[1]["x-sidegate-cache"]) for r in repeats] == [(200, "hit")] * 12
            assert all(r[2] == first for r in repeats)
            assert len(fp.requests) == 1
