"""LambdaAuthorizer: events, answers, errors and the result cache, through both adapters."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from apigw_mw import (
    ConfigurationError,
    GatewayResponse,
    GatewayResponses,
    LambdaAuthorizer,
    Stage,
)
from apigw_mw.auth import custom as custom_module
from apigw_mw.auth.jwt import LocalIssuer
from tests.auth.blueprint_authorizer import lambda_handler

STAGE = Stage("prod", region="eu-west-1", account_id="111122223333", api_id="abc123")
ARN = "arn:aws:execute-api:eu-west-1:111122223333:abc123/prod"


def allow_policy(resource: str | list[str], effect: str = "Allow") -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
    }


class Recorder:
    """A handler that records its events and answers what it is told."""

    def __init__(self, answer: Any = None, raises: BaseException | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.answer = answer
        self.raises = raises

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        self.contexts.append(context)
        self.threads.append(threading.current_thread())
        if self.raises is not None:
            raise self.raises
        if callable(self.answer):
            return self.answer(event)
        return self.answer


def own_arn(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "principalId": "user|a1",
        "policyDocument": allow_policy(event.get("methodArn") or event["routeArn"]),
        "context": {"tier": "gold", "n": 3, "ok": True},
    }


# -- the AWS blueprint, unchanged -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "method", "path", "status"),
    [
        pytest.param("reader", "GET", "/pets/1", 200, id="reader-get"),
        pytest.param("reader", "GET", "/pets", 200, id="reader-list"),
        pytest.param("reader", "DELETE", "/pets/1", 403, id="reader-explicit-deny"),
        pytest.param("reader", "POST", "/pets", 403, id="reader-not-allowed"),
        pytest.param("admin", "DELETE", "/pets/1", 200, id="admin-all"),
        pytest.param("nobody", "GET", "/pets", 403, id="deny-all"),
        pytest.param("deny-me", "GET", "/pets", 401, id="raises-unauthorized"),
    ],
)
def test_the_blueprint_authorizer_runs_unchanged(make_client, token, method, path, status):
    client = make_client([LambdaAuthorizer(lambda_handler, ttl=0)], stage=STAGE)
    r = client.request(method, path, headers={"Authorization": token})
    assert r.status_code == status
    if status == 200:
        auth = r.json()["context"]["authorizer"]
        assert auth == {"principalId": "user|a1", "key": "value", "number": 1, "bool": True}
    elif status == 403:
        assert r.json() == {"message": "User is not authorized to access this resource"}
        assert r.headers["x-amzn-errortype"] == "AccessDeniedException"
        assert r.seen == []
    else:
        assert r.json() == {"message": "Unauthorized"}
        assert r.seen == []


def test_token_event_is_shaped_as_aws_sends_it(make_client):
    handler = Recorder(own_arn)
    client = make_client([LambdaAuthorizer(handler, function_name="pets-auth")], stage=STAGE)
    r = client.get("/pets/42?x=1", headers={"Authorization": "Bearer abc"})
    assert r.status_code == 200
    assert handler.events == [
        {"type": "TOKEN", "authorizationToken": "Bearer abc", "methodArn": f"{ARN}/GET/pets/42"}
    ]
    ctx = handler.contexts[0]
    assert ctx.function_name == "pets-auth"
    assert ctx.invoked_function_arn == "arn:aws:lambda:eu-west-1:111122223333:function:pets-auth"
    assert 0 < ctx.get_remaining_time_in_millis() <= 10_000
    assert len(ctx.aws_request_id) == 36


def test_method_arn_uses_the_actual_path_not_the_template(make_client):
    handler = Recorder(own_arn)
    client = make_client(
        [LambdaAuthorizer(handler, routes=["GET /pets/{id}"])],
        stage=Stage("prod", base_path="/v1"),
    )
    assert client.get("/v1/pets/7", headers={"Authorization": "t"}).status_code == 200
    assert handler.events[0]["methodArn"].endswith("/prod/GET/pets/7")


# -- bad input and failures -----------------------------------------------------------------------


def slow(event: dict[str, Any], context: Any) -> Any:
    time.sleep(0.5)
    return own_arn(event)


async def async_slow(event: dict[str, Any], context: Any) -> Any:
    await asyncio.sleep(0.5)
    return own_arn(event)


FAILURES = [
    pytest.param(Recorder(None), 500, id="returns-none"),
    pytest.param(Recorder("Allow"), 500, id="returns-a-string"),
    pytest.param(Recorder(raises=ValueError("boom")), 500, id="raises"),
    pytest.param(Recorder(raises=Exception("unauthorized")), 500, id="raises-lowercase"),
    pytest.param(Recorder(raises=Exception("Unauthorized")), 401, id="raises-Unauthorized"),
    pytest.param(Recorder({"principalId": "u"}), 500, id="no-policy"),
    pytest.param(Recorder({"principalId": "u", "policyDocument": {}}), 500, id="no-statement"),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": "{not json"}), 500, id="policy-not-json"
    ),
    pytest.param(Recorder({"policyDocument": allow_policy("*")}), 500, id="no-principal"),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": allow_policy("*"), "context": {"a": {}}}),
        500,
        id="nested-context",
    ),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": allow_policy("*"), "context": []}),
        500,
        id="context-not-object",
    ),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": allow_policy("not-an-arn")}),
        403,
        id="bad-arn-in-policy",
    ),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": allow_policy(f"{ARN}/GET/other")}),
        403,
        id="policy-for-another-route",
    ),
    pytest.param(
        Recorder({"principalId": "u", "policyDocument": allow_policy("*", "Deny")}),
        403,
        id="explicit-deny",
    ),
    pytest.param(slow, 500, id="slow"),
    pytest.param(async_slow, 500, id="slow-async"),
]


@pytest.mark.parametrize(("handler", "status"), FAILURES)
def test_failures_never_reach_the_app(make_client, handler, status):
    client = make_client([LambdaAuthorizer(handler, timeout=0.2)], stage=STAGE)
    r = client.get("/pets", headers={"Authorization": "token"})
    assert r.status_code == status
    assert r.seen == []
    expected = {
        500: {"message": None},
        403: {"message": "User is not authorized to access this resource"},
        401: {"message": "Unauthorized"},
    }[status]
    assert r.json() == expected
    if status == 500:
        assert r.headers["x-amzn-errortype"] == "AuthorizerConfigurationException"


def test_the_500_is_customisable(make_client):
    responses = GatewayResponses(
        {
            "AUTHORIZER_CONFIGURATION_ERROR": GatewayResponse(
                status=503, templates={"application/json": '{"error": "auth down"}'}
            )
        }
    )
    client = make_client([LambdaAuthorizer(Recorder(None))], responses=responses)
    r = client.get("/pets", headers={"Authorization": "t"})
    assert r.status_code == 503
    assert r.json() == {"error": "auth down"}


def test_missing_token_is_401_without_calling(make_client):
    handler = Recorder(own_arn)
    r = make_client([LambdaAuthorizer(handler)]).get("/pets")
    assert r.status_code == 401
    assert handler.events == []
    assert r.seen == []


@pytest.mark.parametrize(
    ("token", "status", "called"),
    [
        pytest.param("Bearer abc.def", 200, True, id="matches"),
        pytest.param("abc.def", 401, False, id="no-bearer"),
        pytest.param("Bearer abc.def x", 401, False, id="must-match-whole-token"),
    ],
)
def test_validation_expression(make_client, token, status, called):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(handler, validation_expression=r"Bearer [a-z]+\.[a-z]+")
    r = make_client([policy]).get("/pets", headers={"Authorization": token})
    assert r.status_code == status
    assert bool(handler.events) == called


def test_async_handler(make_client):
    async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return own_arn(event)

    r = make_client([LambdaAuthorizer(handler)]).get("/pets", headers={"Authorization": "t"})
    assert r.status_code == 200
    assert r.json()["context"]["authorizer"]["tier"] == "gold"


def test_plain_handler_runs_off_the_event_loop_thread(make_client):
    handler = Recorder(own_arn)
    client = make_client([LambdaAuthorizer(handler)])
    assert client.get("/pets", headers={"Authorization": "t"}).status_code == 200
    if client.kind == "asgi":
        assert handler.threads[0] is not threading.current_thread()


# -- REQUEST authorizers --------------------------------------------------------------------------


def test_request_event_is_shaped_as_aws_sends_it(make_client):
    handler = Recorder(own_arn)
    stage = Stage(
        "prod",
        variables={"color": "blue"},
        region="eu-west-1",
        account_id="111122223333",
        api_id="abc123",
    )
    policy = LambdaAuthorizer(
        handler,
        type="REQUEST",
        identity_sources=["method.request.header.X-User", "method.request.querystring.q"],
        routes=["GET /pets/{id}"],
    )
    client = make_client([policy], stage=stage)
    r = client.get("/pets/9?q=1&q=2&z=3", headers={"X-User": "alice"})
    assert r.status_code == 200
    event = handler.events[0]
    assert event["type"] == "REQUEST"
    assert event["methodArn"] == f"{ARN}/GET/pets/9"
    assert event["resource"] == "/pets/{id}"
    assert event["path"] == "/pets/9"
    assert event["httpMethod"] == "GET"
    assert event["headers"]["X-User"] == "alice"  # any case, as handlers written for REST expect
    assert event["multiValueHeaders"]["x-user"] == ["alice"]
    assert event["queryStringParameters"] == {"q": "2", "z": "3"}
    assert event["multiValueQueryStringParameters"] == {"q": ["1", "2"], "z": ["3"]}
    assert event["pathParameters"] == {"id": "9"}
    assert event["stageVariables"] == {"color": "blue"}
    assert event["requestContext"]["stage"] == "prod"
    assert event["requestContext"]["resourcePath"] == "/pets/{id}"
    assert "version" not in event


def test_request_event_payload_2(make_client):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(
        handler,
        type="REQUEST",
        identity_sources=["$request.header.Authorization"],
        payload_format="2.0",
        routes=["GET /pets/{id}"],
    )
    client = make_client([policy], stage=STAGE)
    headers = {"Authorization": "tok", "Cookie": "a=1; b=2"}
    assert client.get("/pets/5?q=1", headers=headers).status_code == 200
    event = handler.events[0]
    assert event["version"] == "2.0"
    assert event["routeArn"] == f"{ARN}/GET/pets/5"
    assert event["identitySource"] == ["tok"]
    assert event["routeKey"] == "GET /pets/{id}"
    assert event["rawPath"] == "/pets/5"
    assert event["rawQueryString"] == "q=1"
    if client.kind == "asgi":  # werkzeug's test client drops a hand-written Cookie header
        assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"]["authorization"] == "tok"
    assert event["requestContext"]["http"]["method"] == "GET"


@pytest.mark.parametrize(
    ("headers", "query", "status", "called"),
    [
        pytest.param({"X-User": "a"}, "?tenant=t", 200, True, id="all-present"),
        pytest.param({}, "?tenant=t", 401, False, id="header-missing"),
        pytest.param({"X-User": "a"}, "", 401, False, id="query-missing"),
        pytest.param({"X-User": "a"}, "?tenant=", 401, False, id="query-empty"),
    ],
)
def test_request_with_caching_needs_every_identity_source(
    make_client, headers, query, status, called
):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(
        handler,
        type="REQUEST",
        identity_sources=["$request.header.X-User", "$request.querystring.tenant"],
    )
    r = make_client([policy]).get("/pets" + query, headers=headers)
    assert r.status_code == status
    assert bool(handler.events) == called


def test_request_without_caching_calls_even_without_sources(make_client):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(
        handler, type="REQUEST", identity_sources=["$request.header.X-User"], ttl=0
    )
    assert make_client([policy]).get("/pets").status_code == 200
    assert len(handler.events) == 1


def test_stage_variable_and_context_identity_sources(make_client):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(
        handler,
        type="REQUEST",
        identity_sources=["stageVariables.color", "context.identity.sourceIp"],
    )
    client = make_client([policy], stage=Stage("prod", variables={"color": "red"}))
    assert client.get("/pets", client_ip="10.1.2.3").status_code == 200
    assert client.get("/pets", client_ip="10.1.2.3").status_code == 200
    assert client.get("/pets", client_ip="10.9.9.9").status_code == 200
    assert len(handler.events) == 2  # cached per (color, source ip)


# -- the result cache -----------------------------------------------------------------------------


def test_results_are_cached_per_identity(make_client):
    handler = Recorder(own_arn)
    client = make_client([LambdaAuthorizer(handler, ttl=300)])
    for _ in range(3):
        assert client.get("/pets", headers={"Authorization": "a"}).status_code == 200
    assert client.get("/pets", headers={"Authorization": "b"}).status_code == 200
    assert len(handler.events) == 2


def test_ttl_zero_calls_every_time(make_client):
    handler = Recorder(own_arn)
    client = make_client([LambdaAuthorizer(handler, ttl=0)])
    for _ in range(3):
        assert client.get("/pets", headers={"Authorization": "a"}).status_code == 200
    assert len(handler.events) == 3


class _Clock:
    """``time`` for the custom module, with a settable offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_cached_results_expire_after_ttl(make_client, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(custom_module, "time", clock)
    handler = Recorder(own_arn)
    client = make_client([LambdaAuthorizer(handler, ttl=60)])
    assert client.get("/pets", headers={"Authorization": "a"}).status_code == 200
    clock.offset = 59
    assert client.get("/pets", headers={"Authorization": "a"}).status_code == 200
    assert len(handler.events) == 1
    clock.offset = 61
    assert client.get("/pets", headers={"Authorization": "a"}).status_code == 200
    assert len(handler.events) == 2


def test_cached_policy_is_checked_against_each_requests_arn(make_client):
    handler = Recorder(own_arn)  # allows exactly the ARN of the request it was called for
    client = make_client([LambdaAuthorizer(handler)], stage=STAGE)
    assert client.get("/pets/1", headers={"Authorization": "a"}).status_code == 200
    # Not mentioned by the cached policy: called again for this ARN, and that is cached too.
    assert client.get("/orders", headers={"Authorization": "a"}).status_code == 200
    assert client.get("/orders", headers={"Authorization": "a"}).status_code == 200
    assert client.get("/pets/1", headers={"Authorization": "a"}).status_code == 200
    assert [e["methodArn"] for e in handler.events] == [f"{ARN}/GET/pets/1", f"{ARN}/GET/orders"]


def test_aws_exact_cache_behaviour_is_an_option(make_client):
    handler = Recorder(own_arn)
    policy = LambdaAuthorizer(handler, reauthorize_unlisted=False)
    client = make_client([policy], stage=STAGE)
    assert client.get("/pets/1", headers={"Authorization": "a"}).status_code == 200
    r = client.get("/orders", headers={"Authorization": "a"})
    assert r.status_code == 403
    assert r.seen == []
    assert len(handler.events) == 1


def test_a_cached_explicit_deny_answers_403_without_calling(make_client):
    def answer(event: dict[str, Any]) -> dict[str, Any]:
        return {
            "principalId": "u",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": f"{ARN}/*"},
                    {
                        "Action": "execute-api:Invoke",
                        "Effect": "Deny",
                        "Resource": f"{ARN}/DELETE/*",
                    },
                ],
            },
        }

    handler = Recorder(answer)
    client = make_client([LambdaAuthorizer(handler)], stage=STAGE)
    assert client.get("/pets/1", headers={"Authorization": "a"}).status_code == 200
    r = client.request("DELETE", "/pets/1", headers={"Authorization": "a"})
    assert r.status_code == 403
    assert len(handler.events) == 1


# -- simple responses, context values, usage identifier -------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        pytest.param({"isAuthorized": True, "context": {"tier": "gold"}}, 200, id="authorized"),
        pytest.param({"isAuthorized": False}, 403, id="not-authorized"),
        pytest.param({"isAuthorized": "yes"}, 500, id="not-a-bool"),
        pytest.param({}, 500, id="missing"),
    ],
)
def test_simple_responses(make_client, answer, status):
    policy = LambdaAuthorizer(
        Recorder(answer),
        type="REQUEST",
        identity_sources=["$request.header.Authorization"],
        payload_format="2.0",
        simple_responses=True,
    )
    r = make_client([policy]).get("/pets", headers={"Authorization": "t"})
    assert r.status_code == status
    if status == 200:
        auth = r.json()["context"]["authorizer"]
        assert auth["lambda"] == {"tier": "gold"}
        assert auth["tier"] == "gold"
    else:
        assert r.seen == []


def test_usage_identifier_key_feeds_api_keys(make_client):
    def answer(event: dict[str, Any]) -> dict[str, Any]:
        return {**own_arn(event), "usageIdentifierKey": "k" * 24}

    client = make_client([LambdaAuthorizer(Recorder(answer))])
    for _ in range(2):  # fresh and cached
        r = client.get("/pets", headers={"Authorization": "t"})
        assert r.status_code == 200
        ctx = r.seen[0].context
        assert "usageIdentifierKey" not in ctx.authorizer  # an API key: not for the app
        assert ctx.extra["usageIdentifierKey"] == "k" * 24
        assert ctx.authorizer["principalId"] == "user|a1"
        assert ctx.authorizer["n"] == 3
        assert ctx.authorizer["ok"] is True


# -- several authorizers --------------------------------------------------------------------------


def test_several_authorizers_each_must_allow_and_outputs_merge(make_client):
    local = LocalIssuer()
    jwt_policy = local.authorizer(audience="demo", identity_source="$request.header.X-Jwt")
    handler = Recorder(own_arn)
    client = make_client([jwt_policy, LambdaAuthorizer(handler)])
    both = {"X-Jwt": local.token(sub="alice"), "Authorization": "t"}
    r = client.get("/pets", headers=both)
    assert r.status_code == 200
    auth = r.seen[0].context.authorizer
    assert auth["claims"]["sub"] == "alice"
    assert auth["tier"] == "gold"
    r = client.get("/pets", headers={"Authorization": "t"})
    assert r.status_code == 401
    assert r.seen == []
    r = client.get("/pets", headers={"X-Jwt": local.token()})
    assert r.status_code == 401


def test_routes_choose_the_authorizer(make_client):
    local = LocalIssuer()
    handler = Recorder(own_arn)
    client = make_client(
        [
            local.authorizer(audience="demo", routes=["ANY /users/{proxy+}"]),
            LambdaAuthorizer(handler, routes=["ANY /admin/{proxy+}"]),
        ]
    )
    assert client.get("/users/me", headers={"Authorization": local.token()}).status_code == 200
    assert handler.events == []
    assert client.get("/admin/x", headers={"Authorization": "t"}).status_code == 200
    assert client.get("/open").status_code == 200


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"type": "COOKIE"}, "type", id="type"),
        pytest.param({"ttl": 3601}, "ttl", id="ttl-too-long"),
        pytest.param({"ttl": -1}, "ttl", id="ttl-negative"),
        pytest.param({"timeout": 0}, "timeout", id="timeout"),
        pytest.param({"payload_format": "3.0"}, "payload_format", id="payload-format"),
        pytest.param({"payload_format": "2.0"}, "payload_format", id="token-with-2.0"),
        pytest.param({"simple_responses": True}, "simple_responses", id="simple-with-1.0"),
        pytest.param({"validation_expression": "("}, "validation_expression", id="bad-regex"),
        pytest.param(
            {"identity_sources": ["$request.header.A", "$request.header.B"]},
            "identity_sources",
            id="token-two-sources",
        ),
        pytest.param(
            {"identity_sources": ["method.request.querystring.q"]},
            "identity_sources",
            id="token-from-query",
        ),
        pytest.param(
            {"identity_sources": ["request.header.A"]}, "identity_sources[0]", id="syntax"
        ),
        pytest.param(
            {"type": "REQUEST", "identity_sources": []}, "identity_sources", id="request-no-sources"
        ),
        pytest.param(
            {
                "type": "REQUEST",
                "identity_sources": "$request.header.A",
                "validation_expression": "x",
            },
            "validation_expression",
            id="request-validation",
        ),
    ],
)
def test_configuration_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigurationError) as info:
        LambdaAuthorizer(lambda_handler, **kwargs)
    assert info.value.field == field


def test_handler_must_be_callable():
    with pytest.raises(ConfigurationError) as info:
        LambdaAuthorizer("lambda_handler")  # type: ignore[arg-type]
    assert info.value.field == "handler"
