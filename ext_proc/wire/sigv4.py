"""AWS Signature Version 4 for one HTTP request (what Bedrock checks when it is called with IAM keys).

::

    headers = sign(method="POST", host="bedrock-runtime.us-west-2.amazonaws.com", path="/model/m%3A0/converse",
                   body=b"{...}", credentials=creds, region="us-west-2", service="bedrock")
    # -> {"authorization": "AWS4-HMAC-SHA256 Credential=...", "x-amz-date": ..., "x-amz-content-sha256": ...,
    #     "x-amz-security-token": ... (temporary credentials only)}

As AWS specifies it (docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html): the
canonical request (method, the path URI-encoded once more, as for every service but S3, the sorted
query, the signed headers lower-cased with their values' whitespace folded, their names, the
payload's SHA-256), the string to sign over its hash and the credential scope, and the signing key
derived by HMAC-SHA256 from the secret through date, region, service and ``aws4_request``.
Checked against AWS's published test vector (tests/unit/wire/test_sigv4.py). No botocore: it is
not installed here and would weigh ~100 MB for these 40 lines.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

__all__ = ["AwsCredentials", "sign"]


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    *, method: str, host: str, path: str, body: bytes, credentials: AwsCredentials, region: str, service: str,
    query: str = "", headers: dict[str, str] | None = None, now: datetime.datetime | None = None, content_sha256: bool = True,
) -> dict[str, str]:
    """The headers that sign this request: ``authorization``, ``x-amz-date``, and ``x-amz-content-sha256``
    (unless ``content_sha256`` is False) and ``x-amz-security-token`` (temporary credentials), which are signed too.
    ``headers``: other headers to sign (sent as given); ``host`` is always signed."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    payload_hash = hashlib.sha256(body).hexdigest()
    added = {"x-amz-date": amz_date}
    if content_sha256:
        added["x-amz-content-sha256"] = payload_hash
    if credentials.session_token:
        added["x-amz-security-token"] = credentials.session_token
    signed = {k.lower(): " ".join(v.strip().split()) for k, v in (headers or {}).items()}
    signed.update(added)
    signed["host"] = host
    names = sorted(signed)
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(query, keep_blank_values=True))
    canonical = "\n".join([
        method.upper(),
        quote(path or "/", safe="/~"),  # the path as sent (already URI-encoded), encoded once more
        "&".join(f"{k}={v}" for k, v in pairs),
        "".join(f"{n}:{signed[n]}\n" for n in names),
        ";".join(names),
        payload_hash,
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials.secret_access_key).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return {"authorization": auth, **added}
