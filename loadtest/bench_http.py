"""Side-by-side HTTP benchmark: the PyTorch eager baseline and the service in its three batching
modes, each a server process of its own on 127.0.0.1, measured in turn on the same sentences.

    python -m loadtest.bench_http --bundle bundles/en-es --checkpoint runs/en-es/best.pt \\
        --test data/bible/test.tsv --json loadtest/reports/bench_http.json --plot loadtest/reports/bench_http.png
    python -m loadtest.bench_http --dry-run --bundle B --checkpoint C --test T    # seconds, for CI

Servers: (a) loadtest/baseline_server.py, PyTorch eager batch 1, one request at a time (skipped
without --checkpoint); (b) `python -m service` with BATCHING_MODE=none; (c) request; (d)
continuous. The service runs with rate limits off, its answer cache off (CACHE_SIZE=0: every
request is decoded) and no Redis, and otherwise its defaults (INTRA_OP_THREADS=0: one per core
but one; --set NAME=VALUE changes one); the baseline uses torch's one thread per core. Each
server is started, waited for (GET /health/ready), measured and stopped (SIGTERM, wait) before
the next starts, so they never share the CPU; the client (loadtest.reliability.Load, a thread of
this process) does.

Per server: a single-request latency (a greedy request for a median-length test sentence sent
--single times in a row, p50 and p95 end to end), then for each of --levels closed-loop clients
sending greedy requests drawn in turn from the shuffled test sources, a --warmup, then --seconds
measured: sentences/s and target tokens/s (the `tokens` of the answers completed in the window),
p50/p95/p99 latency of those answers, errors (answers other than 200 over the whole level), texts
answered from the cache (0 unless the setting failed) and the peak resident memory of the
server's process tree (psutil, every 0.2 s). Prints a Markdown table and the project's target
ratios as measured figures with pass/miss (never asserted), writes the figures as JSON and a PNG
of sentences/s against p99 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import matplotlib
import psutil

from loadtest.reliability import Load, Sampler, ms, percentile, sentences
from loadtest.topology import SERVICE_COMMAND, Process, die_with_parent, free_port, native
from model.corpus import read_tsv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = {
    "a": "PyTorch eager, batch 1",
    "b": "service, BATCHING_MODE=none",
    "c": "service, BATCHING_MODE=request",
    "d": "service, BATCHING_MODE=continuous",
}
MODES = {"b": "none", "c": "request", "d": "continuous"}
# The service measured as a model server: every request reaches the model.
SERVICE_ENV = {"RATE_LIMIT_CHARS_PER_MINUTE": "0", "CACHE_SIZE": "0", "WORKERS": "1", "INTRA_OP_THREADS": "0"}
DRY = {"levels": [1, 2], "seconds": 1.0, "warmup": 0.3, "single": 5}
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
RSS_PERIOD_S = 0.2
MIB = 2**20


class Counted(Load):
    """`Load` that also reads each 200 answer: `answers` holds (seconds since the start, target
    subwords in it, texts served from the cache) per answer, so tokens are counted from what each
    server sent back and a cache answering in the model's place would show."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[tuple[float, int, int]] = []

    def answered(self, status: int, body: bytes) -> None:
        if status == 200:
            translations = json.loads(body)["translations"]
            tokens, cached = sum(len(t["tokens"]) for t in translations), sum(t.get("cached", 0) for t in translations)
            self.answers.append((time.monotonic() - self._t0, tokens, cached))


@dataclass
class Server:
    """One server under test in a process group of its own on 127.0.0.1; a context manager that
    returns once GET /health/ready answers 200 and stops it with SIGTERM (SIGKILL past STOP_TIMEOUT_S).

    Args:
        name: for logs and errors.
        argv: the command, `{port}` standing for the port it is given.
        env: its whole environment.
        logs: the folder its output goes to.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    port: int = field(default=0, init=False)
    proc: Process | None = field(default=None, init=False)
    exit_code: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.port = free_port()
        log = self.logs / f"{self.name}.log"
        with open(log, "wb") as out:
            argv = [arg.replace("{port}", str(self.port)) for arg in self.argv]
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.proc = Process(self.name, popen, log)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        popen = self.proc.popen
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            self.exit_code = popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            self.exit_code = popen.wait()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.proc.popen.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready (exit {self.proc.popen.poll()}):\n{self.proc.tail()}")

    def rss(self) -> int:
        """Resident bytes of the server process and its children."""
        main = psutil.Process(self.proc.popen.pid)  # type: ignore[union-attr]
        total = main.memory_info().rss
        for child in main.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total


def server(key: str, args: argparse.Namespace, logs: Path) -> Server:
    """Server (a), the baseline, or the service in batching mode (b), (c) or (d)."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if key == "a":
        argv = [sys.executable, "-m", "loadtest.baseline_server", "--checkpoint", str(args.checkpoint)]
        return Server(key, [*argv, "--port", "{port}"], env, logs)
    argv = [*native(SERVICE_COMMAND), "--bundle", str(args.bundle), "--host", "127.0.0.1", "--port", "{port}"]
    overrides = dict(item.split("=", 1) for item in args.set)
    return Server(key, argv, env | SERVICE_ENV | {"BATCHING_MODE": MODES[key]} | overrides, logs)


def greedy(text: str) -> dict:
    return {"q": text, "decoding": "greedy"}


def single(url: str, text: str, times: int) -> dict:
    """One client, one request after the other on a kept-alive connection; end-to-end latency."""
    seconds = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for n in range(3 + times):  # the first three warm up
            started = time.perf_counter()
            client.post("/translate", json=greedy(text)).raise_for_status()
            if n >= 3:
                seconds.append(time.perf_counter() - started)
    return {"requests": times, "p50_ms": ms(percentile(seconds, 50)), "p95_ms": ms(percentile(seconds, 95))}


def level(
    url: str, body: Callable[[int], dict], clients: int, warmup: float, seconds: float, rss: Callable[[], int]
) -> dict:
    """Closed-loop clients for warmup + seconds; figures over the answers completed in the last `seconds`."""
    with Sampler(rss, RSS_PERIOD_S) as memory, Counted(url, body, clients=clients) as load:
        time.sleep(warmup + seconds)
    end = warmup + seconds
    done = [s for s in load.shots if s.status == 200 and warmup <= s.started + s.seconds < end]
    tokens = sum(n for t, n, _ in load.answers if warmup <= t < end)
    latencies = [s.seconds for s in done]
    return {
        "clients": clients,
        "sentences_per_s": round(len(done) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "p99_ms": ms(percentile(latencies, 99)),
        "requests": len(load.shots),
        "errors": sum(s.status != 200 for s in load.shots),
        "cached": sum(c for _, _, c in load.answers),
        "peak_rss_mib": round(max((v for _, v in memory.samples), default=0) / MIB, 1),  # type: ignore[type-var]
    }


def measure(srv: Server, texts: list[str], median_text: str, args: argparse.Namespace) -> dict:
    """The single-request figure, then every level, on a started server."""
    print(f"({srv.name}) {NAMES[srv.name]}: ready on {srv.url}", file=sys.stderr, flush=True)
    out = {"name": NAMES[srv.name], "single": single(srv.url, median_text, args.single), "levels": []}
    for clients in args.levels:
        row = level(srv.url, lambda n: greedy(texts[n % len(texts)]), clients, args.warmup, args.seconds, srv.rss)
        print(f"  {clients:>3} clients: {row['sentences_per_s']:>8} sent/s", file=sys.stderr, flush=True)
        out["levels"].append(row)
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in out["levels"])
    return out


def source_texts(test: Path, seed: int) -> list[str]:
    """The test split's sources (loadtest/sentences.txt when the split is absent), shuffled once."""
    texts = [p.src for p in read_tsv(test)] if test.exists() else sentences()
    random.Random(seed).shuffle(texts)
    return texts


def median_length(texts: list[str]) -> str:
    return sorted(texts, key=lambda t: (len(t.split()), t))[len(texts) // 2]


def ratio(num: float, den: float) -> float | None:
    return round(num / den, 2) if den > 0 else None


def targets(servers: dict) -> list[dict]:
    """The project's targets as measured figures: (d) against (a), (b), (c), and (d)'s single p50."""
    if "d" not in servers:
        return []
    d = servers["d"]
    top = d["levels"][-1]
    rows = []
    for key, goal in (("a", 10.0), ("b", 3.0)):
        if key in servers:
            other = servers[key]["levels"][-1]
            found = ratio(top["sentences_per_s"], other["sentences_per_s"])
            figure = f"{top['sentences_per_s']} vs {other['sentences_per_s']} sent/s at {top['clients']} clients"
            rows.append(
                row(f"(d)/({key}) sentences/s", f">= {goal}", found, figure, found is not None and found >= goal)
            )
    if "c" in servers:  # at the top level too, and only if (d) is not slower at the tail there
        c = servers["c"]["levels"][-1]
        found = ratio(top["sentences_per_s"], c["sentences_per_s"])
        figure = (
            f"{top['sentences_per_s']} vs {c['sentences_per_s']} sent/s, p99 {top['p99_ms']} vs {c['p99_ms']} ms "
            f"at {top['clients']} clients"
        )
        met = found is not None and found >= 1.3 and top["p99_ms"] <= c["p99_ms"]
        rows.append(row("(d)/(c) sentences/s at equal or lower p99", ">= 1.3", found, figure, met))
    p50 = d["single"]["p50_ms"]
    rows.append(row("(d) single greedy p50 ms", "<= 25", p50, f"{p50} ms, p95 {d['single']['p95_ms']} ms", p50 <= 25))
    return rows


def row(target: str, goal: str, measured: float | None, figure: str, met: bool) -> dict:
    return {"target": target, "goal": goal, "measured": measured, "figure": figure, "pass": met}


def markdown(servers: dict, found: list[dict]) -> str:
    lines = [
        "| server | clients | sentences/s | target tokens/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in servers.items():
        for r in s["levels"]:
            lines.append(
                f"| ({key}) {s['name']} | {r['clients']} | {r['sentences_per_s']} | {r['tokens_per_s']} | "
                f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['peak_rss_mib']} |"
            )
    lines += ["", "| server | single greedy p50 ms | p95 ms | requests |", "|---|---:|---:|---:|"]
    for key, s in servers.items():
        lines.append(
            f"| ({key}) {s['name']} | {s['single']['p50_ms']} | {s['single']['p95_ms']} | {s['single']['requests']} |"
        )
    lines += ["", "| target | goal | measured | figure | result |", "|---|---|---:|---|---|"]
    for t in found:
        lines.append(
            f"| {t['target']} | {t['goal']} | {t['measured']} | {t['figure']} | {'pass' if t['pass'] else 'miss'} |"
        )
    return "\n".join(lines)


def plot(servers: dict, path: Path) -> None:
    """Sentences/s against p99 latency, one line per server, each point labelled with its clients."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, s in servers.items():
        x = [r["p99_ms"] for r in s["levels"]]
        y = [r["sentences_per_s"] for r in s["levels"]]
        ax.plot(x, y, marker="o", label=f"({key}) {s['name']}")
        for r, xi, yi in zip(s["levels"], x, y, strict=True):
            ax.annotate(str(r["clients"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # 20, 30, 200 rather than 2x10^1
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.set_xlabel("p99 latency, ms (log)")
    ax.set_ylabel("sentences/s (log)")
    ax.set_title("throughput against tail latency; points: concurrent clients")
    ax.grid(alpha=0.3, which="both")
    if servers:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_http", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "en-es")
    ap.add_argument("--checkpoint", type=Path, help="training checkpoint (.pt) for the baseline (a); skipped without")
    ap.add_argument("--test", type=Path, default=ROOT / "data" / "bible" / "test.tsv")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrent closed-loop clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per level before measuring")
    ap.add_argument("--single", type=int, default=50, help="requests of the single-request latency")
    ap.add_argument("--servers", default="a,b,c,d", help="a subset of a,b,c,d")
    ap.add_argument("--seed", type=int, default=1, help="shuffles the sentences")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a service setting, repeatable")
    ap.add_argument("--json", type=Path, default=ROOT / "loadtest" / "reports" / "bench_http.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "loadtest" / "reports" / "bench_http.png")
    ap.add_argument("--dry-run", action="store_true", help="levels 1,2 of about a second each (seconds in all)")
    args = ap.parse_args(argv)
    args.levels = [int(n) for n in args.levels.split(",")]
    args.servers = args.servers.split(",")
    if unknown := set(args.servers) - set(NAMES):
        ap.error(f"unknown servers {sorted(unknown)}; choose among a,b,c,d")
    if args.dry_run:
        for name, value in DRY.items():
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    texts = source_texts(args.test, args.seed)
    median_text = median_length(texts)
    conditions = {
        "dry_run": args.dry_run,
        "bundle": str(args.bundle),
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "sentences": len(texts),
        "from": str(args.test) if args.test.exists() else "loadtest/sentences.txt",
        "single_text_words": len(median_text.split()),
        "levels": args.levels,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "threads": "baseline: torch.set_num_threads(one per core); service: INTRA_OP_THREADS=0 (one per core but one)",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "service_env": SERVICE_ENV | dict(item.split("=", 1) for item in args.set),
    }
    servers, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as logs:
        for key in args.servers:
            if key == "a" and args.checkpoint is None:
                skipped[key] = "no --checkpoint given"
                print("(a) skipped: no --checkpoint given", file=sys.stderr)
                continue
            srv = server(key, args, Path(logs))
            with srv:
                servers[key] = measure(srv, texts, median_text, args)
            servers[key]["exit_code"] = srv.exit_code
    found = targets(servers)
    table = markdown(servers, found)
    print(table)
    report = {"conditions": conditions, "servers": servers, "skipped": skipped, "targets": found, "table": table}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(servers, args.plot)
    print(f"wrote {args.json} and {args.plot}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
