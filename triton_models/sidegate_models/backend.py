"""What every model's ``1/model.py`` needs from Triton's python backend, written once.

Imported inside Triton's python stub, where ``triton_python_backend_utils`` exists (the tests
put ``testkit.triton_stub.fake_pb_utils()`` in its place first):

* the config: :func:`check_tensors` (the tensors a model expects), :func:`read_config` (parsed and
  checked), :func:`parameters` (its ``parameters`` as strings), :func:`check_config` (tensors and
  parameters of a decoupled model), :func:`gpu_layers`;
* refused input: :class:`BadRequest`, :func:`invalid_input` (INVALID_ARG, marked for streams),
  :func:`internal_error`, :func:`json_input` (one JSON document per input);
* dynamic batching (``prompt_embed``, ``prompt_guard_head``): :func:`collect_batch` gathers the
  rows of every request of a batch, answering a bad request alone with INVALID_ARG;
* decoupled models (``function_call``, ``chat_llm``): :class:`DecoupledWorker` answers each
  request on one worker thread, and waits for the last at ``finalize``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import triton_python_backend_utils as pb_utils

__all__ = [
    "INVALID_INPUT",
    "BadRequest",
    "Batch",
    "DecoupledWorker",
    "check_config",
    "check_tensors",
    "collect_batch",
    "gpu_layers",
    "internal_error",
    "invalid_input",
    "json_input",
    "parameters",
    "read_config",
]


class BadRequest(ValueError):
    """A request the model refuses (answered with INVALID_ARG)."""


# A gRPC stream (both llama.cpp models are decoupled) carries an error's message but not its code,
# so refused input is also marked in the message; ext_proc's TritonClient reads it as a 400
# (ext_proc/names.py INVALID_INPUT_MARK: the same words, tests/unit/test_names.py checks).
INVALID_INPUT = "invalid input"


def invalid_input(model: str, detail: object) -> pb_utils.TritonError:
    """The error for input ``model`` refuses: INVALID_ARG, marked for streams."""
    return pb_utils.TritonError(f"{model}: {INVALID_INPUT}: {detail}", pb_utils.TritonError.INVALID_ARG)


def internal_error(model: str, exc: Exception) -> pb_utils.InferenceResponse:
    """The answer to a request that failed for a reason of the model's own (logged): INTERNAL,
    naming only the exception's type; the model keeps serving."""
    pb_utils.Logger.log_error(f"{model}: {type(exc).__name__}: {exc}")
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"{model}: internal error: {type(exc).__name__}", pb_utils.TritonError.INTERNAL)
    )


def check_tensors(config: dict, model: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """The config declares exactly these tensors (``{name: data_type}``), or the model does not load."""
    for section, want in (("input", inputs), ("output", outputs)):
        got = {t["name"]: t["data_type"] for t in config.get(section, [])}
        if got != want:
            raise pb_utils.TritonModelException(f"{model}: config {section}s must be {want}, found {got}")


def read_config(args: dict[str, str], model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    """The model config ``initialize`` is given (``args["model_config"]``), checked by :func:`check_tensors`."""
    config = json.loads(args["model_config"])
    check_tensors(config, model, inputs, outputs)
    return config


def parameters(config: dict) -> dict[str, str]:
    """The config's ``parameters`` as ``{key: string value}``."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def check_config(config: dict, model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, str]:
    """Decoupled, with exactly these tensors; returns the ``parameters`` as strings."""
    if not pb_utils.using_decoupled_model_transaction_policy(config):
        raise pb_utils.TritonModelException(f"{model} must be decoupled (model_transaction_policy)")
    check_tensors(config, model, inputs, outputs)
    return parameters(config)


def gpu_layers(setting: str | None, instance_kind: str) -> int:
    """``n_gpu_layers`` applies to KIND_GPU instances only (so both configs share it); -1 = all."""
    if instance_kind != "GPU":
        return 0
    n = int(setting or -1)
    return 999 if n < 0 else n


def json_input(request: Any, name: str, *, required: bool = True) -> object:
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


# ---------------------------------------------------------------- dynamic batching


@dataclass
class Batch:
    """The requests of one ``execute``: their accepted rows in one list, to run in one pass."""

    responses: list[Any]  # one per request: its INVALID_ARG answer already, or None until answered
    rows: list[Any] = field(default_factory=list)  # the rows of every accepted request, in order
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (request index, first row, end) into rows

    def answer(self, outputs: Callable[[int, int], list[Any]]) -> list[Any]:
        """Every accepted request answered with ``outputs(first row, end)`` (its tensors); the
        responses, in request order."""
        for i, start, end in self.spans:
            self.responses[i] = pb_utils.InferenceResponse(output_tensors=outputs(start, end))
        return self.responses


def collect_batch(requests: Sequence[Any], read: Callable[[Any], Sequence[Any]]) -> Batch:
    """The rows ``read(request)`` gives for each request, gathered in order; a request whose
    ``read`` raises ValueError gets its own INVALID_ARG answer (the message) and the others in
    the batch are still answered."""
    batch = Batch([None] * len(requests))
    for i, request in enumerate(requests):
        try:
            rows = read(request)
        except ValueError as exc:
            batch.responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
            continue
        batch.spans.append((i, len(batch.rows), len(batch.rows) + len(rows)))
        batch.rows.extend(rows)
    return batch


# ---------------------------------------------------------------- decoupled models


class DecoupledWorker:
    """Answers a decoupled model's requests on one worker thread: ``execute`` hands each request
    to :meth:`submit` and returns at once; ``respond(request)`` sends its responses and the FINAL
    flag. :meth:`close` (from ``finalize``) waits up to ``timeout`` seconds for the requests in
    flight, then for the thread. One thread: llama.cpp serializes calls anyway (its threads are
    the cores)."""

    def __init__(self, name: str, respond: Callable[[Any], None]) -> None:
        self._respond = respond
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._inflight = 0
        self._idle = threading.Condition()

    def submit(self, requests: Sequence[Any]) -> None:
        for request in requests:
            with self._idle:
                self._inflight += 1
            self._pool.submit(self._run, request)

    def _run(self, request: Any) -> None:
        try:
            self._respond(request)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def close(self, timeout: float = 60) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)
        self._pool.shutdown(wait=True)
