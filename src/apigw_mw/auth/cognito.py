"""The Cognito user pool authorizer, as API Gateway's REST API applies it.

The rule API Gateway follows: on a route without scopes the token is an **ID token**
(``token_use: id``, ``aud`` one of the app clients); on a route with scopes it is an
**access token** (``token_use: access``, ``client_id`` one of the app clients, and at least
one of the route's scopes). ``iss`` is always the pool's issuer. Every refusal is 401
``{"message":"Unauthorized"}``, a missing scope included, as the REST authorizer answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ..exceptions import ConfigurationError
from .jwks import JwksCache
from .jwt import _JwtBase

__all__ = ["CognitoAuthorizer"]

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_POOL = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d)_[0-9A-Za-z]+$")


class CognitoAuthorizer(_JwtBase):
    """API Gateway's Cognito user pool authorizer.

    Args:
        region: the pool's AWS region (``eu-west-1``).
        user_pool_id: the pool id (``eu-west-1_AbCdEf123``).
        app_client_ids: the accepted app clients; empty means any app client of the pool, as
            the REST authorizer behaves.
        token_use: ``None`` for API Gateway's rule (ID token on routes without scopes,
            access token on routes with scopes), or ``"id"`` / ``"access"`` to require one
            kind everywhere.
        scopes: per route, the scopes of which an access token needs at least one.
        routes: the routes this authorizer protects (``None``: every request).
        jwks_uri: the key set URL (default
            ``https://cognito-idp.{region}.amazonaws.com/{pool}/.well-known/jwks.json``, or
            under ``issuer`` when that is given).
        issuer: the expected ``iss`` (default
            ``https://cognito-idp.{region}.amazonaws.com/{pool}``), for tests and private
            endpoints.
        identity_source, algorithms, leeway, jwks, warm_up, cache_size: as for
            :class:`JwtAuthorizer`.

    The app finds ``claims`` (and ``jwt.claims``/``jwt.scopes``), ``principalId`` (``sub``)
    and ``groups`` (the ``cognito:groups`` list, empty when absent) in
    ``get_context(request).authorizer``.

    Example::

        cognito = CognitoAuthorizer(region="eu-west-1", user_pool_id="eu-west-1_AbCdEf123",
                                    app_client_ids=["4h1bq0example"],
                                    scopes={"POST /pets": ["pets/write"]})
        app.add_middleware(GatewayMiddleware, policies=[cognito])
    """

    scope_failure: ClassVar[str] = "UNAUTHORIZED"

    def __init__(
        self,
        *,
        region: str,
        user_pool_id: str,
        app_client_ids: str | Iterable[str] = (),
        token_use: str | None = None,
        scopes: Mapping[str, Sequence[str]] | None = None,
        routes: Iterable[str] | None = None,
        jwks_uri: str | None = None,
        issuer: str | None = None,
        identity_source: str = "method.request.header.Authorization",
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = 0,
        jwks: JwksCache | None = None,
        warm_up: bool = False,
        cache_size: int = 10_000,
    ) -> None:
        if not isinstance(region, str) or not _REGION.match(region):
            raise ConfigurationError("region", f"{region!r} is not an AWS region")
        m = _POOL.match(user_pool_id) if isinstance(user_pool_id, str) else None
        if m is None:
            raise ConfigurationError(
                "user_pool_id", f"{user_pool_id!r} is not a pool id such as 'eu-west-1_AbC123'"
            )
        if m.group(1) != region:
            raise ConfigurationError(
                "user_pool_id", f"pool {user_pool_id!r} is not in region {region!r}"
            )
        if isinstance(app_client_ids, str):
            app_client_ids = [app_client_ids]
        clients = frozenset(app_client_ids)
        if not all(isinstance(c, str) and c for c in clients):
            raise ConfigurationError("app_client_ids", "must be a list of app client ids")
        if token_use not in (None, "id", "access"):
            raise ConfigurationError("token_use", f"{token_use!r} is not None, 'id' or 'access'")
        self.region = region
        self.user_pool_id = user_pool_id
        self.app_client_ids = clients
        self.token_use = token_use
        if issuer is None:
            issuer = f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
        if jwks_uri is None and jwks is None:
            jwks_uri = issuer.rstrip("/") + "/.well-known/jwks.json"
        super().__init__(
            issuer=issuer,
            jwks_uri=jwks_uri,
            jwks=jwks,
            discovery=False,
            algorithms=algorithms,
            identity_source=identity_source,
            scopes=scopes,
            leeway=leeway,
            routes=routes,
            warm_up=warm_up,
            cache_size=cache_size,
        )

    def _id_error(self, claims: Mapping[str, Any]) -> str | None:
        if claims.get("token_use") != "id":
            return "an ID token is required"
        if self.app_client_ids:
            aud = claims.get("aud")
            if not isinstance(aud, str) or aud not in self.app_client_ids:
                return "the token has an invalid audience"
        return None

    def _access_error(self, claims: Mapping[str, Any]) -> str | None:
        if claims.get("token_use") != "access":
            return "an access token is required"
        if self.app_client_ids:
            client_id = claims.get("client_id")
            if not isinstance(client_id, str) or client_id not in self.app_client_ids:
                return "the token has an invalid client_id"
        return None

    def _mode_errors(self, claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
        if self.token_use == "id":
            error = self._id_error(claims)
            return error, error
        if self.token_use == "access":
            error = self._access_error(claims)
            return error, error
        return self._id_error(claims), self._access_error(claims)

    def _output(self, claims: dict[str, Any], scopes: list[str]) -> dict[str, Any]:
        out = super()._output(claims, scopes)
        groups = claims.get("cognito:groups")
        out["groups"] = (
            [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
        )
        return out
