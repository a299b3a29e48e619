"""ext_proc/arch_compat.py: each Arch / plano spelling mapped, each unimplemented key warned, wrong types left to the schema."""

from __future__ import annotations

from typing import Any

import pytest

from ext_proc.arch_compat import normalise
from ext_proc.chat.providers import choose_provider
from ext_proc.config import _PROVIDER_HOSTS, DEFAULT_PORTS, ConfigError, build_config
from ext_proc.wire.openai import parse_chat_request

ENV = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant"}


def norm(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return normalise(raw, default_ports=DEFAULT_PORTS, provider_hosts=_PROVIDER_HOSTS)


def build(raw: dict[str, Any]) -> Any:
    return build_config({"version": "v0.3.0", **raw}, source="arch.yaml", env=ENV)


def refused(raw: dict[str, Any], key_path: str, *words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw)
    assert info.value.path == key_path, str(info.value)
    for w in words:
        assert w in info.value.message, str(info.value)


def test_the_input_is_not_modified() -> None:
    raw = {"listener": {"address": "0.0.0.0", "port": 10000}}
    norm(raw)
    assert raw == {"listener": {"address": "0.0.0.0", "port": 10000}}


@pytest.mark.parametrize("version", ["v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.2.0", "v0.3.0", "v0.4.0"])
def test_every_arch_version_is_accepted(version: str) -> None:
    assert build_config({"version": version}, env=ENV).llm_providers == ()


def test_arch_01_listener_block_is_the_ingress_listener() -> None:
    out, warnings = norm({"listener": {"address": "0.0.0.0", "port": 10000, "message_format": "huggingface", "connect_timeout": "0.005s"}})
    assert out["listeners"] == {"ingress_traffic": {"address": "0.0.0.0", "port": 10000}}
    assert any(w.startswith("listener.message_format: 'huggingface' is ignored") for w in warnings)
    assert any(w.startswith("listener.connect_timeout: ignored") for w in warnings)
    refused({"listener": {"port": 10000}, "listeners": {}}, "listener", "both")


def test_a_listener_port_arch_wrote_moves_a_defaulted_sidegate_port() -> None:
    cfg = build({"listener": {"address": "0.0.0.0", "port": 8080}})  # Arch 0.1 demos: 8080, ext_proc's default HTTP port
    assert cfg.ingress.port == 8080 and cfg.ext_proc.http_port == 8081
    assert any(w.startswith("ext_proc.http_port: moved to 8081") for w in cfg.warnings)


def test_list_form_listeners() -> None:
    out, warnings = norm({"listeners": [
        {"type": "model", "name": "egress", "port": 12001, "address": "0.0.0.0", "timeout": "30s", "max_retries": 3,
         "input_filters": ["guard"]},
        {"type": "prompt", "name": "ingress", "port": 10001},
        {"type": "agent", "name": "travel", "port": 8001, "router": "plano_orchestrator_v1",
         "agents": [{"id": "weather", "description": "d"}]},
    ], "llm_providers": [{"name": "a", "provider_interface": "openai", "model": "gpt-4o"}]})
    assert out["listeners"]["egress_traffic"] == {"port": 12001, "address": "0.0.0.0", "timeout": "30s"}
    assert out["listeners"]["ingress_traffic"] == {"port": 10001}
    assert out["listeners"]["agent_traffic"][0]["name"] == "travel"  # served: ext_proc/config.py reads it
    assert out["llm_providers"][0]["retries"] == 3  # the model listener's max_retries
    assert any(w.startswith("listeners[0].input_filters: filter chains are not implemented") for w in warnings)
    assert any(w.startswith("listeners[2].router: 'plano_orchestrator_v1' is not called: agents are chosen by sidegate's local "
                            "embedding") for w in warnings)
    assert not any(w.startswith("listeners[2]:") for w in warnings)  # the agent listener itself is served
    refused({"listeners": [{"type": "model", "port": 1}, {"type": "model", "port": 2}]}, "listeners[1].type", "second 'model' listener")


def test_a_model_listener_on_10000_moves_the_ingress_default() -> None:
    cfg = build({"listeners": [{"type": "model", "name": "m", "port": 10000}]})
    assert cfg.egress.port == 10000 and cfg.ingress.port != 10000


def test_model_providers_and_unnamed_providers_with_family_prefix() -> None:
    cfg = build({"model_providers": [
        {"model": "openai/gpt-4o", "access_key": "$OPENAI_API_KEY", "default": True},
        {"model": "anthropic/claude-sonnet-4-0", "access_key": "$ANTHROPIC_API_KEY"},
        {"model": "openai/*", "access_key": "$OPENAI_API_KEY"},
    ]})
    a, b, c = cfg.llm_providers
    assert (a.name, a.interface, a.model) == ("openai/gpt-4o", "openai", "gpt-4o")
    assert (b.name, b.interface, b.model) == ("anthropic/claude-sonnet-4-0", "anthropic", "claude-sonnet-4-0")
    assert (c.name, c.interface, c.model) == ("openai/*", "openai", None)
    refused({"model_providers": [], "llm_providers": []}, "model_providers", "both")


def test_derived_names_are_unique() -> None:
    out, _ = norm({"llm_providers": [{"model": "openai/gpt-4o"}, {"model": "openai/gpt-4o"}, {"name": "gpt-4o-2", "model": "x"}]})
    assert [p["name"] for p in out["llm_providers"]] == ["openai/gpt-4o", "openai/gpt-4o-2", "gpt-4o-2"]


def test_provider_is_provider_interface() -> None:
    out, _ = norm({"llm_providers": [{"name": "a", "provider": "openai", "model": "gpt-4o"}]})
    assert out["llm_providers"][0] == {"name": "a", "provider_interface": "openai", "model": "gpt-4o"}
    refused({"llm_providers": [{"name": "a", "provider": "openai", "provider_interface": "mistral"}]}, "llm_providers[0].provider", "disagree")


def test_a_model_prefix_is_stripped_only_when_it_names_the_interface() -> None:
    out, _ = norm({"llm_providers": [{"name": "a", "provider_interface": "openai", "model": "openai/gpt-4o"},
                                     {"name": "b", "provider_interface": "vllm", "model": "meta-llama/Llama-3-8B"}]})
    assert out["llm_providers"][0]["model"] == "gpt-4o"
    assert out["llm_providers"][1]["model"] == "meta-llama/Llama-3-8B"


def test_base_url() -> None:
    out, _ = norm({"llm_providers": [
        {"model": "openai/gpt-4o", "base_url": "https://litellm.example.com"},  # no path: the family's /v1
        {"model": "groq/llama", "base_url": "https://api.groq.com"},  # groq's own prefix
        {"model": "openai/kimi", "base_url": "https://api.kimi.com/coding/v1/"},  # a path is kept
    ]})
    assert [p["endpoint"] for p in out["llm_providers"]] == [
        "https://litellm.example.com/v1", "https://api.groq.com/openai/v1", "https://api.kimi.com/coding/v1"]
    cfg = build({"llm_providers": [{"model": "openai/kimi", "base_url": "https://api.kimi.com/coding/v1"}]})
    assert cfg.llm_providers[0].upstream.base_path == "/coding/v1" and cfg.llm_providers[0].upstream.tls
    refused({"llm_providers": [{"model": "openai/x", "base_url": "ftp://h"}]}, "llm_providers[0].base_url", "http(s)://")
    refused({"llm_providers": [{"model": "openai/x", "base_url": "https://h", "endpoint": "h:1"}]}, "llm_providers[0].base_url", "both")


@pytest.mark.parametrize("url, words", [
    ("https://api.openai.com/v1/chat/completions", ["/chat/completions", "'https://api.openai.com/v1'"]),
    ("https://api.anthropic.com/v1/messages/", ["/messages", "'https://api.anthropic.com/v1'"]),
    ("https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse", ["/converse"]),
    ("https://proxy.example.com/v1?key=abc", ["query or fragment"]),
])
def test_a_base_url_with_the_api_operation_in_its_path_is_refused_with_the_base_to_give(url: str, words: list[str]) -> None:
    refused({"llm_providers": [{"model": "openai/x", "base_url": url}]}, "llm_providers[0].base_url", *words)
    refused({"llm_providers": [{"name": "p", "provider_interface": "openai", "endpoint": url}]}, "llm_providers[0].endpoint", *words)


def test_http_host() -> None:
    out, _ = norm({"llm_providers": [{"model": "openai/x", "base_url": "https://api.custom.com", "http_host": "api.custom.com"}]})
    assert "http_host" not in out["llm_providers"][0]
    other = build({"llm_providers": [{"model": "openai/x", "base_url": "https://10.0.0.1", "http_host": "api.custom.com"}]})
    assert other.llm_providers[0].http_host == "api.custom.com" and other.llm_providers[0].upstream.host == "10.0.0.1"
    cfg = build({"endpoints": {"app": {"endpoint": "10.0.0.1:80", "http_host": "app.local"}}})
    assert cfg.endpoints["app"].http_host == "app.local"


def test_families_sidegate_lacks() -> None:
    out, warnings = norm({"llm_providers": [{"model": "moonshotai/kimi", "base_url": "https://api.kimi.com/v1"}]})
    assert out["llm_providers"][0]["provider_interface"] == "openai"
    assert any("'moonshotai' is not a sidegate family: read as an OpenAI-compatible provider" in w for w in warnings)
    refused({"llm_providers": [{"model": "xiaomi/mimo"}]}, "llm_providers[0].model", "'xiaomi' is not implemented", "base_url")
    out, _ = norm({"llm_providers": [{"model": "plano/Arch-Function"}]})
    assert out["llm_providers"][0]["provider_interface"] == "arch"


def test_tracing() -> None:
    out, warnings = norm({"tracing": {"sampling_rate": 0.1, "opentracing_grpc_endpoint": "http://localhost:4317",
                                      "span_attributes": {}, "exporters": []}})
    assert out["tracing"] == {"random_sampling": 10.0, "otlp_endpoint": "grpc://localhost:4317", "span_attributes": {}, "exporters": []}
    assert any(w.startswith("tracing.sampling_rate: read as random_sampling: 10") for w in warnings)
    assert any(w.startswith("tracing.span_attributes:") for w in warnings) and any(w.startswith("tracing.exporters:") for w in warnings)
    assert norm({"tracing": {"sampling_rate": 50}})[0]["tracing"]["random_sampling"] == 50
    refused({"tracing": {"sampling_rate": 0.5, "random_sampling": 5}}, "tracing.sampling_rate", "both")


def test_overrides() -> None:
    out, warnings = norm({"overrides": {"upstream_connect_timeout": "10s", "disable_signals": True, "llm_routing_model": "x",
                                        "optimize_context_window": True},
                          "llm_providers": [{"model": "openai/gpt-4o"}]})
    assert out["overrides"] == {"llm_routing_model": "x", "optimize_context_window": True}
    assert out["llm_providers"][0]["connect_timeout"] == "10s"
    assert {w.split(":")[0] for w in warnings} == {"overrides.llm_routing_model", "overrides.optimize_context_window"}


@pytest.mark.parametrize("key, value", [
    ("filters", [{"id": "f", "url": "http://localhost:2"}]),
    ("routing", {"model": "x"}), ("model_metrics_sources", [{"type": "cost"}]),
    ("prompt_caching", {"enabled": True}), ("mode", "llm"),
])
def test_unimplemented_top_level_keys_are_kept_and_warned(key: str, value: Any) -> None:
    cfg = build({key: value})
    assert cfg.raw[key] == value
    assert any(w.startswith(f"{key}: ") for w in cfg.warnings)


def test_unimplemented_provider_keys_are_warned() -> None:
    cfg = build({"llm_providers": [{"model": "openai/gpt-4o", "routing_preferences": [{"name": "n", "description": "d"}],
                                    "passthrough_auth": True, "access_key": "$UNSET_KEY", "headers": {"User-Agent": "x"}}]})
    heads = {w.split(":")[0] for w in cfg.warnings}
    assert "llm_providers[0].access_key" in heads  # passthrough: the key is ignored
    assert not any("routing_preferences" in h for h in heads)  # implemented (issue 19): read, not warned
    p = cfg.llm_providers[0]
    assert p.passthrough_auth and p.access_key is None and p.headers == (("User-Agent", "x"),)


def test_chatgpt_is_filled_in_as_plano_does() -> None:
    cfg = build({"llm_providers": [{"model": "chatgpt/*"}]})
    p = cfg.llm_providers[0]
    assert (p.interface, p.upstream.host, p.upstream.base_path, p.passthrough_auth) == ("openai", "chatgpt.com", "/backend-api/codex", True)
    assert dict(p.headers)["originator"] == "codex_cli_rs"
    assert any(w.startswith("llm_providers[0]: chatgpt is read as plano fills it in") and "ChatGPT-Account-Id" in w for w in cfg.warnings)


def test_provider_routing_preferences_are_read() -> None:
    cfg = build({"llm_providers": [
        {"model": "openai/gpt-4o", "default": True},
        {"model": "anthropic/claude-sonnet-4-5", "routing_preferences": [{"name": "code generation", "description": "writing new code"}]},
        {"model": "openai/gpt-4o-mini", "usage": "summarising long documents"},  # Arch 0.3.0's one-line form
    ]})
    assert [(rp.name, rp.description) for p in cfg.llm_providers for rp in p.routing_preferences] == [
        ("code generation", "writing new code"), ("openai/gpt-4o-mini", "summarising long documents")]


def test_plano_top_level_routing_preferences_go_to_the_first_configured_model() -> None:
    cfg = build({"llm_providers": [{"model": "openai/gpt-4o", "default": True}, {"model": "anthropic/claude-sonnet-4-5"}],
                 "routing_preferences": [
                     {"name": "code", "description": "writing code", "models": ["xai/grok-4", "anthropic/claude-sonnet-4-5"]},
                     {"name": "nowhere", "description": "d", "models": ["xai/grok-4"]}]})
    claude = cfg.provider("anthropic/claude-sonnet-4-5")
    assert claude is not None and [rp.name for rp in claude.routing_preferences] == ["code"]
    assert "routing_preferences" not in cfg.raw
    assert any(w.startswith("routing_preferences[1]: none of its models") for w in cfg.warnings)


@pytest.mark.parametrize("prefs, key_path", [
    ([{"name": "code"}], "llm_providers[0].routing_preferences[0]"),  # no description
    ([{"name": "code", "description": ""}], "llm_providers[0].routing_preferences[0].description"),
    ([{"name": "code", "description": "d", "models": ["x"]}], "llm_providers[0].routing_preferences[0].models"),  # plano's key on a provider
])
def test_malformed_routing_preferences_are_refused(prefs: list[dict[str, Any]], key_path: str) -> None:
    refused({"llm_providers": [{"model": "openai/gpt-4o", "routing_preferences": prefs}]}, key_path)


def test_a_routing_preference_name_used_twice_is_refused() -> None:
    refused({"llm_providers": [
        {"model": "openai/gpt-4o", "default": True, "routing_preferences": [{"name": "code", "description": "writing code"}]},
        {"model": "openai/gpt-4o-mini", "routing_preferences": [{"name": "code", "description": "reviewing code"}]}]},
        "llm_providers[1].routing_preferences[0].name", "already used at llm_providers[0].routing_preferences[0]")


def test_near_identical_preference_descriptions_are_warned() -> None:
    cfg = build({"llm_providers": [
        {"model": "openai/gpt-4o", "default": True,
         "routing_preferences": [{"name": "code generation", "description": "generating new code snippets, functions, or boilerplate"}]},
        {"model": "openai/gpt-4o-mini",
         "routing_preferences": [{"name": "codegen", "description": "Generating new code snippets, functions or boilerplate."},
                                 {"name": "summaries", "description": "summarising long documents and meetings"}]}],
        "model_server": {"mode": "remote", "endpoint": "grpc://127.0.0.1:8001"}})
    near = [w for w in cfg.warnings if "nearly the same" in w]
    assert len(near) == 1 and near[0].startswith("llm_providers[1].routing_preferences[0].description: nearly the same as "
                                                 "llm_providers[0].routing_preferences[0] ('code generation'")


def test_routing_preferences_without_a_model_server_are_warned() -> None:
    cfg = build({"llm_providers": [{"model": "openai/gpt-4o", "routing_preferences": [{"name": "code", "description": "writing code"}]}],
                 "model_server": {"mode": "none"}})
    assert any("model_server is off" in w and w.startswith("llm_providers[0].routing_preferences[0]") for w in cfg.warnings)


def test_string_parameter_defaults_are_read_as_their_type() -> None:
    out, _ = norm({"prompt_targets": [{"name": "t", "parameters": [{"name": "n", "type": "int", "default": "5"},
                                                                  {"name": "b", "type": "bool", "default": "true"},
                                                                  {"name": "s", "type": "int", "default": "five"}]}]})
    assert [p["default"] for p in out["prompt_targets"][0]["parameters"]] == [5, True, "five"]


@pytest.mark.parametrize("raw, key_path, words", [
    ({"listener": "0.0.0.0:10000"}, "listener", "expected a mapping"),
    ({"model_providers": {"model": "x"}}, "model_providers", "expected a list"),
    ({"llm_providers": [{"model": "openai/x", "base_url": 42}]}, "llm_providers[0].base_url", "expected a string"),
    ({"listeners": [{"type": "model", "port": "12000"}]}, "listeners[0].port", "expected an integer"),
    ({"listeners": [{"type": "modle", "port": 12000}]}, "listeners[0].type", "'model'"),
    ({"tracing": {"sampling_rate": "10%"}}, "tracing.sampling_rate", "expected a number"),
    ({"agents": {"id": "a"}}, "agents", "expected a list"),
    ({"model_aliases": {"fast": "gpt-4o"}}, "model_aliases.fast", "expected a mapping"),
    ({"not_arch_either": 1}, "not_arch_either", "unknown key"),
])
def test_wrong_types_are_left_to_the_schema(raw: dict[str, Any], key_path: str, words: str) -> None:
    refused(raw, key_path, words)


PROVIDERS = {"llm_providers": [
    {"model": "openai/gpt-4o", "access_key": "$OPENAI_API_KEY", "default": True},
    {"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY"},
    {"model": "anthropic/*", "access_key": "$ANTHROPIC_API_KEY"},
], "model_aliases": {"fast-llm": {"target": "gpt-4o-mini"}, "smart": {"target": "openai/gpt-4o"},
                     "claude": {"target": "anthropic/claude-sonnet-4-0"}}}


@pytest.mark.parametrize("model, provider, sent", [
    ("fast-llm", "openai/gpt-4o-mini", "gpt-4o-mini"),  # alias -> its target's provider
    ("smart", "openai/gpt-4o", "gpt-4o"),
    ("claude", "anthropic/*", "claude-sonnet-4-0"),  # alias -> family/model -> the family's wildcard provider
    ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini"),  # family/model
    ("anthropic/claude-3-5-haiku", "anthropic/*", "claude-3-5-haiku"),
    ("gpt-4o-mini", "openai/gpt-4o-mini", None),  # a provider's model: unchanged
    ("something-else", "openai/gpt-4o", "gpt-4o"),  # nobody's: the default
])
def test_egress_routing_by_alias_and_family(model: str, provider: str, sent: str | None) -> None:
    cfg = build(PROVIDERS)
    assert cfg.model_aliases == {"fast-llm": "gpt-4o-mini", "smart": "openai/gpt-4o", "claude": "anthropic/claude-sonnet-4-0"}
    req = parse_chat_request(b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % model.encode())
    choice = choose_provider(cfg, {}, req)
    assert choice.provider.name == provider
    assert (None if choice.body is None else __import__("json").loads(choice.body)["model"]) == sent


def test_an_alias_to_no_provider_is_refused() -> None:
    refused({**PROVIDERS, "model_aliases": {"x": {"target": "mistral/large"}}}, "model_aliases.x.target", "'mistral/large'")


def test_a_plano_config_with_preferences_is_told_how_to_re_route_named_models() -> None:
    prefs = [{"name": "code generation", "description": "writing code"}]
    plano = {"model_providers": [{"model": "openai/gpt-4o", "default": True}, {"model": "openai/gpt-5", "routing_preferences": prefs}]}
    assert any("overrides.route_named_models: true" in w for w in norm(plano)[1])
    top_level = {"model_providers": [{"model": "openai/gpt-4o", "default": True}],
                 "routing_preferences": [{**prefs[0], "models": ["openai/gpt-4o"]}]}
    assert any("overrides.route_named_models" in w for w in norm(top_level)[1])
    for quiet in ({**plano, "overrides": {"route_named_models": False}},  # chosen either way: nothing to say
                  {"llm_providers": plano["model_providers"]},  # sidegate's and Arch's shape
                  {"model_providers": [{"model": "openai/gpt-4o", "default": True}]}):  # no preferences
        assert not any("route_named_models" in w for w in norm(quiet)[1])
