"""A stand-in for ``triton_python_backend_utils``, the module Triton's python stub gives a model.

Enough of it to run a model's ``initialize``/``execute`` in process: errors with codes, tensors,
responses, input lookup and a silent logger. ``sys.modules["triton_python_backend_utils"] =
fake_pb_utils()`` before importing the model.
"""

from __future__ import annotations

import types

import numpy as np

__all__ = ["TritonError", "Tensor", "fake_pb_utils"]


class _TritonError:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, msg: str, code: str = "INTERNAL") -> None:
        self.msg, self._code = msg, code

    def message(self) -> str:
        return self.msg

    def code(self) -> str:
        return self._code


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self._error = error

    def error(self) -> _TritonError | None:
        return self._error


def fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TritonError = _TritonError
    pb.TritonModelException = type("TritonModelException", (Exception,), {})
    pb.Tensor = _Tensor
    pb.InferenceResponse = _Response
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.Logger = types.SimpleNamespace(log_info=lambda msg: None, log_warn=lambda msg: None)
    return pb


TritonError, Tensor = _TritonError, _Tensor
