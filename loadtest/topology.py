"""docker-compose.yml's topology, natively on loopback: Redis, API replicas, nginx in front.

    python -m loadtest.topology --bundle /tmp/tiny-bundle                # up until Ctrl-C
    python -m loadtest.topology -- locust --config loadtest/locust.conf --host {url}

With a command after `--`, it runs the command against the balancer ({url} in its arguments and
$MT_URL are the balancer's address), tears everything down and exits with the command's status.

Each piece is what compose runs: a fresh redis-server on a free port (not 6379), the replicas as
the images' command (`python -m service`, configured by environment) with REDIS_URL pointing at
it, and nginx with docker/nginx.conf rendered for loopback ports the way the nginx image renders
it for compose. Readiness is the images' health check command (docker/healthcheck.py).

From Python (tests):

    with Topology(bundle=path) as topo:
        httpx.post(f"{topo.url}/translate", json={"q": "Hello"})

Everything it starts is in a process group of its own, gets SIGTERM when the topology stops (and
SIGKILL if still there after `stop_timeout_s`), and is sent SIGTERM by the kernel if this
process dies first.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from service.engine import auto_threads

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "docker" / "nginx.conf"
# The images' CMD and HEALTHCHECK (docker/Dockerfile, docker/Dockerfile.gpu), with "python" as
# this interpreter; tests/deploy/test_compose.py checks that the images say the same.
SERVICE_COMMAND = ("python", "-m", "service")
HEALTHCHECK_COMMAND = ("python", "docker/healthcheck.py", "live")
READY_COMMAND = ("python", "docker/healthcheck.py", "ready")

PR_SET_PDEATHSIG = 1


def native(command: tuple[str, ...]) -> list[str]:
    """An image command as this machine runs it: `python` is the current interpreter."""
    return [sys.executable if arg == "python" else arg for arg in command]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_nginx(template: str, variables: dict[str, str]) -> str:
    """Fill in `${NAME}` for the given names only, as the nginx image's envsubst step does."""
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), template)


def die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Topology:
    """Redis, `replicas` API servers and nginx on 127.0.0.1; a context manager.

    Args:
        bundle: the bundle every replica serves (BUNDLE_DIR); None keeps the service's default.
        replicas: how many API servers.
        env: extra settings for the replicas (service/config.py names), e.g. {"BATCHING_MODE": "request"}.
        ready_timeout_s: how long startup may take before it gives up.
        stop_timeout_s: how long each process gets after SIGTERM before SIGKILL.
        workdir: where configs and logs go; a temporary folder (removed at stop) when None.
    """

    bundle: Path | None = None
    replicas: int = 2
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    workdir: Path | None = None

    redis_port: int = field(default=0, init=False)
    lb_port: int = field(default=0, init=False)
    api_ports: list[int] = field(default_factory=list, init=False)
    processes: list[Process] = field(default_factory=list, init=False)
    _tmp: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The load balancer, as clients use it."""
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def api_urls(self) -> list[str]:
        """Each replica, bypassing the balancer."""
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def nginx_log(self) -> Path:
        return self.dir / "nginx.log"

    @property
    def dir(self) -> Path:
        assert self._tmp is not None, "the topology is not started"
        return self._tmp

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="mt-topology-")) if self.workdir is None else self.workdir
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.api_ports.clear()
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            self._start_redis(deadline)
            for _ in range(self.replicas):
                self._start_replica()
            for port, proc in zip(self.api_ports, self.processes[1:], strict=True):
                self._wait_ready(port, proc, deadline)
            self._start_nginx(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """nginx first, then the replicas (they drain), then Redis: SIGTERM, then SIGKILL past stop_timeout_s."""
        for proc in reversed(self.processes):
            if proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        self.processes.clear()
        if self.workdir is None and self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # --- the pieces ---

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def _start_redis(self, deadline: float) -> None:
        self.redis_port = free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir), "--maxmemory", "256mb"]
        argv += ["--maxmemory-policy", "volatile-lru"]
        proc = self._spawn("redis", argv)
        client = redis.Redis(port=self.redis_port, socket_timeout=1)
        while True:
            self._check_alive(proc)
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                pass
            self._check_deadline(deadline, proc)
            time.sleep(0.05)

    def _replica_env(self, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": "1",
            "REDIS_URL": self.redis_url,
            "TRUST_FORWARDED_FOR": "true",
            # Replicas share this machine's cores here; in compose each container has its own.
            "INTRA_OP_THREADS": str(auto_threads((os.cpu_count() or 1) // self.replicas)),
            "DRAIN_TIMEOUT_S": str(max(1.0, self.stop_timeout_s - 2)),
        }
        if self.bundle is not None:
            env["BUNDLE_DIR"] = str(self.bundle)
        return env | self.env

    def _start_replica(self) -> None:
        port = free_port()
        self.api_ports.append(port)
        self._spawn(f"api-{len(self.api_ports)}", native(SERVICE_COMMAND), self._replica_env(port))

    def _wait_ready(self, port: int, proc: Process, deadline: float) -> None:
        """Poll /health/ready, then confirm with the images' own probes (ready and live)."""
        url = f"http://127.0.0.1:{port}/health/ready"
        self._wait_ok(url, proc, deadline, interval=0.2)
        env = self._replica_env(port)
        for probe in (READY_COMMAND, HEALTHCHECK_COMMAND):
            done = subprocess.run(native(probe), cwd=ROOT, env=env, capture_output=True, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(probe)} failed on {proc.name}: {done.stderr.decode()[-500:]}")

    def _start_nginx(self, deadline: float) -> None:
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.lb_port = free_port()
        servers = " ".join(f"server 127.0.0.1:{port} max_fails=0;" for port in self.api_ports)
        conf = self.dir / "nginx.conf"
        template = NGINX_TEMPLATE.read_text()
        conf.write_text(render_nginx(template, {"NGINX_LISTEN": f"127.0.0.1:{self.lb_port}", "API_SERVERS": servers}))
        argv = ["nginx", "-e", "stderr", "-p", f"{self.dir}/", "-c", str(conf)]
        argv += ["-g", f"daemon off; pid {self.dir / 'nginx.pid'};"]
        proc = self._spawn("nginx", argv)
        self._wait_ok(f"{self.url}/health/ready", proc, deadline, interval=0.1)

    def _wait_ok(self, url: str, proc, deadline: float, interval: float) -> None:
        """Poll url until it answers 200; fail if proc dies or the deadline passes."""
        while True:
            self._check_alive(proc)
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            self._check_deadline(deadline, proc)
            time.sleep(interval)

    @staticmethod
    def _check_alive(proc: Process) -> None:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def _check_deadline(self, deadline: float, proc: Process) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} was not ready within {self.ready_timeout_s:.0f} s:\n{proc.tail()}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m loadtest.topology", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="BUNDLE_DIR of the replicas (default: the service's, bundles/en-es)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a replica setting, repeatable")
    ap.add_argument("--timeout", type=float, default=0, help="seconds the command may run (0: no limit)")
    ap.add_argument("--keep-logs", type=Path, help="write configs and logs here instead of a temporary folder")
    args = ap.parse_args(own)
    settings = dict(item.split("=", 1) for item in args.set)
    topo = Topology(bundle=args.bundle, replicas=args.replicas, env=settings, workdir=args.keep_logs)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    with topo:
        print(f"balancer {topo.url}  replicas {' '.join(topo.api_urls)}  redis {topo.redis_url}", flush=True)
        if not command:
            print("up; Ctrl-C stops everything", flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            return 0
        run = [arg.replace("{url}", topo.url) for arg in command]
        try:
            done = subprocess.run(run, env={**os.environ, "MT_URL": topo.url}, timeout=args.timeout or None)
        except subprocess.TimeoutExpired:
            print(f"the command ran past {args.timeout:.0f} s", file=sys.stderr)
            return 124
        except KeyboardInterrupt:
            return 130
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
