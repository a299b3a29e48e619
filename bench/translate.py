"""CPU per request of the provider-family translations ext_proc does in Python (issue 18).

``python -m bench translate [--rounds 7] [--n 2000]``: in-process, no servers. For each family a
request goes to, the work ext_proc's :class:`~ext_proc.chat.translate.Exchange` does on top of a
pass-through: the request body (an OpenAI chat request with a system prompt, 6 turns and a tool,
1.6 KB) into the provider's API, and the provider's answer back into OpenAI's, as a JSON body or as
a 40-chunk stream (SSE for Anthropic, AWS event-stream frames for Bedrock); plus SigV4 signing of
the Converse body (Bedrock with IAM keys). Each row: the median of ``--rounds`` rounds of ``--n``
requests, µs per request, and its best round. Prints a table and writes bench/results/translate.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

from bench._harness import cpu_us_per_call, load_caption, machine_info, print_table, write_results
from ext_proc.chat.translate import Exchange
from ext_proc.config import build_config
from ext_proc.wire.openai import parse_chat_request
from ext_proc.wire.sigv4 import AwsCredentials, sign
from testkit import gateway_config
from testkit.fake_provider import event_frame

CHUNKS = 40
REQUEST = {
    "model": "m", "max_tokens": 256, "temperature": 0.3,
    "messages": [{"role": "system", "content": "You are a concise travel assistant. " * 4}]
    + [{"role": r, "content": f"turn {i}: " + "what about the weather and the trains tomorrow? " * 3}
       for i, r in enumerate(["user", "assistant", "user", "assistant", "user", "assistant"])]
    + [{"role": "user", "content": "and in Oslo?"}],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "a city's forecast",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
}
PIECES = [f"word{i} " for i in range(CHUNKS)]
ANTHROPIC_JSON = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                             "content": [{"type": "text", "text": "".join(PIECES)}], "usage": {"input_tokens": 90, "output_tokens": 40}}).encode()
CONVERSE_JSON = json.dumps({"output": {"message": {"role": "assistant", "content": [{"text": "".join(PIECES)}]}}, "stopReason": "end_turn",
                            "usage": {"inputTokens": 90, "outputTokens": 40, "totalTokens": 130}}).encode()


def _anthropic_sse() -> list[bytes]:
    def ev(kind: str, data: dict[str, object]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
    return ([ev("message_start", {"message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 90, "output_tokens": 1}}}),
             ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
            + [ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in PIECES]
            + [ev("content_block_stop", {"index": 0}), ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}}),
               ev("message_stop", {})])


def _converse_frames() -> list[bytes]:
    def ev(kind: str, data: dict[str, object]) -> bytes:
        return event_frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, json.dumps(data).encode())
    return ([ev("messageStart", {"role": "assistant"})]
            + [ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in PIECES]
            + [ev("contentBlockStop", {"contentBlockIndex": 0}), ev("messageStop", {"stopReason": "end_turn"}),
               ev("metadata", {"usage": {"inputTokens": 90, "outputTokens": 40, "totalTokens": 130}})])


def _cases() -> dict[str, Callable[[], object]]:
    cfg = build_config(gateway_config([
        {"name": "anthropic", "provider_interface": "anthropic", "model": "claude", "default": True},
        {"name": "bedrock", "provider_interface": "amazon_bedrock", "endpoint": "https://bedrock-runtime.us-west-2.amazonaws.com",
         "model": "us.amazon.nova-pro-v1:0"}]))
    anthropic_p, bedrock_p = cfg.llm_providers
    body = json.dumps(REQUEST).encode()
    stream_body = json.dumps({**REQUEST, "stream": True}).encode()
    sse, frames = _anthropic_sse(), _converse_frames()
    creds = AwsCredentials("AKIDEXAMPLE", "secret")
    converse_body, converse_path = Exchange().upstream_body(parse_chat_request(body), None, bedrock_p)
    assert converse_body is not None and converse_path is not None

    def exchange(provider: object, raw: bytes, answer: list[bytes], streaming: bool) -> None:
        ex = Exchange()
        ex.upstream_body(parse_chat_request(raw), None, provider)  # type: ignore[arg-type]
        ex.start_response(status="200", streaming=streaming)
        for i, chunk in enumerate(answer):
            ex.usage(chunk, streaming=streaming)
            ex.response(chunk, streaming=streaming, end_of_stream=i == len(answer) - 1)

    return {
        "anthropic: request + JSON answer": lambda: exchange(anthropic_p, body, [ANTHROPIC_JSON], False),
        "anthropic: request + 40-chunk SSE answer": lambda: exchange(anthropic_p, stream_body, sse, True),
        "amazon_bedrock: request + JSON answer": lambda: exchange(bedrock_p, body, [CONVERSE_JSON], False),
        "amazon_bedrock: request + 40-frame event-stream answer": lambda: exchange(bedrock_p, stream_body, frames, True),
        "amazon_bedrock: SigV4 signature of the Converse body": lambda: sign(
            method="POST", host="bedrock-runtime.us-west-2.amazonaws.com", path=converse_path, body=converse_body,
            credentials=creds, region="us-west-2", service="bedrock"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench translate", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=500, help="requests per round")
    args = ap.parse_args(argv)
    rows, results = [], {}
    for name, fn in _cases().items():
        per_round = cpu_us_per_call(fn, rounds=args.rounds, n=args.n, warmup=50)
        results[name] = {"median_us": statistics.median(per_round), "best_us": min(per_round), "rounds": per_round}
        rows.append((name, statistics.median(per_round), min(per_round)))
    print_table("CPU per request of the provider translations (one process, in-process, no I/O)",
                ["family: work", "median µs", "best µs"], rows, caption=load_caption(f"{args.rounds} rounds x {args.n} requests"), digits=1)
    path = write_results("translate", {"rounds": args.rounds, "n": args.n, "results": results, "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
