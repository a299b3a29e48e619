"""ext_proc.control.supervisor pieces that need no stack (the whole `sidegate up`: tests/integration/test_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ext_proc.control import supervisor as sv


def _serve(handler: type[BaseHTTPRequestHandler]) -> str:
    """``handler`` on a free 127.0.0.1 port in a daemon thread; its base URL."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


class _Health:
    """A /healthz that answers each phase of ``phases`` in turn (the last one for ever)."""

    def __init__(self, phases: list[dict[str, str]]) -> None:
        self.phases = phases
        self.calls = 0
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = json.dumps(health.phases[min(health.calls, len(health.phases) - 1)]).encode()
                health.calls += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.url = _serve(Handler) + "/healthz"


@pytest.fixture
def running() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _warmed(url: str, proc: subprocess.Popen[bytes], warm_timeout: float) -> tuple[list[str], sv.Service]:
    """The events `_wait_warm` showed for a service whose health answers from ``url``, and the service after."""
    events: list[str] = []
    svc = sv.Service(name="ext_proc", argv=[], health_url=url, listens="", warm_timeout=warm_timeout)
    sup = sv.Supervisor([svc], config_path="x.yaml", on_event=lambda s, status: events.append(status))
    sup.write_state = lambda: None  # type: ignore[method-assign]  # no state file for this test
    sup.procs[svc.name] = proc
    sup._wait_warm(svc)
    return events, svc


def _supervise(url: str, proc: subprocess.Popen[bytes], warm_timeout: float) -> list[str]:
    return _warmed(url, proc, warm_timeout)[0]


def test_warming_steps_are_shown_until_done(running: subprocess.Popen[bytes]) -> None:
    health = _Health([{"status": "ok", "warm": "embedding prompt targets"}] * 2
                     + [{"status": "ok", "warm": "pre-filling function_call prompts (0/2)"},
                        {"status": "ok", "warm": "pre-filling function_call prompts (1/2)"},
                        {"status": "ok", "warm": "done"}])
    events = _supervise(health.url, running, warm_timeout=30)
    assert events == ["warming: embedding prompt targets", "warming: pre-filling function_call prompts (0/2)",
                      "warming: pre-filling function_call prompts (1/2)"]
    assert health.calls == 5  # it stopped asking once it read "done"


def test_a_service_without_the_field_or_one_that_never_warms_is_not_waited_for_long(running: subprocess.Popen[bytes]) -> None:
    assert _supervise(_Health([{"status": "ok"}]).url, running, warm_timeout=30) == []  # an older ext_proc: ready
    assert _supervise(_Health([{"status": "ok", "warm": "done: the model server does not answer yet"}]).url,
                      running, warm_timeout=30) == []
    stuck = _supervise(_Health([{"status": "ok", "warm": "embedding prompt targets"}]).url, running, warm_timeout=0.5)
    assert stuck == ["warming: embedding prompt targets"]  # then start_all marks it healthy anyway


def test_a_problem_found_while_warming_is_kept_for_up_and_status_to_print(running: subprocess.Popen[bytes]) -> None:
    def warning_after(warm: str) -> str:
        return _warmed(_Health([{"status": "ok", "warm": warm}]).url, running, warm_timeout=30)[1].warning

    assert warning_after("done: function_call refuses prompt target(s) big, whose requests will get 400: too long") == \
        "function_call refuses prompt target(s) big, whose requests will get 400: too long"
    assert warning_after("done") == ""
    assert "warning" in sv.Service(name="x", argv=[], health_url="", listens="").public()  # in the state file `status` reads


def test_a_warm_up_still_running_at_warm_timeout_is_a_warning(running: subprocess.Popen[bytes]) -> None:
    _, svc = _warmed(_Health([{"status": "ok", "warm": "pre-filling function_call prompts (0/2)"}]).url, running, warm_timeout=0.5)
    assert svc.warning == "still pre-filling function_call prompts (0/2) after 0.5 s: the first requests may be slow or time out"


def test_ext_proc_waits_for_a_pre_fill_as_long_as_its_deadline(sidegate_home: object) -> None:
    from ext_proc.config import build_config
    from testkit import gateway_config

    target = {"name": "weather", "description": "the weather in a city", "auto_llm_dispatch_on_response": False,
              "parameters": [{"name": "city", "type": "str", "required": True}], "endpoint": {"name": "app", "path": "/w"}}
    raw = gateway_config([], endpoints={"app": {"endpoint": "127.0.0.1:1"}}, prompt_targets=[target],
                         model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1", "models": {"function_call": {"timeout": "60s"}}})
    cfg = build_config(raw, env={})
    assert cfg.model_server.prefill_timeout_s == 240
    (svc,) = [s for s in sv.services_for(cfg, "x.yaml", demo=False, bootstrap=sv.home() / "envoy.yaml") if s.name == "ext_proc"]
    assert svc.warm_timeout == 300  # 60 s for the model server to answer, then a cold first pre-fill


class _ModelsApi:
    """Triton's HTTP repository API for loads: POST /v2/repository/models/<name>/load, refusing ``bad``."""

    def __init__(self, bad: set[str]) -> None:
        self.loaded: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.split("/")[-2]
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = name not in bad
                body = b"" if ok else json.dumps({"error": f"failed to load '{name}'"}).encode()
                if ok:
                    api.loaded.append(name)
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.url = _serve(Handler)


def _loaded_later(api: _ModelsApi, proc: subprocess.Popen[bytes], *, restart: bool) -> tuple[bool, list[str], sv.Service]:
    events: list[str] = []
    svc = sv.Service(name="triton", argv=[], health_url="", listens="", later_models=["function_call", "chat_llm"],
                     models_api=api.url)
    sup = sv.Supervisor([svc], config_path="x.yaml", on_event=lambda s, status: events.append(status))
    sup.write_state = lambda: None  # type: ignore[method-assign]
    sup.procs[svc.name] = proc
    return sup._load_later(svc, restart=restart), events, svc


def test_the_llms_load_after_triton_serves_each_step_shown(running: subprocess.Popen[bytes]) -> None:
    api = _ModelsApi(bad=set())
    ok, events, svc = _loaded_later(api, running, restart=False)
    assert ok and api.loaded == ["function_call", "chat_llm"]
    assert events == ["loading function_call", "loading chat_llm"] and svc.warning == ""


def test_an_llm_that_does_not_load_fails_the_start_and_is_a_warning_after_a_restart(running: subprocess.Popen[bytes]) -> None:
    ok, events, _ = _loaded_later(_ModelsApi(bad={"function_call"}), running, restart=False)
    assert not ok and events[-1].startswith("failed (function_call did not load: HTTP 400: failed to load 'function_call'")
    ok, events, svc = _loaded_later(_ModelsApi(bad={"function_call"}), running, restart=True)
    assert ok and events[-1] == "healthy"  # serving the guard and intent meanwhile
    assert svc.warning.startswith("function_call did not load after a restart: HTTP 400")


def test_triton_starts_with_the_quick_models_and_loads_the_llms_later(sidegate_home: object, tmp_path: object) -> None:
    from pathlib import Path

    import yaml

    from ext_proc.config import load_config
    from testkit import gateway_config

    raw = gateway_config([{"name": "local", "provider_interface": "sidegate", "model": "m", "default": True}])
    raw["prompt_guards"] = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    raw["prompt_targets"] = [{"name": "t", "description": "a target", "parameters": [{"name": "x", "type": "str", "description": "x"}]}]
    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    (triton,) = [s for s in sv.services_for(cfg, str(path), demo=False, bootstrap=path) if s.name == "triton"]
    loaded_first = [a.split("=", 1)[1] for a in triton.argv if a.startswith("--load-model=")]
    assert loaded_first == ["prompt_embed", "prompt_guard_head", "prompt_guard"]
    assert triton.later_models == ["function_call", "chat_llm"]
    assert triton.models_api == f"http://127.0.0.1:{cfg.model_server.http_port}"


def test_replicas_are_services_of_their_own_and_envoy_starts_before_ext_proc(sidegate_home: object, tmp_path: object) -> None:
    from pathlib import Path

    import yaml

    from ext_proc.config import load_config
    from testkit import gateway_config

    raw = gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "m", "default": True}])
    raw["prompt_guards"] = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    raw["model_server"] = {"replicas": 2, "http_port": 9100, "grpc_port": 9101, "metrics_port": 9102, "balancer_port": 9150}
    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    services = sv.services_for(cfg, str(path), demo=False, bootstrap=path)
    assert [s.name for s in services] == ["triton-1", "triton-2", "envoy", "ext_proc"]
    t1, t2 = services[0], services[1]
    assert "--grpc-port=9101" in t1.argv and "--grpc-port=9111" in t2.argv and "--http-port=9110" in t2.argv
    assert t1.cleanup_shm != t2.cleanup_shm  # each its own /dev/shm regions
    assert services[3].argv[-1] == "grpc://127.0.0.1:9150"  # ext_proc dials Envoy's balancer
    import socket

    with socket.socket() as taken:  # replica 2's gRPC port is in use: `up` says which key it is
        taken.bind(("127.0.0.1", 9111))
        taken.listen()
        assert "127.0.0.1:9111 (model_server.grpc_port + 10 (replica 2)) is already in use" in sv.check_ports(cfg, demo=False)


def test_a_slow_restart_does_not_delay_restarting_another_service(sidegate_home: object) -> None:
    """A Triton restarting (alive, not healthy yet) must not hold up the restart of ext_proc that died meanwhile,
    and a restarted process lives on after the restart is done."""
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: the slow one never turns healthy
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/healthz"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    slow = sv.Service(name="triton", argv=sleeper, health_url=closed, listens="", start_timeout=60)
    quick = sv.Service(name="ext_proc", argv=sleeper, health_url=_Health([{"status": "ok"}]).url, listens="")
    events: list[tuple[str, str, float]] = []
    sup = sv.Supervisor([slow, quick], config_path="x.yaml", on_event=lambda s, status: events.append((s.name, status, time.monotonic())))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sup.procs = {"triton": dead, "ext_proc": subprocess.Popen(sleeper)}
    watching = threading.Thread(target=sup.watch, daemon=True)
    watching.start()
    try:
        deadline = time.monotonic() + 20
        while ("triton", "restarting (exited 0)") not in [(n, st) for n, st, _ in events] and time.monotonic() < deadline:
            time.sleep(0.05)
        sup.procs["ext_proc"].kill()  # dies while the Triton restart waits for its health check
        while ("ext_proc", "healthy") not in [(n, st) for n, st, _ in events] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("ext_proc", "healthy") in [(n, st) for n, st, _ in events], events
        assert slow.status == "restarting (exited 0)"  # still waiting for its health check
        assert quick.restarts == 1 and slow.restarts == 1
        while "ext_proc" in sup._restarting and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        # the thread that awaited its health check has ended: the child must outlive it (PR_SET_PDEATHSIG
        # signals a child when the thread that forked it ends, so that thread must not be the one)
        assert sup.procs["ext_proc"].poll() is None
    finally:
        sup.stop_all(timeout=5)
        watching.join(10)
    assert not watching.is_alive()
