"""RequestValidator through both adapters: parameters, bodies, content types, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apigw_mw import (
    BasePolicy,
    ConfigurationError,
    GatewayMiddleware,
    GatewayResponse,
    GatewayResponses,
    Phase,
    RequestValidator,
    RouteModel,
    RouteTable,
    Stage,
)

PET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "type": {"type": "string", "enum": ["dog", "cat", "fish"]},
        "name": {"type": "string"},
        "price": {"type": "number", "minimum": 25, "maximum": 500},
        "born": {"type": "string", "format": "date-time"},
    },
    "required": ["type", "name", "price"],
}
GOOD = {"type": "dog", "name": "Rex", "price": 100}
JSON = {"content-type": "application/json"}


def validator(**options: Any) -> RequestValidator:
    return RequestValidator(
        routes={
            "GET /validation": RouteModel(query=["q1"]),
            "POST /validation": RouteModel(headers=["h1"], body={"application/json": PET}),
            "GET /items/{itemId}": RouteModel(path=["itemId"], query=["a", "b"], headers=["h2"]),
            "PUT /any": RouteModel(body={"$default": {"type": "object", "required": ["x"]}}),
        },
        **options,
    )


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


PARAMS = "Missing required request parameters: [{}]"

CASES = [
    pytest.param("GET", "/validation?q1=a", {}, None, 200, None, id="query present"),
    pytest.param("GET", "/validation", {}, None, 400, PARAMS.format("q1"), id="query missing"),
    pytest.param("GET", "/validation?q1=", {}, None, 400, PARAMS.format("q1"), id="query blank"),
    pytest.param(
        "GET", "/validation?q1=%20%20", {}, None, 400, PARAMS.format("q1"), id="query whitespace"
    ),
    pytest.param(
        "GET", "/validation?q2=a", {}, None, 400, PARAMS.format("q1"), id="other query only"
    ),
    pytest.param(
        "GET",
        "/validation?q1=a&q1=",
        {},
        None,
        400,
        PARAMS.format("q1"),
        id="duplicate query, last blank",
    ),
    pytest.param(
        "GET", "/validation?q1=&q1=a", {}, None, 200, None, id="duplicate query, last set"
    ),
    pytest.param(
        "GET", "/items/7?a=1&b=2", {"h2": "x"}, None, 200, None, id="path query header present"
    ),
    pytest.param(
        "GET", "/items/7", {}, None, 400, PARAMS.format("a, b, h2"), id="several missing, in order"
    ),
    pytest.param(
        "GET",
        "/items/%20?a=1&b=2",
        {"h2": "x"},
        None,
        400,
        PARAMS.format("itemId"),
        id="blank path parameter",
    ),
    pytest.param(
        "GET", "/items/7?a=1&b=2", {"H2": "x"}, None, 200, None, id="header name any case"
    ),
    pytest.param(
        "GET", "/items/7?a=1&b=2", {"h2": " "}, None, 400, PARAMS.format("h2"), id="header blank"
    ),
    pytest.param(
        "GET",
        "/items/7?a=1&b=2",
        [("h2", " "), ("h2", "x")],
        None,
        200,
        None,
        id="duplicate header, last set",
    ),
    pytest.param(
        "POST", "/validation", {"h1": "x", **JSON}, body(GOOD), 200, None, id="valid body"
    ),
    pytest.param(
        "POST",
        "/validation",
        JSON,
        body({"price": 1}),
        400,
        PARAMS.format("h1"),
        id="params before body",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body({**GOOD, "price": 600}),
        400,
        "Invalid request body",
        id="out of range",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body({"type": "dog"}),
        400,
        "Invalid request body",
        id="required missing",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body({**GOOD, "type": "cow"}),
        400,
        "Invalid request body",
        id="not in enum",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body({**GOOD, "born": "yesterday"}),
        400,
        "Invalid request body",
        id="bad date-time format",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body({**GOOD, "born": "2024-02-29T10:00:00Z"}),
        200,
        None,
        id="good date-time format",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b'{"type": "dog", "name": ',
        400,
        "Invalid request body",
        id="invalid JSON",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b'{"type": "dog", "price": NaN}',
        400,
        "Invalid request body",
        id="NaN is not JSON",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b'{"name": "\xff\xfe"}',
        400,
        "Invalid request body",
        id="invalid UTF-8",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body([GOOD]),
        400,
        "Invalid request body",
        id="array body",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        body("dog"),
        400,
        "Invalid request body",
        id="string body",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b"null",
        400,
        "Invalid request body",
        id="null body",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b"",
        400,
        "Invalid request body",
        id="empty body is an empty object",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", **JSON},
        b"[" * 100_000 + b"]" * 100_000,
        400,
        "Invalid request body",
        id="deeply nested",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", "content-type": "application/json; charset=utf-8"},
        body({"type": "dog"}),
        400,
        "Invalid request body",
        id="content type parameters ignored",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x"},
        body({"type": "dog"}),
        400,
        "Invalid request body",
        id="no content type means JSON",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", "content-type": "Application/JSON"},
        body({"type": "dog"}),
        400,
        "Invalid request body",
        id="content type any case",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", "content-type": "Application/JSON"},
        body(GOOD),
        200,
        None,
        id="content type any case, valid",
    ),
    pytest.param(
        "POST",
        "/validation",
        {"h1": "x", "content-type": "text/plain"},
        b"not json",
        200,
        None,
        id="content type without model passes",
    ),
    pytest.param(
        "PUT",
        "/any",
        {"content-type": "text/xml"},
        b"<x/>",
        400,
        "Invalid request body",
        id="$default covers every content type",
    ),
    pytest.param(
        "PUT",
        "/any",
        {"content-type": "text/xml"},
        body({"x": 1}),
        200,
        None,
        id="$default valid",
    ),
    pytest.param("GET", "/unvalidated", {}, None, 200, None, id="route without model"),
]


@pytest.mark.parametrize(("method", "path", "headers", "content", "status", "message"), CASES)
def test_validation(make_client, method, path, headers, content, status, message):
    client = make_client([validator()])
    r = client.request(method, path, headers=headers, content=content)
    assert r.status_code == status, r.text
    if message is None:
        assert len(r.seen) == 1
        if content is not None:
            assert r.seen[0].body == content  # the app gets the body byte for byte
    else:
        assert r.json() == {"message": message}
        assert r.headers["x-amzn-errortype"] == "BadRequestException"
        assert r.seen == []


def test_unmatched_content_type_reject(make_client):
    client = make_client([validator(unmatched_content_type="reject")])
    r = client.post("/validation", headers={"h1": "x", "content-type": "text/plain"}, content=b"x")
    assert r.status_code == 415
    assert r.json() == {"message": "Unsupported Media Type"}
    assert r.seen == []
    # Routes without body models are not concerned.
    assert client.get("/validation?q1=a", headers={"content-type": "text/plain"}).status_code == 200


def test_verbose_errors_return_the_detail(make_client):
    client = make_client([validator(verbose_errors=True)])
    r = client.post("/validation", headers={"h1": "x", **JSON}, content=body({"price": 600}))
    assert r.status_code == 400
    detail = r.json()["message"]
    assert detail.startswith("[")
    assert detail.endswith("]")
    assert "/price: 600 is greater than the maximum of 500" in detail
    assert "required property" in detail
    r = client.post("/validation", headers={"h1": "x", **JSON}, content=b"{oops")
    assert r.json()["message"].startswith("[Invalid JSON: ")


def test_validation_error_string_in_templates(make_client):
    responses = GatewayResponses(
        {
            "BAD_REQUEST_BODY": GatewayResponse(
                templates={"text/plain": "bad: $context.error.validationErrorString"}
            )
        }
    )
    client = make_client([validator(), responses])
    r = client.post("/validation", headers={"h1": "x", **JSON}, content=body({**GOOD, "id": "x"}))
    assert r.status_code == 400
    assert r.text.startswith("bad: [/id: ")
    assert "integer" in r.text


def test_huge_body_is_413_and_never_reaches_the_app(make_client):
    client = make_client([validator()], max_body_size=1024)
    r = client.post(
        "/validation", headers={"h1": "x", **JSON}, content=body({**GOOD, "name": "x" * 5000})
    )
    assert r.status_code == 413
    assert r.seen == []


def test_streamed_body_over_the_limit_is_413_and_never_reaches_the_app():
    # No Content-Length to refuse up front: the body is read (for the validator, which says
    # it reads bodies) and cut at the limit.
    from tests.core import drive

    app = drive.EchoApp()
    gw = GatewayMiddleware(app, policies=[validator()], max_body_size=64)
    headers = [(b"h1", b"x"), (b"content-type", b"application/json")]
    headers.append((b"transfer-encoding", b"chunked"))
    r = drive.run(gw, drive.scope("POST", "/validation", headers=headers), [b"{" * 40, b"x" * 40])
    assert r.status == 413
    assert r.json() == {"message": "Request Too Long"}
    assert app.calls == []


@pytest.mark.parametrize(
    ("mode", "expected"), [("BODY_AND_PARAMS", True), ("BODY", True), ("PARAMS", False)]
)
def test_the_validator_says_whether_it_reads_bodies(mode, expected):
    # The gateway reads the body for the validator only when some route checks bodies.
    assert validator(mode=mode).reads_body is expected
    only_params = RequestValidator(routes={"GET /q": RouteModel(query=["q"])})
    assert only_params.reads_body is False


@pytest.mark.parametrize(
    ("mode", "path", "headers", "content", "status"),
    [
        pytest.param("BODY", "/validation", JSON, body(GOOD), 200, id="BODY skips params"),
        pytest.param("BODY", "/validation", JSON, body({}), 400, id="BODY checks body"),
        pytest.param(
            "PARAMS", "/validation", {"h1": "x", **JSON}, b"{", 200, id="PARAMS skips body"
        ),
        pytest.param("PARAMS", "/validation", JSON, body(GOOD), 400, id="PARAMS checks params"),
    ],
)
def test_modes(make_client, mode, path, headers, content, status):
    client = make_client([validator(mode=mode)])
    r = client.post(path, headers=headers, content=content)
    assert r.status_code == status
    assert len(r.seen) == (1 if status == 200 else 0)


def test_route_mode_overrides_validator_mode(make_client):
    v = RequestValidator(
        routes={"POST /p": RouteModel(headers=["h1"], body={"application/json": PET}, mode="BODY")},
        mode="PARAMS",
    )
    client = make_client([v])
    assert client.post("/p", headers=JSON, content=body(GOOD)).status_code == 200
    assert client.post("/p", headers=JSON, content=body({})).status_code == 400


def test_most_specific_route_wins(make_client):
    v = RequestValidator(
        routes={
            "ANY /pets/{proxy+}": RouteModel(query=["everywhere"]),
            "POST /pets/special": RouteModel(headers=["h1"]),
        }
    )
    client = make_client([v])
    r = client.post("/pets/special", headers={"h1": "x"})
    assert r.status_code == 200  # the greedy route's query parameter does not apply here
    r = client.post("/pets/other")
    assert r.json() == {"message": PARAMS.format("everywhere")}


def test_empty_model_on_the_most_specific_route_checks_nothing(make_client):
    v = RequestValidator(
        routes={
            "ANY /pets/{proxy+}": RouteModel(query=["q"], body={"application/json": PET}),
            "POST /pets/free": RouteModel(),
        }
    )
    client = make_client([v])
    r = client.post("/pets/free", headers=JSON, content=b"not json")
    assert r.status_code == 200
    assert r.seen[0].body == b"not json"
    r = client.post("/pets/other?q=1", headers=JSON, content=b"not json")
    assert r.json() == {"message": "Invalid request body"}


class ReadsBody(BasePolicy):
    """An earlier phase's policy that reads the body (as a signature check does)."""

    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> Any:
        return self._read(request, context)

    def _read(self, request: Any, context: Any) -> Any:
        body = yield request.read_body()
        context.extra["read"] = len(body)
        return None


@pytest.mark.parametrize(
    ("content", "status"),
    [
        pytest.param(body(GOOD), 200, id="valid"),
        pytest.param(body({**GOOD, "price": 600}), 400, id="invalid"),
        pytest.param(b"{oops", 400, id="not JSON"),
        pytest.param(b"", 400, id="empty"),
    ],
)
def test_body_already_read_by_an_earlier_policy(make_client, content, status):
    client = make_client([validator(), ReadsBody(routes=["POST /validation"])])
    r = client.post("/validation", headers={"h1": "x", **JSON}, content=content)
    assert r.status_code == status
    if status == 200:
        assert r.seen[0].body == content
        assert r.seen[0].context.extra["read"] == len(content)
    else:
        assert r.json() == {"message": "Invalid request body"}
        assert r.seen == []


def test_headers_with_their_own_server_names(make_client):
    # Content-Type and X-Api-Key have CGI names of their own (or joined values) under WSGI.
    v = RequestValidator(routes={"POST /h": RouteModel(headers=["Content-Type", "X-Api-Key"])})
    client = make_client([v])
    ok = client.post("/h", headers={"content-type": "text/plain", "x-api-key": "k"}, content=b"x")
    assert ok.status_code == 200
    r = client.post("/h", content=b"x")
    assert r.json() == {"message": PARAMS.format("content-type, x-api-key")}
    r = client.post("/h", headers={"content-type": "text/plain", "x-api-key": " "}, content=b"x")
    assert r.json() == {"message": PARAMS.format("x-api-key")}
    assert r.seen == []


# -- under a stage base path -----------------------------------------------------------------

BASE = Stage("prod", base_path="/v1")


@pytest.mark.parametrize(
    ("method", "path", "headers", "content", "status", "message"),
    [
        pytest.param(
            "POST", "/v1/validation", {"h1": "x", **JSON}, body(GOOD), 200, None, id="valid"
        ),
        pytest.param(
            "POST",
            "/v1/validation",
            {"h1": "x", **JSON},
            body({"type": "dog"}),
            400,
            "Invalid request body",
            id="invalid body",
        ),
        pytest.param(
            "POST",
            "/v1/validation",
            JSON,
            body(GOOD),
            400,
            PARAMS.format("h1"),
            id="missing header",
        ),
        pytest.param(
            "GET", "/v1/items/7", {}, None, 400, PARAMS.format("a, b, h2"), id="path parameters"
        ),
        pytest.param("GET", "/v1/validation?q1=a", {}, None, 200, None, id="query present"),
        pytest.param("GET", "/v1", {}, None, 400, PARAMS.format("root"), id="the base path is /"),
        pytest.param(
            "POST",
            "/v1/pets/special",
            JSON,
            b"not json",
            400,
            "Invalid request body",
            id="model of the validator's most specific route",
        ),
    ],
)
def test_under_a_stage_base_path(make_client, method, path, headers, content, status, message):
    v = RequestValidator(
        routes={
            "GET /validation": RouteModel(query=["q1"]),
            "POST /validation": RouteModel(headers=["h1"], body={"application/json": PET}),
            "GET /items/{itemId}": RouteModel(path=["itemId"], query=["a", "b"], headers=["h2"]),
            "GET /": RouteModel(query=["root"]),
            # The request's route key is POST /pets/special, which has no model here: the
            # validator's own most specific route for the path without the base path applies.
            "POST /pets/{petId}": RouteModel(body={"application/json": PET}),
        }
    )
    client = make_client([v, RouteTable(["POST /pets/special"])], stage=BASE)
    r = client.request(method, path, headers=headers, content=content)
    assert r.status_code == status, r.text
    if message is None:
        assert len(r.seen) == 1
    else:
        assert r.json() == {"message": message}
        assert r.seen == []


def test_outside_the_base_path_nothing_is_validated(make_client):
    # Requests outside the base path match no route of the API, as on a custom domain.
    client = make_client([validator()], stage=BASE)
    r = client.post("/validation", headers=JSON, content=b"not json")
    assert r.status_code == 200
    assert r.seen[0].body == b"not json"


def test_refs_local_and_in_resources(make_client):
    spec = {"definitions": {"Price": {"type": "number", "maximum": 10}}}
    v = RequestValidator(
        routes={
            "POST /local": RouteModel(
                body={
                    "application/json": {
                        "definitions": {"P": {"$ref": "#/definitions/Q"}, "Q": {"type": "string"}},
                        "properties": {"p": {"$ref": "#/definitions/P"}},
                    }
                }
            ),
            "POST /spec": RouteModel(
                body={
                    "application/json": {
                        "properties": {"price": {"$ref": "urn:api#/definitions/Price"}}
                    }
                }
            ),
        },
        resources={"urn:api": spec},
    )
    client = make_client([v])
    assert client.post("/local", headers=JSON, content=body({"p": "x"})).status_code == 200
    assert client.post("/local", headers=JSON, content=body({"p": 1})).status_code == 400
    assert client.post("/spec", headers=JSON, content=body({"price": 5})).status_code == 200
    assert client.post("/spec", headers=JSON, content=body({"price": 50})).status_code == 400


def test_draft_from_dollar_schema(make_client):
    draft4 = {"type": "number", "maximum": 10, "exclusiveMaximum": True}
    draft2020 = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "array",
        "prefixItems": [{"type": "string"}],
    }
    v = RequestValidator(
        routes={
            "POST /d4": RouteModel(body={"application/json": draft4}),
            "POST /d2020": RouteModel(body={"application/json": draft2020}),
        }
    )
    client = make_client([v])
    assert client.post("/d4", headers=JSON, content=b"9").status_code == 200
    assert client.post("/d4", headers=JSON, content=b"10").status_code == 400
    assert client.post("/d2020", headers=JSON, content=b'["a", 1]').status_code == 200
    assert client.post("/d2020", headers=JSON, content=b"[1]").status_code == 400


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        pytest.param(
            {"properties": {"price": {"type": "numbr"}}}, "/properties/price/type", id="bad type"
        ),
        pytest.param(
            {"properties": {"code": {"type": "string", "pattern": "(unclosed"}}},
            "/properties/code/pattern",
            id="bad regex",
        ),
        pytest.param({"required": "name"}, "/required", id="required not a list"),
        pytest.param(
            {"items": [{"minimum": "ten"}]}, "/items/0/minimum", id="bad keyword value in a list"
        ),
    ],
)
def test_invalid_schema_names_the_json_pointer(schema, where):
    with pytest.raises(ConfigurationError) as info:
        RequestValidator(routes={"POST /x": RouteModel(body={"application/json": schema})})
    assert info.value.field == "RequestValidator.routes['POST /x'].body['application/json']"
    assert f"invalid schema at {where}:" in info.value.message


def test_dangling_ref_is_a_configuration_error():
    schema = {"properties": {"a": {"$ref": "#/definitions/Missing"}}}
    with pytest.raises(ConfigurationError, match=r"\$ref '#/definitions/Missing' at /properties/a"):
        RequestValidator(routes={"POST /x": RouteModel(body={"application/json": schema})})


def test_invalid_schema_behind_a_ref_names_its_location():
    spec = {"definitions": {"Pet": {"properties": {"age": {"minimum": "old"}}}}}
    schema = {"$ref": "urn:api#/definitions/Pet"}
    with pytest.raises(ConfigurationError) as info:
        RequestValidator(
            routes={"POST /x": RouteModel(body={"application/json": schema})},
            resources={"urn:api": spec},
        )
    assert "invalid schema at urn:api#/definitions/Pet/properties/age/minimum" in str(info.value)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            lambda: RequestValidator(routes={}, mode="ALL"), "RequestValidator.mode", id="mode"
        ),
        pytest.param(
            lambda: RequestValidator(routes={}, unmatched_content_type="drop"),
            "RequestValidator.unmatched_content_type",
            id="unmatched_content_type",
        ),
        pytest.param(
            lambda: RequestValidator(routes={}, engine="fastest"),
            "RequestValidator.engine",
            id="engine",
        ),
        pytest.param(
            lambda: RequestValidator(routes={"GET /x": {"query": ["q"]}}),
            "RequestValidator.routes['GET /x']",
            id="model not a RouteModel",
        ),
        pytest.param(
            lambda: RequestValidator(routes={"FETCH /x": RouteModel()}),
            "RequestValidator.routes",
            id="bad route key",
        ),
        pytest.param(
            lambda: RouteModel(body={"json": {}}), "RouteModel.body", id="bad content type"
        ),
        pytest.param(lambda: RouteModel(query=[""]), "RouteModel.query", id="blank parameter name"),
        pytest.param(lambda: RouteModel(mode="BOTH"), "RouteModel.mode", id="bad route mode"),
        pytest.param(
            lambda: RouteModel(body={"application/json": {"$schema": "http://example.com/s"}}),
            None,
            id="unknown draft (at compile)",
        ),
    ],
)
def test_bad_configuration(build, field):
    if field is None:
        model = build()
        with pytest.raises(ConfigurationError, match="unknown JSON Schema draft"):
            RequestValidator(routes={"POST /x": model})
        return
    with pytest.raises(ConfigurationError) as info:
        build()
    assert info.value.field == field


def test_boolean_schema_needs_a_later_draft():
    with pytest.raises(ConfigurationError, match="boolean schemas"):
        RequestValidator(routes={"POST /x": RouteModel(body={"application/json": True})})
