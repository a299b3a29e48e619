"""`sidegate deploy` (compose and Kubernetes) and the two Dockerfiles, checked offline.

* Kubernetes: every rendered object validates against the Kubernetes OpenAPI schemas shipped by
  the ``kubernetes-validate`` package (strict: unknown fields are errors), for 1.33, the first
  release with native sidecars on by default and GA; the kustomization lists exactly them.
* compose: validated against the Compose Specification's JSON Schema (deploy/docker/compose-spec.json,
  copied from compose-spec/compose-spec at 170098ba07d9, Apache-2.0), and the structure the brief
  fixes (sidegate in the app's network namespace, Triton its own service, keys from ``.env`` by name).
* no provider key value reaches any rendered file (a literal key, a ``$VAR`` set in the
  environment and one set in ``.env`` next to the config).
* the Dockerfiles: parsed with ``dockerfile-parse``; known instructions, bases pinned by digest,
  a non-root USER, a HEALTHCHECK, no secrets, every COPY source present in the repository.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser
from kubernetes_validate import utils as kv

from ext_proc.config import REPO_ROOT, load_config
from ext_proc.control.cli import main
from ext_proc.control.deploy import (
    APP_IMAGE_PLACEHOLDER,
    QUEUE_METRIC,
    DeployError,
    DeployOptions,
    load_for_deploy,
    render_deploy,
)

K8S_VERSION = "1.33"
LITERAL_KEY = "sk-literal-7f3a9c1e5b"
ENV_KEY = "sk-from-environment-2d8e4b6a"
DOTENV_KEY = "sk-from-dotenv-9c1f7e3d"
SECRETS = (LITERAL_KEY, ENV_KEY, DOTENV_KEY)

CONFIG = f"""
version: v0.1
listeners:
  ingress_traffic: {{address: 127.0.0.1, port: 10000, message_format: openai, timeout: 30s}}
  egress_traffic: {{address: 127.0.0.1, port: 12000, message_format: openai, timeout: 30s}}
endpoints:
  app_api: {{endpoint: 127.0.0.1:18083}}
llm_providers:
  - name: openai
    provider_interface: openai
    model: gpt-4o-mini
    access_key: $OPENAI_API_KEY
    default: true
  - name: mistral
    provider_interface: mistral
    model: mistral-small
    access_key: {LITERAL_KEY}
  - name: groq
    provider_interface: groq
    model: llama-3.1-8b-instant
    access_key: ${{GROQ_API_KEY}}
prompt_guards:
  input_guards:
    jailbreak:
      on_exception: {{message: "blocked"}}
model_server:
  replicas: 2
"""


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".env").write_text(f"GROQ_API_KEY={DOTENV_KEY}\n")
    path = src / "gateway.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    return path


def _render(config_path: Path, out: Path, **opts: Any) -> dict[str, str]:
    plan = load_for_deploy(config_path)
    written = render_deploy(plan, DeployOptions(**opts), out)
    return {str(p.relative_to(out)): p.read_text() for p in written}


def _no_secrets(files: dict[str, str]) -> None:
    for name, text in files.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} written into {name}"


# --- Kubernetes ------------------------------------------------------------------------------

@pytest.fixture
def k8s(config_path: Path, tmp_path: Path) -> dict[str, str]:
    return _render(config_path, tmp_path / "k8s", target="k8s", gpu=True, image="reg.example/sidegate:1", triton_image="reg.example/triton:1")


def _objects(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """(kind/name) -> object, for every Kubernetes object the kustomization lists."""
    kustomization = yaml.safe_load(files["kustomization.yaml"])
    out = {}
    for rel in kustomization["resources"]:
        for doc in yaml.safe_load_all(files[rel]):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_k8s_objects_validate_against_the_openapi_schemas(k8s: dict[str, str]) -> None:
    objects = _objects(k8s)
    assert set(objects) == {
        "ConfigMap/app-sidegate-config", "Deployment/app", "Service/app", "Deployment/sidegate-triton",
        "Service/sidegate-triton", "HorizontalPodAutoscaler/sidegate-triton", "PodDisruptionBudget/sidegate-triton",
    }
    for key, obj in objects.items():
        assert kv.validate(obj, K8S_VERSION, strict=True), key


def test_the_validator_refuses_a_wrong_field(k8s: dict[str, str]) -> None:
    """The check above means something: an unknown field and a wrong type are refused."""
    obj = _objects(k8s)["Deployment/app"]
    obj["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(obj, K8S_VERSION, strict=True)
    obj = _objects(k8s)["Deployment/sidegate-triton"]
    obj["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(obj, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest(k8s: dict[str, str]) -> None:
    kustomization = yaml.safe_load(k8s["kustomization.yaml"])
    assert kustomization["kind"] == "Kustomization"
    manifests = {n for n in k8s if n.endswith(".yaml") and n not in ("kustomization.yaml", "prometheus-adapter-rules.yaml")}
    assert set(kustomization["resources"]) == manifests
    assert "kubectl create secret generic app-sidegate-keys --from-env-file=.env" in k8s["kustomization.yaml"]


def test_k8s_app_pod_has_native_sidecars_with_health_probes(k8s: dict[str, str]) -> None:
    pod = _objects(k8s)["Deployment/app"]["spec"]["template"]["spec"]
    sidecars = {c["name"]: c for c in pod["initContainers"]}
    assert list(sidecars) == ["sidegate-ext-proc", "sidegate-envoy"]  # ext_proc answers before Envoy routes to it
    for c in sidecars.values():
        assert c["restartPolicy"] == "Always"
        assert c["image"] == "reg.example/sidegate:1"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["exec"]["command"][:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in sidecars["sidegate-ext-proc"]["readinessProbe"]["exec"]["command"][2]
    assert "http://127.0.0.1:9901/ready" in sidecars["sidegate-envoy"]["readinessProbe"]["exec"]["command"][2]
    assert sidecars["sidegate-ext-proc"]["command"] == ["sidegate", "serve", "/etc/sidegate/config.yaml"]
    assert "exec envoy -c /tmp/envoy/envoy.yaml" in sidecars["sidegate-envoy"]["command"][2]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (app,) = pod["containers"]
    assert app["image"] == APP_IMAGE_PLACEHOLDER
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:12000/v1"} in app["env"]
    assert f"image: {APP_IMAGE_PLACEHOLDER}  # REPLACE" in k8s["app-deployment.yaml"]
    assert "&id" not in k8s["app-deployment.yaml"]  # no YAML anchors: each container written out


def test_k8s_keys_are_secret_references_by_name_only(k8s: dict[str, str]) -> None:
    _no_secrets(k8s)
    pod = _objects(k8s)["Deployment/app"]["spec"]["template"]["spec"]
    for c in pod["initContainers"]:
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        assert refs == {var: {"name": "app-sidegate-keys", "key": var} for var in ("GROQ_API_KEY", "OPENAI_API_KEY", "SIDEGATE_KEY_MISTRAL")}
    assert k8s[".env.example"].count("=\n") == 3


def test_k8s_config_map_runs_against_the_triton_service(k8s: dict[str, str], tmp_path: Path) -> None:
    """The config in the ConfigMap loads, reaches Triton through its Service, reads every key
    from a variable, and Envoy accepts the bootstrap rendered from it (envoy --mode validate)."""
    from ext_proc.control.envoy_check import check_bootstrap

    text = _objects(k8s)["ConfigMap/app-sidegate-config"]["data"]["config.yaml"]
    raw = yaml.safe_load(text)
    assert [p["access_key"] for p in raw["llm_providers"]] == ["$OPENAI_API_KEY", "$SIDEGATE_KEY_MISTRAL", "${GROQ_API_KEY}"]
    (tmp_path / "deployed.yaml").write_text(text)
    cfg = load_config(tmp_path / "deployed.yaml", env={"OPENAI_API_KEY": "a", "SIDEGATE_KEY_MISTRAL": "b", "GROQ_API_KEY": "c"})
    assert cfg.model_server.mode == "remote"
    assert cfg.model_server.endpoint_urls == ("grpc://sidegate-triton:8001",)
    # a host name may stand for several pods (the Service is headless): ext_proc reaches them through
    # Envoy's models cluster, which re-resolves the name and balances over every pod
    assert cfg.model_server.balanced and cfg.model_server.replica_targets == [("sidegate-triton", 8001)]
    assert cfg.model_server.endpoint == f"grpc://127.0.0.1:{cfg.model_server.balancer_port}"
    service = _objects(k8s)["Service/sidegate-triton"]
    assert service["spec"]["clusterIP"] == "None"
    assert cfg.ingress.address == "0.0.0.0"
    assert cfg.egress.address == "127.0.0.1" and cfg.egress.port == 12000
    check_bootstrap(cfg)


def test_k8s_triton_gpu_hpa_and_pdb(k8s: dict[str, str], config_path: Path, tmp_path: Path) -> None:
    objects = _objects(k8s)
    triton = objects["Deployment/sidegate-triton"]
    (c,) = triton["spec"]["template"]["spec"]["containers"]
    assert triton["spec"]["replicas"] == 2  # model_server.replicas
    assert c["image"] == "reg.example/triton:1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in c["args"]
    assert [a for a in c["args"] if a.startswith("--load-model=")] == [
        "--load-model=prompt_embed", "--load-model=prompt_guard_head", "--load-model=prompt_guard"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    ports = {p["name"]: p["port"] for p in objects["Service/sidegate-triton"]["spec"]["ports"]}
    assert ports["grpc"] == 8001
    hpa = objects["HorizontalPodAutoscaler/sidegate-triton"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sidegate-triton"
    assert hpa["minReplicas"] == 2
    assert hpa["metrics"][0]["external"]["metric"]["name"] == QUEUE_METRIC
    rules = yaml.safe_load(k8s["prometheus-adapter-rules.yaml"])["rules"]["external"][0]
    assert rules["name"]["as"] == QUEUE_METRIC
    assert "nv_inference_queue_duration_us" in rules["metricsQuery"] and "nv_inference_request_success" in rules["metricsQuery"]
    assert objects["PodDisruptionBudget/sidegate-triton"]["spec"]["maxUnavailable"] == 1
    cpu = _render(config_path, tmp_path / "cpu", target="k8s")
    (c,) = _objects(cpu)["Deployment/sidegate-triton"]["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "--model-config-name=gpu" not in c["args"]


def test_model_settings_reach_the_triton_containers(config_path: Path, tmp_path: Path) -> None:
    """model_server.models settings change the config Triton reads, as with `sidegate up`: the
    rendered config is mounted over the image's (ConfigMap + subPath; a bind mount in compose)."""
    config_path.write_text(CONFIG + "  models:\n    prompt_embed: {instances: 3, max_batch_size: 16}\n")
    k8s = _render(config_path, tmp_path / "k8s", target="k8s", gpu=True)
    objects = _objects(k8s)
    for key, obj in objects.items():
        assert kv.validate(obj, K8S_VERSION, strict=True), key
    text = objects["ConfigMap/sidegate-triton-models"]["data"]["prompt_embed.pbtxt"]
    assert "count: 3" in text and "max_batch_size: 16" in text and "KIND_GPU" in text
    assert "/work/" not in text and str(REPO_ROOT) not in text
    (c,) = objects["Deployment/sidegate-triton"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "model-configs", "mountPath": "/models/prompt_embed/configs/gpu.pbtxt", "subPath": "prompt_embed.pbtxt",
            "readOnly": True} in c["volumeMounts"]
    compose = _render(config_path, tmp_path / "compose", target="compose")
    assert "count: 3" in compose["triton/prompt_embed.pbtxt"] and "KIND_CPU" in compose["triton/prompt_embed.pbtxt"]
    triton = yaml.safe_load(compose["compose.yaml"])["services"]["sidegate-triton"]
    assert triton["volumes"] == ["./triton/prompt_embed.pbtxt:/models/prompt_embed/config.pbtxt:ro"]
    assert "config.yaml: |" in k8s["sidegate-configmap.yaml"]  # written as a block, readable


# --- compose --------------------------------------------------------------------------------

def _compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads((REPO_ROOT / "deploy" / "docker" / "compose-spec.json").read_text())
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def test_compose_validates_against_the_compose_spec(config_path: Path, tmp_path: Path) -> None:
    for gpu in (False, True):
        files = _render(config_path, tmp_path / f"compose-{gpu}", target="compose", gpu=gpu)
        doc = yaml.safe_load(files["compose.yaml"])
        assert _compose_errors(doc) == []
    doc["services"]["sidegate"]["network_mod"] = "service:app"  # the schema check means something
    assert _compose_errors(doc)


def test_compose_structure(config_path: Path, tmp_path: Path) -> None:
    files = _render(config_path, tmp_path / "compose", target="compose", gpu=True, app_port=3000)
    assert set(files) == {"compose.yaml", "sidegate/config.yaml", ".env.example"}
    _no_secrets(files)
    compose = yaml.safe_load(files["compose.yaml"])
    services = compose["services"]
    assert set(services) == {"app", "sidegate", "sidegate-triton"}
    app, sidegate, triton = services["app"], services["sidegate"], services["sidegate-triton"]
    assert app["image"] == APP_IMAGE_PLACEHOLDER
    assert app["environment"]["OPENAI_BASE_URL"] == "http://127.0.0.1:12000/v1"
    assert app["ports"] == ["10000:10000", "3000:3000"]  # sidegate's ingress is published by the namespace's owner
    assert sidegate["network_mode"] == "service:app"
    assert "ports" not in sidegate
    assert sidegate["env_file"] == [".env"]
    assert sidegate["command"] == ["sidegate", "up", "/etc/sidegate/config.yaml"]
    assert sidegate["volumes"] == ["./sidegate/config.yaml:/etc/sidegate/config.yaml:ro"]
    assert sidegate["depends_on"]["sidegate-triton"] == {"condition": "service_healthy"}
    assert "--model-config-name=gpu" in triton["command"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "environment" not in sidegate or not any(k.endswith("_KEY") for k in sidegate["environment"])
    cfg = yaml.safe_load(files["sidegate/config.yaml"])
    assert cfg["model_server"] == {"mode": "remote", "endpoint": "grpc://sidegate-triton:8001"}
    env_names = [line.split("=")[0] for line in files[".env.example"].splitlines() if line and not line.startswith("#")]
    assert env_names == ["GROQ_API_KEY", "OPENAI_API_KEY", "SIDEGATE_KEY_MISTRAL"]
    assert "SIDEGATE_KEY_MISTRAL: was a literal access_key" in files[".env.example"]


def test_compose_without_models_has_no_triton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    path = tmp_path / "plain.yaml"
    path.write_text("version: v0.1\nllm_providers:\n  - {name: openai, provider_interface: openai, model: gpt-4o, access_key: $OPENAI_API_KEY}\n")
    files = _render(path, tmp_path / "out", target="compose")
    assert set(yaml.safe_load(files["compose.yaml"])["services"]) == {"app", "sidegate"}
    with pytest.raises(DeployError, match="--gpu"):
        _render(path, tmp_path / "gpu", target="compose", gpu=True)
    k8s = _render(path, tmp_path / "k8s", target="k8s")
    assert not any(name.startswith("triton") for name in k8s)
    _no_secrets(k8s)


# --- bad input, the command -----------------------------------------------------------------

def test_local_weights_are_refused_with_what_to_change(config_path: Path) -> None:
    weights = config_path.parent / "guard.bin"
    weights.write_bytes(b"x")
    config_path.write_text(CONFIG + f"  models:\n    prompt_embed: {{weights: {weights}}}\n")
    with pytest.raises(DeployError, match=r"model_server\.models\.prompt_embed\.weights: .* COPY it into deploy/docker/Dockerfile\.triton"):
        load_for_deploy(config_path)


def test_loopback_provider_is_named_in_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "ollama.yaml"
    path.write_text("version: v0.1\nllm_providers:\n  - {name: local, provider_interface: ollama, model: llama3}\n")
    (warning,) = load_for_deploy(path).warnings
    assert warning.startswith("llm_providers[0].endpoint: 127.0.0.1:11434 is the app's network namespace")


def test_loopback_agents_are_named_in_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({
        "version": "v0.3.0",
        "agents": [{"id": "weather_agent", "url": "http://localhost:10510"}, {"id": "flight_agent", "url": "http://flights.travel.svc:80"}],
        "model_providers": [{"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY", "default": True}],
        "listeners": [{"type": "agent", "name": "travel", "port": 8001,
                       "agents": [{"id": "weather_agent", "description": "weather forecasts"},
                                  {"id": "flight_agent", "description": "flight status"}]}],
    }))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    (warning,) = load_for_deploy(path).warnings
    assert warning.startswith("agents.weather_agent: localhost:10510 is reached in the app's network namespace once deployed")


def test_cli_deploy(config_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["deploy", str(config_path), "--target", "k8s", "--out", str(out), "--app-name", "shop"])
    assert result.exit_code == 0, result.output
    assert (out / "kustomization.yaml").is_file()
    assert yaml.safe_load((out / "app-deployment.yaml").read_text())["metadata"]["name"] == "shop"
    assert "GROQ_API_KEY, OPENAI_API_KEY, SIDEGATE_KEY_MISTRAL" in result.output
    assert not any(s in result.output for s in SECRETS)
    bad = CliRunner().invoke(main, ["deploy", str(config_path), "--target", "k8s", "--out", str(out), "--app-name", "Shop_1"])
    assert bad.exit_code == 2
    assert "--app-name" in bad.output


# --- Dockerfiles ----------------------------------------------------------------------------

DOCKER = REPO_ROOT / "deploy" / "docker"
KNOWN = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK", "CMD", "STOPSIGNAL", "LABEL", "COMMENT"}


def _parse(name: str) -> list[dict[str, Any]]:
    # (fileobj: a path= not named "Dockerfile" is taken for a directory)
    parser = DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))
    structure: list[dict[str, Any]] = parser.structure
    return structure


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.triton"])
def test_dockerfile_lint(name: str) -> None:
    steps = _parse(name)
    instructions = [s["instruction"] for s in steps]
    assert set(instructions) <= KNOWN, set(instructions) - KNOWN
    froms = [s["value"] for s in steps if s["instruction"] == "FROM"]
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}(\s|$)", f) for f in froms), froms
    users = [s["value"].strip() for s in steps if s["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert instructions.index("USER") > max(i for i, s in enumerate(instructions) if s == "RUN")  # nothing runs as root after
    (health,) = [s["value"] for s in steps if s["instruction"] == "HEALTHCHECK"]
    assert health.upper() != "NONE"
    text = (DOCKER / name).read_text()
    assert not re.search(r"\b(sk-[A-Za-z0-9]{8,}|AKIA[0-9A-Z]{16})", text)
    for s in steps:
        if s["instruction"] in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", s["value"].upper()), s["value"]
        if s["instruction"] == "COPY":
            *sources, _dest = s["value"].split()
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
    assert (DOCKER / f"{name}.dockerignore").is_file()  # the context is the repository root: .venv, .env stay out


def test_sidegate_image_runs_up_and_checks_the_health_endpoints() -> None:
    steps = _parse("Dockerfile")
    (cmd,) = [s["value"] for s in steps if s["instruction"] == "CMD"]
    assert cmd == '["sidegate", "up", "/etc/sidegate/config.yaml"]'
    (health,) = [s["value"] for s in steps if s["instruction"] == "HEALTHCHECK"]
    assert "http://127.0.0.1:9901/ready" in health and "http://127.0.0.1:8080/healthz" in health
    assert any(s["instruction"] == "ARG" and s["value"].startswith("WITH_LOCAL_TRITON=") for s in steps)
    assert any("envoy_binary()" in s["value"] for s in steps if s["instruction"] == "RUN")
    assert any(s["instruction"] == "USER" and s["value"].startswith("10001") for s in steps)  # the uid the manifests run as


def test_triton_image_bakes_the_model_repository_with_gpu_configs() -> None:
    steps = _parse("Dockerfile.triton")
    (base,) = [s["value"] for s in steps if s["instruction"] == "FROM"]
    assert base.startswith("nvcr.io/nvidia/tritonserver:")
    copies = [s["value"] for s in steps if s["instruction"] == "COPY"]
    assert "triton_models /models" in copies
    assert any(c.startswith("triton_models/sidegate_models ") for c in copies)
    gpu = list((REPO_ROOT / "triton_models").glob("*/configs/gpu.pbtxt"))
    assert gpu and any("KIND_GPU" in p.read_text() for p in gpu)


def test_agent_listeners_are_published_like_ingress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({
        "version": "v0.3.0", "model_providers": [{"model": "openai/gpt-4o", "access_key": "$OPENAI_API_KEY"}],
        "agents": [{"id": "a", "url": "http://agent-a:8000"}, {"id": "b", "url": "http://agent-b:8000"}],
        "listeners": [{"type": "agent", "name": "travel", "port": 8001, "agents": [
            {"id": "a", "description": "weather"}, {"id": "b", "description": "flights"}]}]}))
    compose = yaml.safe_load(_render(path, tmp_path / "compose", target="compose")["compose.yaml"])
    assert compose["services"]["app"]["ports"] == ["10000:10000", "8001:8001"]
    assert "sidegate-triton" in compose["services"]  # the agent choice needs prompt_embed
    files = _render(path, tmp_path / "k8s", target="k8s")
    objects = _objects(files)
    envoy = next(c for c in objects["Deployment/app"]["spec"]["template"]["spec"]["initContainers"] if c["name"] == "sidegate-envoy")
    assert {"name": "agent-0", "containerPort": 8001} in envoy["ports"]
    assert {"name": "agent-0", "port": 8001, "targetPort": "agent-0"} in objects["Service/app"]["spec"]["ports"]
    deployed = tmp_path / "deployed.yaml"
    deployed.write_text(objects["ConfigMap/app-sidegate-config"]["data"]["config.yaml"])
    (lst,) = load_config(deployed, env={"OPENAI_API_KEY": "k"}).agent_listeners
    assert (lst.listener.address, lst.listener.port) == ("0.0.0.0", 8001)  # reached through the Service, as ingress
