"""Overload and soak runs against the native topology (loadtest/topology.py), one command each.

    python -m loadtest.reliability overload --bundle bundles/en-es    # 2x capacity for 30 s
    python -m loadtest.reliability soak --bundle bundles/en-es        # nominal load for 5 min
    python -m loadtest.reliability overload --bundle /tmp/tiny --dry-run    # seconds; CI runs it

Each starts Redis, the API replicas and nginx on 127.0.0.1 (it never targets another host),
offers load through the balancer (with --direct, to the one replica itself), stops by itself,
tears everything down, prints the figures as a table (and as JSON with --json) and exits 1 when
a promise does not hold. docs/RELIABILITY.md has the figures measured and their conditions.

overload: measures the capacity (completed requests/s of --clients closed-loop clients), then
offers --factor times it open loop (arrivals do not wait for answers) for --seconds. Promises:
every answer is 200, 429 or 503 (no other status, no connection error, no timeout); rejections
answer within 100 ms at the 99th percentile; every accepted request completes (client 200s ==
requests not rejected == texts the replicas translated); the waiting queue, sampled every 50 ms
on each replica, never goes above QUEUE_SIZE.

soak: offers --load times the measured capacity for --minutes, a mix of short greedy, long beam
(with attention) and list requests. Promises: failure ratio 0 (every answer 200); each replica's
resident memory at the end within 10% of what it was after --warmup-s.

Texts are made unique (a counter is appended) so the shared cache never answers in the model's
place, and rate limits are off (all the load comes from one address). --dry-run runs the same
code at a size of seconds and fails only on the hard promises (statuses, errors, accepted ==
completed, queue bound): its latency and memory figures are too short to judge, so are only shown.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from loadtest.topology import Topology
from service.config import Settings

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "sentences.txt"
LOOPBACK = ("127.0.0.1", "localhost")
ANSWERS = {200, 429, 503}  # what an overloaded service may answer
REJECTION_P99_MS = 100.0
RSS_GROWTH = 0.10
DEFAULT_QUEUE_SIZE = Settings.model_fields["queue_size"].default


@dataclass
class Shot:
    """One request of a load run."""

    started: float  # seconds since the run began
    seconds: float
    status: int | str  # the HTTP status, or "timeout", or the connection error's class name
    texts: int


class Load:
    """Requests to POST {url}/translate from a thread of their own, until `stop`.

    Each request is a new connection (Connection: close) written and read with asyncio streams:
    a client that costs a fraction of a millisecond per request, so on a small machine the load
    is offered at the rate asked and what is measured is the server. A request is "ConnectError"
    when refused, "ReadError" when the connection closes before a status line, "timeout" past
    timeout_s.

    Args:
        url: the service; only 127.0.0.1 (or localhost) is accepted.
        body: request number -> JSON body.
        clients: closed loop: this many clients, each sending its next request once answered.
        rate: open loop: this many requests per second, whatever the answers.
        timeout_s: a request not answered within this is recorded as "timeout".
    """

    def __init__(
        self,
        url: str,
        body: Callable[[int], dict],
        *,
        clients: int = 0,
        rate: float = 0.0,
        timeout_s: float = 60.0,
    ) -> None:
        where = urlsplit(url)
        if where.hostname not in LOOPBACK:
            raise ValueError(f"load is only offered to 127.0.0.1, not {url}")
        if (clients > 0) == (rate > 0):
            raise ValueError("give clients (closed loop) or rate (open loop), not both")
        self.host, self.port = where.hostname, where.port or 80
        self.body, self.clients, self.rate, self.timeout_s = body, clients, rate, timeout_s
        self.shots: list[Shot] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._t0 = 0.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Shot]:
        """Stop sending, wait until every request sent is answered (or timed out), return them all."""
        self._stop.set()
        self._thread.join()
        return self.shots

    async def _run(self) -> None:
        self._t0 = time.monotonic()
        if self.clients:
            await asyncio.gather(*(self._closed_loop() for _ in range(self.clients)))
        else:
            await self._open_loop()

    async def _closed_loop(self) -> None:
        while not self._stop.is_set():
            await self._send()

    async def _open_loop(self) -> None:
        pending: set[asyncio.Task] = set()
        for n in itertools.count():
            delay = self._t0 + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._stop.is_set():
                break
            task = asyncio.create_task(self._send())
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)

    async def _send(self) -> None:
        body = self.body(next(self._numbers))
        started = time.monotonic()
        status: int | str
        try:
            status = await asyncio.wait_for(self._post(json.dumps(body).encode()), self.timeout_s)
        except TimeoutError:
            status = "timeout"
        except ConnectionRefusedError:
            status = "ConnectError"
        except (ConnectionError, asyncio.IncompleteReadError):
            status = "ReadError"
        texts = len(body["q"]) if isinstance(body["q"], list) else 1
        self.shots.append(Shot(started - self._t0, time.monotonic() - started, status, texts))

    async def _post(self, payload: bytes) -> int:
        """One POST /translate on a connection of its own; the status, once the whole answer is read
        (and handed to `answered`)."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = f"POST /translate HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + payload)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("closed before answering")
            rest = await reader.read()  # headers and body, until the server closes
        finally:
            writer.close()
        status = int(status_line.split()[1])
        self.answered(status, rest.partition(b"\r\n\r\n")[2])
        return status

    def answered(self, status: int, body: bytes) -> None:
        """Called with each answer's status and body; a subclass that reads answers overrides it."""


class Sampler:
    """Calls `read()` every `period_s` seconds in a thread until the block ends; `samples` are (t, value).
    A read that fails (a replica too busy to answer /metrics in time) is counted in `missed`."""

    def __init__(self, read: Callable[[], object], period_s: float) -> None:
        self.read, self.period_s = read, period_s
        self.samples: list[tuple[float, object]] = []
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - t0, self.read()))
            except httpx.HTTPError:
                self.missed += 1
            self._stop.wait(self.period_s)


# --- reading the replicas ---


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in a /metrics text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def replica_pids(topo: Topology) -> list[int]:
    return [p.popen.pid for p in topo.processes if p.name.startswith("api-")]


def served(topo: Topology) -> dict[str, float]:
    """Counters summed over the replicas: texts translated, deadline and queue rejections."""
    texts = [scrape(url) for url in topo.api_urls]
    return {
        "translated": sum(metric(t, "mt_texts_total") for t in texts),
        "deadline": sum(metric(t, "mt_rejections_total", reason="deadline") for t in texts),
        "queue_full": sum(metric(t, "mt_rejections_total", reason="queue_full") for t in texts),
    }


# --- what is sent ---


def sentences() -> list[str]:
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def short_greedy(texts: list[str]) -> Callable[[int], dict]:
    """One short sentence per request, greedy; each text unique (numbered), so never a cache hit."""
    short = [t for t in texts if len(t.split()) <= 15] or texts
    unique = itertools.count()
    return lambda n: {"q": f"{short[n % len(short)]} ({next(unique)})", "source": "en", "target": "es"}


def mixed(texts: list[str]) -> Callable[[int], dict]:
    """Six in ten short greedy, two long beam with attention, two lists of three; all unique."""
    short = short_greedy(texts)
    long = [t for t in texts if len(t.split()) >= 30] or texts
    unique = itertools.count()

    def body(n: int) -> dict:
        kind = n % 10
        if kind < 6:
            return short(n)
        if kind < 8:
            text = f"{long[n % len(long)]} ({next(unique)})"
            return {"q": text, "decoding": "beam", "beam_size": 4, "return_attention": True}
        return {"q": [short(n + i)["q"] for i in range(3)]}

    return body


# --- figures ---


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def capacity(url: str, body: Callable[[int], dict], clients: int, seconds: float) -> float:
    """Completed requests per second of closed-loop clients, the first second left out as warm-up."""
    with Load(url, body, clients=clients) as load:
        time.sleep(seconds)
    skip = min(1.0, seconds / 3)
    done = [s for s in load.shots if s.status == 200 and s.started + s.seconds >= skip]
    return len(done) / (seconds - skip)


def target(topo: Topology, args: argparse.Namespace) -> str:
    """The balancer, or with --direct the one replica itself (nginx left out of the measure)."""
    if not args.direct:
        return topo.url
    if len(topo.api_urls) != 1:
        raise SystemExit("--direct needs --replicas 1")
    return topo.api_urls[0]


@dataclass
class Verdict:
    promise: str
    figure: str
    held: bool
    hard: bool  # judged in a dry run too


def measured_load(topo: Topology, args: argparse.Namespace, body: Callable[[int], dict], share: float):
    """(the URL to load, its capacity in requests/s for these bodies, `share` times that capacity)."""
    url = target(topo, args)
    found = capacity(url, body, args.clients, args.probe_s)
    return url, found, share * found


def overload(topo: Topology, args: argparse.Namespace) -> tuple[dict, list[Verdict]]:
    body = short_greedy(sentences())
    url, found, rate = measured_load(topo, args, body, args.factor)
    before = served(topo)

    def queue_depths() -> list[float]:
        return [metric(scrape(replica), "mt_queue_depth") for replica in topo.api_urls]

    with Sampler(queue_depths, 0.05) as queues, Load(url, body, rate=rate, timeout_s=args.timeout_s) as load:
        time.sleep(args.seconds)
    shots = load.shots
    after = served(topo)

    statuses = Counter(s.status for s in shots)
    rejected = [s for s in shots if s.status in (429, 503)]
    completed = [s for s in shots if s.status == 200]
    accepted = len(shots) - len(rejected)
    translated = after["translated"] - before["translated"]
    queue_max = max((max(v) for _, v in queues.samples), default=0.0)  # type: ignore[call-overload]
    rejection_p99 = ms(percentile([s.seconds for s in rejected], 99))
    figures = {
        "capacity_rps": round(found, 1),
        "offered_rps": round(len(shots) / args.seconds, 1),
        "asked_rps": round(rate, 1),
        "seconds": args.seconds,
        "requests": len(shots),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "accepted": accepted,
        "completed": len(completed),
        "translated_by_replicas": int(translated),
        "deadline_504_by_replicas": int(after["deadline"] - before["deadline"]),
        "queue_full_503_by_replicas": int(after["queue_full"] - before["queue_full"]),
        "goodput_rps": round(len(completed) / args.seconds, 1),
        "rejection_p50_ms": ms(percentile([s.seconds for s in rejected], 50)),
        "rejection_p99_ms": rejection_p99,
        "completed_p50_ms": ms(percentile([s.seconds for s in completed], 50)),
        "completed_p99_ms": ms(percentile([s.seconds for s in completed], 99)),
        "queue_max": int(queue_max),
        "queue_bound": args.queue_size,
        "queue_samples": len(queues.samples),
        "queue_samples_missed": queues.missed,
    }
    others = {k: v for k, v in statuses.items() if k not in ANSWERS}
    verdicts = [
        Verdict("only 200, 429 or 503; no error, no timeout", f"{dict(statuses)}", not others, True),
        Verdict(
            "rejections answered fast",
            f"p99 {rejection_p99} ms over {len(rejected)} rejections",
            rejection_p99 <= REJECTION_P99_MS,
            False,
        ),
        Verdict(
            "accepted == completed",
            f"accepted {accepted}, completed {len(completed)}, translated by the replicas {int(translated)}",
            accepted == len(completed) == translated,
            True,
        ),
        Verdict(
            "queue within its bound", f"max {int(queue_max)} of {args.queue_size}", queue_max <= args.queue_size, True
        ),
    ]
    return figures, verdicts


def soak(topo: Topology, args: argparse.Namespace) -> tuple[dict, list[Verdict]]:
    body = mixed(sentences())
    url, found, rate = measured_load(topo, args, body, args.load)
    pids = replica_pids(topo)
    seconds = args.minutes * 60
    with Sampler(lambda: [rss_bytes(p) for p in pids], 1.0) as memory, Load(url, body, rate=rate) as load:
        time.sleep(seconds)
    shots = load.shots
    statuses = Counter(s.status for s in shots)
    failures = sum(s.status != 200 for s in shots)
    samples = [(t, v) for t, v in memory.samples]
    warm = [v for t, v in samples if t >= args.warmup_s][:10] or [samples[-1][1]]
    end = [v for _, v in samples][-10:]
    growths = []
    for i in range(len(pids)):
        start_rss = sum(v[i] for v in warm) / len(warm)  # type: ignore[index]
        end_rss = sum(v[i] for v in end) / len(end)  # type: ignore[index]
        growths.append((start_rss, end_rss, end_rss / start_rss - 1))
    worst = max(g for _, _, g in growths)
    figures = {
        "capacity_rps": round(found, 1),
        "offered_rps": round(len(shots) / seconds, 1),
        "asked_rps": round(rate, 1),
        "seconds": seconds,
        "requests": len(shots),
        "texts": sum(s.texts for s in shots),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "failure_ratio": round(failures / max(1, len(shots)), 6),
        "p50_ms": ms(percentile([s.seconds for s in shots], 50)),
        "p99_ms": ms(percentile([s.seconds for s in shots], 99)),
        "rss_after_warmup_mib": [round(s / 2**20, 1) for s, _, _ in growths],
        "rss_end_mib": [round(e / 2**20, 1) for _, e, _ in growths],
        "rss_growth_pct": [round(100 * g, 2) for _, _, g in growths],
        "rss_max_mib": [round(max(v[i] for _, v in samples) / 2**20, 1) for i in range(len(pids))],  # type: ignore[index]
        "rss_every_30s_mib": [[round(t), *(round(r / 2**20, 1) for r in v)] for t, v in samples[::30]],  # type: ignore[attr-defined]
        "warmup_s": args.warmup_s,
    }
    verdicts = [
        Verdict("failure ratio 0", f"{failures} of {len(shots)} requests not 200", failures == 0, True),
        Verdict(
            "RSS flat after warm-up",
            f"growth {', '.join(f'{100 * g:+.1f}%' for _, _, g in growths)}",
            worst <= RSS_GROWTH,
            False,
        ),
    ]
    return figures, verdicts


MODES = {"overload": overload, "soak": soak}
DRY = {  # a run of seconds: same code, small sizes
    "overload": {"probe_s": 2.0, "seconds": 3.0, "clients": 8, "queue_size": 4},
    "soak": {"probe_s": 2.0, "minutes": 0.1, "warmup_s": 2.0, "clients": 8},
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--bundle", type=Path, help="BUNDLE_DIR of the replicas (default: the service's, bundles/en-es)")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--direct", action="store_true", help="load the replica itself, not nginx (needs --replicas 1)")
    ap.add_argument("--clients", type=int, default=128, help="closed-loop clients of the capacity probe")
    ap.add_argument("--probe-s", type=float, default=10.0, help="seconds of the capacity probe")
    ap.add_argument("--factor", type=float, default=2.0, help="overload: offered load, times the capacity")
    ap.add_argument("--seconds", type=float, default=30.0, help="overload: seconds of offered load")
    ap.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="QUEUE_SIZE of the replicas")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="client timeout of one request")
    ap.add_argument("--load", type=float, default=0.5, help="soak: offered load, times the capacity")
    ap.add_argument("--minutes", type=float, default=5.0, help="soak: minutes of offered load")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="soak: memory is compared from this second on")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a replica setting, repeatable")
    ap.add_argument("--json", type=Path, help="write the figures and verdicts here")
    ap.add_argument("--keep-logs", type=Path, help="write the topology's configs and logs here")
    ap.add_argument("--dry-run", action="store_true", help="a run of seconds; judges the hard promises only")
    args = ap.parse_args(argv)
    if args.dry_run:
        for name, value in DRY[args.mode].items():
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    env = {"RATE_LIMIT_CHARS_PER_MINUTE": "0", "QUEUE_SIZE": str(args.queue_size)}
    env |= dict(item.split("=", 1) for item in args.set)
    topo = Topology(bundle=args.bundle, replicas=args.replicas, env=env, workdir=args.keep_logs)
    started = time.monotonic()
    with topo:
        figures, verdicts = MODES[args.mode](topo, args)
    conditions = {
        "mode": args.mode,
        "dry_run": args.dry_run,
        "bundle": str(args.bundle or "bundles/en-es"),
        "replicas": args.replicas,
        "through": "the replica directly" if args.direct else "nginx",
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "wall_s": round(time.monotonic() - started, 1),
    }
    judged = [v for v in verdicts if v.hard or not args.dry_run]
    ok = all(v.held for v in judged)
    print(f"{args.mode}{' (dry run)' if args.dry_run else ''}: {json.dumps(conditions)}")
    print("| promise | figure | held |\n|---|---|---|")
    for v in verdicts:
        mark = ("yes" if v.held else "NO") if v in judged else ("(not judged)" if v.held else "(not judged: no)")
        print(f"| {v.promise} | {v.figure} | {mark} |")
    print(json.dumps(figures, indent=2))
    if args.json:
        report = {"conditions": conditions, "figures": figures, "verdicts": [asdict(v) for v in verdicts], "ok": ok}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
