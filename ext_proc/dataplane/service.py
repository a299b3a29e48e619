"""``python -m ext_proc serve``: the ext_proc gRPC server plus its HTTP side (/healthz, /metrics).

Lifecycle: both servers start on one uvloop event loop; SIGTERM or SIGINT flips /healthz to 503
(so the supervisor and load balancers stop sending), lets in-flight streams finish for up to
``grace`` seconds, then stops.

Warming: with a model server, the service embeds the prompt targets and pre-fills function_call's
prompt prefix of each target in the background after it starts. /healthz answers 200 throughout
and says how far that got in ``warm`` ("embedding prompt targets, agents", "pre-filling function_call
prompts (1/2)", then "done" or "done: ..." with what was left out: a target function_call refuses,
a pre-fill that failed or timed out); ``sidegate up`` waits for "done" so that its first request
does not queue behind a ~7 s pre-fill, and prints what follows "done: " as a warning.

Refilling: the prefixes live in function_call's llama.cpp slots, which a restarted Triton or a
reloaded stub starts without. :func:`_refill` asks every Triton this process uses whether
function_call is ready every :data:`REFILL_POLL_S` seconds and pre-fills again when it comes
back, so the first requests after a restart do not pay ~7 s per target (or time out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ext_proc import telemetry
from ext_proc.config import Config
from ext_proc.dataplane.routes import Services
from ext_proc.dataplane.server import create_server
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models import local_llm
from ext_proc.models.base import Models
from ext_proc.names import MULTIPROC_ENV

__all__ = ["run", "serve", "start_http"]

log = logging.getLogger("sidegate.ext_proc")

REFILL_POLL_S = 2.0  # how often function_call's readiness is asked (one small RPC per Triton)


async def start_http(
    cfg: Config, metrics: Metrics, state: dict[str, bool | str], port: int | None = None, models: Models | None = None
) -> tuple[web.AppRunner, int]:
    async def healthz(_: web.Request) -> web.Response:
        if state.get("serving"):
            return web.json_response({"status": "ok", "config": cfg.source, "warm": state.get("warm", "done")})
        return web.json_response({"status": "draining"}, status=503)

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(_registry(metrics)), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    local_llm.add_routes(app, getattr(models, "client", None), timeout_s=cfg.model_server.timeout_for("chat_llm"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.ext_proc.address, cfg.ext_proc.http_port if port is None else port)
    await site.start()
    bound = runner.addresses[0][1]  # the port actually bound (port 0: the kernel's choice)
    return runner, bound


def _registry(metrics: Metrics) -> Any:
    """What /metrics shows: with several workers (``PROMETHEUS_MULTIPROC_DIR`` set by whoever
    started them), every worker's counters summed from the directory they all write to (a
    worker that restarted keeps counting from what its predecessor wrote); else this process's."""
    if not os.environ.get(MULTIPROC_ENV):
        return metrics.registry
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def _models(cfg: Config) -> Models | None:
    endpoint = cfg.model_server.endpoint
    if endpoint is None:
        return None
    from ext_proc.models.triton import TritonClient, TritonModels  # tritonclient is only needed with a model server

    log.info("model server: %s (%s)", endpoint, cfg.model_server.mode)
    ms = cfg.model_server
    replicas = [f"grpc://{host}:{port}" for host, port in ms.replica_targets] if ms.balanced else []
    return TritonModels(TritonClient(endpoint, replicas=replicas), timeout_s=ms.timeout_s, timeouts=dict(ms.timeouts))


async def _warm(services: Services, state: dict[str, bool | str], *, refill: bool = True) -> None:
    """Embed the prompt-target, preference and agent descriptions now rather than on the first request (retry while
    Triton starts), then fill function_call's cached prompt prefix of each target; ``state["warm"]``
    (shown by /healthz) says which step is running. ``refill``: go on to :func:`_refill` (one
    worker of several does: the prefixes are Triton's, shared by all)."""
    if services.models is None:
        state["warm"] = "done"
        return
    what = [name for name, present in (("prompt targets", services.ingress.intent_targets),
                                       ("routing preferences", services.ingress.preferences is not None),
                                       ("agents", services.agents)) if present]
    state["warm"] = f"embedding {', '.join(what) or 'nothing'}"
    for attempt in range(30):
        try:
            await services.ingress.warm()
            for router in services.agents.values():  # agent listeners: their agents' descriptions (issue 19)
                await router.warm()
            break
        except ModelServerError as exc:
            if attempt == 0:
                log.warning("cannot embed prompt targets yet (%s); retrying", exc.message)
                # nothing to wait for (`sidegate up` starts a local Triton before this service, so
                # this is a remote one that is down): requests answer 503 until it is back
                state["warm"] = "done: the model server does not answer yet, retrying in the background"
            await asyncio.sleep(2)
    else:
        log.error("prompt targets are not embedded: intent matching will retry on the first request")
        state["warm"] = "done: prompt targets not embedded (model server unreachable)"
        return
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        state["warm"] = f"pre-filling function_call prompts ({done}/{total})"

    if filled := await services.ingress.prefill_function_call(progress=progress):
        log.info("function_call prompt prefixes of %d target(s) cached in %.1fs", filled, time.perf_counter() - started)
    refused, unfilled = services.ingress.refused, services.ingress.unfilled
    problems = []
    if refused:
        problems.append(f"function_call refuses prompt target(s) {', '.join(refused)}, whose requests will get 400: "
                        f"{next(iter(refused.values()))}")
    if unfilled:
        problems.append(f"function_call prompt of target(s) {', '.join(unfilled)} not pre-filled, so their first requests "
                        f"may be slow or time out: {next(iter(unfilled.values()))}")
    state["warm"] = "done: " + "; ".join(problems) if problems else "done"
    if refill:  # the prefixes live in Triton: one worker refilling them is enough
        await _refill(services, filled_all=not unfilled)


async def _refill(services: Services, *, filled_all: bool, poll_s: float = REFILL_POLL_S) -> None:
    """Pre-fill function_call's prompt prefixes again on each Triton whose function_call comes
    back (not ready, then ready: a restarted server or a reloaded stub); with several replicas
    each is asked and refilled on its own address, since a call through the balancer could land
    on another one. Runs until cancelled."""
    from ext_proc.models.triton import FUNCTION_CALL_MODEL, TritonClient, TritonModels  # only with a model server

    models = services.models
    client = getattr(models, "client", None)
    if not isinstance(models, TritonModels) or not isinstance(client, TritonClient) or not services.ingress.prefills:
        return
    own = {url: TritonClient(url, auto_reload=False) for url in client.replicas if url != client.url}
    clients = {url: own.get(url, client) for url in client.replicas or [client.url]}
    ready = dict.fromkeys(clients, filled_all)
    try:
        while True:
            await asyncio.sleep(poll_s)
            for url, one in clients.items():
                now = await one.ready(models=[FUNCTION_CALL_MODEL])
                if now and not ready[url]:
                    log.info("function_call is ready again at %s: pre-filling the prompt prefixes of its targets", url)
                    started = time.perf_counter()
                    via = models if one is client else TritonModels(one, timeout_s=models.timeout_s, timeouts=models.timeouts)
                    filled = await services.ingress.prefill_function_call(models=via)
                    log.info("function_call at %s: %d prompt prefix(es) pre-filled again in %.1fs", url, filled, time.perf_counter() - started)
                ready[url] = now
    finally:
        for one in own.values():
            await one.close()


async def serve(cfg: Config, *, grace: float = 5.0, worker: int = 0) -> None:
    """Serve as worker ``worker`` (0-based) of ``ext_proc.workers``: gRPC on ``port + worker``,
    HTTP on ``http_port + worker``."""
    telemetry.setup(cfg)  # no tracing.otlp_endpoint: nothing at all
    services = Services.create(cfg, models=_models(cfg))
    metrics = services.metrics
    state: dict[str, bool | str] = {"serving": False, "warm": "starting"}
    warming = asyncio.get_running_loop().create_task(_warm(services, state, refill=worker == 0))
    grpc_port, http_port = cfg.ext_proc.worker_ports(worker)
    server, port = await create_server(services, f"{cfg.ext_proc.address}:{grpc_port}")
    await server.start()
    runner, http_port = await start_http(cfg, metrics, state, port=http_port, models=services.models)
    state["serving"] = True
    who = f"worker {worker + 1}/{cfg.ext_proc.workers} " if cfg.ext_proc.workers > 1 else ""
    log.info("ext_proc %slistening: gRPC %s:%d, HTTP %s:%d (config %s)", who, cfg.ext_proc.address, port, cfg.ext_proc.address, http_port,
             cfg.source)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("ext_proc stopping: draining for up to %.0fs", grace)
    state["serving"] = False
    warming.cancel()
    await server.stop(grace)
    await runner.cleanup()
    await services.close()
    await asyncio.get_running_loop().run_in_executor(None, telemetry.shutdown)  # flush, bounded by the export timeout
    log.info("ext_proc stopped")


def run(cfg: Config, worker: int = 0) -> None:
    uvloop.run(serve(cfg, worker=worker))
