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
    assert (p.interface, p.wire, p.model, p.upstream.host, p.upstream.tls) == (
        "amazon_bedrock", "bedrock", "us.amazon.nova-pro-v1:0", "bedrock-runtime.us-west-2.amazonaws.com", True)
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
