"""Load test of the translation API: one user class per traffic profile, over the test split's sentences.

    locust --config loadtest/locust.conf --host http://127.0.0.1:8080     # headless, with thresholds
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080         # the web UI on :8089

Profiles (weights are their share of users): short sentences with greedy decoding (interactive
use), long sentences with beam search, attention and alignments (the heavy path), lists of
several sentences in one request (documents), and LibreTranslate clients (its JSON and form
requests, GET /languages). Every response is checked for status and content.

The run fails (exit code 1) when the failure ratio is over --max-fail-ratio (LOCUST_MAX_FAIL_RATIO,
default 0.01) or the 95th percentile latency of all requests is over --p95-ms (LOCUST_P95_MS,
default 2000). `RampShape` steps the users up to --users over the first half of --run-time.
Only the standard library and locust are used, so the stock Locust image runs this file as is.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from locust import HttpUser, LoadTestShape, between, events, task
from locust.runners import WorkerRunner

HERE = Path(__file__).resolve().parent
SHORT_WORDS = 15  # short profile: sentences of at most this many words
LONG_WORDS = 30  # long profile: sentences of at least this many words
FINISHED = {"eos", "max_length"}

log = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--p95-ms", type=float, env_var="LOCUST_P95_MS", default=2000.0, help="fail the run when p95 is over this"
    )
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="LOCUST_MAX_FAIL_RATIO",
        default=0.01,
        help="fail the run when the share of failed requests is over this",
    )
    parser.add_argument(
        "--sentences",
        default=str(HERE / "sentences.txt"),
        env_var="LOCUST_SENTENCES",
        help="source sentences, one per line ('#' lines skipped)",
    )


def load_sentences(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class Texts:
    """The sentences, split by length for the profiles; filled in at init from --sentences."""

    all: list[str] = []
    short: list[str] = []
    long: list[str] = []

    @classmethod
    def load(cls, path: str | Path) -> None:
        cls.all = load_sentences(path)
        cls.short = [s for s in cls.all if len(s.split()) <= SHORT_WORDS] or cls.all
        cls.long = [s for s in cls.all if len(s.split()) >= LONG_WORDS] or cls.all


@events.init.add_listener
def _init(environment, **_) -> None:
    options = environment.parsed_options
    Texts.load(options.sentences if options else HERE / "sentences.txt")
    if options is not None:
        for report in (options.csv_prefix, options.html_file):
            if report:
                Path(report).parent.mkdir(parents=True, exist_ok=True)


@events.quitting.add_listener
def _thresholds(environment, **_) -> None:
    """Set the exit code from the failure ratio and p95 of all requests (on the master or a lone runner)."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options, total = environment.parsed_options, environment.stats.total
    if total.num_requests == 0 and not options.headless:
        return  # the web UI was closed without a test
    p95 = total.get_response_time_percentile(0.95) or 0.0
    broken = []
    if total.num_requests == 0:
        broken.append("no request was made")
    if total.fail_ratio > options.max_fail_ratio:
        broken.append(f"failure ratio {total.fail_ratio:.2%} is over {options.max_fail_ratio:.2%}")
    if p95 > options.p95_ms:
        broken.append(f"p95 {p95:.0f} ms is over {options.p95_ms:.0f} ms")
    summary = f"{total.num_requests} requests, {total.fail_ratio:.2%} failed, p95 {p95:.0f} ms"
    if broken:
        log.error("thresholds failed: %s (%s)", "; ".join(broken), summary)
        environment.process_exit_code = 1
    else:
        log.info("thresholds passed: %s", summary)


def translation_problem(body: dict, texts: list[str], *, as_list: bool, attention: bool = False) -> str | None:
    """What is wrong with a /translate answer for `texts`, or None."""
    translated = body.get("translatedText")
    if as_list:
        if not isinstance(translated, list) or len(translated) != len(texts):
            return f"translatedText should be a list of {len(texts)}: {translated!r:.80}"
    elif not isinstance(translated, str):
        return f"translatedText should be a string: {translated!r:.80}"
    results = body.get("translations")
    if not isinstance(results, list) or len(results) != len(texts):
        return f"translations should hold {len(texts)} entries"
    for result in results:
        if result.get("stop_reason") not in FINISHED:
            return f"stopped by {result.get('stop_reason')!r}"
        if not isinstance(result.get("text"), str) or not isinstance(result.get("tokens"), list):
            return "a translation lacks its text or tokens"
        if attention and (problem := attention_problem(result)):
            return problem
    return None


def attention_problem(result: dict) -> str | None:
    """Attention rows are distributions over the source, word rows match the words, alignments point inside."""
    att = result.get("attention")
    if not att:
        return "attention was asked for but is missing"
    rows, words = att["subwords"], att["words"]
    if len(rows) < len(result["tokens"]) or any(abs(sum(row) - 1.0) > 0.02 for row in rows):
        return "subword attention rows are missing or do not sum to 1"
    n_src, n_tgt = len(att["source_words"]), len(att["target_words"])
    if len(words) != n_tgt or any(len(row) != n_src for row in words):
        return f"word attention is not {n_tgt}x{n_src}"
    if any(not (0 <= t < n_tgt and 0 <= s < n_src) for t, s in result.get("alignment") or []):
        return "an alignment points outside the words"
    return None


class TranslateUser(HttpUser):
    """Posts JSON to /translate and checks the answer; subclasses are the traffic profiles."""

    abstract = True

    def translate(self, payload: dict, *, name: str, attention: bool = False) -> None:
        texts = payload["q"] if isinstance(payload["q"], list) else [payload["q"]]
        with self.client.post("/translate", json=payload, name=name, catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"status {reply.status_code}: {reply.text[:200]}")
                return
            try:
                body = reply.json()
            except ValueError:
                reply.failure("the answer is not JSON")
                return
            problem = translation_problem(body, texts, as_list=isinstance(payload["q"], list), attention=attention)
            if problem:
                reply.failure(problem)
            else:
                reply.success()


class ShortGreedyUser(TranslateUser):
    """Interactive use: one short sentence at a time, greedy decoding, quick successive requests."""

    weight = 3
    wait_time = between(0.2, 1.0)

    @task
    def short_greedy(self) -> None:
        self.translate({"q": random.choice(Texts.short), "decoding": "greedy"}, name="/translate [short greedy]")


class LongBeamUser(TranslateUser):
    """The heavy path: a long sentence, beam search, n-best, scores, attention and alignments."""

    weight = 1
    wait_time = between(1.0, 3.0)

    @task
    def long_beam(self) -> None:
        payload = {
            "q": random.choice(Texts.long),
            "decoding": "beam",
            "beam_size": random.choice((4, 5)),
            "n_best": 2,
            "return_scores": True,
            "return_attention": True,
            "return_alignment": True,
        }
        self.translate(payload, name="/translate [long beam+attention]", attention=True)


class ListUser(TranslateUser):
    """Documents: several sentences of mixed length in one request, greedy."""

    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def list_of_texts(self) -> None:
        texts = random.sample(Texts.all, k=random.randint(2, 8))
        self.translate({"q": texts, "source": "en", "target": "es"}, name="/translate [list]")


class LibreTranslateUser(HttpUser):
    """A client written for LibreTranslate: its JSON and form requests, and GET /languages."""

    weight = 2
    wait_time = between(0.5, 2.0)

    @task(6)
    def translate_json(self) -> None:
        payload = {"q": random.choice(Texts.all), "source": "en", "target": "es", "format": "text", "alternatives": 2}
        with self.client.post(
            "/translate", json=payload, name="/translate [libretranslate json]", catch_response=True
        ) as r:
            self._check(r, alternatives=2)

    @task(2)
    def translate_form(self) -> None:
        form = {"q": random.choice(Texts.all), "source": "auto", "target": "es", "format": "text"}
        with self.client.post(
            "/translate", data=form, name="/translate [libretranslate form]", catch_response=True
        ) as r:
            self._check(r, alternatives=0)

    @task(1)
    def languages(self) -> None:
        with self.client.get("/languages", name="/languages", catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"status {reply.status_code}")
                return
            codes = {lang.get("code"): lang.get("targets", []) for lang in reply.json()}
            if "es" not in codes.get("en", []):
                reply.failure(f"en->es is not listed: {codes}")
            else:
                reply.success()

    @staticmethod
    def _check(reply, *, alternatives: int) -> None:
        if reply.status_code != 200:
            reply.failure(f"status {reply.status_code}: {reply.text[:200]}")
            return
        body = reply.json()
        if not isinstance(body.get("translatedText"), str):
            reply.failure("translatedText should be a string")
        elif not isinstance(body.get("alternatives"), list) or len(body["alternatives"]) > alternatives:
            reply.failure(f"alternatives should be a list of at most {alternatives}")
        else:
            reply.success()


class RampShape(LoadTestShape):
    """Steps up to --users (a quarter, half, all) over the first half of --run-time, then holds.

    Without --run-time (the web UI) it holds the full count until stopped. The spawn rate is
    --spawn-rate, or fast enough for each step to start within a second.
    """

    use_common_options = True
    steps = ((0.15, 0.25), (0.3, 0.5), (0.5, 1.0))  # (share of run time elapsed, share of users)

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        peak = max(1, options.num_users or 1)
        run_time = options.run_time or 0
        elapsed = self.get_run_time()
        if run_time and elapsed >= run_time:
            return None
        share = next((users for until, users in self.steps if elapsed < until * run_time), 1.0)
        return max(1, math.ceil(peak * share)), float(options.spawn_rate or peak)
