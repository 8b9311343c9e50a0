"""Small policies the core tests are written with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apigw_mw import Allow, BasePolicy, Deny, Phase


class Tag(BasePolicy):
    """Allows, recording its name in the authorizer output and in ``log`` (run order)."""

    def __init__(
        self,
        name: str,
        phase: Phase = Phase.VALIDATE,
        *,
        log: list[str] | None = None,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        self.name = name
        self.phase = phase  # type: ignore[misc]
        self.log = log if log is not None else []

    def flow(self, request: Any, context: Any) -> Any:
        self.log.append(self.name)
        return Allow(authorizer={self.name: True})


class Refuse(BasePolicy):
    """Denies every request it applies to with ``response_type``."""

    def __init__(
        self,
        response_type: str = "ACCESS_DENIED",
        phase: Phase = Phase.AUTHORIZE,
        *,
        message: Any = None,
        log: list[str] | None = None,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        self.response_type = response_type
        self.phase = phase  # type: ignore[misc]
        self.message = message
        self.log = log if log is not None else []

    def flow(self, request: Any, context: Any) -> Any:
        self.log.append(f"refuse:{self.response_type}")
        if self.message is None:
            return Deny(self.response_type)
        return Deny(self.response_type, self.message)
