"""Fixtures of the HTTP tests: apps around the tiny bundle, a real Redis, a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.translator import Translator
from tests.conftest import ROOT, redis_url


def tiny_settings(bundle: Path, **overrides) -> Settings:
    """Settings for tests: the tiny bundle, one thread, no Redis unless asked, no warmup."""
    base = {"bundle_dir": bundle, "intra_op_threads": 1, "warmup": False, "redis_url": None}
    return Settings(**(base | overrides))


@pytest.fixture(scope="session")
def translator(tiny_bundle) -> Iterator[Translator]:
    """One translator for the HTTP tests; apps built around it leave it open."""
    t = Translator(tiny_settings(tiny_bundle))
    yield t
    t.close()


@pytest.fixture
def make_client(tiny_bundle, translator) -> Iterator[Callable[..., TestClient]]:
    """make_client(**settings) -> a started TestClient around the shared translator."""
    with contextlib.ExitStack() as stack:

        def make(**overrides) -> TestClient:
            app = create_app(tiny_settings(tiny_bundle, **overrides), translator)
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the real Redis, emptied afterwards. No Redis is a failure."""
    r = redis.Redis.from_url(redis_url())
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is not reachable at {redis_url()} ({e}); the Redis tests need it")
    prefix = f"mt-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    for key in r.scan_iter(match=f"{prefix}*"):
        r.delete(key)
    r.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url())
    yield r
    r.close()


DOWN_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there: every call fails at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` in a subprocess on a free port."""

    def __init__(self, bundle: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
        environ |= {"INTRA_OP_THREADS": "1", "LOG_LEVEL": "info", **env}
        self.log = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), "--bundle", str(bundle)],
            cwd=ROOT,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the server was not ready in {timeout} s")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def output(self) -> str:
        """Everything the server wrote (JSON lines)."""
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def serve(tiny_bundle) -> Iterator[Callable[..., Server]]:
    """serve(**env) -> a ready server process running the tiny bundle; killed after the test."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(tiny_bundle, **env)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
