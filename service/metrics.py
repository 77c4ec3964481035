"""Prometheus metrics, in a registry of their own per app (so tests can build many apps).

Request counters and latency come from the request middleware; cache, rate-limit and
translation figures from the code that sees them; the batcher's figures (queue depth, rows per
step, tokens generated) are read from `Translator.stats()` when /metrics is scraped. Tokens per
second is `rate(mt_tokens_generated_total[1m])`, and per translation `mt_decode_tokens_per_second`.

With several uvicorn workers each has its own registry and a scrape sees one of them; run one
worker per container and scale with replicas, as docker-compose does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BatcherCollector(Collector):
    """Reads the batcher's counters at scrape time."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.stats()
        yield GaugeMetricFamily("mt_queue_depth", "Entries waiting to join the batch.", value=s.get("queue_depth", 0))
        yield GaugeMetricFamily(
            "mt_active_rows", "Rows (beam hypotheses) in the running batch.", s.get("active_rows", 0)
        )
        yield GaugeMetricFamily("mt_active_entries", "Requests in the running batch.", s.get("active_entries", 0))
        yield GaugeMetricFamily("mt_batch_rows_per_step", "Rows decoded per step.", value=s.get("rows_per_step", 0))
        yield CounterMetricFamily("mt_decode_steps", "Decoder steps run.", value=s.get("steps", 0))
        yield CounterMetricFamily("mt_tokens_generated", "Output subwords generated.", s.get("tokens_generated", 0))


class Metrics:
    """Every metric the service exports. `watch(translator.stats)` adds the batcher's."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mt_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r)
        self.in_flight = Gauge("mt_requests_in_flight", "Requests being handled, health and metrics aside.", registry=r)
        self.latency = Histogram(
            "mt_request_seconds", "HTTP request latency.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "mt_queue_seconds", "Time a text waited to join the batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.decode_seconds = Histogram(
            "mt_decode_seconds", "Time a text spent being decoded.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens_per_second = Histogram(
            "mt_decode_tokens_per_second",
            "Output subwords per second of decoding, per translated text.",
            buckets=(10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.texts = Counter("mt_texts", "Texts translated, by decoding strategy.", ["strategy"], registry=r)
        self.chars = Counter("mt_source_chars", "Source characters received for translation.", registry=r)
        self.cache = Counter("mt_cache", "Translation cache lookups and failures.", ["result"], registry=r)
        self.rate_limited = Counter("mt_rate_limit_rejections", "Requests refused by the rate limit (429).", registry=r)
        self.limiter_errors = Counter(
            "mt_rate_limit_storage_errors", "Rate-limit checks that could not reach their storage.", registry=r
        )
        self.auth_failures = Counter("mt_auth_failures", "Requests refused for their API key.", ["status"], registry=r)
        self.rejected = Counter("mt_rejections", "Translations refused by the queue policy.", ["reason"], registry=r)

    def watch(self, stats: Callable[[], dict]) -> None:
        self.registry.register(BatcherCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
