"""Provider families in the config: what is refused, and how (the wire tests: tests/integration/test_provider_families.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ext_proc.config import ConfigError, build_config
from ext_proc.control.envoy_bootstrap import bootstrap_dict
from testkit import gateway_config
from testkit.envoy import route


def provider(**kw: Any) -> dict[str, Any]:
    return {"name": "p", "endpoint": "http://127.0.0.1:9/v1", "model": "m", "default": True, **kw}


def refused(*providers: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(gateway_config(list(providers)), env={"K": "k"})
    return str(info.value)


def test_a_family_name_with_a_typo_suggests_the_nearest() -> None:
    msg = refused(provider(provider_interface="antropic"))
    assert "llm_providers[0].provider_interface" in msg and "did you mean 'anthropic'?" in msg


def test_amazon_bedrock_needs_its_regional_address_and_stays_out_of_fallback_chains() -> None:
    msg = refused({"name": "br", "provider_interface": "amazon_bedrock", "model": "m", "default": True})
    assert "llm_providers[0].endpoint" in msg and "https://bedrock-runtime.<region>.amazonaws.com" in msg
    msg = refused(provider(provider_interface="openai", fallbacks=["br"]),
                  {"name": "br", "provider_interface": "amazon_bedrock", "endpoint": "https://bedrock-runtime.us-west-2.amazonaws.com", "model": "m"})
    assert "fallbacks[0]" in msg and "amazon_bedrock" in msg


def test_amazon_bedrock_route_sends_the_api_key_as_bearer_and_leaves_the_path_to_ext_proc() -> None:
    cfg = build_config(gateway_config([{"name": "br", "model": "amazon_bedrock/us.amazon.nova-pro-v1:0", "access_key": "$K",
                                        "base_url": "https://bedrock-runtime.us-west-2.amazonaws.com/", "default": True}]), env={"K": "k"})
    p = cfg.llm_providers[0]
    assert (p.interface, p.wire, p.model, p.upstream.host, p.upstream.tls, p.upstream.base_path) == (
        "amazon_bedrock", "bedrock", "us.amazon.nova-pro-v1:0", "bedrock-runtime.us-west-2.amazonaws.com", True, "")  # no /v1: /model/... is at the root
    r = route(bootstrap_dict(cfg), "egress", "provider_br")
    assert "regex_rewrite" not in r["route"]  # the Converse path (/model/{id}/converse) is written by ext_proc
    assert [(h["header"]["key"], h["header"]["value"]) for h in r["request_headers_to_add"]] == [("authorization", "Bearer %ENVIRONMENT(K)%")]


def test_azure_needs_its_deployment_and_stays_out_of_fallback_chains() -> None:
    assert "llm_providers[0].model" in refused({"name": "az", "provider_interface": "azure_openai", "endpoint": "https://r.openai.azure.com",
                                                 "default": True})
    msg = refused(provider(provider_interface="openai", fallbacks=["az"]),
                  {"name": "az", "provider_interface": "azure_openai", "endpoint": "https://r.openai.azure.com", "model": "dep"})
    assert "fallbacks[0]" in msg and "azure_openai" in msg


def test_azure_route_has_the_deployment_path_the_api_version_and_the_api_key_header() -> None:
    cfg = build_config(gateway_config([{"name": "az", "provider_interface": "azure_openai", "endpoint": "https://r.openai.azure.com",
                                        "model": "dep", "default": True, "access_key": "$K", "api_version": "2025-01-01"}]), env={"K": "k"})
    r = route(bootstrap_dict(cfg), "egress", "provider_az")
    assert r["route"]["regex_rewrite"]["substitution"] == "/openai/deployments/dep/chat/completions?api-version=2025-01-01"
    assert [h["header"]["key"] for h in r["request_headers_to_add"]] == ["api-key"]


def test_families_with_a_known_address_need_no_endpoint() -> None:
    for family in ("gemini", "xai", "together_ai", "anthropic", "claude", "mistral"):
        cfg = build_config(gateway_config([{"name": "p", "provider_interface": family, "model": "m", "default": True}]))
        assert cfg.llm_providers[0].upstream.tls and cfg.llm_providers[0].upstream.port == 443


def test_passthrough_auth_headers_and_http_host_on_the_route() -> None:
    cfg = build_config(gateway_config([
        {"name": "pt", "provider_interface": "openai", "endpoint": "https://10.0.0.1/v1", "model": "m", "default": True,
         "passthrough_auth": True, "http_host": "proxy.internal", "headers": {"x-team": "a%b", "x-token": "t-$K"}},
        {"name": "ant", "provider_interface": "anthropic", "model": "c", "passthrough_auth": True}]), env={"K": "secret"})
    r = route(bootstrap_dict(cfg), "egress", "provider_pt")
    assert r["route"]["host_rewrite_literal"] == "proxy.internal"
    added = [(h["header"]["key"], h["header"]["value"]) for h in r["request_headers_to_add"]]
    assert added == [("x-team", "a%%b"), ("x-token", "t-%ENVIRONMENT(K)%")]  # no key injected, the secret never in the file
    assert "authorization" not in r["request_headers_to_remove"] and "x-api-key" in r["request_headers_to_remove"]
    assert cfg.secret_env() == {"K": "secret"}
    ant = route(bootstrap_dict(cfg), "egress", "provider_ant")
    assert "x-api-key" not in ant["request_headers_to_remove"] and "authorization" in ant["request_headers_to_remove"]


def test_passthrough_key_goes_in_the_header_the_provider_reads() -> None:
    from ext_proc.chat.providers import passthrough_key
    cfg = build_config(gateway_config([
        {"name": "o", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "m", "default": True, "passthrough_auth": True},
        {"name": "a", "provider_interface": "anthropic", "model": "c", "passthrough_auth": True}]))
    o, a = cfg.llm_providers
    assert passthrough_key(o, {"authorization": "Bearer sk-client"}) == {"authorization": "Bearer sk-client"}
    assert passthrough_key(o, {"x-api-key": "sk-ant-client"}) == {"authorization": "Bearer sk-ant-client"}
    assert passthrough_key(a, {"authorization": "Bearer sk-client"}) == {"x-api-key": "sk-client"}
    assert passthrough_key(a, {}) == {}


def test_provider_headers_refuse_host_and_unset_variables() -> None:
    assert "headers.Host" in refused(provider(provider_interface="openai", headers={"Host": "x"}))
    assert "$NOPE is not set" in refused(provider(provider_interface="openai", headers={"x-a": "$NOPE"}))
    msg = refused(provider(provider_interface="openai", fallbacks=["q"]),
                  {"name": "q", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "n", "passthrough_auth": True})
    assert "fallbacks[0]" in msg and "passthrough_auth" in msg


def test_bedrock_iam_keys_need_both_halves_a_region_and_no_api_key() -> None:
    iam = {"name": "br", "provider_interface": "amazon_bedrock", "model": "m", "default": True,
           "endpoint": "https://bedrock-runtime.eu-central-1.amazonaws.com", "aws_access_key_id": "$K", "aws_secret_access_key": "$K"}
    cfg = build_config(gateway_config([iam]), env={"K": "k"})
    assert cfg.llm_providers[0].aws_region == "eu-central-1" and cfg.llm_providers[0].aws is not None
    r = route(bootstrap_dict(cfg), "egress", "provider_br")
    assert "request_headers_to_add" not in r or not r["request_headers_to_add"]  # ext_proc signs: no key injected
    assert "authorization" not in r["request_headers_to_remove"] and r["route"]["host_rewrite_literal"] == "bedrock-runtime.eu-central-1.amazonaws.com"
    assert "aws_secret_access_key is required" in refused({k: v for k, v in iam.items() if k != "aws_secret_access_key"})
    assert "set aws_region" in refused({**iam, "endpoint": "https://vpce-1.bedrock.example.com"})
    assert "keep one" in refused({**iam, "access_key": "$K"})
    assert "amazon_bedrock only" in refused(provider(provider_interface="openai", aws_access_key_id="$K", aws_secret_access_key="$K"))
