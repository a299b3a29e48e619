"""Render Envoy's bootstrap (``envoy.yaml``) from a checked :class:`~ext_proc.config.Config`.

The bootstrap is built from the typed (betterproto2) classes of ``envoy-data-plane``, so a wrong
field name, a wrong type or an unknown enum value fails here, at render time, not when Envoy
starts. It is then turned into a snake_case dict (``google.protobuf.Any`` carries ``@type``) and
written as YAML.

Usage::

    from ext_proc.config import load_config
    from ext_proc.control.envoy_bootstrap import build_bootstrap, bootstrap_dict, write_bootstrap

    cfg = load_config("config/default.yaml")
    path = write_bootstrap(cfg, Path("run"))      # run/envoy.yaml
    # envoy -c run/envoy.yaml, with every cfg.secret_env() variable in Envoy's environment

What it contains (the names are the contract in ``/work/shared/DESIGN.md``):

* clusters ``sidegate_ext_proc`` (HTTP/2 to the ext_proc service), ``provider_<name>`` per LLM
  provider and ``endpoint_<name>`` per app endpoint, ``agent_<id>`` per agent (TLS with SNI and certificate checks
  against the system roots when the upstream is https);
* listeners ``ingress`` and ``egress`` (ext_proc then router), ``internal`` (router only) and one per agent listener, ``agent_<name>`` (ext_proc then router, routes to its agents only).
  Routing is on the ``x-sidegate-upstream`` request header (a cluster name) which the ext_proc
  service sets in its request-body reply with ``clear_route_cache`` (a client's own
  ``x-sidegate-upstream`` is dropped before routing); a request it sets on no route gets a
  ``503`` OpenAI-style error. Provider keys are injected per route as
  ``Authorization: Bearer %ENVIRONMENT(VAR)%`` after the client's own credentials are removed:
  the key itself never appears in the file, Envoy reads it from its environment;
* failover (``llm_providers[].fallbacks``): the provider's route goes to an aggregate cluster
  ``failover_<name>`` over its own cluster and its fallbacks' clusters, with a retry policy whose
  ``previous_priorities`` sends attempt *n* to the *n*-th cluster of the chain. Envoy applies
  the aggregate's upstream filters (not the member's) to every attempt, so a small Lua upstream
  filter there rewrites each attempt for the provider it goes to, found from
  ``x-envoy-attempt-count``: ``Authorization`` (Lua's ``os.getenv`` of the member's key
  variable: the file names the variable, never the key), Host, path prefix and the body's ``model`` (the ext_proc service puts ``model`` first in the body it forwards);
  Envoy adds ``x-envoy-attempt-count`` to the answer, from which the ext_proc service knows
  which provider answered;
* local replies that Envoy itself makes (upstream unreachable, upstream timeout, body over the
  limit, ext_proc service unreachable) are rewritten to OpenAI-style JSON errors; replies of the
  ext_proc service (immediate responses) keep their own body;
* a JSON access log line per request on stdout.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any as _AnyType
from urllib.parse import urlsplit

import betterproto2
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLog,
    AccessLogFilter,
    AndFilter,
    ExtensionFilter,
    ResponseFlagFilter,
)
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterCustomClusterType,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    ClusterLbPolicy,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutation as HeaderMutationRule
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpService,
    HttpUri,
    Node,
    Pipe,
    SocketAddress,
    SubstitutionFormatString,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    EndpointHealthCheckConfig,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryHostPredicate,
    RetryPolicyRetryPriority,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.clusters.aggregate.v3 import ClusterConfig as AggregateClusterConfig
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ExternalProcessorRouteCacheAction,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.http.upstream_codec.v3 import UpstreamCodec
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerTracing,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    HeaderMutation as EarlyHeaderMutation,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.retry.priority.previous_priorities.v3 import PreviousPrioritiesConfig
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatchAndSubstitute, RegexMatcher, StringMatcher
from envoy_data_plane.envoy.type.v3 import CodecClientType, Percent
from envoy_data_plane.google.protobuf import Any, Struct

from ext_proc.config import AZURE_INTERFACE, Agent, Config, LlmProvider, Upstream, ext_proc_message_bytes, is_ip
from ext_proc.config import Endpoint as EndpointCfg
from ext_proc.config import Listener as ListenerCfg
from ext_proc.names import (AGENT_LISTENER_PREFIX, ANTHROPIC_VERSION, ANTHROPIC_VERSION_HEADER, ERROR_HEADER, LISTENER_METADATA,
                             MESSAGES_PATH, PROVIDER_HINT_HEADER, UPSTREAM_HEADER)
from ext_proc.wire.anthropic import anthropic_error_type

__all__ = [
    "ACCESS_LOG_FIELDS",
    "EXT_PROC_CLUSTER",
    "OTLP_CLUSTER",
    "REMOVED_CLIENT_HEADERS",
    "RenderError",
    "bootstrap_dict",
    "bootstrap_yaml",
    "build_bootstrap",
    "ca_bundle",
    "write_bootstrap",
]

EXT_PROC_CLUSTER = "sidegate_ext_proc"
OTLP_CLUSTER = "sidegate_otlp"  # the OpenTelemetry collector (tracing.otlp_endpoint)
MODELS_CLUSTER = "sidegate_models"  # the Triton replicas (model_server.replicas / endpoints)
# a model call is retried once on another replica when its own never answered (gRPC UNAVAILABLE
# covers a Triton that is shutting down); an error a model returned is not retried
MODELS_RETRY_ON = "connect-failure,refused-stream,reset,unavailable"
ENVOY_SERVICE_NAME = "sidegate-envoy"
OTEL_TRACER = "envoy.tracers.opentelemetry"
# the client's own credentials and sidegate's routing headers never reach an upstream
REMOVED_CLIENT_HEADERS = ("authorization", "x-api-key", "api-key", UPSTREAM_HEADER, PROVIDER_HINT_HEADER)
RETRY_ON = "connect-failure,refused-stream,reset,5xx,retriable-status-codes"

HCM_NAME = "envoy.filters.network.http_connection_manager"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
ROUTER_FILTER = "envoy.filters.http.router"
EARLY_HEADER_MUTATION = "envoy.http.early_header_mutation.header_mutation"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Response flags of Envoy's own local replies (see "response flags" in Envoy's access log docs).
UNREACHABLE_FLAGS = ("UF", "URX", "UH", "UO", "UC", "UR", "DF", "NC")
TIMEOUT_FLAGS = ("UT", "SI")
# Envoy's response code details for ext_proc failures (measured on 1.40)
EXT_PROC_TIMEOUT_DETAILS = "ext_proc_error_per-message_timeout_exceeded"
EXT_PROC_ERROR_DETAILS = "ext_proc_error"

ACCESS_LOG_FIELDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "response_flags": "%RESPONSE_FLAGS%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


class RenderError(ValueError):
    """The config cannot be expressed as an Envoy bootstrap (e.g. a listener on a host name)."""


# --------------------------------------------------------------------------- small helpers


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def _socket_address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _listen_address(listener: ListenerCfg) -> Address:
    host = "127.0.0.1" if listener.address == "localhost" else listener.address
    if not is_ip(host):
        raise RenderError(
            f"listeners.{listener.name}.address: Envoy listens on an IP address, got {listener.address!r}"
        )
    return _socket_address(host, listener.port)


def _host_header(u: Upstream) -> str:
    """The Host an upstream expects: ``host``, plus ``:port`` when the port is not the scheme's default."""
    host = f"[{u.host}]" if ":" in u.host else u.host  # IPv6 literal
    return host if u.port == (443 if u.tls else 80) else f"{host}:{u.port}"


def _header(key: str, value: str, *, overwrite: bool = True) -> HeaderValueOption:
    action = (
        HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        if overwrite
        else HeaderValueOptionHeaderAppendAction.APPEND_IF_EXISTS_OR_ADD
    )
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append_action=action)


def _error_json(message: str, type_: str, code: str) -> dict[str, _AnyType]:
    """The OpenAI error shape used everywhere in sidegate (see ``ext_proc.errors``)."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json_body(body: dict[str, _AnyType]) -> SubstitutionFormatString:
    return SubstitutionFormatString(json_format=Struct.from_dict(body), content_type="application/json")


# --------------------------------------------------------------------------- clusters

# where distributions keep the system's CA bundle (PEM), most common first
_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, CentOS
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",  # macOS, FreeBSD, Alpine
    "/usr/local/etc/openssl/cert.pem",
)


def ca_bundle() -> Path:
    """The PEM file of trusted roots Envoy checks https upstreams against.

    ``SIDEGATE_CA_BUNDLE`` or ``SSL_CERT_FILE`` when set, else the system bundle."""
    for var in ("SIDEGATE_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value:
            if not Path(value).is_file():
                raise RenderError(f"${var} names {value!r}, which is not a file (expected a PEM CA bundle)")
            return Path(value)
    candidates = [ssl.get_default_verify_paths().cafile, ssl.get_default_verify_paths().openssl_cafile, *_CA_BUNDLES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RenderError(
        "an https upstream needs the system's CA bundle to verify its certificate, and none was found "
        f"(looked in {', '.join(_CA_BUNDLES)}): install ca-certificates or set SIDEGATE_CA_BUNDLE=/path/to/roots.pem"
    )



def _tls_socket(host: str) -> TransportSocket:
    """TLS to ``host``: SNI, and a certificate for ``host`` that chains to the system's roots
    (Envoy 1.40 refuses SAN checks without ``trusted_ca``; ``system_root_certs`` is not implemented)."""
    ip = is_ip(host)
    san_type = SubjectAltNameMatcherSanType.IP_ADDRESS if ip else SubjectAltNameMatcherSanType.DNS
    context = UpstreamTlsContext(
        sni="" if ip else host,  # SNI may not be an IP literal
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=str(ca_bundle())),
                match_typed_subject_alt_names=[SubjectAltNameMatcher(san_type=san_type, matcher=StringMatcher(exact=host))],
            )
        ),
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def _cluster(
    name: str,
    host: str,
    port: int,
    *,
    connect_timeout_s: float,
    tls: bool = False,
    http2: bool = False,
    dns: ClusterDiscoveryType = ClusterDiscoveryType.LOGICAL_DNS,
) -> Cluster:
    # every field goes through the constructor: pydantic checks them there, not on assignment
    extra: dict[str, _AnyType] = {}
    if host.startswith("unix:"):
        address = Address(pipe=Pipe(path=host.removeprefix("unix:")))
        kind = ClusterDiscoveryType.STATIC
    else:
        address = _socket_address(host, port)
        kind = ClusterDiscoveryType.STATIC if is_ip(host) else dns
    if kind != ClusterDiscoveryType.STATIC:
        extra["dns_lookup_family"] = ClusterDnsLookupFamily.V4_PREFERRED
    if http2:
        h2 = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
        )
        extra["typed_extension_protocol_options"] = {HTTP_PROTOCOL_OPTIONS: Any.pack(h2)}
    if tls:
        extra["transport_socket"] = _tls_socket(host)
    return Cluster(
        name=name,
        type=kind,
        connect_timeout=_seconds(connect_timeout_s),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address))])],
        ),
        **extra,
    )


def _clusters(cfg: Config) -> list[Cluster]:
    clusters = [
        _cluster(
            EXT_PROC_CLUSTER,
            cfg.ext_proc.address,
            cfg.ext_proc.port,
            connect_timeout_s=1.0,
            http2=True,
            dns=ClusterDiscoveryType.STRICT_DNS,
        )
        if cfg.ext_proc.workers == 1
        else _ext_proc_workers_cluster(cfg)
    ]
    for p in cfg.llm_providers:
        u = p.upstream
        clusters.append(_cluster(p.cluster, u.host, u.port, connect_timeout_s=u.connect_timeout_s, tls=u.tls))
    clusters += [_failover_cluster(cfg, p) for p in cfg.llm_providers if p.fallbacks]
    for e in cfg.endpoints.values():
        u = e.upstream
        clusters.append(_cluster(e.cluster, u.host, u.port, connect_timeout_s=u.connect_timeout_s, tls=u.tls))
    for a in cfg.agents.values():
        u = a.upstream
        clusters.append(_cluster(a.cluster, u.host, u.port, connect_timeout_s=u.connect_timeout_s, tls=u.tls))
    if cfg.otlp_endpoint:
        scheme, host, port, _ = _otlp_target(cfg.otlp_endpoint)
        clusters.append(_cluster(OTLP_CLUSTER, host, port, connect_timeout_s=1.0, tls=scheme == "https", http2=scheme == "grpc"))
    if _balanced_models(cfg):
        clusters.append(_models_cluster(cfg))
    return clusters


def _ext_proc_workers_cluster(cfg: Config) -> Cluster:
    """``ext_proc.workers`` > 1: the worker processes behind one cluster, worker i on
    ``ext_proc.port + i``. Least request (a worker busy with a slow request gets fewer new
    streams); an HTTP health check of each worker's ``/healthz`` on ``http_port + i`` every
    second (a worker that is down, stopped or draining leaves the rotation within ~2 s, also with
    no traffic); outlier detection for failing streams (never more than half of them). A stream
    already on a worker that dies fails as ``failure_mode_allow`` says, and so may a new one
    sent to it before its health checks fail (~1-2 s; the supervisor restarts it in about as
    long); the others go on."""
    e = cfg.ext_proc
    kind = ClusterDiscoveryType.STATIC if is_ip(e.address) else ClusterDiscoveryType.STRICT_DNS
    extra: dict[str, _AnyType] = {} if kind == ClusterDiscoveryType.STATIC else {"dns_lookup_family": ClusterDnsLookupFamily.V4_PREFERRED}
    h2 = HttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions()))
    endpoints = []
    for i in range(e.workers):
        grpc_port, http_port = e.worker_ports(i)
        endpoints.append(LbEndpoint(endpoint=Endpoint(address=_socket_address(e.address, grpc_port),
                                                      health_check_config=EndpointHealthCheckConfig(port_value=http_port))))
    return Cluster(
        name=EXT_PROC_CLUSTER,
        type=kind,
        connect_timeout=_seconds(1.0),
        lb_policy=ClusterLbPolicy.LEAST_REQUEST,
        load_assignment=ClusterLoadAssignment(cluster_name=EXT_PROC_CLUSTER, endpoints=[LocalityLbEndpoints(lb_endpoints=endpoints)]),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: Any.pack(h2)},
        health_checks=[HealthCheck(
            timeout=_seconds(1.0), interval=_seconds(1.0), no_traffic_interval=_seconds(1.0), unhealthy_threshold=2, healthy_threshold=1,
            http_health_check=HealthCheckHttpHealthCheck(path="/healthz", codec_client_type=CodecClientType.HTTP1),
        )],
        # no retry policy: Envoy 1.40 retried none of these streams with GrpcService.retry_policy
        # (a refused connection to a dead worker failed the request all the same), and with
        # retry_on: unavailable it failed the live worker's streams too when one was SIGKILLed
        outlier_detection=OutlierDetection(
            consecutive_gateway_failure=3, enforcing_consecutive_gateway_failure=100,
            interval=_seconds(1.0), base_ejection_time=_seconds(5.0), max_ejection_percent=50,
        ),
        **extra,
    )


# --------------------------------------------------------------------------- Triton replicas


def _balanced_models(cfg: Config) -> bool:
    from ext_proc.control.model_repo import needed_models

    return cfg.model_server.balanced and bool(needed_models(cfg))


def _models_cluster(cfg: Config) -> Cluster:
    """The Triton replicas behind one cluster: HTTP/2 (gRPC), least request (a replica busy with
    a function call gets the next embedding less often), active gRPC health checks (Triton
    serves grpc.health.v1: a replica that is down or starting leaves the rotation within
    seconds) and outlier detection (a replica whose model calls fail, e.g. a dead python stub
    answering INTERNAL, is ejected for a while; never more than half of them)."""
    targets = cfg.model_server.replica_targets
    kind = ClusterDiscoveryType.STATIC if all(is_ip(h) for h, _ in targets) else ClusterDiscoveryType.STRICT_DNS
    extra: dict[str, _AnyType] = {} if kind == ClusterDiscoveryType.STATIC else {"dns_lookup_family": ClusterDnsLookupFamily.V4_PREFERRED}
    h2 = HttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions()))
    return Cluster(
        name=MODELS_CLUSTER,
        type=kind,
        connect_timeout=_seconds(1.0),
        lb_policy=ClusterLbPolicy.LEAST_REQUEST,
        load_assignment=ClusterLoadAssignment(
            cluster_name=MODELS_CLUSTER,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_socket_address(h, p))) for h, p in targets])],
        ),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: Any.pack(h2)},
        health_checks=[HealthCheck(
            # every second, also while ext_proc sends nothing (Envoy's no_traffic_interval is 60 s)
            timeout=_seconds(1.0), interval=_seconds(1.0), no_traffic_interval=_seconds(1.0), unhealthy_threshold=2, healthy_threshold=1,
            grpc_health_check=HealthCheckGrpcHealthCheck(),
        )],
        # (not consecutive_5xx: betterproto2 writes that field as "consecutive_5_xx", which Envoy refuses)
        outlier_detection=OutlierDetection(
            consecutive_gateway_failure=3, enforcing_consecutive_gateway_failure=100,
            failure_percentage_threshold=50, enforcing_failure_percentage=100, failure_percentage_minimum_hosts=2,
            failure_percentage_request_volume=20, interval=_seconds(2.0), base_ejection_time=_seconds(10.0), max_ejection_percent=50,
        ),
        **extra,
    )


def _models_listener(cfg: Config) -> Listener:
    """127.0.0.1:``model_server.balancer_port``: what the ext_proc service dials instead of one
    Triton. No overall timeout (the client sets each call's deadline); a call whose replica
    never answered is retried once on another one."""
    route = Route(
        name=MODELS_CLUSTER,
        match=RouteMatch(prefix="/"),
        route=RouteAction(
            cluster=MODELS_CLUSTER,
            timeout=_seconds(0),
            retry_policy=RetryPolicy(
                retry_on=MODELS_RETRY_ON,
                num_retries=1,
                retry_host_predicate=[RetryPolicyRetryHostPredicate(
                    name="envoy.retry_host_predicates.previous_hosts", typed_config=Any.pack(PreviousHostsPredicate()))],
                host_selection_retry_max_attempts=3,
            ),
        ),
    )
    hcm = HttpConnectionManager(
        stat_prefix="models",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(name="models", virtual_hosts=[VirtualHost(name="models", domains=["*"], routes=[route])]),
        http_filters=[_router_filter()],
        stream_idle_timeout=_seconds(0),  # a function call may think for a while before its first byte
    )
    return Listener(
        name="models",
        address=_socket_address("127.0.0.1", cfg.model_server.balancer_port),
        filter_chains=[FilterChain(filters=[Filter(name=HCM_NAME, typed_config=Any.pack(hcm))])],
    )


# --------------------------------------------------------------------------- tracing


def _otlp_target(url: str) -> tuple[str, str, int, str]:
    """``grpc://host:port`` / ``http(s)://host:port[/path]`` → (scheme, host, port, OTLP/HTTP path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "http", "https") or not parts.hostname:
        raise RenderError(f"tracing.otlp_endpoint: expected grpc://host:port or http(s)://host:port, got {url!r}")
    port = parts.port or {"grpc": 4317, "http": 4318, "https": 443}[parts.scheme]
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/traces"):
        path += "/v1/traces"
    return parts.scheme, parts.hostname, port, path


def _tracing(cfg: Config) -> HttpConnectionManagerTracing | None:
    """Envoy's OpenTelemetry tracer, exporting to ``tracing.otlp_endpoint`` (None: no tracing at all)."""
    if not cfg.otlp_endpoint:
        return None
    scheme, host, port, path = _otlp_target(cfg.otlp_endpoint)
    if scheme == "grpc":
        otel = OpenTelemetryConfig(
            grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=OTLP_CLUSTER), timeout=_seconds(5.0)),
            service_name=ENVOY_SERVICE_NAME,
        )
    else:
        otel = OpenTelemetryConfig(
            http_service=HttpService(
                http_uri=HttpUri(uri=f"{scheme}://{host}:{port}{path}", cluster=OTLP_CLUSTER, timeout=_seconds(5.0))
            ),
            service_name=ENVOY_SERVICE_NAME,
        )
    return HttpConnectionManagerTracing(
        random_sampling=Percent(value=min(max(cfg.tracing_sampling, 0.0), 100.0)),
        provider=TracingHttp(name=OTEL_TRACER, typed_config=Any.pack(otel)),
    )


# --------------------------------------------------------------------------- routes


def _upstream_match(cluster: str) -> RouteMatch:
    return RouteMatch(prefix="/", headers=[HeaderMatcher(name=UPSTREAM_HEADER, string_match=StringMatcher(exact=cluster))])


def _lua_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string of printable text is a Lua string literal


_FAILOVER_LUA = """\
-- sidegate failover for provider {primary}: attempt n goes to chain[(n - 1) % #chain + 1]
local chain = {{
{members}
}}

function envoy_on_request(h)
  local headers = h:headers()
  local attempt = tonumber(headers:get("x-envoy-attempt-count") or "1") or 1
  local i = (attempt - 1) % #chain + 1
  local p = chain[i]
  headers:remove("x-envoy-attempt-count")
  local key = p.key_env and os.getenv(p.key_env)
  if key then headers:replace("authorization", "Bearer " .. key) else headers:remove("authorization") end
  headers:replace(":authority", p.authority)
  if p.prefix ~= "/v1/" then
    local path = headers:get(":path") or ""
    if string.sub(path, 1, 4) == "/v1/" then headers:replace(":path", p.prefix .. string.sub(path, 5)) end
  end
  if p.model then
    local body = h:body()
    if body then
      local raw = body:getBytes(0, body:length())
      local s, e = string.find(raw, '^{{"model": "[^"]*"')
      if s then
        local out = '{{"model": ' .. p.model .. string.sub(raw, e + 1)
        body:setBytes(out)
        headers:replace("content-length", tostring(#out))
      end
    end
  end
end
"""


def _failover_chain(cfg: Config, p: LlmProvider) -> list[LlmProvider]:
    return [q for name in p.chain if (q := cfg.provider(name)) is not None]


def _failover_lua(cfg: Config, p: LlmProvider) -> str:
    members = []
    for m in _failover_chain(cfg, p):
        prefix = (m.upstream.base_path.rstrip("/") or "/v1") + "/"
        model = _lua_str(_lua_str(m.model)) if m.model else "nil"  # the JSON text of the model name, as a Lua string
        key_env = _lua_str(m.access_key_env) if m.access_key_env else "nil"  # the variable's name, never the key
        members.append(f"  {{name = {_lua_str(m.name)}, authority = {_lua_str(_host_header(m.upstream))}, "
                       f"prefix = {_lua_str(prefix)}, model = {model}, key_env = {key_env}}},")
    return _FAILOVER_LUA.format(primary=p.name, members="\n".join(members))


def _failover_cluster(cfg: Config, p: LlmProvider) -> Cluster:
    lua = Lua(default_source_code=DataSource(inline_string=_failover_lua(cfg, p)))
    options = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions()),
        http_filters=[
            HttpFilter(name="envoy.filters.http.lua", typed_config=Any.pack(lua)),
            HttpFilter(name="envoy.filters.http.upstream_codec", typed_config=Any.pack(UpstreamCodec())),
        ],
    )
    aggregate = AggregateClusterConfig(clusters=[m.cluster for m in _failover_chain(cfg, p)])
    return Cluster(
        name=p.route_cluster,
        connect_timeout=_seconds(max(m.upstream.connect_timeout_s for m in _failover_chain(cfg, p))),
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        cluster_type=ClusterCustomClusterType(name="envoy.clusters.aggregate", typed_config=Any.pack(aggregate)),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: Any.pack(options)},
    )


def _provider_route(p: LlmProvider, listener: ListenerCfg) -> Route:
    action: dict[str, _AnyType] = {}
    headers_to_add = []
    if p.fallbacks:
        # key, Host, path prefix and model are set per attempt by the failover cluster's Lua filter;
        # previous_priorities sends attempt n to the n-th cluster of the chain
        priority = PreviousPrioritiesConfig(update_frequency=1)
        action["retry_policy"] = RetryPolicy(
            retry_on=RETRY_ON,
            num_retries=max(p.retries, len(p.chain) - 1),
            retriable_status_codes=[429],
            retry_priority=RetryPolicyRetryPriority(name="envoy.retry_priorities.previous_priorities", typed_config=Any.pack(priority)),
        )
    else:
        u = p.upstream
        action["host_rewrite_literal"] = p.host_header  # http_host, else the upstream's (what a SigV4 signature signs)
        if p.interface == AZURE_INTERFACE:  # the deployment is in the path, the API version in the query
            action["regex_rewrite"] = RegexMatchAndSubstitute(
                pattern=RegexMatcher(regex="^/v1/chat/completions$"),
                substitution=f"{u.base_path.rstrip('/')}/openai/deployments/{p.model}/chat/completions?api-version={p.api_version}",
            )
        elif u.base_path and u.base_path != "/v1" and p.wire != "bedrock":  # e.g. groq (Bedrock: ext_proc writes the whole path): /v1/chat/completions -> /openai/v1/chat/completions
            action["regex_rewrite"] = RegexMatchAndSubstitute(
                pattern=RegexMatcher(regex="^/v1/"), substitution=u.base_path.rstrip("/") + "/"
            )
        if p.retries > 0:
            action["retry_policy"] = RetryPolicy(retry_on=RETRY_ON, num_retries=p.retries, retriable_status_codes=[429])
        if p.access_key_env and not p.passthrough_auth:
            # Envoy fills this in from its own environment when the request goes out: the file never
            # holds the key. Envoy removes request_headers_to_remove first, then adds these.
            if p.wire == "anthropic":
                headers_to_add.append(_header("x-api-key", f"%ENVIRONMENT({p.access_key_env})%"))
            elif p.interface == AZURE_INTERFACE:
                headers_to_add.append(_header("api-key", f"%ENVIRONMENT({p.access_key_env})%"))
            else:
                headers_to_add.append(_header("authorization", f"Bearer %ENVIRONMENT({p.access_key_env})%"))
        if p.wire == "anthropic":  # required by the Messages API; an Anthropic client's own value is kept
            headers_to_add.append(HeaderValueOption(header=HeaderValue(key=ANTHROPIC_VERSION_HEADER, value=ANTHROPIC_VERSION),
                                                    append_action=HeaderValueOptionHeaderAppendAction.ADD_IF_ABSENT))
    headers_to_add += [_header(k, v) for k, v in p.headers]  # Arch's provider headers ($VAR: %ENVIRONMENT(VAR)%)
    removed = list(REMOVED_CLIENT_HEADERS)
    if p.passthrough_auth or p.aws is not None:  # the client's key, or the SigV4 signature, which ext_proc has set
        removed.remove(p.key_header)
    return Route(
        name=p.cluster,
        match=_upstream_match(p.cluster),
        route=RouteAction(
            cluster=p.route_cluster,
            timeout=_seconds(0),  # no overall limit: an LLM stream may run for minutes...
            idle_timeout=_seconds(listener.timeout_s),  # ...but the upstream may not go silent longer
            **action,
        ),
        request_headers_to_remove=removed,
        request_headers_to_add=headers_to_add,
    )


def _endpoint_route(e: EndpointCfg) -> Route:
    """An app endpoint: the ext_proc service calls it through the internal listener with the
    endpoint's own path; Envoy prepends the endpoint URL's base path (if any)."""
    u = e.upstream
    action: dict[str, _AnyType] = {}
    if u.base_path and u.base_path != "/":
        action["regex_rewrite"] = RegexMatchAndSubstitute(
            pattern=RegexMatcher(regex="^/"), substitution=u.base_path.rstrip("/") + "/"
        )
    return Route(
        name=e.cluster,
        match=_upstream_match(e.cluster),
        route=RouteAction(
            cluster=e.cluster,
            timeout=_seconds(e.timeout_s),
            host_rewrite_literal=e.http_host or _host_header(u),
            **action,
        ),
        request_headers_to_remove=[UPSTREAM_HEADER],
    )


def _agent_route(a: Agent, listener: ListenerCfg) -> Route:
    """An agent of an agent listener: the request as the client sent it, to the agent's url (its
    base path, if any, before /v1/chat/completions); a stream may run long, but not go silent."""
    u = a.upstream
    action: dict[str, _AnyType] = {}
    if u.base_path and u.base_path != "/":
        action["regex_rewrite"] = RegexMatchAndSubstitute(pattern=RegexMatcher(regex="^/"), substitution=u.base_path.rstrip("/") + "/")
    return Route(
        name=a.cluster,
        match=_upstream_match(a.cluster),
        route=RouteAction(cluster=a.cluster, timeout=_seconds(0), idle_timeout=_seconds(listener.timeout_s),
                          host_rewrite_literal=_host_header(u), **action),
        request_headers_to_remove=[UPSTREAM_HEADER],
    )


NO_UPSTREAM_BODY = _error_json(
    "sidegate chose no upstream for this request (no x-sidegate-upstream route matched): "
    "check that the ext_proc service is running (sidegate status) and that the config names a provider",
    "server_error",
    "no_upstream",
)


def _no_upstream_route() -> Route:
    return Route(
        name="no_upstream",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(
            status=503, body=DataSource(inline_string=json.dumps(NO_UPSTREAM_BODY))
        ),
        response_headers_to_add=[_header("content-type", "application/json"), _header(ERROR_HEADER, "no_upstream")],
    )


def _route_config(name: str, routes: list[Route]) -> RouteConfiguration:
    # failover's Lua filter tells the attempts apart by x-envoy-attempt-count (and removes it)
    failover = any(r.route is not None and r.route.retry_policy is not None and r.route.retry_policy.retry_priority is not None
                   for r in routes)
    return RouteConfiguration(
        name=name,
        virtual_hosts=[VirtualHost(name=name, domains=["*"], routes=[*routes, _no_upstream_route()],
                                   include_request_attempt_count=failover, include_attempt_count_in_response=failover)],
    )


# --------------------------------------------------------------------------- HCM pieces


def _access_log(listener_name: str) -> list[AccessLog]:
    fmt = {"listener": listener_name, **ACCESS_LOG_FIELDS}
    stdout = StdoutAccessLog(log_format=SubstitutionFormatString(json_format=Struct.from_dict(fmt)))
    return [AccessLog(name="envoy.access_loggers.stdout", typed_config=Any.pack(stdout))]


def _flags_filter(flags: tuple[str, ...]) -> AccessLogFilter:
    return AccessLogFilter(response_flag_filter=ResponseFlagFilter(flags=list(flags)))


def _cel_filter(expression: str) -> AccessLogFilter:
    """Matches a local reply with a CEL expression (e.g. on Envoy's response code details)."""
    return AccessLogFilter(
        extension_filter=ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=Any.pack(ExpressionFilter(expression=expression)),
        )
    )


# A request on Anthropic's path that ext_proc has not forwarded yet (no cluster chosen: until
# ext_proc names one, the request matches the no_upstream route, which has none): its path is
# still the client's, which ext_proc rewrites when it forwards to a provider of the other API.
# Envoy's errors before that point (body too large, ext_proc down or silent) are answered in
# Anthropic's shape there. After it, ext_proc itself puts Envoy's replies (provider down or
# silent) in the client's shape; the path no longer tells the client's API, so an ext_proc that
# is silent on the answer stays OpenAI's. (x-sidegate-upstream cannot tell: the route removes it
# from the request's headers when it forwards, and the reply is built from those.) Measured on 1.40.
_ANTHROPIC_CLIENT = f'request.path.startsWith("{MESSAGES_PATH}") && !has(xds.cluster_name)'


def _mappers(flt: AccessLogFilter, status: int, message: str, type_: str, code: str, *,
             anthropic: bool) -> list[ResponseMapper]:
    """One of Envoy's errors as sidegate's error (status, ``x-sidegate-error: code``, OpenAI's
    JSON), preceded when ``anthropic`` by its variant in Anthropic's JSON for Anthropic's clients
    (the first mapper that matches wins)."""
    headers = [_header(ERROR_HEADER, code)]
    mappers = [ResponseMapper(filter=flt, status_code=status, headers_to_add=headers,
                              body_format_override=_json_body(_error_json(message, type_, code)))]
    if anthropic:
        body = {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
        mappers.insert(0, ResponseMapper(
            filter=AccessLogFilter(and_filter=AndFilter(filters=[_cel_filter(_ANTHROPIC_CLIENT), flt])),
            status_code=status, headers_to_add=headers, body_format_override=_json_body(body)))
    return mappers


def _upstream_mappers(waited: str, reached: str, flt: AccessLogFilter | None = None) -> list[ResponseMapper]:
    """Envoy's 504 (route timeout UT, or silent past the route's idle_timeout SI) and 502
    (connection refused or reset, no healthy host, DNS failure, retries exhausted) as
    "timed out waiting for ``waited``" and "could not reach ``reached``", ``flt`` narrowing which
    requests they are for."""
    def both(flags: AccessLogFilter) -> AccessLogFilter:
        return flags if flt is None else AccessLogFilter(and_filter=AndFilter(filters=[flt, flags]))

    return [
        *_mappers(both(_flags_filter(TIMEOUT_FLAGS)), 504, f"sidegate timed out waiting for {waited} (%LOCAL_REPLY_BODY%)",
                  "upstream_error", "upstream_timeout", anthropic=False),
        *_mappers(both(_flags_filter(UNREACHABLE_FLAGS)), 502, f"sidegate could not reach {reached} (%LOCAL_REPLY_BODY%)",
                  "upstream_error", "upstream_unavailable", anthropic=False),
    ]


def _local_reply_config(listener: ListenerCfg, *, ext_proc: bool, providers: Sequence[LlmProvider] = ()) -> LocalReplyConfig:
    """Envoy's own error replies as sidegate's errors: OpenAI-style JSON, Anthropic's on its path
    before ext_proc has forwarded the request (listeners with ext_proc: the internal listener's
    caller is ext_proc, which reads OpenAI's shape).

    Only mappers with filters: the ext_proc service's immediate responses are local replies
    too and must keep their body untouched, so there is no catch-all ``body_format``. What
    each filter matches was measured on Envoy 1.40 (see ``envoy/README.md``)."""
    # the listener's buffer limit (per_connection_buffer_limit_bytes) hit while buffering
    mappers = _mappers(
        _cel_filter('response.code_details == "request_payload_too_large"'), 413,
        f"the request body is larger than this listener's limit of {listener.max_body_bytes} bytes "
        f"(listeners.{listener.name}.max_body_bytes)",
        "invalid_request_error", "request_too_large", anthropic=ext_proc)
    # a BUFFERED (non-streaming) upstream response over the same limit: Envoy answers 500
    mappers += _mappers(
        _cel_filter('response.code_details == "response_payload_too_large"'), 502,
        f"the response of the upstream %UPSTREAM_CLUSTER% is larger than this listener's limit of "
        f"{listener.max_body_bytes} bytes (listeners.{listener.name}.max_body_bytes); "
        "ask for a streamed response or raise the limit",
        "upstream_error", "response_too_large", anthropic=False)
    if ext_proc:
        # no reply from the ext_proc service within message_timeout: 504, no response flag
        mappers += _mappers(
            _cel_filter(f'response.code_details == "{EXT_PROC_TIMEOUT_DETAILS}"'), 504,
            "the sidegate ext_proc service did not answer in time (ext_proc.message_timeout); "
            "check it with `sidegate status` and `sidegate logs ext_proc`",
            "server_error", "ext_proc_timeout", anthropic=True)
        # the ext_proc service unreachable or failing (failure_mode_allow false): Envoy
        # answers 500 with no response flag and details ext_proc_error_gRPC_error_<status>{...}
        mappers += _mappers(
            _cel_filter(f'response.code_details.startsWith("{EXT_PROC_ERROR_DETAILS}")'), 503,
            "the sidegate ext_proc service is unreachable or failed, so the request was not forwarded: "
            "check it with `sidegate status` (%RESPONSE_CODE_DETAILS%)",
            "server_error", "ext_proc_unavailable", anthropic=True)
    # a provider with fallbacks: Envoy names the failover cluster (failover_<name>), which is no
    # provider; say which providers were tried
    for p in providers:
        if p.fallbacks:
            tried = ", ".join(repr(name) for name in p.fallbacks)
            mappers += _upstream_mappers(f"provider {p.name!r} or its fallbacks {tried}", f"provider {p.name!r} nor its fallbacks {tried}",
                                         _cel_filter(f"xds.cluster_name == {json.dumps(p.route_cluster)}"))
    mappers += _upstream_mappers("the upstream %UPSTREAM_CLUSTER%", "the upstream %UPSTREAM_CLUSTER%")
    return LocalReplyConfig(mappers=mappers)


def _ext_proc_filter(cfg: Config, listener: ListenerCfg, stat_prefix: str, metadata: str | None = None) -> HttpFilter:
    """``metadata``: what the filter tells the service as LISTENER_METADATA (default: ``stat_prefix``)."""
    # ext_proc.message_timeout, or when not set derived from the model and endpoint deadlines
    # (config._ingress_deadline), so a slow model is our 504 model_server_timeout, not ext_proc_timeout
    timeout = _seconds(cfg.ext_proc.message_timeout_s)
    ext_proc = ExternalProcessor(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(
                cluster_name=EXT_PROC_CLUSTER,
                max_receive_message_length=ext_proc_message_bytes(listener.max_body_bytes),
            ),
            timeout=timeout,
            initial_metadata=[HeaderValue(key=LISTENER_METADATA, value=metadata or stat_prefix)],
        ),
        failure_mode_allow=cfg.ext_proc.failure_mode_allow,
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingModeHeaderSendMode.SEND,
            response_header_mode=ProcessingModeHeaderSendMode.SEND,
            request_body_mode=ProcessingModeBodySendMode.BUFFERED,
            response_body_mode=ProcessingModeBodySendMode.NONE,
            request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
            response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
        ),
        message_timeout=timeout,
        max_message_timeout=timeout,
        allow_mode_override=True,
        # routing is decided in the request-body reply: clear_route_cache must be honoured
        route_cache_action=ExternalProcessorRouteCacheAction.DEFAULT,
        stat_prefix=stat_prefix,
    )
    return HttpFilter(name=EXT_PROC_FILTER, typed_config=Any.pack(ext_proc))


def _strip_client_routing() -> TypedExtensionConfig:
    """Drop a client's own ``x-sidegate-upstream`` before the route is chosen: only the ext_proc
    service picks the upstream. (Without this a client could name a provider itself, and get its
    key injected past the guardrails: Envoy picks the route before the first HTTP filter runs,
    keeps it when the service's reply has no header mutation, and uses it when the service is
    down with failure_mode_allow. Measured on 1.40; an HTTP header_mutation filter is too late.)"""
    strip = EarlyHeaderMutation(mutations=[HeaderMutationRule(remove=UPSTREAM_HEADER)])
    return TypedExtensionConfig(name=EARLY_HEADER_MUTATION, typed_config=Any.pack(strip))


def _router_filter() -> HttpFilter:
    return HttpFilter(name=ROUTER_FILTER, typed_config=Any.pack(Router()))


def _listener(
    name: str, listener: ListenerCfg, routes: list[Route], *, ext_proc_filter: HttpFilter | None, tracing: HttpConnectionManagerTracing | None = None,
    providers: Sequence[LlmProvider] = (),
) -> Listener:
    """``providers``: those the listener routes to (their failover chains' errors name them)."""
    # internal: no ext_proc; the caller (the ext_proc service itself) names the upstream
    http_filters = [ext_proc_filter, _router_filter()] if ext_proc_filter else [_router_filter()]
    early = [_strip_client_routing()] if ext_proc_filter else []
    if tracing is not None:  # only with tracing.otlp_endpoint: without it Envoy traces nothing
        extra_hcm: dict[str, _AnyType] = {"tracing": tracing}
    else:
        extra_hcm = {}
    hcm = HttpConnectionManager(
        **extra_hcm,
        stat_prefix=name,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        generate_request_id=True,
        route_config=_route_config(name, routes),
        http_filters=http_filters,
        local_reply_config=_local_reply_config(listener, ext_proc=ext_proc_filter is not None, providers=providers),
        early_header_mutation_extensions=early,
        access_log=_access_log(name),
    )
    return Listener(
        name=name,
        address=_listen_address(listener),
        per_connection_buffer_limit_bytes=listener.max_body_bytes,
        filter_chains=[FilterChain(filters=[Filter(name=HCM_NAME, typed_config=Any.pack(hcm))])],
    )


# --------------------------------------------------------------------------- public API


def build_bootstrap(cfg: Config) -> Bootstrap:
    """The typed Envoy bootstrap for ``cfg`` (raises :class:`RenderError` on what Envoy cannot do)."""
    listeners = []
    tracing = _tracing(cfg)
    for name, lcfg in (("ingress", cfg.ingress), ("egress", cfg.egress)):
        routes = [_provider_route(p, lcfg) for p in cfg.llm_providers]
        listeners.append(_listener(name, lcfg, routes, ext_proc_filter=_ext_proc_filter(cfg, lcfg, name), tracing=tracing,
                                   providers=cfg.llm_providers))
    internal_routes = [_endpoint_route(e) for e in cfg.endpoints.values()]
    internal_routes += [_provider_route(p, cfg.internal) for p in cfg.llm_providers]
    listeners.append(_listener("internal", cfg.internal, internal_routes, ext_proc_filter=None, tracing=tracing, providers=cfg.llm_providers))
    for al in cfg.agent_listeners:  # plano's agent listeners (issue 19): routes to their own agents only
        lcfg, stat = al.listener, f"agent_{al.listener.name}"
        routes = [_agent_route(cfg.agents[r.id], lcfg) for r in al.agents]
        listeners.append(_listener(stat, lcfg, routes, tracing=tracing,
                                   ext_proc_filter=_ext_proc_filter(cfg, lcfg, stat, AGENT_LISTENER_PREFIX + lcfg.name)))
    if _balanced_models(cfg):
        listeners.append(_models_listener(cfg))

    admin_host = "127.0.0.1" if cfg.admin_address == "localhost" else cfg.admin_address
    if not is_ip(admin_host):
        raise RenderError(f"listeners.admin.address: Envoy listens on an IP address, got {cfg.admin_address!r}")
    return Bootstrap(
        node=Node(id="sidegate", cluster="sidegate"),
        admin=Admin(address=_socket_address(admin_host, cfg.admin_port)),
        static_resources=BootstrapStaticResources(listeners=listeners, clusters=_clusters(cfg)),
    )


def bootstrap_dict(cfg: Config) -> dict[str, _AnyType]:
    """The bootstrap as a snake_case, JSON-able dict (``@type`` marks each ``Any``)."""
    return build_bootstrap(cfg).to_dict(casing=betterproto2.Casing.SNAKE)


def bootstrap_yaml(cfg: Config) -> str:
    header = (
        f"# Envoy bootstrap rendered by sidegate from {cfg.source}. Do not edit: re-render with\n"
        f"#   sidegate render {cfg.source}\n"
        "# Provider keys are read by Envoy from its environment (%ENVIRONMENT(VAR)%), never written here.\n"
    )
    return header + yaml.safe_dump(bootstrap_dict(cfg), sort_keys=False, default_flow_style=False, width=120)


def write_bootstrap(cfg: Config, out_dir: Path) -> Path:
    """Write ``out_dir/envoy.yaml`` (mode 0644: it holds no secrets) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "envoy.yaml"
    tmp = out_dir / f".envoy.yaml.{os.getpid()}.tmp"
    tmp.write_text(bootstrap_yaml(cfg))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
