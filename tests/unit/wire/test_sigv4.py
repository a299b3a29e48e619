"""ext_proc.wire.sigv4 against AWS's published SigV4 test vectors (aws-sig-v4-test-suite: get-vanilla,
post-vanilla), and against the fake Bedrock's independent checker (testkit.fake_provider.check_sigv4)."""

from __future__ import annotations

import datetime
import json

from multidict import CIMultiDict

from ext_proc.wire.sigv4 import AwsCredentials, sign
from testkit.fake_provider import FAKE_AWS_KEYS, check_sigv4

SUITE = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime.datetime(2015, 8, 30, 12, 36, 0, tzinfo=datetime.timezone.utc)
FAKE = AwsCredentials(*next(iter(FAKE_AWS_KEYS.items())), session_token="FwoGZXIvYXdzEJr//session")


def test_aws_published_vectors() -> None:
    for method, signature in (("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
                              ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")):
        headers = sign(method=method, host="example.amazonaws.com", path="/", body=b"", credentials=SUITE, region="us-east-1",
                       service="service", now=SUITE_TIME, content_sha256=False)
        assert headers == {"x-amz-date": "20150830T123600Z", "authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={signature}")}


def signed_converse(path: str = "/model/us.amazon.nova-pro-v1%3A0/converse") -> tuple[str, CIMultiDict[str], bytes]:
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    headers = CIMultiDict({"host": "bedrock-runtime.us-west-2.amazonaws.com", "content-type": "application/json"})
    headers.update(sign(method="POST", host=headers["host"], path=path, body=body, credentials=FAKE, region="us-west-2", service="bedrock"))
    return path, headers, body


def test_a_signed_converse_request_passes_the_fakes_independent_check() -> None:
    path, headers, body = signed_converse()
    assert headers["x-amz-security-token"] == FAKE.session_token and "x-amz-security-token" in headers["authorization"]
    assert check_sigv4("POST", path, headers, body, FAKE_AWS_KEYS, region="us-west-2") is None


def test_the_check_fails_for_a_changed_body_path_host_key_or_stale_date() -> None:
    path, headers, body = signed_converse()
    assert "does not match" in (check_sigv4("POST", path, headers, body + b" ", FAKE_AWS_KEYS) or "")
    assert "does not match" in (check_sigv4("POST", path.replace("%3A", ":"), headers, body, FAKE_AWS_KEYS) or "")
    moved = headers.copy()
    moved["host"] = "127.0.0.1:9"
    assert "does not match" in (check_sigv4("POST", path, moved, body, FAKE_AWS_KEYS) or "")
    assert "invalid" in (check_sigv4("POST", path, headers, body, {"AKIDOTHER": "x"}) or "")
    later = datetime.datetime.now(datetime.timezone.utc).timestamp() + 3600
    assert "expired" in (check_sigv4("POST", path, headers, body, FAKE_AWS_KEYS, now=later) or "")
