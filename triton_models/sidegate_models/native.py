"""llama.cpp compiled for this machine's CPU (``make native``): an optional, faster runtime.

The pinned ``xllamacpp`` wheel is built for any x86-64 CPU with AVX2 (its
``get_system_info()`` lists no AVX-512). Prompt evaluation, what most of a function call,
a guard judgement or a routing judgement costs on a CPU, is matrix work that AVX-512 (VNNI,
BF16) does faster. This module builds the same pinned release from its source distribution
(checked by sha256, as the wheel is) with AVX-512 on, keeps the built wheel in a cache, and
installs it into the current environment in place of the prebuilt one. Measured on the 2-core
machine of bench/README.md ("native runtime"): the 1.5B's prompt evaluation ~1.4x faster,
decoding unchanged, a BFCL function call p50 1.49 -> 1.07 s.

What it never turns on: AMX. llama.cpp's AMX kernels need the kernel's permission for the
tile registers; in the VM this was measured in, ``-march=native`` builds them and the first
matrix product dies with SIGILL (``tilezero``). The flags are therefore listed one by one
from ``/proc/cpuinfo``, not taken from ``-march=native``. Two parts of llama.cpp's own build
that fetch sources from the network are off: BoringSSL (the runtime's HTTP server is only
used in process here) and llguidance (a Rust crate; sidegate constrains output with GBNF
grammars).

Usage::

    python -m sidegate_models.native              # build once (~9 min on 2 cores), then install
    python -m sidegate_models.native --status     # what is installed, and what this CPU could use
    python -m sidegate_models.native --prebuilt   # back to the pinned prebuilt wheel
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["REQUIREMENTS", "RuntimeBuildError", "cmake_args", "cpu_flags", "describe", "features", "has_avx512", "kind", "main", "requirement_line", "wheel_cache"]

REQUIREMENTS = Path(__file__).resolve().parents[1] / "function_call" / "requirements.txt"
PACKAGE = "xllamacpp"
# the flags ggml's GGML_AVX512 switch compiles with (-mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw)
_AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
_AVX2_BASE = ("avx", "avx2", "fma", "f16c", "bmi2")
# optional AVX-512 extensions: /proc/cpuinfo flag -> ggml's CMake switch
_AVX512_EXTRA = {"avx512vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16"}
_BUILD_MINUTES = 9  # on the 2-core machine of bench/README.md


class RuntimeBuildError(RuntimeError):
    """The native runtime could not be built or installed; the message says what to do."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of ``/proc/cpuinfo``, or of ``cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cmake_args(flags: set[str]) -> list[str] | None:
    """llama.cpp's CMake arguments for a CPU with ``flags``, or None when AVX-512 is not there
    (the prebuilt wheel's AVX2 build is already what such a CPU runs best)."""
    if not all(f in flags for f in (*_AVX2_BASE, *_AVX512_BASE)):
        return None
    args = ["-DGGML_NATIVE=OFF", *(f"-DGGML_{f.upper()}=ON" for f in _AVX2_BASE), "-DGGML_AVX512=ON"]
    args += [f"-D{switch}={'ON' if flag in flags else 'OFF'}" for flag, switch in _AVX512_EXTRA.items()]
    args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
             "-DLLAMA_BUILD_BORINGSSL=OFF", "-DLLAMA_LLGUIDANCE=OFF"]
    return args


def requirement_line(path: Path = REQUIREMENTS) -> tuple[str, list[str]]:
    """(``xllamacpp==version``, its sha256 hashes) as pinned in function_call's requirements
    (the prebuilt wheel's and the source distribution's)."""
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        m = re.match(rf"\s*({PACKAGE}==\S+)(.*)", line)
        if m:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", m.group(2))
            if not hashes:
                raise RuntimeBuildError(f"{path}: {m.group(1)} has no --hash=sha256")
            return m.group(1), hashes
    raise RuntimeBuildError(f"{path} pins no {PACKAGE}")


def features() -> str:
    """What the installed runtime was compiled for (``xllamacpp.get_system_info()``), read in a
    fresh interpreter so an install made by this process is what is reported."""
    out = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.get_system_info())"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeBuildError(f"{PACKAGE} does not import: {out.stderr.strip()[-400:]}; run make install")
    return out.stdout.strip()


def has_avx512(system_info: str) -> bool:
    return "AVX512 = 1" in system_info


def kind(system_info: str) -> str:
    """``native`` (built by ``make native``, AVX-512) or ``prebuilt`` (the pinned AVX2 wheel)."""
    return "native" if has_avx512(system_info) else "prebuilt"


def _pinned_requirements(folder: str, pin: str, hashes: list[str]) -> str:
    """A requirements file in ``folder`` that pins ``pin`` by ``hashes`` (for pip --require-hashes)."""
    req = Path(folder) / "requirements.txt"
    req.write_text(f"{pin} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n")
    return str(req)


def describe(system_info: str, flags: set[str] | None = None) -> str:
    """One line for a log: which runtime ``system_info`` (``xllamacpp.get_system_info()``) is, and
    ``make native`` when this CPU (``flags``, default ``/proc/cpuinfo``'s) could run a faster one."""
    if has_avx512(system_info):
        return "llama.cpp runtime: native (AVX-512)"
    if cmake_args(cpu_flags() if flags is None else flags) is not None:
        return "llama.cpp runtime: prebuilt (AVX2); this CPU has AVX-512: make native builds a faster one (bench/README.md, native runtime)"
    return "llama.cpp runtime: prebuilt (AVX2)"


def wheel_cache(pin: str, args: list[str]) -> Path:
    """Where the wheel built with ``args`` is kept: ``$SIDEGATE_RUNTIME_DIR`` (default
    ``~/.sidegate/runtime``), one folder per release and set of flags."""
    root = Path(os.environ.get("SIDEGATE_RUNTIME_DIR") or Path.home() / ".sidegate" / "runtime")
    key = hashlib.sha256(" ".join([pin, *args]).encode()).hexdigest()[:12]
    return root / f"{pin.replace('==', '-')}-{key}"


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, minutes: float | None = None) -> None:
    """Run ``cmd``, printing a line every 30 s (a long build shows it is alive); its output is
    shown only when it fails."""
    t0 = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(30):
            eta = f" (about {minutes:.0f} min on 2 cores)" if minutes else ""
            print(f"  {what}: {(time.monotonic() - t0) / 60:.1f} min{eta}", flush=True)

    threading.Thread(target=beat, daemon=True).start()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        done.set()
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-25:])
        raise RuntimeBuildError(f"{what} failed (exit {out.returncode}):\n{tail}")


def build(args: list[str], pin: str, hashes: list[str]) -> Path:
    """The wheel of ``pin`` built with ``args`` (from the cache when it was built before)."""
    folder = wheel_cache(pin, args)
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if found:
        print(f"native runtime: using the wheel built before, {found[0]}")
        return found[0]
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        raise RuntimeBuildError("building llama.cpp needs cmake and a C++ compiler: apt-get install cmake g++, then rerun make native")
    with tempfile.TemporaryDirectory(prefix="sidegate-native-") as tmp:
        req = _pinned_requirements(tmp, pin, hashes)
        env = {**os.environ, "CMAKE_ARGS": " ".join(args), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
        env.pop("XLLAMACPP_RELEASE", None)
        print(f"native runtime: building {pin} from source with {' '.join(a for a in args if 'AVX' in a and a.endswith('=ON'))}")
        # --no-cache-dir: pip's wheel cache is keyed by the source alone, not by CMAKE_ARGS
        _run(_pip("wheel", "--no-deps", "--no-binary", PACKAGE, "--no-cache-dir", "--require-hashes", "-r", req,
                  "-w", str(Path(tmp) / "out")), "building llama.cpp", env=env, minutes=_BUILD_MINUTES)
        wheels = sorted((Path(tmp) / "out").glob(f"{PACKAGE}-*.whl"))
        if not wheels:
            raise RuntimeBuildError(f"pip built no {PACKAGE} wheel")
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / (wheels[0].name + ".part")
        shutil.copyfile(wheels[0], part)
        os.replace(part, folder / wheels[0].name)  # never a half-written wheel in the cache
    return folder / wheels[0].name


def install_native(cpuinfo: str | None = None) -> int:
    args = cmake_args(cpu_flags(cpuinfo))
    if args is None:
        print("native runtime: this CPU has no AVX-512; the prebuilt runtime (AVX2) is already the fast one. Nothing to do.")
        return 0
    pin, hashes = requirement_line()
    installed = features()
    if has_avx512(installed):
        print(f"native runtime: already installed ({installed})")
        return 0
    wheel = build(args, pin, hashes)
    _run(_pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel)), "installing the native runtime")
    info = features()
    if not has_avx512(info):
        raise RuntimeBuildError(f"the installed runtime reports no AVX-512 ({info}); remove {wheel.parent} and rerun make native")
    print(f"native runtime: installed ({info}). Back to the prebuilt wheel: python -m sidegate_models.native --prebuilt")
    return 0


def install_prebuilt() -> int:
    pin, hashes = requirement_line()
    with tempfile.TemporaryDirectory(prefix="sidegate-native-") as tmp:
        _run(_pip("install", "-q", "--no-deps", "--force-reinstall", "--only-binary", PACKAGE, "--require-hashes", "-r",
                  _pinned_requirements(tmp, pin, hashes)),
             "installing the prebuilt runtime")
    print(f"prebuilt runtime: installed ({features()})")
    return 0


def status() -> int:
    args = cmake_args(cpu_flags())
    info = features()
    print(f"installed runtime: {'native (AVX-512)' if has_avx512(info) else 'prebuilt (AVX2)'}: {info}")
    if args is None:
        print("this CPU: no AVX-512; the prebuilt runtime is the right one")
    elif not has_avx512(info):
        print("this CPU: AVX-512; make native builds a runtime for it (~1.4x faster prompt evaluation, bench/README.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sidegate_models.native", description=__doc__.split("\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="which runtime is installed, and what this CPU could use")
    group.add_argument("--prebuilt", action="store_true", help="reinstall the pinned prebuilt wheel")
    a = ap.parse_args(argv)
    try:
        return status() if a.status else install_prebuilt() if a.prebuilt else install_native()
    except RuntimeBuildError as exc:
        print(f"native runtime: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
