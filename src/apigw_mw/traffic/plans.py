"""Usage plans and quotas, and the admin side: a key's remaining quota, and its reset."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError
from ..routes import Router
from .bucket import TokenBucket, check_bucket, route_limits_arg
from .storage import DAY, MONTH, PERIODS, WEEK, BucketSpec, Level, QuotaLevel, Store, get_store

if TYPE_CHECKING:
    from ..auth.api_keys import ApiKey

__all__ = ["Quota", "UsageAdmin", "UsagePlan"]

_NAME = re.compile(r"^[A-Za-z0-9 _.\-]{1,128}$")
_OFFSET_MAX = {DAY: 0, WEEK: 6, MONTH: 27}


@dataclass(frozen=True, slots=True)
class Quota:
    """How many requests a key may make per calendar period (UTC).

    Args:
        limit: requests per period; at least 1.
        period: ``"DAY"`` (from 00:00 UTC), ``"WEEK"`` or ``"MONTH"``.
        offset: the day the period starts, as API Gateway's console reads it: for ``WEEK``
            the weekday (0 Sunday, 1 Monday, ... 6 Saturday), for ``MONTH`` the day of the
            month minus one (0 is the 1st, at most 27); for ``DAY`` it must be 0.

    Example::

        Quota(10_000, period="MONTH", offset=14)   # months run from the 15th, 00:00 UTC
    """

    limit: int
    period: str = "DAY"
    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise ConfigurationError("Quota.limit", f"{self.limit!r} must be an int of at least 1")
        period = self.period.upper() if isinstance(self.period, str) else self.period
        if period not in PERIODS:
            raise ConfigurationError(
                "Quota.period", f"{self.period!r} is not one of DAY, WEEK, MONTH"
            )
        object.__setattr__(self, "period", period)
        top = _OFFSET_MAX[PERIODS[period]]
        if (
            not isinstance(self.offset, int)
            or isinstance(self.offset, bool)
            or not 0 <= self.offset <= top
        ):
            raise ConfigurationError(
                "Quota.offset", f"{self.offset!r} must be 0..{top} for {period}"
            )

    @property
    def kind(self) -> int:
        return PERIODS[self.period]


def _spec(bucket: TokenBucket, name: str) -> BucketSpec:
    return BucketSpec(bucket.rate, bucket.burst, name)


class UsagePlan:
    """A usage plan: the throttle, per-route limits and quota every key on it gets.

    Args:
        name: the plan's name (letters, digits, space, ``_ . -``); part of storage keys, so
            renaming a plan starts its keys' counters afresh.
        throttle: the :class:`TokenBucket` of each key on the plan.
        quota: the :class:`Quota` of each key on the plan.
        route_limits: per-route buckets for each key (``{"POST /orders": TokenBucket(1, 2)}``),
            checked together with ``throttle``.

    Example::

        basic = UsagePlan("basic", throttle=TokenBucket(rate=10, burst=20),
                          quota=Quota(10_000, period="DAY"),
                          route_limits={"POST /orders": TokenBucket(rate=1, burst=2)})
    """

    __slots__ = (
        "_quota_like",
        "_route_router",
        "_route_specs",
        "_throttle_spec",
        "name",
        "quota",
        "route_limits",
        "throttle",
    )

    def __init__(
        self,
        name: str,
        *,
        throttle: TokenBucket | None = None,
        quota: Quota | None = None,
        route_limits: Mapping[str, TokenBucket] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                "UsagePlan.name", f"{name!r} must be 1-128 of letters, digits, space, _ . -"
            )
        self.name = name
        self.throttle = (
            None if throttle is None else check_bucket(throttle, f"UsagePlan({name}).throttle")
        )
        if quota is not None and not isinstance(quota, Quota):
            raise ConfigurationError(f"UsagePlan({name}).quota", f"{quota!r} is not a Quota")
        self.quota = quota
        limits, router = route_limits_arg(route_limits, f"UsagePlan({name}).route_limits")
        self.route_limits: Mapping[str, TokenBucket] = limits
        self._route_router: Router | None = router
        # What every key's levels share, worked out once: a key's level then costs its
        # storage key and one small object.
        self._throttle_spec = (
            None if self.throttle is None else _spec(self.throttle, f"plan-{name}")
        )
        self._route_specs = {r: _spec(b, f"plan-{name}-route") for r, b in limits.items()}
        self._quota_like = (
            None
            if quota is None
            else QuotaLevel("", quota.limit, quota.kind, quota.offset, f"quota-{name}")
        )

    @property
    def limited(self) -> bool:
        """Whether the plan limits anything."""
        return bool(self.throttle or self.quota or self.route_limits)

    def levels(self, key_id: str, route: str | None) -> list[Level]:
        """The buckets of key ``key_id`` on ``route`` (a key of ``route_limits``, or
        ``None``)."""
        tag = "{k:" + key_id + "}"
        out = []
        spec = self._throttle_spec
        if spec is not None:
            out.append(Level.of(tag + ":p:" + self.name, spec))
        if route is not None:
            out.append(Level.of(tag + ":r:" + self.name + ":" + route, self._route_specs[route]))
        return out

    def quota_level(self, key_id: str) -> QuotaLevel | None:
        """The quota counter of key ``key_id`` (``None`` without a quota)."""
        like = self._quota_like
        if like is None:
            return None
        return QuotaLevel.of("{k:" + key_id + "}:q:" + self.name, like)

    def __repr__(self) -> str:
        return (
            f"UsagePlan({self.name!r}, throttle={self.throttle!r}, quota={self.quota!r}, "
            f"route_limits={dict(self.route_limits)!r})"
        )


class UsageAdmin:
    """Read and reset the quota of API keys (the admin side of usage plans).

    Args:
        storage: the same storage URI or store the gateway uses (``memory://`` is shared
            within the process).

    Calls are blocking (one Redis round trip each); from async code run them in a thread.

    Example::

        admin = UsageAdmin("redis://127.0.0.1:6379/0")
        admin.remaining(alice)          # requests left in the current period
        admin.reset(alice)              # start the period's count afresh
    """

    def __init__(self, storage: str | Store) -> None:
        self.store = get_store(storage, "UsageAdmin.storage")

    def _level(self, key: ApiKey, plan: UsagePlan | None) -> QuotaLevel | None:
        plan = plan if plan is not None else key.plan
        if plan is None:
            return None
        return plan.quota_level(key.id)

    def used(self, key: ApiKey, plan: UsagePlan | None = None) -> int | None:
        """Requests counted in the current period (``None`` when the plan has no quota)."""
        level = self._level(key, plan)
        if level is None:
            return None
        return self.store.quota_used(level.key, level.kind, level.offset)

    def remaining(self, key: ApiKey, plan: UsagePlan | None = None) -> int | None:
        """Requests left in the current period (``None`` when the plan has no quota)."""
        level = self._level(key, plan)
        if level is None:
            return None
        return max(0, level.limit - self.store.quota_used(level.key, level.kind, level.offset))

    def reset(self, key: ApiKey, plan: UsagePlan | None = None) -> None:
        """Forget the key's count for the current period."""
        level = self._level(key, plan)
        if level is not None:
            self.store.quota_reset(level.key)
