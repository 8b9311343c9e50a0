"""ResourcePolicy: source-IP and route rules, evaluated first, through both adapters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apigw_mw import ConfigurationError, IamAuthorizer, ResourcePolicy, Stage

STAGE = Stage("prod", region="eu-west-1", account_id="111122223333", api_id="a1b2c3")
ARN = "arn:aws:execute-api:eu-west-1:111122223333:a1b2c3/prod"


def _st(effect: str, resource: Any = "execute-api:/*", **extra: Any) -> dict[str, Any]:
    return {
        "Effect": effect,
        "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": resource,
        **extra,
    }


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


OFFICE_ONLY = _doc(
    _st("Allow"),
    _st("Deny", Condition={"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.0/24"]}}),
)
ALLOW_RANGES = _doc(
    _st("Allow", Condition={"IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:db8::/32"]}})
)
NO_DELETES = _doc(
    _st("Allow"),
    _st("Deny", "execute-api:/*/DELETE/*"),
    _st("Deny", f"{ARN}/GET/admin/*"),
)


def _denied(arn: str, explicit: bool) -> str:
    suffix = " with an explicit deny" if explicit else ""
    return (
        "User: anonymous is not authorized to perform: execute-api:Invoke on resource: "
        f"{arn}{suffix}"
    )


CASES = [
    pytest.param(OFFICE_ONLY, "GET", "/pets", "10.1.2.3", {}, None, id="ip-in-allowed-range"),
    pytest.param(OFFICE_ONLY, "GET", "/pets", "192.0.2.77", {}, None, id="ip-in-second-range"),
    pytest.param(
        OFFICE_ONLY,
        "GET",
        "/pets",
        "198.51.100.1",
        {},
        _denied(f"{ARN}/GET/pets", True),
        id="ip-outside-ranges-explicit-deny",
    ),
    pytest.param(ALLOW_RANGES, "POST", "/orders", "203.0.113.9", {}, None, id="allow-ipv4-range"),
    pytest.param(ALLOW_RANGES, "GET", "/", "2001:db8::1", {}, None, id="allow-ipv6-range"),
    pytest.param(
        ALLOW_RANGES,
        "GET",
        "/pets/1",
        "198.51.100.1",
        {},
        _denied(f"{ARN}/GET/pets/1", False),
        id="no-allow-implicit-deny",
    ),
    pytest.param(NO_DELETES, "GET", "/pets/1", "198.51.100.1", {}, None, id="wildcard-allows"),
    pytest.param(
        NO_DELETES,
        "DELETE",
        "/pets/1",
        "198.51.100.1",
        {},
        _denied(f"{ARN}/DELETE/pets/1", True),
        id="method-wildcard-denies",
    ),
    pytest.param(
        NO_DELETES,
        "GET",
        "/admin/users",
        "198.51.100.1",
        {},
        _denied(f"{ARN}/GET/admin/users", True),
        id="full-arn-resource-denies",
    ),
    pytest.param(
        OFFICE_ONLY,
        "GET",
        "/pets",
        "127.0.0.1",
        {"x-forwarded-for": "10.9.9.9"},
        None,
        id="client-behind-trusted-proxy",
    ),
    pytest.param(
        OFFICE_ONLY,
        "GET",
        "/pets",
        "127.0.0.1",
        {"x-forwarded-for": "10.9.9.9, 198.51.100.4"},
        _denied(f"{ARN}/GET/pets", True),
        id="rightmost-untrusted-hop-is-the-client",
    ),
    pytest.param(
        OFFICE_ONLY,
        "GET",
        "/pets",
        "198.51.100.1",
        {"x-forwarded-for": "10.9.9.9"},
        _denied(f"{ARN}/GET/pets", True),
        id="forwarded-for-from-untrusted-peer-ignored",
    ),
    pytest.param(
        _doc(
            _st("Allow"),
            {**_st("Deny"), "Principal": {"AWS": "arn:aws:iam::111122223333:user/bob"}},
        ),
        "GET",
        "/pets",
        "198.51.100.1",
        {},
        None,
        id="statement-for-named-principal-skipped",
    ),
]


@pytest.mark.parametrize(("document", "method", "path", "client_ip", "headers", "message"), CASES)
def test_resource_policy(make_client, document, method, path, client_ip, headers, message) -> None:
    client = make_client([ResourcePolicy(document)], stage=STAGE, trusted_proxies=["127.0.0.1"])
    r = client.request(method, path, headers=headers, client_ip=client_ip)
    if message is None:
        assert r.status_code == 200
        assert len(r.seen) == 1
        return
    assert r.status_code == 403
    assert r.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert r.json() == {"message": message}
    assert r.seen == []
    # The decision is cached per route and address: asking again answers the same.
    assert client.request(method, path, headers=headers, client_ip=client_ip).status_code == 403


def test_json_text_and_repeated_requests(make_client) -> None:
    client = make_client([ResourcePolicy(json.dumps(OFFICE_ONLY))], stage=STAGE)
    for _ in range(3):
        assert client.get("/pets", client_ip="10.0.0.1").status_code == 200
        assert client.get("/pets", client_ip="8.8.8.8").status_code == 403


def test_runs_before_authorizers(make_client) -> None:
    iam = IamAuthorizer({"AKID": "secret"}, region="eu-west-1")
    client = make_client([iam, ResourcePolicy(OFFICE_ONLY)], stage=STAGE)
    outside = client.get("/pets", client_ip="198.51.100.1")
    assert outside.headers["x-amzn-errortype"] == "AccessDeniedException"
    inside = client.get("/pets", client_ip="10.0.0.1")
    assert inside.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_base_path_is_not_part_of_the_arn(make_client) -> None:
    stage = Stage(
        "prod", region="eu-west-1", account_id="111122223333", api_id="a1b2c3", base_path="/v1"
    )
    client = make_client(
        [ResourcePolicy(_doc(_st("Allow", "execute-api:/prod/GET/pets")))], stage=stage
    )
    assert client.get("/v1/pets").status_code == 200
    r = client.get("/v1/orders")
    assert r.json()["message"] == _denied(f"{ARN}/GET/orders", False)


def test_user_agent_condition_is_evaluated_per_request(make_client) -> None:
    doc = _doc(_st("Allow"), _st("Deny", Condition={"StringLike": {"aws:UserAgent": "*curl*"}}))
    client = make_client([ResourcePolicy(doc)], stage=STAGE)
    assert client.get("/", headers={"user-agent": "python-httpx"}).status_code == 200
    assert client.get("/", headers={"user-agent": "curl/8.0"}).status_code == 403
    assert client.get("/", headers={"user-agent": "python-httpx"}).status_code == 200


@pytest.mark.parametrize(
    ("document", "field"),
    [
        pytest.param(
            _doc(_st("Allow", Condition={"IpAddress": {"aws:SourceIpAddress": "10.0.0.0/8"}})),
            "ResourcePolicy.document.Statement[0].Condition.IpAddress.aws:SourceIpAddress",
            id="unknown-aws-condition-key",
        ),
        pytest.param(
            _doc(_st("Allow", Condition={"IpAddress": {"SourceIp": "10.0.0.0/8"}})),
            "ResourcePolicy.document.Statement[0].Condition.IpAddress.SourceIp",
            id="condition-key-without-prefix",
        ),
        pytest.param(
            _doc(_st("Allow", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.300/8"}})),
            "ResourcePolicy.document.Statement[0].Condition.IpAddress.aws:SourceIp",
            id="bad-cidr",
        ),
        pytest.param(
            _doc(_st("Maybe")), "ResourcePolicy.document.Statement[0].Effect", id="bad-effect"
        ),
        pytest.param("{not json", "ResourcePolicy.document", id="not-json"),
        pytest.param(["a list"], "ResourcePolicy.document", id="not-an-object"),
        pytest.param({"Version": "2012-10-17"}, "ResourcePolicy.document", id="no-statement"),
    ],
)
def test_bad_documents_name_the_field(document, field) -> None:
    with pytest.raises(ConfigurationError) as info:
        ResourcePolicy(document)
    assert info.value.field == field
