"""Abuse: keys that leak, quotas doubled across replicas, forged client addresses.

In process, tests/service/test_keys.py and tests/service/test_rate_limits.py prove 401/403,
constant-time comparison, per-key limits, the Redis outage policies and X-Forwarded-For ignored
unless TRUST_FORWARDED_FOR. Here the same promises hold end to end: in a real server's whole
output, and across two real replicas behind nginx sharing one Redis.
"""

from __future__ import annotations

import httpx
import pytest

from loadtest.topology import Topology

KEYS = ["k-live-7f3a9c2e41", "k-live-0b8d6e5f92"]
WRONG = "k-wrong-55aa33cc"
Q = {"q": "God saw the light."}


def test_keys_never_reach_the_logs_the_metrics_or_an_answer_whatever_the_request(serve):
    server = serve(API_KEYS_REQUIRED="true", API_KEYS=",".join(KEYS), LOG_LEVEL="debug", LOG_TEXTS="true")
    url = f"{server.url}/translate"
    good, other = KEYS
    sent = [
        httpx.post(url, json=Q, headers={"X-API-Key": good}),
        httpx.post(url, json=Q, headers={"Authorization": f"Bearer {other}"}),
        httpx.post(url, json={**Q, "api_key": good}),
        httpx.post(url, data={**Q, "api_key": other}),
        httpx.post(url, files={"q": (None, Q["q"]), "api_key": (None, good)}),
        httpx.post(f"{url}?api_key={good}", json=Q, headers={"X-API-Key": good}),
        httpx.post(url, json=Q),
        httpx.post(url, json=Q, headers={"X-API-Key": WRONG}),
        httpx.post(url, json={**Q, "api_key": WRONG}),
        httpx.post(
            url, content=f'{{"q": "x", "api_key": "{good}"'.encode(), headers={"content-type": "application/json"}
        ),
        httpx.post(url, json={"q": 5, "api_key": good}),
        httpx.post(url, json={**Q, "beam_size": 99, "api_key": good}),
        httpx.post(url, json={"q": "x" * 300_000, "api_key": good}),
    ]
    assert [r.status_code for r in sent] == [200] * 6 + [401, 403, 403, 422, 422, 422, 413]
    metrics = httpx.get(f"{server.url}/metrics").text
    server.terminate()
    server.proc.wait(timeout=30)
    output = server.output()
    assert len([line for line in output.splitlines() if '"service.access"' in line]) >= len(sent)
    for secret in [*KEYS, WRONG]:
        assert secret not in output, f"a key is in the server's output: {secret}"
        assert secret not in metrics
        assert all(secret not in r.text for r in sent), "a key was echoed in an answer"


LIMIT = 1000  # source characters per minute per client
TEXT = "a" * 100


@pytest.fixture(scope="module")
def limited(tiny_bundle):
    """Two replicas sharing one Redis behind nginx, 1000 characters a minute per client; nginx
    appends the peer to X-Forwarded-For and the replicas trust its last entry (as in compose)."""
    env = {"RATE_LIMIT_CHARS_PER_MINUTE": str(LIMIT), "TRUST_FORWARDED_FOR": "true", "CACHE_SIZE": "0"}
    with Topology(bundle=tiny_bundle, env=env) as topo:
        yield topo


def test_a_client_cannot_double_its_quota_by_hitting_both_replicas(limited):
    first, second = limited.api_urls
    accepted = {first: 0, second: 0}
    for i in range(2 * LIMIT // len(TEXT)):  # enough for two quotas
        url = (first, second)[i % 2]
        r = httpx.post(f"{url}/translate", json={"q": TEXT}, timeout=30)
        assert r.status_code in (200, 429), r.text
        accepted[url] += r.status_code == 200
    total = sum(accepted.values()) * len(TEXT)
    assert accepted[first] and accepted[second], accepted
    assert LIMIT - len(TEXT) <= total <= LIMIT + len(TEXT), f"{total} characters accepted against a limit of {LIMIT}"
    print(f"{total} of {2 * LIMIT} characters accepted across two replicas (limit {LIMIT}): {accepted}")
    r = httpx.post(f"{limited.url}/translate", json={"q": TEXT}, timeout=30)  # and through the balancer
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_a_forged_forwarded_for_through_the_balancer_is_still_the_same_client(limited):
    r = httpx.post(f"{limited.url}/translate", json={"q": TEXT}, timeout=30)
    if r.status_code == 200:  # run alone: spend the quota first
        while r.status_code == 200:
            r = httpx.post(f"{limited.url}/translate", json={"q": TEXT}, timeout=30)
    assert r.status_code == 429
    for forged in ("203.0.113.7", "203.0.113.7, 198.51.100.9", "unknown"):
        r = httpx.post(f"{limited.url}/translate", json={"q": TEXT}, headers={"X-Forwarded-For": forged}, timeout=30)
        assert r.status_code == 429, (forged, r.text)
