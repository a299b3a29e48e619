"""Which Triton models a config needs, and the model repository ``sidegate up`` serves them from.

The repository in ``triton_models/`` holds each model's ``config.pbtxt`` (CPU) and
``configs/gpu.pbtxt`` as written by hand. ``render_model_repository`` writes a copy of the two
configs per needed model under ``$SIDEGATE_HOME/run/models/`` with the config's
``model_server.models.<name>`` settings applied (instances, batching, threads, weights), and
links the model's code folder ``1/`` back to the repository, so nothing is duplicated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format

from ext_proc.config import ENSEMBLE_HEADS, ENSEMBLE_STEPS, LOCAL_INTERFACES, MODELS_DIR, THREADS_KEY, Config, ModelSettings

__all__ = ["MODELS_DIR", "needed_models", "render_model_repository"]


def needed_models(cfg: Config) -> list[str]:
    """The models this config's pipeline calls, in load order (embeddings first)."""
    need: list[str] = []
    intent = any(not t.default for t in cfg.prompt_targets)
    semantic_cache = cfg.response_cache is not None and cfg.response_cache.similarity is not None
    # prompt_guard is an ensemble: prompt_embed, then prompt_guard_head on the text and its vector
    agents = any(len(lst.agents) > 1 for lst in cfg.agent_listeners)  # agent listeners embed the conversation (issue 19)
    preferences = any(p.routing_preferences for p in cfg.llm_providers)  # matched with prompt_embed (issue 19)
    if intent or cfg.jailbreak is not None or semantic_cache or agents or preferences:
        need.append("prompt_embed")
    if cfg.jailbreak is not None:
        need += [*(s for s in ENSEMBLE_STEPS["prompt_guard"] if s not in need), "prompt_guard"]
    # function_call fills prompt targets' parameters, and is the guard's judge in the cascade (issue 17)
    # ... and preference routing's judge (issue 19), when one is configured
    if any(t.parameters for t in cfg.prompt_targets) or (cfg.jailbreak is not None and cfg.jailbreak.judge is not None) or (
            preferences and cfg.routing_judge is not None):
        need.append("function_call")
    if any(p.interface in LOCAL_INTERFACES for p in cfg.llm_providers):
        need.append("chat_llm")
    return need


def _owner(name: str) -> str:
    """The ``model_server.models`` key that configures the model folder ``name``."""
    return next((ensemble for ensemble, head in ENSEMBLE_HEADS.items() if head == name), name)


def _settings_for(cfg: Config, name: str) -> ModelSettings:
    """What ``model_server.models`` sets for the model folder ``name``: an ensemble takes only
    its owner's batch size (it has no instances, batching or parameters of its own); its head
    takes everything set under the ensemble's name."""
    settings = cfg.model_server.models.get(_owner(name), ModelSettings())
    if name in ENSEMBLE_HEADS:
        return ModelSettings(max_batch_size=settings.max_batch_size)
    return settings


def _sized(cfg: Config, name: str, settings: ModelSettings) -> ModelSettings:
    """``settings`` with what sidegate sizes from the config where the user set nothing:
    function_call's ``kv_windows`` (its KV cache, allocated at load) from this config's targets
    and judges, so two targets do not hold the memory sixteen would."""
    if name != "function_call" or settings.parameters.get("kv_windows"):
        return settings
    from sidegate_models.function_call.engine import kv_windows_for
    from tritonclient.grpc import model_config_pb2

    from ext_proc.chat.targets import tool_schema

    written = text_format.Parse((MODELS_DIR / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()).parameters
    windows = kv_windows_for(
        [tool_schema(t) for t in cfg.prompt_targets if t.parameters],
        n_ctx=settings.positive("n_ctx", int(written["n_ctx"].string_value)),
        n_slots=settings.positive("n_slots", int(written["n_slots"].string_value)), guard_judge=cfg.jailbreak is not None and cfg.jailbreak.judge is not None,
        route_categories=[(rp.name, rp.description) for p in cfg.llm_providers for rp in p.routing_preferences]
        if cfg.routing_judge is not None else ())
    return replace(settings, parameters={**settings.parameters, "kv_windows": str(windows)})


def _apply(config_text: str, settings: ModelSettings, name: str) -> str:
    from tritonclient.grpc import model_config_pb2

    msg = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    if settings.instances is not None:
        for group in msg.instance_group:
            group.count = settings.instances
    if settings.max_batch_size is not None:
        msg.max_batch_size = settings.max_batch_size
    if settings.max_queue_delay_microseconds is not None:
        msg.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_microseconds
    params = {**settings.parameters, "weights": settings.weights, THREADS_KEY.get(_owner(name), "threads"): settings.threads}
    for key, value in params.items():
        if value is not None:
            msg.parameters[key].string_value = str(value)
    header = f"# rendered by sidegate from {MODELS_DIR / name} with model_server.models.{name} applied\n"
    return header + text_format.MessageToString(msg)


def render_model_repository(cfg: Config, dest: Path) -> Path:
    """Write the repository Triton serves for ``cfg`` into ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.iterdir():
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
    for name in needed_models(cfg):
        src = MODELS_DIR / name
        out = dest / name
        (out / "configs").mkdir(parents=True)
        os.symlink(src / "1", out / "1")
        settings = _sized(cfg, name, _settings_for(cfg, name))
        # a model without configs/gpu.pbtxt (an ensemble, the numpy guard head) runs config.pbtxt
        # under --model-config-name=gpu too, as Triton falls back to it
        for rel in ("config.pbtxt", "configs/gpu.pbtxt"):
            if (src / rel).is_file():
                (out / rel).write_text(_apply((src / rel).read_text(), settings, name))
    return dest
