"""The strings two processes must agree on (ext_proc/names.py) still match on both sides.

Each side is checked through what it really produces: the rendered Envoy bootstrap, the model
side's error for refused input, and Triton's words for a dead stub as the client reads them.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from ext_proc import names
from ext_proc.control.envoy_bootstrap import bootstrap_dict
from ext_proc.errors import ModelServerError
from ext_proc.models.triton import TritonClient
from testkit.configs import cfg_from
from testkit.envoy import ext_proc, routes
from testkit.triton_stub import fake_pb_utils as _fake_pb_utils

def test_envoy_routes_on_the_header_ext_proc_sets_and_tells_it_the_listener() -> None:
    d = bootstrap_dict(cfg_from())
    for name in ("ingress", "egress", "internal"):  # internal: ext_proc's own calls to app endpoints
        matched = {h["name"] for r in routes(d, name) for h in r["match"].get("headers", [])}
        assert matched == {names.UPSTREAM_HEADER}, name
    for name in ("ingress", "egress"):
        metadata = ext_proc(d, name)["grpc_service"]["initial_metadata"]
        assert metadata == [{"key": names.LISTENER_METADATA, "value": name}]  # the values dataplane/routes.py serves


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Any:
    """sidegate_models.backend (triton_models/sidegate_models/backend.py) as the Triton stub
    imports it: afresh, against a fake pb_utils."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.delitem(sys.modules, "sidegate_models.backend", raising=False)
    return importlib.import_module("sidegate_models.backend")


def _client_reads(message: str, status: str = "") -> ModelServerError:
    async def seen() -> ModelServerError:
        client = TritonClient("grpc://127.0.0.1:1", auto_reload=False)
        try:
            with pytest.raises(ModelServerError) as info, client._model_server_errors("function_call", "function_call", 5):
                raise InferenceServerException(message, status=status or None)
        finally:
            await client.close()
        return info.value

    return asyncio.run(seen())


def test_refused_input_on_a_stream_is_read_as_a_400(backend: Any) -> None:
    assert backend.INVALID_INPUT == names.INVALID_INPUT_MARK
    error = backend.invalid_input("function_call", "TOOLS is not JSON")
    err = _client_reads(error.message())  # a stream carries the message, not the code
    assert (err.status, err.code) == (400, "model_input_invalid")


def test_tritons_words_for_a_dead_stub_mark_the_model_unhealthy() -> None:
    # Triton 2.51's python backend (src/pb_stub / python_be.cc): "Stub process '<instance>' is not healthy."
    err = _client_reads("Failed to process the request(s) for model instance 'function_call_0_0', message: "
                        "Stub process 'function_call_0_0' is not healthy.", "StatusCode.INTERNAL")
    assert err.code == "model_server_unhealthy"
    assert names.STUB_DEAD_INSTANCE.search("Stub process 'prompt_embed_0_1' is not healthy.")["instance"] == "prompt_embed_0_1"
