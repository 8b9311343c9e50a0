"""from_openapi: resource semantics, the x-apigw-mw extension, bad input, the check command."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from apigw_mw import ApiKey, ApiKeys, ConfigurationError, MemoryStore, from_openapi
from apigw_mw.cli import main

DATA = Path(__file__).parent / "data"
KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def greedy_api() -> dict[str, Any]:
    """A catch-all that needs a key and a body, and one specific operation that needs neither."""
    return {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-request-validators": {
            "all": {"validateRequestBody": True, "validateRequestParameters": True}
        },
        "components": {
            "securitySchemes": {"api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}},
            "schemas": {"Thing": {"type": "object", "required": ["name"]}},
        },
        "paths": {
            "/{proxy+}": {
                "x-amazon-apigateway-any-method": {
                    "security": [{"api_key": []}],
                    "x-amazon-apigateway-request-validator": "all",
                    "parameters": [{"name": "proxy", "in": "path", "required": True}],
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}
                        }
                    },
                }
            },
            "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
        },
    }


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        pytest.param("GET", "/health", {}, None, 200, id="specific operation has no settings"),
        pytest.param("GET", "/other", {}, None, 403, id="greedy needs a key"),
        pytest.param("POST", "/a/b", {"x-api-key": KEY}, {"name": "x"}, 200, id="greedy ok"),
        pytest.param("POST", "/a/b", {"x-api-key": KEY}, {}, 400, id="greedy validates body"),
        pytest.param("POST", "/health", {}, {}, 403, id="POST /health is the greedy's"),
    ],
)
def test_most_specific_operation_wins(make_client, method, path, headers, body, status):
    client = make_client(from_openapi(greedy_api(), api_keys=ApiKeys([ApiKey(KEY)])))
    content = None if body is None else json.dumps(body).encode()
    r = client.request(method, path, headers=headers, content=content)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


def test_throttle_from_the_extension(make_client):
    api = greedy_api()
    del api["paths"]["/{proxy+}"]
    api["x-apigw-mw"] = {"throttle": {"rate": 0.001, "burst": 1}}
    client = make_client(from_openapi(api, storage=MemoryStore()))
    assert client.get("/health").status_code == 200
    r = client.get("/health")
    assert r.status_code == 429
    assert r.json() == {"message": "Too Many Requests"}


def test_throttle_argument_overrides_the_extension(make_client):
    api = greedy_api()
    del api["paths"]["/{proxy+}"]
    api["x-apigw-mw"] = {"throttle": {"rate": 0.001, "burst": 1}}
    client = make_client(
        from_openapi(
            api,
            throttle={
                "rate": 100,
                "burst": 100,
                "routes": {"GET /health": {"rate": 0.001, "burst": 2}},
            },
            storage=MemoryStore(),
        )
    )
    assert [client.get("/health").status_code for _ in range(3)] == [200, 200, 429]


def test_strict_routes_can_be_turned_off_in_the_extension(make_client):
    api = greedy_api()
    del api["paths"]["/{proxy+}"]
    api["x-apigw-mw"] = {"strict": False}
    assert make_client(from_openapi(api)).get("/not-declared").status_code == 200


def test_spec_as_text_and_as_path(tmp_path):
    text = (DATA / "petstore-http-api.json").read_text()
    assert len(from_openapi(text)) == len(from_openapi(str(DATA / "petstore-http-api.json")))


def test_openapi_31_uses_draft_2020_12(make_client):
    api = greedy_api()
    api["openapi"] = "3.1.0"
    api["components"]["schemas"]["Thing"] = {
        "type": "object",
        "properties": {"tags": {"type": "array", "prefixItems": [{"type": "integer"}]}},
    }
    client = make_client(from_openapi(api, api_keys=ApiKeys([ApiKey(KEY)])))
    ok = client.post("/x", headers={"x-api-key": KEY}, json_body={"tags": [1, "a"]})
    bad = client.post("/x", headers={"x-api-key": KEY}, json_body={"tags": ["a"]})
    assert (ok.status_code, bad.status_code) == (200, 400)


def test_loads_500_operations_in_under_a_second():
    api = load("request-validation.json")
    base = api["paths"]["/validation"]
    for i in range(250):
        api["paths"][f"/validation{i}/{{id}}"] = copy.deepcopy(base)
    started = time.perf_counter()
    policies = from_openapi(api, api_keys=ApiKeys([ApiKey(KEY)]))
    elapsed = time.perf_counter() - started
    assert len(policies[0].routes) == 502
    assert elapsed < 1.0, elapsed


# -- bad definitions ---------------------------------------------------------------------------


def _with(change: Any) -> dict[str, Any]:
    api = load("request-validation.json")
    change(api)
    return api


def _alternatives(api: dict[str, Any]) -> None:
    api["securityDefinitions"] = {"a": {"type": "apiKey", "name": "x-api-key", "in": "header"}}
    api["paths"]["/validation"]["get"]["security"] = [{"api_key": []}, {"a": []}]


BAD = [
    pytest.param(
        lambda api: api["paths"]["/validation"]["post"]["parameters"][1]["schema"].update(
            {"$ref": "#/definitions/Nope"}
        ),
        "spec#/paths/~1validation/post/parameters/1/schema/$ref",
        "does not resolve",
        id="dangling $ref",
    ),
    pytest.param(
        lambda api: api["definitions"]["RequestBodyModel"]["properties"]["price"].update(
            {"type": "money"}
        ),
        "spec: RequestValidator.routes['POST /validation'].body['application/json']",
        "invalid schema at #/definitions/RequestBodyModel/properties/price/type",
        id="invalid schema names its pointer",
    ),
    pytest.param(
        _alternatives,
        "spec#/paths/~1validation/get/security",
        "GET /validation lists 2 alternative security requirements",
        id="alternative requirements",
    ),
    pytest.param(
        lambda api: api["paths"]["/validation"]["get"].update({"security": [{"nope": []}]}),
        "spec#/paths/~1validation/get/security",
        "unknown security scheme 'nope'; known: AWS_IAM, api_key",
        id="unknown scheme in an operation",
    ),
    pytest.param(
        lambda api: api["paths"]["/validation"]["get"].update(
            {"x-amazon-apigateway-request-validator": "some"}
        ),
        "spec#/paths/~1validation/get/x-amazon-apigateway-request-validator",
        "unknown request validator 'some'; known: all, params-only",
        id="unknown request validator",
    ),
    pytest.param(
        lambda api: api.pop("swagger"), "spec", "not an OpenAPI definition", id="not OpenAPI"
    ),
    pytest.param(
        lambda api: api["paths"]["/validation"]["post"]["parameters"][1].update(
            {"$ref": "other.json#/X"}
        ),
        "spec#/paths/~1validation/post/parameters/1/$ref",
        "only references within the definition",
        id="external $ref",
    ),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD)
def test_bad_definitions(change, field, message):
    with pytest.raises(ConfigurationError) as info:
        from_openapi(_with(change), api_keys=ApiKeys([ApiKey(KEY)]))
    assert info.value.field == field
    assert message in info.value.message


def test_unknown_authorizer_names_list_the_known_ones():
    with pytest.raises(ConfigurationError) as info:
        from_openapi(DATA / "lambda-authorizers.json", authorizers={"test-authoriser": print})
    assert info.value.field == "authorizers"
    assert "'test-authoriser'" in info.value.message
    assert "request_authorizer_header_query, test-authorizer" in info.value.message


def test_lambda_authorizer_without_handler_says_how_to_pass_it():
    with pytest.raises(ConfigurationError, match=r"authorizers=\{'myAuthorizer': handler\}"):
        from_openapi(DATA / "authtype-lambda-request.json")


def test_api_key_routes_need_keys():
    with pytest.raises(ConfigurationError) as info:
        from_openapi(DATA / "request-validation.json")
    assert info.value.field == "api_keys"
    assert "POST /validation, GET /validation require an API key" in info.value.message


def test_yaml_without_pyyaml_is_a_clear_error(monkeypatch, tmp_path):
    path = tmp_path / "api.yaml"
    path.write_text("openapi: 3.0.1\npaths: {}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'apigw-mw\[yaml\]'"):
        from_openapi(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{"openapi": ', "not valid JSON", id="broken JSON"),
        pytest.param("openapi: [3.0\n  x", "not valid YAML", id="broken YAML"),
        pytest.param("[1, 2]\n", "not an object", id="not an object"),
    ],
)
def test_unreadable_definitions(text, message):
    with pytest.raises(ConfigurationError, match=message):
        from_openapi(text)


def test_missing_file():
    with pytest.raises(ConfigurationError, match="cannot read"):
        from_openapi("/nonexistent/api.json")


# -- apigw-mw check ----------------------------------------------------------------------------


def test_check_prints_routes_policies_and_ignored_extensions(capsys):
    assert main(["check", str(DATA / "request-validation.json")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["ROUTE", "POLICIES"]
    assert any(line.startswith("GET /validation") and "API key required" in line for line in lines)
    assert "validate params query.q1 (validator 'params-only')" in out
    assert "validate params header.h1; body application/json (validator 'all')" in out
    assert "strict routes" in out
    assert "#/paths/~1validation/get/x-amazon-apigateway-integration: backend integration" in out
    assert "#/basePath" in out


def test_check_describes_authorizers_it_cannot_build(capsys):
    assert main(["check", str(DATA / "lambda-authorizers.json")]) == 0
    out = capsys.readouterr().out
    assert "test-authorizer: token authorizer, not built" in out


def test_check_reports_errors(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(_alternatives)))
    assert main(["check", str(bad)]) == 1
    assert "alternative security requirements" in capsys.readouterr().err
