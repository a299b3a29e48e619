"""The ``sidegate`` command line.

::

    sidegate up [CONFIG] [--demo] [-d]     validate, render, start Envoy + ext_proc (+ demo app)
    sidegate down                          stop what `up -d` started
    sidegate status                        each process: pid, health, where it listens
    sidegate logs [-f] [SERVICE]           envoy, ext_proc, triton, demo, supervisor
    sidegate validate CONFIG               check a config and Envoy's bootstrap from it; exit 2 with file/key/expectation if bad
    sidegate render CONFIG [--out DIR]     write the Envoy bootstrap it would run
    sidegate deploy CONFIG --target compose|k8s [--gpu] [--out DIR]   compose file or Kubernetes manifests
    sidegate serve CONFIG                  run the ext_proc service alone (what `up` starts)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from ext_proc.config import DEFAULT_CONFIG, Config, ConfigError, load_config

if TYPE_CHECKING:
    from ext_proc.control.supervisor import Service  # imported lazily at run time (process management is heavy)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

SERVICES = ("envoy", "ext_proc", "triton", "demo", "supervisor")


def _load(path: str | None) -> Config:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]config error[/red] {exc}")
        raise SystemExit(2) from exc
    for warning in cfg.warnings:  # every command that loads the config says it (validate, up, serve, ...)
        err_console.print(f"[yellow]config warning[/yellow] {cfg.source}: {warning}")
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """sidegate: an AI-native sidecar (Envoy + ext_proc + Triton) for apps that talk to LLMs."""


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--no-envoy", is_flag=True, help="skip envoy --mode validate on the rendered bootstrap")
def validate(config: str | None, no_envoy: bool) -> None:
    """Check CONFIG (default: the embedded config/default.yaml), then have Envoy validate the bootstrap it renders."""
    cfg = _load(config)
    if not no_envoy:
        from ext_proc.control.envoy_bin import EnvoyNotFound
        from ext_proc.control.envoy_check import EnvoyRefused, check_bootstrap

        try:
            check_bootstrap(cfg)
        except (EnvoyRefused, EnvoyNotFound) as exc:
            what = "Envoy refuses the bootstrap rendered from it" if isinstance(exc, EnvoyRefused) else "cannot run Envoy"
            err_console.print(f"[red]config error[/red] {cfg.source}: {what}:\n{exc}")
            raise SystemExit(2) from exc
    console.print(f"[green]ok[/green] {cfg.source}: {summary(cfg)}")


def summary(cfg: Config) -> str:
    """What a config sets up, in one line: providers (with their routing preferences), prompt
    targets, endpoints, and each agent listener with its agents (plano's agent-only configs have
    no prompt targets, and "0 prompt target(s)" alone read as if the agents had been dropped)."""
    preferences = sum(len(p.routing_preferences) for p in cfg.llm_providers)
    parts = [f"{len(cfg.llm_providers)} provider(s)" + (f" with {preferences} routing preference(s)" if preferences else ""),
             f"{len(cfg.prompt_targets)} prompt target(s)", f"{len(cfg.endpoints)} endpoint(s)"]
    parts += [f"agent listener {a.listener.name} (:{a.listener.port}) with {len(a.agents)} agent(s)" for a in cfg.agent_listeners]
    return ", ".join(parts)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="where to write envoy.yaml")
def render(config: str | None, out_dir: str) -> None:
    """Write the Envoy bootstrap for CONFIG to DIR/envoy.yaml (check it with `envoy --mode validate -c`)."""
    from ext_proc.control.envoy_bootstrap import write_bootstrap

    cfg = _load(config)
    path = write_bootstrap(cfg, Path(out_dir))
    console.print(f"wrote {path}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(["compose", "k8s"]), required=True, help="docker compose file, or Kubernetes manifests")
@click.option("--gpu", is_flag=True, help="Triton runs the models' configs/gpu.pbtxt (KIND_GPU) and asks for a GPU")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="where to write (default: ./deploy-<target>)")
@click.option("--image", default=None, help="the sidegate image built from deploy/docker/Dockerfile (default: sidegate:0.1.0)")
@click.option("--triton-image", default=None, help="the Triton image built from deploy/docker/Dockerfile.triton (default: sidegate-triton:0.1.0)")
@click.option("--app-name", default="app", show_default=True, help="name of the app's service / Deployment")
@click.option("--app-port", default=None, type=int, help="the app's own port, published (compose) or in its Service (k8s)")
def deploy(config: str, target: str, gpu: bool, out_dir: str | None, image: str | None, triton_image: str | None,
           app_name: str, app_port: int | None) -> None:
    """Write plain YAML that runs CONFIG beside an app container: a compose file, or Kubernetes
    manifests with a kustomization.yaml (provider keys by variable name only, never their values)."""
    from ext_proc.control.deploy import DEFAULT_IMAGE, DEFAULT_TRITON_IMAGE, DeployError, DeployOptions, load_for_deploy, render_deploy

    try:
        plan = load_for_deploy(config)
    except ConfigError as exc:
        err_console.print(f"[red]config error[/red] {exc}")
        raise SystemExit(2) from exc
    except DeployError as exc:
        err_console.print(f"[red]cannot deploy[/red] {exc}")
        raise SystemExit(2) from exc
    for warning in (*plan.cfg.warnings, *plan.warnings):
        err_console.print(f"[yellow]config warning[/yellow] {config}: {warning}")
    opts = DeployOptions(target=target, gpu=gpu, image=image or DEFAULT_IMAGE, triton_image=triton_image or DEFAULT_TRITON_IMAGE,
                         app_name=app_name, app_port=app_port)
    out = Path(out_dir or f"deploy-{target}")
    try:
        written = render_deploy(plan, opts, out)
    except DeployError as exc:
        err_console.print(f"[red]cannot deploy[/red] {exc}")
        raise SystemExit(2) from exc
    for path in written:
        console.print(f"wrote {path}")
    if plan.key_vars:
        where = ".env next to compose.yaml" if target == "compose" else f"the Secret {app_name}-sidegate-keys"
        console.print(f"set {', '.join(plan.key_vars)} in {where} (names in {out / '.env.example'})")
    if target == "k8s":
        console.print(f"then: kubectl apply -k {out}   and   kubectl port-forward deploy/{app_name} {plan.cfg.ingress.port}")
    else:
        console.print(f"then: docker compose -f {out / 'compose.yaml'} up")


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model-server", "model_server", default=None, help="Triton gRPC address grpc://HOST:PORT, or none (default: from CONFIG)")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--worker", type=int, default=None, help="serve as worker N (1-based) of ext_proc.workers only (what `sidegate up` starts)")
def serve(config: str | None, model_server: str | None, log_level: str, worker: int | None) -> None:
    """Run the ext_proc gRPC service (and its /healthz, /metrics HTTP port) in the foreground.

    With ext_proc.workers > 1 and no --worker (a container running `sidegate serve`): starts,
    watches and restarts every worker, as `sidegate up` does."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = _load(config)
    if model_server is not None:
        cfg = _with_model_server(cfg, "none" if model_server == "none" else "remote", model_server)
    workers = cfg.ext_proc.workers
    if worker is not None and not 1 <= worker <= workers:
        err_console.print(f"[red]--worker {worker}[/red]: ext_proc.workers is {workers}, so a worker is 1 to {workers}")
        raise SystemExit(2)
    if worker is None and workers > 1:
        from ext_proc.control import supervisor as sv

        env = {**os.environ, **cfg.secret_env(), "PYTHONUNBUFFERED": "1"}
        argv_model = model_server if model_server is not None else cfg.model_server.endpoint
        config_path = str(Path(config).resolve()) if config else str(DEFAULT_CONFIG)
        services = sv.ext_proc_services(cfg, config_path, argv_model, env)
        sup = sv.Supervisor(services, config_path=config_path, on_event=lambda svc, status: err_console.print(f"  {svc.name:<10} {status}"))
        raise SystemExit(sup.run())
    from ext_proc.dataplane.service import run

    run(cfg, worker=(worker or 1) - 1)


def _needs_models(cfg: Config) -> bool:
    from ext_proc.control.model_repo import needed_models

    return bool(needed_models(cfg))


def _local_mode(cfg: Config, *, chosen: bool) -> Config:
    """``cfg`` with its local mode settled: one left open is local-gpu where a usable GPU is
    found (DESIGN.md: --local-cpu is the default when none is); local-gpu asked for (flag or
    config) without a usable GPU stops here, before anything starts."""
    from ext_proc.control.triton_server import default_local_mode, gpu_check

    if cfg.model_server.auto_mode and not chosen:
        mode, why = default_local_mode()
        if why:
            console.print(why)
        return _with_model_server(cfg, mode)
    if cfg.model_server.mode == "local-gpu":
        found, problem = gpu_check()
        if problem:
            where = f" ({found})" if found else ""
            err_console.print(f"[red]cannot start the models on the GPU[/red]: {problem}{where}. Use --local-cpu.")
            raise SystemExit(2)
    return cfg


def _with_model_server(cfg: Config, mode: str, endpoint: str | None = None) -> Config:
    if endpoint is not None and mode == "remote" and not endpoint.startswith("grpc://"):
        err_console.print(f"[red]--model-server[/red] expects grpc://HOST:PORT, got {endpoint!r}")
        raise SystemExit(2)
    remote = endpoint if mode == "remote" else None
    ms = dataclasses.replace(cfg.model_server, mode=mode, endpoint_url=remote, endpoint_urls=(remote,) if remote else ())
    return dataclasses.replace(cfg, model_server=ms)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--demo", is_flag=True, help="also start the demo app (deploy/demo/app.py) on 127.0.0.1:18083")
@click.option("--demo-port", default=18083, show_default=True, help="port of the demo app")
@click.option("-d", "--detach", is_flag=True, help="return once everything is healthy; stop with `sidegate down`")
@click.option("--local-cpu", "mode", flag_value="local-cpu", help="start Triton here, models on the CPU (config.pbtxt)")
@click.option("--local-gpu", "mode", flag_value="local-gpu",
              help="start Triton here, models on the GPU (configs/gpu.pbtxt); the default where a GPU and a CUDA build of torch are found")
@click.option("--model-server", "model_server", default=None, metavar="URL", help="use the Triton at grpc://HOST:PORT; start none")
@click.option("--supervise", is_flag=True, hidden=True)
def up(
    config: str | None, demo: bool, demo_port: int, detach: bool, mode: str | None, model_server: str | None, supervise: bool
) -> None:
    """Validate CONFIG, render Envoy's bootstrap, start every process and wait until each is healthy."""
    from ext_proc.control import supervisor as sv
    from ext_proc.control.envoy_bootstrap import write_bootstrap

    if mode and model_server:
        err_console.print("[red]choose one of --local-cpu, --local-gpu and --model-server[/red]")
        raise SystemExit(2)
    cfg = _load(config)
    if model_server:
        cfg = _with_model_server(cfg, "remote", model_server)
    elif mode:
        cfg = _with_model_server(cfg, mode)
    if cfg.model_server.local and _needs_models(cfg):
        cfg = _local_mode(cfg, chosen=bool(mode))
        mode = cfg.model_server.mode  # the supervisor started by -d runs the same
    config_path = str(Path(config).resolve()) if config else str(DEFAULT_CONFIG)
    state = sv.read_state()
    if state and sv.pid_alive(state["supervisor_pid"]) and not supervise:
        err_console.print(f"[red]sidegate is already running[/red] (pid {state['supervisor_pid']}): `sidegate down` first")
        raise SystemExit(1)
    if not supervise:
        taken = sv.check_ports(cfg, demo, demo_port)
        if taken:
            err_console.print("[red]cannot start:[/red] " + "; ".join(taken) + ". Is another sidegate running? Try `sidegate status`.")
            raise SystemExit(1)
    sv.home().mkdir(parents=True, exist_ok=True)
    if detach and not supervise:
        extra = ["--model-server", model_server] if model_server else ([f"--{mode}"] if mode else [])
        _detach(config_path, demo, demo_port, extra)
        return
    bootstrap = write_bootstrap(cfg, sv.home() / "run")
    services = sv.services_for(cfg, config_path, demo=demo, bootstrap=bootstrap, demo_port=demo_port)

    def on_event(svc: sv.Service, status: str) -> None:
        if status == "ready":
            _print_ready(services)
            console.print("Ctrl-C stops everything." if not supervise else "")
        else:
            colour = {"healthy": "green", "starting": "yellow", "warming:": "yellow", "stopped": "dim"}.get(status.split(" ")[0], "red")
            console.print(f"  {svc.name:<9} [{colour}]{status}[/{colour}]")

    console.print(f"sidegate up: {config_path}")
    code = sv.Supervisor(services, config_path=config_path, on_event=on_event).run()
    if code:
        err_console.print("[red]sidegate did not start[/red]: see `sidegate logs` (files in " + str(sv.home() / "logs") + ")")
    raise SystemExit(code)


def _detach(config_path: str, demo: bool, demo_port: int, extra: list[str]) -> None:
    """Start a supervisor in its own session, show its progress, return when it is ready."""
    from ext_proc.control import supervisor as sv

    logs = sv.home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ext_proc", "up", config_path, "--supervise", "--demo-port", str(demo_port)]
    argv += (["--demo"] if demo else []) + extra
    with open(logs / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    shown: dict[str, str] = {}
    # Triton may take its 300 s start timeout, ext_proc its 180 s warm-up; a failure ends sooner
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = sv.read_state()
        if state and state.get("supervisor_pid") == proc.pid:
            for s in state["services"]:
                if s["status"] != "pending" and shown.get(s["name"]) != s["status"]:
                    shown[s["name"]] = s["status"]
                    console.print(f"  {s['name']:<9} {s['status']}")
            if all(s["status"] == "healthy" for s in state["services"]):
                _print_table(state["services"])
                console.print(f"running in the background (supervisor pid {proc.pid}); stop with `sidegate down`")
                return
        if proc.poll() is not None:
            err_console.print(f"[red]sidegate did not start[/red] (exit {proc.returncode}): see `sidegate logs supervisor`")
            raise SystemExit(1)
        time.sleep(0.2)
    err_console.print("[red]timed out waiting for sidegate to become healthy[/red]: see `sidegate logs`")
    raise SystemExit(1)


def _print_table(services: list[dict[str, Any]]) -> None:
    table = Table(title="sidegate")
    for col in ("service", "pid", "status", "listens"):
        table.add_column(col)
    for s in services:
        table.add_row(s["name"], str(s.get("pid") or "-"), s["status"], s["listens"])
    console.print(table)
    for s in services:
        if s.get("warning"):
            console.print(f"[red]{s['name']}[/red]: {s['warning']}")


def _print_ready(services: list[Service]) -> None:
    _print_table([s.public() for s in services])


@main.command()
def down() -> None:
    """Stop every process `sidegate up -d` started."""
    from ext_proc.control.supervisor import stop_running

    ok, message = stop_running()
    (console if ok else err_console).print(message)
    raise SystemExit(0 if ok else 1)


@main.command()
def status() -> None:
    """Show each process: pid, whether it is alive and healthy, where it listens."""
    from ext_proc.control import supervisor as sv

    state = sv.read_state()
    if state is None or not sv.pid_alive(state["supervisor_pid"]):
        console.print("sidegate is not running")
        raise SystemExit(3)
    rows = []
    healthy = True
    for s in state["services"]:
        alive = bool(s.get("pid")) and sv.pid_alive(s["pid"])
        ok = alive and sv.http_ok(s["health_url"], s.get("health_expect"))
        healthy &= ok
        row = {**s, "status": "healthy" if ok else ("running, unhealthy" if alive else "down")}
        if ok and s.get("warm_timeout"):  # as it is now: a model server down at `up` may have come back since
            row["warning"] = sv.warm_warning(str(sv.health_json(s["health_url"]).get("warm", "done")))
        rows.append(row)
    console.print(f"config: {state['config']}  supervisor pid {state['supervisor_pid']}")
    _print_table(rows)
    raise SystemExit(0 if healthy else 1)


@main.command()
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("-n", "--lines", default=50, show_default=True, help="lines of each log to show first")
@click.argument("service", required=False)
def logs(follow: bool, lines: int, service: str | None) -> None:
    """Print the logs of SERVICE (default: all of them): envoy, ext_proc (every worker; ext_proc-2
    for one of them), triton (every replica; triton-2 for one of them), demo, supervisor."""
    from ext_proc.control.supervisor import home

    found = sorted(p.stem for p in (home() / "logs").glob("*.log"))
    if service is not None and service not in SERVICES and service not in found:
        err_console.print(f"no service {service!r}: one of {', '.join(sorted(set(SERVICES) | set(found)))}")
        raise SystemExit(2)
    if service is None:
        names = [n for n in found if n in SERVICES or n.startswith(("triton-", "ext_proc-"))] or list(SERVICES)
    elif service in ("triton", "ext_proc"):  # every replica's / worker's log
        names = [n for n in found if n == service or n.startswith(f"{service}-")] or [service]
    else:
        names = [service]
    files = {n: home() / "logs" / f"{n}.log" for n in names}
    files = {n: p for n, p in files.items() if p.exists()}
    if not files:
        err_console.print(f"no logs yet in {home() / 'logs'}")
        raise SystemExit(1)
    prefix = len(files) > 1
    offsets: dict[str, int] = {}
    for n, p in files.items():
        data = p.read_bytes()
        for line in data.decode("utf-8", "replace").splitlines()[-lines:]:
            click.echo(f"{n:<9}| {line}" if prefix else line)
        offsets[n] = len(data)
    while follow:
        time.sleep(0.25)
        for n, p in files.items():
            size = p.stat().st_size if p.exists() else 0
            if size < offsets[n]:
                offsets[n] = 0  # truncated or rotated
            if size > offsets[n]:
                with open(p, "rb") as fh:
                    fh.seek(offsets[n])
                    chunk = fh.read()
                offsets[n] += len(chunk)
                for line in chunk.decode("utf-8", "replace").splitlines():
                    click.echo(f"{n:<9}| {line}" if prefix else line)

