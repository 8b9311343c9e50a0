"""Quota periods are UTC calendar periods; Python and the Redis script agree on them."""

from __future__ import annotations

import random
from datetime import date, datetime, timezone

import pytest

from apigw_mw import Quota, RedisStore
from apigw_mw.traffic.storage import DAY, MONTH, WEEK, QuotaLevel, period_bounds


def day_of(y: int, m: int, d: int) -> int:
    return (date(y, m, d) - date(1970, 1, 1)).days


def as_date(day: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + day)


@pytest.mark.parametrize(
    ("on", "kind", "offset", "start", "end"),
    [
        pytest.param((2024, 3, 14), DAY, 0, (2024, 3, 14), (2024, 3, 15), id="day"),
        pytest.param((2024, 3, 14), WEEK, 0, (2024, 3, 10), (2024, 3, 17), id="week-sunday"),
        pytest.param((2024, 3, 14), WEEK, 1, (2024, 3, 11), (2024, 3, 18), id="week-monday"),
        pytest.param((2024, 3, 10), WEEK, 0, (2024, 3, 10), (2024, 3, 17), id="week-first-day"),
        pytest.param((2024, 2, 29), MONTH, 0, (2024, 2, 1), (2024, 3, 1), id="month-leap"),
        pytest.param((2024, 3, 14), MONTH, 14, (2024, 2, 15), (2024, 3, 15), id="month-offset"),
        pytest.param((2024, 3, 15), MONTH, 14, (2024, 3, 15), (2024, 4, 15), id="month-offset-day"),
        pytest.param((2024, 1, 3), MONTH, 5, (2023, 12, 6), (2024, 1, 6), id="month-across-year"),
        pytest.param((2023, 12, 31), MONTH, 0, (2023, 12, 1), (2024, 1, 1), id="december"),
    ],
)
def test_period_bounds(on, kind, offset, start, end) -> None:
    assert period_bounds(day_of(*on), kind, offset) == (day_of(*start), day_of(*end))


def test_redis_script_agrees_with_python(redis_url, redis_prefix) -> None:
    rng = random.Random(7)
    now = [0.0]
    store = RedisStore(redis_url, prefix=redis_prefix, clock=lambda: now[0])
    samples = [day_of(2024, 2, 29), day_of(2000, 3, 1), day_of(1999, 12, 31)]
    samples += [rng.randrange(day_of(1990, 1, 1), day_of(2090, 1, 1)) for _ in range(60)]
    for i, day in enumerate(samples):
        kind = i % 3
        offset = rng.randrange(0, {DAY: 1, WEEK: 7, MONTH: 28}[kind])
        now[0] = day * 86400 + rng.randrange(86400)
        level = QuotaLevel(f"q{i}", 10, kind, offset, "q")
        _, admitted, _, [(ok, count, end)] = store.check_sync([], [level])
        assert admitted
        assert ok
        assert count == 0
        expected = period_bounds(day, kind, offset)[1]
        assert end == expected * 86400.0, (as_date(day), kind, offset)
        stamp = datetime.fromtimestamp(end, tz=timezone.utc)
        assert (stamp.hour, stamp.minute) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"limit": 0}, "Quota.limit", id="zero-limit"),
        pytest.param({"limit": -5}, "Quota.limit", id="negative-limit"),
        pytest.param({"limit": 1.5}, "Quota.limit", id="fractional-limit"),
        pytest.param({"limit": 5, "period": "HOUR"}, "Quota.period", id="unknown-period"),
        pytest.param({"limit": 5, "period": "DAY", "offset": 1}, "Quota.offset", id="day-offset"),
        pytest.param({"limit": 5, "period": "WEEK", "offset": 7}, "Quota.offset", id="week-7"),
        pytest.param({"limit": 5, "period": "MONTH", "offset": 28}, "Quota.offset", id="month-28"),
        pytest.param({"limit": 5, "period": "MONTH", "offset": -1}, "Quota.offset", id="negative"),
    ],
)
def test_bad_quota(kwargs, field) -> None:
    from apigw_mw import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        Quota(**kwargs)
    assert info.value.field == field


def test_period_names_are_case_insensitive() -> None:
    assert Quota(5, period="week", offset=1).period == "WEEK"
