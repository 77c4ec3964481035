"""Faults under load, on real server processes: Redis killed and restarted, SIGTERM, a hundred
clients hanging up, deadlines, and bundles that must not be served.

Redis here is a redis-server of the test's own on a free port, never the shared one.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections import Counter

import httpx
import pytest

from loadtest.reliability import Load, metric, scrape
from tests.reliability.conftest import gauge, wait_until
from tests.service.conftest import Server
from tests.service.test_shutdown import finish_request, start_request

TEXTS = ["God saw the light.", "And there was evening.", "The waters were gathered.", "Let there be light."]
# The tiny model never ends this one: 256 steps of 16 rows over a 2,000-token source (seconds).
HEAVY = {"q": "x" * 2000, "decoding": "beam", "beam_size": 16, "max_length": 256}


def statuses(shots) -> dict:
    return dict(Counter(shot.status for shot in shots))


def access_lines(server: Server) -> list[dict]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "service.access" and line.get("path") == "/translate"]


# Redis.


def test_redis_killed_mid_load_fails_no_translation_and_once_back_the_cache_is_used_again(serve, own_redis):
    server = serve(REDIS_URL=own_redis.url, RATE_LIMIT_CHARS_PER_MINUTE="100000000")
    url = server.url

    with Load(url, lambda n: {"q": TEXTS[n % len(TEXTS)]}, clients=4) as load:
        wait_until(lambda: gauge(url, "mt_cache_total", result="hit") > 10, what="cache hits while Redis is up")
        killed = time.monotonic() - load._t0
        own_redis.kill()
        wait_until(lambda: gauge(url, "mt_cache_total", result="error") > 10, what="the cache to count Redis errors")
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        time.sleep(1.0)  # the load goes on through the outage
        restarted = time.monotonic() - load._t0
        own_redis.start()
        wait_until(lambda: not httpx.get(f"{url}/health/ready", timeout=10).json()["degraded"], what="ready again")
        hits = gauge(url, "mt_cache_total", result="hit")
        wait_until(lambda: gauge(url, "mt_cache_total", result="hit") > hits + 10, what="cache hits after the restart")

    shots = load.shots
    outage = [s for s in shots if killed <= s.started < restarted]
    assert statuses(shots) == {200: len(shots)}, statuses(shots)
    assert len(outage) >= 8, f"only {len(outage)} requests were sent while Redis was down"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    [degraded] = ready.json()["degraded"]
    assert degraded.startswith("redis:") and "cache bypassed, rate limits fail open" in degraded
    assert gauge(url, "mt_rate_limit_storage_errors_total") > 0  # counted, let through (RATE_LIMIT_FAIL_OPEN)
    slowest = max(s.seconds for s in outage)
    assert slowest < 2.0, f"a translation took {slowest:.2f} s while Redis was down"
    print(f"{len(shots)} requests, {len(outage)} while Redis was down (slowest {slowest * 1e3:.0f} ms): all 200")


# SIGTERM.


def test_sigterm_under_load_finishes_what_is_in_flight_answers_new_ones_503_and_exits_0(serve):
    """Closed-loop clients, a new connection per request, while one long request is held in flight
    (its body's last bytes are sent only after SIGTERM, as in tests/service/test_shutdown.py).

    Everything the server read it answered: the held request gets 200, the load gets 503 while the
    drain lasts, and every request it logged reached its client. Once the drain is over the process
    exits, and a request reaching it in that instant is refused or reset unread (ConnectError,
    ReadError): never processed, so a balancer may retry it elsewhere (nginx does).
    """
    server = serve(DRAIN_TIMEOUT_S="20", CACHE_SIZE="0", RATE_LIMIT_CHARS_PER_MINUTE="0")
    held_body = json.dumps({**HEAVY, "q": "x" * 500}).encode()
    with Load(server.url, lambda n: {"q": TEXTS[n % len(TEXTS)]}, clients=4) as load:
        wait_until(lambda: len(load.shots) >= 20, timeout=60, what="the load to run")
        held = start_request(server.port, held_body)
        wait_until(lambda: gauge(server.url, "mt_requests_in_flight") >= 1, what="the held request")
        term = time.monotonic() - load._t0
        server.terminate()
        wait_until(lambda: sum(s.status == 503 for s in load.shots) >= 5, what="503s while draining")
        status, answer = finish_request(held, held_body)
        answered = time.monotonic() - load._t0
        code = server.proc.wait(timeout=30)
        exited = time.monotonic() - load._t0

    shots = load.shots
    found = statuses(shots)
    assert code == 0 and exited - term < 20
    assert status == 200 and answer["translatedText"], answer
    assert set(found) <= {200, 503, "ConnectError", "ReadError"}, found
    assert all(s.status in (200, 503) for s in shots if s.started < answered - 0.5), found  # no error while draining
    logged = [line["status"] for line in access_lines(server)]
    assert set(logged) <= {200, 503}
    assert (logged.count(200), logged.count(503)) == (found[200] + 1, found[503])  # nothing read was left unanswered
    print(f"exit 0 {exited - term:.2f} s after SIGTERM; client saw {found}")


# Clients that hang up.


def send_whole_request(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    sock.sendall(head.encode() + payload)
    return sock


def test_a_hundred_clients_hanging_up_mid_request_free_every_row(serve):
    server = serve(CACHE_SIZE="0", MAX_BATCH_ROWS="32", RATE_LIMIT_CHARS_PER_MINUTE="0")  # 2 decode, 98 wait
    url = server.url
    socks = [send_whole_request(server.port, HEAVY) for _ in range(100)]
    wait_until(
        lambda: gauge(url, "mt_requests_in_flight") + gauge(url, "mt_requests_total", route="/translate") == 100,
        timeout=30,
        what="all 100 requests read",
    )
    wait_until(lambda: gauge(url, "mt_active_rows") > 0, what="rows decoding")
    for sock in socks:
        sock.close()
    closed = time.monotonic()

    def idle() -> bool:
        text = scrape(url)
        names = ("mt_active_rows", "mt_active_entries", "mt_queue_depth", "mt_requests_in_flight")
        return all(metric(text, name) == 0 for name in names)

    wait_until(idle, timeout=10, what="rows, entries, queue and in-flight back to 0")
    freed = time.monotonic() - closed
    steps = gauge(url, "mt_decode_steps_total")
    time.sleep(0.5)
    assert gauge(url, "mt_decode_steps_total") == steps, "decoding went on for nobody"
    logged = [line["status"] for line in access_lines(server)]
    assert len(logged) == 100 and set(logged) <= {200, 499}, logged
    assert logged.count(499) >= 50, f"only {logged.count(499)} requests were still running when their clients left"
    print(f"{logged.count(499)} of 100 hung up mid-request; every row free {freed:.2f} s after")
    assert httpx.post(f"{url}/translate", json={"q": TEXTS[0]}, timeout=30).status_code == 200


def test_a_client_that_hangs_up_before_its_body_is_read_is_logged_499_not_500(serve):
    server = serve()
    body = json.dumps({"q": TEXTS[0]}).encode()
    socks = [start_request(server.port, body) for _ in range(3)]  # all but the body's last bytes
    wait_until(lambda: gauge(server.url, "mt_requests_in_flight") == 3, what="3 requests reading their body")
    for sock in socks:
        sock.close()
    wait_until(lambda: gauge(server.url, "mt_requests_in_flight") == 0, what="the requests to end")
    assert [line["status"] for line in access_lines(server)] == [499] * 3
    assert "Exception in ASGI application" not in server.output()
    assert gauge(server.url, "mt_requests_total", status="500") == 0


# Deadlines.


def test_a_request_past_its_deadline_gets_504_and_its_rows_stop_decoding(make_client, translator):
    client = make_client(request_timeout_s=0.3, cache_size=0)
    heavy = {**HEAVY, "q": ["x" * 1000] * 16}
    steps_before = translator.stats()["steps"]
    started = time.monotonic()
    r = client.post("/translate", json=heavy)
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    assert r.json() == {
        "error": "the translation did not finish within request_timeout_s=0.3",
        "limit": "request_timeout_s",
    }
    assert elapsed < 3.0
    wait_until(lambda: translator.stats()["active_rows"] == 0, timeout=2, what="the rows to leave the batch")
    stats = translator.stats()
    assert stats["queue_depth"] == 0 and stats["steps"] > steps_before
    time.sleep(0.3)
    assert translator.stats()["steps"] == stats["steps"], "decoding went on past the deadline"
    print(f"504 after {elapsed:.2f} s (deadline 0.3 s); {stats['steps'] - steps_before} steps, none after")


# Bundles that must not be served.


def flip_bytes(path) -> None:
    """Change 4 KB in the middle of a file: a damaged file that still parses."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0x40 for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))


def edit_manifest(change):
    def edit(folder):
        manifest = json.loads((folder / "model.json").read_text())
        change(manifest)
        (folder / "model.json").write_text(json.dumps(manifest))

    return edit


BROKEN = {
    "a missing graph": (
        lambda folder: (folder / "decoder_step.onnx").unlink(),
        "bundle file missing: decoder_step.onnx (files.decoder_step in model.json)",
    ),
    "a truncated graph": (
        lambda folder: (folder / "encoder.onnx").write_bytes((folder / "encoder.onnx").read_bytes()[:5000]),
        "a file was damaged or replaced after export",
    ),
    "weights changed after export": (
        lambda folder: flip_bytes(folder / "decoder_step.onnx"),
        "a file was damaged or replaced after export",
    ),
    "a tokenizer replaced by the other": (
        lambda folder: shutil.copy(folder / "src_tokenizer.json", folder / "tgt_tokenizer.json"),
        "a file was damaged or replaced after export",
    ),
    "a manifest that is not JSON": (
        lambda folder: (folder / "model.json").write_text('{"id": "en-es",'),
        "model.json: not valid JSON",
    ),
    "a manifest whose vocabulary disagrees with the tokenizer": (
        edit_manifest(lambda m: m["sizes"].update(tgt_vocab=m["sizes"]["tgt_vocab"] + 1)),
        "vocabulary of",
    ),
    "a manifest whose sizes disagree with the graphs": (
        edit_manifest(lambda m: m["sizes"].update(dec_hidden=m["sizes"]["dec_hidden"] + 1)),
        "but model.json sizes.dec_hidden is",
    ),
}


@pytest.fixture(scope="module")
def broken_servers(tiny_bundle, tmp_path_factory):
    """One server process per broken bundle, all started together; {name: (exit code, output)}."""
    servers = {}
    for name, (breaks, _) in BROKEN.items():
        folder = tmp_path_factory.mktemp("broken") / "bundle"
        shutil.copytree(tiny_bundle, folder)
        breaks(folder)
        servers[name] = Server(folder)
    results = {}
    for name, server in servers.items():
        try:
            code = server.proc.wait(timeout=60)
        except Exception:
            code = None
        results[name] = (code, server.output())
        server.stop()
    return results


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_bundle_stops_the_server_with_a_clear_message_before_it_serves(broken_servers, name):
    code, output = broken_servers[name]
    assert code not in (0, None), f"the server did not refuse the bundle:\n{output[-2000:]}"
    assert BROKEN[name][1] in output, output[-3000:]
    assert "Application startup failed" in output
    assert "Uvicorn running on" not in output and "Application startup complete" not in output
