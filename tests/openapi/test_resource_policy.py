"""x-amazon-apigateway-policy: the definition's resource policy runs as a ResourcePolicy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apigw_mw import ConfigurationError, ResourcePolicy, Stage, from_openapi
from apigw_mw.cli import main

BLOCKED = "192.0.2.0/24"


def statement(effect: str, resource: str, **extra: Any) -> dict[str, Any]:
    return {
        "Effect": effect,
        "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": [resource],
        **extra,
    }


def api_with_policy(resource: str = "execute-api:/*") -> dict[str, Any]:
    """API Gateway's documented example: allow everyone, deny one address range."""
    return {
        "swagger": "2.0",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-policy": {
            "Version": "2012-10-17",
            "Statement": [
                statement("Allow", resource),
                statement("Deny", resource, Condition={"IpAddress": {"aws:SourceIp": BLOCKED}}),
            ],
        },
        "paths": {
            "/pets": {"get": {"responses": {}}},
            "/pets/{petId}": {"get": {"responses": {}}},
        },
    }


@pytest.mark.parametrize(
    ("path", "client_ip", "status", "arn_path"),
    [
        pytest.param("/pets", "198.51.100.7", 200, None, id="outside the range"),
        pytest.param("/pets/7", "198.51.100.7", 200, None, id="outside, templated route"),
        pytest.param("/pets", "192.0.2.7", 403, "GET/pets", id="inside the range"),
        pytest.param("/pets/7", "192.0.2.255", 403, "GET/pets/7", id="inside, templated route"),
    ],
)
def test_resource_policy_denies_an_address_range(make_client, path, client_ip, status, arn_path):
    policies = from_openapi(api_with_policy(), stage=Stage("prod"))
    assert any(isinstance(p, ResourcePolicy) for p in policies)
    r = make_client(policies).get(path, client_ip=client_ip)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)
    if arn_path is not None:
        assert r.json() == {
            "message": "User: anonymous is not authorized to perform: execute-api:Invoke on "
            f"resource: arn:aws:execute-api:us-east-1:123456789012:local/prod/{arn_path} "
            "with an explicit deny"
        }
        assert r.headers["x-amzn-errortype"] == "AccessDeniedException"


EXPORTED = "arn:aws:execute-api:eu-west-1:111122223333:abc123/*"
THAT_STAGE = Stage("prod", region="eu-west-1", account_id="111122223333", api_id="abc123")


@pytest.mark.parametrize(
    ("stage", "client_ip", "status"),
    [
        pytest.param(THAT_STAGE, "198.51.100.7", 200, id="same API: allowed"),
        pytest.param(THAT_STAGE, "192.0.2.7", 403, id="same API: range denied"),
        pytest.param(Stage("prod"), "198.51.100.7", 403, id="other API: no statement allows"),
    ],
)
def test_full_arns_of_an_export_match_the_stage_they_name(make_client, stage, client_ip, status):
    policies = from_openapi(api_with_policy(EXPORTED), stage=stage)
    r = make_client(policies).get("/pets", client_ip=client_ip)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


def test_a_bad_resource_policy_names_the_extension():
    api = api_with_policy()
    api["x-amazon-apigateway-policy"]["Statement"][1]["Condition"] = {
        "IpAddress": {"aws:PrincipalTag/team": "x"}
    }
    with pytest.raises(ConfigurationError) as info:
        from_openapi(api)
    assert info.value.field == "spec#/x-amazon-apigateway-policy"
    assert "aws:PrincipalTag/team" in info.value.message


def test_check_lists_the_resource_policy(capsys, tmp_path):
    path = tmp_path / "api.json"
    path.write_text(json.dumps(api_with_policy(EXPORTED)))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resource policy from x-amazon-apigateway-policy:" in out
    assert f"    Allow {EXPORTED}\n" in out
    assert f"    Deny {EXPORTED} if IpAddress aws:SourceIp {BLOCKED}\n" in out
    assert (
        "its ARNs name API abc123 (eu-west-1, account 111122223333): they match only under "
        "Stage(region='eu-west-1', account_id='111122223333', api_id='abc123')" in out
    )
    assert "x-amazon-apigateway-policy:" not in out.split("IGNORED")[1]


@pytest.mark.parametrize(
    ("client_ip", "status"),
    [
        pytest.param("198.51.100.7", 403, id="only a named principal is allowed"),
        pytest.param("192.0.2.7", 403, id="and the range is denied"),
    ],
)
def test_statements_for_a_named_principal_never_allow(
    make_client, capsys, tmp_path, client_ip, status
):
    api = api_with_policy()
    api["x-amazon-apigateway-policy"]["Statement"][0]["Principal"] = {
        "AWS": "arn:aws:iam::111122223333:root"
    }
    r = make_client(from_openapi(api)).get("/pets", client_ip=client_ip)
    assert (r.status_code, r.seen) == (status, [])
    path = tmp_path / "api.json"
    path.write_text(json.dumps(api))
    assert main(["check", str(path)]) == 0
    assert "Allow execute-api:/* (names a principal: never matches" in capsys.readouterr().out
