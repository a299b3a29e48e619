"""Start, watch and stop sidegate's processes (``sidegate up / down / status / logs``).

Envoy exits when its parent does, so one long-lived supervisor process owns every child: it starts
them in order (demo app, ext_proc, Envoy), waits for each health check, restarts any that dies,
and on SIGINT/SIGTERM stops them in reverse order. Children also get ``PR_SET_PDEATHSIG`` so a
killed supervisor leaves nothing running.

State lives under ``$SIDEGATE_HOME`` (default ``~/.sidegate``): ``state.json`` (pids, addresses,
health), ``logs/<service>.log`` and ``run/envoy.yaml`` (the rendered bootstrap).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ext_proc.chat.shared_store import prepare_workers_state
from ext_proc.config import REPLICA_PORT_STEP, REPO_ROOT, Config
from ext_proc.control.envoy_bin import envoy_binary
from ext_proc.control.model_repo import needed_models, render_model_repository
from ext_proc.control.triton_server import health_url as triton_health_url
from ext_proc.control.triton_server import python_env_dirs, remove_python_envs, remove_shm, shm_prefix, triton_command
from ext_proc.names import MULTIPROC_ENV, WORKERS_STATE_ENV

__all__ = ["Service", "Supervisor", "home", "read_state", "services_for"]

DEMO_APP = REPO_ROOT / "deploy" / "demo" / "app.py"
DEMO_PORT = 18083


def home() -> Path:
    return Path(os.environ.get("SIDEGATE_HOME", Path.home() / ".sidegate"))


def state_path() -> Path:
    return home() / "state.json"


def read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path().read_text())
        return state
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as dead
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _health_body(url: str, timeout: float) -> bytes | None:
    """The body of a 200 answer from a (loopback) health URL; None for anything else."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback health URL)
            return r.read() if r.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def http_ok(url: str, expect: str | None = None, timeout: float = 1.0) -> bool:
    body = _health_body(url, timeout)
    return body is not None and (expect is None or expect.encode() in body)


def health_json(url: str, timeout: float = 1.0) -> dict[str, Any]:
    """The JSON body of a 200 health answer, {} for anything else."""
    try:
        body = json.loads(_health_body(url, timeout) or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def warm_warning(phase: str) -> str:
    """What ext_proc's ``warm`` phase has for the user: the problem after ``done: `` (a target the
    model refuses, a model server that does not answer), else nothing."""
    return phase.removeprefix("done").removeprefix(": ") if phase.startswith("done") else ""


def _die_with_parent() -> None:
    """preexec: SIGTERM this child when the supervisor dies, whatever kills it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    listens: str  # what `up` and `status` print
    health_expect: str | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    start_timeout: float = 60.0
    # > 0: once healthy, wait up to this long for the "warm" field of its health JSON to say "done"
    # (ext_proc: prompt targets embedded, function_call prompts pre-filled), showing each step
    warm_timeout: float = 0.0
    cleanup_shm: str | None = None  # /dev/shm prefix to sweep after the process exits (Triton)
    # Triton: models loaded through its repository API once it serves (``models_api``), so that
    # a restarted Triton answers the guard and intent in seconds while the LLMs still load
    later_models: list[str] = field(default_factory=list)
    models_api: str = ""
    pid: int | None = None
    status: str = "pending"
    restarts: int = 0
    warning: str = ""  # a problem found while it warmed, which `up` and `status` print under the table

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("env")
        return d


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of the process group ``pid`` led (each child starts its own session):
    the python stubs of a tritonserver that was SIGKILLed keep running, ~200 MB, found orphaned
    18 minutes after a kill by the load bench."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Triton loads these after it serves: llama.cpp models take 10-60 s to load and warm up on 2 cores,
# and tritonserver serves nothing until its --load-model models are loaded, so after a crash the
# guard and intent (milliseconds to load) would wait for them
LATER_MODELS = ("function_call", "chat_llm")


def load_model(api: str, model: str, timeout: float) -> str | None:
    """Load ``model`` through Triton's HTTP repository API at ``api``; None, or why it failed."""
    req = urllib.request.Request(f"{api}/v2/repository/models/{model}/load", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback; returns once loaded
            return None if r.status == 200 else f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        return f"HTTP {exc.code}: {detail}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)


def services_for(cfg: Config, config_path: str, *, demo: bool, bootstrap: Path, demo_port: int = DEMO_PORT) -> list[Service]:
    py = sys.executable
    env = {**os.environ, **cfg.secret_env(), "PYTHONUNBUFFERED": "1"}
    out: list[Service] = []
    models = needed_models(cfg)
    ms = cfg.model_server
    if ms.local and models:
        repo = render_model_repository(cfg, home() / "run" / "models")
        first = [m for m in models if m not in LATER_MODELS] or models
        for i in range(ms.replicas):  # one service per replica: "triton", or triton-1 .. triton-N
            http_port, grpc_port, metrics_port = ms.replica_ports(i)
            argv, triton_env = triton_command(
                repo,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                models=first,
                config_name="gpu" if ms.mode == "local-gpu" else None,
                address=ms.address,
                env=env,
                # behind Envoy, a replica loading (or reloading) a model says so to its health checks
                strict_readiness=ms.balanced,
            )
            out.append(
                Service(
                    name="triton" if ms.replicas == 1 else f"triton-{i + 1}",
                    argv=argv,
                    health_url=triton_health_url(http_port, ms.address),
                    listens=f"grpc://{ms.address}:{grpc_port}, http://{ms.address}:{http_port}, "
                    f"metrics :{metrics_port} ({ms.mode}: {', '.join(models)})",
                    env=triton_env,
                    start_timeout=300.0,
                    cleanup_shm=shm_prefix(http_port),
                    later_models=[m for m in models if m not in first],
                    models_api=f"http://{ms.address}:{http_port}",
                )
            )
    model_server = ms.endpoint if models else None
    if demo:
        out.append(
            Service(
                name="demo",
                argv=[py, str(DEMO_APP), "--host", "127.0.0.1", "--port", str(demo_port)],
                health_url=f"http://127.0.0.1:{demo_port}/healthz",
                listens=f"http://127.0.0.1:{demo_port} (demo app: /weather, /exchange, OpenAI stand-in at /v1)",
                env=env,
            )
        )
    ext_proc_at = len(out)
    out += ext_proc_services(cfg, config_path, model_server, env)
    out.append(
        Service(
            name="envoy",
            argv=[str(envoy_binary()), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn"],
            health_url=f"http://{cfg.admin_address}:{cfg.admin_port}/ready",
            health_expect="LIVE",
            listens=(
                f"ingress http://{cfg.ingress.address}:{cfg.ingress.port}, egress http://{cfg.egress.address}:{cfg.egress.port}, "
                f"internal :{cfg.internal.port}, admin http://{cfg.admin_address}:{cfg.admin_port}"
                + "".join(f", agent listener {a.listener.name} http://{a.listener.address}:{a.listener.port}" for a in cfg.agent_listeners)
            ),
            env=env,
        )
    )
    if model_server and ms.balanced:
        # ext_proc reaches the replicas through Envoy's balancer listener: Envoy first, so that
        # ext_proc can warm up (its ingress answers 503 ext_proc_unavailable meanwhile)
        out.insert(ext_proc_at, out.pop())
    return out


def ext_proc_services(cfg: Config, config_path: str, model_server: str | None, env: dict[str, str]) -> list[Service]:
    """The ext_proc service: ``ext_proc``, or with ``ext_proc.workers: N`` > 1 the services
    ``ext_proc-1`` .. ``ext_proc-N`` (worker i on port + i - 1, http_port + i - 1), each started,
    watched and restarted on its own; they write their metrics to one directory (prometheus_client's
    multiprocess mode, emptied here) and every worker's /metrics shows the sum, and keep the token
    budgets of ``ratelimits`` and the response cache in SQLite files of one directory (emptied
    here): one budget and one cache for all of them."""
    py = sys.executable
    e = cfg.ext_proc
    # embedding retries while Triton starts (<= 60 s), then <= 4 pre-fills of ~7 s each (a
    # cold first one may take up to its deadline; one that times out ends the pre-fills)
    warm_timeout = max(180.0, 60.0 + cfg.model_server.prefill_timeout_s) if model_server else 0.0
    argv = [py, "-m", "ext_proc", "serve", config_path, "--model-server", model_server or "none"]
    if e.workers == 1:
        return [Service(name="ext_proc", argv=argv, health_url=f"http://{e.address}:{e.http_port}/healthz",
                        listens=f"grpc://{e.address}:{e.port}, http://{e.address}:{e.http_port}/metrics",
                        warm_timeout=warm_timeout, env=env)]
    def emptied(name: str) -> Path:  # what an earlier `up` left there goes
        path = home() / "run" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    metrics_dir = emptied("ext_proc-metrics")
    # the token budgets of ratelimits and the response cache (shared_store.type memory): files every
    # worker shares, so a limit holds for the gateway, not once per worker, and an answer cached by
    # one worker is a hit on the others; a new `up` starts with full budgets and an empty cache
    state_dir = emptied("ext_proc-state")
    prepare_workers_state(state_dir)
    out = []
    for i in range(e.workers):
        grpc_port, http_port = e.worker_ports(i)
        out.append(Service(
            name=f"ext_proc-{i + 1}",
            argv=[*argv, "--worker", str(i + 1)],
            health_url=f"http://{e.address}:{http_port}/healthz",
            listens=f"grpc://{e.address}:{grpc_port}, http://{e.address}:{http_port}/metrics (worker {i + 1}/{e.workers})",
            warm_timeout=warm_timeout,
            env={**env, MULTIPROC_ENV: str(metrics_dir), WORKERS_STATE_ENV: str(state_dir)},
        ))
    return out


def check_ports(cfg: Config, demo: bool, demo_port: int = DEMO_PORT) -> list[str]:
    """Ports that are already taken, as human lines."""
    wanted = [
        ("listeners.ingress_traffic.port", cfg.ingress.address, cfg.ingress.port),
        ("listeners.egress_traffic.port", cfg.egress.address, cfg.egress.port),
        ("listeners.internal_traffic.port", cfg.internal.address, cfg.internal.port),
        ("listeners.admin.port", cfg.admin_address, cfg.admin_port),
        ("ext_proc.port", cfg.ext_proc.address, cfg.ext_proc.port),
        ("ext_proc.http_port", cfg.ext_proc.address, cfg.ext_proc.http_port),
    ]
    for i, a in enumerate(cfg.agent_listeners):
        wanted.append((f"listeners.agent_traffic[{i}].port ({a.listener.name})", a.listener.address, a.listener.port))
    for i in range(1, cfg.ext_proc.workers):
        for key, port in zip(("port", "http_port"), cfg.ext_proc.worker_ports(i), strict=True):
            wanted.append((f"ext_proc.{key} + {i} (worker {i + 1})", cfg.ext_proc.address, port))
    if demo:
        wanted.append(("demo app", "127.0.0.1", demo_port))
    ms = cfg.model_server
    if ms.local and needed_models(cfg):
        for i in range(ms.replicas):
            for key, port in zip(("http_port", "grpc_port", "metrics_port"), ms.replica_ports(i), strict=True):
                wanted.append((f"model_server.{key}" + (f" + {i * REPLICA_PORT_STEP} (replica {i + 1})" if i else ""), ms.address, port))
    if needed_models(cfg) and ms.balanced:
        wanted.append(("model_server.balancer_port", "127.0.0.1", ms.balancer_port))
    return [f"{host}:{port} ({key}) is already in use" for key, host, port in wanted if not _free(host, port)]


class Supervisor:
    """Owns the child processes. ``run()`` blocks until SIGINT/SIGTERM, then stops everything."""

    def __init__(self, services: list[Service], *, config_path: str, on_event: Callable[[Service, str], None]) -> None:
        self.services = services
        self.config_path = config_path
        self.on_event = on_event
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.logs = home() / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._restart_times: dict[str, list[float]] = {}
        self._state_lock = threading.Lock()  # the watch loop and restart threads all write it
        self._restarting: set[str] = set()  # restarted services whose health check (and later models) a thread awaits
        # Triton: the python backend's scratch dirs in /tmp before each spawn, and the one each server made (once it serves)
        self._envs_before: dict[str, set[Path]] = {}
        self._envs: dict[str, set[Path]] = {}

    # -- state -------------------------------------------------------------------------------
    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "config": self.config_path,
            "started": time.time(),
            "services": [s.public() for s in self.services],
        }
        with self._state_lock:
            tmp = state_path().with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, state_path())

    def _event(self, svc: Service, status: str) -> None:
        svc.status = status
        self.write_state()
        self.on_event(svc, status)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, svc: Service) -> None:
        log = open(self.logs / f"{svc.name}.log", "ab", buffering=0)  # noqa: SIM115 (owned by the child)
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(svc.argv)}\n".encode())
        proc = subprocess.Popen(
            svc.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=svc.env,
            cwd=REPO_ROOT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        log.close()
        if svc.cleanup_shm:
            self._envs_before[svc.name] = python_env_dirs()
        self.procs[svc.name] = proc
        svc.pid = proc.pid

    def _clean_after(self, svc: Service, proc: subprocess.Popen[bytes]) -> None:
        """What an exited Triton may leave: python stubs that outlive a SIGKILLed server (its
        process group), its /dev/shm regions and its python backend's scratch dir in /tmp."""
        if svc.cleanup_shm:
            _kill_group(proc.pid)
            remove_shm(svc.cleanup_shm)
            remove_python_envs(self._envs.pop(svc.name, ()))

    def _wait_healthy(self, svc: Service) -> bool:
        deadline = time.monotonic() + svc.start_timeout
        proc = self.procs[svc.name]
        while time.monotonic() < deadline and not self.stopping:
            if proc.poll() is not None:
                return False
            if http_ok(svc.health_url, svc.health_expect):
                if svc.name in self._envs_before:  # serving: its python backend has made its scratch dir
                    self._envs[svc.name] = python_env_dirs() - self._envs_before.pop(svc.name)
                return True
            time.sleep(0.1)
        return False

    def _wait_warm(self, svc: Service) -> None:
        """Until ``svc``'s health JSON says ``warm: done...`` (or warm_timeout): each step as an
        event; what follows ``done: `` (a problem found while warming) is kept as ``svc.warning``,
        and so is a warm-up still running at warm_timeout. Not an error when it times out or the
        field is missing: the service is serving already."""
        deadline = time.monotonic() + svc.warm_timeout
        shown = None
        while time.monotonic() < deadline and not self.stopping and self.procs[svc.name].poll() is None:
            phase = str(health_json(svc.health_url).get("warm", "done"))
            if phase.startswith("done"):
                svc.warning = warm_warning(phase)
                self.write_state()
                return
            if phase != shown:
                self._event(svc, f"warming: {phase}")
                shown = phase
            time.sleep(0.2)
        if shown is not None and not self.stopping and self.procs[svc.name].poll() is None:
            svc.warning = f"still {shown} after {svc.warm_timeout:g} s: the first requests may be slow or time out"
            self.write_state()

    def _load_later(self, svc: Service, *, restart: bool = False) -> bool:
        """Load ``svc.later_models`` into the Triton that now serves (one at a time, each shown);
        at start-up a model that fails to load fails the start, as a --load-model one would."""
        for model in svc.later_models:
            if self.stopping or self.procs[svc.name].poll() is not None:
                return False
            self._event(svc, f"loading {model}")
            problem = load_model(svc.models_api, model, svc.start_timeout)
            if problem is not None:
                if not restart:
                    self._event(svc, f"failed ({model} did not load: {problem}; see `sidegate logs {svc.name}`)")
                    return False
                svc.warning = f"{model} did not load after a restart: {problem}"
        if restart and svc.later_models:
            self._event(svc, "healthy")
        return True

    def start_all(self) -> bool:
        for svc in self.services:
            self._event(svc, "starting")
            self._spawn(svc)
            if not self._wait_healthy(svc):
                code = self.procs[svc.name].poll()
                self._event(svc, f"failed (exit code {code})" if code is not None else "failed (health check timed out)")
                return False
            if svc.later_models and not self._load_later(svc):
                return False
            if svc.warm_timeout > 0:
                self._wait_warm(svc)
            self._event(svc, "healthy")
        return True

    def _may_restart(self, name: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._restart_times.get(name, []) if now - t < 60]
        recent.append(now)
        self._restart_times[name] = recent
        return len(recent) <= 5

    def watch(self) -> None:
        """Restart whatever exits. The new process is spawned here, on the supervisor's main
        thread (``PR_SET_PDEATHSIG`` signals a child when the *thread* that forked it ends, so a
        short-lived thread must never spawn one); waiting for its health check and the models a
        Triton loads later runs in a thread of its own, so one slow restart (a Triton, seconds)
        never delays noticing and restarting another process that died meanwhile."""
        while not self.stopping:
            for svc in self.services:
                proc = self.procs.get(svc.name)
                if svc.name in self._restarting or proc is None or proc.poll() is None or self.stopping:
                    continue
                code = proc.returncode
                if not self._may_restart(svc.name):
                    self._event(svc, f"failed (exited {code}, restarted too often: see `sidegate logs {svc.name}`)")
                    self.procs.pop(svc.name)
                    continue
                svc.restarts += 1
                self._clean_after(svc, proc)
                self._event(svc, f"restarting (exited {code})")
                self._restarting.add(svc.name)
                self._spawn(svc)
                threading.Thread(target=self._restarted, args=(svc,), name=f"restart-{svc.name}", daemon=True).start()
            time.sleep(0.2)

    def _restarted(self, svc: Service) -> None:
        try:
            healthy = self._wait_healthy(svc)
            self._event(svc, "healthy" if healthy else "unhealthy")
            if healthy and svc.later_models:  # serving already: the LLMs load now
                self._load_later(svc, restart=True)
        finally:
            self._restarting.discard(svc.name)

    def stop_all(self, timeout: float = 10.0) -> None:
        self.stopping = True
        for svc in reversed(self.services):
            proc = self.procs.get(svc.name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self._clean_after(svc, proc)
            self._event(svc, "stopped")
        with contextlib.suppress(OSError):
            state_path().unlink()

    def run(self) -> int:
        """Start everything, supervise until signalled; returns the exit code for ``sidegate up``."""
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)
        try:
            if not self.start_all():
                return 1
            self.on_event(self.services[-1], "ready")
            self.watch()
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop_all()

    def _signalled(self, signum: int, frame: object) -> None:
        self.stopping = True


def stop_running(timeout: float = 20.0) -> tuple[bool, str]:
    """``sidegate down``: signal the supervisor, wait for it, sweep any child left behind."""
    state = read_state()
    if state is None:
        return False, "sidegate is not running (no state in " + str(home()) + ")"
    pid = state["supervisor_pid"]
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    left = [s for s in state["services"] if s.get("pid") and pid_alive(s["pid"])]
    for s in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s["pid"], signal.SIGKILL)
    with contextlib.suppress(OSError):
        state_path().unlink()
    return True, "stopped" + (f" (killed leftover {', '.join(s['name'] for s in left)})" if left else "")
