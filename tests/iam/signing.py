"""Requests signed by botocore, the way an AWS SDK client signs them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TEMP_AKID = "ASIAIOSFODNN7EXAMPLE"
TEMP_SECRET = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDtoken=="
REGION = "eu-west-1"
HOST = "api.example.com"


def sign(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    akid: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    region: str = REGION,
    service: str = "execute-api",
    presign: int | None = None,
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Sign a request with botocore; returns ``(path?query, headers, body)`` to send."""
    request = AWSRequest(
        method=method,
        url=f"https://{HOST}{path}",
        data=body,
        params=dict(params or {}),
        headers={"Host": HOST, **(headers or {})},
    )
    creds = Credentials(akid, secret, token)
    signer: Any = (
        SigV4QueryAuth(creds, service, region, expires=presign)
        if presign is not None
        else SigV4Auth(creds, service, region)
    )
    signer.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    out = [(k, v) for k, v in prepared.headers.items() if k.lower() != "content-length"]
    return target, out, prepared.body or b""
