"""plano's routing-decision endpoints: ``POST /routing/v1/chat/completions``, ``/routing/v1/messages``
and ``/routing/v1/responses`` on the egress listener answer which provider and model the request
would go to, and by which routing preference, without sending it anywhere::

    {"models": ["anthropic/claude-sonnet-4-6"], "route": "code generation", "provider": "coder",
     "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}

The decision is the egress listener's own (the hint header, ``route_named_models``, the named
model, the preferences, the default provider: :func:`ext_proc.chat.completions.preference_egress_router`),
so a user can check routing on their own prompts before any provider is called. ``route`` is null
when no preference chose. plano returns a ranked list of a preference's models; sidegate sends a
preference to one provider, so ``models`` holds that provider's model.
"""

from __future__ import annotations

import json
import logging

from ext_proc.chat.completions import Forward, Router, request_problem
from ext_proc.chat.conversations import Conversations
from ext_proc.chat.translate import Exchange
from ext_proc.config import Config
from ext_proc.errors import SidegateError
from ext_proc.metrics import Metrics
from ext_proc.processor import CONTINUE, Immediate, PassThrough, Reply

__all__ = ["DECISION_PREFIX", "RoutingDecision"]

DECISION_PREFIX = "/routing"  # plano's: /routing + a client API's path


class RoutingDecision(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for a routing-decision request in ``api``."""

    def __init__(self, *, cfg: Config, router: Router, metrics: Metrics, log: logging.LoggerAdapter[logging.Logger], api: str,
                 conversations: Conversations | None = None) -> None:
        self.cfg, self.router, self.metrics, self.log = cfg, router, metrics, log
        self.exchange = Exchange(api)
        self.conversations = conversations  # a Responses request's previous_response_id: decided on the conversation it names
        self.headers: dict[str, str] = {}
        self.outcome = "incomplete"

    def _error(self, exc: SidegateError) -> Immediate:
        self.outcome = f"error_{exc.status}"
        self.metrics.errors.labels("egress", exc.code).inc()
        return Immediate.from_error(self.exchange.error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        problem = request_problem(headers, end_of_stream)
        return CONTINUE if problem is None else self._error(problem)

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            req = await self.exchange.read(body, self.conversations)
            decision = await self.router(self.cfg, self.headers, req)
        except SidegateError as exc:
            return self._error(exc)
        assert isinstance(decision, Forward), "the egress router forwards or raises"
        sent = json.loads(decision.body).get("model") if decision.body is not None else req.model  # the router's body names the model sent
        model = sent or decision.provider.model or ""
        traceparent = self.headers.get("traceparent", "").split("-")
        answer = {"models": [f"{decision.provider.interface}/{model}" if model else decision.provider.interface],
                  "route": decision.route, "provider": decision.provider.name,
                  "trace_id": traceparent[1] if len(traceparent) == 4 else self.headers.get("x-request-id", "")}
        self.outcome = "decided"
        return Immediate(status=200, body=json.dumps(answer).encode(), headers={"content-type": "application/json"}, details="decided")

    def finish(self) -> None:
        self.metrics.requests.labels("egress", "routing_decision", self.outcome).inc()
