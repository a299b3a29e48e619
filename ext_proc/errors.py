"""The few errors a client of sidegate can see, and the one function that renders them.

::

    SidegateError                      OpenAI error JSON: {"error": {"message", "type", "code", "param"}}
     ├── MalformedRequest      400     not JSON, missing `messages`, wrong types, unknown provider hint
     ├── NotFound              404     a path sidegate does not serve
     ├── MethodNotAllowed      405
     ├── RateLimited           429     over a `ratelimits` token budget (with `retry-after`)
     ├── UpstreamError         status of the upstream (endpoint 4xx/5xx), 502 bad gateway, 504 timeout
     └── ModelServerError      503     Triton unreachable or failing, when the stage fails closed;
                               504     a model slower than its deadline (``model_server_timeout``)

Bodies over ``max_body_bytes`` never reach Python: Envoy answers 413 itself, and the rendered
bootstrap's local-reply mapper writes the same JSON shape (``request_too_large``).

Anything else raised while handling a request is a bug: it becomes a generic 500 that names the
request id (see :func:`render_error`), and the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ext_proc.names import ERROR_HEADER

__all__ = [
    "openai_error_of",
    "MalformedRequest",
    "MethodNotAllowed",
    "ModelServerError",
    "NotFound",
    "RateLimited",
    "RenderedError",
    "SidegateError",
    "UpstreamError",
    "render_error",
]


class SidegateError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param


class MalformedRequest(SidegateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFound(SidegateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(SidegateError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(SidegateError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamError(SidegateError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ModelServerError(SidegateError):
    status = 503
    type = "server_error"
    code = "model_server_unavailable"


@dataclass(frozen=True, kw_only=True)
class RenderedError:
    status: int
    body: bytes
    headers: dict[str, str]


def render_error(exc: BaseException, *, request_id: str = "") -> RenderedError:
    """Turn an exception into what the client receives. Only :class:`SidegateError` text leaves."""
    if isinstance(exc, SidegateError):
        status, etype, code, message, param = exc.status, exc.type, exc.code, exc.message, exc.param
    else:
        status, etype, code, param = 500, "server_error", "internal_error", None
        message = f"sidegate failed to process the request (request id {request_id or 'unknown'}); see `sidegate logs ext_proc`"
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    headers = {"content-type": "application/json", ERROR_HEADER: code}
    if request_id:
        headers["x-request-id"] = request_id
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return RenderedError(status=status, body=json.dumps(body).encode(), headers=headers)


def openai_error_of(body: bytes) -> dict[str, Any] | None:
    """The ``error`` object of a body that is OpenAI's error and nothing else,
    ``{"error": {"message": str, "code": str, ...}}``: what :func:`render_error` and Envoy's local
    replies (the bootstrap's mappers) write; None for anything else (a provider's or an app's own)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    error = payload.get("error") if isinstance(payload, dict) and set(payload) == {"error"} else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("code"), str):
        return error
    return None
