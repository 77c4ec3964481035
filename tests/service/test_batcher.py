"""The scheduler: queue policy and modes with a scripted engine, batch invariance with the real one."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model.corpus import read_tsv
from service.batcher import Batcher, Entry, QueueFull, RowLayout
from service.bundle import load_bundle
from service.decoding import BeamSearch, GreedySearch
from service.engine import EncodedSource, Engine, StepOutput

TINY_CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
BOS, EOS = 2, 3
FIRST = 10  # the scripted engine counts up from here
POISON = 99  # a source id the scripted engine fails on


class ScriptedEngine:
    """A source of n ids decodes to n - 1 counting tokens and EOS. It records the rows of
    every step, can sleep per step, wait on a gate, or fail on a poisoned source."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.rows: list[int] = []  # rows of each step
        self.live: list[int] = []  # rows with a source
        self.candidates: list[int] = []  # top-k width each step asked for
        self.after_step = None

    def encode(self, batch):
        return [
            EncodedSource(np.full((len(s), 1), s[0], np.float32), np.zeros((len(s), 1)), np.zeros((1, 1)))
            for s in batch
        ]

    def decode_step(self, state):
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        live = [src for src in state.sources if src is not None]
        if any(src.memory[0, 0] == POISON for src in live):
            raise RuntimeError("poisoned step")
        self.rows.append(len(state.tokens))
        self.live.append(len(live))
        self.candidates.append(state.candidates)
        lengths = np.array([1000 if src is None else src.length for src in state.sources])
        nxt = np.where(state.tokens == BOS, FIRST, state.tokens + 1)
        nxt = np.where(nxt >= FIRST + lengths - 1, EOS, nxt)
        ids = np.stack([nxt, *[np.full_like(nxt, 40 + j) for j in range(7)]], axis=1)  # (R, 8)
        lps = np.tile(np.array([-0.1, -5, -6, -7, -8, -9, -10, -11], np.float32), (len(nxt), 1))
        S = max(s.length for s in live)
        attention = np.stack([np.r_[np.full(n, 1 / n), np.zeros(S - n)] if n <= S else np.eye(S)[0] for n in lengths])
        out = StepOutput(lps, ids, attention.astype(np.float32), None)
        if self.after_step:
            self.after_step(len(self.rows))
        return out


def greedy(max_length=500):
    return GreedySearch(bos_id=BOS, eos_id=EOS, max_length=max_length)


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.002)


@pytest.fixture
def make_batcher():
    made = []

    def make(engine, **kw):
        batcher = Batcher(engine, **kw)
        made.append(batcher)
        return batcher

    yield make
    for b in made:
        b.close()


def test_an_entry_decodes_to_eos_and_resolves(make_batcher):
    batcher = make_batcher(ScriptedEngine())
    result = batcher.submit([5] * 4, greedy()).future.result(5)
    assert result.hypotheses[0].tokens == [10, 11, 12, EOS]
    assert result.stop_reason == "eos" and result.decode_ms >= 0 and result.queue_ms >= 0


def test_a_short_request_joins_mid_flight_and_does_not_wait_for_a_long_one(make_batcher):
    engine = ScriptedEngine(delay=0.002)
    batcher = make_batcher(engine)
    long = batcher.submit([5] * 300, greedy())
    wait_for(lambda: len(engine.rows) >= 3)
    short = batcher.submit([5] * 3, greedy())
    assert short.future.result(5).hypotheses[0].tokens == [10, 11, EOS]
    assert not long.future.done()
    assert 2 in engine.rows  # the two decoded side by side
    long.cancel()


def test_the_row_and_token_budgets_cap_a_step(make_batcher):
    engine = ScriptedEngine()
    batcher = make_batcher(engine, max_rows=3, max_tokens=25)
    entries = [batcher.submit([5] * 10, greedy()) for _ in range(6)]
    for e in entries:
        assert e.future.result(5).stop_reason == "eos"
    assert max(engine.rows) == 2  # 3 rows x 10 ids would pass the token budget

    engine = ScriptedEngine()
    batcher = make_batcher(engine, max_rows=4, max_tokens=10_000)
    entries = [
        batcher.submit([5] * 10, BeamSearch(bos_id=BOS, eos_id=EOS, max_length=50, beam_size=2)) for _ in range(5)
    ]
    for e in entries:
        assert e.future.result(5).stop_reason == "eos"
    assert max(engine.rows) == 4  # two beams of two rows


def test_a_step_asks_for_the_candidates_its_widest_search_reads(make_batcher):
    engine = ScriptedEngine(delay=0.002)
    batcher = make_batcher(engine)
    assert batcher.submit([5] * 4, greedy()).future.result(5).stop_reason == "eos"
    assert set(engine.candidates) == {1}  # greedy reads the best token only
    long = batcher.submit([5] * 40, greedy())
    wait_for(lambda: len(engine.rows) >= 8)
    beam = batcher.submit([5] * 4, BeamSearch(bos_id=BOS, eos_id=EOS, max_length=50, beam_size=3))
    assert beam.future.result(5).stop_reason == "eos"
    long.future.result(5)
    beam_steps = [i for i, live in enumerate(engine.live) if live > 1]
    assert beam_steps and all(engine.candidates[i] == 6 for i in beam_steps)  # 2 x beam, greedy row beside
    assert engine.candidates[-1] == 1  # the beam left; the greedy one asks for 1 again


def test_a_finished_entry_leaves_its_rows_to_the_next_and_sparse_layouts_compact():
    layout = RowLayout()
    a, b, c, d, e = (Entry([5], greedy()) for _ in range(5))
    wide = Entry([5], BeamSearch(bos_id=BOS, eos_id=EOS, max_length=5, beam_size=2))
    for entry in (a, wide, b):
        layout.place(entry)
    assert layout.owners == [a, wide, wide, b]
    layout.release(wide)
    layout.place(c)
    assert layout.owners == [a, c, None, b] and c.first_row == 1
    layout.place(wide)
    assert layout.owners == [a, c, None, b, wide, wide] and wide.first_row == 4
    layout.release(c)
    layout.compact()
    assert layout.owners == [a, b, wide, wide] and (b.first_row, wide.first_row) == (1, 2)
    layout.release(wide)
    assert layout.owners == [a, b]
    layout.place(d)
    layout.place(e)
    assert layout.owners == [a, b, d, e]


def test_request_mode_runs_a_collected_batch_to_completion_before_the_next(make_batcher):
    engine = ScriptedEngine(delay=0.001)
    batcher = make_batcher(engine, mode="request", max_requests=3, wait_ms=200)
    first = [batcher.submit([5] * n, greedy()) for n in (4, 8, 12)]
    wait_for(lambda: len(engine.rows) >= 1)
    late = batcher.submit([5] * 3, greedy())
    finished = []
    for e in first:
        e.future.add_done_callback(lambda f: finished.append(time.monotonic()))
    assert late.future.result(5).stop_reason == "eos"
    assert engine.rows[0] == 3
    assert late.started_at >= max(finished)


def test_request_mode_starts_after_the_collection_window(make_batcher):
    engine = ScriptedEngine()
    batcher = make_batcher(engine, mode="request", max_requests=8, wait_ms=30)
    t0 = time.monotonic()
    entry = batcher.submit([5] * 3, greedy())
    entry.future.result(5)
    assert entry.started_at - t0 >= 0.025


def test_no_batching_mode_decodes_one_entry_at_a_time(make_batcher):
    engine = ScriptedEngine()
    batcher = make_batcher(engine, mode="none")
    entries = [batcher.submit([5] * 6, greedy()) for _ in range(4)]
    for e in entries:
        e.future.result(5)
    assert set(engine.rows) == {1}


def test_a_full_queue_rejects_at_once(make_batcher):
    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate), queue_size=2, max_rows=1)
    running = batcher.submit([5] * 3, greedy())
    wait_for(lambda: batcher.stats()["active_entries"] == 1)
    waiting = [batcher.submit([5] * 3, greedy()) for _ in range(2)]
    t0 = time.monotonic()
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit([5] * 3, greedy())
    assert time.monotonic() - t0 < 0.1
    gate.set()
    for e in [running, *waiting]:
        assert e.future.result(5).stop_reason == "eos"


def test_places_reserved_for_requests_being_encoded_count_against_the_queue_bound(make_batcher):
    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate), queue_size=2, max_rows=1)
    running = batcher.submit([5] * 3, greedy())
    wait_for(lambda: batcher.stats()["active_entries"] == 1)
    batcher.reserve()
    batcher.reserve()
    assert batcher.full and batcher.stats()["queue_depth"] == 2
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit([5] * 3, greedy())
    batcher.unreserve()  # that request went away while being encoded
    queued = batcher.submit([5] * 3, greedy(), reserved=True)  # the other one is queued in its place
    assert batcher.stats()["queue_depth"] == 1 and not batcher.full
    gate.set()
    for e in (running, queued):
        assert e.future.result(5).stop_reason == "eos"


def test_a_request_past_its_deadline_stops_at_the_next_step(make_batcher):
    batcher = make_batcher(ScriptedEngine(delay=0.002))
    other = batcher.submit([5] * 20, greedy())
    late = batcher.submit([5] * 500, greedy(), deadline=time.monotonic() + 0.05)
    result = late.future.result(5)
    assert result.stop_reason == "deadline"
    assert 0 < len(result.hypotheses[0].tokens) < 499
    assert result.decode_ms < 500
    assert other.future.result(5).stop_reason == "eos"


def test_a_waiting_request_past_its_deadline_is_answered_without_running(make_batcher):
    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate), mode="none")
    batcher.submit([5] * 3, greedy())
    wait_for(lambda: batcher.stats()["active_entries"] == 1)
    late = batcher.submit([5] * 3, greedy(), deadline=time.monotonic() + 0.01)
    time.sleep(0.02)
    gate.set()
    result = late.future.result(5)
    assert result.stop_reason == "deadline" and late.started_at is None
    assert result.hypotheses[0].tokens == []


def test_cancelling_frees_the_rows_at_the_next_step(make_batcher):
    engine = ScriptedEngine(delay=0.002)
    batcher = make_batcher(engine)
    entry = batcher.submit([5] * 1000, BeamSearch(bos_id=BOS, eos_id=EOS, max_length=2000, beam_size=2))
    wait_for(lambda: batcher.stats()["active_rows"] == 2)
    steps = len(engine.rows)
    batcher.cancel(entry)
    assert entry.future.result(5).stop_reason == "cancelled"
    assert len(engine.rows) <= steps + 1
    assert batcher.stats()["active_rows"] == 0


def test_a_cancelled_future_frees_its_rows_too(make_batcher):
    batcher = make_batcher(ScriptedEngine(delay=0.002))
    entry = batcher.submit([5] * 1000, greedy(2000))
    wait_for(lambda: batcher.stats()["active_rows"] == 1)
    assert entry.future.cancel()
    wait_for(lambda: batcher.stats()["active_rows"] == 0)
    assert batcher.submit([5] * 3, greedy()).future.result(5).stop_reason == "eos"


def test_a_failing_step_fails_its_entries_and_the_loop_goes_on(make_batcher):
    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate))
    good = batcher.submit([5] * 30, greedy())
    bad = batcher.submit([POISON] * 3, greedy())
    gate.set()
    for e in (good, bad):
        with pytest.raises(RuntimeError, match="poisoned step"):
            e.future.result(5)
    assert batcher.submit([5] * 3, greedy()).future.result(5).stop_reason == "eos"
    assert batcher.stats()["errors"] == 2


def test_a_failing_search_fails_only_its_own_entry(make_batcher):
    class Broken(GreedySearch):
        def advance(self, *args):
            raise ValueError("broken search")

    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate))
    good = batcher.submit([5] * 5, greedy())
    bad = batcher.submit([5] * 5, Broken(bos_id=BOS, eos_id=EOS, max_length=10))
    gate.set()
    with pytest.raises(ValueError, match="broken search"):
        bad.future.result(5)
    assert good.future.result(5).hypotheses[0].tokens == [10, 11, 12, 13, EOS]


def test_closing_drains_in_flight_work_and_then_refuses(make_batcher):
    batcher = make_batcher(ScriptedEngine(delay=0.001))
    entries = [batcher.submit([5] * 20, greedy()) for _ in range(3)]
    batcher.close(drain_timeout=5)
    assert all(e.future.result(0).stop_reason == "eos" for e in entries)
    assert not batcher.accepting
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit([5] * 3, greedy())


def test_closing_without_time_to_drain_answers_every_accepted_entry(make_batcher):
    gate = threading.Event()
    batcher = make_batcher(ScriptedEngine(gate=gate), mode="none")
    entries = [batcher.submit([5] * 50, greedy()) for _ in range(3)]
    wait_for(lambda: batcher.stats()["active_entries"] == 1)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(5)
    for e in entries:
        with pytest.raises(QueueFull, match="shutting down"):
            e.future.result(5)


# Batch invariance with the real engine on the tiny bundle.


class HookedEngine:
    """The real engine, calling `after_step(n)` in the batcher thread after step n."""

    def __init__(self, engine: Engine, after_step) -> None:
        self.engine, self.after_step, self.steps = engine, after_step, 0

    def encode(self, batch):
        return self.engine.encode(batch)

    def decode_step(self, state):
        out = self.engine.decode_step(state)
        self.steps += 1
        self.after_step(self.steps)
        return out


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine(load_bundle(tiny_bundle), device="cpu", threads=1)


@pytest.fixture(scope="module")
def sources(engine):
    return [engine.bundle.encode(p.src) for p in read_tsv(TINY_CORPUS / "test.tsv")[:10]]


def make_search(engine, src, beam):
    common = {"bos_id": 2, "eos_id": 3, "max_length": engine.bundle.max_target_len(len(src))}
    return BeamSearch(**common, beam_size=3, n_best=2) if beam else GreedySearch(**common)


def decode_all(batcher, engine, sources, beam):
    entries = [batcher.submit(s, make_search(engine, s, beam)) for s in sources]
    return [e.future.result(30).hypotheses for e in entries]


def assert_same(got, expected):
    for hyps_a, hyps_b in zip(got, expected, strict=True):
        assert [h.tokens for h in hyps_a] == [h.tokens for h in hyps_b]
        for a, b in zip(hyps_a, hyps_b, strict=True):
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


@pytest.mark.parametrize("beam", [False, True], ids=["greedy", "beam"])
def test_a_sentence_decodes_the_same_alone_in_a_request_batch_and_joining_mid_flight(
    engine, sources, make_batcher, beam
):
    alone = decode_all(make_batcher(engine, mode="none"), engine, sources, beam)
    together = decode_all(make_batcher(engine, mode="request", max_requests=64, wait_ms=50), engine, sources, beam)
    assert_same(together, alone)

    late: list = []

    def join(step):  # the sentences join the running batch at step 5
        if step == 4:
            late.extend(batcher.submit(s, make_search(engine, s, beam)) for s in sources)

    batcher = make_batcher(HookedEngine(engine, join), mode="continuous")
    runners = [batcher.submit(s, make_search(engine, s, not beam)) for s in sources[-3:]]
    wait_for(lambda: bool(late), 30)
    assert_same([e.future.result(30).hypotheses for e in late], alone)
    for r in runners:
        r.future.result(30)
    assert all(e.started_at > r.started_at for e in late for r in runners)
