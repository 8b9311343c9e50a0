"""API keys, usage plans, token buckets and quotas."""

from .bucket import Throttle, TokenBucket
from .memcached import MemcachedStore
from .plans import Quota, UsageAdmin, UsagePlan
from .storage import MemoryStore, RedisStore, Store

__all__ = [
    "MemcachedStore",
    "MemoryStore",
    "Quota",
    "RedisStore",
    "Store",
    "Throttle",
    "TokenBucket",
    "UsageAdmin",
    "UsagePlan",
]
