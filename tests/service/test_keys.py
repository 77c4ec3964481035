"""API keys: 401 without one, 403 with a wrong one, from settings or a Redis set, compared in
constant time, never logged, and the unit rate limits are counted by when they are on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service import limits
from service.config import Settings
from service.limits import ApiKeys
from service.metrics import Metrics
from service.schemas import ApiError
from tests.conftest import redis_url
from tests.service.conftest import DOWN_REDIS

KEY = "k-9f8e7d6c5b4a"
OTHER = "k-0123456789ab"
Q = {"q": "God said."}


@pytest.fixture
def client(make_client):
    return make_client(api_keys_required=True, api_keys=[KEY, OTHER])


def test_a_missing_key_gets_401(client):
    r = client.post("/translate", json=Q)
    assert r.status_code == 401
    assert "an API key is required" in r.json()["error"]


def test_a_wrong_key_gets_403(client):
    r = client.post("/translate", json=Q, headers={"X-API-Key": "k-guess"})
    assert r.status_code == 403
    assert r.json() == {"error": "the API key is not valid"}


@pytest.mark.parametrize(
    "how",
    [
        {"headers": {"X-API-Key": KEY}},
        {"headers": {"Authorization": f"Bearer {KEY}"}},
        {"json": {**Q, "api_key": KEY}},
        {"data": {**Q, "api_key": KEY}},
    ],
    ids=["x-api-key", "bearer", "json-body", "form-body"],
)
def test_a_valid_key_is_accepted_from_a_header_or_the_body(client, how):
    r = client.post("/translate", **({"json": Q} | how))
    assert r.status_code == 200, r.text


def test_keys_are_read_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("API_KEYS", f" {KEY}, {OTHER} ,")
    assert Settings().api_keys == [KEY, OTHER]


def test_keys_are_not_needed_when_not_required(make_client):
    assert make_client(api_keys=[KEY]).post("/translate", json=Q).status_code == 200


def test_keys_from_a_redis_set_are_accepted(make_client, redis_prefix, redis_client):
    set_name = f"{redis_prefix}keys"
    redis_client.sadd(set_name, "k-from-redis")
    client = make_client(
        api_keys_required=True,
        api_keys=[KEY],
        redis_url=redis_url(),
        redis_prefix=redis_prefix,
        api_keys_redis_set=set_name,
    )
    assert client.post("/translate", json=Q, headers={"X-API-Key": "k-from-redis"}).status_code == 200
    assert client.post("/translate", json=Q, headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/translate", json=Q, headers={"X-API-Key": "k-not-there"}).status_code == 403


def test_with_the_key_set_unreachable_settings_keys_work_and_others_get_503(make_client):
    client = make_client(
        api_keys_required=True, api_keys=[KEY], redis_url=DOWN_REDIS, api_keys_redis_set="mt-test:keys"
    )
    assert client.post("/translate", json=Q, headers={"X-API-Key": KEY}).status_code == 200
    r = client.post("/translate", json=Q, headers={"X-API-Key": "k-maybe-in-redis"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "key store (Redis) is unreachable" in r.json()["error"]


def test_every_candidate_is_compared_even_after_a_match(monkeypatch):
    compared = []
    real = limits.hmac.compare_digest
    monkeypatch.setattr(limits.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    keys = ApiKeys(Settings(api_keys_required=True, api_keys=[KEY, OTHER, "k-third"]), None, Metrics())
    assert asyncio.run(keys.authenticate(KEY)) == KEY
    assert compared == [KEY.encode(), OTHER.encode(), b"k-third"]
    with pytest.raises(ApiError, match="the API key is not valid"):
        asyncio.run(keys.authenticate("k-nope"))


def test_keys_are_never_logged_nor_exported(client, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/translate", json=Q, headers={"X-API-Key": KEY})
    client.post("/translate", json={**Q, "api_key": OTHER})
    client.post("/translate", json=Q, headers={"X-API-Key": "k-wrong-key-123"})
    logged = caplog.text + "".join(str(getattr(r, "fields", "")) for r in caplog.records)
    assert KEY not in logged and OTHER not in logged and "k-wrong-key-123" not in logged
    metrics = client.get("/metrics").text
    assert KEY not in metrics and 'mt_auth_failures_total{status="403"} 1.0' in metrics


def test_rate_limits_count_per_key_when_keys_are_on(make_client):
    client = make_client(api_keys_required=True, api_keys=[KEY, OTHER], rate_limit_chars_per_minute=100)
    text = {"q": "a" * 80}
    assert client.post("/translate", json=text, headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/translate", json=text, headers={"X-API-Key": OTHER}).status_code == 200
    assert client.post("/translate", json=text, headers={"X-API-Key": KEY}).status_code == 429
