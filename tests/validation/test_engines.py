"""jsonschema-rs and jsonschema give the same verdict, with details as good, on one corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from apigw_mw import RequestValidator, RouteModel
from apigw_mw.validation import CHECKED_FORMATS, _body_errors, _compile_schema

pytest.importorskip("jsonschema_rs")

PET = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "type": {"type": "string", "enum": ["dog", "cat", "fish"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "price": {"type": "number", "minimum": 25, "maximum": 500},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
    "required": ["type", "name", "price"],
    "additionalProperties": False,
}
COMBINED = {
    "definitions": {"pos": {"type": "integer", "minimum": 0}},
    "anyOf": [{"$ref": "#/definitions/pos"}, {"type": "string"}],
    "not": {"enum": [7]},
}
GOOD = {"type": "dog", "name": "Rex", "price": 100}
# The model of the developer guide's request-validation example.
EXAMPLE = json.loads(
    (Path(__file__).parents[1] / "openapi" / "data" / "request-validation.json").read_text()
)["definitions"]["RequestBodyModel"]

FORMAT_VALUES: dict[str, list[str]] = {
    "date-time": [
        "2024-02-29T10:00:00Z",
        "2024-02-29T10:00:00.123+02:00",
        "1985-04-12t23:20:50.52z",
        "2023-02-29T10:00:00Z",
        "2024-13-01T10:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01 10:00:00Z",
        "2024-01-01T10:00:00",
        "yesterday",
    ],
    "email": ["joe@example.com", "first.last+tag@sub.example.org", "joe", "@example.com", "a@"],
    "hostname": ["example.com", "a-b.example", "-bad.example", "exa mple.com", "a" * 64 + ".com"],
    "ipv4": ["192.168.0.1", "0.0.0.0", "256.1.1.1", "1.2.3", "01.2.3.4", "::1"],
    "ipv6": ["::1", "2001:db8::1", "fe80::1%eth0", "12345::", "1.2.3.4"],
    "uri": ["https://example.com/a?b=c", "urn:isbn:0451450523", "/relative/path", "no scheme"],
}

CORPUS: list[Any] = [
    pytest.param(PET, GOOD, id="pet valid"),
    pytest.param(PET, {**GOOD, "price": 600}, id="pet maximum"),
    pytest.param(PET, {**GOOD, "price": "100"}, id="pet wrong type"),
    pytest.param(PET, {"type": "dog"}, id="pet required"),
    pytest.param(PET, {**GOOD, "extra": 1}, id="pet additional property"),
    pytest.param(PET, {**GOOD, "tags": ["a", "a"]}, id="pet unique items"),
    pytest.param(PET, {**GOOD, "code": "abc"}, id="pet pattern"),
    pytest.param(PET, {**GOOD, "name": ""}, id="pet minLength"),
    pytest.param(PET, {**GOOD, "id": 1.0}, id="integer-valued float is not an integer in draft 4"),
    pytest.param(PET, {**GOOD, "id": 10**30}, id="big integer"),
    pytest.param(PET, [GOOD], id="array instead of object"),
    pytest.param(PET, None, id="null instead of object"),
    pytest.param(PET, {"price": 1, "type": "cow", "extra": True}, id="many errors"),
    pytest.param(EXAMPLE, GOOD, id="example valid"),
    pytest.param(EXAMPLE, {**GOOD, "price": 24.99}, id="example below minimum"),
    pytest.param(EXAMPLE, {**GOOD, "id": "7"}, id="example id not an integer"),
    pytest.param(EXAMPLE, {"name": "Rex"}, id="example required"),
    pytest.param(COMBINED, 3, id="anyOf ref valid"),
    pytest.param(COMBINED, -3, id="anyOf ref invalid"),
    pytest.param(COMBINED, 7, id="not"),
    pytest.param(COMBINED, "x", id="anyOf second branch"),
    *(
        pytest.param({"type": "string", "format": fmt}, value, id=f"format {fmt} {value!r}")
        for fmt, values in FORMAT_VALUES.items()
        for value in values
    ),
    pytest.param({"type": "string", "format": "date"}, "not a date", id="date is not checked"),
    pytest.param({"type": "string", "format": "uuid"}, "not a uuid", id="uuid is not checked"),
    pytest.param(
        {
            "definitions": {"d": {"format": "date"}},
            "properties": {"x": {"$ref": "#/definitions/d"}},
        },
        {"x": "not a date"},
        id="date through a local ref is not checked",
    ),
    pytest.param({"format": "email"}, 42, id="format ignores other types"),
]


def _verdicts(schema: Any, instance: Any) -> tuple[str | None, str | None]:
    raw = json.dumps(instance).encode()
    reference = _compile_schema(schema, field_name="s", resources={}, engine="jsonschema")
    fast = _compile_schema(schema, field_name="s", resources={}, engine="jsonschema-rs")
    assert reference.fast is None
    assert fast.fast is not None
    return _body_errors(reference, raw), _body_errors(fast, raw)


_POINTER = re.compile(r"(?:^\[|; )(/[^:]*|/):")


@pytest.mark.parametrize(("schema", "instance"), CORPUS)
def test_same_verdict_and_same_error_locations(schema, instance):
    reference, fast = _verdicts(schema, instance)
    assert (reference is None) == (fast is None), (reference, fast)
    if reference is not None and fast is not None:
        # Each names the same failing locations, one detail per failed keyword.
        assert _POINTER.findall(reference) == _POINTER.findall(fast), (reference, fast)


def test_formats_checked_are_documented():
    assert set(CHECKED_FORMATS) == {
        "date-time",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "uri",
        "regex",
    }
    assert set(FORMAT_VALUES) | {"regex"} == set(CHECKED_FORMATS)


def test_auto_engine_prefers_the_fast_path():
    v = RequestValidator(routes={"POST /x": RouteModel(body={"application/json": PET})})
    assert v.fast
    v = RequestValidator(
        routes={"POST /x": RouteModel(body={"application/json": PET})}, engine="jsonschema"
    )
    assert not v.fast


@pytest.mark.parametrize("engine", ["jsonschema", "jsonschema-rs"])
def test_both_engines_through_the_gateway(make_client, engine):
    v = RequestValidator(
        routes={"POST /pets": RouteModel(body={"application/json": PET})},
        engine=engine,
        verbose_errors=True,
    )
    client = make_client([v])
    ok = client.post("/pets", json_body=GOOD)
    assert ok.status_code == 200
    bad = client.post("/pets", json_body={**GOOD, "price": 600})
    assert bad.status_code == 400
    assert bad.json()["message"] == "[/price: 600 is greater than the maximum of 500]"


@pytest.mark.parametrize("engine", ["jsonschema", "jsonschema-rs"])
@pytest.mark.parametrize(
    ("value", "status"),
    [
        pytest.param("not a date", 200, id="format API Gateway ignores"),
        pytest.param(7, 400, id="type still checked"),
    ],
)
def test_unchecked_format_reached_through_a_ref_into_resources(make_client, engine, value, status):
    # The schema itself names no format: only the document its $ref points into does.
    spec = {"definitions": {"Day": {"type": "string", "format": "date"}}}
    v = RequestValidator(
        routes={
            "POST /d": RouteModel(
                body={
                    "application/json": {
                        "properties": {"day": {"$ref": "urn:api#/definitions/Day"}}
                    }
                }
            )
        },
        resources={"urn:api": spec},
        engine=engine,
    )
    client = make_client([v])
    r = client.post("/d", json_body={"day": value})
    assert r.status_code == status


def test_openapi_inline_schemas_on_path_templates_take_the_fast_path(make_client, caplog):
    from apigw_mw import from_openapi

    # A body schema written inline under a templated path is referred to by a JSON pointer
    # holding "{petId}": it must still be a URI jsonschema-rs takes.
    api = {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-request-validators": {"all": {"validateRequestBody": True}},
        "paths": {
            "/pets/{petId}/tags/{proxy+}": {
                "post": {
                    "x-amazon-apigateway-request-validator": "all",
                    "requestBody": {"content": {"application/json": {"schema": PET}}},
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    with caplog.at_level("WARNING", logger="apigw_mw"):
        policies = from_openapi(api)
    assert not [r for r in caplog.records if "jsonschema-rs" in r.getMessage()]
    validators = [
        v for v in (getattr(p, "inner", p) for p in policies) if isinstance(v, RequestValidator)
    ]
    assert len(validators) == 1
    assert validators[0].fast
    client = make_client(policies)
    assert client.post("/pets/1/tags/a/b", json_body=GOOD).status_code == 200
    assert client.post("/pets/1/tags/a/b", json_body={**GOOD, "price": 600}).status_code == 400
