"""``sidegate deploy``: plain YAML that runs a config beside an app container (compose or Kubernetes).

Usage::

    from ext_proc.control.deploy import DeployOptions, load_for_deploy, render_deploy
    plan = load_for_deploy("config/openai.yaml")
    written = render_deploy(plan, DeployOptions(target="k8s", gpu=True), Path("deploy-out"))

What is rendered, from the same config ``sidegate up`` runs:

* ``sidegate/config.yaml`` (compose) or the ConfigMap ``<app>-sidegate-config`` (Kubernetes):
  the config as the containers run it. Its differences from the file given: a local Triton
  (``model_server.mode`` local-cpu/local-gpu) becomes ``mode: remote`` with ``endpoint`` the
  Triton service; a literal ``access_key`` becomes ``$SIDEGATE_KEY_<NAME>`` (the variable
  Envoy already reads it from); the ingress listener listens on 0.0.0.0 (reached through the
  app's published port or Service); egress stays on 127.0.0.1:12000, in the app's network
  namespace.
* provider keys: by variable name only (``env_file: .env`` in compose; ``secretKeyRef`` to the
  Secret ``<app>-sidegate-keys`` in Kubernetes). No key value is read for the render: every
  ``$VAR`` of the config is replaced by a placeholder while it is loaded, and a literal key is
  swapped for its variable, so no value can reach a rendered file.
* Triton as its own service (only when the config needs models and runs them locally), built
  from ``deploy/docker/Dockerfile.triton``; ``--gpu`` selects the models' ``configs/gpu.pbtxt``
  (``KIND_GPU``) and asks for ``nvidia.com/gpu``.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ext_proc.config import LOCAL_INTERFACES, Config, ConfigError, build_config, load_config

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_TRITON_IMAGE",
    "APP_IMAGE_PLACEHOLDER",
    "QUEUE_METRIC",
    "DeployError",
    "DeployOptions",
    "DeployPlan",
    "load_for_deploy",
    "render_deploy",
]

# what `docker build -f deploy/docker/Dockerfile -t sidegate:0.1.0 .` tags; --image changes it
DEFAULT_IMAGE = "sidegate:0.1.0"
# what `docker build -f deploy/docker/Dockerfile.triton -t sidegate-triton:0.1.0 .` tags; --triton-image changes it
DEFAULT_TRITON_IMAGE = "sidegate-triton:0.1.0"
APP_IMAGE_PLACEHOLDER = "registry.example.com/your-app:latest"
# The external metric the Triton HPA scales on: the average time a request waits in Triton's queue
# over the last minute, in microseconds, from Triton's counters nv_inference_queue_duration_us and
# nv_inference_request_success (the Prometheus adapter rule is written to prometheus-adapter-rules.yaml)
QUEUE_METRIC = "sidegate_triton_queue_duration_us"
CONFIG_IN_CONTAINER = "/etc/sidegate/config.yaml"
TRITON_NAME = "sidegate-triton"
TRITON_HTTP, TRITON_GRPC, TRITON_METRICS = 8000, 8001, 8002
RUN_AS = 10001  # the sidegate image's user (deploy/docker/Dockerfile)
TRITON_RUN_AS = 1000  # the triton-server user of the NGC image
_VAR = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")
_VAR_IN_TEXT = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_PLACEHOLDER = "sidegate-deploy-placeholder"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class DeployError(Exception):
    """A config that cannot run as rendered: says which key and what to change."""


@dataclass(frozen=True, kw_only=True)
class DeployOptions:
    target: str  # compose | k8s
    gpu: bool = False
    image: str = DEFAULT_IMAGE
    triton_image: str = DEFAULT_TRITON_IMAGE
    app_name: str = "app"
    app_port: int | None = None  # the app's own port, published/exposed beside sidegate's ingress
    max_triton_replicas: int = 4
    queue_target_us: int = 50_000  # the HPA adds Triton pods while requests wait longer than this on average


@dataclass(frozen=True, kw_only=True)
class DeployPlan:
    cfg: Config  # as loaded (placeholders for every $VAR)
    source: str
    key_vars: tuple[str, ...]  # every variable the containers need (provider keys, header $VARs), sorted
    literal_keys: tuple[str, ...]  # of key_vars: those that were literal keys in the config
    needs_triton: bool
    models: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())


def _vars_in(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VAR_IN_TEXT.finditer(text)}


def load_for_deploy(path: str | Path) -> DeployPlan:
    """Load ``path`` for a render: every ``$VAR`` it names gets a placeholder (the values live in
    ``.env`` or a Secret at deploy time, and must not be read into the render)."""
    from ext_proc.control.model_repo import needed_models

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file ({exc.strerror})") from exc
    env = {k: v for k, v in os.environ.items() if k not in _vars_in(text)}
    env.update({var: _PLACEHOLDER for var in _vars_in(text)})
    cfg = load_config(path, env=env)
    key_vars = {p.access_key_env for p in cfg.llm_providers if p.access_key_env}
    key_vars |= {v for v in _referenced_vars(cfg.raw)}
    literal = {p.access_key_env for p in cfg.llm_providers if p.access_key_env and p.access_key != _PLACEHOLDER}
    models = tuple(needed_models(cfg))
    ms = cfg.model_server
    return DeployPlan(
        cfg=cfg,
        source=str(path),
        key_vars=tuple(sorted(key_vars)),
        literal_keys=tuple(sorted(literal)),
        needs_triton=bool(models) and ms.mode in ("local-cpu", "local-gpu"),
        models=models,
        warnings=tuple(_check(cfg, models)),
    )


def _referenced_vars(node: Any) -> set[str]:
    """Every ``$VAR`` a string value of the config is (prompt target headers, provider keys)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for v in node.values():
            found |= _referenced_vars(v)
    elif isinstance(node, list):
        for v in node:
            found |= _referenced_vars(v)
    elif isinstance(node, str):
        m = _VAR.match(node)
        if m:
            found.add(m.group(1) or m.group(2))
    return found


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check(cfg: Config, models: tuple[str, ...]) -> list[str]:
    """What does not carry over to containers: local files are refused (DeployError), loopback
    addresses that would mean the app's pod rather than this machine are named in a warning."""
    warnings: list[str] = []
    for name, settings in cfg.model_server.models.items():
        if settings.weights and name in models:
            raise DeployError(
                f"{cfg.source}: model_server.models.{name}.weights: {settings.weights!r} is a file on this machine, which the "
                f"Triton container does not have: COPY it into deploy/docker/Dockerfile.triton (e.g. to /models-extra/) and set "
                f"weights to that path inside the image, or remove the key to use the packaged weights"
            )
    for i, p in enumerate(cfg.llm_providers):
        if p.interface in LOCAL_INTERFACES and _loopback(p.upstream.host) and p.upstream.port == cfg.ext_proc.http_port:
            continue  # the ext_proc façade: the ext_proc container in the same pod / network namespace
        if _loopback(p.upstream.host):
            warnings.append(
                f"llm_providers[{i}].endpoint: {p.upstream.host}:{p.upstream.port} is the app's network namespace once deployed "
                f"(its pod), not this machine: run {p.name} in that pod, or set endpoint to its service's address"
            )
    ms = cfg.model_server
    if ms.mode == "remote" and models:
        for url in ms.endpoint_urls:
            if _loopback(urlsplit(url).hostname or ""):
                warnings.append(f"model_server.endpoint: {url} is the app's network namespace once deployed: "
                                f"set it to your Triton's service address, or remove mode/endpoint to have Triton rendered")
    if cfg.otlp_endpoint and _loopback(urlsplit(cfg.otlp_endpoint).hostname or ""):
        warnings.append(f"tracing.otlp_endpoint: {cfg.otlp_endpoint} is the app's network namespace once deployed: "
                        f"set it to your collector's service address")
    if cfg.shared_store.type == "redis" and cfg.shared_store.url and _loopback(urlsplit(cfg.shared_store.url).hostname or ""):
        warnings.append(f"shared_store.url: {cfg.shared_store.url} is the app's network namespace once deployed, so every pod "
                        f"would count alone: set it to a Redis service shared by the pods")
    for name, e in cfg.endpoints.items():
        if _loopback(e.upstream.host):
            warnings.append(f"endpoints.{name}: {e.upstream.host}:{e.upstream.port} is reached in the app's network namespace: "
                            f"the app container must listen on port {e.upstream.port}")
    for agent in cfg.agents.values():  # plano's demos name their agents at localhost
        if _loopback(agent.upstream.host):
            warnings.append(f"agents.{agent.id}: {agent.upstream.host}:{agent.upstream.port} is reached in the app's network namespace "
                            f"once deployed: run the agent in the app's pod (listening on port {agent.upstream.port}), or set its url "
                            f"to the agent's service address")
    return warnings


def deployed_config(plan: DeployPlan, triton_host: str | None) -> dict[str, Any]:
    """The config the sidegate containers run (see the module docstring for what changes)."""
    raw = copy.deepcopy(plan.cfg.raw)
    by_name = {p.name: p for p in plan.cfg.llm_providers}
    for pr in raw.get("llm_providers") or []:
        p = by_name.get(pr.get("name", ""))
        if p is not None and "access_key" in pr and p.access_key_env and not _VAR.match(str(pr["access_key"])):
            pr["access_key"] = f"${p.access_key_env}"  # a literal key: read from the variable Envoy uses for it
    listeners = raw.setdefault("listeners", {})
    ingress = listeners.setdefault("ingress_traffic", {})
    ingress["address"] = "0.0.0.0"  # noqa: S104 - reached through the app's published port / Service
    for agent_listener in listeners.get("agent_traffic") or []:  # plano's agent listeners: published like ingress
        agent_listener["address"] = "0.0.0.0"  # noqa: S104
    if plan.needs_triton and triton_host:
        ms = raw.setdefault("model_server", {})
        for key in ("replicas", "balancer_port", "http_port", "grpc_port", "metrics_port", "endpoints"):
            ms.pop(key, None)
        ms["mode"] = "remote"
        ms["endpoint"] = f"grpc://{triton_host}:{TRITON_GRPC}"
    # the rendered config must load as the containers will load it (keys as placeholders)
    env = {var: _PLACEHOLDER for var in plan.key_vars}
    try:
        build_config(copy.deepcopy(raw), source="<deployed config>", env=env)
    except ConfigError as exc:  # a bug here rather than in the user's config
        raise DeployError(f"the config rendered for the containers does not load: {exc}") from exc
    return raw


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper without anchors and aliases (&id001 / *id001): a shared list is
    written out in full each time, as a person would write it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    """Multi-line strings (a config in a ConfigMap) as literal blocks, readable as written."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _config_text(plan: DeployPlan, raw: dict[str, Any]) -> str:
    head = (f"# rendered by `sidegate deploy` from {plan.source}: the config the sidegate containers run.\n"
            f"# Keys are $VARs, set from .env (compose) or the Secret (Kubernetes); none is written here.\n")
    return head + _dump(raw)


def _triton_args(plan: DeployPlan, gpu: bool) -> list[str]:
    args = [
        "tritonserver",
        "--model-repository=/models",
        "--disable-auto-complete-config",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in plan.models),
        "--strict-readiness=true",
        f"--http-port={TRITON_HTTP}",
        f"--grpc-port={TRITON_GRPC}",
        f"--metrics-port={TRITON_METRICS}",
        "--exit-timeout-secs=10",
    ]
    if gpu:
        args.append("--model-config-name=gpu")  # each model's configs/gpu.pbtxt (KIND_GPU)
    return args


def _model_configs(plan: DeployPlan, gpu: bool) -> dict[str, tuple[str, str]]:
    """For each model Triton loads whose ``model_server.models`` settings change its config:
    model -> (the path of the config Triton reads in the image, its text with the settings
    applied, as ``sidegate up`` renders it). The image holds the configs as written in
    triton_models/; these are mounted over them."""
    from ext_proc.config import MODELS_DIR, ModelSettings
    from ext_proc.control.model_repo import _apply, _settings_for

    out: dict[str, tuple[str, str]] = {}
    for name in plan.models:
        settings = _settings_for(plan.cfg, name)
        if settings == ModelSettings():
            continue
        rel = "configs/gpu.pbtxt" if gpu and (MODELS_DIR / name / "configs" / "gpu.pbtxt").is_file() else "config.pbtxt"
        text = _apply((MODELS_DIR / name / rel).read_text(), settings, name).replace(str(MODELS_DIR), "triton_models")
        out[name] = (f"/models/{name}/{rel}", text)
    return out


def _env_example(plan: DeployPlan) -> str:
    lines = ["# The provider keys the sidegate container reads: copy to .env and fill in (never commit .env)."]
    for var in plan.key_vars:
        if var in plan.literal_keys:
            lines.append(f"# {var}: was a literal access_key in {plan.source}; the rendered config reads it from here")
        lines.append(f"{var}=")
    return "\n".join(lines) + "\n"


# --- compose ---------------------------------------------------------------------------------

def _compose(plan: DeployPlan, opts: DeployOptions) -> dict[str, Any]:
    cfg = plan.cfg
    app = opts.app_name
    ports = [f"{cfg.ingress.port}:{cfg.ingress.port}"] + [f"{a.listener.port}:{a.listener.port}" for a in cfg.agent_listeners]
    if opts.app_port:
        ports.append(f"{opts.app_port}:{opts.app_port}")
    services: dict[str, Any] = {
        app: {
            "image": APP_IMAGE_PLACEHOLDER,
            "environment": {"OPENAI_BASE_URL": f"http://127.0.0.1:{cfg.egress.port}/v1"},
            # sidegate shares this service's network namespace: its ports are published here
            "ports": ports,
            "restart": "unless-stopped",
        },
        "sidegate": {
            "image": opts.image,
            "command": ["sidegate", "up", CONFIG_IN_CONTAINER],
            "network_mode": f"service:{app}",
            "volumes": [f"./sidegate/config.yaml:{CONFIG_IN_CONTAINER}:ro"],
            "depends_on": {app: {"condition": "service_started"}},
            "restart": "unless-stopped",
            "read_only": True,
            "tmpfs": ["/tmp"],
            "environment": {"SIDEGATE_HOME": "/tmp/sidegate", "HOME": "/tmp"},
        },
    }
    if plan.key_vars:
        services["sidegate"]["env_file"] = [".env"]
    if plan.needs_triton:
        triton: dict[str, Any] = {
            "image": opts.triton_image,
            "command": _triton_args(plan, opts.gpu),
            "shm_size": "1gb",  # the python backend's stubs exchange tensors through /dev/shm
            "healthcheck": {
                "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{TRITON_HTTP}/v2/health/ready"],
                "interval": "10s", "timeout": "3s", "retries": 3, "start_period": "300s",
            },
            "restart": "unless-stopped",
        }
        configs = _model_configs(plan, opts.gpu)
        if configs:  # model_server.models settings: the rendered configs over the image's
            triton["volumes"] = [f"./triton/{name}.pbtxt:{path}:ro" for name, (path, _) in configs.items()]
        if opts.gpu:
            triton["deploy"] = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}
        services[TRITON_NAME] = triton
        services["sidegate"]["depends_on"][TRITON_NAME] = {"condition": "service_healthy"}
    return {"name": f"{app}-sidegate", "services": services}


# --- Kubernetes --------------------------------------------------------------------------------

def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "sidegate"}


def _probe_exec(url: str) -> list[str]:
    """An exec probe of a loopback URL: Envoy's admin and ext_proc listen on 127.0.0.1 in the pod
    (the admin API must not be reachable from the cluster), which an httpGet probe cannot reach."""
    code = f"import urllib.request; urllib.request.urlopen('{url}', timeout=2)"
    return ["python", "-c", code]


def _probe(url: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"exec": {"command": _probe_exec(url)}, "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}


def _key_env(plan: DeployPlan, secret: str) -> list[dict[str, Any]]:
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": var}}} for var in plan.key_vars]


def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _app_deployment(plan: DeployPlan, opts: DeployOptions) -> dict[str, Any]:
    cfg = plan.cfg
    app = opts.app_name
    secret = f"{app}-sidegate-keys"
    # the root filesystem is read-only: sidegate's state and any cache go to the emptyDir /tmp
    env = [*_key_env(plan, secret), {"name": "SIDEGATE_HOME", "value": "/tmp/sidegate"}, {"name": "HOME", "value": "/tmp"}]
    mounts = [{"name": "sidegate-config", "mountPath": "/etc/sidegate", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
    health = f"http://127.0.0.1:{cfg.ext_proc.http_port}/healthz"
    ready = f"http://127.0.0.1:{cfg.admin_port}/ready"
    ext_proc = {
        "name": "sidegate-ext-proc",
        "image": opts.image,
        "restartPolicy": "Always",  # a native sidecar: starts before the app, stops after it
        "command": ["sidegate", "serve", CONFIG_IN_CONTAINER],
        "env": env,
        "volumeMounts": mounts,
        # warm-up (prompt targets embedded, function_call pre-filled) may take minutes
        "startupProbe": _probe(health, period=5, failures=120),
        "readinessProbe": _probe(health, period=10, failures=3),
        "livenessProbe": _probe(health, period=20, failures=3),
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": _security(),
    }
    envoy = {
        "name": "sidegate-envoy",
        "image": opts.image,
        "restartPolicy": "Always",
        # the bootstrap is rendered in the container (its CA bundle path is the image's)
        "command": ["sh", "-c", f"sidegate render {CONFIG_IN_CONTAINER} --out /tmp/envoy && "
                                "exec envoy -c /tmp/envoy/envoy.yaml --disable-hot-restart --log-level warn"],
        "env": env,
        "ports": [{"name": "ingress", "containerPort": cfg.ingress.port}] +
                 [{"name": f"agent-{i}", "containerPort": a.listener.port} for i, a in enumerate(cfg.agent_listeners)],
        "volumeMounts": mounts,
        "startupProbe": _probe(ready, period=2, failures=60),
        "readinessProbe": _probe(ready, period=10, failures=3),
        "livenessProbe": _probe(ready, period=20, failures=3),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _security(),
    }
    app_container: dict[str, Any] = {
        "name": app,
        "image": APP_IMAGE_PLACEHOLDER,
        "env": [{"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{cfg.egress.port}/v1"}],
    }
    if opts.app_port:
        app_container["ports"] = [{"name": "http", "containerPort": opts.app_port}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "labels": _labels(app)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
            "template": {
                "metadata": {"labels": _labels(app)},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS},
                    # ext_proc first: Envoy's ext_proc filter refuses requests until it answers
                    "initContainers": [ext_proc, envoy],
                    "containers": [app_container],
                    "volumes": [
                        {"name": "sidegate-config", "configMap": {"name": f"{app}-sidegate-config"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _app_service(plan: DeployPlan, opts: DeployOptions) -> dict[str, Any]:
    ports = [{"name": "ingress", "port": plan.cfg.ingress.port, "targetPort": "ingress"}]
    ports += [{"name": f"agent-{i}", "port": a.listener.port, "targetPort": f"agent-{i}"} for i, a in enumerate(plan.cfg.agent_listeners)]
    if opts.app_port:
        ports.append({"name": "http", "port": opts.app_port, "targetPort": "http"})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": opts.app_name, "labels": _labels(opts.app_name)},
            "spec": {"selector": {"app.kubernetes.io/name": opts.app_name}, "ports": ports}}


def _triton_deployment(plan: DeployPlan, opts: DeployOptions) -> dict[str, Any]:
    http = {"path": "/v2/health/ready", "port": "http"}
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"memory": "12Gi"}}
    if opts.gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
        resources["requests"]["nvidia.com/gpu"] = 1
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": opts.triton_image,
        "args": _triton_args(plan, opts.gpu),
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP},
            {"name": "grpc", "containerPort": TRITON_GRPC},
            {"name": "metrics", "containerPort": TRITON_METRICS},
        ],
        "startupProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 15, "failureThreshold": 4},
        "resources": resources,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    configs = _model_configs(plan, opts.gpu)
    if configs:  # model_server.models settings: the rendered configs over the image's
        volumes.append({"name": "model-configs", "configMap": {"name": f"{TRITON_NAME}-models"}})
        container["volumeMounts"] += [{"name": "model-configs", "mountPath": path, "subPath": f"{name}.pbtxt", "readOnly": True}
                                      for name, (path, _) in configs.items()]
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRITON_RUN_AS, "runAsGroup": TRITON_RUN_AS},
        "containers": [container],
        # the python backend's stubs exchange tensors through /dev/shm (64 MiB by default)
        "volumes": volumes,
    }
    if opts.gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": TRITON_NAME, "labels": _labels(TRITON_NAME)},
        "spec": {
            "replicas": max(1, plan.cfg.model_server.replicas),
            "selector": {"matchLabels": {"app.kubernetes.io/name": TRITON_NAME}},
            "template": {
                "metadata": {
                    "labels": _labels(TRITON_NAME),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(TRITON_METRICS),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": spec,
            },
        },
    }


def _triton_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": TRITON_NAME, "labels": _labels(TRITON_NAME)},
        "spec": {
            # headless: the name resolves to every ready Triton pod, and the sidecar's Envoy balances
            # over them (least request, health checks, DNS re-resolved, so the HPA's new pods get
            # requests) instead of one gRPC connection pinned to one pod behind a virtual IP
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/name": TRITON_NAME},
            "ports": [
                {"name": "grpc", "port": TRITON_GRPC, "targetPort": "grpc", "appProtocol": "grpc"},
                {"name": "http", "port": TRITON_HTTP, "targetPort": "http"},
                {"name": "metrics", "port": TRITON_METRICS, "targetPort": "metrics"},
            ],
        },
    }


def _triton_hpa(plan: DeployPlan, opts: DeployOptions) -> dict[str, Any]:
    low = max(1, plan.cfg.model_server.replicas)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": TRITON_NAME, "labels": _labels(TRITON_NAME)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": TRITON_NAME},
            "minReplicas": low,
            "maxReplicas": max(low, opts.max_triton_replicas),
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": {"name": QUEUE_METRIC},
                    "target": {"type": "Value", "value": str(opts.queue_target_us)},
                },
            }],
            # a Triton pod loads its models for minutes: add quickly, remove slowly
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
                "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
            },
        },
    }


def _triton_pdb() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": TRITON_NAME, "labels": _labels(TRITON_NAME)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": TRITON_NAME}}},
    }


def _adapter_rules() -> str:
    rule = {
        "rules": {
            "external": [{
                "seriesQuery": 'nv_inference_queue_duration_us{namespace!=""}',
                "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
                "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
                # the average wait of one request over the last minute: queue microseconds / requests
                "metricsQuery": ("sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) / "
                                 "clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])), 1)"),
            }],
        },
    }
    head = (
        f"# Values for the prometheus-adapter Helm chart (not a Kubernetes object; not in kustomization.yaml):\n"
        f"#   helm upgrade --install prometheus-adapter prometheus-community/prometheus-adapter -f prometheus-adapter-rules.yaml\n"
        f"# It serves the external metric {QUEUE_METRIC} that the HorizontalPodAutoscaler {TRITON_NAME} reads:\n"
        f"# the average time (microseconds) a request waited in Triton's queue over the last minute, from\n"
        f"# Triton's counters nv_inference_queue_duration_us / nv_inference_request_success (scraped from :{TRITON_METRICS}/metrics\n"
        f"# through the pods' prometheus.io annotations), over every Triton pod of the namespace.\n"
    )
    return head + _dump(rule)


def _k8s_files(plan: DeployPlan, opts: DeployOptions, raw: dict[str, Any]) -> dict[str, str]:
    app = opts.app_name
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{app}-sidegate-config", "labels": _labels(app)},
        "data": {"config.yaml": _config_text(plan, raw)},
    }
    files = {
        "sidegate-configmap.yaml": _dump(configmap),
        "app-deployment.yaml": _dump(_app_deployment(plan, opts)).replace(
            f"image: {APP_IMAGE_PLACEHOLDER}", f"image: {APP_IMAGE_PLACEHOLDER}  # REPLACE with your app's image"),
        "app-service.yaml": _dump(_app_service(plan, opts)),
    }
    if plan.needs_triton:
        files["triton-deployment.yaml"] = _dump(_triton_deployment(plan, opts))
        files["triton-service.yaml"] = _dump(_triton_service())
        files["triton-hpa.yaml"] = (f"# scales Triton on the external metric {QUEUE_METRIC}: see prometheus-adapter-rules.yaml\n"
                                    + _dump(_triton_hpa(plan, opts)))
        files["triton-pdb.yaml"] = _dump(_triton_pdb())
        configs = _model_configs(plan, opts.gpu)
        if configs:
            models_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{TRITON_NAME}-models", "labels": _labels(TRITON_NAME)},
                         "data": {f"{name}.pbtxt": text for name, (_, text) in configs.items()}}
            files["triton-model-configs.yaml"] = _dump(models_cm)
    resources = list(files)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}
    head = (f"# rendered by `sidegate deploy --target k8s` from {plan.source}\n"
            f"# the provider keys are read from the Secret {app}-sidegate-keys, which is not rendered:\n"
            f"#   kubectl create secret generic {app}-sidegate-keys --from-env-file=.env\n")
    files["kustomization.yaml"] = head + _dump(kustomization)
    if plan.needs_triton:
        files["prometheus-adapter-rules.yaml"] = _adapter_rules()
    if plan.key_vars:
        files[".env.example"] = _env_example(plan)
    return files


def _compose_files(plan: DeployPlan, opts: DeployOptions, raw: dict[str, Any]) -> dict[str, str]:
    head = (f"# rendered by `sidegate deploy --target compose` from {plan.source}\n"
            f"# the app service's image is a placeholder: replace it with yours. sidegate runs in the app's network\n"
            f"# namespace (network_mode: service:{opts.app_name}): the app reaches egress at http://127.0.0.1:{plan.cfg.egress.port}\n"
            + ("# provider keys come from .env (see .env.example), never from this file\n" if plan.key_vars else ""))
    compose = _dump(_compose(plan, opts)).replace(
        f"image: {APP_IMAGE_PLACEHOLDER}", f"image: {APP_IMAGE_PLACEHOLDER}  # REPLACE with your app's image")
    files = {"compose.yaml": head + compose, "sidegate/config.yaml": _config_text(plan, raw)}
    if plan.needs_triton:
        files.update({f"triton/{name}.pbtxt": text for name, (_, text) in _model_configs(plan, opts.gpu).items()})
    if plan.key_vars:
        files[".env.example"] = _env_example(plan)
    return files


def render_deploy(plan: DeployPlan, opts: DeployOptions, out_dir: Path) -> list[Path]:
    """Write the files of ``opts.target`` under ``out_dir``; return their paths."""
    if opts.target not in ("compose", "k8s"):
        raise DeployError(f"--target: expected compose or k8s, got {opts.target!r}")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", opts.app_name):
        raise DeployError(f"--app-name: expected a DNS label (lower case letters, digits, -), got {opts.app_name!r}")
    if opts.gpu and not plan.needs_triton:
        raise DeployError("--gpu: this config runs no Triton (it needs no models, or model_server.mode is remote or none)")
    raw = deployed_config(plan, TRITON_NAME)
    files = _k8s_files(plan, opts, raw) if opts.target == "k8s" else _compose_files(plan, opts, raw)
    written = []
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
