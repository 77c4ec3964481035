"""The translation cache: embedded LRU, Redis with a TTL, and Redis failures that never fail a translation."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from redis.asyncio import Redis

from service.cache import MemoryCache, RedisCache, cache_key, from_json, normalize, to_json
from service.metrics import Metrics
from service.translator import DecodeOptions, Translation
from tests.conftest import redis_url
from tests.service.conftest import DOWN_REDIS

GREEDY = DecodeOptions()
BEAM = DecodeOptions("beam", beam_size=4, n_best=2)


def translation(text: str = "hola", stop_reason: str = "eos") -> Translation:
    return Translation(
        text=text,
        tokens=["▁hola", "</s>"],
        source_tokens=["▁hello", "</s>"],
        score=-0.5,
        logprob=-1.0,
        stop_reason=stop_reason,
        alternatives=[Translation("ola", ["▁ola"], ["▁hello", "</s>"], -0.9, -1.8, "eos")],
        attention=[[0.9, 0.1], [0.2, 0.8]],
        source_words=["hello", "</s>"],
        target_words=["hola"],
        word_attention=[[0.9, 0.1]],
        alignment=[(0, 0)],
        queue_ms=1.0,
        decode_ms=2.0,
    )


def counts(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["result"]: s.value
        for m in metrics.registry.collect()
        if m.name == "mt_cache"
        for s in m.samples
        if s.name == "mt_cache_total"
    }


def test_the_key_changes_with_version_text_and_decoding_but_not_with_spacing():
    key = cache_key("v1", "Hello  world ", GREEDY)
    assert key == cache_key("v1", " Hello world", GREEDY)
    assert key != cache_key("v2", "Hello world", GREEDY)
    assert key != cache_key("v1", "Hello world!", GREEDY)
    assert key != cache_key("v1", "Hello world", BEAM)
    assert cache_key("v1", "x", BEAM) != cache_key("v1", "x", DecodeOptions("beam", beam_size=5, n_best=2))
    assert cache_key("v1", "x", GREEDY) == cache_key("v1", "x", DecodeOptions(beam_size=9, length_penalty=1.0))


def test_normalize_composes_unicode_and_collapses_whitespace():
    assert normalize("  cafe\u0301 \n\t au  lait ") == "caf\u00e9 au lait"


def test_a_translation_survives_the_json_round_trip():
    t = translation()
    assert from_json(to_json(t)) == t


def test_attention_comes_back_bit_for_bit_and_is_not_written_as_json_numbers():
    t = translation()
    t.attention = np.random.default_rng(0).dirichlet(np.ones(7), size=5).astype(np.float32).tolist()
    blob = to_json(t)
    assert from_json(blob).attention == t.attention
    assert str(t.attention[0][0]) not in blob


def test_an_entry_in_the_older_plain_form_is_refused_so_the_cache_reads_a_miss():
    old = json.loads(to_json(translation()))
    old["attention"] = [[0.9, 0.1], [0.2, 0.8]]
    with pytest.raises(ValueError, match="packed"):
        from_json(json.dumps(old))


def test_the_memory_cache_evicts_the_least_recently_used():
    async def go():
        cache = MemoryCache(size=2, ttl_s=60, metrics=Metrics())
        await cache.put("a", translation("a"))
        await cache.put("b", translation("b"))
        assert (await cache.get("a")).text == "a"  # a is now the most recent
        await cache.put("c", translation("c"))
        return [await cache.get(k) for k in "abc"]

    a, b, c = asyncio.run(go())
    assert a is not None and b is None and c is not None


def test_memory_entries_expire_after_the_ttl():
    async def go():
        metrics = Metrics()
        cache = MemoryCache(size=10, ttl_s=0.5, metrics=metrics)
        await cache.put("k", translation())
        fresh = await cache.get("k")
        await asyncio.sleep(0.6)
        return fresh, await cache.get("k"), counts(metrics)

    fresh, stale, seen = asyncio.run(go())
    assert fresh is not None and stale is None and seen == {"hit": 1, "miss": 1}


def test_unfinished_translations_are_not_cached():
    async def go():
        cache = MemoryCache(size=10, ttl_s=60, metrics=Metrics())
        await cache.put("deadline", translation(stop_reason="deadline"))
        await cache.put("max", translation(stop_reason="max_length"))
        return await cache.get("deadline"), await cache.get("max")

    deadline, max_length = asyncio.run(go())
    assert deadline is None and max_length is not None


def test_redis_stores_translations_with_the_ttl_under_the_prefix(redis_prefix, redis_client):
    async def go():
        redis = Redis.from_url(redis_url())
        metrics = Metrics()
        cache = RedisCache(redis, redis_prefix, ttl_s=120, metrics=metrics)
        await cache.put("k", translation())
        found = await cache.get("k")
        missing = await cache.get("other")
        await redis.aclose()
        return found, missing, counts(metrics)

    found, missing, seen = asyncio.run(go())
    assert found == translation() and missing is None
    assert seen == {"hit": 1, "miss": 1}
    assert 0 < redis_client.ttl(f"{redis_prefix}cache:k") <= 120


def test_an_unreachable_redis_reads_as_a_miss_and_counts_an_error():
    async def go():
        redis = Redis.from_url(DOWN_REDIS, socket_connect_timeout=0.2)
        metrics = Metrics()
        cache = RedisCache(redis, "mt-test:", ttl_s=60, metrics=metrics)
        await cache.put("k", translation())
        found = await cache.get("k")
        await redis.aclose()
        return found, counts(metrics)

    found, seen = asyncio.run(go())
    assert found is None and seen["error"] == 2


def test_translations_still_succeed_when_redis_is_down(make_client):
    client = make_client(redis_url=DOWN_REDIS)
    r = client.post("/translate", json={"q": "God saw the light."})
    assert r.status_code == 200 and r.json()["translatedText"]
    metrics = client.get("/metrics").text
    assert 'mt_cache_total{result="error"} 2.0' in metrics  # the lookup and the store
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert any(d.startswith("redis:") for d in ready.json()["degraded"])


def test_replicas_share_the_redis_cache(make_client, redis_prefix):
    first = make_client(redis_url=redis_url(), redis_prefix=redis_prefix)
    second = make_client(redis_url=redis_url(), redis_prefix=redis_prefix)
    a = first.post("/translate", json={"q": "And God saw the light."}).json()["translations"][0]
    b = second.post("/translate", json={"q": "And God saw the light."}).json()["translations"][0]
    assert a["cached"] is False and b["cached"] is True and a["text"] == b["text"]


def test_a_zero_size_memory_cache_stores_nothing():
    async def go():
        cache = MemoryCache(size=0, ttl_s=60, metrics=Metrics())
        await cache.put("k", translation())
        return await cache.get("k")

    assert asyncio.run(go()) is None
