"""The gateway config: what loads, what a user sees when it does not, and the typed values.

Every refusal is checked the way a user reads it: ``<file>: <key.path>: <what was expected>``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.config import DEFAULT_CONFIG, ConfigError, load_config, parse_duration

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def write(tmp_path: Path, config: dict[str, Any] | str, name: str = "arch_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


ENV = {"OPENAI_API_KEY": "sk-test"}


def refused(path: Path, key_path: str, *expected: str, env: dict[str, str] | None = None) -> ConfigError:
    """Load ``path``, expect a ConfigError at ``key_path`` whose text contains every ``expected``."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env)
    exc = info.value
    text = str(exc)
    assert text.startswith(f"{path}: "), text
    assert path.name in text
    assert exc.path == key_path, text
    if key_path:
        assert f"{path}: {key_path}: " in text, text
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return exc


BASE: dict[str, Any] = {
    "version": "v0.1",
    "endpoints": {"app": {"endpoint": "127.0.0.1:18083"}},
    "llm_providers": [
        {"name": "gpt-4o-mini", "provider_interface": "openai", "access_key": "$OPENAI_API_KEY",
         "model": "gpt-4o-mini", "default": True},
        {"name": "local", "provider_interface": "ollama", "model": "llama3.2"},
    ],
    "prompt_targets": [
        {"name": "get_weather", "description": "Get the weather",
         "parameters": [{"name": "city", "type": "str", "required": True}],
         "endpoint": {"name": "app", "path": "/weather/{city}", "http_method": "GET"}},
    ],
}


def variant(**changes: Any) -> dict[str, Any]:
    """BASE with keys replaced; a key like ``"llm_providers[1].default"`` reaches inside."""
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = re.findall(r"[^.\[\]]+", dotted)
        node: Any = cfg
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return cfg


def vary(tmp_path: Path, **changes: Any) -> Path:
    """Write ``variant(**changes)`` as the config file in ``tmp_path``."""
    return write(tmp_path, variant(**changes))


# --------------------------------------------------------------------------------------------
# configs that ship with sidegate


def test_embedded_default_loads() -> None:
    cfg = load_config(env={})
    assert cfg.source == str(DEFAULT_CONFIG)
    assert (cfg.ingress.port, cfg.egress.port, cfg.internal.port, cfg.admin_port) == (10000, 12000, 11000, 9901)
    assert cfg.default_provider is not None
    assert cfg.ext_proc.port == 50051


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    variables = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    cfg = load_config(path, env={v: f"value-of-{v}" for v in variables})
    assert cfg.source == str(path)
    assert len(cfg.llm_providers) <= 1 or cfg.default_provider is not None
    assert cfg.warnings == ()  # e.g. no ext_proc.message_timeout shorter than the model deadlines


def test_openai_example_reads_keys_from_env() -> None:
    cfg = load_config(CONFIG_DIR / "openai.yaml", env={"OPENAI_API_KEY": "sk-o", "MISTRAL_API_KEY": "sk-m"})
    assert cfg.secret_env() == {"OPENAI_API_KEY": "sk-o", "MISTRAL_API_KEY": "sk-m"}
    assert cfg.default_provider is not None and cfg.default_provider.name == "gpt-4o-mini"


def test_weather_demo() -> None:
    cfg = load_config(CONFIG_DIR / "weather_demo.yaml", env={})
    targets = {t.name: t for t in cfg.prompt_targets}
    weather = targets["get_current_weather"]
    assert [(p.name, p.type, p.required) for p in weather.parameters] == [("location", "string", True), ("days", "integer", True)]
    assert (weather.endpoint.name, weather.endpoint.path, weather.endpoint.http_method) == ("demo_app", "/weather", "POST")
    rate = targets["get_exchange_rate"]
    assert rate.parameters[0].in_path and rate.endpoint.http_method == "GET"
    assert rate.endpoint.path == "/exchange/{currency_symbol}"
    default = [t for t in cfg.prompt_targets if t.default]
    assert len(default) == 1 and not default[0].auto_llm_dispatch_on_response
    assert default[0].endpoint.path == "/default"
    assert cfg.endpoints["demo_app"].upstream.port == 18083
    assert cfg.jailbreak_message
    assert len(cfg.llm_providers) == 3 and cfg.default_provider.name == "local"
    assert cfg.default_provider.interface == "sidegate" and cfg.intent_threshold == 0.35


# --------------------------------------------------------------------------------------------
# a config written for Arch (katanemo/archgw docs and demos) loads as it is

ARCH_CONFIG = """\
version: v0.1

listeners:
  ingress_traffic:
    address: 0.0.0.0
    port: 10000
    message_format: openai
    timeout: 30s
  egress_traffic:
    address: 0.0.0.0
    port: 12000
    message_format: openai
    timeout: 30s

# Arch creates a round-robin load balancing between different endpoints, managed via the cluster subsystem.
endpoints:
  weather_forecast_service:
    # value could be ip address or a hostname with port
    endpoint: host.docker.internal:18083
    # max time to wait for a connection to be established
    connect_timeout: 0.005s
  frankfurther_api:
    endpoint: api.frankfurter.dev:443
    protocol: https

overrides:
  # confidence threshold for prompt target intent matching
  prompt_target_intent_matching_threshold: 0.6

llm_providers:
  - name: gpt-4o-mini
    access_key: $OPENAI_API_KEY
    provider_interface: openai
    model: gpt-4o-mini
    default: true
    stream: true

  - name: gpt-4o
    access_key: ${OPENAI_API_KEY}
    provider_interface: openai
    model: gpt-4o

  - name: ministral-3b
    access_key: $MISTRAL_API_KEY
    provider_interface: mistral
    model: ministral-3b-latest

  - name: local-llama
    provider_interface: openai
    endpoint: host.docker.internal:11434
    model: llama3.2

system_prompt: |
  You are a helpful assistant.

prompt_guards:
  input_guards:
    jailbreak:
      on_exception:
        message: Looks like you're curious about my abilities, but I can only provide assistance for weather forecasting.

prompt_targets:
  - name: get_current_weather
    description: Get current weather at a location.
    parameters:
      - name: location
        description: The location to get the weather for
        required: true
        type: string
        format: City, State
      - name: days
        description: the number of days for the request
        required: true
        type: int
    endpoint:
      name: weather_forecast_service
      path: /weather
      http_method: POST

  - name: currency_exchange
    description: Get currency exchange rate from USD to other currencies
    parameters:
      - name: currency_symbol
        description: the currency that needs conversion
        required: true
        type: str
        in_path: true
    endpoint:
      name: frankfurther_api
      path: /v1/latest?base=USD&symbols={currency_symbol}
    system_prompt: |
      You are a helpful assistant. Show me the currency symbol you want to convert from USD.

  - name: get_supported_currencies
    description: Get list of supported currencies for conversion
    endpoint:
      name: frankfurther_api
      path: /v1/currencies
      http_method: GET

  - name: default_target
    default: true
    description: This is the default target for all unmatched prompts.
    endpoint:
      name: weather_forecast_service
      path: /default_target
      http_method: POST
    system_prompt: |
      You are a helpful assistant! Summarize the user's request and provide a helpful response.
    # if it is set to false arch will send response that it received from this prompt target to the user
    auto_llm_dispatch_on_response: false

ratelimits:
  - model: gpt-4o-mini
    selector:
      key: x-user-id
      value: alice
    limit:
      tokens: 100000
      unit: minute

tracing:
  random_sampling: 100
  trace_arch_internal: true
"""


def test_arch_config_loads_with_typed_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ARCH_CONFIG), env={"OPENAI_API_KEY": "sk-o", "MISTRAL_API_KEY": "sk-m"})

    assert (cfg.ingress.address, cfg.ingress.port, cfg.ingress.timeout_s) == ("0.0.0.0", 10000, 30.0)
    assert (cfg.egress.address, cfg.egress.port) == ("0.0.0.0", 12000)
    assert cfg.ingress.max_body_bytes == 8 * 1024 * 1024

    weather = cfg.endpoints["weather_forecast_service"]
    assert (weather.upstream.host, weather.upstream.port, weather.upstream.tls) == ("host.docker.internal", 18083, False)
    assert weather.upstream.connect_timeout_s == pytest.approx(0.005)
    assert weather.cluster == "endpoint_weather_forecast_service"
    fx = cfg.endpoints["frankfurther_api"].upstream
    assert (fx.host, fx.port, fx.tls) == ("api.frankfurter.dev", 443, True)

    providers = {p.name: p for p in cfg.llm_providers}
    assert list(providers) == ["gpt-4o-mini", "gpt-4o", "ministral-3b", "local-llama"]
    mini = providers["gpt-4o-mini"]
    assert cfg.default_provider is mini
    assert (mini.interface, mini.model, mini.default, mini.stream) == ("openai", "gpt-4o-mini", True, True)
    assert (mini.access_key, mini.access_key_env) == ("sk-o", "OPENAI_API_KEY")
    assert (mini.upstream.host, mini.upstream.port, mini.upstream.tls, mini.upstream.base_path) == ("api.openai.com", 443, True, "/v1")
    assert providers["gpt-4o"].access_key_env == "OPENAI_API_KEY"  # ${VAR} form
    assert providers["gpt-4o"].stream is None and not providers["gpt-4o"].default
    assert providers["ministral-3b"].upstream.host == "api.mistral.ai"
    local = providers["local-llama"]
    assert (local.upstream.host, local.upstream.port, local.upstream.tls, local.access_key) == ("host.docker.internal", 11434, False, None)
    assert cfg.provider("ministral-3b") is providers["ministral-3b"] and cfg.provider("nope") is None
    assert cfg.secret_env() == {"OPENAI_API_KEY": "sk-o", "MISTRAL_API_KEY": "sk-m"}

    assert cfg.intent_threshold == pytest.approx(0.6)
    assert cfg.jailbreak_message.startswith("Looks like you're curious")
    assert cfg.system_prompt == "You are a helpful assistant.\n"
    assert cfg.tracing_sampling == 100.0
    assert cfg.otlp_endpoint is None

    targets = {t.name: t for t in cfg.prompt_targets}
    assert list(targets) == ["get_current_weather", "currency_exchange", "get_supported_currencies", "default_target"]
    location, days = targets["get_current_weather"].parameters
    assert (location.type, location.required, location.format, location.description) == ("string", True, "City, State", "The location to get the weather for")
    assert (days.type, days.required, days.has_default) == ("integer", True, False)
    fx_target = targets["currency_exchange"]
    assert fx_target.parameters[0].in_path and fx_target.parameters[0].type == "string"
    assert fx_target.endpoint.http_method == "GET"  # Arch's default (its HttpMethod enum's, since 0.1.6)
    assert fx_target.endpoint.path == "/v1/latest?base=USD&symbols={currency_symbol}"
    assert fx_target.system_prompt.startswith("You are a helpful assistant. Show me")
    assert fx_target.auto_llm_dispatch_on_response
    default = targets["default_target"]
    assert default.default and not default.auto_llm_dispatch_on_response
    assert [t.name for t in cfg.prompt_targets if t.default] == ["default_target"]

    (limit,) = cfg.ratelimits
    assert (limit.model, limit.selector_key, limit.selector_value, limit.tokens, limit.unit) == ("gpt-4o-mini", "x-user-id", "alice", 100000, "minute")
    assert limit.per_seconds == 60


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "version: v0.1\n"), env={})
    assert (cfg.ingress.address, cfg.ingress.port, cfg.ingress.timeout_s) == ("127.0.0.1", 10000, 300.0)
    assert cfg.llm_providers == () and cfg.prompt_targets == () and cfg.endpoints == {}
    assert cfg.default_provider is None and cfg.jailbreak_message is None
    assert cfg.ext_proc.message_timeout_s == 10.0 and not cfg.ext_proc.failure_mode_allow


def test_single_provider_is_the_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, variant(llm_providers=[BASE["llm_providers"][1]])), env={})
    assert cfg.default_provider is not None and cfg.default_provider.name == "local"


def test_jailbreak_without_message_still_guards(tmp_path: Path) -> None:
    cfg = load_config(vary(tmp_path, prompt_guards={"input_guards": {"jailbreak": {}}}), env=ENV)
    assert cfg.jailbreak_message  # configured guard: a default refusal, not a silently disabled guard


# --------------------------------------------------------------------------------------------
# refused configs: file, key path, expectation


def test_unknown_top_level_key(tmp_path: Path) -> None:
    exc = refused(vary(tmp_path, llm_provider=[]), "llm_provider", "unknown key", "llm_providers", "prompt_targets", "version")
    assert "allowed" in str(exc)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = vary(tmp_path, listeners={"ingress_traffic": {"port": 10000, "prot": 1}})
    refused(path, "listeners.ingress_traffic.prot", "unknown key", "allowed:", "address", "port", "timeout")


def test_unknown_key_in_list_item(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[0].api_key": "x"}), "llm_providers[0].api_key", "unknown key", "access_key")


def test_several_unknown_keys_named_together(tmp_path: Path) -> None:
    refused(vary(tmp_path, foo=1, bar=2), "(top level)", "'bar'", "'foo'", "allowed:")


def test_port_wrong_type(tmp_path: Path) -> None:
    refused(vary(tmp_path, listeners={"ingress_traffic": {"port": "abc"}}), "listeners.ingress_traffic.port", "expected an integer", "'abc'")


def test_port_out_of_range(tmp_path: Path) -> None:
    refused(vary(tmp_path, listeners={"egress_traffic": {"port": 70000}}), "listeners.egress_traffic.port", "65535")


def test_providers_not_a_list(tmp_path: Path) -> None:
    refused(vary(tmp_path, llm_providers={}), "llm_providers", "expected a list", "got a mapping")


def test_boolean_is_not_a_string(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[0].default": "yes"}), "llm_providers[0].default", "expected true or false", "'yes'")


def test_wrong_version(tmp_path: Path) -> None:
    refused(vary(tmp_path, version="v0.2"), "version", "expected one of 'v0.1'", "'v0.3.0'", "'v0.2'")


def test_missing_version(tmp_path: Path) -> None:
    cfg = variant()
    del cfg["version"]
    refused(write(tmp_path, cfg), "(top level)", "version")


def test_missing_required_key(tmp_path: Path) -> None:
    cfg = variant()
    del cfg["prompt_targets"][0]["description"]
    refused(write(tmp_path, cfg), "prompt_targets[0]", "missing", "description")


def test_provider_without_interface(tmp_path: Path) -> None:
    cfg = variant()
    del cfg["llm_providers"][1]["provider_interface"]
    refused(write(tmp_path, cfg), "llm_providers[1]", "missing", "provider_interface")


def test_provider_unknown_interface(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].provider_interface": "anthropik"}), "llm_providers[1].provider_interface", "expected one of", "openai",
            "'anthropik'", "did you mean 'anthropic'?")


def test_provider_name_form(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].name": "my model"}), "llm_providers[1].name", "'my model'", "letters, digits")


def test_empty_model(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].model": ""}), "llm_providers[1].model", "non-empty")


def test_target_names_unknown_endpoint(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"prompt_targets[0].endpoint.name": "ap"}), "prompt_targets[0].endpoint.name", "unknown endpoint 'ap'", "app")


def test_two_default_providers(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].default": True}), "llm_providers", "more than one", "gpt-4o-mini", "local")


def test_several_providers_no_default(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[0].default": False}), "llm_providers", "none has default: true")


def test_duplicate_provider_names(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].name": "gpt-4o-mini"}), "llm_providers[1].name", "'gpt-4o-mini'", "twice")


def test_two_default_targets(tmp_path: Path) -> None:
    targets = [
        {"name": "a", "description": "a", "default": True, "endpoint": {"name": "app", "path": "/a"}},
        {"name": "b", "description": "b", "default": True, "endpoint": {"name": "app", "path": "/b"}},
    ]
    refused(vary(tmp_path, prompt_targets=targets), "prompt_targets", "more than one prompt target", "default: true", "a", "b")


def test_duplicate_target_names(tmp_path: Path) -> None:
    refused(vary(tmp_path, prompt_targets=BASE["prompt_targets"] * 2), "prompt_targets[1].name", "'get_weather'", "twice")


def test_duplicate_parameter_names(tmp_path: Path) -> None:
    params = [{"name": "city", "required": True}, {"name": "city"}]
    refused(vary(tmp_path, **{"prompt_targets[0].parameters": params}), "prompt_targets[0].parameters[1].name", "'city'", "twice")


def test_path_placeholder_is_not_a_parameter(tmp_path: Path) -> None:
    path = vary(tmp_path, **{"prompt_targets[0].endpoint.path": "/weather/{town}"})
    refused(path, "prompt_targets[0].endpoint.path", "{town}", "not a parameter", "get_weather")


def test_in_path_parameter_missing_from_path_goes_to_the_query_as_in_arch(tmp_path: Path) -> None:
    cfg = variant(**{"prompt_targets[0].endpoint.path": "/weather"})
    cfg["prompt_targets"][0]["parameters"][0]["in_path"] = True
    loaded = load_config(write(tmp_path, cfg), env=ENV)
    assert not loaded.prompt_targets[0].parameters[0].in_path
    assert any(w.startswith("prompt_targets[0].parameters[0].in_path: ") and "{city}" in w and "query string" in w for w in loaded.warnings)


def test_enum_default_not_in_enum(tmp_path: Path) -> None:
    params = [{"name": "city", "required": True}, {"name": "unit", "enum": ["celsius", "fahrenheit"], "default": "kelvin"}]
    refused(vary(tmp_path, **{"prompt_targets[0].parameters": params}), "prompt_targets[0].parameters[1].default", "'kelvin'", "celsius")


def test_default_of_wrong_type(tmp_path: Path) -> None:
    params = [{"name": "city", "required": True}, {"name": "days", "type": "int", "default": "three"}]
    refused(vary(tmp_path, **{"prompt_targets[0].parameters": params}), "prompt_targets[0].parameters[1].default", "expected an integer", "'three'")


def test_parameter_type_unknown(tmp_path: Path) -> None:
    params = [{"name": "city", "type": "text"}]
    refused(vary(tmp_path, **{"prompt_targets[0].parameters": params}), "prompt_targets[0].parameters[0].type", "expected one of", "'str'", "'text'")


def test_bad_duration(tmp_path: Path) -> None:
    path = vary(tmp_path, listeners={"ingress_traffic": {"timeout": "30 seconds"}})
    refused(path, "listeners.ingress_traffic.timeout", "expected a duration", "30s", "'30 seconds'")


def test_bad_connect_timeout(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"endpoints.app.connect_timeout": "fast"}), "endpoints.app.connect_timeout", "duration", "'fast'")


def test_duplicate_ports_explicit(tmp_path: Path) -> None:
    listeners = {"ingress_traffic": {"port": 10000}, "egress_traffic": {"port": 10000}}
    refused(vary(tmp_path, listeners=listeners), "listeners.egress_traffic.port", "port 10000", "listeners.ingress_traffic.port")


def test_duplicate_port_with_a_default(tmp_path: Path) -> None:
    # the user wrote only ingress's port: the error points there, not at egress's unwritten default
    path = vary(tmp_path, listeners={"ingress_traffic": {"port": 12000}})
    refused(path, "listeners.ingress_traffic.port", "port 12000", "listeners.egress_traffic.port", "default")


def test_listener_address_must_be_an_ip(tmp_path: Path) -> None:
    path = vary(tmp_path, listeners={"ingress_traffic": {"address": "gateway.local"}})
    refused(path, "listeners.ingress_traffic.address", "IP address", "'gateway.local'")
    cfg = load_config(vary(tmp_path, listeners={"ingress_traffic": {"address": "localhost"}, "admin": {"address": "::1"}}), env=ENV)
    assert (cfg.ingress.address, cfg.admin_address) == ("127.0.0.1", "::1")


def test_bad_endpoint_address(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"endpoints.app.endpoint": "127.0.0.1:abc"}), "endpoints.app.endpoint", "'127.0.0.1:abc'")


def test_endpoint_port_out_of_range(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[1].endpoint": "127.0.0.1:99999"}), "llm_providers[1].endpoint", "99999")


def test_port_taken_by_local_model_server(tmp_path: Path) -> None:
    refused(vary(tmp_path, ext_proc={"http_port": 8001}), "ext_proc.http_port", "port 8001", "model_server.grpc_port")
    remote = {"mode": "remote", "endpoint": "grpc://10.0.0.5:8001"}
    assert load_config(vary(tmp_path, ext_proc={"http_port": 8001}, model_server=remote), env=ENV).ext_proc.http_port == 8001


def test_endpoint_name_form(tmp_path: Path) -> None:
    refused(vary(tmp_path, endpoints={"my app": {"endpoint": "127.0.0.1:1"}}), "endpoints", "'my app'", "letters, digits")


def test_target_name_is_a_function_name(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"prompt_targets[0].name": "get.weather"}), "prompt_targets[0].name", "function name", "'get.weather'")


def test_unknown_model_in_model_server(tmp_path: Path) -> None:
    path = vary(tmp_path, model_server={"models": {"prompt_embed": {"instances": 2}, "embedder": {}}})
    refused(path, "model_server.models.embedder", "unknown key", "prompt_embed, prompt_guard", "function_call")


def test_model_parameters_must_be_ones_the_model_reads(tmp_path: Path) -> None:
    path = vary(tmp_path, model_server={"models": {"function_call": {"parameters": {"n_cxt": 4096}}}})
    refused(path, "model_server.models.function_call.parameters.n_cxt", "no parameter 'n_cxt'", "n_ctx", "max_chars",
            "triton_models/function_call/config.pbtxt")
    path = vary(tmp_path, model_server={"models": {"chat_llm": {"parameters": {"n_threads": 2}}}})
    refused(path, "model_server.models.chat_llm.parameters.n_threads", "model_server.models.chat_llm.threads")
    path = vary(tmp_path, model_server={"models": {"prompt_guard": {"parameters": {"threshold": [0.5]}}}})
    refused(path, "model_server.models.prompt_guard.parameters.threshold")
    # a number the model reads with int() / float(): refused at validate, not at Triton's load
    for model, key, value, want in (("function_call", "kv_windows", "many", "a whole number"), ("function_call", "n_ctx", 2048.5, "a whole number"),
                                    ("chat_llm", "max_tokens", True, "a whole number"), ("prompt_guard", "threshold", "high", "a number")):
        path = vary(tmp_path, model_server={"models": {model: {"parameters": {key: value}}}})
        refused(path, f"model_server.models.{model}.parameters.{key}", want, repr(value))
    path = vary(tmp_path, model_server={"models": {"function_call": {"parameters": {"n_ctx": 4096, "mmap": False, "kv_windows": "3"}},
                                                   "prompt_guard": {"parameters": {"threshold": 0.9}}}})
    models = load_config(path, env=ENV).model_server.models
    assert models["function_call"].parameters == {"n_ctx": "4096", "mmap": "false", "kv_windows": "3"}  # as Triton reads them: strings
    assert models["prompt_guard"].parameters == {"threshold": "0.9"}


def test_yaml_booleans_in_string_enum(tmp_path: Path) -> None:
    # Arch's own reference config writes `enum: [yes, no]`: YAML 1.1 reads those as booleans
    path = write(tmp_path, """\
version: v0.1
endpoints: {app: {endpoint: "127.0.0.1:18083"}}
prompt_targets:
  - name: reboot
    description: Reboot a device
    auto_llm_dispatch_on_response: false
    parameters:
      - name: confirmation
        type: string
        enum: [yes, no]
    endpoint: {name: app, path: /reboot}
""")
    refused(path, "prompt_targets[0].parameters[0].enum[0]", "expected a string", "True", "quote it")


def test_ratelimit_for_unknown_model_is_warned_and_never_applies_as_in_arch(tmp_path: Path) -> None:
    limits = [{"model": "gpt-5", "limit": {"tokens": 10, "unit": "minute"}}, {"model": "gpt-4o-mini", "limit": {"tokens": 10, "unit": "minute"}}]
    loaded = load_config(vary(tmp_path, ratelimits=limits), env=ENV)
    assert [r.model for r in loaded.ratelimits] == ["gpt-4o-mini"]
    assert any(w.startswith("ratelimits[0].model: ") and "'gpt-5'" in w and "gpt-4o-mini" in w and "never applies" in w for w in loaded.warnings)


def test_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "version: v0.1\nlisteners:\n  ingress_traffic: [port: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert re.fullmatch(r"line \d+, column \d+", info.value.path)
    assert str(info.value).startswith(f"{path}: {info.value.path}: not valid YAML")


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "version: v0.1\nsystem_prompt: a\nsystem_prompt: b\n")
    refused(path, "line 3, column 1", "'system_prompt'", "twice")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("- version: v0.1\n", "got a list"), ("just text\n", "got a string"), ("", "empty")],
    ids=["list", "scalar", "empty"],
)
def test_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    refused(write(tmp_path, text), "", "expected a mapping", expected)


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "nope.yaml", "", "cannot read", "No such file")


def test_most_specific_error_reported(tmp_path: Path) -> None:
    # a wrong top-level key and a wrong type deep inside: the deep one names what to fix
    path = vary(tmp_path, foo=1, **{"prompt_targets[0].parameters[0].required": "yes"})
    refused(path, "prompt_targets[0].parameters[0].required", "expected true or false", "1 more problem")


# --------------------------------------------------------------------------------------------
# $VAR, ${VAR}, .env


def test_var_not_set(tmp_path: Path) -> None:
    exc = refused(vary(tmp_path), "llm_providers[0].access_key", "$OPENAI_API_KEY is not set", "export OPENAI_API_KEY", ".env", env={})
    assert exc.message.startswith("$OPENAI_API_KEY")


def test_empty_var_is_not_set(tmp_path: Path) -> None:
    refused(vary(tmp_path), "llm_providers[0].access_key", "OPENAI_API_KEY", env={"OPENAI_API_KEY": ""})


def test_braced_var(tmp_path: Path) -> None:
    path = vary(tmp_path, **{"llm_providers[0].access_key": "${MY_KEY}"})
    cfg = load_config(path, env={"MY_KEY": "sk-braced"})
    assert (cfg.llm_providers[0].access_key, cfg.llm_providers[0].access_key_env) == ("sk-braced", "MY_KEY")
    refused(path, "llm_providers[0].access_key", "$MY_KEY is not set", "export MY_KEY", env={})


def test_malformed_var_reference(tmp_path: Path) -> None:
    path = vary(tmp_path, **{"llm_providers[0].access_key": "${MY_KEY:-x}"})
    refused(path, "llm_providers[0].access_key", "$VAR", "${VAR}")


def test_var_in_endpoint_headers(tmp_path: Path) -> None:
    headers = {"x-token": "${APP_TOKEN}", "authorization": "Bearer $APP_TOKEN", "x-plain": "costs $5"}
    path = vary(tmp_path, **{"prompt_targets[0].endpoint.http_headers": headers})
    cfg = load_config(path, env={**ENV, "APP_TOKEN": "tok-123"})
    assert cfg.prompt_targets[0].endpoint.http_headers == {"x-token": "tok-123", "authorization": "Bearer tok-123", "x-plain": "costs $5"}
    assert "tok-123" not in repr(cfg)
    refused(path, "prompt_targets[0].endpoint.http_headers.x-token", "$APP_TOKEN is not set", env=ENV)


def test_dotenv_next_to_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    path = vary(config_dir)
    (config_dir / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    assert load_config(path).llm_providers[0].access_key == "sk-from-dotenv"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")  # the real environment wins over .env
    assert load_config(path).llm_providers[0].access_key == "sk-from-env"


def test_dotenv_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text('OPENAI_API_KEY="sk-cwd"\n')
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert load_config(vary(other)).llm_providers[0].access_key == "sk-cwd"


def test_no_dotenv_and_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    path = vary(tmp_path)
    with pytest.raises(ConfigError, match=r"\$OPENAI_API_KEY is not set"):
        load_config(path)


# --------------------------------------------------------------------------------------------
# literal keys stay out of logs


def test_literal_access_key(tmp_path: Path) -> None:
    path = vary(tmp_path, **{"llm_providers[0].access_key": "sk-literal-secret-123", "llm_providers[1].access_key": "sk-other-456"})
    cfg = load_config(path, env={})
    assert cfg.llm_providers[0].access_key_env == "SIDEGATE_KEY_GPT_4O_MINI"
    assert cfg.secret_env() == {"SIDEGATE_KEY_GPT_4O_MINI": "sk-literal-secret-123", "SIDEGATE_KEY_LOCAL": "sk-other-456"}
    for text in (repr(cfg), str(cfg), repr(cfg.llm_providers), repr(cfg.llm_providers[0])):
        assert "sk-literal-secret-123" not in text and "sk-other-456" not in text


def test_literal_keys_never_share_a_variable(tmp_path: Path) -> None:
    providers = [
        {"name": "a-b", "provider_interface": "openai", "access_key": "key-one", "default": True},
        {"name": "a_b", "provider_interface": "openai", "access_key": "key-two"},
    ]
    cfg = load_config(vary(tmp_path, llm_providers=providers), env={})
    secrets = cfg.secret_env()
    assert sorted(secrets.values()) == ["key-one", "key-two"]
    assert {p.access_key: secrets[p.access_key_env] for p in cfg.llm_providers} == {"key-one": "key-one", "key-two": "key-two"}


def test_var_key_not_in_repr(tmp_path: Path) -> None:
    cfg = load_config(vary(tmp_path), env={"OPENAI_API_KEY": "sk-env-secret-789"})
    assert "sk-env-secret-789" not in repr(cfg)
    assert "OPENAI_API_KEY" in repr(cfg)  # the variable's name is fine to show


# --------------------------------------------------------------------------------------------
# durations and upstream addresses


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("0.005s", 0.005), ("2m", 120.0), ("1h", 3600.0), (" 10s ", 10.0), (5, 5.0), (0.25, 0.25)],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["30 seconds", "s", "-1s", "1.5", "", "1d", "1e3s"])
def test_parse_duration_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="expected e.g. 30s"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("interface", "extra", "host", "port", "tls", "base"),
    [
        ("openai", {}, "api.openai.com", 443, True, "/v1"),
        ("mistral", {}, "api.mistral.ai", 443, True, "/v1"),
        ("groq", {}, "api.groq.com", 443, True, "/openai/v1"),
        ("deepseek", {}, "api.deepseek.com", 443, True, "/v1"),
        ("together", {}, "api.together.xyz", 443, True, "/v1"),
        ("ollama", {}, "127.0.0.1", 11434, False, "/v1"),
        ("vllm", {}, "127.0.0.1", 8000, False, "/v1"),
        ("openai", {"endpoint": "127.0.0.1:8000"}, "127.0.0.1", 8000, False, ""),
        ("openai", {"endpoint": "llm.internal"}, "llm.internal", 80, False, ""),
        ("openai", {"endpoint": "llm.internal", "protocol": "https"}, "llm.internal", 443, True, ""),
        ("openai", {"endpoint": "llm.internal:443"}, "llm.internal", 443, True, ""),
        ("openai", {"endpoint": "llm.internal:8443", "protocol": "https"}, "llm.internal", 8443, True, ""),
        ("openai", {"endpoint": "llm.internal:443", "protocol": "http"}, "llm.internal", 443, False, ""),
        ("openai", {"endpoint": "llm.internal/openai/v1"}, "llm.internal", 80, False, "/openai/v1"),
        ("openai", {"endpoint": "http://127.0.0.1:18083/v1/"}, "127.0.0.1", 18083, False, "/v1"),
        ("openai", {"endpoint": "http://127.0.0.1"}, "127.0.0.1", 80, False, ""),
        ("openai", {"endpoint": "https://gw.example.com/openai/v1"}, "gw.example.com", 443, True, "/openai/v1"),
        ("openai", {"endpoint": "https://gw.example.com:8443"}, "gw.example.com", 8443, True, ""),
        ("openai", {"endpoint": "[::1]:8000"}, "::1", 8000, False, ""),
        ("openai", {"endpoint": "http://[::1]:8000/v1"}, "::1", 8000, False, "/v1"),
    ],
)
def test_provider_upstream(tmp_path: Path, interface: str, extra: dict[str, str], host: str, port: int, tls: bool, base: str) -> None:
    provider = {"name": "p", "provider_interface": interface, **extra}
    (p,) = load_config(write(tmp_path, {"version": "v0.1", "llm_providers": [provider]}), env={}).llm_providers
    assert (p.upstream.host, p.upstream.port, p.upstream.tls, p.upstream.base_path) == (host, port, tls, base)
    assert p.upstream.connect_timeout_s == 5.0 and p.cluster == "provider_p"


def test_provider_connect_timeout_and_retries(tmp_path: Path) -> None:
    provider = {"name": "p", "provider": "openai", "connect_timeout": "250ms", "retries": 2}
    (p,) = load_config(write(tmp_path, {"version": "v0.1", "llm_providers": [provider]}), env={}).llm_providers
    assert p.interface == "openai"  # Arch's older spelling `provider`
    assert (p.upstream.connect_timeout_s, p.retries) == (0.25, 2)


def test_sidegate_interface_defaults_to_local_facade(tmp_path: Path) -> None:
    cfg = {"version": "v0.1", "ext_proc": {"http_port": 8090}, "llm_providers": [{"name": "local", "provider_interface": "sidegate"}]}
    (p,) = load_config(write(tmp_path, cfg), env={}).llm_providers
    assert (p.upstream.host, p.upstream.port, p.upstream.tls, p.upstream.base_path) == ("127.0.0.1", 8090, False, "/v1")


def test_fallbacks_must_name_other_providers(tmp_path: Path) -> None:
    refused(vary(tmp_path, **{"llm_providers[0].fallbacks": ["nope"]}), "llm_providers[0].fallbacks[0]", "'nope'", "not a provider")
    name = yaml.safe_load(vary(tmp_path).read_text())["llm_providers"][0]["name"]
    refused(vary(tmp_path, **{"llm_providers[0].fallbacks": [name]}), "llm_providers[0].fallbacks[0]", "the provider itself")
    refused(vary(tmp_path, **{"llm_providers[0].fallbacks": "x"}), "llm_providers[0].fallbacks", "expected a list")


def test_model_server_mode_is_left_to_sidegate_up_only_when_the_config_names_none(tmp_path: Path) -> None:
    assert load_config(vary(tmp_path, model_server={}), env=ENV).model_server.auto_mode
    named = load_config(vary(tmp_path, model_server={"mode": "local-cpu"}), env=ENV).model_server
    assert named.mode == "local-cpu" and not named.auto_mode
    remote = load_config(vary(tmp_path, model_server={"endpoint": "grpc://10.0.0.5:8001"}), env=ENV).model_server
    assert remote.mode == "remote" and not remote.auto_mode


# --------------------------------------------------------------------------------------------
# model deadlines and the ext_proc.message_timeout derived from them


def test_each_model_has_its_own_deadline_function_call_the_longest(tmp_path: Path) -> None:
    ms = load_config(vary(tmp_path), env=ENV).model_server
    assert {m: ms.timeout_for(m) for m in ("prompt_embed", "prompt_guard", "function_call", "chat_llm")} == \
        {"prompt_embed": 10.0, "prompt_guard": 10.0, "function_call": 30.0, "chat_llm": 120.0}
    assert ms.timeout_key("function_call") == "model_server.models.function_call.timeout"
    assert ms.prefill_timeout_s == 120.0  # the start-up pre-fill: a cold model loads on its first call


def test_model_server_timeout_is_the_one_number_form_and_a_model_timeout_overrides_it(tmp_path: Path) -> None:
    path = vary(tmp_path, model_server={"timeout": "4s", "models": {"function_call": {"timeout": "45s", "threads": 2}}})
    ms = load_config(path, env=ENV).model_server
    assert (ms.timeout_s, ms.timeout_for("prompt_embed"), ms.timeout_for("prompt_guard"), ms.timeout_for("function_call")) == (4, 4, 4, 45)
    assert ms.timeout_for("chat_llm") == 120.0  # a whole streamed answer: the one-number form never shortens it
    assert ms.models["function_call"].timeout_s == 45 and ms.models["function_call"].threads == 2
    assert ms.timeout_key("prompt_embed") == "model_server.timeout"
    assert ms.timeout_key("function_call") == "model_server.models.function_call.timeout"
    assert ms.prefill_timeout_s == 180.0  # 4 x function_call's deadline once that is over 30 s
    assert load_config(vary(tmp_path, model_server={"timeout": "300s"}), env=ENV).model_server.timeout_for("chat_llm") == 300


def test_a_model_timeout_must_be_a_duration(tmp_path: Path) -> None:
    refused(vary(tmp_path, model_server={"models": {"function_call": {"timeout": "soon"}}}), "model_server.models.function_call.timeout")
    refused(vary(tmp_path, model_server={"models": {"prompt_embed": {"timeout": 0}}}), "model_server.models.prompt_embed.timeout")


def test_message_timeout_is_derived_from_the_model_and_endpoint_deadlines(tmp_path: Path) -> None:
    jailbreak = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    cfg = load_config(vary(tmp_path, prompt_guards=jailbreak), env=ENV)
    # max(guard 10 s, 2 x embed 10 s) + function_call 30 s + endpoint app 30 s (its default) + 2 s
    assert cfg.ext_proc.message_timeout_s == 20 + 30 + 30 + 2 and not cfg.ext_proc.message_timeout_explicit
    assert cfg.warnings == ()
    cfg = load_config(vary(tmp_path, **{"endpoints.app.timeout": "5s"},
                           model_server={"models": {"function_call": {"timeout": "60s"}, "prompt_embed": {"timeout": "2s"}}}), env=ENV)
    assert cfg.ext_proc.message_timeout_s == 4 + 60 + 5 + 2
    cfg = load_config(vary(tmp_path, model_server={"mode": "none"}), env=ENV)
    assert cfg.ext_proc.message_timeout_s == 20 + 30 + 30 + 2  # `up --model-server URL` may still give it one
    minimal = load_config(write(tmp_path, "version: v0.1\n"), env={})
    assert minimal.ext_proc.message_timeout_s == 10.0  # nothing slower configured: the old default


def test_an_explicit_message_timeout_shorter_than_the_deadlines_is_a_warning_naming_both_keys(tmp_path: Path) -> None:
    cfg = load_config(vary(tmp_path, ext_proc={"message_timeout": "20s"}, model_server={"timeout": "5s"}), env=ENV)
    assert cfg.ext_proc.message_timeout_s == 20 and cfg.ext_proc.message_timeout_explicit  # kept as written: a warning, not a refusal
    (warning,) = cfg.warnings
    assert warning.startswith("ext_proc.message_timeout: 20 s is shorter than ")
    for fragment in ("2 x prompt_embed 5 s (model_server.timeout)", "function_call 5 s (model_server.timeout)",
                     "endpoint app 30 s (endpoints.app.timeout)", "= 47 s", "ext_proc_timeout", "model_server_timeout",
                     "raise ext_proc.message_timeout to at least 47s"):
        assert fragment in warning, warning
    assert load_config(vary(tmp_path, ext_proc={"message_timeout": "47s"}, model_server={"timeout": "5s"}), env=ENV).warnings == ()


def test_replicas_and_endpoints_are_checked(tmp_path: Path) -> None:
    guard = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    refused(vary(tmp_path, prompt_guards=guard, model_server={"endpoint": "grpc://a:1", "endpoints": ["grpc://b:1"]}),
            "model_server.endpoints", "not both")
    refused(vary(tmp_path, prompt_guards=guard, model_server={"mode": "remote", "endpoint": "grpc://a:1", "replicas": 2}),
            "model_server.replicas", "model_server.endpoints")
    refused(vary(tmp_path, prompt_guards=guard, model_server={"endpoints": ["grpc://a:1", "grpc://a:1"]}),
            "model_server.endpoints", "twice")
    refused(vary(tmp_path, prompt_guards=guard, model_server={"mode": "local-cpu", "endpoints": ["grpc://a:1"]}),
            "model_server.endpoints", "only used with mode: remote")
    ms = load_config(vary(tmp_path, prompt_guards=guard, model_server={"replicas": 3, "http_port": 9000}), env=ENV).model_server
    assert ms.balanced and [ms.replica_ports(i)[0] for i in range(3)] == [9000, 9010, 9020]
    remote = load_config(vary(tmp_path, prompt_guards=guard, model_server={"endpoints": ["grpc://a:1", "grpc://[::1]:2"]}), env=ENV).model_server
    assert remote.mode == "remote" and remote.replica_targets == [("a", 1), ("::1", 2)]


def test_the_balancer_port_may_not_be_a_replicas(tmp_path: Path) -> None:
    guard = {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}
    refused(vary(tmp_path, prompt_guards=guard, model_server={"replicas": 2, "balancer_port": 8011}),
            "model_server.balancer_port", "8011 is a port of a replica")


def test_native_responses_is_on_for_openais_own_api_and_refused_where_no_responses_api_is() -> None:
    from testkit.configs import cfg_from, gateway_config

    def provider(**kw: Any) -> Any:
        return cfg_from(gateway_config([{"name": "p", "access_key": "sk", "default": True, **kw}])).llm_providers[0]

    assert provider(provider_interface="openai").native_responses  # https://api.openai.com/v1
    assert provider(provider_interface="openai", base_url="https://api.openai.com/v1").native_responses
    assert not provider(provider_interface="openai", base_url="http://127.0.0.1:8000/v1").native_responses  # OpenAI-compatible
    assert provider(provider_interface="vllm", base_url="http://127.0.0.1:8000/v1", native_responses=True).native_responses
    assert not provider(provider_interface="openai", native_responses=False).native_responses
    assert not provider(provider_interface="groq").native_responses
    with pytest.raises(ConfigError, match=r"llm_providers\[0\]\.native_responses.*anthropic serves no OpenAI Responses API"):
        provider(provider_interface="anthropic", native_responses=True)
