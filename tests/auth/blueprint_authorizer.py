"""A TOKEN authorizer shaped like the Lambda authorizer blueprint AWS offers for Python.

It is used unchanged by the tests: it reads ``authorizationToken`` and ``methodArn``, splits
the ARN into region, account, API id and stage the way the blueprint does, and builds its
policy with a small ``AuthPolicy`` builder (allowed and denied methods with ``*``
wildcards), returning ``principalId``, ``policyDocument`` and a ``context``.
"""

from __future__ import annotations

import re
from typing import Any


class HttpVerb:
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    HEAD = "HEAD"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"
    ALL = "*"


class AuthPolicy:
    """Builds an IAM policy for API Gateway from allowed and denied methods."""

    version = "2012-10-17"
    path_regex = r"^[/.a-zA-Z0-9-\*]+$"

    def __init__(self, principal: str, account_id: str) -> None:
        self.aws_account_id = account_id
        self.principal_id = principal
        self.rest_api_id = "*"
        self.region = "*"
        self.stage = "*"
        self.allow_methods: list[dict[str, Any]] = []
        self.deny_methods: list[dict[str, Any]] = []

    def _add_method(self, effect: str, verb: str, resource: str) -> None:
        if verb != "*" and not hasattr(HttpVerb, verb):
            raise NameError(f"Invalid HTTP verb {verb}")
        if not re.match(self.path_regex, resource):
            raise NameError(f"Invalid resource path: {resource}")
        resource = resource.lstrip("/")
        arn = (
            f"arn:aws:execute-api:{self.region}:{self.aws_account_id}:{self.rest_api_id}/"
            f"{self.stage}/{verb}/{resource}"
        )
        entry = {"resourceArn": arn, "conditions": None}
        (self.allow_methods if effect == "Allow" else self.deny_methods).append(entry)

    def _statement(self, effect: str, methods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not methods:
            return []
        return [
            {
                "Action": "execute-api:Invoke",
                "Effect": effect,
                "Resource": [m["resourceArn"] for m in methods],
            }
        ]

    def allow_all_methods(self) -> None:
        self._add_method("Allow", HttpVerb.ALL, "*")

    def deny_all_methods(self) -> None:
        self._add_method("Deny", HttpVerb.ALL, "*")

    def allow_method(self, verb: str, resource: str) -> None:
        self._add_method("Allow", verb, resource)

    def deny_method(self, verb: str, resource: str) -> None:
        self._add_method("Deny", verb, resource)

    def build(self) -> dict[str, Any]:
        if not self.allow_methods and not self.deny_methods:
            raise NameError("No statements defined for the policy")
        return {
            "principalId": self.principal_id,
            "policyDocument": {
                "Version": self.version,
                "Statement": self._statement("Allow", self.allow_methods)
                + self._statement("Deny", self.deny_methods),
            },
        }


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = event["authorizationToken"]
    tmp = event["methodArn"].split(":")
    api_gateway_arn = tmp[5].split("/")
    account_id = tmp[4]

    if token == "deny-me":
        raise Exception("Unauthorized")

    principal_id = "user|a1"
    policy = AuthPolicy(principal_id, account_id)
    policy.rest_api_id = api_gateway_arn[0]
    policy.region = tmp[3]
    policy.stage = api_gateway_arn[1]

    if token == "reader":
        policy.allow_method(HttpVerb.GET, "/pets/*")
        policy.allow_method(HttpVerb.GET, "/pets")
        policy.deny_method(HttpVerb.DELETE, "/pets/*")
    elif token == "admin":
        policy.allow_all_methods()
    else:
        policy.deny_all_methods()

    response = policy.build()
    response["context"] = {
        "key": "value",  # $context.authorizer.key -> value
        "number": 1,
        "bool": True,
    }
    return response
