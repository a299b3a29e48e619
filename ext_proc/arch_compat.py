"""Every published shape of Arch's / plano's config, read into sidegate's one canonical shape (issue 18).

Usage::

    from ext_proc.arch_compat import normalise
    canonical, warnings = normalise(raw, default_ports=DEFAULT_PORTS, provider_hosts=_PROVIDER_HOSTS)  # may raise CompatError

:func:`normalise` runs first in :func:`ext_proc.config.build_config`, before the JSON Schema check.
It rewrites old and alternative spellings (Arch 0.1's ``listener`` block, list-form ``listeners``
with ``type``, ``model_providers``, ``provider``, ``base_url``, ``model: openai/gpt-4o``, unnamed
providers, ``tracing.sampling_rate``, ...) into the keys the section builders read, and returns one
warning ``"<key.path>: <what happens instead>"`` for every key sidegate reads but does not act on.
A key that cannot be honoured without running wrongly is a :class:`CompatError` (the key path and why), which
build_config turns into a ConfigError naming the file.

It only rewrites values of the type Arch documents: anything else is left where it is, under its
Arch name, so that the schema check (which knows Arch's spellings and their types too) reports it
with the path the user wrote. Unknown keys are not touched (the schema refuses them).

The README's "Arch config compatibility" table lists every key and what happens to it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

# the canonical shape's schema (ext_proc/config.py checks configs against it; this module imports nothing of it)
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "sidegate.schema.json"


class CompatError(Exception):
    """A config that must not start: the key path and why (ext_proc/config.py adds the file: a ConfigError)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

__all__ = ["ARCH_FAMILIES", "CompatError", "FAMILY_ALIASES", "bad_base_url", "family", "model_aliases", "normalise", "sidegate_families",
           "split_model"]

# Provider family names Arch / plano know in any version: the schema enums, the CLI's
# SUPPORTED_PROVIDERS (the `family/` prefix of `model`) and hermesllm's aliases.
ARCH_FAMILIES = frozenset({
    "openai", "mistral", "groq", "deepseek", "gemini", "anthropic", "claude", "together_ai", "xai", "ollama",
    "azure_openai", "amazon_bedrock", "arch", "plano", "moonshotai", "zhipu", "qwen", "xiaomi", "chatgpt",
    "digitalocean", "vercel", "openrouter", "edenai", "astraflow", "astraflow_cn",
    "google", "together", "amazon", "do", "do_ai",
})
# Arch's name -> sidegate's name, where they differ (applied only when sidegate lacks Arch's name)
FAMILY_ALIASES = {"plano": "arch", "google": "gemini", "together_ai": "together", "together": "together_ai",
                  "amazon": "amazon_bedrock", "do": "digitalocean", "do_ai": "digitalocean"}
# Arch's list-form listener types -> sidegate's listener keys
_LISTENER_TYPES = {"model": "egress_traffic", "prompt": "ingress_traffic", "agent": "agent_traffic"}
_PROVIDER_LISTS = ("llm_providers", "model_providers")

# Keys sidegate reads (the schema checks their types) but does not act on: what happens instead.
_TOP_LEVEL_WARNINGS = {
    "filters": "kept, but filter chains are not implemented yet: no request or response passes through these filters",
    "routing": "router model, session-affinity and budget settings are not implemented: routing_preferences are matched "
               "locally on the user's turns (a tool step goes where the user turn that started it went); a request that "
               "names a model a provider serves is not re-routed unless overrides.route_named_models is true (plano "
               "re-routes it: set that for Claude Code or Codex, which always name a model)",
    "model_metrics_sources": "cost- and latency-aware model selection is not implemented: these sources are not read",
    "prompt_caching": "not implemented: no cache_control is injected and sessions are not pinned to a provider",
    "mode": "ignored: sidegate always serves both the prompt (ingress) and the model (egress) listener",
}
_OVERRIDE_WARNINGS = {
    "llm_routing_model": "ignored: routing_preferences are matched locally with prompt_embed, no router model is called",
    "agent_orchestration_model": "this orchestrator model is not called: agents are chosen by the local embedding model",
    "orchestrator_model_context_length": "no orchestrator model is called (agents are chosen by local embeddings): ignored",
    "upstream_tls_ca_path": "ignored: upstream TLS is verified against sidegate's CA bundle (certifi, or "
                            "SSL_CERT_FILE when set)",
    "use_agent_orchestrator": "agent orchestration is not implemented: prompt targets are matched by intent as usual",
    "optimize_context_window": "not implemented: the conversation is sent to the model as the client sent it",
}


@lru_cache(maxsize=1)
def sidegate_families() -> frozenset[str]:
    """The provider families sidegate implements: the schema's ``provider_interface`` enum (the one source)."""
    enum: list[str] = json.loads(SCHEMA_PATH.read_text())["$defs"]["provider_interface"]["enum"]
    return frozenset(enum)


@lru_cache(maxsize=1)
def _listener_item() -> jsonschema.protocols.Validator:
    """The schema's ``$defs/arch_listener``: a list-form listener is rewritten only when it has Arch's types."""
    schema = json.loads(SCHEMA_PATH.read_text())
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/arch_listener"}
    return jsonschema.validators.validator_for(sub)(sub)


def family(name: str) -> str:
    """Arch's family name as sidegate spells it (``plano`` -> ``arch``, ``google`` -> ``gemini``); else unchanged."""
    if name in sidegate_families():
        return name
    alias = FAMILY_ALIASES.get(name)
    return alias if alias in sidegate_families() else name


def split_model(model: str) -> tuple[str, str] | None:
    """``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")`` when the prefix names a provider family; else None."""
    prefix, sep, rest = model.partition("/")
    if not sep or not rest or (prefix not in ARCH_FAMILIES and prefix not in sidegate_families()):
        return None
    return family(prefix), rest


def normalise(raw: dict[str, Any], *, default_ports: Mapping[str, int], provider_hosts: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` (any Arch version's shape) -> (sidegate's canonical shape, warnings). ``raw`` is not modified.

    ``default_ports``: config.DEFAULT_PORTS; ``provider_hosts``: each family's default address (config._PROVIDER_HOSTS)."""
    out = copy.deepcopy(raw)
    warnings: list[str] = []
    arch_listeners = _listener_block(out, warnings) or isinstance(out.get("listeners"), list)
    max_retries = _listener_list(out, warnings)
    _providers(out, warnings, provider_hosts, max_retries)
    _top_level_preferences(out, warnings)
    _named_models(raw, out, warnings)
    _tracing(out, warnings)
    _overrides(out, warnings)
    _guards(out, warnings)
    _parameter_defaults(out)
    if arch_listeners:  # Arch's listener ports are the user's: a sidegate port that only defaults to one moves
        _move_defaulted_ports(out, warnings, default_ports)
    for name, e in (out.get("endpoints") or {}).items() if isinstance(out.get("endpoints"), dict) else ():
        if isinstance(e, dict) and "prefix_affinity" in e:
            warnings.append(f"endpoints.{name}.prefix_affinity: ignored: requests are balanced by Envoy's default policy")
    for key, what in _TOP_LEVEL_WARNINGS.items():
        if key in out:
            warnings.append(f"{key}: {what}")
    return out, warnings


def _listener_block(out: dict[str, Any], warnings: list[str]) -> bool:
    """Arch 0.1's ``listener: {address, port, message_format, connect_timeout}`` is the prompt (ingress) listener."""
    block = out.get("listener")
    if not isinstance(block, dict):
        return False  # absent, or the wrong type: the schema says so at `listener`
    if "listeners" in out:
        raise CompatError("listener", "both listener (Arch 0.1) and listeners are set: keep listeners")
    del out["listener"]
    ingress = {k: block[k] for k in ("address", "port") if k in block}
    for key in block:
        if key not in ("address", "port", "message_format", "connect_timeout"):
            ingress[key] = block[key]  # not Arch's: the schema names it under listeners.ingress_traffic
    if block.get("message_format") not in (None, "openai"):
        warnings.append(f"listener.message_format: {block['message_format']!r} is ignored: the listeners speak the OpenAI "
                        "chat-completions API (and Anthropic's /v1/messages)")
    if "connect_timeout" in block:
        warnings.append("listener.connect_timeout: ignored (Arch ignored it too): a listener has no connect timeout; "
                        "endpoints.<name>.connect_timeout sets the one to an endpoint")
    out["listeners"] = {"ingress_traffic": ingress}
    return True


def _listener_list(out: dict[str, Any], warnings: list[str]) -> int | None:
    """plano's ``listeners: [{name, type: model | prompt | agent, ...}]`` -> the dict form; returns a model listener's max_retries."""
    items = out.get("listeners")
    if not isinstance(items, list) or not all(_listener_item().is_valid(x) for x in items):
        return None  # the dict form, or a list the schema will point into
    listeners: dict[str, Any] = {"agent_traffic": []}
    max_retries: int | None = None
    for i, item in enumerate(items):
        at = f"listeners[{i}]"
        key = _LISTENER_TYPES[item["type"]]
        if key == "agent_traffic":
            listeners[key].append(dict(item))
            if "router" in item:
                warnings.append(f"{at}.router: {item['router']!r} is not called: agents are chosen by sidegate's local "
                                "embedding of the conversation against their descriptions (prompt_embed)")
            for fk in ("input_filters", "output_filters"):
                if fk in item:
                    warnings.append(f"{at}.{fk}: filter chains are not implemented yet: ignored")
            for j, agent in enumerate(item.get("agents") or []):
                for fk in ("input_filters", "filter_chain"):
                    if isinstance(agent, dict) and fk in agent:
                        warnings.append(f"{at}.agents[{j}].{fk}: filter chains are not implemented yet: ignored")
            continue
        if key in listeners:
            other = next(j for j, x in enumerate(items) if _LISTENER_TYPES[x["type"]] == key)
            raise CompatError(f"{at}.type", f"a second {item['type']!r} listener (listeners[{other}] is one): "
                                                     f"sidegate has one {item['type']} listener ({key})")
        listener = {k: v for k, v in item.items() if k not in ("name", "type", "max_retries", "input_filters", "output_filters")}
        if "max_retries" in item:
            if key == "egress_traffic" and isinstance(item["max_retries"], int):
                max_retries = item["max_retries"]
            else:
                warnings.append(f"{at}.max_retries: ignored on a {item['type']} listener")
        for fk in ("input_filters", "output_filters"):
            if fk in item:
                warnings.append(f"{at}.{fk}: filter chains are not implemented yet: "
                                f"{'requests' if fk == 'input_filters' else 'responses'} do not pass through "
                                f"{', '.join(map(str, item[fk])) if isinstance(item[fk], list) else item[fk]}")
        listeners[key] = listener
    if not listeners["agent_traffic"]:
        del listeners["agent_traffic"]
    out["listeners"] = listeners
    return max_retries


def _providers(out: dict[str, Any], warnings: list[str], hosts: Mapping[str, str], max_retries: int | None) -> None:
    if "model_providers" in out:
        if "llm_providers" in out:
            raise CompatError("model_providers", "both llm_providers and model_providers are set: use one of them")
        if isinstance(out["model_providers"], list):
            out["llm_providers"] = out.pop("model_providers")
            key = "model_providers"
        else:
            return  # the schema names the wrong type
    else:
        key = "llm_providers"
    providers = out.get("llm_providers")
    if not isinstance(providers, list):
        return
    overrides: dict[str, Any] = out["overrides"] if isinstance(out.get("overrides"), dict) else {}
    connect_timeout = overrides.get("upstream_connect_timeout")
    taken = {p["name"] for p in providers if isinstance(p, dict) and isinstance(p.get("name"), str)}
    for i, pr in enumerate(providers):
        if not isinstance(pr, dict):
            continue
        written = pr.get("model")
        _provider(pr, f"{key}[{i}]", warnings, hosts)
        if "name" not in pr and isinstance(written, str):
            # named after its model as written, like plano does (`openai/gpt-4o`)
            pr["name"] = _unique(re.sub(r"[^A-Za-z0-9_.\-/:*]", "_", written), taken)
            taken.add(pr["name"])
        if isinstance(pr.get("usage"), str) and isinstance(pr.get("name"), str):
            # Arch 0.3.0-0.3.3: one description of what the provider is for, named after the provider
            prefs = pr.setdefault("routing_preferences", [])
            if isinstance(prefs, list):
                prefs.append({"name": pr["name"], "description": pr.pop("usage")})
        if max_retries is not None and "retries" not in pr:
            pr["retries"] = min(max_retries, 10)
        if connect_timeout is not None and "connect_timeout" not in pr:
            pr["connect_timeout"] = connect_timeout


def _top_level_preferences(out: dict[str, Any], warnings: list[str]) -> None:
    """plano's top-level ``routing_preferences: [{name, description, models: [...]}]``: each becomes a
    routing preference of the provider of its first model that is configured (by the provider's name,
    its model, or ``family/model``); one whose models are all unknown routes nowhere (warning)."""
    prefs, providers = out.get("routing_preferences"), out.get("llm_providers")
    if not isinstance(prefs, list) or not all(isinstance(rp, dict) and isinstance(rp.get("models"), list) for rp in prefs):
        return  # the schema says what is wrong
    configured: list[dict[str, Any]] = [p for p in providers if isinstance(p, dict)] if isinstance(providers, list) else []

    def served_by(model: Any) -> dict[str, Any] | None:
        for p in configured:
            names = {p.get("name"), p.get("model")}
            if isinstance(p.get("model"), str):
                names.add(f"{p.get('provider_interface')}/{p['model']}")
            if model in names:
                return p
        return None

    for i, rp in enumerate(out.pop("routing_preferences")):
        provider = next((p for p in map(served_by, rp["models"]) if p is not None), None)
        if provider is None:
            warnings.append(f"routing_preferences[{i}]: none of its models ({', '.join(map(str, rp['models']))}) is a configured "
                            "provider's: no request is routed by this preference")
            continue
        if len(rp["models"]) > 1:
            warnings.append(f"routing_preferences[{i}].models: requests that fit {rp.get('name')!r} go to {provider.get('name')}, "
                            "the first of these models configured; the others are not tried")
        provider.setdefault("routing_preferences", []).append({k: rp[k] for k in ("name", "description") if k in rp})


def _named_models(raw: dict[str, Any], out: dict[str, Any], warnings: list[str]) -> None:
    """A plano config (``model_providers``, top-level ``routing_preferences``) with routing preferences
    expects a request that names a model to be re-routed too, as plano does; sidegate does that only
    with ``overrides.route_named_models`` (DESIGN.md keeps a named model by default): say so."""
    if "model_providers" not in raw and "routing_preferences" not in raw:
        return
    providers = out.get("llm_providers")
    if not isinstance(providers, list) or not any(isinstance(p, dict) and p.get("routing_preferences") for p in providers):
        return
    overrides = out.get("overrides")
    if isinstance(overrides, dict) and "route_named_models" in overrides:
        return
    warnings.append("routing_preferences: a request that names a configured model (Claude Code, Codex and plano's demos always "
                    "name one) keeps that model here, where plano re-routes it by the preferences: set "
                    "overrides.route_named_models: true for plano's behaviour")


def _unique(name: str, taken: set[str]) -> str:
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _provider(pr: dict[str, Any], at: str, warnings: list[str], hosts: Mapping[str, str]) -> None:
    """One provider: ``provider``, ``model: family/id``, ``base_url``, ``http_host`` and the unimplemented keys."""
    if "provider" in pr and isinstance(pr["provider"], str):
        if "provider_interface" in pr and pr["provider_interface"] != pr["provider"]:
            raise CompatError(f"{at}.provider", f"provider {pr['provider']!r} and provider_interface "
                                                         f"{pr['provider_interface']!r} disagree: keep provider_interface")
        pr["provider_interface"] = pr.pop("provider")
    explicit = "provider_interface" in pr
    model = pr.get("model")
    if isinstance(model, str):
        split = split_model(model)
        interface = pr.get("provider_interface")
        if split and (interface is None or (isinstance(interface, str) and family(interface) == split[0])):
            if interface is None:
                pr["provider_interface"] = split[0]
            if split[1] == "*":
                del pr["model"]  # plano's wildcard: any model of the family, the request's model is sent
            else:
                pr["model"] = split[1]
    interface = pr.get("provider_interface")
    if interface == "chatgpt":
        _chatgpt(pr, at, warnings)
    if isinstance(interface, str) and interface not in sidegate_families():
        if family(interface) != interface:
            pr["provider_interface"] = family(interface)
        elif interface in ARCH_FAMILIES:
            if not isinstance(pr.get("base_url", pr.get("endpoint")), str):
                raise CompatError(f"{at}.{'provider_interface' if explicit else 'model'}",
                                  f"provider family {interface!r} is not implemented in sidegate: give its OpenAI-compatible "
                                  f"base_url (then it is read as provider_interface: openai), or use one of "
                                  f"{', '.join(sorted(sidegate_families()))}")
            pr["provider_interface"] = "openai"
            warnings.append(f"{at}.provider_interface: {interface!r} is not a sidegate family: read as an OpenAI-compatible "
                            f"provider at {pr.get('base_url', pr.get('endpoint'))}")
    _base_url(pr, at, hosts)
    if pr.get("passthrough_auth") is True and "access_key" in pr:
        warnings.append(f"{at}.access_key: ignored: passthrough_auth sends the client's own key (as plano does)")


# plano's defaults for its `chatgpt` family (cli/planoai/config_generator.py): a ChatGPT subscription
# through the Codex backend, with the client's OAuth token
CHATGPT_API_BASE = "https://chatgpt.com/backend-api/codex"
_CHATGPT_HEADERS = {"originator": "codex_cli_rs", "user-agent": "codex_cli_rs/0.0.0 (Unknown 0; unknown) unknown"}


def _chatgpt(pr: dict[str, Any], at: str, warnings: list[str]) -> None:
    """plano's ``chatgpt`` family: its base_url, passthrough_auth (without access_key) and headers, as plano fills them in."""
    if not isinstance(pr.get("base_url", pr.get("endpoint")), str):
        pr["base_url"] = CHATGPT_API_BASE
    if "access_key" not in pr and "passthrough_auth" not in pr:
        pr["passthrough_auth"] = True
    headers = pr.setdefault("headers", {})
    if isinstance(headers, dict):
        for k, v in _CHATGPT_HEADERS.items():
            headers.setdefault(k, v)
    warnings.append(f"{at}: chatgpt is read as plano fills it in: base_url {pr.get('base_url', pr.get('endpoint'))}, "
                    f"passthrough_auth {bool(pr.get('passthrough_auth'))} (the client's ChatGPT token), headers originator and "
                    "user-agent; plano's ChatGPT-Account-Id and session_id headers are not added: set them under headers")


# the operations sidegate appends to a provider's base address: a base_url that already ends in one is a mistake
_API_OPERATIONS = re.compile(r"/(chat/completions|completions|messages|responses|embeddings|converse(-stream)?)/?$")


def bad_base_url(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base address (None: it can): a query, a fragment, or an API operation in its path."""
    u = urlsplit(url if "://" in url else "//" + url)
    if u.query or u.fragment:
        return f"{url!r} has a query or fragment: give the API's base address only (e.g. https://api.example.com/v1)"
    m = _API_OPERATIONS.search(u.path)
    if m:
        base = url[: url.rfind(m.group(0))] or url
        return (f"{url!r} ends in the API operation /{m.group(1)}, which sidegate adds itself: give the API's base "
                f"address ({base!r}), or requests go to .../{m.group(1)}/{m.group(1)}")
    return None


def _base_url(pr: dict[str, Any], at: str, hosts: Mapping[str, str]) -> None:
    """``base_url`` (Arch 0.2.4+) -> ``endpoint``; its path replaces the family's default path, as in plano."""
    base_url = pr.get("base_url")
    if isinstance(base_url, str):
        if "endpoint" in pr:
            raise CompatError(f"{at}.base_url", "both base_url and endpoint are set: keep one")
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise CompatError(f"{at}.base_url", f"expected http(s)://host[:port][/path], got {base_url!r}")
        why = bad_base_url(base_url)
        if why:
            raise CompatError(f"{at}.base_url", why)
        del pr["base_url"]
        endpoint = base_url.rstrip("/")
        interface = pr.get("provider_interface")
        if not u.path.strip("/") and interface not in ("azure_openai", "amazon_bedrock"):  # their paths start at the root
            # no path: plano uses the family's own prefix (groq: /openai/v1, gemini: /v1beta/openai, others /v1)
            default = hosts.get(interface) if isinstance(interface, str) else None
            endpoint += urlsplit(default).path if default else "/v1"
        pr["endpoint"] = endpoint
    host = pr.get("http_host")
    if isinstance(host, str) and isinstance(pr.get("endpoint"), str):
        spec = pr["endpoint"]
        actual = urlsplit(spec if "://" in spec else "//" + spec).hostname
        if host.split(":")[0] == actual:
            del pr["http_host"]  # the Host header sidegate sends anyway


def _tracing(out: dict[str, Any], warnings: list[str]) -> None:
    tracing = out.get("tracing")
    if not isinstance(tracing, dict):
        return
    rate = tracing.get("sampling_rate")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate <= 100:
        if "random_sampling" in tracing:
            raise CompatError("tracing.sampling_rate", "both sampling_rate and random_sampling are set: keep random_sampling")
        percent = rate * 100 if rate <= 1 else rate
        tracing["random_sampling"] = percent
        del tracing["sampling_rate"]
        warnings.append(f"tracing.sampling_rate: read as random_sampling: {percent:g} (percent of requests traced; "
                        f"{rate!r} {'is a 0-1 fraction' if rate <= 1 else 'is over 1, so a percent'})")
    grpc = tracing.get("opentracing_grpc_endpoint")
    if isinstance(grpc, str):
        if "otlp_endpoint" in tracing:
            raise CompatError("tracing.opentracing_grpc_endpoint", "both opentracing_grpc_endpoint and otlp_endpoint are set: keep otlp_endpoint")
        u = urlsplit(grpc if "://" in grpc else "//" + grpc)
        if not u.netloc or u.path.strip("/"):
            raise CompatError("tracing.opentracing_grpc_endpoint", f"expected http://host:port (an OTLP/gRPC collector, no path), got {grpc!r}")
        tracing["otlp_endpoint"] = f"grpc://{u.netloc}"  # plano sends OTLP over gRPC to it
        del tracing["opentracing_grpc_endpoint"]
    for k, what in (("span_attributes", "not implemented: spans carry sidegate's own attributes only"),
                    ("exporters", "not implemented: spans go to otlp_endpoint only")):
        if k in tracing:
            warnings.append(f"tracing.{k}: {what}")


def _overrides(out: dict[str, Any], warnings: list[str]) -> None:
    overrides = out.get("overrides")
    if not isinstance(overrides, dict):
        return
    if "upstream_connect_timeout" in overrides:
        del overrides["upstream_connect_timeout"]  # copied onto each provider without a connect_timeout (_providers)
    if overrides.get("disable_signals") is True:
        del overrides["disable_signals"]  # sidegate has no signal analysis to disable
    elif "disable_signals" in overrides:
        warnings.append("overrides.disable_signals: agentic signal analysis is not implemented: nothing is analysed")
    for k, what in _OVERRIDE_WARNINGS.items():
        if k in overrides and (k not in ("use_agent_orchestrator", "optimize_context_window") or overrides[k] is True):
            warnings.append(f"overrides.{k}: {what}")


def _guards(out: dict[str, Any], warnings: list[str]) -> None:
    jb = ((out.get("prompt_guards") or {}).get("input_guards") or {}).get("jailbreak") \
        if isinstance(out.get("prompt_guards"), dict) and isinstance(out["prompt_guards"].get("input_guards"), dict) else None
    exc = jb.get("on_exception") if isinstance(jb, dict) else None
    if isinstance(exc, dict):
        for k in ("forward_to_error_target", "error_handler"):
            if k in exc:
                warnings.append(f"prompt_guards.input_guards.jailbreak.on_exception.{k}: not implemented: a blocked prompt "
                                "is answered with on_exception.message")


def model_aliases(raw: dict[str, Any], providers: tuple[Any, ...]) -> dict[str, str]:
    """``model_aliases: {alias: {target: model}}`` -> {alias: target}; every target must be a model a provider serves."""
    aliases: dict[str, str] = {}
    served = {p.name for p in providers} | {p.model for p in providers if p.model} | \
        {f"{p.interface}/{p.model}" for p in providers if p.model}
    wildcard = {p.interface for p in providers if not p.model}
    for alias, spec in (raw.get("model_aliases") or {}).items():
        target = spec["target"]
        split = split_model(target)
        if target not in served and not (split and (f"{split[0]}/{split[1]}" in served or split[0] in wildcard)):
            raise CompatError(f"model_aliases.{alias}.target", f"{target!r} is not the model or name of any provider "
                                                                       f"(known: {', '.join(sorted(served)) or 'none'})")
        aliases[alias] = target
    return aliases


_PARSE = {"integer": int, "int": int, "number": float, "float": float}


def _parameter_defaults(out: dict[str, Any]) -> None:
    """Arch <= 0.2.1 wrote every parameter default as a string (``default: "5"`` for an integer): read it as the type."""
    targets = out.get("prompt_targets")
    for t in targets if isinstance(targets, list) else ():
        params: list[Any] = t["parameters"] if isinstance(t, dict) and isinstance(t.get("parameters"), list) else []
        for prm in params:
            if not isinstance(prm, dict) or not isinstance(prm.get("default"), str):
                continue
            ptype, value = prm.get("type"), prm["default"]
            if ptype in _PARSE:
                try:
                    prm["default"] = _PARSE[ptype](value)
                except ValueError:
                    pass  # not a number: the parameter check says so
            elif ptype in ("bool", "boolean") and value.lower() in ("true", "false"):
                prm["default"] = value.lower() == "true"


def _section(out: dict[str, Any], key_path: str) -> dict[str, Any] | None:
    """The mapping that holds ``key_path``'s last key (None when a section on the way is not a mapping)."""
    node: Any = out
    for part in key_path.split(".")[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _move_defaulted_ports(out: dict[str, Any], warnings: list[str], default_ports: Mapping[str, int]) -> None:
    """A listener port an Arch config writes (Arch 0.1 demos listen on 8080) wins over a port sidegate only defaults
    to: that one moves. (A sidegate config that does this is refused by the port check instead.)"""
    ms: dict[str, Any] = out["model_server"] if isinstance(out.get("model_server"), dict) else {}
    local_triton = ms.get("mode") not in ("remote", "none")
    keys = [k for k in default_ports if k != "model_server.balancer_port" and (local_triton or not k.startswith("model_server."))]
    written: dict[int, str] = {}
    for k in ("listeners.ingress_traffic.port", "listeners.egress_traffic.port"):
        section = _section(out, k)
        if section is None:
            return  # a section of the wrong type: the schema says so
        port = section.get(k.rpartition(".")[2])
        if isinstance(port, int):
            written.setdefault(port, k)
    agent_listeners = (out.get("listeners") or {}).get("agent_traffic") if isinstance(out.get("listeners"), dict) else None
    for i, item in enumerate(agent_listeners if isinstance(agent_listeners, list) else ()):
        if isinstance(item, dict) and isinstance(item.get("port"), int):  # plano's agent demos listen on 8001
            written.setdefault(item["port"], f"listeners.agent_traffic[{i}].port")
    used = set(written) | set(default_ports.values())
    for k in keys:
        default = default_ports[k]
        section, key = _section(out, k), k.rpartition(".")[2]
        if default in written and written[default] != k and section is not None and key not in section:
            new = default + 1
            while new in used:
                new += 1
            used.add(new)
            node = out
            for part in k.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[key] = new
            warnings.append(f"{k}: moved to {new}: its default port {default} is {written[default]}'s, as the config says")
