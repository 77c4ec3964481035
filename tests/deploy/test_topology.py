"""The compose topology run natively (loadtest/topology.py): nginx with docker/nginx.conf over two
replicas sharing one Redis, and a short headless Locust run through it that must pass its thresholds."""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
# The load test measures the service, not the limiter: every Locust user shares one address here.
NO_RATE_LIMIT = {"RATE_LIMIT_CHARS_PER_MINUTE": "0"}


@pytest.fixture(scope="module")
def topology(tiny_bundle):
    with Topology(bundle=tiny_bundle, env=NO_RATE_LIMIT) as topo:
        yield topo


def counter(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if re.match(rf"{name}(\{{|\s)", line) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def translated(url: str, text: str, **headers: str) -> httpx.Response:
    reply = httpx.post(f"{url}/translate", json={"q": text, "source": "en", "target": "es"}, headers=headers)
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["translatedText"], str)
    return reply


def test_translations_through_nginx_reach_both_replicas(topology):
    before = [counter(url, "mt_requests_total", route="/translate", status="200") for url in topology.api_urls]
    for i in range(8):
        reply = translated(topology.url, f"And God said, let there be light number {i}.", **{"X-Request-ID": f"lb-{i}"})
        assert reply.headers["x-request-id"] == f"lb-{i}"  # passed through nginx to the replica and back
    after = [counter(url, "mt_requests_total", route="/translate", status="200") for url in topology.api_urls]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert sum(after) - sum(before) == 8
    assert '"request_id":"lb-7"' in topology.nginx_log.read_text()


def test_replicas_share_one_redis_cache(topology):
    text = f"The waters were gathered together {uuid.uuid4().hex[:8]}."
    first, second = topology.api_urls
    hits = counter(second, "mt_cache_total", result="hit")
    assert translated(first, text).json()["translations"][0]["cached"] is False
    again = translated(second, text).json()
    assert again["translations"][0]["cached"] is True
    assert counter(second, "mt_cache_total", result="hit") == hits + 1
    keys = list(redis.Redis.from_url(topology.redis_url).scan_iter("*cache:*"))
    assert keys, "no cache entry in the topology's Redis"


def test_nginx_refuses_oversized_bodies_in_the_service_error_shape(topology):
    reply = httpx.post(
        f"{topology.url}/translate", content=b"x" * 300_000, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413
    assert reply.json()["limit"] == "max_body_bytes"


def locust(host: str, reports: Path, *args: str, p95_ms: str) -> list[str]:
    return [
        *("locust", "--config", "loadtest/locust.conf", "--host", host, "--p95-ms", p95_ms),
        *("--csv", str(reports / "run"), "--html", str(reports / "run.html"), *args),
    ]


def test_a_locust_run_over_its_p95_bound_fails(topology, tmp_path):
    argv = locust(topology.url, tmp_path, "-u", "2", "-t", "2s", p95_ms="0.001")
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "thresholds failed: p95" in done.stderr


def test_a_short_headless_locust_run_through_nginx_passes_its_thresholds(tiny_bundle, tmp_path):
    """The CI version of the load test, through the one command that brings the topology up and down."""
    argv = [sys.executable, "-m", "loadtest.topology", "--bundle", str(tiny_bundle), "--timeout", "60"]
    argv += [f"--set={k}={v}" for k, v in NO_RATE_LIMIT.items()]
    argv += ["--", sys.executable, "-m", *locust("{url}", tmp_path, "-u", "4", "-t", "10s", p95_ms="3000")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    assert "thresholds passed" in done.stderr

    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for profile in ("short greedy", "long beam+attention", "list"):
        assert int(rows[f"/translate [{profile}]"]["Request Count"]) > 0, profile
    assert any(name.startswith("/translate [libretranslate") for name in rows)
    assert (tmp_path / "run.html").stat().st_size > 0

    # Everything the command started is gone: nothing answers on the ports it printed.
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", done.stdout.splitlines()[0])]
    assert len(ports) == 4
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
