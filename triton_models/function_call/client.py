"""Smoke client for function_call: checks a running Triton's output, exits non-zero on any failure.

    python triton_models/function_call/client.py --url 127.0.0.1:8001

Needs only ``tritonclient[grpc]`` (not sidegate), so it also checks a remote Triton. The model
is decoupled, so requests go over the gRPC stream; each must get exactly one final response.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient

MODEL = "function_call"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather forecast for a location.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "city, e.g. Paris"},
                "days": {"type": "integer", "description": "number of days to forecast"},
                "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "days"],
        },
    },
}


def ask(client: grpcclient.InferenceServerClient, messages: object, tools: object, timeout: float) -> dict:
    """One decoupled request; returns the TOOL_CALLS JSON or raises with the server's error."""
    results: queue.Queue = queue.Queue()
    inputs = []
    for name, value in (("MESSAGES", messages), ("TOOLS", tools)):
        t = grpcclient.InferInput(name, [1], "BYTES")
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        t.set_data_from_numpy(np.array([raw], dtype=np.object_))
        inputs.append(t)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
        out = None
        while True:
            result, error = results.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(str(error))
            response = result.get_response()
            if result.as_numpy("TOOL_CALLS") is not None:
                out = json.loads(result.as_numpy("TOOL_CALLS")[0])
            if response.parameters.get("triton_final_response") and \
                    response.parameters["triton_final_response"].bool_param:
                break
        if out is None:
            raise RuntimeError("final response without TOOL_CALLS")
        return out
    finally:
        client.stop_stream()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (host:port)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(url=args.url)
    failures = []
    cases = [
        ("What's the weather in Paris for the next 3 days?", {"location": "Paris", "days": 3}, []),
        ("What's the weather in Paris?", {"location": "Paris"}, ["days"]),
    ]
    for text, want_args, want_missing in cases:
        try:
            out = ask(client, [{"role": "user", "content": text}], [WEATHER], args.timeout)
        except Exception as exc:  # noqa: BLE001 - a smoke client reports every failure
            failures.append(f"{text!r}: {exc}")
            continue
        call = out["tool_calls"][0]
        got = json.loads(call["function"]["arguments"])
        print(f"{text!r} -> {call['function']['name']} {got} missing={call['missing']} ({out.get('model')})")
        if call["function"]["name"] != "get_weather" or got != want_args or call["missing"] != want_missing:
            failures.append(f"{text!r}: expected {want_args} missing={want_missing}")

    try:
        ask(client, b"not json", [WEATHER], args.timeout)
        failures.append("MESSAGES that is not JSON was accepted")
    except Exception as exc:  # noqa: BLE001
        print(f"bad MESSAGES rejected as expected: {exc}")

    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(f"PASS: {MODEL} at {args.url}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
