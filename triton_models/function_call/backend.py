"""What the two llama.cpp models (``function_call``, ``chat_llm``) both need from a request.

Imported from their ``1/model.py`` (inside Triton's python stub, where
``triton_python_backend_utils`` exists): one JSON document per input, the same config check,
the same error for input a model refuses, the same GPU-layer rule.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils


class BadRequest(ValueError):
    """A request the model refuses (answered with INVALID_ARG)."""


# A gRPC stream (both models are decoupled) carries an error's message but not its code, so
# refused input is also marked in the message; ext_proc's TritonClient reads it as a 400.
INVALID_INPUT = "invalid input"


def invalid_input(model: str, detail: object) -> pb_utils.TritonError:
    """The error for input ``model`` refuses: INVALID_ARG, marked for streams."""
    return pb_utils.TritonError(f"{model}: {INVALID_INPUT}: {detail}", pb_utils.TritonError.INVALID_ARG)


def check_config(config: dict, model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, str]:
    """Decoupled, with exactly these tensors; returns the ``parameters`` as strings."""
    if not pb_utils.using_decoupled_model_transaction_policy(config):
        raise pb_utils.TritonModelException(f"{model} must be decoupled (model_transaction_policy)")
    for section, want in (("input", inputs), ("output", outputs)):
        got = {t["name"]: t["data_type"] for t in config.get(section, [])}
        if got != want:
            raise pb_utils.TritonModelException(f"{model} {section}s must be {want}, config has {got}")
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def gpu_layers(setting: str | None, instance_kind: str) -> int:
    """``n_gpu_layers`` applies to KIND_GPU instances only (so both configs share it); -1 = all."""
    if instance_kind != "GPU":
        return 0
    n = int(setting or -1)
    return 999 if n < 0 else n


def json_input(request, name: str, *, required: bool = True) -> object:
    """The one JSON document in input ``name`` (None when optional and absent)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise BadRequest(f"input {name} is missing")
        return None
    arr = tensor.as_numpy()
    if arr.size != 1:
        raise BadRequest(f"{name} must hold exactly one JSON document, got {arr.size}")
    raw = arr.reshape(-1)[0]
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"{name} is not JSON: {exc}") from exc
