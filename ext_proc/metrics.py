"""Prometheus metrics of the ext_proc service, served on ``/metrics`` of its HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One registry per service instance (tests start several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidegate_requests", "Requests seen by the ext_proc service", ["listener", "route", "outcome"], registry=r
        )
        self.phase_seconds = Histogram(
            "sidegate_ext_proc_phase_seconds",
            "Time the ext_proc service spends on one message phase",
            ["listener", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_status = Counter(
            "sidegate_upstream_responses", "Upstream responses by provider and status class", ["provider", "status"], registry=r
        )
        self.tokens = Counter(
            "sidegate_llm_tokens", "Tokens reported by providers in `usage`", ["provider", "direction"], registry=r
        )
        self.ttft_seconds = Histogram(
            "sidegate_time_to_first_token_seconds",
            "From forwarding a streaming request to its first SSE chunk",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.guard_verdicts = Counter("sidegate_guard_verdicts", "Jailbreak guard verdicts", ["verdict"], registry=r)
        self.output_guard_blocks = Counter(
            "sidegate_output_guard_blocks", "LLM answers replaced or stopped by prompt_guards.output_guards, by guard",
            ["listener", "guard"], registry=r,
        )
        self.guard_judge = Counter(
            "sidegate_guard_judge_calls", "Prompts in the guard's uncertain band sent to the judge, by outcome (yes, no, unavailable)",
            ["outcome"], registry=r,
        )
        self.agent_routes = Counter(
            "sidegate_agent_routes", "Requests on agent listeners by the agent chosen and how (match, context, default, only)",
            ["listener", "agent", "how"], registry=r,
        )
        self.route_decisions = Counter(
            "sidegate_route_decisions", "Preference-routing decisions by preference (none: the default provider) and how they were "
            "decided (named, embedding, none, unavailable)", ["preference", "decided_by"], registry=r,
        )
        self.intent_matches = Counter("sidegate_intent_matches", "Prompts matched to each prompt target", ["target"], registry=r)
        self.stage_seconds = Histogram(
            "sidegate_stage_seconds", "Latency of each prompt-pipeline stage", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.model_errors = Counter("sidegate_model_server_errors", "Failed calls to the model server", ["model"], registry=r)
        self.failovers = Counter("sidegate_provider_failovers", "Requests a fallback provider answered", ["provider", "fallback"], registry=r)
        self.errors = Counter("sidegate_errors", "Errors answered to clients", ["listener", "code"], registry=r)
        self.store_errors = Counter("sidegate_shared_store_errors", "Failed calls to the shared store (Redis), by error", ["kind"], registry=r)
        self.cache_lookups = Counter(
            "sidegate_response_cache_lookups", "Chat requests to providers by response-cache result (hit, miss, bypass)", ["listener", "result"],
            registry=r,
        )
        self.cache_bypasses = Counter("sidegate_response_cache_bypasses", "Response-cache bypasses by reason (no_cache, store_error)",
                                      ["reason"], registry=r)
        self.cache_not_stored = Counter("sidegate_response_cache_not_stored",
                                        "Answers after a miss not stored, by reason (status, tool_calls, too_large, incomplete, error, store_error)",
                                        ["reason"], registry=r)
        self.cache_stored_bytes = Counter("sidegate_response_cache_stored_bytes", "Bytes of answers written to the response cache",
                                          ["listener"], registry=r)
        self.cache_stored = Counter("sidegate_response_cache_stored", "Answers written to the response cache", ["listener"], registry=r)
