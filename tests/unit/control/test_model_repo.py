"""Which models a config needs, and the repository `sidegate up` renders for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.config import Config, load_config
from ext_proc.control.model_repo import MODELS_DIR, needed_models, render_model_repository
from testkit import gateway_config

pytest.importorskip("tritonclient.grpc", reason="model dependencies not installed (requirements-models.txt)")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

OPENAI = {"name": "o", "provider_interface": "openai", "endpoint": "http://127.0.0.1:1/v1", "model": "m", "default": True}
LOCAL = {"name": "local", "provider_interface": "sidegate", "model": "qwen2.5-coder-0.5b", "default": True}
GUARD = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
PLAIN_TARGET = {"name": "reset_password", "description": "Reset a password.", "endpoint": {"name": "app", "path": "/reset"}}
PARAM_TARGET = {"name": "get_weather", "description": "Weather for a city.", "endpoint": {"name": "app", "path": "/weather"},
                "parameters": [{"name": "city", "type": "str", "description": "the city", "required": True}]}


def config(tmp_path: Path, providers: list[dict[str, Any]], **extra: Any) -> Config:
    raw = gateway_config(providers, **extra)
    if "prompt_targets" in extra:
        raw["endpoints"] = {"app": {"endpoint": "127.0.0.1:1"}}
    path = tmp_path / "sidegate.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


@pytest.mark.parametrize(("providers", "extra", "models"), [
    ([OPENAI], {}, []),
    ([LOCAL], {}, ["chat_llm"]),
    ([OPENAI], {"prompt_guards": GUARD}, ["prompt_embed", "prompt_guard_head", "prompt_guard"]),
    ([OPENAI], {"prompt_targets": [PLAIN_TARGET]}, ["prompt_embed"]),
    ([LOCAL], {"prompt_guards": GUARD, "prompt_targets": [PLAIN_TARGET, PARAM_TARGET]},
     ["prompt_embed", "prompt_guard_head", "prompt_guard", "function_call", "chat_llm"]),
])
def test_needed_models_follow_the_config(tmp_path: Path, providers: list[dict[str, Any]], extra: dict[str, Any], models: list[str]) -> None:
    assert needed_models(config(tmp_path, providers, **extra)) == models


def parsed(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_rendered_configs_carry_the_model_server_settings_in_both_variants(tmp_path: Path) -> None:
    head = tmp_path / "my-head"
    cfg = config(tmp_path, [LOCAL], prompt_guards=GUARD, model_server={"models": {
        "prompt_embed": {"instances": 2, "max_batch_size": 16, "max_queue_delay_microseconds": 500, "threads": 1},
        "prompt_guard": {"weights": str(head), "instances": 2},
        "chat_llm": {"weights": "/models/mine.gguf", "threads": 3, "parameters": {"n_ctx": 8192, "max_tokens": 256}},
    }})
    out = render_model_repository(cfg, tmp_path / "repo")
    assert sorted(p.name for p in out.iterdir()) == ["chat_llm", "prompt_embed", "prompt_guard", "prompt_guard_head"]
    for name in ("prompt_guard", "prompt_guard_head"):  # the guard's ensemble and its numpy head run as written under --local-gpu
        assert (out / name / "1").resolve() == (MODELS_DIR / name / "1").resolve()
        assert not (out / name / "configs" / "gpu.pbtxt").exists()
    for name in ("chat_llm", "prompt_embed"):
        assert (out / name / "1").is_symlink() and (out / name / "1").resolve() == (MODELS_DIR / name / "1").resolve()
        cpu, gpu = parsed(out / name / "config.pbtxt"), parsed(out / name / "configs" / "gpu.pbtxt")
        assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
        for g in gpu.instance_group:
            g.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert gpu == cpu, f"{name}: the GPU variant differs in more than the instance kind"

    embed = parsed(out / "prompt_embed" / "config.pbtxt")
    assert [g.count for g in embed.instance_group] == [2] and embed.max_batch_size == 16
    assert embed.dynamic_batching.max_queue_delay_microseconds == 500 and embed.parameters["threads"].string_value == "1"
    # the guard's settings are its head's; the ensemble has none of its own but the batch size
    head_cfg, ensemble = parsed(out / "prompt_guard_head" / "config.pbtxt"), parsed(out / "prompt_guard" / "config.pbtxt")
    assert head_cfg.parameters["weights"].string_value == str(head) and [g.count for g in head_cfg.instance_group] == [2]
    assert ensemble.platform == "ensemble" and ensemble == parsed(MODELS_DIR / "prompt_guard" / "config.pbtxt")
    llm = parsed(out / "chat_llm" / "config.pbtxt")
    assert llm.parameters["weights"].string_value == "/models/mine.gguf" and llm.parameters["n_threads"].string_value == "3"
    assert llm.parameters["n_ctx"].string_value == "8192" and llm.parameters["max_tokens"].string_value == "256"
    # settings not given keep the repository's values
    assert head_cfg.parameters["threshold"] == parsed(MODELS_DIR / "prompt_guard_head" / "config.pbtxt").parameters["threshold"]


def test_rendering_again_drops_models_the_config_no_longer_needs(tmp_path: Path) -> None:
    out = render_model_repository(config(tmp_path, [LOCAL], prompt_guards=GUARD), tmp_path / "repo")
    assert (out / "prompt_guard").is_dir()
    render_model_repository(config(tmp_path, [LOCAL]), out)
    assert sorted(p.name for p in out.iterdir()) == ["chat_llm"]


def test_function_calls_kv_cache_is_sized_from_the_config_unless_the_user_sets_it(tmp_path: Path) -> None:
    def windows(**extra: Any) -> str:
        out = render_model_repository(config(tmp_path, [OPENAI], **extra), tmp_path / "repo")
        cpu, gpu = parsed(out / "function_call" / "config.pbtxt"), parsed(out / "function_call" / "configs" / "gpu.pbtxt")
        assert cpu.parameters["kv_windows"] == gpu.parameters["kv_windows"]
        return str(cpu.parameters["kv_windows"].string_value)

    assert parsed(MODELS_DIR / "function_call" / "config.pbtxt").parameters["kv_windows"].string_value == ""  # the model's own: 6
    targets = [{**PARAM_TARGET, "name": f"target_{i}", "description": f"Target number {i}, which does its own thing."} for i in range(12)]
    assert windows(prompt_targets=targets[:1]) == "2"
    assert windows(prompt_targets=targets) == "6"
    assert windows(prompt_targets=targets, model_server={"models": {"function_call": {"parameters": {"n_slots": 2}}}}) == "2"
    assert windows(prompt_targets=targets[:1], model_server={"models": {"function_call": {"parameters": {"kv_windows": 5}}}}) == "5"
