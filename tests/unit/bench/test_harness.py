"""The benchmark harness: stats, tables, result files, the load client, and ``python -m bench``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import _harness as h
from bench.overhead import BODY_SIZES, chat_body, compare, summarize_runs
from testkit import ports
from testkit.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parents[3]


def test_cpu_per_call_counts_the_calls_of_each_round_and_warms_up_first() -> None:
    calls: list[int] = []
    per_round = h.cpu_us_per_call(lambda: calls.append(sum(range(2000))), rounds=3, n=50, warmup=5)
    assert len(calls) == 5 + 3 * 50 and len(per_round) == 3
    assert all(us >= 0 for us in per_round)
    # a call that burns ~1 ms of CPU is measured in that order (process time: sleeping does not count)
    slow = h.cpu_us_per_call(lambda: sum(range(20_000)), rounds=2, n=20, warmup=0)
    idle = h.cpu_us_per_call(lambda: __import__("time").sleep(0.001), rounds=2, n=20, warmup=0)
    assert min(slow) > max(idle)


def test_percentile_interpolates_like_numpy() -> None:
    data = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert h.percentile(data, 0) == 1.0
    assert h.percentile(data, 50) == 3.0
    assert h.percentile(data, 100) == 5.0
    assert h.percentile(data, 25) == 2.0
    assert h.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(h.percentile([], 50))
    with pytest.raises(ValueError):
        h.percentile(data, 101)


def test_median_skips_missing_values() -> None:
    assert h.median([3.0, math.nan, 1.0, None, 2.0]) == 2.0  # type: ignore[list-item]
    assert math.isnan(h.median([math.nan]))


def test_summarize() -> None:
    s = h.summarize([float(i) for i in range(1, 101)])
    assert s["n"] == 100 and s["mean"] == 50.5 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)


def test_print_table_formats_cells_and_sections(capsys: pytest.CaptureFixture[str]) -> None:
    text = h.print_table(
        "demo table", ["name", "value", "missing"], [["a", 1.23456, None], None, ["b", 12345.6, math.nan]], caption="cap"
    )
    assert capsys.readouterr().out == text
    assert "demo table" in text and "cap" in text
    assert "1.23" in text and "12,346" in text
    row_b = next(line for line in text.splitlines() if " b " in line)
    assert row_b.rstrip("│┃ ").endswith("-")  # NaN prints as "-"


def test_write_results_records_the_machine(tmp_path: Path) -> None:
    h.set_command("python -m bench demo --fast")
    try:
        path = h.write_results("demo", {"rows": [{"x": math.nan, "y": 1.5}]}, results_dir=tmp_path)
    finally:
        h.set_command("")
    assert path == tmp_path / "demo.json"
    doc = json.loads(path.read_text())
    assert doc["part"] == "demo"
    assert doc["rows"] == [{"x": None, "y": 1.5}]  # NaN is not JSON: null
    meta = doc["meta"]
    assert meta["command"] == "python -m bench demo --fast"
    assert meta["cpu_count"] == os.cpu_count()
    assert set(meta["loadavg"]) == {"1m", "5m", "15m"}
    assert meta["date"].endswith("+00:00")
    assert "commit" in meta["git"] and "dirty" in meta["git"]


def test_proc_readers_on_this_process() -> None:
    assert h.cpu_seconds(os.getpid()) > 0
    mem = h.memory_kib(os.getpid())
    assert mem["rss"] and mem["hwm"] and mem["hwm"] >= mem["rss"] > 1000
    assert math.isnan(h.cpu_seconds(2**22 + 12345))  # no such pid


def test_gpu_memory_reads_nvidia_smis_compute_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert h.gpu_memory_mib() == {}  # no nvidia-smi: no GPU
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '4242, 862'\necho '17, 586'\n")
    fake.chmod(0o755)
    assert h.gpu_memory_mib() == {4242: 862, 17: 586}


@pytest.mark.parametrize("label", list(BODY_SIZES))
@pytest.mark.parametrize("stream", [False, True])
def test_chat_body_has_the_exact_size(label: str, stream: bool) -> None:
    body = chat_body(BODY_SIZES[label], stream=stream)
    assert len(body) == BODY_SIZES[label]
    parsed = json.loads(body)
    assert parsed["stream"] is stream and parsed["messages"][-1]["role"] == "user"


def test_client_run_against_the_fake_provider() -> None:
    """The asyncio client parses content-length and chunked (SSE) replies and sees the first byte."""
    with FakeProvider(name="fake-bench-test") as fp:
        for stream in (False, True):
            r = h.client_run(fp.port, chat_body(1024, stream=stream), concurrency=2, duration_s=5, max_requests=6,
                             headers={"x-fake-chunks": "10"})
            assert (r.requests, r.errors) == (6, 0), r
            assert 0 < r.ttfb_p50_ms <= r.p50_ms <= r.p99_ms
        r = h.client_run(fp.port, chat_body(1024, stream=False), concurrency=1, duration_s=5, max_requests=2,
                         headers={"x-fake-status": "503"})
        assert r.requests == 0 and r.error_detail == {"status_503": 2}


def test_summaries_and_ratios() -> None:
    def run(target: str, p50: float, rps: float, rep: int) -> dict[str, object]:
        return {"body": "1kB", "stream": False, "concurrency": 1, "target": target, "repeat": rep, "requests": 10, "errors": 0,
                "rps": rps, "p50_ms": p50, "p99_ms": p50 * 2, "ttfb_p50_ms": math.nan, "ext_proc_cpu_ms": 0.5,
                "envoy_cpu_ms": 0.2, "provider_cpu_ms": 0.1, "client_cpu_ms": 0.1, "ext_proc_msgs_per_req": 4.0,
                "ext_proc_handler_ms": 0.1, "loadavg_1m": 1.0}

    runs = [run("envoy", 1.0, 1000, 0), run("envoy", 3.0, 500, 1), run("envoy", 2.0, 800, 2),
            run("egress", 3.0, 400, 0), run("egress", 3.5, 300, 1), run("egress", 2.5, 500, 2)]
    summary = summarize_runs(runs, [("1kB", False, 1)])
    assert [(s["target"], s["p50_ms"], s["rps"]) for s in summary] == [("envoy", 2.0, 800), ("egress", 3.0, 400)]
    (c,) = compare(summary)
    assert c["listener"] == "egress" and c["added_p50_ms"] == 1.0 and c["p50_ratio"] == 1.5 and c["rps_ratio"] == 0.5
    assert c["meets_target"] is True


def test_plain_envoy_config_is_valid_for_envoy(tmp_path: Path) -> None:
    from ext_proc.control.envoy_bin import envoy_binary

    cfg = h.plain_envoy_config(listen_port=h.free_port(), admin_port=h.free_port(), upstream_port=h.free_port())
    assert [f["name"] for f in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]] == [
        "envoy.filters.network.http_connection_manager"
    ]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bench_list() -> None:
    out = _bench("--list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert "overhead" in names
    assert all(not n.startswith("_") for n in names)
    for alias, target in (("guard", "guard_eval"), ("function_call", "function_call_eval")):
        if (ROOT / "bench" / f"{target}.py").exists():
            assert target in names and f"alias: {alias}" in out.stdout


def test_bench_unknown_part() -> None:
    out = _bench("no_such_part")
    assert out.returncode == 2
    assert "unknown part 'no_such_part'" in out.stderr and "overhead" in out.stderr


def test_bench_passes_arguments_to_the_part() -> None:
    out = _bench("overhead", "--help")
    assert out.returncode == 0, out.stderr
    assert "--repeats" in out.stdout and "python -m bench overhead" in out.stdout


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = iter([40001, 40001, 40001, 40002])  # the kernel may offer a just-closed port again

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(kernel)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(ports.socket, "socket", Socket)
    monkeypatch.setattr(ports, "_PORTS_GIVEN", set())
    assert [ports.free_port(), ports.free_port()] == [40001, 40002]


def test_overhead_headline_reads_issue_21s_figures_from_one_run() -> None:
    from bench.overhead import headline

    def row(conc: int, target: str, rps: float, p50: float, cpu: float = math.nan) -> dict[str, object]:
        return {"body": "1kB", "stream": False, "concurrency": conc, "target": target, "rps": rps, "p50_ms": p50, "ext_proc_cpu_ms": cpu}

    summary = [row(1, "envoy", 2000, 0.5), row(1, "egress", 600, 1.3, 0.9), row(32, "envoy", 4000, 8.0),
               row(32, "egress", 1600, 20.0, 0.25), row(32, "egress_w2", 2800, 11.0, 0.3)]
    got = {h["what"].split(",")[0]: (round(h["value"], 3), h["met"]) for h in headline(summary)}
    assert got["added p50 over Envoy alone"] == (0.8, True)
    assert got["req/s sidegate egress / Envoy alone"] == (0.4, True)
    assert got["ext_proc CPU per egress request"] == (0.25, True)  # the c=32 row (the last of that name)
    assert got["req/s ext_proc.workers 2 / 1"] == (1.75, True)
    missing = headline([row(1, "envoy", 2000, 0.5), row(1, "egress", 600, 1.8, 0.9)])
    assert math.isnan(missing[-1]["value"]) and not missing[-1]["met"] and not missing[0]["met"]


def test_ext_proc_counters_reads_one_counters_labelled_samples() -> None:
    """What the cache and routing benches read from ext_proc's /metrics: one counter's samples by
    their labels, not its _created twin, another counter, or a comment."""
    import http.server
    import threading

    text = ('# HELP sidegate_model_server_errors_total Failed calls to the model server\n'
            'sidegate_model_server_errors_total{model="route_judge"} 6.0\n'
            'sidegate_model_server_errors_total{model="route"} 0.0\n'
            'sidegate_model_server_errors_created{model="route"} 1.7e9\n'
            'sidegate_upstream_responses_total{provider="p"} 3.0\n').encode()

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert h.ext_proc_counters(port, "sidegate_model_server_errors_total") == {'model="route_judge"': 6.0, 'model="route"': 0.0}
        assert h.ext_proc_counters(port, "sidegate_upstream_responses_total") == {'provider="p"': 3.0}
        assert h.ext_proc_counters(port, "sidegate_absent_total") == {}
    finally:
        server.shutdown()
        server.server_close()
