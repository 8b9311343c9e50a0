"""What the app learns about the caller's key, and what never leaves it."""

from __future__ import annotations

from typing import Any

from apigw_mw import ApiKey, ApiKeyAuth, ApiKeys, RouteTable

KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


def test_the_app_sees_the_key_and_its_id_but_not_in_as_dict(make_client: Any) -> None:
    client = make_client(
        [RouteTable(["GET /pets"]), ApiKeyAuth(ApiKeys([ApiKey(KEY, id="k-alice")]))]
    )
    r = client.get("/pets", headers={"x-api-key": KEY})
    assert r.status_code == 200
    ctx = r.seen[0].context
    assert ctx.identity.api_key == KEY  # $context.identity.apiKey, for the backend
    assert ctx.identity.api_key_id == "k-alice"
    assert "apiKey" not in ctx.as_dict("1.0")["identity"]
    assert KEY not in repr(ctx.as_dict("2.0"))
    assert ctx.lookup(("identity", "apiKey")) is None  # never in logs or templates
    assert ctx.lookup(("identity", "apiKeyId")) == "k-alice"


def test_a_refused_key_never_reaches_the_app(make_client: Any) -> None:
    client = make_client([ApiKeyAuth(ApiKeys([ApiKey(KEY, enabled=False)]))])
    r = client.get("/pets", headers={"x-api-key": KEY})
    assert r.status_code == 403
    assert r.seen == []
    assert KEY not in r.text
