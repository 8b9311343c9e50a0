"""apigw-mw: AWS API Gateway's request policies as ASGI and WSGI middleware.

Example::

    from fastapi import FastAPI
    from apigw_mw import Cors, GatewayMiddleware, Stage

    app = FastAPI()
    app.add_middleware(GatewayMiddleware, policies=[Cors(allow_origins=["https://app.example.com"])],
                       stage=Stage("prod", variables={"color": "blue"}))
"""

from __future__ import annotations

from ._version import __version__
from .asgi import GatewayMiddleware
from .auth.api_keys import ApiKey, ApiKeyAuth, ApiKeys, KeyStore, RedisKeyStore
from .auth.cognito import CognitoAuthorizer
from .auth.custom import LambdaAuthorizer
from .auth.jwt import JwtAuthorizer
from .auth.mtls import MutualTls
from .auth.resource_policy import ResourcePolicy
from .auth.sigv4 import CredentialStore, IamAuthorizer, IamPrincipal
from .context import ErrorInfo, Identity, RequestContext, get_context
from .cors import Cors
from .effects import Batcher, Call, Effect, ReadBody
from .exceptions import (
    ApigwError,
    ConfigurationError,
    EffectError,
    EffectTimeout,
    GatewayError,
    StorageError,
)
from .observe import AccessLog, Metrics, Tracing
from .openapi import from_openapi
from .pipeline import BasePolicy, GatewaySettings, Phase, Policy, ResponseHead, RouteTable
from .request import Headers, Request
from .responses import (
    RESPONSE_TYPES,
    Allow,
    Deny,
    GatewayResponse,
    GatewayResponses,
    Respond,
    ResponseType,
)
from .routes import Stage
from .traffic import (
    MemcachedStore,
    MemoryStore,
    Quota,
    RedisStore,
    Throttle,
    TokenBucket,
    UsageAdmin,
    UsagePlan,
)
from .validation import RequestValidator, RouteModel
from .wsgi import WSGIGatewayMiddleware

__all__ = [
    "RESPONSE_TYPES",
    "AccessLog",
    "Allow",
    "ApiKey",
    "ApiKeyAuth",
    "ApiKeys",
    "ApigwError",
    "BasePolicy",
    "Batcher",
    "Call",
    "CognitoAuthorizer",
    "ConfigurationError",
    "Cors",
    "CredentialStore",
    "Deny",
    "Effect",
    "EffectError",
    "EffectTimeout",
    "ErrorInfo",
    "GatewayError",
    "GatewayMiddleware",
    "GatewayResponse",
    "GatewayResponses",
    "GatewaySettings",
    "Headers",
    "IamAuthorizer",
    "IamPrincipal",
    "Identity",
    "JwtAuthorizer",
    "KeyStore",
    "LambdaAuthorizer",
    "MemcachedStore",
    "MemoryStore",
    "Metrics",
    "MutualTls",
    "Phase",
    "Policy",
    "Quota",
    "ReadBody",
    "RedisKeyStore",
    "RedisStore",
    "Request",
    "RequestContext",
    "RequestValidator",
    "ResourcePolicy",
    "Respond",
    "ResponseHead",
    "ResponseType",
    "RouteModel",
    "RouteTable",
    "Stage",
    "StorageError",
    "Throttle",
    "TokenBucket",
    "Tracing",
    "UsageAdmin",
    "UsagePlan",
    "WSGIGatewayMiddleware",
    "__version__",
    "from_openapi",
    "get_context",
]
