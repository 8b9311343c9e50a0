from __future__ import annotations

from apigw_mw import Cors, RouteTable, Stage


def test_request_reaches_app_with_context(make_client):
    client = make_client(
        [RouteTable(["GET /pets/{petId}"])], stage=Stage("prod", variables={"color": "blue"})
    )
    r = client.get("/pets/42")
    assert r.status_code == 200
    ctx = r.json()["context"]
    assert ctx["routeKey"] == "GET /pets/{petId}"
    assert ctx["pathParameters"] == {"petId": "42"}
    assert ctx["stageVariables"] == {"color": "blue"}
    assert r.headers["x-amzn-requestid"] == ctx["requestId"]
    assert len(r.seen) == 1


def test_preflight_answered_by_gateway(make_client):
    client = make_client([Cors(allow_origins=["https://a.example"], allow_methods=["GET"])])
    r = client.options(
        "/pets", headers={"origin": "https://a.example", "access-control-request-method": "GET"}
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.seen == []
