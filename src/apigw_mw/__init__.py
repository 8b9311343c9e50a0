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
from .wsgi import WSGIGatewayMiddleware

__all__ = [
    "RESPONSE_TYPES",
    "Allow",
    "ApigwError",
    "BasePolicy",
    "Batcher",
    "Call",
    "ConfigurationError",
    "Cors",
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
    "Identity",
    "Phase",
    "Policy",
    "ReadBody",
    "Request",
    "RequestContext",
    "Respond",
    "ResponseHead",
    "ResponseType",
    "RouteTable",
    "Stage",
    "StorageError",
    "WSGIGatewayMiddleware",
    "__version__",
    "get_context",
]
