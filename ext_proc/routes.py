"""Every (listener, path) the ext_proc service serves, in one place.

Envoy tells the service which listener a stream comes from through the gRPC metadata
``x-sidegate-listener`` (set per listener in the rendered bootstrap). The processor is chosen by
the exact ``:path`` without its query string; anything else gets an immediate 404.
"""

from __future__ import annotations

import logging
from typing import Callable

from .chat import ChatProcessor, egress_router
from .config import Config
from .metrics import Metrics
from .pipeline import ingress_router
from .processor import Processor

__all__ = ["LISTENERS", "pick"]

LISTENERS = ("ingress", "egress")
Factory = Callable[[Config, Metrics, logging.LoggerAdapter], Processor]  # type: ignore[type-arg]

_ROUTES: dict[tuple[str, str], Factory] = {
    ("ingress", "/v1/chat/completions"): lambda cfg, m, log: ChatProcessor(
        cfg=cfg, listener="ingress", router=ingress_router, metrics=m, log=log
    ),
    ("egress", "/v1/chat/completions"): lambda cfg, m, log: ChatProcessor(
        cfg=cfg, listener="egress", router=egress_router, metrics=m, log=log
    ),
}


def pick(listener: str, path: str) -> Factory | None:
    return _ROUTES.get((listener, path.split("?", 1)[0]))


def served_paths(listener: str) -> list[str]:
    return sorted(p for (lst, p) in _ROUTES if lst == listener)
