"""CPU per answer of the output guards (``prompt_guards.output_guards``, issue 17).

``python -m bench output_guard [--rounds 7] [--n 300]``: in-process, no servers. The work ext_proc
does on top of a pass-through when output guards are configured: a system prompt of ~500 words
(its n-grams cached, as for an app sending the same prompt each time; one row without the cache)
and two secrets, checked against a clean answer of 400 words as one JSON body, as a 40-chunk
OpenAI SSE stream, as a 400-chunk one (a word a chunk) and as a 40-chunk Anthropic stream. Each row:
the median of ``--rounds`` rounds of ``--n`` answers, µs per answer and per chunk, and the best
round. Prints a table and writes bench/results/output_guard.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

from bench._harness import cpu_us_per_call, load_caption, machine_info, print_table, write_results
from ext_proc.chat import output_guard
from ext_proc.chat.output_guard import AnswerGuard
from ext_proc.config import OutputGuards, PromptLeakGuard, SecretsGuard

WORDS = ("the train to Oslo leaves at seven and the weather tomorrow looks mild with light wind from the west "
         "so bring a jacket and check the platform before boarding ").split()
ANSWER = [WORDS[i % len(WORDS)] for i in range(400)]
SYSTEM = " ".join(f"rule {i}: answer politely, cite the policy section {i} and never promise refunds beyond {i} days."
                  for i in range(35))  # ~500 words
SETTINGS = OutputGuards(system_prompt_leak=PromptLeakGuard(message="withheld"),
                        secrets=SecretsGuard(message="withheld", values=("nw-prod-7f3a9c2e5b1d", "db-password-0c9e1a77")))


def _openai_sse(pieces: list[str]) -> list[bytes]:
    return [b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                     "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}).encode() + b"\n\n"
            for p in pieces] + [b"data: [DONE]\n\n"]


def _anthropic_sse(pieces: list[str]) -> list[bytes]:
    def ev(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
    return ([ev("message_start", {"message": {"id": "msg_1", "model": "m"}}),
             ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
            + [ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
            + [ev("content_block_stop", {"index": 0}), ev("message_stop", {})])


def _groups(n: int) -> list[str]:
    per = len(ANSWER) // n
    return [" ".join(ANSWER[i * per:(i + 1) * per]) + " " for i in range(n)]


def _cases() -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one answer's work, its chunks)."""
    guard = AnswerGuard(settings=SETTINGS, prompts=[SYSTEM])
    body = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": " ".join(ANSWER)}, "finish_reason": "stop"}]}).encode()
    sse40, sse400, anth40 = _openai_sse(_groups(40)), _openai_sse([w + " " for w in ANSWER]), _anthropic_sse(_groups(40))

    def stream(chunks: list[bytes], api: str) -> None:
        s = guard.stream(api=api, model="m")
        for i, c in enumerate(chunks):
            s.feed(c, end_of_stream=i == len(chunks) - 1)
        assert s.leak is None

    def uncached() -> None:
        output_guard._grams.cache_clear()
        AnswerGuard(settings=SETTINGS, prompts=[SYSTEM]).check_json(body, api="openai")

    return {
        "JSON answer, 400 words": (lambda: guard.check_json(body, api="openai"), 1),
        "JSON answer, 400 words, a system prompt not seen before (n-grams built)": (uncached, 1),
        "OpenAI SSE, 40 chunks of 10 words": (lambda: stream(sse40, "openai"), len(sse40)),
        "OpenAI SSE, 400 chunks of 1 word": (lambda: stream(sse400, "openai"), len(sse400)),
        "Anthropic SSE, 40 deltas of 10 words": (lambda: stream(anth40, "anthropic"), len(anth40)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench output_guard", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=100, help="answers per round")
    args = ap.parse_args(argv)
    rows, results = [], {}
    for name, (fn, chunks) in _cases().items():
        per_round = cpu_us_per_call(fn, rounds=args.rounds, n=args.n, warmup=10)
        med = statistics.median(per_round)
        results[name] = {"median_us": med, "per_chunk_us": med / chunks, "best_us": min(per_round), "chunks": chunks, "rounds": per_round}
        rows.append((name, med, med / chunks, min(per_round)))
    print_table("CPU per answer of the output guards (system prompt ~500 words + 2 secrets; one process, in-process, no I/O)",
                ["answer", "median µs", "µs per chunk", "best µs"], rows, caption=load_caption(f"{args.rounds} rounds x {args.n} answers"),
                digits=1)
    path = write_results("output_guard", {"rounds": args.rounds, "n": args.n, "results": results, "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
