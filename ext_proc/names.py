"""Names two processes must agree on, each defined once (tests/unit/test_names.py checks both sides).

Envoy ↔ ext_proc: the rendered bootstrap (:mod:`ext_proc.control.envoy_bootstrap`) routes on
headers that the request path (:mod:`ext_proc.chat`, :mod:`ext_proc.dataplane`) sets and reads.
Triton ↔ ext_proc: the model client recognises errors by words that Triton's python backend, or our
own models (``triton_models/sidegate_models/backend.py``), put in their messages.
"""

from __future__ import annotations

import re

__all__ = [
    "ANTHROPIC_VERSION",
    "ANTHROPIC_VERSION_HEADER",
    "AGENT_HEADER",
    "AGENT_LISTENER_PREFIX",
    "ARCH_STATE_KEY",
    "CHAT_COMPLETIONS_PATH",
    "ATTEMPT_HEADER",
    "CACHE_HEADER",
    "ERROR_HEADER",
    "GUARD_HEADER",
    "INVALID_INPUT_MARK",
    "LISTENER_METADATA",
    "MESSAGES_PATH",
    "RESPONSES_PATH",
    "OUTPUT_BLOCKED",
    "PROVIDER_HEADER",
    "PROVIDER_HINT_HEADER",
    "ROUTE_HEADER",
    "STUB_DEAD",
    "STUB_DEAD_INSTANCE",
    "UPSTREAM_HEADER",
]

# -- Envoy ↔ ext_proc ---------------------------------------------------------------------------
UPSTREAM_HEADER = "x-sidegate-upstream"  # the cluster ext_proc chose; Envoy's routes match on it
LISTENER_METADATA = "x-sidegate-listener"  # gRPC initial metadata of each listener's ext_proc filter
AGENT_LISTENER_PREFIX = "agent:"  # LISTENER_METADATA of an agent listener: "agent:<listener name>"
ATTEMPT_HEADER = "x-envoy-attempt-count"  # Envoy's retry count on an answer: which fallback answered

# -- what clients see or send -------------------------------------------------------------------
PROVIDER_HEADER = "x-sidegate-provider"  # on answers: the provider that answered
AGENT_HEADER = "x-sidegate-agent"  # on an agent listener's answers: the agent chosen
GUARD_HEADER = "x-sidegate-guard"  # "blocked" on the guard's own answer
OUTPUT_BLOCKED = "output_blocked"  # GUARD_HEADER on a JSON answer the output guards replaced (prompt_guards.output_guards)
CACHE_HEADER = "x-sidegate-cache"  # hit | miss | bypass on chat answers when response_cache is configured
ERROR_HEADER = "x-sidegate-error"  # on sidegate's error answers: the error code
PROVIDER_HINT_HEADER = "x-arch-llm-provider-hint"  # Arch's header: the provider a client asks for
ROUTE_HEADER = "x-sidegate-route"  # on answers: the routing preference that chose the provider (issue 19)
ARCH_STATE_KEY = "x-arch-state"  # Arch's key in `metadata`: a pending target and its arguments

# -- provider APIs --------------------------------------------------------------------------------
ANTHROPIC_VERSION_HEADER = "anthropic-version"  # required by the Messages API; Envoy adds it when the client did not
ANTHROPIC_VERSION = "2023-06-01"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"  # OpenAI's (and every OpenAI-compatible provider's)
MODELS_PATH = "/v1/models"  # GET: the models a client can name (OpenAI's list, or Anthropic's)
MESSAGES_PATH = "/v1/messages"  # Anthropic's
RESPONSES_PATH = "/v1/responses"  # OpenAI's Responses API (presented over chat completions: wire/responses.py)

# -- Triton ↔ ext_proc --------------------------------------------------------------------------
# Triton 2.51's python backend, for a request that reaches a crashed stub (its message, not ours)
STUB_DEAD = "is not healthy"
STUB_DEAD_INSTANCE = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
# A decoupled model's gRPC stream carries an error's message but not its code, so the llama.cpp
# models mark refused input in the message (triton_models/sidegate_models/backend.py has the same
# words: the model side cannot import this package in a Triton-only image)
INVALID_INPUT_MARK = "invalid input"
# ext_proc.workers > 1: the directory every worker writes its metrics to (prometheus_client's
# multiprocess mode reads this variable when it is imported), set by whoever starts the workers
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# ext_proc.workers > 1 with shared_store.type memory: the directory of the SQLite files every worker
# of one `sidegate up` (one host) shares, the token budgets of ratelimits and the response cache,
# set by whoever starts the workers
WORKERS_STATE_ENV = "SIDEGATE_WORKERS_STATE"
BUCKETS_FILE = "ratelimit-buckets.sqlite"
CACHE_FILE = "response-cache.sqlite"
STATE_FILE = "responses-state.sqlite"  # state_storage: the Responses API's stored responses
