"""IamAuthorizer: requests signed by botocore through both adapters."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apigw_mw import ConfigurationError, IamAuthorizer, IamPrincipal, Stage
from tests.iam.signing import (
    AKID,
    HOST,
    REGION,
    SECRET,
    TEMP_AKID,
    TEMP_SECRET,
    TOKEN,
    sign,
)

STAGE = Stage("prod", region=REGION, account_id="111122223333", api_id="a1b2c3")
ALICE_ARN = "arn:aws:iam::111122223333:user/alice"
PETS_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "execute-api:Invoke",
            "Resource": "arn:aws:execute-api:eu-west-1:111122223333:a1b2c3/prod/*/pets*",
        },
        {
            "Effect": "Deny",
            "Action": "execute-api:Invoke",
            "Resource": "arn:aws:execute-api:*:*:*/prod/DELETE/*",
        },
    ],
}


def _credentials() -> dict[str, str | IamPrincipal]:
    return {
        AKID: IamPrincipal(
            SECRET,
            user="AIDAEXAMPLEALICE",
            user_arn=ALICE_ARN,
            account_id="111122223333",
            policy=PETS_ONLY,
        ),
        TEMP_AKID: IamPrincipal(
            TEMP_SECRET,
            user="AROAEXAMPLE:session-1",
            user_arn="arn:aws:sts::111122223333:assumed-role/reader/session-1",
            session_token=TOKEN,
            expires_at=time.time() + 3600,
        ),
    }


def _iam(**kw: Any) -> IamAuthorizer:
    return IamAuthorizer(kw.pop("credentials", None) or _credentials(), region=REGION, **kw)


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        pytest.param("GET", "/pets", {}, id="get"),
        pytest.param(
            "GET",
            "/pets",
            {"params": {"q": "a b&c=d/é", "sym": "+!*'()$,;:@", "empty": "", "~ok": "-._~"}},
            id="query-with-reserved-characters",
        ),
        pytest.param("GET", "/pets/a%20b/%24x", {}, id="encoded-path"),
        pytest.param("GET", "/pets/$x!@:", {}, id="path-with-sub-delims"),
        pytest.param(
            "POST",
            "/pets",
            {"body": b'{"name": "Rex"}', "headers": {"Content-Type": "application/json"}},
            id="post-json",
        ),
        pytest.param("PUT", "/pets/1", {"body": bytes(range(256)) * 40}, id="put-binary-10k"),
        pytest.param(
            "GET",
            "/pets",
            {"akid": TEMP_AKID, "secret": TEMP_SECRET, "token": TOKEN},
            id="temporary-credentials",
        ),
        pytest.param("GET", "/pets", {"presign": 300}, id="presigned"),
        pytest.param(
            "GET",
            "/pets",
            {"presign": 60, "akid": TEMP_AKID, "secret": TEMP_SECRET, "token": TOKEN},
            id="presigned-temporary-credentials",
        ),
        pytest.param(
            "GET", "/pets", {"params": {"page": "2"}, "presign": 300}, id="presigned-with-query"
        ),
    ],
)
def test_signed_requests_reach_the_app(make_client, method, path, kw) -> None:
    client = make_client([_iam()], stage=STAGE)
    target, headers, body = sign(method, path, **kw)
    r = client.request(method, target, headers=headers, content=body or None)
    assert r.status_code == 200, r.text
    assert len(r.seen) == 1
    assert r.seen[0].body == body
    identity = r.seen[0].context.identity
    akid = kw.get("akid", AKID)
    assert identity.access_key == akid
    if akid == AKID:
        assert (identity.user, identity.caller, identity.user_arn) == (
            "AIDAEXAMPLEALICE",
            "AIDAEXAMPLEALICE",
            ALICE_ARN,
        )
        assert identity.account_id == "111122223333"


def _tamper_header(name: str, value: str):  # type: ignore[no-untyped-def]
    def edit(target: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        kept = [(k, v) for k, v in headers if k.lower() != name.lower()]
        return target, [*kept, (name, value)] if value else kept, body

    return edit


def _auth_replace(old: str, new: str):  # type: ignore[no-untyped-def]
    def edit(target: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        return (
            target,
            [(k, v.replace(old, new) if k == "Authorization" else v) for k, v in headers],
            body,
        )

    return edit


def _drop_auth_part(part: str):  # type: ignore[no-untyped-def]
    def edit(target: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        out = []
        for k, v in headers:
            if k == "Authorization":
                algo, _, rest = v.partition(" ")
                kept = [p for p in rest.split(", ") if not p.startswith(part + "=")]
                v = f"{algo} {', '.join(kept)}"
            out.append((k, v))
        return target, out, body

    return edit


def _keep(target: str, headers: list[tuple[str, str]], body: bytes) -> Any:
    return target, headers, body


MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


BAD = [
    pytest.param(
        "GET",
        "/pets",
        {},
        lambda t, h, b: (t, [("Host", HOST)], b),
        {},
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
        id="no-signature",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _tamper_header("Authorization", "Bearer eyJhbGciOi.eyJzdWIi.c2ln"),
        {},
        403,
        "InvalidSignatureException",
        "Invalid key=value pair (missing equal-sign) in Authorization header",
        id="authorization-without-equal-sign",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _drop_auth_part("Signature"),
        {},
        403,
        "InvalidSignatureException",
        "Authorization header requires 'Signature' parameter.",
        id="missing-signature-part",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _drop_auth_part("Credential"),
        {},
        403,
        "InvalidSignatureException",
        "Authorization header requires 'Credential' parameter.",
        id="missing-credential-part",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _auth_replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        {},
        403,
        "InvalidSignatureException",
        "Unsupported signing algorithm",
        id="wrong-algorithm",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _tamper_header("X-Amz-Date", "2026-01-01T00:00:00Z"),
        {},
        403,
        "InvalidSignatureException",
        "Date must be in ISO-8601 'basic format'.",
        id="bad-date",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _tamper_header("X-Amz-Date", ""),
        {},
        403,
        "InvalidSignatureException",
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        id="no-date",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"region": "us-west-2"},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "Credential should be scoped to a valid region, not 'us-west-2'.",
        id="wrong-scope-region",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"service": "s3"},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "Credential should be scoped to correct service: 'execute-api'.",
        id="wrong-scope-service",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _auth_replace("/aws4_request", "/aws4_request/extra"),
        {},
        403,
        "InvalidSignatureException",
        "Credential should have exactly 5 slash-delimited",
        id="malformed-credential",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _auth_replace("SignedHeaders=host;", "SignedHeaders=host;host;"),
        {},
        403,
        "InvalidSignatureException",
        "SignedHeaders must list lower-case header names",
        id="duplicated-signed-headers",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"headers": {"X-Tenant": "blue"}},
        _tamper_header("X-Tenant", ""),
        {},
        403,
        "InvalidSignatureException",
        MISMATCH,
        id="signed-header-absent",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _auth_replace("SignedHeaders=host;", "SignedHeaders="),
        {},
        403,
        "InvalidSignatureException",
        "'Host' or ':authority' must be a 'SignedHeader'",
        id="host-not-signed",
    ),
    pytest.param(
        "POST",
        "/pets",
        {"body": b'{"amount": 10}'},
        lambda t, h, b: (t, h, b'{"amount": 99}'),
        {},
        403,
        "InvalidSignatureException",
        MISMATCH,
        id="tampered-body",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"params": {"page": "1"}},
        lambda t, h, b: (t.replace("page=1", "page=2"), h, b),
        {},
        403,
        "InvalidSignatureException",
        MISMATCH,
        id="tampered-query",
    ),
    pytest.param(
        "GET",
        "/pets/1",
        {},
        lambda t, h, b: (t.replace("/pets/1", "/pets/2"), h, b),
        {},
        403,
        "InvalidSignatureException",
        MISMATCH,
        id="tampered-path",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"secret": "not-the-secret"},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        MISMATCH,
        id="wrong-secret",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _keep,
        {"clock": lambda: time.time() + 900},
        403,
        "InvalidSignatureException",
        "Signature expired: ",
        id="replay-outside-skew",
    ),
    pytest.param(
        "GET",
        "/pets",
        {},
        _keep,
        {"clock": lambda: time.time() - 900},
        403,
        "InvalidSignatureException",
        "Signature not yet current: ",
        id="date-in-the-future",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"presign": 60},
        _keep,
        {"clock": lambda: time.time() + 120},
        403,
        "InvalidSignatureException",
        "Signature expired: ",
        id="presigned-expired",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"presign": 604801},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        id="presigned-expires-over-a-week",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"presign": 60},
        lambda t, h, b: (t.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""), h, b),
        {},
        403,
        "InvalidSignatureException",
        "AWS query-string parameters must include",
        id="presigned-missing-parameter",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"presign": 60},
        _keep,
        {"allow_presigned": False},
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
        id="presigned-not-allowed",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"akid": "AKIAUNKNOWNKEY0000000"},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "The security token included in the request is invalid.",
        id="unknown-access-key",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"akid": TEMP_AKID, "secret": TEMP_SECRET, "token": "forged"},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "The security token included in the request is invalid.",
        id="wrong-session-token",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"akid": TEMP_AKID, "secret": TEMP_SECRET},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "The security token included in the request is invalid.",
        id="temporary-credentials-without-token",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"akid": "ASIAEXPIRED000000000", "secret": TEMP_SECRET, "token": TOKEN},
        _keep,
        {},
        403,
        "ExpiredTokenException",
        "The security token included in the request is expired",
        id="expired-session-token",
    ),
    pytest.param(
        "GET",
        "/orders",
        {},
        _keep,
        {},
        403,
        "AccessDeniedException",
        f"User: {ALICE_ARN} is not authorized to perform: execute-api:Invoke on resource: "
        "arn:aws:execute-api:eu-west-1:111122223333:a1b2c3/prod/GET/orders",
        id="policy-allows-no-such-route",
    ),
    pytest.param(
        "DELETE",
        "/pets/1",
        {},
        _keep,
        {},
        403,
        "AccessDeniedException",
        "/prod/DELETE/pets/1 with an explicit deny",
        id="policy-denies-explicitly",
    ),
    pytest.param(
        "POST",
        "/pets",
        {"body": b"{}", "headers": {"X-Amz-Content-SHA256": "0" * 64}},
        _keep,
        {},
        400,
        "BadRequestException",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
        id="content-sha256-does-not-match-body",
    ),
    pytest.param(
        "POST",
        "/pets",
        {"body": b"{}", "headers": {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "UNSIGNED-PAYLOAD is not accepted",
        id="unsigned-payload-refused",
    ),
    pytest.param(
        "GET",
        "/pets",
        {"headers": {"X-Amz-Content-SHA256": "nothex"}},
        _keep,
        {},
        403,
        "InvalidSignatureException",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD",
        id="content-sha256-malformed",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "sign_kw", "edit", "options", "status", "error_type", "message"), BAD
)
def test_bad_signatures_are_refused_before_the_app(
    make_client, method, path, sign_kw, edit, options, status, error_type, message
) -> None:
    creds = _credentials()
    creds["ASIAEXPIRED000000000"] = IamPrincipal(
        TEMP_SECRET, session_token=TOKEN, expires_at=time.time() - 1
    )
    client = make_client([_iam(credentials=creds, **options)], stage=STAGE)
    target, headers, body = edit(*sign(method, path, **sign_kw))
    # Twice: the second request meets what the first left in the authorizer's caches.
    for _ in range(2):
        r = client.request(method, target, headers=headers, content=body or None)
        assert r.status_code == status, r.text
        assert r.headers["x-amzn-errortype"] == error_type
        assert message in r.json()["message"]
        assert r.seen == []


def _with_signature(headers: list[tuple[str, str]], signature: str) -> list[tuple[str, str]]:
    return [
        (k, v.rpartition("Signature=")[0] + "Signature=" + signature if k == "Authorization" else v)
        for k, v in headers
    ]


def test_a_known_authorization_prefix_never_vouches_for_the_signature(make_client) -> None:
    # The credential scope and signed headers of a client are parsed once; every request
    # still needs its own 64 lower-case hex digits that match.
    client = make_client([_iam()], stage=STAGE)
    target, headers, _ = sign("GET", "/pets")
    good = dict(headers)["Authorization"].rpartition("Signature=")[2]
    assert client.get(target, headers=headers).status_code == 200
    flipped = ("0" if good[0] != "0" else "1") + good[1:]
    for signature in (flipped, good.upper(), good[:-1], good + "0", good[:-1] + "g"):
        r = client.get(target, headers=_with_signature(headers, signature))
        assert r.status_code == 403, signature
        assert r.json() == {"message": MISMATCH}
        assert r.seen == []
    assert client.get(target, headers=headers).status_code == 200


def test_debug_echoes_the_canonical_request(make_client) -> None:
    client = make_client([_iam(debug=True)], stage=STAGE)
    target, headers, _ = sign("GET", "/pets", params={"a": "1"})
    r = client.get(target.replace("a=1", "a=2"), headers=headers)
    message = r.json()["message"]
    assert "The Canonical String for this request should have been\n'GET\n/pets\na=2\n" in message
    assert "The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n" in message


def test_canonical_request_is_not_echoed_without_debug(make_client) -> None:
    client = make_client([_iam()], stage=STAGE)
    target, headers, _ = sign("GET", "/pets", params={"a": "1"})
    r = client.get(target.replace("a=1", "a=2"), headers=headers)
    assert r.json() == {"message": MISMATCH}


def test_unsigned_payload_when_allowed(make_client) -> None:
    client = make_client([_iam(allow_unsigned_payload=True)], stage=STAGE)
    target, headers, body = sign(
        "POST", "/pets", body=b"x", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    r = client.post(target, headers=headers, content=body)
    assert r.status_code == 200
    assert r.seen[0].body == b"x"


def test_routes_limit_the_authorizer(make_client) -> None:
    client = make_client([_iam(routes=["ANY /admin/{proxy+}"])], stage=STAGE)
    assert client.get("/public").status_code == 200
    assert client.get("/admin/users").status_code == 403


class _Store:
    def __init__(self, *, asynchronous: bool) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.asynchronous = asynchronous

    def _find(self, akid: str, token: str | None) -> IamPrincipal | None:
        self.calls.append((akid, token))
        if akid == TEMP_AKID:
            return IamPrincipal(TEMP_SECRET, user="AROAEXAMPLE:s", session_token=TOKEN)
        return None

    def lookup(self, akid: str, token: str | None) -> Any:
        if self.asynchronous:

            async def found() -> IamPrincipal | None:
                return self._find(akid, token)

            return found()
        return self._find(akid, token)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync-store", "async-store"])
def test_credential_store_gets_the_session_token(make_client, asynchronous) -> None:
    store = _Store(asynchronous=asynchronous)
    assert isinstance(store, __import__("apigw_mw").CredentialStore)
    client = make_client([IamAuthorizer(store, region=REGION)], stage=STAGE)
    target, headers, body = sign(
        "POST", "/pets", body=b"{}", akid=TEMP_AKID, secret=TEMP_SECRET, token=TOKEN
    )
    r = client.post(target, headers=headers, content=body)
    assert r.status_code == 200
    assert r.seen[0].context.identity.user == "AROAEXAMPLE:s"
    assert store.calls == [(TEMP_AKID, TOKEN)]
    target, headers, _ = sign("GET", "/pets")
    refused = client.get(target, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["message"] == "The security token included in the request is invalid."


def test_a_failing_store_fails_closed(make_client, caplog) -> None:
    class Broken:
        def lookup(self, akid: str, token: str | None) -> IamPrincipal | None:
            raise ConnectionError("credential database is down")

    client = make_client([IamAuthorizer(Broken(), region=REGION)], stage=STAGE)
    target, headers, _ = sign("GET", "/pets")
    r = client.get(target, headers=headers)
    assert r.status_code == 500
    assert r.seen == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"credentials": 42}, "IamAuthorizer.credentials", id="credentials-type"),
        pytest.param(
            {"credentials": {"AK": ""}}, "IamAuthorizer.credentials.AK", id="empty-secret"
        ),
        pytest.param({"credentials": {"A/K": "s"}}, "IamAuthorizer.credentials", id="bad-akid"),
        pytest.param({"region": "mars"}, "IamAuthorizer.region", id="region"),
        pytest.param({"service": "Execute API"}, "IamAuthorizer.service", id="service"),
        pytest.param({"max_skew": 0}, "IamAuthorizer.max_skew", id="max-skew"),
        pytest.param(
            {"credentials": {"AK": IamPrincipal("s", policy={"Statement": "nope"})}},
            "IamAuthorizer.credentials.AK.Statement[0]",
            id="policy",
        ),
    ],
)
def test_bad_configuration_names_the_field(kwargs, field) -> None:
    options: dict[str, Any] = {"credentials": {AKID: SECRET}, "region": REGION, **kwargs}
    credentials = options.pop("credentials")
    with pytest.raises(ConfigurationError) as info:
        IamAuthorizer(credentials, **options)
    assert info.value.field == field
