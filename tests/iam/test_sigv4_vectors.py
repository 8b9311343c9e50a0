"""AWS's SigV4 test suite (kept under data/aws4_testsuite, see its SOURCE.md).

Each vector is checked twice: the canonical request, string to sign and signature built by
the public building blocks, and the signed request (``.sreq``) sent through both adapters
with the clock pinned to the suite's date.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import pathlib
import re

import pytest

from apigw_mw import IamAuthorizer, IamPrincipal
from apigw_mw.auth.sigv4 import canonical_request, signing_key, string_to_sign
from tests.iam.direct import Direct

SUITE = pathlib.Path(__file__).parent / "data" / "aws4_testsuite"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
AKID = "AKIDEXAMPLE"
SUITE_TIME = float(calendar.timegm((2015, 8, 30, 12, 36, 0, 0, 0, 0)))
SUITE_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfp"
    "SPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPk"
    "yQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBA"
    "z+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)


def _cases() -> list[pathlib.Path]:
    return sorted(p.with_suffix("") for p in SUITE.rglob("*.req"))


def _parse(raw: bytes) -> tuple[str, bytes, list[tuple[str, str]], bytes]:
    """``(method, target, headers, body)`` of a raw HTTP/1.1 request; folded lines unfolded."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.split(b"\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" HTTP/")[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip().decode("utf-8"))
            continue
        name, _, value = line.decode("utf-8").partition(":")
        headers.append((name, value))
    return method.decode(), target, headers, body


def _id(case: pathlib.Path) -> str:
    return str(case.relative_to(SUITE))


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_building_blocks_reproduce_the_suite(case: pathlib.Path) -> None:
    method, target, headers, body = _parse(case.with_suffix(".sreq").read_bytes())
    authz = case.with_suffix(".authz").read_text().strip()
    signed = re.search(r"SignedHeaders=([^,]+)", authz)
    assert signed is not None
    names = signed.group(1).split(";")
    path, _, query = target.partition(b"?")
    creq = canonical_request(method, path, query, headers, names, hashlib.sha256(body).hexdigest())
    assert creq == case.with_suffix(".creq").read_text().replace("\r", "")
    sts = string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", creq)
    assert sts == case.with_suffix(".sts").read_text().replace("\r", "")
    key = signing_key(SECRET, "20150830", "us-east-1", "service")
    signature = hmac.new(key, sts.encode(), "sha256").hexdigest()
    assert authz.endswith(f"Signature={signature}")


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_signed_suite_requests_pass_the_gateway(case: pathlib.Path, adapter: str) -> None:
    method, target, headers, body = _parse(case.with_suffix(".sreq").read_bytes())
    # get-vanilla-with-session-token's .sreq carries another signature than its .authz (the
    # .authz is the one its .creq and .sts give): send the .authz value.
    authz = case.with_suffix(".authz").read_text().strip()
    headers = [(k, authz if k.lower() == "authorization" else v) for k, v in headers]
    iam = IamAuthorizer(
        {AKID: SECRET}, region="us-east-1", service="service", clock=lambda: SUITE_TIME
    )
    r = Direct(adapter, [iam]).call(method, target, headers, body)
    assert r.status == 200, r.body
    ctx, seen_body = r.seen[0]
    assert ctx.identity.access_key == AKID
    assert seen_body == body


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_suite_session_token_is_checked_against_the_store(adapter: str) -> None:
    case = SUITE / "post-sts-token" / "post-sts-header-before" / "post-sts-header-before"
    method, target, headers, body = _parse(case.with_suffix(".sreq").read_bytes())

    def iam(token: str) -> IamAuthorizer:
        return IamAuthorizer(
            {AKID: IamPrincipal(SECRET, session_token=token)},
            region="us-east-1",
            service="service",
            clock=lambda: SUITE_TIME,
        )

    assert Direct(adapter, [iam(SUITE_TOKEN)]).call(method, target, headers, body).status == 200
    refused = Direct(adapter, [iam("another-token")]).call(method, target, headers, body)
    assert refused.status == 403
    assert refused.json() == {"message": "The security token included in the request is invalid."}
    assert refused.seen == []


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_suite_request_an_hour_later_is_refused_as_expired(adapter: str) -> None:
    case = SUITE / "get-vanilla" / "get-vanilla"
    method, target, headers, body = _parse(case.with_suffix(".sreq").read_bytes())
    iam = IamAuthorizer(
        {AKID: SECRET}, region="us-east-1", service="service", clock=lambda: SUITE_TIME + 3600
    )
    r = Direct(adapter, [iam]).call(method, target, headers, body)
    assert r.status == 403
    assert r.json()["message"] == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T133100Z "
        "(20150830T133600Z - 5 min.)"
    )
    assert r.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert r.seen == []
