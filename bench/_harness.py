"""Shared helpers of the benchmark parts: machine facts, stats, tables, JSON, processes, load.

Light helpers (every part may use them; they import nothing heavy)::

    from bench._harness import machine_info, percentile, median, summarize, print_table, write_results

    print_table("guard", ["split", "n", "F1"], [["test", 412, 0.93]], caption=load_caption())
    path = write_results("guard_eval", {"rows": [...]})   # bench/results/guard_eval.json, with "meta"

Stacks and load (used by ``bench/overhead.py``)::

    with FakeProviderProcess() as fp, PlainEnvoy(fp.port) as plain, SidegateStack(fp.port) as sg:
        run = wrk_run(url, body, concurrency=32, duration_s=2) or client_run(url, body, concurrency=32, duration_s=2)

Every process is bound to 127.0.0.1 on a free port and stopped on exit (children also get
``PR_SET_PDEATHSIG``, so a killed benchmark leaves nothing behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

from testkit.ports import free_port, free_ports_spaced  # noqa: F401  (bench modules import them from here)

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "FakeProviderProcess",
    "LoadResult",
    "PlainEnvoy",
    "SidegateStack",
    "client_run",
    "cpu_seconds",
    "ext_proc_counters",
    "free_port",
    "git_commit",
    "load_caption",
    "load_module",
    "loadavg",
    "machine_info",
    "median",
    "memory_kib",
    "percentile",
    "print_table",
    "set_command",
    "summarize",
    "wrk_available",
    "use_home",
    "wrk_run",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

_COMMAND: str | None = None


# --------------------------------------------------------------------------- machine facts


def set_command(command: str) -> None:
    """The command line recorded in every result file (``python -m bench`` sets it)."""
    global _COMMAND
    _COMMAND = command


def command() -> str:
    if _COMMAND:
        return _COMMAND
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith("__main__.py") or argv0 == "-m":
        return " ".join(["python -m", Path(argv0).parent.name, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available (some containers)
        return (math.nan, math.nan, math.nan)


def git_commit() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool}`` of the repository the benchmark runs from."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": bool(status)}


def llama_cpp_runtime() -> str | None:
    """Which llama.cpp build serves function_call and the judges here: ``native`` (``make native``,
    AVX-512) or ``prebuilt`` (the pinned AVX2 wheel); None without xllamacpp."""
    try:
        import xllamacpp
    except ImportError:
        return None
    from sidegate_models.native import kind

    return kind(str(xllamacpp.get_system_info()))


def machine_info() -> dict[str, Any]:
    """Facts every result file carries: date, load average, CPU count, git commit, command, the
    llama.cpp runtime (LLM latencies differ by ~1.4x in prompt evaluation between the two)."""
    one, five, fifteen = loadavg()
    return {
        "llama_cpp_runtime": llama_cpp_runtime(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command(),
        "git": git_commit(),
        "cpu_count": os.cpu_count(),
        "loadavg": {"1m": one, "5m": five, "15m": fifteen},
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def gpu_memory_mib() -> dict[int, int]:
    """pid -> MiB of GPU memory of every process using a GPU (nvidia-smi's compute apps; {} without one)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    run = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=False)
    return {int(pid): int(mib) for pid, mib in (line.split(",") for line in run.stdout.splitlines() if line.strip())}


def load_caption(extra: str = "") -> str:
    one, five, fifteen = loadavg()
    text = f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
    return f"{text}; {extra}" if extra else text


# --------------------------------------------------------------------------- stats


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); NaN if empty."""
    data = sorted(values)
    if not data:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def cpu_us_per_call(fn: Callable[[], object], *, rounds: int, n: int, warmup: int) -> list[float]:
    """CPU microseconds (process time: this process, all threads) per call of ``fn``, one figure
    per round of ``n`` calls, after ``warmup`` calls: the in-process benches (translate,
    output_guard) report their median and best."""
    for _ in range(warmup):
        fn()
    per_round = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        per_round.append((time.process_time() - start) / n * 1e6)
    return per_round


def median(values: Iterable[float]) -> float:
    """Median of the values that are not NaN/None; NaN when there are none."""
    return percentile((v for v in values if v is not None and not math.isnan(v)), 50)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99, min, max of ``values``."""
    n = len(values)
    return {
        "n": n,
        "mean": sum(values) / n if n else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if n else math.nan,
        "max": max(values) if n else math.nan,
    }


# --------------------------------------------------------------------------- output


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any] | None],
    *,
    caption: str | None = None,
    digits: int = 2,
    console: Any = None,
) -> str:
    """Print a rich table (floats with ``digits`` decimals, None/NaN as ``-``, a ``None`` row
    starts a new section); return it as plain text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        if row is None:
            if table.row_count:
                table.add_section()
            continue
        table.add_row(*(_cell(v, digits) for v in row))
    out = console or Console(width=max(shutil.get_terminal_size((200, 40)).columns, 200))
    with out.capture() as cap:
        out.print(table)
    text = cap.get()
    print(text, end="", flush=True)
    return text


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(part: str, payload: dict[str, Any], *, results_dir: Path | None = None) -> Path:
    """Write ``results/<part>.json``: ``{"part", "meta": machine_info(), **payload}`` (NaN → null)."""
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{part}.json"
    doc = {"part": part, "meta": machine_info(), **payload}
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- processes

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100





def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads, dead ones included) in seconds; NaN if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15 of stat


def load_module(name: str, path: Path | str) -> types.ModuleType:
    """The python file ``path`` as module ``name``, once: the model folders' scripts (train.py,
    client.py, a model's 1/model.py) are not importable packages (their shared code is:
    ``sidegate_models``). Registered in ``sys.modules``
    (dataclasses look their module up there), so a second call returns the same module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def memory_kib(pid: int) -> dict[str, int | None]:
    """``{"rss": VmRSS, "hwm": VmHWM}`` of ``pid`` in KiB (peak RSS so far is VmHWM)."""
    out: dict[str, int | None] = {"rss": None, "hwm": None}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key, name in (("VmRSS", "rss"), ("VmHWM", "hwm")):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[name] = int(m.group(1))
    return out


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def ext_proc_counters(http_port: int, name: str) -> dict[str, float]:
    """The labelled samples of the counter ``name`` on ext_proc's ``/metrics`` (its HTTP port), by
    their label text (``model="route_judge"``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:  # noqa: S310 (loopback)
        text = r.read().decode()
    return {labels: float(v) for labels, v in re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M)}


def _http_ok(url: str, expect: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:  # noqa: S310 (loopback)
            return r.status == 200 and (expect is None or expect.encode() in r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, *, expect: str | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log_path)}")
        if _http_ok(url, expect):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s:\n{_tail(log_path)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class FakeProviderProcess:
    """The fake OpenAI provider of ``testkit/fake_provider.py`` in its own process (its own GIL),
    started as ``python -m testkit.fake_provider --port N --history 64``: the fake keeps only its
    last 64 requests (kept forever, thousands of 100 kB bodies would distort both its CPU and the
    memory table)."""

    def __init__(self, name: str = "fake-bench", workdir: Path | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sidegate-bench-"))
        self.log = self.workdir / "fake_provider.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        """The command that serves the fake on ``self.port`` (a subclass may serve another one)."""
        return [sys.executable, "-m", "testkit.fake_provider", "--host", "127.0.0.1", "--port", str(self.port),
                "--name", self.name, "--history", "64"]

    def __enter__(self) -> Self:
        self.proc = _spawn(self.argv(), self.log, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)})
        try:
            _wait_http(f"{self.base_url}/models", self.proc, self.log, timeout=30)
        except BaseException:
            _stop(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


PLAIN_API_KEY = "sk-bench-plain"


def plain_envoy_config(*, listen_port: int, admin_port: int, upstream_port: int, access_log: bool = True) -> dict[str, Any]:
    """A minimal hand-written Envoy bootstrap: one egress-like listener, router only, to one upstream.

    It does what sidegate's egress route does natively (host rewrite, client credentials removed,
    the provider key injected, idle timeout, JSON access log on stdout, the listener's buffer
    limit) and nothing else: no ext_proc filter, so comparing it with sidegate measures the
    ext_proc round trips."""
    from ext_proc.control.envoy_bootstrap import ACCESS_LOG_FIELDS, REMOVED_CLIENT_HEADERS

    sock = lambda port: {"socket_address": {"address": "127.0.0.1", "port_value": port}}  # noqa: E731
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "egress",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "route_config": {
            "name": "egress",
            "virtual_hosts": [
                {
                    "name": "egress",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": "provider",
                                "timeout": "0s",
                                "idle_timeout": "5s",
                                "host_rewrite_literal": f"127.0.0.1:{upstream_port}",
                            },
                            "request_headers_to_remove": list(REMOVED_CLIENT_HEADERS),
                            "request_headers_to_add": [
                                {
                                    "header": {"key": "authorization", "value": f"Bearer {PLAIN_API_KEY}"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            ],
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    if access_log:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"json_format": {"listener": "egress", **ACCESS_LOG_FIELDS}},
                },
            }
        ]
    return {
        "node": {"id": "sidegate-bench-plain", "cluster": "sidegate-bench"},
        "admin": {"address": sock(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "egress",
                    "address": sock(listen_port),
                    "per_connection_buffer_limit_bytes": 8 * 1024 * 1024,
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "provider",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "provider",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(upstream_port)}}]}],
                    },
                }
            ],
        },
    }


class PlainEnvoy:
    """Envoy alone (same binary as sidegate's) in front of ``upstream_port``: see :func:`plain_envoy_config`."""

    def __init__(self, upstream_port: int, workdir: Path | None = None, *, extra: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.extra = extra or {}  # more top-level config keys (e.g. response_cache)
        self.workers = workers  # ext_proc.workers
        self.upstream_port = upstream_port
        self.port = free_port()
        self.admin_port = free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sidegate-bench-"))
        self.config_path = self.workdir / "envoy_plain.yaml"
        self.log = self.workdir / "envoy_plain.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> PlainEnvoy:
        import yaml

        from ext_proc.control.envoy_bin import envoy_binary

        cfg = plain_envoy_config(listen_port=self.port, admin_port=self.admin_port, upstream_port=self.upstream_port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("# Envoy alone, rendered by bench/_harness.py\n" + yaml.safe_dump(cfg, sort_keys=False))
        argv = [str(envoy_binary()), "-c", str(self.config_path), "--disable-hot-restart", "--log-level", "warn"]
        self.proc = _spawn(argv, self.log, env=dict(os.environ))
        try:
            _wait_http(f"http://127.0.0.1:{self.admin_port}/ready", self.proc, self.log, expect="LIVE", timeout=60)
        except BaseException:
            _stop(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


class SidegateStack:
    """sidegate's ext_proc service + its rendered Envoy (egress and ingress listeners, no prompt
    targets) in front of one provider at ``127.0.0.1:upstream_port``, started by sidegate's
    own supervisor with ``SIDEGATE_HOME`` in a temporary directory."""

    PROVIDER = "fake"
    MODEL = "gpt-4o-mini"

    def __init__(self, upstream_port: int, workdir: Path | None = None, *, extra: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.extra = extra or {}  # more top-level config keys (e.g. response_cache)
        self.workers = workers  # ext_proc.workers
        self.upstream_port = upstream_port
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sidegate-bench-"))
        self.home = self.workdir / "sidegate-home"
        self.supervisor: Any = None
        self.cfg: Any = None
        self._old_home: str | None = None

    def _pid(self, name: str) -> int:
        return int(self.supervisor.procs[name].pid)

    @property
    def ext_proc_pid(self) -> int:
        return self._pid("ext_proc")

    @property
    def ext_proc_pids(self) -> list[int]:
        """Every ext_proc worker's pid (one with ext_proc.workers: 1)."""
        if self.workers == 1:
            return [self.ext_proc_pid]
        return [self._pid(f"ext_proc-{i + 1}") for i in range(self.workers)]

    @property
    def envoy_pid(self) -> int:
        return self._pid("envoy")

    @property
    def egress_port(self) -> int:
        return int(self.cfg.egress.port)

    @property
    def ingress_port(self) -> int:
        return int(self.cfg.ingress.port)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted((self.home / "logs").glob("*.log")))

    def __enter__(self) -> SidegateStack:
        import yaml

        from ext_proc.config import load_config
        from ext_proc.control import supervisor as sv
        from ext_proc.control.envoy_bootstrap import write_bootstrap

        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from testkit import gateway_config

        self._old_home = os.environ.get("SIDEGATE_HOME")
        os.environ["SIDEGATE_HOME"] = str(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        providers = [
            {
                "name": self.PROVIDER,
                "provider_interface": "openai",
                "endpoint": f"http://127.0.0.1:{self.upstream_port}/v1",
                "model": self.MODEL,
                "default": True,
                "access_key": "sk-bench-sidegate",
            }
        ]
        raw = gateway_config(providers, **self.extra)  # no prompt_targets: ingress goes straight to the default provider
        if self.workers > 1:  # worker i on port + i and http_port + i
            from testkit.ports import free_ports_spaced

            raw["ext_proc"].update(workers=self.workers, port=free_ports_spaced(self.workers, 1),
                                   http_port=free_ports_spaced(self.workers, 1))
        config_path = self.home / "sidegate.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        self.cfg = load_config(config_path)
        bootstrap = write_bootstrap(self.cfg, sv.home() / "run")
        services = sv.services_for(self.cfg, str(config_path), demo=False, bootstrap=bootstrap)
        self.supervisor = sv.Supervisor(services, config_path=str(config_path), on_event=lambda s, st: None)
        if not self.supervisor.start_all():
            logs = self.logs()
            self.__exit__()
            raise RuntimeError(f"sidegate did not start:\n{logs}")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.supervisor is not None:
                self.supervisor.stop_all()
        finally:
            if self._old_home is None:
                os.environ.pop("SIDEGATE_HOME", None)
            else:
                os.environ["SIDEGATE_HOME"] = self._old_home


# --------------------------------------------------------------------------- load generation


@dataclass
class LoadResult:
    """One load run: what the generator saw (latencies in ms)."""

    tool: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float = math.nan
    ttfb_p50_ms: float = math.nan  # first response-body byte (for SSE: the first event)
    ttfb_p99_ms: float = math.nan
    error_detail: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else math.nan


def http_request(port: int, body: bytes, *, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 POST (keep-alive) as bytes."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.I)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.I)


async def _one_connection(
    port: int, request: bytes, deadline: float, lat: list[float], ttfb: list[float], errors: dict[str, int], max_requests: int | None
) -> None:
    perf = time.perf_counter
    reader = writer = None
    done = 0
    while perf() < deadline and (max_requests is None or done < max_requests):
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
            assert reader is not None
            t0 = perf()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            first = math.nan
            if _CHUNKED.search(head):
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if first != first:  # NaN: the first chunk's size line is the first body byte
                        first = perf()
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")  # end of (empty) trailers
                        break
                    await reader.readexactly(size + 2)
            else:
                m = _CONTENT_LENGTH.search(head)
                first = perf()
                if m:
                    await reader.readexactly(int(m.group(1)))
            t1 = perf()
            done += 1
            if status != 200:
                errors[f"status_{status}"] = errors.get(f"status_{status}", 0) + 1
            else:
                lat.append((t1 - t0) * 1000)
                ttfb.append((first - t0) * 1000)
            if _CLOSE.search(head):
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _client(port: int, request: bytes, concurrency: int, duration_s: float, max_requests: int | None) -> LoadResult:
    lat: list[float] = []
    ttfb: list[float] = []
    errors: dict[str, int] = {}
    per_conn = None if max_requests is None else max(1, math.ceil(max_requests / concurrency))
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    await asyncio.gather(*(_one_connection(port, request, deadline, lat, ttfb, errors, per_conn) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return LoadResult(
        tool="asyncio",
        concurrency=concurrency,
        requests=len(lat),
        errors=sum(errors.values()),
        elapsed_s=elapsed,
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        mean_ms=sum(lat) / len(lat) if lat else math.nan,
        ttfb_p50_ms=percentile(ttfb, 50),
        ttfb_p99_ms=percentile(ttfb, 99),
        error_detail=errors,
    )


def client_run(
    port: int, body: bytes, *, concurrency: int, duration_s: float, headers: dict[str, str] | None = None, max_requests: int | None = None
) -> LoadResult:
    """Closed-loop load from this process: ``concurrency`` keep-alive connections, each sending
    the next request when the previous response is complete, for ``duration_s`` (or until
    ``max_requests``). A raw HTTP/1.1 client on uvloop (much less CPU per request than an
    aiohttp client, which matters on a small machine shared with the system under test); it
    records latency and time to the first response-body byte."""
    request = http_request(port, body, headers=headers)
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_client(port, request, concurrency, duration_s, max_requests))


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_WRK_LUA = """\
local f = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_run(
    port: int, body: bytes, *, concurrency: int, duration_s: float, headers: dict[str, str] | None = None, workdir: Path | None = None
) -> LoadResult:
    """The same closed-loop load with wrk (one thread; ``duration_s`` rounded to whole seconds,
    wrk's unit). wrk measures whole-response latency only: no time to first byte."""
    wd = Path(workdir or tempfile.mkdtemp(prefix="sidegate-bench-wrk-"))
    wd.mkdir(parents=True, exist_ok=True)
    body_path = wd / f"body-{len(body)}-{zlib.crc32(body):08x}.json"
    if not body_path.exists():
        body_path.write_bytes(body)
    lua = _WRK_LUA.format(
        body_path=json.dumps(str(body_path)),
        headers="\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()),
    )
    script = wd / f"post-{zlib.crc32(lua.encode()):08x}.lua"
    if not script.exists():
        script.write_text(lua)
    seconds = max(1, round(duration_s))
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}/v1/chat/completions"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"^BENCH_RESULT (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    r = json.loads(m.group(1))
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    good = r["requests"] - r["status"]  # wrk counts non-2xx responses in requests too
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        requests=good,
        errors=sum(errors.values()),
        elapsed_s=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        mean_ms=r["mean_us"] / 1000,
        error_detail=errors,
    )


def csv_list(kind: type, allowed: Any = None) -> Callable[[str], list[Any]]:
    """An argparse ``type=`` for comma-separated values of ``kind``, optionally among ``allowed``."""

    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if allowed is not None and (bad := [x for x in items if x not in allowed]):
            raise argparse.ArgumentTypeError(f"{bad} not in {sorted(allowed)}")
        return items

    return parse


def use_home(home: Path) -> Callable[[], None]:
    """Point ``SIDEGATE_HOME`` at ``home`` (a bench's own stack); returns what puts the old value back."""
    old = os.environ.get("SIDEGATE_HOME")
    os.environ["SIDEGATE_HOME"] = str(home)

    def restore() -> None:
        if old is None:
            os.environ.pop("SIDEGATE_HOME", None)
        else:
            os.environ["SIDEGATE_HOME"] = old

    return restore
