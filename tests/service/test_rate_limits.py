"""Rate limits in source characters per minute: per client address (or key), in memory or in a
shared Redis, 429 with Retry-After, and the stated Redis-outage policy (RATE_LIMIT_FAIL_OPEN)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.config import Settings
from service.limits import RateLimiter
from service.metrics import Metrics
from service.schemas import ApiError
from tests.conftest import redis_url
from tests.service.conftest import DOWN_REDIS


def chars(n: int) -> dict:
    return {"q": "a" * n}


def test_characters_over_the_minute_get_429_with_retry_after(make_client):
    client = make_client(rate_limit_chars_per_minute=100)
    assert client.post("/translate", json=chars(60)).status_code == 200
    r = client.post("/translate", json=chars(50))
    assert r.status_code == 429
    assert r.json()["limit"] == "rate_limit_chars_per_minute"
    assert "100 source characters per minute" in r.json()["error"]
    # up to two minutes: the sliding-window counter lets the used minute's share fade over the
    # next one (60 chars charged early in a minute leave no room for 50 more until ~9 s into
    # the next); the exact waits are tested below with a fixed clock
    assert 1 <= int(r.headers["retry-after"]) <= 120
    assert client.post("/translate", json=chars(40)).status_code == 200  # what is left still fits
    assert "mt_rate_limit_rejections_total 1.0" in client.get("/metrics").text


def test_one_request_over_a_whole_minute_is_413_not_429(make_client):
    r = make_client(rate_limit_chars_per_minute=100).post("/translate", json=chars(101))
    assert r.status_code == 413
    assert r.json()["limit"] == "rate_limit_chars_per_minute"


def test_zero_turns_rate_limits_off(make_client):
    client = make_client(rate_limit_chars_per_minute=0)
    assert all(client.post("/translate", json=chars(1000)).status_code == 200 for _ in range(3))


def test_forwarded_for_is_ignored_unless_trusted(make_client):
    client = make_client(rate_limit_chars_per_minute=100)
    assert client.post("/translate", json=chars(80), headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert client.post("/translate", json=chars(80), headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 429


def test_trusted_forwarded_for_limits_each_client_separately_by_the_last_hop(make_client):
    client = make_client(rate_limit_chars_per_minute=100, trust_forwarded_for=True)
    assert client.post("/translate", json=chars(80), headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert client.post("/translate", json=chars(80), headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 200
    forged = {"X-Forwarded-For": "1.2.3.4, 10.0.0.1"}  # the client wrote the first entry, the proxy the last
    assert client.post("/translate", json=chars(80), headers=forged).status_code == 429


def test_replicas_share_limits_through_redis(make_client, redis_prefix):
    shared = {"rate_limit_chars_per_minute": 100, "redis_url": redis_url(), "redis_prefix": redis_prefix}
    first, second = make_client(**shared), make_client(**shared)
    assert first.post("/translate", json=chars(60)).status_code == 200
    r = second.post("/translate", json=chars(50))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_a_redis_outage_lets_requests_through_when_failing_open(make_client):
    client = make_client(rate_limit_chars_per_minute=100, redis_url=DOWN_REDIS, rate_limit_fail_open=True)
    assert all(client.post("/translate", json=chars(80)).status_code == 200 for _ in range(2))
    assert "mt_rate_limit_storage_errors_total 2.0" in client.get("/metrics").text


def test_a_redis_outage_refuses_with_503_when_failing_closed(make_client):
    client = make_client(rate_limit_chars_per_minute=100, redis_url=DOWN_REDIS, rate_limit_fail_open=False)
    r = client.post("/translate", json=chars(10))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "RATE_LIMIT_FAIL_OPEN is false" in r.json()["error"]


@pytest.mark.parametrize("used", [10, 60, 90])
def test_retrying_after_retry_after_succeeds_and_not_much_sooner(used, monkeypatch):
    clock = [time.time()]
    monkeypatch.setattr("limits.aio.storage.memory.time.time", lambda: clock[0])

    async def go():
        limiter = RateLimiter(Settings(rate_limit_chars_per_minute=100, redis_url=None), Metrics())
        await limiter.charge("me", used)
        with pytest.raises(ApiError, match="rate limit exceeded") as refused:
            await limiter.charge("me", 95)
        wait = refused.value.retry_after
        if wait > 2:
            clock[0] += wait - 2
            with pytest.raises(ApiError, match="rate limit exceeded"):
                await limiter.charge("me", 95)
            clock[0] += 2
        else:
            clock[0] += wait
        await limiter.charge("me", 95)
        return wait

    assert 1 <= asyncio.run(go()) <= 120
