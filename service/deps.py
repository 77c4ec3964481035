"""What the routes are handed: the running service's parts, built in the app's lifespan.

Routes take them as `Annotated` dependencies (`ServiceDep`, `TranslatorDep`, `SettingsDep`),
so a test can build an app around its own Translator and Settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.cache import Cache, MemoryCache, RedisCache
from service.config import Settings
from service.limits import ApiKeys, RateLimiter
from service.metrics import Metrics
from service.translator import Translator

log = logging.getLogger(__name__)


def never() -> bool:
    return False


@dataclass
class Gate:
    """Admission state shared by the middleware, /health/ready and the server's signal handler.

    `draining` is set on SIGTERM: new requests answer 503, in-flight ones (`in_flight`) finish.
    `saturated` says whether the translator would refuse a new text (its queue is full); the
    service sets it once the translator runs.
    """

    draining: bool = False
    drain_started: float = 0.0
    in_flight: int = 0
    saturated: Callable[[], bool] = never

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()


@dataclass
class Service:
    settings: Settings
    translator: Translator
    metrics: Metrics
    cache: Cache
    keys: ApiKeys
    limiter: RateLimiter
    redis: Redis | None
    gate: Gate = field(default_factory=Gate)

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics, gate: Gate, translator: Translator | None) -> Service:
        """Open Redis (when REDIS_URL is set), build the cache and limits, load and warm the model."""
        redis = None
        if settings.redis_url:
            redis = Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
            cache: Cache = RedisCache(redis, settings.redis_prefix, settings.cache_ttl_s, metrics)
        else:
            cache = MemoryCache(settings.cache_size, settings.cache_ttl_s, metrics)
        if translator is None:
            translator = await asyncio.to_thread(Translator, settings)
            if settings.warmup:
                await asyncio.to_thread(translator.warmup)
        metrics.watch(translator.stats)
        gate.saturated = translator.saturated
        return cls(
            settings=settings,
            translator=translator,
            metrics=metrics,
            cache=cache,
            keys=ApiKeys(settings, redis, metrics),
            limiter=RateLimiter(settings, metrics),
            redis=redis,
            gate=gate,
        )

    async def stop(self, close_translator: bool) -> None:
        if close_translator:
            await asyncio.to_thread(self.translator.close, 0.0)
        await self.cache.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def degraded(self) -> list[str]:
        """What is not at full strength; the service still answers with it."""
        found = []
        if self.redis is not None:
            try:
                await self.redis.ping()
            except (TimeoutError, RedisError, OSError) as e:
                found.append(
                    f"redis: {type(e).__name__}: cache bypassed, rate limits fail "
                    f"{'open' if self.settings.rate_limit_fail_open else 'closed'}"
                )
        return found


# async so that FastAPI calls them in the event loop: a plain `def` dependency costs each request
# a hop to the thread pool and back (py-spy under load: 7% of the event loop's samples).
async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_translator(request: Request) -> Translator:
    return request.app.state.service.translator


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.service.settings


ServiceDep = Annotated[Service, Depends(get_service)]
TranslatorDep = Annotated[Translator, Depends(get_translator)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
