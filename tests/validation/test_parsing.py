"""Body parsing: the strict parser (msgspec, or the reference one without it) reads every body
it accepts exactly as the reference parser does, and both validators give the same verdict,
with the same failing locations, whichever parser read the body."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest

from apigw_mw import RequestValidator, RouteModel, validation
from apigw_mw.validation import _body_errors, _compile_schema, _parse_plain, _parse_reference

msgspec = pytest.importorskip("msgspec")
pytest.importorskip("jsonschema_rs")

STRICT = {
    "msgspec": msgspec.json.Decoder().decode,
    "standard library": _parse_plain,
}

BODIES: list[Any] = [
    pytest.param(b'{"a": 1, "a": "two"}', id="duplicate keys: the last wins"),
    pytest.param(b"NaN", id="NaN"),
    pytest.param(b'{"p": NaN}', id="NaN in an object"),
    pytest.param(b"Infinity", id="Infinity"),
    pytest.param(b"-Infinity", id="-Infinity"),
    pytest.param(b"1e400", id="number too large for a double"),
    pytest.param(b"-1e400", id="negative number too large for a double"),
    pytest.param(b"1" * 400 + b".5", id="400-digit float"),
    pytest.param(b"1e-400", id="underflow is zero"),
    pytest.param(b"5e-324", id="smallest subnormal"),
    pytest.param(b"1.7976931348623157e308", id="largest double"),
    pytest.param(b"0.1000000000000000055511151231257827021181583404541015625", id="exact 0.1"),
    pytest.param(b"9007199254740993", id="2**53 + 1"),
    pytest.param(b"9223372036854775808", id="2**63"),
    pytest.param(b"-9223372036854775809", id="-(2**63) - 1"),
    pytest.param(b"18446744073709551616", id="2**64"),
    pytest.param(b"1" + b"0" * 30, id="10**30"),
    pytest.param(b"1" * 4300, id="4300-digit integer"),
    pytest.param(b"1" * 4301, id="4301-digit integer (Python's limit)"),
    pytest.param(b"-0", id="-0"),
    pytest.param(b"-0.0", id="-0.0"),
    pytest.param(b'"\\ud834\\udd1e"', id="surrogate pair escape"),
    pytest.param(b'"\\ud800"', id="lone high surrogate"),
    pytest.param(b'"\\udc00\\ud800"', id="reversed surrogates"),
    pytest.param(b'{"\\ud800": 1}', id="lone surrogate in a key"),
    pytest.param(b'"\\u00e9\\u0000"', id="escapes"),
    pytest.param('"é€𝄞"'.encode(), id="UTF-8 text"),
    pytest.param(b'"\xff"', id="invalid UTF-8"),
    pytest.param(b'"\xed\xa0\x80"', id="UTF-8-encoded surrogate"),
    pytest.param(b"\xef\xbb\xbf{}", id="byte order mark"),
    pytest.param(b'{"a": "\x01"}', id="control character in a string"),
    pytest.param(b"[1,]", id="trailing comma"),
    pytest.param(b"01", id="leading zero"),
    pytest.param(b"{} x", id="trailing data"),
    pytest.param(b" \t\r\n[]\n", id="whitespace around"),
    pytest.param(b"\x0c[]", id="form feed is not whitespace"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[" * 100 + b"]" * 100, id="nested 100 deep"),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="nested 5000 deep"),
]


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (1 is not 1.0, -0.0 is not 0.0), keys in order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(body)
    except RecursionError:
        return "too deep", None
    except ValueError as exc:
        return "refused", exc


def _numbers(count: int) -> list[bytes]:
    rnd = random.Random(20240229)
    out = []
    for _ in range(count):
        digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 30)))
        digits = digits.lstrip("0") or "0"
        sign = rnd.choice(["", "-"])
        kind = rnd.randrange(3)
        if kind == 0:
            out.append(f"{sign}{digits}".encode())
        elif kind == 1:
            fraction = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 25)))
            out.append(f"{sign}{digits}.{fraction}".encode())
        else:
            out.append(f"{sign}{digits}e{rnd.randint(-340, 340)}".encode())
    return out


@pytest.mark.parametrize("strict", list(STRICT))
@pytest.mark.parametrize("body", [*BODIES, *(pytest.param(n, id="number") for n in _numbers(300))])
def test_strict_parser_reads_what_it_accepts_as_the_reference_does(strict, body):
    kind, value = _outcome(STRICT[strict], body)
    ref_kind, ref_value = _outcome(_parse_reference, body)
    if kind == "ok":
        assert ref_kind == "ok", ref_value
        assert _same(value, ref_value), (value, ref_value)
    # Whatever it refuses is left to the reference parser, which decides.


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"NaN", "NaN is not JSON", id="NaN"),
        pytest.param(b'{"p": -Infinity}', "-Infinity is not JSON", id="-Infinity"),
        pytest.param(b"1e400", "number 1e400 is out of range", id="too large"),
        pytest.param(b"-1e400", "number -1e400 is out of range", id="too small"),
        pytest.param(
            b"1" * 400 + b".5", "number 111111111111111111111111... is out of range", id="long"
        ),
    ],
)
def test_reference_parser_refuses_what_is_not_a_json_number(body, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _parse_reference(body)


INTEGER: dict[str, Any] = {"type": "integer"}
STRING: dict[str, Any] = {"type": "string", "maxLength": 3, "pattern": "^a"}
OBJECT: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "additionalProperties": {"type": "string", "pattern": "^a"},
}
NESTED: dict[str, Any] = {"items": {"$ref": "#"}, "type": "array"}

VERDICTS: list[Any] = [
    pytest.param(INTEGER, b"1" + b"0" * 30, True, id="10**30 is an integer"),
    pytest.param(INTEGER, b"1e30", False, id="1e30 is not an integer in draft 4"),
    pytest.param(
        {"type": "integer", "maximum": 2**64}, b"18446744073709551617", False, id="2**64 + 1"
    ),
    pytest.param({"multipleOf": 3}, b"1" + b"0" * 30 + b"1", False, id="10**30 + 1 by 3"),
    pytest.param({"multipleOf": 3}, b"1" + b"0" * 29 + b"2", True, id="10**30 + 2 by 3"),
    pytest.param({"enum": [2**70]}, str(2**70).encode(), True, id="enum of a big integer"),
    pytest.param({"type": "number"}, b"1e400", False, id="1e400 is not a number"),
    pytest.param({"type": "number"}, b"[1, NaN]", False, id="NaN"),
    pytest.param(OBJECT, b'{"a": 1, "a": "x"}', False, id="duplicate keys, last invalid"),
    pytest.param(OBJECT, b'{"a": "x", "a": 1}', True, id="duplicate keys, last valid"),
    pytest.param(STRING, b'"\\ud800"', False, id="lone surrogate against a pattern"),
    pytest.param(STRING, b'"a\\ud800"', True, id="lone surrogate matching"),
    pytest.param(STRING, b'"a\\ud800\\ud800\\ud800"', False, id="lone surrogates too long"),
    pytest.param({"type": "string"}, b'"\\udc00"', True, id="lone low surrogate"),
    pytest.param(OBJECT, b'{"\\ud800": 1}', False, id="lone surrogate key"),
    pytest.param(OBJECT, b'{"b": "\\ud800"}', False, id="additional property with a surrogate"),
    pytest.param(STRING, b'"a\\u00e9"', True, id="escaped text"),
    pytest.param(INTEGER, b"\xef\xbb\xbf1", False, id="byte order mark"),
    pytest.param(INTEGER, b"1 2", False, id="two documents"),
    pytest.param({"type": "object"}, b" \n", True, id="blank body is an empty object"),
    pytest.param(NESTED, b"[" * 50 + b"]" * 50, True, id="nested 50 deep"),
    pytest.param(NESTED, b"[" * 5000 + b"]" * 5000, False, id="nested 5000 deep"),
]

_POINTER = re.compile(r"(?:^\[|; )(/[^:]*|/):")


@pytest.mark.parametrize("strict", list(STRICT))
@pytest.mark.parametrize(("schema", "body", "valid"), VERDICTS)
def test_both_validators_agree_whichever_parser_reads_the_body(
    monkeypatch, strict, schema, body, valid
):
    monkeypatch.setattr(validation, "_parse_strict", STRICT[strict])
    reference = _compile_schema(schema, field_name="s", engine="jsonschema")
    fast = _compile_schema(schema, field_name="s", engine="jsonschema-rs")
    ref_detail = _body_errors(reference, body)
    fast_detail = _body_errors(fast, body)
    assert (ref_detail is None) is valid, ref_detail
    assert (fast_detail is None) is valid, fast_detail
    if ref_detail is not None and fast_detail is not None:
        assert _POINTER.findall(ref_detail) == _POINTER.findall(fast_detail)
        if ref_detail.startswith("[Invalid JSON"):
            assert ref_detail == fast_detail


def test_plain_parser_leaves_escapes_to_the_reference():
    # Without msgspec a \u escape may hide a lone surrogate, which jsonschema-rs cannot take.
    assert _parse_plain(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    with pytest.raises(ValueError, match="escape"):
        _parse_plain(b'"\\u00e9"')


GATEWAY_MODEL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "maximum": 2**64},
        "name": {"type": "string", "pattern": "^[A-Z]"},
        "price": {"type": "number"},
    },
}


@pytest.mark.parametrize("engine", ["jsonschema", "jsonschema-rs"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b'{"id": 18446744073709551616}', None, id="2**64 is within the maximum"),
        pytest.param(
            b'{"id": 18446744073709551617}',
            "[/id: 18446744073709551617 is greater than the maximum of 18446744073709551616]",
            id="2**64 + 1 is not",
        ),
        pytest.param(b'{"name": "R\\ud800"}', None, id="lone surrogate in a valid string"),
        pytest.param(
            b'{"name": "\\ud800"}',
            "[/name: '\\ud800' does not match '^[A-Z]']",
            id="lone surrogate in an invalid string",
        ),
        pytest.param(
            b'{"price": 1e400}',
            "[Invalid JSON: number 1e400 is out of range]",
            id="number out of range",
        ),
    ],
)
def test_through_the_gateway(make_client, engine, content, message):
    v = RequestValidator(
        routes={"POST /pets": RouteModel(body={"application/json": GATEWAY_MODEL})},
        engine=engine,
        verbose_errors=True,
    )
    client = make_client([v])
    r = client.post("/pets", headers={"content-type": "application/json"}, content=content)
    if message is None:
        assert r.status_code == 200, r.text
        assert r.seen[0].body == content
    else:
        assert r.status_code == 400
        assert r.json() == {"message": message}
        assert r.seen == []
