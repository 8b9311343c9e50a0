"""A Django app behind the gateway, through Django's ASGI handler and its WSGI handler.

Django is configured here with ``settings.configure`` only when nothing configured it yet,
and every request runs under ``override_settings``, so the module works in any process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from werkzeug.test import Client

from apigw_mw import (
    Cors,
    GatewayMiddleware,
    RouteTable,
    Stage,
    WSGIGatewayMiddleware,
    get_context,
)
from tests.core.policies import Refuse
from tests.frameworks.asgi_client import call

ORIGIN = "https://app.example.com"
calls: list[str] = []


def get_pet(request: HttpRequest, pet_id: str) -> HttpResponse:
    calls.append(pet_id)
    ctx = get_context(request)
    return JsonResponse(
        {
            "requestId": ctx.request_id,
            "routeKey": ctx.route_key,
            "petId": ctx.path_parameters["petId"],
            "stage": ctx.stage,
            "body": request.body.decode(),
        }
    )


def create(request: HttpRequest) -> HttpResponse:
    calls.append("create")
    return JsonResponse({})


urlpatterns = [path("pets/<str:pet_id>", get_pet), path("pets", create)]

POLICIES: list[Any] = [
    RouteTable(["ANY /pets/{petId}", "POST /pets"]),
    Cors(allow_origins=[ORIGIN]),
    Refuse("ACCESS_DENIED", routes=["POST /pets"]),
]


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> Iterator[None]:
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], MIDDLEWARE=[]):
        yield


@pytest.fixture(params=["asgi", "wsgi"])
def request_to(request: pytest.FixtureRequest) -> Any:
    if request.param == "asgi":
        from django.core.handlers.asgi import ASGIHandler

        app = GatewayMiddleware(ASGIHandler(), policies=POLICIES, stage=Stage("prod"))

        def go(method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
            r = call(app, method, url, **kw)
            return r.status_code, dict(r.headers), r.json()

        return go

    from django.core.handlers.wsgi import WSGIHandler

    client = Client(WSGIGatewayMiddleware(WSGIHandler(), policies=POLICIES, stage=Stage("prod")))

    def go_wsgi(method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        r = client.open(url, method=method, headers=kw.get("headers"), data=kw.get("content"))
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.data)

    return go_wsgi


def test_context_reaches_the_view(request_to):
    calls.clear()
    status, headers, body = request_to(
        "PUT", "/pets/9", headers={"origin": ORIGIN}, content=b"payload"
    )
    assert status == 200
    assert body == {
        "requestId": headers["x-amzn-requestid"],
        "routeKey": "ANY /pets/{petId}",
        "petId": "9",
        "stage": "prod",
        "body": "payload",
    }
    assert headers["access-control-allow-origin"] == ORIGIN
    assert calls == ["9"]


def test_denial_never_reaches_the_view(request_to):
    calls.clear()
    status, headers, body = request_to("POST", "/pets", headers={"origin": ORIGIN})
    assert status == 403
    assert body == {"message": "User is not authorized to access this resource"}
    assert headers["x-amzn-errortype"] == "AccessDeniedException"
    assert calls == []
