"""ext_proc/triton_server.py without starting Triton: which local mode `sidegate up` picks, what is
swept after a server."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from ext_proc.control import triton_server
from ext_proc.control.triton_server import default_local_mode, gpu_check, gpu_names, python_env_dirs, remove_python_envs

H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-b6d9cb47-abc7-641a-ac3c-6338315cec3f)"


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, code: int = 0) -> None:
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def torch_version(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    real = importlib.metadata.version

    def version_of(name: str) -> str:
        if name != "torch":
            return real(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", version_of)


def test_no_driver_means_cpu_and_nothing_to_say(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert gpu_names() == [] and default_local_mode() == ("local-cpu", None)
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", code=9)
    assert gpu_names() == [] and default_local_mode() == ("local-cpu", None)


@pytest.mark.parametrize(("torch", "mode", "words"), [
    ("2.13.0", "local-gpu", "models on the GPU"),
    ("2.13.0+cu128", "local-gpu", "--local-cpu keeps them on the CPU"),
    ("2.13.0+cpu", "local-cpu", "torch 2.13.0+cpu is the CPU build"),
    (None, "local-cpu", "torch is not installed"),
])
def test_a_gpu_is_used_only_with_a_cuda_build_of_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        torch: str | None, mode: str, words: str) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, H100)
    torch_version(monkeypatch, torch)
    assert gpu_names() == [H100]
    chosen, why = default_local_mode()
    assert chosen == mode and why is not None
    assert why.startswith("GPU 0: NVIDIA H100 80GB HBM3 found") and words in why


def test_gpu_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_check() == (None, "no GPU found (nvidia-smi -L lists none)")
    fake_nvidia_smi(tmp_path, monkeypatch, H100)
    torch_version(monkeypatch, "2.13.0")
    assert gpu_check() == ("GPU 0: NVIDIA H100 80GB HBM3", None)


def test_a_servers_python_backend_scratch_dir_is_swept_only_when_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A SIGKILLed tritonserver leaves /tmp/python_env_XXXXXX behind (its python backend removes it
    only when finalized): the supervisor removes the one that server made, never one with
    something in it (an EXECUTION_ENV_PATH extracted there) and never another server's."""
    monkeypatch.setattr(triton_server, "PYTHON_ENV_DIR", tmp_path)
    (tmp_path / "python_env_OTHER1").mkdir()  # another server's, there before ours started
    before = python_env_dirs()
    ours, extracted = tmp_path / "python_env_abc123", tmp_path / "python_env_def456"
    ours.mkdir()
    extracted.mkdir()
    (extracted / "bin").mkdir()
    (tmp_path / "unrelated").mkdir()
    made = python_env_dirs() - before
    assert made == {ours, extracted}
    assert remove_python_envs(made) == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python_env_OTHER1", "python_env_def456", "unrelated"]
    assert remove_python_envs([ours]) == []  # already gone (a server that exited cleanly removed its own): nothing to do
