"""Through a real Envoy and the real ext_proc service, with the `openai` client, against fake providers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from .conftest import BACKUP_KEY, PROVIDER_KEY_A, RATE_LIMIT_TOKENS, Stack

pytestmark = pytest.mark.integration

USER = [{"role": "user", "content": "hello gateway"}]


def client(base_url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-client-own-key", max_retries=0, timeout=10, **kw)


def raw_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (loopback)
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_egress_non_streaming_goes_to_default_provider_with_its_key(stack: Stack) -> None:
    stack.alpha.clear()
    resp = client(stack.egress).chat.completions.with_raw_response.create(model="whatever", messages=USER)
    completion = resp.parse()
    assert completion.choices[0].message.content == "fake-alpha says: hello gateway"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert resp.headers["x-sidegate-provider"] == "alpha"
    (seen,) = stack.alpha.requests
    assert seen.headers["authorization"] == f"Bearer {PROVIDER_KEY_A}"  # the client's own key never leaves
    assert seen.json["model"] == "model-a"
    assert "x-sidegate-upstream" not in seen.headers


def test_egress_streaming_passes_chunks_and_usage(stack: Stack) -> None:
    stream = client(stack.egress).chat.completions.create(
        model="model-a", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake-alpha says: hello gateway"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_egress_stream_is_not_buffered(stack: Stack) -> None:
    """Chunks reach the client as the provider sends them: the first arrives long before the last."""
    c = client(stack.egress, default_headers={"x-fake-chunk-delay-ms": "150", "x-fake-chunks": "6"})
    start = time.perf_counter()
    arrivals = []
    for chunk in c.chat.completions.create(model="model-a", messages=USER, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals  # spread out as sent, not delivered in one burst


def test_hint_header_and_model_name_pick_the_provider(stack: Stack) -> None:
    stack.beta.clear()
    hinted = client(stack.egress, default_headers={"x-arch-llm-provider-hint": "beta"})
    out = hinted.chat.completions.create(model="model-a", messages=USER)
    assert out.choices[0].message.content.startswith("fake-beta says")
    by_model = client(stack.egress).chat.completions.create(model="model-b", messages=USER)
    assert by_model.choices[0].message.content.startswith("fake-beta says")
    assert all(r.headers["authorization"] == "Bearer sk-literal-beta" for r in stack.beta.requests)


def test_unknown_hint_is_400(stack: Stack) -> None:
    hinted = client(stack.egress, default_headers={"x-arch-llm-provider-hint": "nope"})
    with pytest.raises(openai.BadRequestError) as err:
        hinted.chat.completions.create(model="model-a", messages=USER)
    assert err.value.status_code == 400
    assert "nope" in err.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"this is not json", "invalid_json"),
        (json.dumps({"model": "model-a"}).encode(), "missing_required_parameter"),
        (json.dumps({"model": "model-a", "messages": [{"role": "user", "content": 42}]}).encode(), "invalid_type"),
        (json.dumps({"model": 7, "messages": USER}).encode(), "invalid_type"),
    ],
)
@pytest.mark.parametrize("listener", ["egress", "ingress"])
def test_malformed_requests_get_400_and_are_not_forwarded(stack: Stack, body: bytes, code: str, listener: str) -> None:
    stack.alpha.clear()
    status, _, err = raw_post(getattr(stack, listener) + "/chat/completions", body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["code"] == code
    assert stack.alpha.requests == []


def test_body_over_the_limit_is_413_and_not_forwarded(stack: Stack) -> None:
    stack.alpha.clear()
    big = json.dumps({"model": "model-a", "messages": [{"role": "user", "content": "x" * (100 * 1024)}]}).encode()
    status, _, err = raw_post(stack.egress + "/chat/completions", big)
    assert status == 413
    assert err["error"]["code"] == "request_too_large"
    assert stack.alpha.requests == []


def test_provider_refusing_connections_is_502(stack: Stack) -> None:
    hinted = client(stack.egress, default_headers={"x-arch-llm-provider-hint": "dead"})
    with pytest.raises(openai.APIStatusError) as err:
        hinted.chat.completions.create(model="model-dead", messages=USER)
    assert err.value.status_code == 502
    body = err.value.response.json()
    assert body["error"]["code"] == "upstream_unavailable"


def test_provider_timing_out_is_504(stack: Stack) -> None:
    slow = client(stack.egress, default_headers={"x-fake-delay-ms": "2500"})
    with pytest.raises(openai.APIStatusError) as err:
        slow.chat.completions.create(model="model-a", messages=USER)
    assert err.value.status_code == 504
    assert err.value.response.json()["error"]["code"] == "upstream_timeout"


def test_provider_errors_pass_through_with_their_status(stack: Stack) -> None:
    failing = client(stack.egress, default_headers={"x-fake-status": "429"})
    with pytest.raises(openai.RateLimitError):
        failing.chat.completions.create(model="model-a", messages=USER)


def test_token_rate_limit_answers_429_per_selector_value_and_forwards_nothing(stack: Stack) -> None:
    base, listener = stack.egress, "egress"
    prompt = [{"role": "user", "content": " ".join(["token"] * 60)}]  # ~94 tokens estimated, 122 reported
    user = f"{listener}-alice"
    limited = client(base, default_headers={"x-user": user})
    stack.beta.clear()
    limited.chat.completions.create(model="model-limited", messages=prompt)
    assert len(stack.beta.requests) == 1
    with pytest.raises(openai.RateLimitError) as err:
        limited.chat.completions.create(model="model-limited", messages=prompt)
    assert len(stack.beta.requests) == 1  # nothing forwarded
    body = err.value.response.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and "model-limited" in body["message"] and user in body["message"]
    assert 0 < int(err.value.response.headers["retry-after"]) <= 60
    # another user has a budget of their own; requests without the selector header are not limited
    client(base, default_headers={"x-user": f"{listener}-bob"}).chat.completions.create(model="model-limited", messages=prompt)
    client(base).chat.completions.create(model="model-limited", messages=prompt)
    assert len(stack.beta.requests) == 3
    huge = [{"role": "user", "content": "y" * (4 * RATE_LIMIT_TOKENS + 4)}]
    with pytest.raises(openai.RateLimitError) as err:
        client(base, default_headers={"x-user": f"{listener}-carol"}).chat.completions.create(model="model-limited", messages=huge)
    assert "larger than the rate limit" in err.value.response.json()["error"]["message"]
    assert "retry-after" not in err.value.response.headers  # waiting would not help


def test_unknown_path_is_404(stack: Stack) -> None:
    status, _, err = raw_post(f"http://127.0.0.1:{stack.cfg.egress.port}/v1/audio/speech", b"{}")
    assert status == 404 and err["error"]["code"] == "not_found"


def test_ingress_forwards_to_the_default_provider(stack: Stack) -> None:
    stack.alpha.clear()
    out = client(stack.ingress).chat.completions.create(model="anything", messages=USER)
    assert out.choices[0].message.content == "fake-alpha says: hello gateway"
    chunks = list(client(stack.ingress).chat.completions.create(model="anything", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fake-alpha says: hello gateway"
    assert len(stack.alpha.requests) == 2


def test_ext_proc_survived_everything_and_counted_it(stack: Stack) -> None:
    out = client(stack.egress).chat.completions.create(model="model-a", messages=USER)
    assert out.choices[0].message.content
    metrics = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()  # noqa: S310
    assert 'sidegate_requests_total{listener="egress",outcome="upstream_200",route="chat_completions"}' in metrics
    assert 'sidegate_errors_total{code="invalid_json",listener="egress"}' in metrics
    assert 'sidegate_llm_tokens_total{direction="input",provider="alpha"}' in metrics


def test_configured_retries_hide_transient_provider_failures(stack: Stack) -> None:
    stack.beta.clear()
    stack.beta.fail_next(status=503, times=2)
    out = client(stack.egress).chat.completions.create(model="model-b", messages=USER)
    assert out.choices[0].message.content.startswith("fake-beta says")
    assert len(stack.beta.requests) == 3  # two failures retried by Envoy, then the answer


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("stream", [False, True])
def test_failover_to_the_next_provider_with_its_own_key_host_and_model(stack: Stack, status: int, stream: bool) -> None:
    stack.alpha.clear(), stack.beta.clear()
    stack.alpha.fail_next(status=status)
    raw = client(stack.egress).chat.completions.with_raw_response.create(model="model-flaky", messages=USER, stream=stream)
    out = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in out if c.choices) if stream else out.choices[0].message.content
    assert text.startswith("fake-beta says")
    assert raw.headers["x-sidegate-provider"] == "backup" and raw.headers["x-envoy-attempt-count"] == "2"
    (first,) = stack.alpha.requests
    assert first.json["model"] == "model-flaky" and first.headers["authorization"] == f"Bearer {PROVIDER_KEY_A}"
    (second,) = stack.beta.requests
    assert second.json["model"] == "model-backup" and second.headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert second.headers["host"] == f"127.0.0.1:{stack.beta.port}"
    assert second.json["messages"] == USER and second.json.get("stream", False) == stream
    for req in (first, second):  # sidegate's per-attempt bookkeeping never reaches a provider
        assert not [h for h in req.headers if h.startswith(("x-sidegate", "x-envoy-attempt"))], req.headers


def test_failover_skips_a_provider_that_refuses_connections_and_counts_it(stack: Stack) -> None:
    stack.beta.clear()
    out = client(stack.egress).chat.completions.create(model="model-shaky", messages=USER)
    assert out.choices[0].message.content.startswith("fake-beta says")
    (req,) = stack.beta.requests
    assert req.json["model"] == "model-backup"
    body = urllib.request.urlopen(stack.metrics_url, timeout=5).read().decode()  # noqa: S310
    assert 'sidegate_provider_failovers_total{fallback="backup",provider="shaky"}' in body


def test_without_failure_the_primary_answers_and_when_all_fail_the_last_error_is_returned(stack: Stack) -> None:
    stack.alpha.clear(), stack.beta.clear()
    raw = client(stack.egress).chat.completions.with_raw_response.create(model="model-flaky", messages=USER)
    assert raw.parse().choices[0].message.content.startswith("fake-alpha says")
    assert raw.headers["x-sidegate-provider"] == "flaky" and stack.beta.requests == []
    stack.alpha.fail_next(status=503)
    stack.beta.fail_next(status=500)
    with pytest.raises(openai.InternalServerError) as err:
        client(stack.egress).chat.completions.create(model="model-flaky", messages=USER)
    assert err.value.status_code == 500


def test_ext_proc_down_is_a_clear_503_then_service_resumes(stack: Stack) -> None:
    """Runs last in this module: stops the ext_proc service, checks the answer, starts it again."""
    sup = stack.supervisor
    svc = next(s for s in sup.services if s.name == "ext_proc")
    sup.procs["ext_proc"].terminate()
    sup.procs["ext_proc"].wait(10)
    stack.alpha.clear()
    status, _, err = raw_post(stack.egress + "/chat/completions", json.dumps({"model": "model-a", "messages": USER}).encode())
    assert status == 503
    assert err["error"]["code"] == "ext_proc_unavailable"
    assert stack.alpha.requests == []  # fail closed: nothing forwarded unchecked
    sup._spawn(svc)
    assert sup._wait_healthy(svc)
    out = client(stack.egress).chat.completions.create(model="model-a", messages=USER)
    assert out.choices[0].message.content == "fake-alpha says: hello gateway"
