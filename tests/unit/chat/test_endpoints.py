"""A prompt target's endpoint call (``EndpointClient``) against a stand-in for Envoy's internal
listener: the app's own error answers pass through naming target, endpoint and status, while
Envoy's own local replies (the bootstrap's mappers: nothing listening, no answer in time; a real
Envoy produces them in tests/unit/control/test_envoy_bootstrap.py) say what happened and which
key to look at, instead of "answered 502" with Envoy's JSON inside."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ext_proc.chat.endpoints import EndpointClient
from ext_proc.chat.targets import EndpointCall
from ext_proc.errors import UpstreamError
from testkit import free_port
from testkit.configs import cfg_from, raw_config


def _error(code: str, message: str, type_: str = "upstream_error") -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "param": None, "type": type_}}).encode()


# what the internal listener answers, by path: (status, JSON body)
ANSWERS = {
    "/down": (502, _error("upstream_unavailable", "sidegate could not reach the upstream endpoint_app (upstream connect error or "
                                                  "disconnect/reset before headers. reset reason: remote connection failure)")),
    "/slow": (504, _error("upstream_timeout", "sidegate timed out waiting for the upstream endpoint_app (upstream request timeout)")),
    # the app itself answers 502 with a body that merely looks like ours: its answer, passed on
    "/app502": (502, _error("upstream_unavailable", "our database is down")),
    "/app503": (503, b'{"detail": "maintenance"}'),
}


@pytest.fixture
async def client() -> AsyncIterator[EndpointClient]:
    async def answer(request: web.Request) -> web.Response:
        status, body = ANSWERS[request.path]
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    raw = raw_config(prompt_targets=[{"name": "open_ticket", "description": "Open a support ticket.",
                                      "endpoint": {"name": "app", "path": "/tickets", "http_method": "POST"}}])
    raw["listeners"]["internal_traffic"]["port"] = port
    cfg = cfg_from(raw)
    c = EndpointClient(cfg)
    try:
        yield c
    finally:
        await c.close()
        await runner.cleanup()


async def _call(client: EndpointClient, path: str) -> UpstreamError:
    (target,) = [t for t in client.cfg.prompt_targets if t.name == "open_ticket"]
    with pytest.raises(UpstreamError) as info:
        await client.call(target, EndpointCall(method="POST", path=path, json_body={}), {})
    return info.value


async def test_an_endpoint_nothing_listens_on_is_502_naming_its_address_and_key(client: EndpointClient) -> None:
    err = await _call(client, "/down")
    assert (err.status, err.code) == (502, "endpoint_unavailable")
    assert "'open_ticket'" in err.message and "could not be reached at 127.0.0.1:18083" in err.message
    assert "endpoints.app.endpoint" in err.message and "remote connection failure" in err.message
    assert "{" not in err.message  # Envoy's JSON is not pasted into ours


async def test_an_endpoint_that_does_not_answer_in_time_is_504_naming_its_timeout(client: EndpointClient) -> None:
    err = await _call(client, "/slow")
    assert (err.status, err.code) == (504, "endpoint_timeout")
    assert "did not answer within 12s (endpoints.app.timeout)" in err.message


@pytest.mark.parametrize(("path", "status", "detail"), [("/app502", 502, "our database is down"), ("/app503", 503, "maintenance")])
async def test_the_apps_own_error_answers_pass_on_with_their_status(client: EndpointClient, path: str, status: int, detail: str) -> None:
    err = await _call(client, path)
    assert (err.status, err.code) == (status, "endpoint_error")
    assert f"answered {status}" in err.message and detail in err.message


def test_the_stand_in_answers_as_the_internal_listeners_mappers_do() -> None:
    """Envoy fills the mappers' placeholders: the stand-in's messages are those with them filled."""
    from ext_proc.control.envoy_bootstrap import bootstrap_dict
    from testkit.envoy import hcm

    mappers = hcm(bootstrap_dict(cfg_from()), "internal")["local_reply_config"]["mappers"]
    templates = {m["body_format_override"]["json_format"]["error"]["code"]: m["body_format_override"]["json_format"]["error"]["message"]
                 for m in mappers}
    for path in ("/down", "/slow"):
        error = json.loads(ANSWERS[path][1])["error"]
        template = templates[error["code"]].replace("%UPSTREAM_CLUSTER%", "endpoint_app")
        prefix, _, _ = template.partition("%LOCAL_REPLY_BODY%")
        assert error["message"].startswith(prefix) and error["message"].endswith(")")
