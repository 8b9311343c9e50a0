"""API keys, usage plans, token buckets and quotas."""

from .bucket import Throttle, TokenBucket
from .plans import Quota, UsageAdmin, UsagePlan
from .storage import MemoryStore, RedisStore, Store

__all__ = [
    "MemoryStore",
    "Quota",
    "RedisStore",
    "Store",
    "Throttle",
    "TokenBucket",
    "UsageAdmin",
    "UsagePlan",
]
