"""Load, check and type the gateway config (Arch's ``arch_config.yaml`` format, ``version: v0.1``).

Usage::

    from ext_proc.config import load_config, ConfigError
    try:
        cfg = load_config("config/default.yaml")
    except ConfigError as exc:
        print(exc)          # "config/x.yaml: llm_providers[0].model: expected a string, got an integer 3"

Checking happens in two passes: the JSON Schema in ``config/sidegate.schema.json`` (shape, types,
unknown keys), then the cross-references a schema cannot express (a target naming an unknown
endpoint, two defaults, a ``$VAR`` that is not set). Both raise :class:`ConfigError` naming the
file, the key path and what was expected. Nothing starts on a config that fails either pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml
from dotenv import dotenv_values

from ext_proc.arch_compat import CompatError, bad_base_url, model_aliases, normalise
from ext_proc.wire.sigv4 import AwsCredentials

__all__ = [
    "Agent",
    "AgentListener",
    "AgentRoute",
    "Config",
    "ConfigError",
    "Endpoint",
    "GuardJudge",
    "Jailbreak",
    "ModelServer",
    "ModelSettings",
    "Listener",
    "LlmProvider",
    "Parameter",
    "PromptTarget",
    "RateLimit",
    "ResponseCache",
    "RoutingPreference",
    "RoutingJudge",
    "StateStorage",
    "DEFAULT_CONFIG",
    "SCHEMA_PATH",
    "ext_proc_message_bytes",
    "load_config",
    "parse_duration",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.yaml"
SCHEMA_PATH = REPO_ROOT / "config" / "sidegate.schema.json"

DEFAULT_BODY_LIMIT = 8 * 1024 * 1024
# how long a provider or an agent may stay silent (before its first byte, between stream chunks) by
# default: a reasoning model answers its first byte after minutes (plano's default is 300s,
# for the same reason); Arch's older demos wrote 30s, which cut gpt-5 and o-series answers with a 504
DEFAULT_LISTENER_TIMEOUT = "300s"
UPSTREAM_READ_BYTES = 1024 * 1024  # Envoy's default per_connection_buffer_limit_bytes of a cluster: one upstream read
# Every port sidegate listens on by default, by the config key that changes it: the one table the
# section builders, the port-collision check and the model server's replicas read
DEFAULT_PORTS: dict[str, int] = {
    "listeners.ingress_traffic.port": 10000,
    "listeners.egress_traffic.port": 12000,
    "listeners.internal_traffic.port": 11000,
    "listeners.admin.port": 9901,
    "ext_proc.port": 50051,
    "ext_proc.http_port": 8080,
    "model_server.http_port": 8000,
    "model_server.grpc_port": 8001,
    "model_server.metrics_port": 8002,
    "model_server.balancer_port": 8009,
}


def _port(section: dict[str, Any], key_path: str) -> int:
    """The port at ``key_path`` as written in ``section`` (the mapping that holds its last key), else its default."""
    port: int = section.get(key_path.rpartition(".")[2], DEFAULT_PORTS[key_path])
    return port
_ENV_REF = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")
_ENV_IN_TEXT = re.compile(r"\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")

# Where each OpenAI-compatible provider interface lives when the config gives no `endpoint`.
_PROVIDER_HOSTS = {
    "openai": "https://api.openai.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "claude": "https://api.anthropic.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "xai": "https://api.x.ai/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",  # Google's OpenAI-compatible endpoint
}
# families served by the ext_proc service's own OpenAI-compatible façade over Triton's chat_llm
LOCAL_INTERFACES = frozenset({"sidegate", "arch"})
# Azure OpenAI: POST {endpoint}/openai/deployments/{model}/chat/completions?api-version=..., key in `api-key`
AZURE_INTERFACE = "azure_openai"
AZURE_API_VERSION = "2024-10-21"
UNSUPPORTED_INTERFACES: dict[str, str] = {}  # family -> why it is refused and what to do instead
# Amazon Bedrock: the Converse API (ext_proc.wire.bedrock), POST {endpoint}/model/{model}/converse[-stream],
# the access key (a Bedrock API key) as Authorization: Bearer, as Arch sends it
BEDROCK_INTERFACE = "amazon_bedrock"
# provider families that speak Anthropic's Messages API (the others speak OpenAI chat completions)
ANTHROPIC_INTERFACES = frozenset({"anthropic", "claude"})
# `provider_interface: sidegate` with no endpoint: the ext_proc service's OpenAI-compatible façade.
_SIDEGATE_FACADE = "http://127.0.0.1:{port}/v1"
# What a configured jailbreak guard answers when the config gives no on_exception.message.
DEFAULT_GUARD_MESSAGE = "Sorry, I can't help with that request."
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# Each model's deadline when neither model_server.models.<name>.timeout nor model_server.timeout is
# set. prompt_embed and prompt_guard answer in tens of milliseconds once loaded; function_call takes
# 1-6 s per call on 2 cores (the 1.5B) and a call queued behind others waits for them; chat_llm
# streams a whole answer (model_server.timeout raises it, never lowers it below 120 s).
REPLICA_PORT_STEP = 10  # model_server.replicas: replica i listens on http_port + 10 i, grpc_port + 10 i, ...
DEFAULT_MODEL_TIMEOUTS = {"prompt_embed": 10.0, "prompt_guard": 10.0, "function_call": 30.0, "chat_llm": 120.0}
# the start-up pre-fill of function_call: max(120 s, 4 x function_call's deadline) per call
PREFILL_MIN_TIMEOUT_S = 120.0
PREFILL_TIMEOUT_FACTOR = 4.0
# ext_proc.message_timeout when nothing slower is configured (no guard, no prompt targets), and
# what is added to the derived one for ext_proc's own work around the model and endpoint calls
DEFAULT_MESSAGE_TIMEOUT_S = 10.0
MESSAGE_TIMEOUT_MARGIN_S = 2.0


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
class RoutingPreference:
    """One of a provider's ``routing_preferences``: requests whose conversation fits ``description``
    go to that provider (ext_proc/chat/preferences.py), and ``name`` is the response's x-sidegate-route."""

    name: str
    description: str


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
    fallbacks: tuple[str, ...] = ()  # provider names tried in order when this one fails
    api_version: str | None = None  # azure_openai: the api-version query parameter
    # Arch's passthrough_auth: the client's own key (Authorization: Bearer, or x-api-key) goes to this
    # provider, in the header the provider reads; access_key is ignored
    passthrough_auth: bool = False
    # Arch's headers: sent on every request to the provider, as Envoy header values (a $VAR is
    # %ENVIRONMENT(VAR)%, so the file never holds it); header_env: those variables' values, for Envoy
    headers: tuple[tuple[str, str], ...] = ()
    header_env: dict[str, str] = field(default_factory=dict, repr=False)
    http_host: str | None = None  # Arch's http_host: the Host header sent (TLS SNI stays the endpoint's host)
    # amazon_bedrock with IAM keys (sidegate's aws_* keys): ext_proc signs each request with SigV4
    aws: AwsCredentials | None = field(default=None, repr=False)
    aws_region: str | None = None
    routing_preferences: tuple[RoutingPreference, ...] = ()  # what this provider is chosen for (issue 19)
    # sidegate's native_responses: a Responses API client's request goes to this provider's own
    # /v1/responses unchanged (default: for OpenAI's API itself), not translated to chat completions
    native_responses: bool = False

    @property
    def host_header(self) -> str:
        """The Host the provider gets: ``http_host``, else its host, plus ``:port`` when not the scheme's default."""
        if self.http_host:
            return self.http_host
        u = self.upstream
        host = f"[{u.host}]" if ":" in u.host else u.host  # IPv6 literal
        return host if u.port == (443 if u.tls else 80) else f"{host}:{u.port}"

    @property
    def cluster(self) -> str:
        return f"provider_{self.name}"

    @property
    def chain(self) -> tuple[str, ...]:
        """Provider names in failover order: attempt n of a request goes to ``chain[(n - 1) % len(chain)]``."""
        return (self.name, *self.fallbacks)

    @property
    def wire(self) -> str:
        """The API the provider speaks: ``anthropic`` (Messages), ``bedrock`` (Converse) or ``openai`` (chat completions)."""
        if self.interface == BEDROCK_INTERFACE:
            return "bedrock"
        return "anthropic" if self.interface in ANTHROPIC_INTERFACES else "openai"

    @property
    def key_header(self) -> str:
        """The header this provider reads its key from: ``x-api-key`` (Anthropic), ``api-key`` (Azure), else ``authorization`` (Bearer)."""
        if self.wire == "anthropic":
            return "x-api-key"
        return "api-key" if self.interface == AZURE_INTERFACE else "authorization"

    @property
    def route_cluster(self) -> str:
        """What Envoy routes this provider's requests to: its cluster, or its failover chain."""
        return f"failover_{self.name}" if self.fallbacks else self.cluster


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
    items: dict[str, Any] | None = None  # an array's item schema as written (JSON Schema); None: strings


@dataclass(frozen=True, kw_only=True)
class TargetEndpoint:
    name: str
    path: str
    http_method: str
    http_headers: dict[str, str] = field(repr=False)  # may hold resolved $VAR secrets


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
class RateLimit:
    """``ratelimits[]``: at most ``tokens`` per ``unit`` for requests to ``model``."""

    model: str  # a provider's name or model
    tokens: int
    unit: str  # second, minute, hour, day
    selector_key: str | None = None  # request header the budget is kept per (None: one budget)
    selector_value: str | None = None  # only requests whose header has this value (None: per value)

    @property
    def per_seconds(self) -> int:
        return _UNIT_SECONDS[self.unit]


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """``model_server.models.<name>``: what the rendered Triton config of one model changes."""

    instances: int | None = None
    max_batch_size: int | None = None
    max_queue_delay_microseconds: int | None = None
    weights: str | None = None  # the user's own weights (a GGUF file or a model folder)
    threads: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)  # other keys of the model's config.pbtxt parameters
    timeout_s: float | None = None  # the deadline of one call to this model (None: model_server.timeout or its default)

    def positive(self, key: str, default: int) -> int:
        """The parameter ``key`` where the user set a whole number over 0, else ``default`` (the
        model's own, as its config.pbtxt writes it)."""
        value = self.parameters.get(key, "")
        return int(value) if value.isdigit() and int(value) > 0 else default


@dataclass(frozen=True, kw_only=True)
class ModelServer:
    """``model_server``: a local Triton started by ``sidegate up`` (CPU or GPU) or a remote one."""

    mode: str  # local-cpu | local-gpu | remote | none
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    timeout_s: float  # model_server.timeout: the deadline of a model call with no timeout of its own
    endpoint_url: str | None = None  # remote mode: grpc://host:port
    models: dict[str, ModelSettings] = field(default_factory=dict)
    # neither mode nor endpoint in the config: `sidegate up` may pick local-gpu (a usable GPU) over local-cpu
    auto_mode: bool = False
    timeout_explicit: bool = False  # model_server.timeout is in the config (else each model has its default)
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MODEL_TIMEOUTS))  # the deadline of each model
    replicas: int = 1  # local modes: tritonserver processes, replica i on each port + REPLICA_PORT_STEP * i
    endpoint_urls: tuple[str, ...] = ()  # remote mode: every Triton (model_server.endpoints, or the one endpoint)
    balancer_port: int = DEFAULT_PORTS["model_server.balancer_port"]  # with several replicas: Envoy's listener ext_proc dials, balancing over them

    def replica_ports(self, i: int) -> tuple[int, int, int]:
        """(http, grpc, metrics) port of local replica ``i`` (0-based)."""
        step = REPLICA_PORT_STEP * i
        return self.http_port + step, self.grpc_port + step, self.metrics_port + step

    @property
    def replica_targets(self) -> list[tuple[str, int]]:
        """(host, gRPC port) of every Triton this config uses."""
        if self.mode == "remote":
            return [_grpc_host_port(url) for url in self.endpoint_urls]
        return [(self.address, self.replica_ports(i)[1]) for i in range(self.replicas)]

    @property
    def balanced(self) -> bool:
        """Several Tritons, or one remote Triton named by a host name (a DNS name may stand for
        several, e.g. a Kubernetes headless Service over Triton pods): ext_proc reaches them through
        an Envoy cluster (DNS re-resolved, least request, health checks, outlier detection, retries
        on another replica), so Tritons added later get requests too."""
        if self.mode == "none":
            return False
        targets = self.replica_targets
        return len(targets) > 1 or (self.mode == "remote" and not is_ip(targets[0][0]))

    def timeout_for(self, model: str) -> float:
        """The deadline of one call to ``model`` (``model_server.models.<model>.timeout``, else
        ``model_server.timeout``, else the model's default in :data:`DEFAULT_MODEL_TIMEOUTS`)."""
        return self.timeouts.get(model, self.timeout_s)

    def timeout_key(self, model: str) -> str:
        """The config key that sets ``model``'s deadline (the one to change)."""
        own = self.models.get(model)
        if self.timeout_explicit and (own is None or own.timeout_s is None):
            return "model_server.timeout"
        return f"model_server.models.{model}.timeout"

    @property
    def prefill_timeout_s(self) -> float:
        """The deadline of a start-up pre-fill call to function_call: on a cold model the first
        call loads the weights and evaluates a whole prompt, far longer than a warm call."""
        return max(PREFILL_MIN_TIMEOUT_S, PREFILL_TIMEOUT_FACTOR * self.timeout_for("function_call"))

    @property
    def local(self) -> bool:
        return self.mode in ("local-cpu", "local-gpu")

    @property
    def endpoint(self) -> str | None:
        """The Triton gRPC address the ext_proc service dials (None: no model server): with
        several replicas, Envoy's balancer listener."""
        if self.mode == "none":
            return None
        if self.balanced:
            return f"grpc://127.0.0.1:{self.balancer_port}"
        return self.endpoint_url or f"grpc://{self.address}:{self.grpc_port}"


@dataclass(frozen=True, kw_only=True)
class SharedStore:
    """``shared_store``: where state shared by every ext_proc process lives (token budgets)."""

    type: str = "memory"  # memory: this host (the ext_proc process, or one file its workers share) | redis
    url: str | None = None  # redis://host:port/db
    fail_open: bool = True  # Redis unavailable: count in this process (True) or answer 503 (False)
    prefix: str = "sidegate:"  # every key sidegate writes starts with it (a Redis shared with other apps)
    timeout_s: float = 0.25  # one Redis call; slower counts as unavailable


DEFAULT_CACHE_ENTRY_BYTES = 1024 * 1024  # response_cache.max_entry_bytes: a larger answer is not stored
DEFAULT_CACHE_MEMORY_BYTES = 64 * 1024 * 1024  # response_cache.max_memory_bytes (shared_store.type: memory)


@dataclass(frozen=True, kw_only=True)
class ResponseCache:
    """``response_cache``: identical chat requests within ``ttl`` answered from the shared store (ext_proc/chat/cache.py)."""

    ttl_s: float = 600.0
    similarity: float | None = None  # semantic matching (cosine of the last user turn's embedding); None: exact only
    max_entry_bytes: int = DEFAULT_CACHE_ENTRY_BYTES
    max_memory_bytes: int = DEFAULT_CACHE_MEMORY_BYTES


DEFAULT_STATE_TTL_S = 24 * 3600.0  # state_storage.ttl: how long a stored response can be referred to


@dataclass(frozen=True, kw_only=True)
class StateStorage:
    """``state_storage`` (plano's key): the Responses API's stored responses, so that
    ``previous_response_id`` and ``item_reference`` work with every provider (ext_proc/chat/conversations.py)."""

    ttl_s: float = DEFAULT_STATE_TTL_S
    max_memory_bytes: int = DEFAULT_CACHE_MEMORY_BYTES  # shared_store.type memory: least recently used dropped first


@dataclass(frozen=True, kw_only=True)
class Jailbreak:
    """``prompt_guards.input_guards.jailbreak``."""

    message: str  # what a blocked prompt gets back
    threshold: float | None = None  # None: the guard model's own calibrated threshold (its LABEL)
    fail_open: bool = False  # model server unavailable: True lets prompts through, False refuses them
    judge: GuardJudge | None = None  # the cascade's judge (issue 17); None: the classifier decides alone


# The judge's band and cut, calibrated on validation data only (bench/guard_eval.py --judge, bench/README.md),
# for the head shipped in triton_models/prompt_guard/1 (532775ed, threshold 0.8817; recalibrate with the head)
DEFAULT_JUDGE_BAND = (0.2, 0.5)
DEFAULT_JUDGE_THRESHOLD = 0.375
DEFAULT_JUDGE_TIMEOUT_S = 3.0


@dataclass(frozen=True, kw_only=True)
class GuardJudge:
    """``prompt_guards.input_guards.jailbreak.judge`` (sidegate): the classifier's probability
    decides at both ends; in ``[lo, hi)`` the function_call model answers a constrained yes/no,
    blocking when its P(yes) >= ``threshold``. Its own deadline ``timeout_s``; a judge that fails
    or is slower follows the guard's ``fail_open``."""

    lo: float = DEFAULT_JUDGE_BAND[0]
    hi: float = DEFAULT_JUDGE_BAND[1]
    threshold: float = DEFAULT_JUDGE_THRESHOLD
    timeout_s: float = DEFAULT_JUDGE_TIMEOUT_S

    def in_band(self, probability: float) -> bool:
        return self.lo <= probability < self.hi


DEFAULT_LEAK_WORDS = 8  # output_guards.system_prompt_leak.min_words
MIN_LEAK_WORDS = 4
MIN_SECRET_CHARS = 8  # a shorter output_guards.secrets value would match ordinary text
DEFAULT_OUTPUT_GUARD_MESSAGE = "Sorry, I can't share that."


@dataclass(frozen=True, kw_only=True)
class PromptLeakGuard:
    """``prompt_guards.output_guards.system_prompt_leak`` (sidegate): an answer holding a run of
    ``min_words`` consecutive words of a system prompt is replaced (JSON) or stopped (SSE)."""

    message: str
    min_words: int = DEFAULT_LEAK_WORDS


@dataclass(frozen=True, kw_only=True)
class SecretsGuard:
    """``prompt_guards.output_guards.secrets`` (sidegate): values (literal or ``$VAR``) no answer may contain."""

    message: str
    values: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class OutputGuards:
    """``prompt_guards.output_guards`` (sidegate; ext_proc/chat/output_guard.py): checks of the LLM's
    answers on the ingress, egress and agent listeners. Configured, every chat answer's body goes through
    ext_proc; not configured, nothing changes on the response path."""

    system_prompt_leak: PromptLeakGuard | None = None
    secrets: SecretsGuard | None = None


@dataclass(frozen=True, kw_only=True)
class Agent:
    """plano's ``agents[i]``: an OpenAI chat-completions server (``url`` + /v1/chat/completions)."""

    id: str
    upstream: Upstream

    @property
    def cluster(self) -> str:
        return f"agent_{self.id}"


@dataclass(frozen=True, kw_only=True)
class AgentRoute:
    """One entry of an agent listener's ``agents``: which agent, and what it does."""

    id: str
    description: str
    default: bool = False


@dataclass(frozen=True, kw_only=True)
class AgentListener:
    """plano's ``listeners[i]`` with ``type: agent`` (``listeners.agent_traffic[i]``): an Envoy
    listener of its own whose chat requests go to the agent that fits the conversation."""

    listener: Listener  # its name is the listener's name
    agents: tuple[AgentRoute, ...]

    @property
    def default_index(self) -> int:
        """plano's rule: the agent with ``default: true``, else the first."""
        return next((i for i, a in enumerate(self.agents) if a.default), 0)


@dataclass(frozen=True, kw_only=True)
class ExtProcSettings:
    address: str
    port: int
    http_port: int
    message_timeout_s: float  # ext_proc.message_timeout, else derived from the deadlines (see _ingress_deadline)
    failure_mode_allow: bool
    message_timeout_explicit: bool = False  # ext_proc.message_timeout is in the config
    # ext_proc.workers: processes behind Envoy's ext_proc cluster; worker i listens on port + i
    # and http_port + i (worker 0's http_port serves /healthz, /metrics of them all, the façade)
    workers: int = 1
    # ext_proc.count_tokens: false lets a JSON answer nothing else reads skip ext_proc (one gRPC
    # round trip less per request) at the cost of sidegate_llm_tokens for those answers
    count_tokens: bool = True

    def worker_ports(self, i: int) -> tuple[int, int]:
        """(gRPC port, HTTP port) of worker ``i`` (0-based)."""
        return self.port + i, self.http_port + i


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
    jailbreak: Jailbreak | None  # None: no jailbreak guard configured
    intent_threshold: float
    tracing_sampling: float  # percent of requests traced, 0-100 (Arch's random_sampling)
    otlp_endpoint: str | None
    tracing_include_prompts: bool = False  # tracing.include_prompts: prompt text in spans
    ratelimits: tuple[RateLimit, ...] = ()
    shared_store: SharedStore = field(default_factory=SharedStore)
    response_cache: ResponseCache | None = None  # None: no response cache
    state_storage: StateStorage | None = StateStorage()  # None: type none, nothing stored
    model_server: ModelServer = field(
        default_factory=lambda: ModelServer(mode="none", address="127.0.0.1", http_port=DEFAULT_PORTS["model_server.http_port"],
                                            grpc_port=DEFAULT_PORTS["model_server.grpc_port"],
                                            metrics_port=DEFAULT_PORTS["model_server.metrics_port"], timeout_s=10.0)
    )
    # what may work but probably not as meant, as "<key.path>: <why>" (printed by every command that loads the config)
    warnings: tuple[str, ...] = ()
    # whether the config sets overrides.prompt_target_intent_matching_threshold: then, with the
    # function-calling judge, it is the confident threshold (ext_proc/pipeline.py, _intent)
    intent_threshold_set: bool = False
    # model_aliases: a request's model -> the model (or family/model) whose provider serves it
    model_aliases: dict[str, str] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)  # plano's top-level agents, by id
    agent_listeners: tuple[AgentListener, ...] = ()  # listeners of type agent
    # routing_preferences: the best preference's embedding score must reach this (overrides.routing_preference_threshold)
    routing_threshold: float = 0.0
    # overrides.routing_preference_judge: the function_call model decides the turns near the ordinary-chat line (None: off)
    routing_judge: RoutingJudge | None = None
    # overrides.route_named_models: routing preferences also decide for a request that names a provider's
    # model (plano's way; Claude Code and Codex always name one); no preference fits -> the named model's provider
    route_named_models: bool = False
    output_guards: OutputGuards | None = None  # prompt_guards.output_guards (None: answers are not checked)

    @property
    def jailbreak_message(self) -> str | None:
        return self.jailbreak.message if self.jailbreak else None

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
        env = {var: value for p in self.llm_providers for var, value in p.header_env.items()}
        env.update({
            p.access_key_env: p.access_key
            for p in self.llm_providers
            if p.access_key_env and p.access_key is not None
        })
        return env


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _key_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


_TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "nothing"}


def _show(value: Any) -> str:
    """A value as a user reads it in an error: its YAML kind, plus the value itself when short."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "nothing"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if isinstance(value, (bool, int, float, str)) and len(repr(value)) <= 80 else kind


def _describe(error: jsonschema.ValidationError) -> tuple[list[Any], str]:
    """(key path, what was expected) for one schema error, worded for a person editing YAML."""
    # the stubs type these as unions with jsonschema's Unset marker; on a reported error they are set
    path, v = list(error.absolute_path), error.validator
    schema: Any = error.schema
    value: Any = error.instance
    expected: Any = error.validator_value
    if v == "additionalProperties":
        extra = sorted((k for k in value if k not in schema.get("properties", {})), key=str)
        allowed = ", ".join(sorted(schema.get("properties", {}))) or "none"
        if len(extra) == 1:
            return path + extra, f"unknown key {extra[0]!r} (allowed: {allowed})"
        return path, f"unknown keys {', '.join(map(repr, extra))} (allowed: {allowed})"
    if v == "type":
        types = expected if isinstance(expected, list) else [expected]
        return path, f"expected {' or '.join(_TYPE_NAMES[t] for t in types)}, got {_show(value)}"
    if v == "required":
        missing = [k for k in expected if k not in value]
        return path, f"missing required key {missing[0]!r}"
    if v in ("oneOf", "anyOf") and error.context and all(e.validator == "required" for e in error.context):
        missing = [k for e in error.context for k in e.validator_value if k not in value]  # type: ignore[union-attr]  # set on a reported error
        return path, f"missing required key: one of {', '.join(map(repr, missing))}"
    if v in ("oneOf", "anyOf", "pattern") and "description" in schema:
        return path, f"expected {schema['description']}, got {_show(value)}"
    if v == "enum":
        near = difflib.get_close_matches(str(value), [str(e) for e in expected], n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return path, f"expected one of {', '.join(map(repr, expected))}, got {_show(value)}{hint}"
    if v == "const":
        return path, f"expected {expected!r}, got {_show(value)}"
    if v == "minLength" and expected == 1:
        return path, "expected a non-empty string"
    if v in ("minimum", "maximum"):
        return path, f"expected {'at least' if v == 'minimum' else 'at most'} {expected}, got {value!r}"
    return path, error.message


def _schema_check(raw: Any, source: str) -> None:
    errors = list(_validator().iter_errors(raw))
    if errors:
        # the deepest error is the most specific one; report it and count the rest
        path, message = _describe(max(errors, key=lambda e: len(e.absolute_path)))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(source, _key_path(path), message + more)


def _resolve_env(value: str, env: dict[str, str], source: str, path: str) -> tuple[str, str | None]:
    """``$VAR``/``${VAR}`` → (value, VAR); a literal → (literal, None)."""
    m = _ENV_REF.match(value)
    if not m:
        if value.startswith("$"):
            raise ConfigError(source, path, f"expected $VAR or ${{VAR}} (letters, digits and _), got {value!r}")
        return value, None
    var = m.group(1) or m.group(2)
    if var not in env or env[var] == "":
        raise ConfigError(source, path, f"${var} is not set: export {var}=... or add it to .env")
    return env[var], var


def _upstream(spec: str, protocol: str | None, connect_timeout: Any, source: str, at: str) -> Upstream:
    """``host:port``, ``host`` or ``http(s)://host[:port][/base]`` → :class:`Upstream`.

    TLS when the URL says https, or ``protocol: https``, or (no scheme, no protocol) port 443."""
    u = urlsplit(spec if "://" in spec else "//" + spec)
    try:
        port = u.port
    except ValueError:
        port = 0
    if not u.hostname or port == 0:
        raise ConfigError(source, at, f"expected host:port, host or http(s)://host:port/path with a port 1-65535, got {spec!r}")
    tls = protocol == "https" if protocol else u.scheme == "https" or (not u.scheme and port == 443)
    return Upstream(
        host=u.hostname,
        port=port or (443 if tls else 80),
        tls=tls,
        base_path=u.path.rstrip("/"),
        connect_timeout_s=parse_duration(connect_timeout) if connect_timeout is not None else 5.0,
    )


_TYPE_ALIASES = {
    "str": "string", "string": "string", "int": "integer", "integer": "integer",
    "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "dict": "object", "object": "object",
}
_PY_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def _check_value(value: Any, ptype: str, source: str, at: str) -> None:
    """A parameter's default or enum value must have the parameter's type."""
    if value is not None and (not isinstance(value, _PY_TYPES[ptype]) or (isinstance(value, bool) and ptype != "boolean")):
        hint = " (YAML reads yes/no/on/off as booleans: quote it)" if isinstance(value, bool) and ptype == "string" else ""
        raise ConfigError(source, at, f"expected {_TYPE_NAMES[ptype]} (the parameter's type), got {_show(value)}{hint}")


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _load_env(config_dir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for candidate in (Path.cwd() / ".env", config_dir / ".env"):
        if candidate.is_file():
            env.update({k: v for k, v in dotenv_values(candidate).items() if v is not None})
    env.update(os.environ)  # the real environment wins over .env
    return env


def _ip_address(value: str, source: str, at: str) -> str:
    if value == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(source, at, f"expected an IP address such as 127.0.0.1 or 0.0.0.0 (Envoy listens on addresses, not host names), got {value!r}") from None
    return value


def _listener(raw: dict[str, Any], name: str, source: str) -> Listener:
    d = raw.get(name) or {}
    return Listener(
        name=name,
        address=_ip_address(d.get("address", "127.0.0.1"), source, f"listeners.{name}.address"),
        port=_port(d, f"listeners.{name}.port"),
        timeout_s=parse_duration(d.get("timeout", DEFAULT_LISTENER_TIMEOUT)),
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
        raw = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        got = "nothing (the file is empty)" if raw is None else _show(raw)
        raise ConfigError(source, "", f"expected a mapping at the top level (version: v0.1, listeners: ...), got {got}")
    return build_config(raw, source=source, env=env if env is not None else _load_env(p.resolve().parent))


def build_config(raw: dict[str, Any], *, source: str = "<config>", env: dict[str, str] | None = None) -> Config:
    """Check an already-parsed config mapping and build the typed :class:`Config`, one section at a time."""
    env = dict(os.environ) if env is None else env
    written = raw.get("listeners") if isinstance(raw, dict) else None
    # plano's list-form listeners: where each agent listener was written, for error paths
    agent_paths = [f"listeners[{i}]" for i, x in enumerate(written) if isinstance(x, dict) and x.get("type") == "agent"] \
        if isinstance(written, list) else []
    try:  # every Arch version's spellings -> the canonical shape (ext_proc/arch_compat.py)
        raw, compat_warnings = normalise(raw, default_ports=DEFAULT_PORTS, provider_hosts=_PROVIDER_HOSTS)
    except CompatError as exc:
        raise ConfigError(source, exc.path, exc.message) from None
    _schema_check(raw, source)
    listeners = raw.get("listeners") or {}
    admin = listeners.get("admin") or {}
    ext_proc = _ext_proc(raw.get("ext_proc") or {})
    _check_ports(raw, source)
    endpoints = _endpoints(raw, source)
    providers = _providers(raw, env, ext_proc, source)
    xref_warnings: list[str] = []  # cross-references Arch accepts: named, not refused
    targets = _targets(raw, endpoints, env, source, xref_warnings)
    agent_parts = _agents(raw, source, agent_paths, xref_warnings)
    if targets and not providers and any(t.auto_llm_dispatch_on_response for t in targets):
        raise ConfigError(source, "llm_providers", "prompt targets answer through an LLM: configure at least one llm_provider")
    jb = ((raw.get("prompt_guards") or {}).get("input_guards") or {}).get("jailbreak")
    tracing = raw.get("tracing") or {}
    overrides = raw.get("overrides") or {}
    ms = _model_server(raw.get("model_server") or {}, source)
    judge = _guard_judge(jb.get("judge")) if isinstance(jb, dict) else None
    agent_lists = (listeners.get("agent_traffic") or []) if isinstance(listeners, dict) else []
    ext_proc, warnings = _message_timeout(ext_proc, ms, targets, endpoints, guard=jb is not None,
                                          judge_s=judge.timeout_s if judge else 0.0,
                                          agents=any(len(a.get("agents") or []) > 1 for a in agent_lists))
    warnings += _routing_preference_warnings(providers, ms, source)
    if overrides.get("routing_preference_judge") not in (None, False) and not any(p.routing_preferences for p in providers):
        warnings.append("overrides.routing_preference_judge: no provider has routing_preferences, so there is nothing for it to judge "
                        "(and the function_call model is not loaded for it)")
    ext_proc, route_warnings = _routing_judge_timeout(ext_proc, _routing_judge(overrides.get("routing_preference_judge")), providers)
    warnings += route_warnings
    return Config(
        source=source,
        raw=raw,
        ingress=_listener(listeners, "ingress_traffic", source),
        egress=_listener(listeners, "egress_traffic", source),
        internal=_listener(listeners, "internal_traffic", source),
        admin_address=_ip_address(admin.get("address", "127.0.0.1"), source, "listeners.admin.address"),
        admin_port=_port(admin, "listeners.admin.port"),
        ext_proc=ext_proc,
        endpoints=endpoints,
        llm_providers=providers,
        system_prompt=raw.get("system_prompt"),
        prompt_targets=targets,
        jailbreak=_jailbreak(jb) if jb is not None else None,
        # 0.45: picked on the dev halves of BFCL multiple/live_multiple/irrelevance (bench/intent_eval.py)
        intent_threshold=float(overrides.get("prompt_target_intent_matching_threshold", 0.45)),
        intent_threshold_set="prompt_target_intent_matching_threshold" in overrides,
        tracing_sampling=float(tracing.get("random_sampling", 0)),
        otlp_endpoint=tracing.get("otlp_endpoint"),
        tracing_include_prompts=bool(tracing.get("include_prompts", False)),
        ratelimits=_ratelimits(raw, providers, xref_warnings),
        shared_store=_shared_store(raw.get("shared_store") or {}, source),
        response_cache=_response_cache(raw.get("response_cache")),
        state_storage=_state_storage(raw.get("state_storage")),
        model_server=ms,
        warnings=tuple(compat_warnings + xref_warnings + warnings + _response_cache_warnings(raw.get("response_cache"), ms, targets, guard=jb is not None)
                   + _state_storage_warnings(raw.get("state_storage"))),
        model_aliases=_model_aliases(raw, providers, source),
        **agent_parts,
        routing_threshold=float(overrides.get("routing_preference_threshold", DEFAULT_ROUTING_THRESHOLD)),
        routing_judge=_routing_judge(overrides.get("routing_preference_judge")),
        route_named_models=bool(overrides.get("route_named_models", False)),
        output_guards=_output_guards((raw.get("prompt_guards") or {}).get("output_guards"), env, source),
    )


def _is_openai_api(spec: str) -> bool:
    """Whether a provider's address is OpenAI's own API (which serves /v1/responses; a server that is
    only OpenAI-compatible may not)."""
    return urllib.parse.urlsplit(spec if "://" in spec else f"https://{spec}").hostname == "api.openai.com"


def _agents(raw: dict[str, Any], source: str, paths: list[str], warnings: list[str]) -> dict[str, Any]:
    """plano's ``agents`` and agent listeners (``listeners.agent_traffic``): every listener has a
    name, a port of its own and at least one agent of ``agents`` (by id). A listener entry naming
    no defined agent is left out with a warning, as plano's CLI accepts it (its own full reference
    config routes to an undefined ``rag_agent``), and so is a listener left with none. ``paths``:
    where each agent listener was written (plano's list form), else ``listeners.agent_traffic[i]``."""
    agents: dict[str, Agent] = {}
    for i, a in enumerate(raw.get("agents") or []):
        if a["id"] in agents:
            raise ConfigError(source, f"agents[{i}].id", f"agent id {a['id']!r} is used twice")
        agents[a["id"]] = Agent(id=a["id"], upstream=_upstream(a["url"], None, a.get("connect_timeout"), source, f"agents[{i}].url"))
    listeners_raw = raw.get("listeners") or {}
    local_triton = (raw.get("model_server") or {}).get("mode") not in ("remote", "none")
    taken: dict[int, str] = {}  # the other ports sidegate listens on (as _check_ports reads them)
    for key_path in DEFAULT_PORTS:
        section_path = key_path.rpartition(".")[0]
        if key_path == "model_server.balancer_port" or (section_path == "model_server" and not local_triton):
            continue
        section = listeners_raw.get(section_path.removeprefix("listeners.")) if section_path.startswith("listeners.") \
            else raw.get(section_path)
        taken[_port(section or {}, key_path)] = key_path
    names: set[str] = set()
    out: list[AgentListener] = []
    for i, lst in enumerate(listeners_raw.get("agent_traffic") or []):
        at = paths[i] if i < len(paths) else f"listeners.agent_traffic[{i}]"
        name = lst.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
            raise ConfigError(source, f"{at}.name", f"an agent listener needs a name of letters, digits, _, . and -, got {name!r}")
        if name in names:
            raise ConfigError(source, f"{at}.name", f"agent listener name {name!r} is used twice")
        names.add(name)
        if "port" not in lst:
            raise ConfigError(source, f"{at}.port", f"agent listener {name!r} needs a port to listen on")
        routes = lst.get("agents") or []
        if not routes:
            raise ConfigError(source, f"{at}.agents", f"agent listener {name!r} has no agents: list at least one "
                                                      "{id, description} (ids from the top-level agents)")
        seen: set[str] = set()
        defaults = []
        known = ", ".join(sorted(agents)) or "none: add it to the top-level agents with its url"
        for j, r in enumerate(routes):
            if r["id"] not in agents:
                warnings.append(f"{at}.agents[{j}].id: {r['id']!r} is not an agent (known: {known}): this listener does not "
                                "route to it")
                continue
            if r["id"] in seen:
                raise ConfigError(source, f"{at}.agents[{j}].id", f"agent {r['id']!r} is listed twice")
            seen.add(r["id"])
            if r.get("default"):
                defaults.append(j)
        if len(defaults) > 1:
            raise ConfigError(source, f"{at}.agents[{defaults[1]}].default", "more than one agent of this listener has default: true")
        port = lst["port"]
        if port in taken:
            raise ConfigError(source, f"{at}.port", f"port {port} is already used by {taken[port]}")
        taken[port] = f"{at}.port"
        listener = Listener(name=name, address=_ip_address(lst.get("address", "127.0.0.1"), source, f"{at}.address"), port=port,
                            timeout_s=parse_duration(lst.get("timeout", DEFAULT_LISTENER_TIMEOUT)), max_body_bytes=lst.get("max_body_bytes", DEFAULT_BODY_LIMIT))
        if not seen:
            warnings.append(f"{at}.agents: none of agent listener {name!r}'s agents is defined (known agents: {known}): "
                            "the listener is not served")
            continue
        out.append(AgentListener(listener=listener, agents=tuple(
            AgentRoute(id=r["id"], description=r["description"].strip(), default=bool(r.get("default", False)))
            for r in routes if r["id"] in agents)))
    return {"agents": agents, "agent_listeners": tuple(out)}


def _model_aliases(raw: dict[str, Any], providers: tuple[LlmProvider, ...], source: str) -> dict[str, str]:
    try:
        return model_aliases(raw, providers)
    except CompatError as exc:
        raise ConfigError(source, exc.path, exc.message) from None


def _ext_proc(ep: dict[str, Any]) -> ExtProcSettings:
    """``ext_proc``; its message timeout is derived later (:func:`_message_timeout`) when not set."""
    return ExtProcSettings(
        address=ep.get("address", "127.0.0.1"),
        port=_port(ep, "ext_proc.port"),
        http_port=_port(ep, "ext_proc.http_port"),
        message_timeout_s=parse_duration(ep.get("message_timeout", DEFAULT_MESSAGE_TIMEOUT_S)),
        failure_mode_allow=bool(ep.get("failure_mode_allow", False)),
        message_timeout_explicit="message_timeout" in ep,
        workers=int(ep.get("workers", free_cores())),
        count_tokens=bool(ep.get("count_tokens", True)),
    )


DEFAULT_WORKERS_MAX = 8  # the default never starts more ext_proc processes than this (~80 MB each)


def free_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """``ext_proc.workers``' default: the CPUs this process may run on (its affinity mask, which
    a container's cpuset narrows), or fewer when a CPU limit caps it (:func:`cpu_limit`: a
    Kubernetes ``resources.limits.cpu``, ``docker run --cpus``), at least 1 and at most
    DEFAULT_WORKERS_MAX."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cpu_limit(cgroup)
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, min(cpus, DEFAULT_WORKERS_MAX))


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPUs this process's cgroup CPU quota allows, rounded up (cgroup v2 ``cpu.max``, else v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None: no quota, or none readable."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, -(-quota_us // period_us)) if quota_us > 0 and period_us > 0 else None


def _check_ports(raw: dict[str, Any], source: str) -> None:
    """No two of the ports sidegate listens on are the same (a local Triton's included)."""
    listeners = raw.get("listeners") or {}
    model_server = raw.get("model_server") or {}
    local_triton = model_server.get("mode") not in ("remote", "none")
    # (key path, port, written in the file rather than defaulted)
    ports: list[tuple[str, int, bool]] = []
    for key_path in DEFAULT_PORTS:
        section_path, _, key = key_path.rpartition(".")
        if key_path == "model_server.balancer_port" or (section_path == "model_server" and not local_triton):
            continue  # the balancer is checked against the replicas' ports (_model_server)
        section = model_server if section_path == "model_server" else raw.get("ext_proc") or {} if section_path == "ext_proc" \
            else listeners.get(section_path.removeprefix("listeners.")) or {}
        ports.append((key_path, _port(section, key_path), key in section))
    seen: dict[int, tuple[str, bool]] = {}
    for key_path, port, written in sorted(ports, key=lambda p: p[2]):  # defaults first: blame a key the user wrote
        if port in seen:
            other, other_written = seen[port]
            raise ConfigError(source, key_path, f"port {port} is already used by {other}{'' if other_written else ' (its default)'}")
        seen[port] = (key_path, written)
    ep = raw.get("ext_proc") or {}
    workers = int(ep.get("workers", free_cores()))
    for i in range(1, workers):  # worker i: ext_proc.port + i, ext_proc.http_port + i
        for key in ("port", "http_port"):
            port = _port(ep, f"ext_proc.{key}") + i
            if port in seen:
                default = "" if "workers" in ep else f" (ext_proc.workers defaults to the {workers} CPUs here)"
                raise ConfigError(source, "ext_proc.workers", f"worker {i + 1} of {workers}{default} listens on ext_proc.{key} + {i} = {port}, "
                                                              f"which {seen[port][0]} uses: move one or set ext_proc.workers lower")


def _endpoints(raw: dict[str, Any], source: str) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    for name, e in (raw.get("endpoints") or {}).items():
        endpoints[name] = Endpoint(
            name=name,
            upstream=_upstream(e["endpoint"], e.get("protocol"), e.get("connect_timeout"), source, f"endpoints.{name}.endpoint"),
            timeout_s=parse_duration(e.get("timeout", "30s")),
            http_host=e.get("http_host"),
        )
    return endpoints


def _providers(raw: dict[str, Any], env: dict[str, str], ext_proc: ExtProcSettings, source: str) -> tuple[LlmProvider, ...]:
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
        if interface in UNSUPPORTED_INTERFACES:
            raise ConfigError(source, f"{at}.provider_interface", f"{interface} is not supported: {UNSUPPORTED_INTERFACES[interface]}")
        if interface == AZURE_INTERFACE and not pr.get("model"):
            raise ConfigError(source, f"{at}.model", "azure_openai needs model: the name of your deployment "
                                                     "(requests go to /openai/deployments/<model>/chat/completions)")
        if spec is None and interface in LOCAL_INTERFACES:
            spec = _SIDEGATE_FACADE.format(port=ext_proc.http_port)
        if spec is None and interface == BEDROCK_INTERFACE:
            raise ConfigError(source, f"{at}.endpoint", "amazon_bedrock needs the address of Bedrock's runtime in your region: "
                                                        "set base_url (or endpoint): https://bedrock-runtime.<region>.amazonaws.com")
        if spec is None:
            raise ConfigError(source, f"{at}.endpoint", f"provider_interface {interface!r} has no default address: set endpoint")
        if (why := bad_base_url(spec)) is not None:
            raise ConfigError(source, f"{at}.endpoint", why)
        access_key: str | None = None
        key_env: str | None = None
        passthrough = bool(pr.get("passthrough_auth", False))
        if "access_key" in pr and not passthrough:
            access_key, key_env = _resolve_env(pr["access_key"], env, source, f"{at}.access_key")
            if key_env is None:  # a literal key: hand it to Envoy through a variable of our own
                key_env = base = "SIDEGATE_KEY_" + re.sub(r"[^A-Z0-9]", "_", pr["name"].upper())
                taken, n = {p.access_key_env for p in providers}, 1
                while key_env in taken:  # providers "a-b" and "a_b" must not share one variable
                    n += 1
                    key_env = f"{base}_{n}"
        if pr.get("native_responses") and (interface in ANTHROPIC_INTERFACES or interface in (BEDROCK_INTERFACE, AZURE_INTERFACE)):
            raise ConfigError(source, f"{at}.native_responses", f"{interface} serves no OpenAI Responses API at its chat address: "
                                                                "leave native_responses out (Responses clients get chat completions translated)")
        if pr.get("default"):
            defaults.append(f"{at} ({pr['name']})")
        providers.append(
            LlmProvider(
                name=pr["name"],
                interface=interface,
                model=pr.get("model"),
                default=bool(pr.get("default", False)),
                upstream=_upstream(spec, pr.get("protocol"), pr.get("connect_timeout"), source, f"{at}.endpoint"),
                access_key=access_key,
                access_key_env=key_env,
                retries=pr.get("retries", 0),
                stream=pr.get("stream"),
                fallbacks=tuple(pr.get("fallbacks") or ()),
                api_version=pr.get("api_version", AZURE_API_VERSION) if interface == AZURE_INTERFACE else None,
                passthrough_auth=passthrough,
                http_host=pr.get("http_host"),
                **_aws(pr, interface, spec, env, source, at),
                **_provider_headers(pr.get("headers") or {}, env, source, f"{at}.headers"),
                routing_preferences=tuple(RoutingPreference(name=rp["name"], description=rp["description"])
                                          for rp in pr.get("routing_preferences") or ()),
                native_responses=bool(pr.get("native_responses", interface == "openai" and _is_openai_api(spec))),
            )
        )
    if len(defaults) > 1:
        raise ConfigError(source, "llm_providers", f"more than one provider has default: true: {', '.join(defaults)}")
    names = {p.name for p in providers}
    for i, p in enumerate(providers):
        for j, fb in enumerate(p.fallbacks):
            if fb == p.name or fb not in names:
                why = "is the provider itself" if fb == p.name else f"is not a provider (known: {', '.join(sorted(names))})"
                raise ConfigError(source, f"llm_providers[{i}].fallbacks[{j}]", f"{fb!r} {why}")
            other = next(q for q in providers if q.name == fb)
            if AZURE_INTERFACE in (p.interface, other.interface):  # the failover rewrites Bearer keys and /v1/ prefixes only
                raise ConfigError(source, f"llm_providers[{i}].fallbacks[{j}]",
                                  "azure_openai providers cannot be in a fallback chain (their key header and path differ)")
            for q in (p, other):  # set per attempt by the failover's Lua filter, which knows only the key and host
                extra = [k for k, on in (("passthrough_auth", q.passthrough_auth), ("headers", q.headers), ("http_host", q.http_host)) if on]
                if extra:
                    raise ConfigError(source, f"llm_providers[{i}].fallbacks[{j}]",
                                      f"{q.name!r} has {', '.join(extra)}: not supported in a fallback chain")
            if BEDROCK_INTERFACE in (p.interface, other.interface):  # the model is in a Converse request's path
                raise ConfigError(source, f"llm_providers[{i}].fallbacks[{j}]",
                                  "amazon_bedrock providers cannot be in a fallback chain (the model is in their request path)")
            if other.wire != p.wire:  # Envoy's failover rewrites the key, host and path per attempt, not the body's API
                raise ConfigError(source, f"llm_providers[{i}].fallbacks[{j}]",
                                  f"{fb!r} speaks the {other.wire} API and {p.name!r} the {p.wire} API: a fallback must speak the same one")
    if len(providers) > 1 and not defaults:
        raise ConfigError(source, "llm_providers", "several providers and none has default: true: mark one as the default")
    return tuple(providers)


_BEDROCK_REGION = re.compile(r"^bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")
_AWS_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_region")


def _aws(pr: dict[str, Any], interface: str, spec: str, env: dict[str, str], source: str, at: str) -> dict[str, Any]:
    """amazon_bedrock's IAM keys (``aws_access_key_id`` + ``aws_secret_access_key``, optional ``aws_session_token``):
    SigV4 instead of the Bearer API key; the region from ``aws_region`` or the bedrock-runtime host name."""
    given = [k for k in _AWS_KEYS if k in pr]
    if not given:
        return {}
    if interface != BEDROCK_INTERFACE:
        raise ConfigError(source, f"{at}.{given[0]}", "AWS SigV4 keys are for provider_interface amazon_bedrock only")
    for k in ("aws_access_key_id", "aws_secret_access_key"):
        if k not in pr:
            raise ConfigError(source, f"{at}.{k}", f"{k} is required with {', '.join(given)} (IAM keys sign requests with SigV4)")
    if "access_key" in pr:
        raise ConfigError(source, f"{at}.access_key", "both access_key (a Bedrock API key, sent as Bearer) and aws_* IAM keys "
                                                      "(SigV4) are set: keep one")
    values = {k: _resolve_env(pr[k], env, source, f"{at}.{k}")[0] for k in _AWS_KEYS[:3] if k in pr}
    host = urlsplit(spec if "://" in spec else "//" + spec).hostname or ""
    m = _BEDROCK_REGION.match(host)
    region = pr.get("aws_region") or (m.group(1) if m else None)
    if not region:
        raise ConfigError(source, f"{at}.aws_region", f"the region is not in the endpoint's host {host!r} "
                                                      "(bedrock-runtime.<region>.amazonaws.com): set aws_region, e.g. us-east-1")
    creds = AwsCredentials(values["aws_access_key_id"], values["aws_secret_access_key"], values.get("aws_session_token"))
    return {"aws": creds, "aws_region": region}


def _provider_headers(headers: dict[str, str], env: dict[str, str], source: str, at: str) -> dict[str, Any]:
    """A provider's ``headers`` as Envoy header values: ``$VAR`` -> ``%ENVIRONMENT(VAR)%`` (checked set), ``%`` -> ``%%``."""
    rendered: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in ("host", ":authority", "content-length") or name.startswith(":"):
            raise ConfigError(source, f"{at}.{name}", f"{name!r} cannot be set here" + (": use http_host" if name.lower() in ("host", ":authority") else ""))
        parts, last = [], 0
        for m in _ENV_IN_TEXT.finditer(value):
            secret, var = _resolve_env(m.group(0), env, source, f"{at}.{name}")
            assert var is not None
            secrets[var] = secret
            parts += [value[last : m.start()].replace("%", "%%"), f"%ENVIRONMENT({var})%"]
            last = m.end()
        parts.append(value[last:].replace("%", "%%"))
        rendered.append((name, "".join(parts)))
    return {"headers": tuple(rendered), "header_env": secrets}


def _targets(raw: dict[str, Any], endpoints: dict[str, Endpoint], env: dict[str, str], source: str,
             warnings: list[str]) -> tuple[PromptTarget, ...]:
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
            pat = f"{at}.parameters[{j}]"
            if any(p.name == prm["name"] for p in params):
                raise ConfigError(source, f"{pat}.name", f"parameter name {prm['name']!r} is used twice in {t['name']!r}")
            ptype = _TYPE_ALIASES[prm.get("type", "str")]
            for k, value in enumerate(prm.get("enum") or []):
                _check_value(value, ptype, source, f"{pat}.enum[{k}]")
            if "default" in prm:
                _check_value(prm["default"], ptype, source, f"{pat}.default")
                if "enum" in prm and prm["default"] not in prm["enum"]:
                    raise ConfigError(source, f"{pat}.default", f"expected one of enum {prm['enum']}, got {prm['default']!r}")
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
                    items=prm.get("items"),
                )
            )
        tep = None
        if "endpoint" in t:
            e = t["endpoint"]
            if e["name"] not in endpoints:
                known = ", ".join(sorted(endpoints)) or "none are defined"
                raise ConfigError(source, f"{at}.endpoint.name", f"unknown endpoint {e['name']!r} (endpoints: {known})")
            path = e.get("path", "/")
            placeholders = re.findall(r"\{([^}]*)\}", path)
            for placeholder in placeholders:
                if placeholder not in {p.name for p in params}:
                    raise ConfigError(source, f"{at}.endpoint.path", f"placeholder {{{placeholder}}} is not a parameter of {t['name']!r}")
            for j, prm in enumerate(params):
                if prm.in_path and prm.name not in placeholders:  # Arch ignores in_path: the path's placeholders decide
                    warnings.append(f"{at}.parameters[{j}].in_path: in_path is true but endpoint.path {path!r} has no "
                                    f"{{{prm.name}}}: {prm.name!r} is sent in the query string (as Arch does)")
                    params[j] = replace(prm, in_path=False)
            headers = {}
            for hk, hv in (e.get("http_headers") or {}).items():  # "Bearer $APP_TOKEN" works too
                where = f"{at}.endpoint.http_headers.{hk}"
                headers[hk] = _ENV_IN_TEXT.sub(lambda m: _resolve_env(m.group(0), env, source, where)[0], hv)
            # GET when unset, as Arch (its HttpMethod's default): its demos that call public GET APIs
            # (currency_exchange, stock_quote) leave http_method out, those that POST say so; the
            # default target is POSTed the conversation (endpoint_request), as Arch always does
            method = e.get("http_method", "POST" if t.get("default") else "GET").upper()
            tep = TargetEndpoint(name=e["name"], path=path, http_method=method, http_headers=headers)
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
    return tuple(targets)


def _ratelimits(raw: dict[str, Any], providers: tuple[LlmProvider, ...], warnings: list[str]) -> tuple[RateLimit, ...]:
    ratelimits: list[RateLimit] = []
    provider_models = {p.name for p in providers} | {p.model for p in providers if p.model}
    for i, rl in enumerate(raw.get("ratelimits") or []):
        if rl["model"] not in provider_models:  # Arch accepts it, and the limit never applies
            known = ", ".join(sorted(provider_models)) or "no llm_providers are configured"
            warnings.append(f"ratelimits[{i}].model: no llm_provider has name or model {rl['model']!r} (known: {known}): "
                            "this limit never applies (Arch accepts it the same way); name a provider or its model")
            continue
        selector = rl.get("selector") or {}
        ratelimits.append(RateLimit(model=rl["model"], tokens=rl["limit"]["tokens"], unit=rl["limit"]["unit"],
                                    selector_key=selector.get("key"), selector_value=selector.get("value") or None))
    return tuple(ratelimits)


def _shared_store(ss: dict[str, Any], source: str) -> SharedStore:
    """``shared_store``: memory (the default) or redis with its url."""
    kind = ss.get("type", "memory")
    if kind == "redis" and not ss.get("url"):
        raise ConfigError(source, "shared_store.url", "type redis needs url: redis://HOST:PORT/DB")
    return SharedStore(type=kind, url=ss.get("url"), fail_open=bool(ss.get("fail_open", True)),
                       prefix=ss.get("prefix", "sidegate:"), timeout_s=parse_duration(ss.get("timeout", "250ms")))


def _response_cache(rc: dict[str, Any] | None) -> ResponseCache | None:
    """``response_cache``: absent (or null) is no cache; ``{}`` is the defaults (ttl 600s)."""
    if rc is None:
        return None
    return ResponseCache(ttl_s=parse_duration(rc.get("ttl", 600.0)), similarity=rc.get("similarity"),
                         max_entry_bytes=rc.get("max_entry_bytes", DEFAULT_CACHE_ENTRY_BYTES),
                         max_memory_bytes=rc.get("max_memory_bytes", DEFAULT_CACHE_MEMORY_BYTES))


def _state_storage(st: dict[str, Any] | None) -> StateStorage | None:
    """``state_storage``: absent is the defaults (memory, 24h); ``type: none`` stores nothing."""
    st = st or {}
    if st.get("type") == "none":
        return None
    return StateStorage(ttl_s=parse_duration(st.get("ttl", DEFAULT_STATE_TTL_S)),
                        max_memory_bytes=st.get("max_memory_bytes", DEFAULT_CACHE_MEMORY_BYTES))


def _state_storage_warnings(st: dict[str, Any] | None) -> list[str]:
    if not st or st.get("type") != "postgres":
        return []
    return ["state_storage.type: postgres is not implemented: responses are kept in the shared_store instead (this host, "
            "or Redis with shared_store.type: redis) for state_storage.ttl; connection_string is not read"]


def _response_cache_warnings(rc: dict[str, Any] | None, ms: ModelServer, targets: tuple[PromptTarget, ...], *, guard: bool) -> list[str]:
    """``similarity`` needs prompt_embed, which the model server loads for a guard or prompt targets to match."""
    if rc is None or rc.get("similarity") is None:
        return []
    if ms.mode == "none":
        return ["response_cache.similarity: semantic matching embeds the last user turn with prompt_embed, and model_server "
                "is off (mode: none): it is ignored, and only identical requests are answered from the cache"]
    return []


# overrides.routing_preference_threshold's default: the best preference's embedding score from which
# a request goes to that preference's provider (when no ordinary-chat line is closer: chat/preferences.py;
# chosen on the dev half of bench/data/routing_set*.tsv, python -m bench routing_eval; figures in bench/README.md)
DEFAULT_ROUTING_THRESHOLD = 0.18
# two preferences' descriptions this alike (difflib ratio of their normalised words) are warned about
NEAR_IDENTICAL_DESCRIPTIONS = 0.85


# overrides.routing_preference_judge's defaults: the band and the share chosen on the routing set's dev half
# (python -m bench routing_eval --judge; figures in bench/README.md), the deadline from the judged prompts' latency
DEFAULT_ROUTING_JUDGE_BAND = 0.06
DEFAULT_ROUTING_JUDGE_THRESHOLD = 0.6
DEFAULT_ROUTING_JUDGE_TIMEOUT_S = 1.5
# the embedding part of a preference-routing decision must end within this (ext_proc/chat/preferences.py
# reads it: a slow prompt_embed sends the request to the default provider rather than hold it)
ROUTE_EMBED_DEADLINE_S = 2.0


@dataclass(frozen=True, kw_only=True)
class RoutingJudge:
    """``overrides.routing_preference_judge`` (sidegate): a turn whose best preference's score is
    within ``band`` of the nearest ordinary-chat line (the embedding's uncertain cases) is sorted by
    the function_call model among the preferences and "other"; the embedding's best preference goes
    when the judge's P(it) / (P(it) + P(other)) >= ``threshold``, else the default provider. Its own
    deadline ``timeout_s``; a judge that fails or is slower leaves the embedding's decision."""

    band: float = DEFAULT_ROUTING_JUDGE_BAND
    threshold: float = DEFAULT_ROUTING_JUDGE_THRESHOLD
    timeout_s: float = DEFAULT_ROUTING_JUDGE_TIMEOUT_S


def _routing_judge(judge: Any) -> RoutingJudge | None:
    """``overrides.routing_preference_judge``: absent, null or false is no judge; true or ``{}`` the defaults."""
    if judge is None or judge is False:
        return None
    settings = judge if isinstance(judge, dict) else {}
    return RoutingJudge(band=float(settings.get("band", DEFAULT_ROUTING_JUDGE_BAND)),
                        threshold=float(settings.get("threshold", DEFAULT_ROUTING_JUDGE_THRESHOLD)),
                        timeout_s=parse_duration(settings.get("timeout", DEFAULT_ROUTING_JUDGE_TIMEOUT_S)))


def _routing_judge_timeout(ext_proc: ExtProcSettings, judge: RoutingJudge | None,
                           providers: tuple[LlmProvider, ...]) -> tuple[ExtProcSettings, list[str]]:
    """The judge's deadline comes on top of what else a request keeps ext_proc waiting for, so a
    derived ``ext_proc.message_timeout`` grows by it (a slow judge then leaves the embedding's
    decision instead of Envoy answering 504 ext_proc_timeout); one set in the config shorter than
    the whole decision (embedding deadline + judge) is warned about."""
    if judge is None or not any(p.routing_preferences for p in providers):
        return ext_proc, []
    decision_s = ROUTE_EMBED_DEADLINE_S + judge.timeout_s
    if not ext_proc.message_timeout_explicit:
        return dataclasses.replace(ext_proc, message_timeout_s=ext_proc.message_timeout_s + judge.timeout_s), []
    if ext_proc.message_timeout_s < decision_s + MESSAGE_TIMEOUT_MARGIN_S:
        return ext_proc, [f"ext_proc.message_timeout: {ext_proc.message_timeout_s:g} s is shorter than a preference-routing decision with "
                          f"its judge may take ({ROUTE_EMBED_DEADLINE_S:g} s embedding + {judge.timeout_s:g} s "
                          f"overrides.routing_preference_judge.timeout + {MESSAGE_TIMEOUT_MARGIN_S:g} s margin): raise it, or lower the "
                          "judge's timeout"]
    return ext_proc, []


def _routing_preference_warnings(providers: tuple[LlmProvider, ...], ms: ModelServer, source: str) -> list[str]:
    """``routing_preferences``: a name used twice is refused (x-sidegate-route would not say which);
    two descriptions alike enough that the embedding cannot tell them apart are warned about, as is
    a model server that is off (the preferences need prompt_embed: every request goes to the default)."""
    placed: list[tuple[str, RoutingPreference]] = []
    seen: dict[str, str] = {}
    for i, p in enumerate(providers):
        for j, rp in enumerate(p.routing_preferences):
            at = f"llm_providers[{i}].routing_preferences[{j}]"
            if rp.name in seen:
                raise ConfigError(source, f"{at}.name", f"routing preference name {rp.name!r} is already used at {seen[rp.name]}: "
                                                        "x-sidegate-route names the preference, so each name must be distinct")
            seen[rp.name] = at
            placed.append((at, rp))
    if not placed:
        return []
    warnings: list[str] = []
    words = [" ".join(re.findall(r"[a-z0-9]+", rp.description.lower())) for _, rp in placed]
    for a in range(len(placed)):
        for b in range(a + 1, len(placed)):
            ratio = difflib.SequenceMatcher(None, words[a], words[b]).ratio()
            if ratio >= NEAR_IDENTICAL_DESCRIPTIONS:
                warnings.append(f"{placed[b][0]}.description: nearly the same as {placed[a][0]} ({placed[a][1].name!r}, "
                                f"{ratio:.0%} alike): requests that fit one fit the other, and which provider gets them is "
                                "down to small differences in wording; describe what sets them apart, or merge them")
    if ms.mode == "none":
        warnings.append(f"{placed[0][0]}: routing preferences are matched with the prompt_embed model, and model_server is off "
                        "(mode: none): every request goes to the provider it names, or the default provider")
    return warnings


def _jailbreak(jb: dict[str, Any]) -> Jailbreak:
    """``prompt_guards.input_guards.jailbreak``."""
    return Jailbreak(
        message=(jb.get("on_exception") or {}).get("message", DEFAULT_GUARD_MESSAGE),
        threshold=jb.get("threshold"),
        fail_open=bool(jb.get("fail_open", False)),
        judge=_guard_judge(jb.get("judge")),
    )


def _output_guards(og: Any, env: dict[str, str], source: str) -> OutputGuards | None:
    """``prompt_guards.output_guards``: None when absent or when it configures no guard."""
    if not isinstance(og, dict):
        return None
    leak, secrets = og.get("system_prompt_leak"), og.get("secrets")
    at = "prompt_guards.output_guards"

    def message(guard: dict[str, Any]) -> str:
        return str((guard.get("on_exception") or {}).get("message", DEFAULT_OUTPUT_GUARD_MESSAGE))

    values: list[str] = []
    for i, value in enumerate((secrets or {}).get("values") or []):
        resolved, _ = _resolve_env(value, env, source, f"{at}.secrets.values[{i}]")
        if len(resolved) < MIN_SECRET_CHARS:
            raise ConfigError(source, f"{at}.secrets.values[{i}]", f"a secret of {len(resolved)} characters would match ordinary "
                              f"text: list values of at least {MIN_SECRET_CHARS} characters")
        values.append(resolved)
    found = OutputGuards(
        system_prompt_leak=PromptLeakGuard(message=message(leak), min_words=int(leak.get("min_words", DEFAULT_LEAK_WORDS)))
        if isinstance(leak, dict) else None,
        secrets=SecretsGuard(message=message(secrets), values=tuple(values)) if isinstance(secrets, dict) and values else None,
    )
    return found if found.system_prompt_leak or found.secrets else None


def _guard_judge(judge: Any) -> GuardJudge | None:
    """``jailbreak.judge``: absent, null or false is no judge; true or ``{}`` the calibrated defaults."""
    if judge is None or judge is False:
        return None
    settings = judge if isinstance(judge, dict) else {}
    lo, hi = sorted(float(x) for x in settings.get("band", DEFAULT_JUDGE_BAND))
    return GuardJudge(lo=float(lo), hi=float(hi), threshold=float(settings.get("threshold", DEFAULT_JUDGE_THRESHOLD)),
                      timeout_s=parse_duration(settings.get("timeout", DEFAULT_JUDGE_TIMEOUT_S)))


def _message_timeout(ext_proc: ExtProcSettings, ms: ModelServer, targets: tuple[PromptTarget, ...], endpoints: dict[str, Endpoint],
                     *, guard: bool, judge_s: float = 0.0, agents: bool = False) -> tuple[ExtProcSettings, list[str]]:
    """``ext_proc.message_timeout`` derived from the deadlines when not set; a warning when set shorter than they need.
    ``agents``: an agent listener chooses among several agents (the guard, then one prompt_embed call)."""
    warnings: list[str] = []
    needed, parts = _ingress_deadline(ms, list(targets), endpoints, guard=guard, judge_s=judge_s)
    if agents:
        embed = ms.timeout_for("prompt_embed")
        agent_s = (ms.timeout_for("prompt_guard") + judge_s if guard else 0.0) + embed + MESSAGE_TIMEOUT_MARGIN_S
        if agent_s > needed:
            needed, parts = agent_s, (f"an agent listener's guard + prompt_embed {embed:g} s ({ms.timeout_key('prompt_embed')}) + "
                                      f"{MESSAGE_TIMEOUT_MARGIN_S:g} s margin")
    if not ext_proc.message_timeout_explicit:
        ext_proc = dataclasses.replace(ext_proc, message_timeout_s=max(DEFAULT_MESSAGE_TIMEOUT_S, needed))
    elif ext_proc.message_timeout_s < needed:
        warnings.append(
            f"ext_proc.message_timeout: {ext_proc.message_timeout_s:g} s is shorter than an ingress request may keep ext_proc "
            f"busy ({parts} = {needed:g} s), so a slow model or endpoint gets Envoy's 504 ext_proc_timeout instead of sidegate's "
            f"504 model_server_timeout / endpoint_timeout naming it: raise ext_proc.message_timeout to at least {needed:g}s, "
            "or remove it to have it derived from those deadlines"
        )
    return ext_proc, warnings


def _ingress_deadline(ms: ModelServer, targets: list[PromptTarget], endpoints: dict[str, Endpoint], *, guard: bool,
                      judge_s: float = 0.0) -> tuple[float, str]:
    """The longest one ingress request body may keep the ext_proc service busy, and what it is
    made of (each part named by its config key): the guard beside intent matching (one embedding,
    and a second one of the earlier user turns when the last alone matches nothing), then
    function_call, then the slowest endpoint a prompt target calls, plus a margin for ext_proc's
    own work. ``ext_proc.message_timeout`` must be longer, so that a slow model is answered with
    sidegate's 504 ``model_server_timeout`` naming it, not with Envoy's ``ext_proc_timeout``."""
    # counted whatever model_server.mode says: `sidegate up --model-server URL` may give a config
    # with mode none a model server, and without one those calls fail at once anyway
    parts: list[tuple[float, str]] = []
    first: list[tuple[float, str]] = []
    if guard:
        g = ms.timeout_for("prompt_guard")
        what = f"prompt_guard {g:g} s ({ms.timeout_key('prompt_guard')})"
        if judge_s:  # the cascade: the judge's call comes after the classifier's, on the guard's path
            what = f"({what} + judge {judge_s:g} s (prompt_guards.input_guards.jailbreak.judge.timeout))"
        first.append((g + judge_s, what))
    if any(not t.default for t in targets):
        embed = ms.timeout_for("prompt_embed")
        first.append((2 * embed, f"2 x prompt_embed {embed:g} s ({ms.timeout_key('prompt_embed')})"))
    if first:
        parts.append(max(first))
    if any(t.parameters for t in targets):
        fc = ms.timeout_for("function_call")
        parts.append((fc, f"function_call {fc:g} s ({ms.timeout_key('function_call')})"))
    called = [endpoints[t.endpoint.name] for t in targets if t.endpoint is not None and t.endpoint.name in endpoints]
    if called:
        slowest = max(called, key=lambda e: e.timeout_s)
        parts.append((slowest.timeout_s, f"endpoint {slowest.name} {slowest.timeout_s:g} s (endpoints.{slowest.name}.timeout)"))
    if not parts:
        return 0.0, "no model or endpoint call"
    parts.append((MESSAGE_TIMEOUT_MARGIN_S, f"{MESSAGE_TIMEOUT_MARGIN_S:g} s margin"))
    return sum(seconds for seconds, _ in parts), " + ".join(text for _, text in parts)


MODELS_DIR = REPO_ROOT / "triton_models"
# the `parameters` key each model reads its thread count from (model_server.models.<name>.threads)
THREADS_KEY = {"prompt_embed": "threads", "prompt_guard": "torch_threads", "function_call": "n_threads", "chat_llm": "n_threads"}
# the ensembles among the models and their steps, in order (triton_models/<ensemble>/config.pbtxt):
# prompt_guard = prompt_embed, then prompt_guard_head. Triton loads them (steps first), the client
# reloads the step whose stub died, and model_server.models.<ensemble> configures its last step
ENSEMBLE_STEPS = {"prompt_guard": ("prompt_embed", "prompt_guard_head")}
ENSEMBLE_HEADS = {ensemble: steps[-1] for ensemble, steps in ENSEMBLE_STEPS.items()}
_PARAMETER_KEY = re.compile(r'^\s*key:\s*"([^"]+)"', re.MULTILINE)


# the parameters each model reads as a number (its initialize(): int() or float()): a value that is
# none is refused at validate, naming its key, rather than failing the model's load in Triton
NUMBER_PARAMETERS: dict[str, dict[str, type]] = {
    "function_call": {"n_ctx": int, "kv_windows": int, "n_slots": int, "max_chars": int, "n_gpu_layers": int, "none_margin": float},
    "chat_llm": {"n_ctx": int, "max_tokens": int, "n_gpu_layers": int},
    "prompt_embed": {"max_tokens": int, "max_chars": int, "cache_size": int},
    "prompt_guard": {"threshold": float},
}


def _is_number(value: Any, kind: type) -> bool:
    """Whether ``value`` (YAML's, or a string) reads as ``kind`` (int or float), as the model reads it."""
    if isinstance(value, bool):
        return False
    try:
        kind(str(value).strip())
    except ValueError:
        return False
    return True


def _model_settings(name: str, settings: dict[str, Any], source: str) -> ModelSettings:
    """``model_server.models.<name>``; each ``parameters`` key must be one the model reads (a
    key of its ``config.pbtxt`` parameters, where each is documented): a typo would otherwise be
    rendered into the config and silently ignored."""
    raw = settings.get("parameters") or {}
    own = {"weights": "weights", THREADS_KEY[name]: "threads"}  # parameters that have a setting of their own
    folder = ENSEMBLE_HEADS.get(name, name)
    known = sorted(set(_PARAMETER_KEY.findall((MODELS_DIR / folder / "config.pbtxt").read_text())) - set(own))
    for key in raw:
        at = f"model_server.models.{name}.parameters.{key}"
        if key in own:
            raise ConfigError(source, at, f"set it as model_server.models.{name}.{own[key]}")
        if key not in known:
            raise ConfigError(source, at, f"{name} has no parameter {key!r} (its parameters: {', '.join(known)}; "
                                          f"each is described in triton_models/{folder}/config.pbtxt)")
        kind = NUMBER_PARAMETERS.get(name, {}).get(key)
        if kind is not None and not _is_number(raw[key], kind):
            raise ConfigError(source, at, f"must be {'a whole number' if kind is int else 'a number'}, not {raw[key]!r} "
                                          f"(triton_models/{folder}/config.pbtxt describes it)")
    parameters = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    own_settings = {k: v for k, v in settings.items() if k != "timeout"}
    timeout = parse_duration(settings["timeout"]) if "timeout" in settings else None
    return ModelSettings(**{**own_settings, "parameters": parameters, "timeout_s": timeout})


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (else a name to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _grpc_host_port(url: str) -> tuple[str, int]:
    """``grpc://host:port`` -> (host, port)."""
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    return host.strip("[]"), int(port)


def _model_server(ms: dict[str, Any], source: str) -> ModelServer:
    if ms.get("endpoint") and ms.get("endpoints"):
        raise ConfigError(source, "model_server.endpoints", "set endpoint (one Triton) or endpoints (several), not both")
    urls = tuple(ms.get("endpoints") or ([ms["endpoint"]] if ms.get("endpoint") else []))
    mode = ms.get("mode") or ("remote" if urls else "local-cpu")
    if mode == "remote" and not urls:
        raise ConfigError(source, "model_server.endpoint", "mode remote needs endpoint: grpc://HOST:PORT of your Triton (or endpoints: [...])")
    if mode != "remote" and urls:
        key = "endpoints" if ms.get("endpoints") else "endpoint"
        raise ConfigError(source, f"model_server.{key}", f"{key} is only used with mode: remote (mode is {mode})")
    if len(set(urls)) != len(urls):
        raise ConfigError(source, "model_server.endpoints", "lists the same Triton twice")
    replicas = int(ms.get("replicas", 1))
    taken = {_port(ms, f"model_server.{k}") + REPLICA_PORT_STEP * i for k in ("http_port", "grpc_port", "metrics_port")
             for i in range(replicas)}
    balancer_port = _port(ms, "model_server.balancer_port")
    if replicas > 1 and balancer_port in taken:
        raise ConfigError(source, "model_server.balancer_port", f"{balancer_port} is a port of a replica "
                                                                "(each takes http_port, grpc_port, metrics_port + 10 i): pick another")
    if replicas > 1 and mode not in ("local-cpu", "local-gpu"):
        raise ConfigError(source, "model_server.replicas", f"replicas are tritonserver processes sidegate starts (mode local-cpu or local-gpu); "
                                                           f"with mode {mode} list your Tritons in model_server.endpoints")
    models = {name: _model_settings(name, settings, source) for name, settings in (ms.get("models") or {}).items()}
    common = parse_duration(ms["timeout"]) if "timeout" in ms else None
    timeouts: dict[str, float] = {}
    for name, default in DEFAULT_MODEL_TIMEOUTS.items():
        own = models[name].timeout_s if name in models else None
        if own is not None:
            timeouts[name] = own
        elif common is None:
            timeouts[name] = default
        else:  # chat_llm streams a whole answer: the one-number form of the decision models does not cut it short
            timeouts[name] = max(common, default) if name == "chat_llm" else common
    return ModelServer(
        mode=mode,
        address="127.0.0.1",
        http_port=_port(ms, "model_server.http_port"),
        grpc_port=_port(ms, "model_server.grpc_port"),
        metrics_port=_port(ms, "model_server.metrics_port"),
        timeout_s=DEFAULT_MODEL_TIMEOUTS["prompt_embed"] if common is None else common,
        endpoint_url=urls[0] if len(urls) == 1 else None,
        endpoint_urls=urls,
        replicas=replicas,
        balancer_port=balancer_port,
        models=models,
        auto_mode=not ms.get("mode") and not ms.get("endpoint"),
        timeout_explicit=common is not None,
        timeouts=timeouts,
    )


def ext_proc_message_bytes(max_body_bytes: int) -> int:
    """The largest gRPC message Envoy and the ext_proc service may exchange for a listener whose
    buffer limit is ``max_body_bytes``. A STREAMED body is not cut at that limit: what Envoy held
    while the service answered the response headers goes out as one chunk, the limit plus the
    upstream reads that crossed it (9,437,106 bytes measured under the 8 MiB default, 78 bytes
    under the old bound of limit + 1 MiB: a 100 MB stream was reset when the service was slow to
    answer its headers). A chunk may come back larger (a translation, metadata added), hence twice
    the limit and room for the rest of the ProcessingRequest around it."""
    return 2 * (max_body_bytes + UPSTREAM_READ_BYTES) + 1024 * 1024
