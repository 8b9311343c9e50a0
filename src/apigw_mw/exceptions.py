"""The exceptions apigw-mw raises.

Every exception the library raises derives from one root::

    ApigwError
    ├── ConfigurationError      bad configuration, raised at construction (also a ValueError)
    ├── GatewayError            a request refused with a gateway response (raised inside a policy)
    ├── StorageError            a shared-state backend (Redis, memcached, ...) failed
    └── EffectError             an effect could not be performed
        └── EffectTimeout       an effect ran past its deadline

Errors carry their data as attributes and chain their cause (``raise ... from exc``), so a
handler never has to parse a message.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ApigwError",
    "ConfigurationError",
    "EffectError",
    "EffectTimeout",
    "GatewayError",
    "StorageError",
]


class ApigwError(Exception):
    """Root of every exception raised by apigw-mw."""


class ConfigurationError(ApigwError, ValueError):
    """A configuration value is invalid.

    Raised by constructors, never on the request path. ``field`` names the offending option
    (``"stage.variables.color"``, ``"responses.THROTTLED.statusCode"``, ...).

    >>> try:
    ...     Stage("prod", variables={"bad name": "x"})
    ... except ConfigurationError as exc:
    ...     exc.field
    'stage.variables'
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GatewayError(ApigwError):
    """Refuse the current request with an API Gateway response.

    A policy may ``raise GatewayError("ACCESS_DENIED")`` instead of returning a
    :class:`~apigw_mw.Deny`; both become the same gateway response.
    """

    def __init__(
        self,
        response_type: str,
        message: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{response_type}: {message}" if message else response_type)
        self.response_type = response_type
        self.message = message
        self.headers = dict(headers or {})


class StorageError(ApigwError):
    """A storage backend (Redis, memcached, ...) failed or was unreachable."""


class EffectError(ApigwError):
    """An effect yielded by a policy could not be performed."""


class EffectTimeout(EffectError, TimeoutError):
    """An effect did not finish within its timeout."""
