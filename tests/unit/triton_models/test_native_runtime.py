"""``make native`` (sidegate_models.native): llama.cpp built for this CPU's AVX-512, never AMX,
from the pinned source distribution; the build itself (~9 min on 2 cores) is not run here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sidegate_models import native

AVX2 = "avx avx2 fma f16c bmi2 sse4_2"
AVX512 = AVX2 + " avx512f avx512cd avx512vl avx512dq avx512bw"
CPUINFO = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {AVX512} avx512_vnni amx_tile amx_int8 amx_bf16\n\nprocessor\t: 1\n"


def test_the_flags_are_read_from_cpuinfo() -> None:
    flags = native.cpu_flags(CPUINFO)
    assert {"avx2", "avx512f", "avx512_vnni", "amx_int8"} <= flags
    assert native.cpu_flags("processor\t: 0\n") == set()


def test_a_cpu_without_avx512_keeps_the_prebuilt_runtime() -> None:
    assert native.cmake_args(set(AVX2.split())) is None
    assert native.cmake_args(set(AVX512.split()) - {"avx512bw"}) is None  # ggml's AVX512 switch needs all five


def test_avx512_is_on_its_extensions_as_the_cpu_has_them_and_amx_never() -> None:
    args = native.cmake_args(native.cpu_flags(CPUINFO))
    assert args is not None
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX512=ON" in args
    assert "-DGGML_AVX512_VNNI=ON" in args and "-DGGML_AVX512_VBMI=OFF" in args and "-DGGML_AVX512_BF16=OFF" in args
    # the CPU lists AMX, yet AMX stays off (SIGILL in a VM that does not grant the tile registers)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
    assert not any("AMX" in a and a.endswith("=ON") for a in args)
    # nothing that fetches sources from the network at build time
    assert {"-DLLAMA_BUILD_BORINGSSL=OFF", "-DLLAMA_LLGUIDANCE=OFF"} <= set(args)


def test_the_source_is_pinned_beside_the_wheel_and_is_the_installed_release() -> None:
    pin, hashes = native.requirement_line()
    assert pin.startswith("xllamacpp==") and len(hashes) == 2 and len(set(hashes)) == 2
    if importlib.util.find_spec("xllamacpp") is not None:
        assert pin == f"xllamacpp=={importlib.metadata.version('xllamacpp')}"


def test_a_requirements_file_without_hashes_is_refused(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("xllamacpp==1.0\n")
    with pytest.raises(native.RuntimeBuildError, match="no --hash"):
        native.requirement_line(req)
    req.write_text("numpy==1.26.4\n")
    with pytest.raises(native.RuntimeBuildError, match="pins no xllamacpp"):
        native.requirement_line(req)


def test_each_set_of_flags_has_its_own_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEGATE_RUNTIME_DIR", str(tmp_path))
    a = native.wheel_cache("xllamacpp==1.0", ["-DGGML_AVX512=ON"])
    b = native.wheel_cache("xllamacpp==1.0", ["-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"])
    assert a.parent == tmp_path and a != b and a.name.startswith("xllamacpp-1.0-")


def test_a_wheel_built_before_is_reused_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEGATE_RUNTIME_DIR", str(tmp_path))
    args = ["-DGGML_AVX512=ON"]
    folder = native.wheel_cache("xllamacpp==1.0", args)
    folder.mkdir(parents=True)
    (folder / "xllamacpp-1.0-cp310-abi3-linux_x86_64.whl").write_bytes(b"PK")

    def no_build(*_: object, **__: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(native, "_run", no_build)
    assert native.build(args, "xllamacpp==1.0", ["0" * 64]) == folder / "xllamacpp-1.0-cp310-abi3-linux_x86_64.whl"


def test_without_a_compiler_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEGATE_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(native.shutil, "which", lambda _: None)
    with pytest.raises(native.RuntimeBuildError, match="cmake and a C\\+\\+ compiler"):
        native.build(["-DGGML_AVX512=ON"], "xllamacpp==1.0", ["0" * 64])


def test_a_failed_step_shows_the_end_of_its_output() -> None:
    with pytest.raises(native.RuntimeBuildError, match=r"(?s)compiling failed \(exit 3\).*the compiler said no"):
        native._run([sys.executable, "-c", "import sys; print('the compiler said no'); sys.exit(3)"], "compiling")


def test_the_log_line_names_the_runtime_and_what_would_be_faster() -> None:
    assert native.describe("CPU : AVX2 = 1 | AVX512 = 1 |", set()) == "llama.cpp runtime: native (AVX-512)"
    assert "make native" in native.describe("CPU : AVX2 = 1 |", native.cpu_flags(CPUINFO))
    assert native.describe("CPU : AVX2 = 1 |", set(AVX2.split())) == "llama.cpp runtime: prebuilt (AVX2)"


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed")
def test_status_reports_the_installed_runtime() -> None:
    out = subprocess.run([sys.executable, "-m", "sidegate_models.native", "--status"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("installed runtime: ")
    assert ("native (AVX-512)" in out.stdout) == ("AVX512 = 1" in out.stdout)
