"""The sidegate demo app: an OpenAI-compatible echo "LLM" plus Arch-demo style prompt-target endpoints.

``python deploy/demo/app.py --host 127.0.0.1 --port 18083`` (what ``make up`` / ``sidegate up --demo``
start beside the gateway). Routes:

- ``GET  /healthz``                  ``{"status": "ok"}``
- ``POST /v1/chat/completions``      echo reply, stream or not (the default config's LLM provider)
- ``GET  /v1/models``                the one model, ``demo-echo``
- ``POST /weather``                  ``{"location": str, "days": int 1..16 = 7}`` → deterministic forecast
- ``GET  /exchange/{currency}``      USD → currency rate (fixed table), 404 for an unknown code
- ``POST /default``                  ``{"reply": greeting}``, the default prompt target
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
from typing import Any

from aiohttp import web

from ext_proc.errors import MalformedRequest
from ext_proc.wire.openai import chat_completion, content_text, parse_chat_request, sse_frames

log = logging.getLogger("sidegate.demo")

MODEL = "demo-echo"
CONDITIONS = ("sunny", "partly cloudy", "cloudy", "light rain", "rain", "thunderstorms", "fog", "snow", "windy")
# Units of the currency per 1 USD: fixed, so answers are reproducible (not live market data).
USD_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 151.4,
    "CHF": 0.88,
    "CAD": 1.36,
    "AUD": 1.52,
    "CNY": 7.23,
    "INR": 83.3,
    "MXN": 17.1,
    "BRL": 5.05,
    "SEK": 10.6,
}
GREETING = (
    "Hello! I'm the sidegate demo assistant. I can give you a weather forecast for a city "
    "or the exchange rate from US dollars to another currency. What would you like to know?"
)


def error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": code}}, status=status)


def echo_reply(text: str) -> str:
    return f"(demo-echo) You said: {text}. This is the sidegate demo app, not a real model."


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def forecast(location: str, days: int, start: dt.date | None = None) -> list[dict[str, Any]]:
    """``days`` daily entries whose values depend only on the location (and the day index)."""
    start = start or dt.datetime.now(dt.UTC).date()
    key = " ".join(location.split()).casefold()
    base = _seed(key) % 30 - 5  # the location's climate: -5..24 °C
    out = []
    for i in range(days):
        s = _seed(key, i)
        out.append(
            {
                "date": (start + dt.timedelta(days=i)).isoformat(),
                "temperature_c": round(base + (s % 100) / 10 - 5, 1),
                "condition": CONDITIONS[(s >> 8) % len(CONDITIONS)],
            }
        )
    return out


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "sidegate-demo"}]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        chat = parse_chat_request(await request.read())
    except MalformedRequest as exc:
        body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
        return web.json_response(body, status=exc.status)
    model = chat.model or MODEL
    content = echo_reply(chat.last_user_text)
    prompt_tokens = sum(len(content_text(m.get("content")).split()) for m in chat.messages)
    completion_tokens = len(content.split())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    if not chat.stream:
        return web.json_response(chat_completion(content, model=model, usage=usage))

    frames = sse_frames(content, model=model)
    opts = chat.body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:  # the usage chunk goes before [DONE]
        first = json.loads(frames[0].removeprefix(b"data: "))
        usage_chunk = {**first, "choices": [], "usage": usage}
        frames.insert(-1, b"data: " + json.dumps(usage_chunk, separators=(",", ":")).encode() + b"\n\n")
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    for frame in frames:
        await resp.write(frame)  # one HTTP chunk per SSE frame
    await resp.write_eof()
    return resp


async def weather(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return error(400, "request body must be JSON: {\"location\": str, \"days\": int}", "invalid_json")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object", "invalid_body")
    location = body.get("location")
    if not isinstance(location, str) or not location.strip():
        return error(400, "missing required parameter: 'location' (a city name)", "missing_location")
    days = body.get("days", 7)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 16:
        return error(400, f"'days' must be an integer from 1 to 16, got {days!r}", "invalid_days")
    location = location.strip()
    return web.json_response({"location": location, "units": "celsius", "days": days, "forecast": forecast(location, days)})


async def exchange(request: web.Request) -> web.Response:
    symbol = request.match_info["currency_symbol"].strip().upper()
    rate = USD_RATES.get(symbol)
    if rate is None:
        return error(404, f"unknown currency symbol {symbol!r}; supported: {', '.join(sorted(USD_RATES))}", "unknown_currency")
    return web.json_response({"from": "USD", "to": symbol, "rate": rate})


async def default_target(_: web.Request) -> web.Response:
    return web.json_response({"reply": GREETING})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/weather", weather)
    app.router.add_get("/exchange/{currency_symbol}", exchange)
    app.router.add_post("/default", default_target)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="sidegate demo app")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18083)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=log,  # one line per request, written when the response is done
        access_log_format='%a "%r" %s %b %Tfs',
        print=lambda _: log.info("demo app listening on http://%s:%d", args.host, args.port),
    )


if __name__ == "__main__":
    main()
