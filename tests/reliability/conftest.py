"""Fixtures of the reliability tests: the HTTP fixtures of tests/service (apps around the tiny
bundle, real server processes), and a redis-server of the test's own that it may kill."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtest.reliability import metric, scrape
from tests.service.conftest import free_port, make_client, serve, translator  # noqa: F401  (shared fixtures)


class RedisServer:
    """redis-server on a free loopback port (never the shared 6379), to kill and start again."""

    def __init__(self, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        end = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
                assert time.monotonic() < end, "redis-server did not answer"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: the connections drop as they would when Redis crashes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def gauge(url: str, name: str, **labels: str) -> float:
    """One metric of a running server, summed over the samples matching labels."""
    return metric(scrape(url), name, **labels)


def wait_until(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
