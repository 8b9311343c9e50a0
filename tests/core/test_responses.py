"""Gateway responses: AWS defaults per type, request ids, and customisation."""

from __future__ import annotations

import re
import uuid

import pytest

from apigw_mw import (
    RESPONSE_TYPES,
    BasePolicy,
    ConfigurationError,
    Deny,
    GatewayResponse,
    GatewayResponses,
    Phase,
    RouteTable,
    Stage,
)
from tests.core.policies import Refuse, Tag

# AWS's defaults (status, message, x-amzn-ErrorType), written out rather than read from the
# library so that a change to them fails here.
DEFAULTS = {
    "ACCESS_DENIED": (
        403,
        "User is not authorized to access this resource",
        "AccessDeniedException",
    ),
    "API_CONFIGURATION_ERROR": (500, "Internal server error", "InternalServerErrorException"),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, None, "AuthorizerConfigurationException"),
    "AUTHORIZER_FAILURE": (500, None, "AuthorizerFailureException"),
    "BAD_REQUEST_PARAMETERS": (400, "Missing required request parameters", "BadRequestException"),
    "BAD_REQUEST_BODY": (400, "Invalid request body", "BadRequestException"),
    "EXPIRED_TOKEN": (
        403,
        "The security token included in the request is expired",
        "ExpiredTokenException",
    ),
    "INTEGRATION_FAILURE": (504, "Internal server error", "InternalServerErrorException"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out", "InternalServerErrorException"),
    "INVALID_API_KEY": (403, "Forbidden", "ForbiddenException"),
    "INVALID_SIGNATURE": (
        403,
        "The request signature we calculated does not match the signature you provided",
        "InvalidSignatureException",
    ),
    "MISSING_AUTHENTICATION_TOKEN": (
        403,
        "Missing Authentication Token",
        "MissingAuthenticationTokenException",
    ),
    "QUOTA_EXCEEDED": (429, "Limit Exceeded", "LimitExceededException"),
    "REQUEST_TOO_LARGE": (413, "Request Too Long", "RequestTooLargeException"),
    "RESOURCE_NOT_FOUND": (404, "Not Found", "NotFoundException"),
    "THROTTLED": (429, "Too Many Requests", "TooManyRequestsException"),
    "UNAUTHORIZED": (401, "Unauthorized", "UnauthorizedException"),
    "UNSUPPORTED_MEDIA_TYPE": (415, "Unsupported Media Type", "UnsupportedMediaTypeException"),
    "WAF_FILTERED": (403, "Forbidden", "WAFFilteredException"),
    "DEFAULT_4XX": (400, "Bad Request", "BadRequestException"),
    "DEFAULT_5XX": (500, "Internal server error", "InternalServerErrorException"),
}

UUID4ISH = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_every_type_is_covered():
    assert set(DEFAULTS) == set(RESPONSE_TYPES)


@pytest.mark.parametrize(
    ("rtype", "status", "message", "error_type"),
    [pytest.param(name, *values, id=name) for name, values in DEFAULTS.items()],
)
def test_default_gateway_response(make_client, rtype, status, message, error_type):
    r = make_client([Refuse(rtype)]).get("/x")
    assert r.status_code == status
    assert r.json() == {"message": message}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-amzn-errortype"] == error_type
    assert UUID4ISH.match(r.headers["x-amzn-requestid"])
    assert r.headers["x-amz-apigw-id"]
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.seen == []


def test_message_override_and_null(make_client):
    assert make_client([Refuse("UNAUTHORIZED", message="Token expired")]).get("/x").json() == {
        "message": "Token expired"
    }
    quoted = make_client([Refuse("ACCESS_DENIED", message='say "no"\n')]).get("/x")
    assert quoted.json() == {"message": 'say "no"\n'}


# -- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("deny", [False, True], ids=["success", "gateway-response"])
@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        pytest.param(None, False, id="none"),
        pytest.param("3f1c0c7e-5a7b-4c1e-9d2a-0b6f2e8a9c11", True, id="uuid-kept"),
        pytest.param("3F1C0C7E-5A7B-4C1E-9D2A-0B6F2E8A9C11", True, id="upper-case-uuid-kept"),
        pytest.param("not-a-uuid", False, id="garbage-replaced"),
        pytest.param("3f1c0c7e-5a7b-4c1e-9d2a-0b6f2e8a9c11x", False, id="uuid-with-suffix"),
        pytest.param("3f1c0c7e5a7b4c1e9d2a0b6f2e8a9c11", False, id="no-dashes"),
        pytest.param("", False, id="empty"),
    ],
)
def test_request_id_on_every_response(make_client, supplied, kept, deny):
    client = make_client([Refuse("THROTTLED")] if deny else [Tag("t")])
    headers = {"x-amzn-RequestId": supplied} if supplied is not None else None
    r = client.get("/x", headers=headers)
    rid = r.headers["x-amzn-requestid"]
    assert r.headers.get_list("x-amzn-requestid") == [rid]
    if kept:
        assert rid == supplied
    else:
        assert rid != supplied
        assert UUID4ISH.match(rid)
    if not deny:
        assert r.json()["context"]["requestId"] == rid


def test_request_ids_are_unique(make_client):
    client = make_client()
    ids = {client.get("/x").headers["x-amzn-requestid"] for _ in range(50)}
    assert len(ids) == 50
    for rid in ids:
        uuid.UUID(rid)


# -- customisation -------------------------------------------------------------------------


def _custom(**responses: GatewayResponse) -> GatewayResponses:
    return GatewayResponses(responses)


@pytest.mark.parametrize(
    ("responses", "rtype", "status", "headers", "body"),
    [
        pytest.param(
            _custom(THROTTLED=GatewayResponse(status=503)),
            "THROTTLED",
            503,
            {"x-amzn-errortype": "TooManyRequestsException"},
            {"message": "Too Many Requests"},
            id="status",
        ),
        pytest.param(
            _custom(THROTTLED=GatewayResponse(status="503")),  # type: ignore[arg-type]
            "THROTTLED",
            503,
            {},
            {"message": "Too Many Requests"},
            id="status-as-string-like-openapi",
        ),
        pytest.param(
            _custom(
                ACCESS_DENIED=GatewayResponse(
                    headers={"Access-Control-Allow-Origin": "'*'", "X-Plain": "plain value"}
                )
            ),
            "ACCESS_DENIED",
            403,
            {"access-control-allow-origin": "*", "x-plain": "plain value"},
            {"message": "User is not authorized to access this resource"},
            id="static-quoted-and-plain-headers",
        ),
        pytest.param(
            _custom(
                UNAUTHORIZED=GatewayResponse(
                    headers={
                        "X-Echo-Tenant": "method.request.header.x-tenant",
                        "X-Echo-Q": "method.request.querystring.q",
                        "X-Echo-Id": "method.request.path.petId",
                        "X-Absent": "method.request.header.x-absent",
                    }
                )
            ),
            "UNAUTHORIZED",
            401,
            {"x-echo-tenant": "acme", "x-echo-q": "dogs", "x-echo-id": "42"},
            {"message": "Unauthorized"},
            id="request-references-in-headers",
        ),
        pytest.param(
            _custom(
                QUOTA_EXCEEDED=GatewayResponse(
                    templates={
                        "application/json": (
                            '{"error": $context.error.messageString, '
                            '"type": "$context.error.responseType", '
                            '"id": "$context.requestId", "stage": "$context.stage", '
                            '"route": "$context.routeKey", "ip": "$context.identity.sourceIp", '
                            '"color": "$stageVariables.color", "tenant": '
                            '"${method.request.header.x-tenant}", '
                            '"q": "$method.request.querystring.q", '
                            '"pet": "$method.request.path.petId"}'
                        )
                    }
                )
            ),
            "QUOTA_EXCEEDED",
            429,
            {"content-type": "application/json"},
            {
                "error": "Limit Exceeded",
                "type": "QUOTA_EXCEEDED",
                "id": "<request id>",
                "stage": "prod",
                "route": "GET /pets/{petId}",
                "ip": "127.0.0.1",
                "color": "blue",
                "tenant": "acme",
                "q": "dogs",
                "pet": "42",
            },
            id="template-variables",
        ),
        pytest.param(
            _custom(DEFAULT_4XX=GatewayResponse(status=418, headers={"X-Any": "'4xx'"})),
            "INVALID_API_KEY",
            418,
            {"x-any": "4xx", "x-amzn-errortype": "ForbiddenException"},
            {"message": "Forbidden"},
            id="default-4xx-fallback",
        ),
        pytest.param(
            _custom(
                DEFAULT_4XX=GatewayResponse(headers={"X-Any": "'4xx'"}),
                INVALID_API_KEY=GatewayResponse(headers={"X-Key": "'own'"}),
            ),
            "INVALID_API_KEY",
            403,
            {"x-any": "4xx", "x-key": "own"},
            {"message": "Forbidden"},
            id="own-headers-added-to-fallback",
        ),
        pytest.param(
            _custom(
                DEFAULT_5XX=GatewayResponse(
                    templates={"application/json": '{"oops": "$context.requestId"}'}
                )
            ),
            "AUTHORIZER_FAILURE",
            500,
            {},
            {"oops": "<request id>"},
            id="default-5xx-fallback",
        ),
        pytest.param(
            _custom(DEFAULT_5XX=GatewayResponse(headers={"X-5": "'5'"})),
            "THROTTLED",
            429,
            {"x-5": None},
            {"message": "Too Many Requests"},
            id="5xx-fallback-not-applied-to-4xx",
        ),
    ],
)
@pytest.mark.parametrize("given_as", ["responses", "policies"])
def test_customised_responses(make_client, responses, rtype, status, headers, body, given_as):
    policies = [RouteTable(["GET /pets/{petId}"]), Refuse(rtype)]
    stage = Stage("prod", variables={"color": "blue"})
    if given_as == "responses":
        client = make_client(policies, responses=responses, stage=stage)
    else:
        client = make_client([responses, *policies], stage=stage)
    r = client.get("/pets/42?q=dogs", headers={"x-tenant": "acme"})
    assert r.status_code == status
    for name, value in headers.items():
        assert r.headers.get(name) == value
    expected = {
        k: (r.headers["x-amzn-requestid"] if v == "<request id>" else v) for k, v in body.items()
    }
    assert r.json() == expected
    assert r.seen == []


def test_reflected_request_values_cannot_inject_headers(make_client):
    responses = _custom(
        UNAUTHORIZED=GatewayResponse(headers={"X-Echo": "method.request.querystring.q"})
    )
    client = make_client([Refuse("UNAUTHORIZED")], responses=responses)
    r = client.get("/x?q=a%0d%0aSet-Cookie:%20evil=1")
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert "\n" not in r.headers["x-echo"]
    assert "\r" not in r.headers["x-echo"]


def test_template_picked_by_accept_header(make_client):
    responses = _custom(
        THROTTLED=GatewayResponse(
            templates={
                "application/json": '{"message": $context.error.messageString}',
                "text/plain": "slow down ($context.error.message)",
            }
        )
    )
    client = make_client([Refuse("THROTTLED")], responses=responses)
    plain = client.get("/x", headers={"accept": "text/plain"})
    assert plain.content == b"slow down (Too Many Requests)"
    assert plain.headers["content-type"] == "text/plain"
    assert client.get("/x").json() == {"message": "Too Many Requests"}


def test_responses_given_twice_merge_with_the_option_winning(make_client):
    in_list = _custom(
        THROTTLED=GatewayResponse(status=503), UNAUTHORIZED=GatewayResponse(status=499)
    )
    option = _custom(THROTTLED=GatewayResponse(status=502))
    assert (
        make_client([in_list, Refuse("THROTTLED")], responses=option).get("/x").status_code == 502
    )
    assert (
        make_client([in_list, Refuse("UNAUTHORIZED")], responses=option).get("/x").status_code
        == 499
    )


@pytest.mark.parametrize(
    ("responses", "field"),
    [
        pytest.param({"NOT_A_TYPE": GatewayResponse()}, "responses.NOT_A_TYPE", id="unknown-type"),
        pytest.param({"THROTTLED": {"status": 503}}, "responses.THROTTLED", id="not-a-response"),
        pytest.param(
            {"THROTTLED": GatewayResponse(status=99)},
            "responses.THROTTLED.statusCode",
            id="status-99",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(status=600)},
            "responses.THROTTLED.statusCode",
            id="status-600",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(status=True)},  # type: ignore[arg-type]
            "responses.THROTTLED.statusCode",
            id="status-bool",
        ),
        pytest.param(
            {"DEFAULT_4XX": GatewayResponse(status=99)},
            "responses.DEFAULT_4XX.statusCode",
            id="fallback-status",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(headers={"Bad Name": "'x'"})},
            "responses.THROTTLED.headers",
            id="header-name-space",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(headers={"X-A": "a\r\nX-B: b"})},
            "responses.THROTTLED.headers.X-A",
            id="header-value-crlf",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(headers={"X-A": "caf\u00e9 \u2603"})},
            "responses.THROTTLED.headers.X-A",
            id="header-value-not-latin-1",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(headers={"X-A": 5})},  # type: ignore[dict-item]
            "responses.THROTTLED.headers.X-A",
            id="header-value-not-string",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(templates={"application/json": "#set($x = 1)$x"})},
            "responses.THROTTLED.templates.application/json",
            id="vtl-set",
        ),
        pytest.param(
            {
                "THROTTLED": GatewayResponse(
                    templates={"application/json": "#if($context.stage)x#end"}
                )
            },
            "responses.THROTTLED.templates.application/json",
            id="vtl-if",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(templates={"application/json": '{"b": "$input.body"}'})},
            "responses.THROTTLED.templates.application/json",
            id="unknown-variable-input",
        ),
        pytest.param(
            {
                "THROTTLED": GatewayResponse(
                    templates={"application/json": "$util.escapeJavaScript($context.stage)"}
                )
            },
            "responses.THROTTLED.templates.application/json",
            id="unknown-variable-util",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(templates={"application/json": "$stageVariables"})},
            "responses.THROTTLED.templates.application/json",
            id="stage-variables-without-name",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(templates={"application/json": "$context"})},
            "responses.THROTTLED.templates.application/json",
            id="context-without-name",
        ),
        pytest.param(
            {"THROTTLED": GatewayResponse(templates={"json": "{}"})},
            "responses.THROTTLED.templates",
            id="not-a-content-type",
        ),
    ],
)
def test_bad_response_configuration(responses, field):
    with pytest.raises(ConfigurationError) as err:
        GatewayResponses(responses)
    assert err.value.field == field


def test_bad_responses_option(adapter):
    from tests.helpers import GatewayClient

    with pytest.raises(ConfigurationError) as err:
        GatewayClient(adapter, responses={"THROTTLED": GatewayResponse()})
    assert err.value.field == "responses"


def test_wsgi_status_line_has_the_standard_reason_phrase():
    from apigw_mw import WSGIGatewayMiddleware
    from tests.core import drive

    responses = _custom(THROTTLED=GatewayResponse(status=418))
    gw = WSGIGatewayMiddleware(
        drive.WsgiEcho(), policies=[Refuse("THROTTLED")], responses=responses
    )
    lines: list[str] = []
    gw(drive.environ(), lambda status, headers, exc_info=None: lines.append(status))
    assert lines == ["418 I'm a Teapot"]


@pytest.mark.parametrize(
    "fallback",
    [
        pytest.param(GatewayResponse(headers={"bad name": "x"}), id="header-name"),
        pytest.param(GatewayResponse(templates={"application/json": "#set($x = 1)"}), id="vtl"),
        pytest.param(GatewayResponse(templates={"json": "{}"}), id="content-type"),
    ],
)
@pytest.mark.parametrize("kind", ["DEFAULT_4XX", "DEFAULT_5XX"])
def test_errors_in_a_fallback_name_the_fallback(kind: str, fallback: GatewayResponse) -> None:
    with pytest.raises(ConfigurationError) as info:
        GatewayResponses({kind: fallback})
    assert info.value.field.startswith(f"responses.{kind}")


def test_templates_never_write_an_api_key_from_the_authorizer(make_client) -> None:
    key = "Fq3sY0cXk1wQ0pZl8mTn2bVx"

    class KeyThenRefuse(BasePolicy):
        phase = Phase.AUTHORIZE

        def flow(self, request, context):
            context.authorizer["usageIdentifierKey"] = key
            return Deny("ACCESS_DENIED")

    template = '{"key": "$context.authorizer.usageIdentifierKey"}'
    responses = GatewayResponses(
        {"ACCESS_DENIED": GatewayResponse(templates={"application/json": template})}
    )
    r = make_client([KeyThenRefuse()], responses=responses).get("/x")
    assert r.status_code == 403
    assert key not in r.text
    assert r.json() == {"key": ""}
