"""Graceful shutdown of a real server process (`python -m service`): on SIGTERM new requests get
503, requests in flight finish, and the process exits 0 within DRAIN_TIMEOUT_S.

A request is held in flight deterministically by sending its headers and only part of its body;
the rest is sent after SIGTERM, so its translation runs while the server drains.
"""

from __future__ import annotations

import json
import socket
import time

import httpx

TEXT = "And God said, Let there be light: and there was light."


def start_request(port: int, body: bytes) -> socket.socket:
    """Open a POST /translate and send all of it but the body's last bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        "POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:-5])
    return sock


def finish_request(sock: socket.socket, body: bytes) -> tuple[int, dict]:
    sock.sendall(body[-5:])
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < content_length(raw):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    sock.close()
    head, payload = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(payload)


def content_length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("mt_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("mt_requests_in_flight is missing from /metrics")


def wait_until(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_sigterm_finishes_requests_in_flight_answers_new_ones_503_and_exits_0(serve):
    server = serve(DRAIN_TIMEOUT_S="30")
    bodies = [json.dumps({"q": [TEXT, TEXT + " Amen."], "decoding": d}).encode() for d in ("greedy", "beam")]
    held = [start_request(server.port, b) for b in bodies]
    wait_until(lambda: in_flight(server.url) == 2)

    server.terminate()

    def refused() -> bool:
        r = httpx.post(f"{server.url}/translate", json={"q": TEXT}, timeout=10)
        assert r.status_code in (200, 503)
        return r.status_code == 503

    wait_until(refused)
    r = httpx.post(f"{server.url}/translate", json={"q": TEXT}, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "shutting down" in r.json()["error"]
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"

    for sock, body in zip(held, bodies, strict=True):
        status, answer = finish_request(sock, body)
        assert status == 200, answer
        assert len(answer["translatedText"]) == 2
    assert server.proc.wait(timeout=30) == 0
    log = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(line.get("status") == 503 and line.get("route") == "unmatched" for line in log)
    assert sum(line.get("status") == 200 and line.get("route") == "/translate" for line in log) == 2


def test_the_drain_gives_up_after_drain_timeout_and_still_exits_0(serve):
    server = serve(DRAIN_TIMEOUT_S="1")
    stuck = start_request(server.port, json.dumps({"q": TEXT}).encode())
    wait_until(lambda: in_flight(server.url) == 1)
    started = time.monotonic()
    server.terminate()
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    stuck.close()


def test_a_second_signal_exits_at_once(serve):
    server = serve(DRAIN_TIMEOUT_S="60")
    stuck = start_request(server.port, json.dumps({"q": TEXT}).encode())
    wait_until(lambda: in_flight(server.url) == 1)
    server.terminate()
    wait_until(lambda: httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 503)
    server.terminate()
    server.proc.wait(timeout=10)
    stuck.close()


def test_an_idle_server_exits_0_at_once_on_sigterm(serve):
    server = serve()
    httpx.post(f"{server.url}/translate", json={"q": TEXT}, timeout=30).raise_for_status()
    server.terminate()
    assert server.proc.wait(timeout=10) == 0
