"""Every python model folder under triton_models/ has a CPU config.pbtxt and a configs/gpu.pbtxt that
differ only in instance_group kind (except a model that is CPU work wherever it runs, which says
so), and both follow the repository's conventions (STYLE.md item 14); every ensemble's steps are
models of the repository whose tensors its maps name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[3] / "triton_models"
ALL_DIRS = sorted(p for p in MODELS.iterdir() if (p / "config.pbtxt").exists())
ENSEMBLES = [p for p in ALL_DIRS if 'platform: "ensemble"' in (p / "config.pbtxt").read_text()]
MODEL_DIRS = [p for p in ALL_DIRS if p not in ENSEMBLES]  # python backend models
# numpy on the CPU under --local-gpu too: no configs/gpu.pbtxt (Triton falls back to config.pbtxt)
CPU_ONLY = {"prompt_guard_head"}
# steps of an ensemble, called by Triton only: no smoke client of their own
INTERNAL = {"prompt_guard_head"}
GPU_DIRS = [p for p in MODEL_DIRS if p.name not in CPU_ONLY]


def _lines(path: Path) -> list[str]:
    """The config without comments and blank lines (comments may differ between the two files)."""
    out = []
    for line in path.read_text().splitlines():
        line = re.sub(r"#.*", "", line).rstrip()  # no '#' inside our string values
        if line.strip():
            out.append(line)
    return out


def test_there_are_models() -> None:
    assert [p.name for p in MODEL_DIRS], "no model with a config.pbtxt under triton_models/"
    assert "prompt_embed" in [p.name for p in MODEL_DIRS]


@pytest.mark.parametrize("model", MODEL_DIRS, ids=lambda p: p.name)
def test_layout(model: Path) -> None:
    if model.name in CPU_ONLY:
        assert not (model / "configs" / "gpu.pbtxt").exists(), f"{model.name} is listed as CPU only"
        assert "no configs/gpu.pbtxt" in (model / "config.pbtxt").read_text(), f"{model.name}: say why it runs on the CPU"
    else:
        assert (model / "configs" / "gpu.pbtxt").is_file(), f"{model.name}: configs/gpu.pbtxt is missing"
    assert (model / "1" / "model.py").is_file(), f"{model.name}: 1/model.py is missing"
    assert model.name in INTERNAL or (model / "client.py").is_file(), f"{model.name}: smoke client.py is missing"


@pytest.mark.parametrize("ensemble", ENSEMBLES, ids=lambda p: p.name)
def test_ensembles_chain_models_of_the_repository(ensemble: Path) -> None:
    """Each step is a model folder here whose config has the tensors the maps name; the
    ensemble's own inputs feed the first step and every ensemble output is some step's output."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")

    def parse(path: Path):  # type: ignore[no-untyped-def]
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    cfg = parse(ensemble / "config.pbtxt")
    assert cfg.name == ensemble.name and cfg.platform == "ensemble"
    assert (ensemble / "1").is_dir() and (ensemble / "client.py").is_file()
    produced = {t.name for t in cfg.input}
    for step in cfg.ensemble_scheduling.step:
        assert (MODELS / step.model_name / "config.pbtxt").is_file(), step.model_name
        model = parse(MODELS / step.model_name / "config.pbtxt")
        assert set(step.input_map) == {t.name for t in model.input}, step.model_name
        assert set(step.input_map.values()) <= produced, f"{step.model_name} reads a tensor no earlier step writes"
        assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
        assert 0 < cfg.max_batch_size <= model.max_batch_size, step.model_name
        produced |= set(step.output_map.values())
    assert {t.name for t in cfg.output} <= produced


@pytest.mark.parametrize("model", GPU_DIRS, ids=lambda p: p.name)
def test_gpu_config_differs_only_in_kind(model: Path) -> None:
    cpu, gpu = _lines(model / "config.pbtxt"), _lines(model / "configs" / "gpu.pbtxt")
    assert len(cpu) == len(gpu), f"{model.name}: the two configs have different lines"
    diffs = [(a.strip(), b.strip()) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert diffs and set(diffs) == {("kind: KIND_CPU", "kind: KIND_GPU")}, diffs


@pytest.mark.parametrize("model", MODEL_DIRS, ids=lambda p: p.name)
def test_configs_parse_as_model_config(model: Path) -> None:
    """Parsed with Triton's own ModelConfig message: a misspelt field fails here, not at load."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    gpu_path = model / "configs" / "gpu.pbtxt"
    cpu, gpu = (text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
                for p in (model / "config.pbtxt", gpu_path if gpu_path.exists() else model / "config.pbtxt"))
    kind = model_config_pb2.ModelInstanceGroup.Kind
    assert [g.kind for g in cpu.instance_group] == [kind.KIND_CPU] * len(cpu.instance_group)
    gpu_kind = kind.KIND_CPU if model.name in CPU_ONLY else kind.KIND_GPU
    assert [g.kind for g in gpu.instance_group] == [gpu_kind] * len(gpu.instance_group)
    for group in gpu.instance_group:
        group.kind = kind.KIND_CPU
    assert cpu == gpu

    assert cpu.name == model.name
    assert cpu.backend == "python"
    for tensor in [*cpu.input, *cpu.output]:
        assert tensor.name == tensor.name.upper(), f"{model.name}: tensor names are upper case"
        assert list(tensor.dims), f"{model.name}: {tensor.name} has no dims"
    if cpu.max_batch_size > 0:
        assert cpu.HasField("dynamic_batching") or cpu.HasField("sequence_batching")


def test_prompt_embed_contract() -> None:
    """DESIGN.md: TEXT BYTES[-1] -> EMBEDDING FP32[-1, 384], dynamic batching, CPU by default."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    cfg = text_format.Parse((MODELS / "prompt_embed" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    dt = model_config_pb2.DataType
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("TEXT", dt.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("EMBEDDING", dt.TYPE_FP32, [384])]
    assert cfg.max_batch_size > 0 and cfg.HasField("dynamic_batching")
    assert {"threads", "weights", "max_tokens", "max_chars"} <= set(cfg.parameters)
