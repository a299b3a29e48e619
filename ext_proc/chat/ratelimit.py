"""Token rate limits (``ratelimits`` in the config): over budget → ``429``, nothing forwarded.

Each ``ratelimits[]`` entry is a token bucket that holds at most ``limit.tokens`` and refills at
``limit.tokens`` per ``limit.unit``. It applies to requests forwarded to a provider whose
``name`` or ``model`` equals the entry's ``model``, on both listeners (egress calls and the
ingress pipeline's LLM calls). With a ``selector``, a request is counted only when it carries
the header ``selector.key`` (and, when ``selector.value`` is given, only with that value); one
bucket is kept per header value, so ``selector: {key: x-user-id}`` is a budget per user.

Counting, without a tokenizer (tiktoken would fetch its files at run time): before forwarding,
the prompt is estimated at one token per 4 characters of message text (plus 4 per message), and
that much is taken from the bucket; a request that does not fit gets 429 with ``retry-after``.
When the provider's answer reports ``usage.total_tokens``, the difference to the estimate is
charged too, so long answers use up the budget they cost: the bucket may go below zero and later
requests wait until it refills.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ext_proc.config import LlmProvider, RateLimit
from ext_proc.errors import RateLimited
from ext_proc.wire.openai import content_text

__all__ = ["Charge", "RateLimiter", "estimate_tokens"]

_MAX_BUCKETS = 10_000  # per limit: selector values beyond this share the oldest buckets' fate (evicted)


def estimate_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """~4 characters per token (OpenAI's rule of thumb), plus 4 tokens of framing per message."""
    chars = n = 0
    for m in messages:
        n += 1
        chars += len(content_text(m.get("content")))
    return math.ceil(chars / 4) + 4 * n


@dataclass
class _Bucket:
    level: float
    stamp: float


@dataclass
class _Limit:
    rule: RateLimit
    rate: float  # tokens per second
    buckets: dict[str | None, _Bucket] = field(default_factory=dict)

    def bucket(self, key: str | None, now: float) -> _Bucket:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= _MAX_BUCKETS:
                self.buckets.pop(next(iter(self.buckets)))
            b = self.buckets[key] = _Bucket(level=float(self.rule.tokens), stamp=now)
        else:  # refill for the time that passed, up to the limit
            b.level = min(float(self.rule.tokens), b.level + (now - b.stamp) * self.rate)
            b.stamp = now
        return b


@dataclass
class Charge:
    """What one admitted request took, so the real usage can be settled when the answer comes."""

    estimate: int
    buckets: list[tuple[_Limit, str | None]]


class RateLimiter:
    def __init__(self, rules: Iterable[RateLimit], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = [_Limit(rule=r, rate=r.tokens / r.per_seconds) for r in rules]
        self._clock = clock

    def __bool__(self) -> bool:
        return bool(self._limits)

    def _applicable(self, provider: LlmProvider, headers: Mapping[str, str]) -> list[tuple[_Limit, str | None]]:
        out = []
        for lim in self._limits:
            rule = lim.rule
            if rule.model not in (provider.name, provider.model):
                continue
            key = None
            if rule.selector_key:
                key = headers.get(rule.selector_key.lower())
                if key is None or (rule.selector_value is not None and key != rule.selector_value):
                    continue
            out.append((lim, key))
        return out

    def admit(self, provider: LlmProvider, headers: Mapping[str, str], messages: Iterable[Mapping[str, Any]]) -> Charge | None:
        """Take the request's estimated tokens from every bucket that applies, or raise :class:`RateLimited`."""
        applicable = self._applicable(provider, headers)
        if not applicable:
            return None
        estimate = estimate_tokens(messages)
        now = self._clock()
        buckets = [(lim, key, lim.bucket(key, now)) for lim, key in applicable]
        for lim, key, b in buckets:
            rule = lim.rule
            if estimate > rule.tokens:
                raise RateLimited(
                    f"the request (about {estimate} tokens) is larger than the rate limit for {rule.model!r} "
                    f"({rule.tokens} tokens per {rule.unit}): send a shorter prompt or raise ratelimits[].limit.tokens",
                    retry_after_s=None,
                )
            if b.level < estimate:
                wait = math.ceil((estimate - b.level) / lim.rate)
                who = f" for {rule.selector_key} {key!r}" if rule.selector_key else ""
                raise RateLimited(
                    f"rate limit exceeded for {rule.model!r}{who}: {rule.tokens} tokens per {rule.unit}; "
                    f"about {estimate} tokens requested, {max(0, int(b.level))} left; retry in {wait} s",
                    retry_after_s=wait,
                )
        for _, _, b in buckets:
            b.level -= estimate
        return Charge(estimate=estimate, buckets=applicable)

    def settle(self, charge: Charge, total_tokens: int) -> None:
        """Charge the difference between the provider's reported usage and the estimate taken."""
        extra = total_tokens - charge.estimate
        if extra == 0:
            return
        now = self._clock()
        for lim, key in charge.buckets:
            b = lim.bucket(key, now)
            b.level = min(float(lim.rule.tokens), b.level - extra)  # a refund never overfills
