"""Admission refuses what cannot be served before any work is spent on it (service/middleware.py)."""

from __future__ import annotations

import asyncio
import json

from service.deps import Gate
from service.metrics import Metrics
from service.middleware import Admission


async def must_not_run(scope, receive, send):
    raise AssertionError("the route ran")


async def must_not_read():
    raise AssertionError("the body was read")


def call(admission: Admission, method: str, path: str) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request through the middleware alone."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", b"20")]}
    asyncio.run(admission(scope, must_not_read, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(sent[1]["body"])


def test_a_full_queue_refuses_a_translation_before_its_body_is_read():
    metrics = Metrics()
    admission = Admission(must_not_run, Gate(saturated=lambda: True), metrics, max_body_bytes=1000)

    status, headers, body = call(admission, "POST", "/translate")

    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body == {"error": "the translation queue is full; retry shortly"}
    assert 'mt_rejections_total{reason="queue_full"} 1.0' in metrics.render().decode()


def test_requests_past_max_in_flight_get_503_naming_the_limit():
    metrics = Metrics()
    admission = Admission(must_not_run, Gate(in_flight=8), metrics, max_body_bytes=1000, max_in_flight=8)

    status, headers, body = call(admission, "GET", "/languages")

    assert status == 503 and headers["retry-after"] == "1"
    assert body == {
        "error": "8 requests are in progress; the limit is max_in_flight=8; retry shortly",
        "limit": "max_in_flight",
    }
    assert 'mt_rejections_total{reason="in_flight"} 1.0' in metrics.render().decode()


def test_a_saturated_queue_still_serves_reads_health_and_metrics(make_client, translator, monkeypatch):
    client = make_client()
    monkeypatch.setattr(translator.batcher, "queue_size", 0)

    assert client.post("/translate", json={"q": "hello"}).status_code == 503
    assert client.get("/languages").status_code == 200
    assert client.get("/health/live").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_cap_on_requests_in_flight_when_max_in_flight_is_0(make_client):
    client = make_client(max_in_flight=0)
    client.app.state.gate.in_flight = 10_000

    assert client.get("/languages").status_code == 200
