"""What the rate limits (ratelimit.py) and the response cache (cache.py) share about ``shared_store``:
how a Redis connection is opened, and what counts as Redis failing.

Both bound every call by ``shared_store.timeout`` and treat a failure the same way (count it, then
fall back: count locally, or bypass the cache), so a slow Redis is a failing one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ext_proc.config import SharedStore

__all__ = ["redis_client", "redis_errors"]


def redis_client(store: SharedStore) -> Any:
    """An asyncio Redis client for ``store.url`` whose connects and reads time out after ``store.timeout``."""
    import redis.asyncio as aioredis  # only with shared_store.type: redis

    assert store.url is not None
    return aioredis.Redis.from_url(store.url, socket_timeout=store.timeout_s, socket_connect_timeout=store.timeout_s)


def redis_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean Redis is unavailable: its own errors, the socket's, and our call deadline."""
    import redis

    return (redis.RedisError, OSError, asyncio.TimeoutError)
