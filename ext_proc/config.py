"""Load, check and type the gateway config (Arch's ``arch_config.yaml`` format, ``version: v0.1``).

Usage::

    from ext_proc.config import load_config, ConfigError
    try:
        cfg = load_config("config/default.yaml")
    except ConfigError as exc:
        print(exc)          # "config/x.yaml: llm_providers[0].model: expected string, got 3"

Checking happens in two passes: the JSON Schema in ``config/sidegate.schema.json`` (shape, types,
unknown keys), then the cross-references a schema cannot express (a target naming an unknown
endpoint, two defaults, a ``$VAR`` that is not set). Both raise :class:`ConfigError` naming the
file, the key path and what was expected. Nothing starts on a config that fails either pass.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml
from dotenv import dotenv_values

__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "Listener",
    "LlmProvider",
    "Parameter",
    "PromptTarget",
    "DEFAULT_CONFIG",
    "SCHEMA_PATH",
    "load_config",
    "parse_duration",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.yaml"
SCHEMA_PATH = REPO_ROOT / "config" / "sidegate.schema.json"

DEFAULT_BODY_LIMIT = 8 * 1024 * 1024
_ENV_REF = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")

# Where each OpenAI-compatible provider interface lives when the config gives no `endpoint`.
_PROVIDER_HOSTS = {
    "openai": "https://api.openai.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
}


class ConfigError(Exception):
    """A config that must not start: says which file, which key and what was expected."""

    def __init__(self, source: str | Path, path: str, message: str) -> None:
        self.source = str(source)
        self.path = path
        self.message = message
        where = f"{self.source}: {path}" if path else self.source
        super().__init__(f"{where}: {message}")


def parse_duration(value: str | float | int) -> float:
    """``"30s"``, ``"500ms"``, ``"0.005s"``, ``"2m"``, ``"1h"`` or a number of seconds → seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", value.strip())
    if not m:
        raise ValueError(f"not a duration: {value!r} (expected e.g. 30s, 500ms, 2m)")
    number, unit = float(m.group(1)), m.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True, kw_only=True)
class Listener:
    name: str
    address: str
    port: int
    timeout_s: float
    max_body_bytes: int = DEFAULT_BODY_LIMIT


@dataclass(frozen=True, kw_only=True)
class Upstream:
    """A host Envoy connects to: a provider or an app endpoint."""

    host: str
    port: int
    tls: bool
    base_path: str = ""  # path prefix from a URL endpoint, without trailing slash
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    name: str
    upstream: Upstream
    timeout_s: float
    http_host: str | None = None

    @property
    def cluster(self) -> str:
        return f"endpoint_{self.name}"


@dataclass(frozen=True, kw_only=True)
class LlmProvider:
    name: str
    interface: str
    model: str | None
    default: bool
    upstream: Upstream
    access_key_env: str | None = None  # the environment variable Envoy reads the key from
    access_key: str | None = field(default=None, repr=False)  # resolved; never logged
    retries: int = 0
    stream: bool | None = None

    @property
    def cluster(self) -> str:
        return f"provider_{self.name}"


@dataclass(frozen=True, kw_only=True)
class Parameter:
    name: str
    type: str  # normalised: string, integer, number, boolean, array, object
    description: str = ""
    required: bool = False
    enum: tuple[Any, ...] | None = None
    default: Any = None
    has_default: bool = False
    in_path: bool = False
    format: str | None = None


@dataclass(frozen=True, kw_only=True)
class TargetEndpoint:
    name: str
    path: str
    http_method: str
    http_headers: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class PromptTarget:
    name: str
    description: str
    default: bool
    parameters: tuple[Parameter, ...]
    endpoint: TargetEndpoint | None
    system_prompt: str | None
    auto_llm_dispatch_on_response: bool


@dataclass(frozen=True, kw_only=True)
class ExtProcSettings:
    address: str
    port: int
    http_port: int
    message_timeout_s: float
    failure_mode_allow: bool


@dataclass(frozen=True, kw_only=True)
class Config:
    source: str
    raw: dict[str, Any] = field(repr=False)
    ingress: Listener
    egress: Listener
    internal: Listener
    admin_address: str
    admin_port: int
    ext_proc: ExtProcSettings
    endpoints: dict[str, Endpoint]
    llm_providers: tuple[LlmProvider, ...]
    system_prompt: str | None
    prompt_targets: tuple[PromptTarget, ...]
    jailbreak_message: str | None
    intent_threshold: float
    tracing_sampling: float
    otlp_endpoint: str | None

    @property
    def default_provider(self) -> LlmProvider | None:
        for p in self.llm_providers:
            if p.default:
                return p
        return self.llm_providers[0] if len(self.llm_providers) == 1 else None

    def provider(self, name: str) -> LlmProvider | None:
        for p in self.llm_providers:
            if p.name == name:
                return p
        return None

    def secret_env(self) -> dict[str, str]:
        """Environment variables Envoy needs to inject provider keys (``%ENVIRONMENT(VAR)%``)."""
        return {
            p.access_key_env: p.access_key
            for p in self.llm_providers
            if p.access_key_env and p.access_key is not None
        }


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def _key_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        return f"unknown key {', '.join(map(repr, extra))} (allowed: {allowed})"
    if v == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    if v == "required":
        return error.message
    if v == "enum":
        return f"expected one of {error.validator_value}, got {error.instance!r}"
    if v == "const":
        return f"expected {error.validator_value!r}, got {error.instance!r}"
    if v == "oneOf" and "duration" in json.dumps(error.schema):
        return f"expected a duration such as 30s or 500ms, got {error.instance!r}"
    if v == "pattern":
        return f"{error.instance!r} does not have the expected form ({error.schema.get('description') or error.validator_value})"
    if v == "anyOf" and "provider_interface" in json.dumps(error.validator_value):
        return "expected a provider_interface (e.g. openai)"
    return error.message


def _schema_check(raw: Any, source: str) -> None:
    errors = sorted(_validator().iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the deepest error is the most specific one; report it and count the rest
        err = max(errors, key=lambda e: len(e.absolute_path))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(source, _key_path(err.absolute_path), _describe(err) + more)


def _resolve_env(value: str, env: dict[str, str], source: str, path: str) -> tuple[str, str | None]:
    """``$VAR``/``${VAR}`` → (value, VAR); a literal → (literal, None)."""
    m = _ENV_REF.match(value)
    if not m:
        return value, None
    var = m.group(1) or m.group(2)
    if var not in env or env[var] == "":
        raise ConfigError(source, path, f"${var} is not set: export {var}=... or add it to .env")
    return env[var], var


def _upstream(spec: str, protocol: str | None, connect_timeout: Any, default_port: int | None = None) -> Upstream:
    if "://" in spec:
        u = urlsplit(spec)
        tls = u.scheme == "https"
        host = u.hostname or ""
        port = u.port or (443 if tls else 80)
        base = u.path.rstrip("/")
    else:
        host_port, _, path = spec.partition("/")
        host, sep, port_s = host_port.rpartition(":")
        if not sep:
            host, port_s = host_port, ""
        tls = protocol == "https" or (protocol is None and port_s == "443")
        port = int(port_s) if port_s else (default_port or (443 if tls else 80))
        base = ("/" + path).rstrip("/") if path else ""
    if protocol is not None:
        tls = protocol == "https"
    return Upstream(
        host=host,
        port=port,
        tls=tls,
        base_path=base,
        connect_timeout_s=parse_duration(connect_timeout) if connect_timeout is not None else 5.0,
    )


_TYPE_ALIASES = {
    "str": "string", "string": "string", "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "dict": "object", "object": "object",
}


def _load_env(config_dir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for candidate in (Path.cwd() / ".env", config_dir / ".env"):
        if candidate.is_file():
            env.update({k: v for k, v in dotenv_values(candidate).items() if v is not None})
    env.update(os.environ)  # the real environment wins over .env
    return env


def _listener(raw: dict[str, Any], name: str, default_port: int, default_timeout: str) -> Listener:
    d = raw.get(name) or {}
    return Listener(
        name=name,
        address=d.get("address", "127.0.0.1"),
        port=d.get("port", default_port),
        timeout_s=parse_duration(d.get("timeout", default_timeout)),
        max_body_bytes=d.get("max_body_bytes", DEFAULT_BODY_LIMIT),
    )


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Read, check and type a config file (the embedded default when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(path) if path is not None else str(DEFAULT_CONFIG)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(raw).__name__}")
    return build_config(raw, source=source, env=env if env is not None else _load_env(p.resolve().parent))


def build_config(raw: dict[str, Any], *, source: str = "<config>", env: dict[str, str] | None = None) -> Config:
    """Check an already-parsed config mapping and build the typed :class:`Config`."""
    env = dict(os.environ) if env is None else env
    _schema_check(raw, source)

    listeners = raw.get("listeners") or {}
    ingress = _listener(listeners, "ingress_traffic", 10000, "30s")
    egress = _listener(listeners, "egress_traffic", 12000, "30s")
    internal = _listener(listeners, "internal_traffic", 11000, "30s")
    admin = listeners.get("admin") or {}
    ep = raw.get("ext_proc") or {}
    ext_proc = ExtProcSettings(
        address=ep.get("address", "127.0.0.1"),
        port=ep.get("port", 50051),
        http_port=ep.get("http_port", 8080),
        message_timeout_s=parse_duration(ep.get("message_timeout", "10s")),
        failure_mode_allow=bool(ep.get("failure_mode_allow", False)),
    )
    ports = {
        "listeners.ingress_traffic.port": ingress.port,
        "listeners.egress_traffic.port": egress.port,
        "listeners.internal_traffic.port": internal.port,
        "listeners.admin.port": admin.get("port", 9901),
        "ext_proc.port": ext_proc.port,
        "ext_proc.http_port": ext_proc.http_port,
    }
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            raise ConfigError(source, key, f"port {port} is already used by {seen[port]}")
        seen[port] = key

    endpoints: dict[str, Endpoint] = {}
    for name, e in (raw.get("endpoints") or {}).items():
        endpoints[name] = Endpoint(
            name=name,
            upstream=_upstream(e["endpoint"], e.get("protocol"), e.get("connect_timeout")),
            timeout_s=parse_duration(e.get("timeout", "30s")),
            http_host=e.get("http_host"),
        )

    providers: list[LlmProvider] = []
    names: set[str] = set()
    defaults: list[str] = []
    for i, pr in enumerate(raw.get("llm_providers") or []):
        at = f"llm_providers[{i}]"
        if pr["name"] in names:
            raise ConfigError(source, f"{at}.name", f"provider name {pr['name']!r} is used twice")
        names.add(pr["name"])
        interface = pr.get("provider_interface") or pr.get("provider")
        spec = pr.get("endpoint") or _PROVIDER_HOSTS.get(interface or "")
        if spec is None:
            raise ConfigError(source, f"{at}.endpoint", f"provider_interface {interface!r} has no default address: set endpoint")
        key, key_env = (None, None)
        if "access_key" in pr:
            key, key_env = _resolve_env(pr["access_key"], env, source, f"{at}.access_key")
            if key_env is None:  # a literal key: hand it to Envoy through a variable of our own
                key_env = "SIDEGATE_KEY_" + re.sub(r"[^A-Z0-9]", "_", pr["name"].upper())
        if pr.get("default"):
            defaults.append(f"{at} ({pr['name']})")
        providers.append(
            LlmProvider(
                name=pr["name"],
                interface=interface,
                model=pr.get("model"),
                default=bool(pr.get("default", False)),
                upstream=_upstream(spec, pr.get("protocol"), pr.get("connect_timeout")),
                access_key=key,
                access_key_env=key_env,
                retries=pr.get("retries", 0),
                stream=pr.get("stream"),
            )
        )
    if len(defaults) > 1:
        raise ConfigError(source, "llm_providers", f"more than one provider has default: true: {', '.join(defaults)}")

    targets: list[PromptTarget] = []
    target_names: set[str] = set()
    target_defaults: list[str] = []
    for i, t in enumerate(raw.get("prompt_targets") or []):
        at = f"prompt_targets[{i}]"
        if t["name"] in target_names:
            raise ConfigError(source, f"{at}.name", f"prompt target name {t['name']!r} is used twice")
        target_names.add(t["name"])
        if t.get("default"):
            target_defaults.append(f"{at} ({t['name']})")
        params: list[Parameter] = []
        for j, prm in enumerate(t.get("parameters") or []):
            ptype = _TYPE_ALIASES[prm.get("type", "str")]
            if "enum" in prm and "default" in prm and prm["default"] not in prm["enum"]:
                raise ConfigError(source, f"{at}.parameters[{j}].default", f"{prm['default']!r} is not one of enum {prm['enum']}")
            params.append(
                Parameter(
                    name=prm["name"],
                    type=ptype,
                    description=prm.get("description", ""),
                    required=bool(prm.get("required", False)),
                    enum=tuple(prm["enum"]) if "enum" in prm else None,
                    default=prm.get("default"),
                    has_default="default" in prm,
                    in_path=bool(prm.get("in_path", False)),
                    format=prm.get("format"),
                )
            )
        tep = None
        if "endpoint" in t:
            e = t["endpoint"]
            if e["name"] not in endpoints:
                known = ", ".join(sorted(endpoints)) or "none are defined"
                raise ConfigError(source, f"{at}.endpoint.name", f"unknown endpoint {e['name']!r} (endpoints: {known})")
            path = e.get("path", "/")
            for placeholder in re.findall(r"\{([^}]*)\}", path):
                if placeholder not in {p.name for p in params}:
                    raise ConfigError(source, f"{at}.endpoint.path", f"placeholder {{{placeholder}}} is not a parameter of {t['name']!r}")
            headers = {}
            for hk, hv in (e.get("http_headers") or {}).items():
                headers[hk] = _resolve_env(hv, env, source, f"{at}.endpoint.http_headers.{hk}")[0]
            tep = TargetEndpoint(name=e["name"], path=path, http_method=e.get("http_method", "POST").upper(), http_headers=headers)
        targets.append(
            PromptTarget(
                name=t["name"],
                description=t["description"],
                default=bool(t.get("default", False)),
                parameters=tuple(params),
                endpoint=tep,
                system_prompt=t.get("system_prompt"),
                auto_llm_dispatch_on_response=bool(t.get("auto_llm_dispatch_on_response", True)),
            )
        )
    if len(target_defaults) > 1:
        raise ConfigError(source, "prompt_targets", f"more than one prompt target has default: true: {', '.join(target_defaults)}")

    if targets and not providers and any(t.auto_llm_dispatch_on_response for t in targets):
        raise ConfigError(source, "llm_providers", "prompt targets answer through an LLM: configure at least one llm_provider")
    if len(providers) > 1 and not defaults:
        raise ConfigError(source, "llm_providers", "several providers and none has default: true: mark one as the default")

    jb = (((raw.get("prompt_guards") or {}).get("input_guards") or {}).get("jailbreak")) or None
    tracing = raw.get("tracing") or {}
    return Config(
        source=source,
        raw=raw,
        ingress=ingress,
        egress=egress,
        internal=internal,
        admin_address=admin.get("address", "127.0.0.1"),
        admin_port=admin.get("port", 9901),
        ext_proc=ext_proc,
        endpoints=endpoints,
        llm_providers=tuple(providers),
        system_prompt=raw.get("system_prompt"),
        prompt_targets=tuple(targets),
        jailbreak_message=((jb or {}).get("on_exception") or {}).get("message") if jb is not None else None,
        intent_threshold=float((raw.get("overrides") or {}).get("prompt_target_intent_matching_threshold", 0.5)),
        tracing_sampling=float(tracing.get("random_sampling", 0)),
        otlp_endpoint=tracing.get("otlp_endpoint"),
    )
