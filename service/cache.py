"""The translation cache: an in-process LRU by default, Redis (shared by replicas) when REDIS_URL is set.

The key is the bundle's version, the normalized text and the decoding parameters that change
the output, so a new bundle never serves an old model's translations. Only finished
translations are stored (stopped at EOS or max length, never at a deadline). Any Redis error
counts in `mt_cache_total{result="error"}` and reads as a miss: the cache never fails a
translation.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
import unicodedata
from collections import OrderedDict
from typing import Protocol

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.metrics import Metrics
from service.translator import DecodeOptions, Translation

CACHEABLE = ("eos", "max_length")


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped: what is translated and keyed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def cache_key(version: str, text: str, options: DecodeOptions) -> str:
    """A digest of what decides the output: bundle version, normalized text, decoding parameters."""
    params: dict = {"strategy": options.strategy, "n_best": options.n_best, "max_length": options.max_length}
    if options.strategy == "beam":
        params |= {"beam_size": options.beam_size, "length_penalty": options.length_penalty}
    blob = json.dumps([version, normalize(text), params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


MATRICES = ("attention", "word_attention")  # float lists stored as float64 bytes: exact, and cheap


def to_json(t: Translation) -> str:
    """The translation as JSON, its attention matrices as base64 of float64 bytes: writing them
    as JSON numbers (and `dataclasses.asdict`'s deep copy) took a third of a replica's event
    loop under overload (py-spy), for every translation put in Redis."""

    def plain(t: Translation) -> dict:
        d = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
        d["alternatives"] = [plain(a) for a in t.alternatives]
        for name in MATRICES:
            rows = d[name]
            shape = [len(rows), len(rows[0]) if rows else 0]
            d[name] = {"shape": shape, "f8": base64.b64encode(np.asarray(rows, dtype=np.float64).tobytes()).decode()}
        return d

    return json.dumps(plain(t), ensure_ascii=False)


def from_json(blob: str | bytes) -> Translation:
    def build(d: dict) -> Translation:
        d["alternatives"] = [build(a) for a in d["alternatives"]]
        d["alignment"] = [tuple(pair) for pair in d["alignment"]]
        for name in MATRICES:
            packed = d[name]
            if not isinstance(packed, dict):
                raise ValueError(f"{name} is not in the packed form")
            d[name] = np.frombuffer(base64.b64decode(packed["f8"]), dtype=np.float64).reshape(packed["shape"]).tolist()
        return Translation(**d)

    return build(json.loads(blob))


class Cache(Protocol):
    async def get(self, key: str) -> Translation | None: ...
    async def put(self, key: str, value: Translation) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """An LRU of at most `size` entries, each kept `ttl_s` seconds (0: until evicted). size 0 turns it off."""

    def __init__(self, size: int, ttl_s: float, metrics: Metrics):
        self.size, self.ttl_s, self.metrics = size, ttl_s, metrics
        self.entries: OrderedDict[str, tuple[float, Translation]] = OrderedDict()

    async def get(self, key: str) -> Translation | None:
        item = self.entries.get(key)
        if item is None or item[0] < time.monotonic():
            self.entries.pop(key, None)
            self.metrics.cache.labels("miss").inc()
            return None
        self.entries.move_to_end(key)
        self.metrics.cache.labels("hit").inc()
        return item[1]

    async def put(self, key: str, value: Translation) -> None:
        if self.size <= 0 or value.stop_reason not in CACHEABLE:
            return
        expires = time.monotonic() + self.ttl_s if self.ttl_s > 0 else float("inf")
        self.entries[key] = (expires, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    async def close(self) -> None:
        self.entries.clear()


class RedisCache:
    """Translations as JSON strings under `{prefix}cache:{key}` with a TTL (0: none), shared by all replicas."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int, metrics: Metrics):
        self.redis, self.prefix, self.ttl_s, self.metrics = redis, prefix, ttl_s, metrics

    async def get(self, key: str) -> Translation | None:
        try:
            blob = await self.redis.get(f"{self.prefix}cache:{key}")
        except (TimeoutError, RedisError, OSError):
            self.metrics.cache.labels("error").inc()
            return None
        if blob is None:
            self.metrics.cache.labels("miss").inc()
            return None
        try:
            value = from_json(blob)
        except (ValueError, TypeError, KeyError):  # written by an incompatible version: a miss
            self.metrics.cache.labels("error").inc()
            return None
        self.metrics.cache.labels("hit").inc()
        return value

    async def put(self, key: str, value: Translation) -> None:
        if value.stop_reason not in CACHEABLE:
            return
        try:
            await self.redis.set(f"{self.prefix}cache:{key}", to_json(value), ex=self.ttl_s or None)
        except (TimeoutError, RedisError, OSError):
            self.metrics.cache.labels("error").inc()

    async def close(self) -> None:
        """The Redis client is shared and closed by its owner."""
