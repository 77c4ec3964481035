"""API keys and rate limits.

Keys (when API_KEYS_REQUIRED) come from API_KEYS and, with Redis, from the set named by
API_KEYS_REDIS_SET. A missing key answers 401, a wrong one 403. Keys are compared with
`hmac.compare_digest` against every candidate, and never logged or stored: rate-limit counters
are keyed by a digest of the key.

Rate limits count source characters per minute, per key when keys are required and per client
address otherwise, with the `limits` library's sliding-window counter: in memory, or in Redis
(shared by replicas) when REDIS_URL is set. Going over answers 429 with Retry-After.

Redis outage policy:
- rate limits: RATE_LIMIT_FAIL_OPEN=true (the default) lets requests through unlimited while the
  limit cannot be counted, preferring availability; false answers 503 with Retry-After instead.
  Either way the failure counts in `mt_rate_limit_storage_errors_total`.
- keys from the Redis set: the last set read (kept KEY_SET_TTL_S, then used stale while Redis is
  down) still admits its keys; with no set ever read, a key that is not in API_KEYS answers 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from service.config import Settings
from service.metrics import Metrics
from service.schemas import ApiError

KEY_SET_TTL_S = 5.0
STORAGE_ERRORS = (StorageError, RedisError, OSError, asyncio.TimeoutError)


def client_address(request: Request, trust_forwarded_for: bool) -> str:
    """The peer address, or with TRUST_FORWARDED_FOR the last X-Forwarded-For entry: the address
    the one trusted proxy in front of us saw (earlier entries can be forged by the client)."""
    if trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return request.client.host if request.client else "unknown"


def request_key(request: Request, body_key: str | None) -> str | None:
    """The API key from X-API-Key, `Authorization: Bearer`, or the body's `api_key`."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return body_key or None


class ApiKeys:
    """Checks keys against API_KEYS and the Redis set API_KEYS_REDIS_SET."""

    def __init__(self, settings: Settings, redis: Redis | None, metrics: Metrics):
        self.required = settings.api_keys_required
        self.static = [k.encode() for k in settings.api_keys]
        self.redis = redis if settings.api_keys_redis_set else None
        self.set_name = settings.api_keys_redis_set
        self.metrics = metrics
        self._members: list[bytes] | None = None
        self._read_at = -math.inf

    async def authenticate(self, key: str | None) -> str | None:
        """The key when keys are required and it is valid; None when keys are off.

        Raises:
            ApiError: 401 without a key, 403 with a wrong one, 503 when the key set cannot be read.
        """
        if not self.required:
            return None
        if not key:
            self.metrics.auth_failures.labels("401").inc()
            raise ApiError(401, "an API key is required: send it as X-API-Key, Authorization: Bearer, or api_key")
        if not await self._valid(key.encode()):
            self.metrics.auth_failures.labels("403").inc()
            raise ApiError(403, "the API key is not valid")
        return key

    async def _valid(self, key: bytes) -> bool:
        if _matches(key, self.static):
            return True
        return self.redis is not None and _matches(key, await self._redis_members())

    async def _redis_members(self) -> list[bytes]:
        assert self.redis is not None and self.set_name
        if time.monotonic() - self._read_at < KEY_SET_TTL_S and self._members is not None:
            return self._members
        try:
            members = await self.redis.smembers(self.set_name)
        except STORAGE_ERRORS as e:
            if self._members is not None:
                return self._members
            raise ApiError(
                503, "API keys cannot be checked: the key store (Redis) is unreachable", retry_after=5
            ) from e
        self._members = [m if isinstance(m, bytes) else str(m).encode() for m in members]
        self._read_at = time.monotonic()
        return self._members


def _matches(key: bytes, candidates: list[bytes]) -> bool:
    """Constant time in the key: every candidate is compared, none short-circuits."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(key, candidate)
    return found


class RateLimiter:
    """Source characters per minute per client, in memory or in Redis."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.per_minute = settings.rate_limit_chars_per_minute
        self.fail_open = settings.rate_limit_fail_open
        self.metrics = metrics
        self.item = RateLimitItemPerMinute(self.per_minute) if self.per_minute > 0 else None
        if settings.redis_url:
            self.storage: MemoryStorage | RedisStorage = RedisStorage(
                f"async+{settings.redis_url}",
                implementation="redispy",
                key_prefix=f"{settings.redis_prefix}limits",
                wrap_exceptions=True,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
        else:
            self.storage = MemoryStorage()
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    @staticmethod
    def identity(key: str | None, address: str) -> str:
        if key is not None:
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
        return "addr:" + address

    async def charge(self, identity: str, chars: int) -> None:
        """Count chars against identity's minute.

        Raises:
            ApiError: 413 when one request is over a whole minute's allowance, 429 with Retry-After
                when over the limit, 503 when Redis is down and RATE_LIMIT_FAIL_OPEN is false.
        """
        if self.item is None or chars <= 0:
            return
        if chars > self.per_minute:
            raise ApiError(
                413,
                f"the request has {chars} characters, more than the rate limit allows in a minute "
                f"(rate_limit_chars_per_minute={self.per_minute})",
                limit="rate_limit_chars_per_minute",
            )
        try:
            if await self.limiter.hit(self.item, identity, cost=chars):
                return
            retry_after = await self._retry_after(identity, chars)
        except STORAGE_ERRORS as e:
            self.metrics.limiter_errors.inc()
            if self.fail_open:
                return
            raise ApiError(
                503,
                "rate limits cannot be counted (Redis unreachable) and RATE_LIMIT_FAIL_OPEN is false",
                retry_after=5,
            ) from e
        self.metrics.rate_limited.inc()
        raise ApiError(
            429,
            f"rate limit exceeded: {self.per_minute} source characters per minute "
            f"(rate_limit_chars_per_minute); retry in {retry_after} s",
            limit="rate_limit_chars_per_minute",
            retry_after=retry_after,
        )

    async def _retry_after(self, identity: str, chars: int) -> int:
        """Whole seconds until chars fit: the window counts floor(previous x its share left) +
        current, where the previous minute's share fades linearly over the current minute."""
        assert self.item is not None
        expiry = self.item.get_expiry()
        prev, prev_ttl, cur, cur_ttl = await self.storage.get_sliding_window(self.item.key_for(identity), expiry)
        left = max(0.0, cur_ttl - expiry) if cur else prev_ttl  # of the current minute
        room = self.per_minute - cur - chars
        if room >= 0:  # the previous minute's part must fade below room + 1
            wait = left - (room + 1) * expiry / prev if prev else 0.0
        else:  # the current minute's part must, once it has become the previous one
            wait = left + expiry - (self.per_minute - chars + 1) * expiry / cur
        return max(1, math.floor(wait) + 1)
