"""Iteration-level ("continuous") batching of decoder steps, in its own thread.

Each request is an `Entry`: its source ids, its search (greedy or beam), a future, its queue
and start times and a deadline. The scheduler loop, at every decoder step:

1. drops waiting entries that were cancelled or are past their deadline (answered at once);
2. admits waiting entries, first come first served, while the row budget (sum of the
   entries' reserved rows) and the token budget (rows x longest source) allow, and encodes
   them together;
3. finishes running entries that were cancelled or are past their deadline;
4. runs one decoder step for the rows of every running entry and hands each search its rows'
   outputs; an entry that finishes leaves the batch and its future resolves at once.

The admission rule is the only difference between the modes: "continuous" admits at any
step, "request" only into an empty batch after collecting up to `max_requests` entries or
`wait_ms` (then runs them to completion), "none" one entry at a time.

The batcher knows the engine only by its two calls, `encode(list of id lists)` and
`decode_step(DecoderState)`, and nothing of HTTP. An exception in a step fails the entries
of that step (their futures get it) and the loop goes on; nothing accepted is left without
an answer, closing included.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.decoding import Hypothesis, Search
from service.engine import DecoderState, EncodedSource, StepOutput

log = logging.getLogger(__name__)

MODES = ("continuous", "request", "none")


class QueueFull(Exception):
    """The waiting queue is full, or the batcher no longer accepts work."""


class EngineLike(Protocol):
    def encode(self, batch: list[list[int]]) -> list[EncodedSource]: ...

    def decode_step(self, state: DecoderState) -> StepOutput: ...


@dataclass
class Result:
    """What an entry's future resolves to."""

    hypotheses: list[Hypothesis]  # best first
    stop_reason: str
    queue_ms: float
    decode_ms: float


@dataclass(eq=False)
class Entry:
    """One request in the scheduler. Times are time.monotonic()."""

    src_ids: list[int]
    search: Search
    deadline: float | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    source: EncodedSource | None = None
    first_row: int = 0  # its block of search.reserved_rows rows in the step
    # for each live row, the row of the last step's output it continues (-1: fresh)
    origin: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    cancelled: bool = False

    def __post_init__(self) -> None:
        # a waiter that cancels the future cancels the entry: the batcher, which asks every
        # entry at every step, then reads a flag instead of taking the future's lock
        self.future.add_done_callback(lambda future: self.cancel() if future.cancelled() else None)

    def cancel(self) -> None:
        """Ask for the entry to stop; its rows are freed at the next step."""
        self.cancelled = True

    def interruption(self, now: float) -> str | None:
        if self.cancelled:
            return "cancelled"
        if self.deadline is not None and now >= self.deadline:
            return "deadline"
        return None


def lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux: each thread has its own); elsewhere,
    or without the right, nothing."""
    if nice > 0 and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as e:
            log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, e)


def _resolve(entry: Entry, *, error: BaseException | None = None) -> None:
    """Set the entry's future (once) from its search, or to an error."""
    now = time.monotonic()
    start = entry.started_at if entry.started_at is not None else now
    try:
        if error is not None:
            entry.future.set_exception(error)
        else:
            search = entry.search
            result = Result(search.results(), search.stop_reason, (start - entry.queued_at) * 1e3, (now - start) * 1e3)
            entry.future.set_result(result)
    except InvalidStateError:  # the waiter cancelled the future itself: nobody listens
        pass


class RowLayout:
    """Which entry holds each row of the step. An entry keeps one block of reserved rows from
    start to finish, so the engine rewrites a row's source only when it changes hands. A
    finished entry leaves a free block that the next entry to fit takes; free rows are decoded
    as junk until then, and the layout is compacted when a quarter of it is free."""

    def __init__(self) -> None:
        self.owners: list[Entry | None] = []

    def place(self, entry: Entry) -> None:
        k, run = entry.search.reserved_rows, 0
        for i, owner in enumerate(self.owners):
            run = run + 1 if owner is None else 0
            if run == k:
                entry.first_row = i - k + 1
                break
        else:
            entry.first_row = len(self.owners) - run
            self.owners.extend([None] * (k - run))
        self.owners[entry.first_row : entry.first_row + k] = [entry] * k

    def release(self, entry: Entry) -> None:
        start = entry.first_row
        self.owners[start : start + entry.search.reserved_rows] = [None] * entry.search.reserved_rows
        while self.owners and self.owners[-1] is None:
            self.owners.pop()

    def compact(self) -> None:
        free = self.owners.count(None)
        if free and 4 * free >= len(self.owners):
            entries = list(dict.fromkeys(e for e in self.owners if e is not None))
            self.owners = []
            for entry in entries:
                self.place(entry)


class Batcher:
    """The scheduler thread and its bounded waiting queue.

    Args:
        engine: anything with `encode` and `decode_step`.
        mode: "continuous", "request" or "none".
        max_rows: row budget of one step (sum of the entries' reserved rows).
        max_tokens: token budget of one step (rows x longest source).
        max_requests: request mode: entries run together at most.
        wait_ms: request mode: how long to collect entries for a batch.
        queue_size: waiting entries at most; `submit` raises QueueFull beyond.
        nice: added to the scheduler thread's niceness (Linux), so that on a busy machine the
            event loop (admission, refusals, answers) runs before more decoding does.
    """

    def __init__(
        self,
        engine: EngineLike,
        *,
        mode: str = "continuous",
        max_rows: int = 64,
        max_tokens: int = 8192,
        max_requests: int = 32,
        wait_ms: float = 5.0,
        queue_size: int = 256,
        nice: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"batching mode must be one of {MODES}, got {mode!r}")
        self.engine = engine
        self.mode = mode
        self.max_rows, self.max_tokens = max_rows, max_tokens
        self.max_requests, self.wait_s = max_requests, wait_ms / 1e3
        self.queue_size = queue_size
        self.nice = nice
        self._queue: deque[Entry] = deque()
        self._reserved = 0  # places taken by requests being encoded
        self._active: list[Entry] = []
        self._starting: list[Entry] = []  # admitted, being encoded
        self._layout = RowLayout()
        self._last: StepOutput | None = None
        self._cond = threading.Condition()
        self._accepting = True
        self._abort = False
        self.counters = {"steps": 0, "rows_per_step": 0, "tokens_generated": 0, "entries_done": 0, "errors": 0}
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    # The caller's side (any thread).

    def submit(
        self,
        src_ids: list[int],
        search: Search,
        deadline: float | None = None,
        source: EncodedSource | None = None,
        reserved: bool = False,
    ) -> Entry:
        """Queue a request; raises QueueFull at once when the queue is full or closed. A source
        the caller already encoded (`engine.encode`, on a thread of its own) is used as it is;
        otherwise the entry is encoded when admitted. `reserved`: the caller holds a place
        taken with `reserve`, which this uses up (or gives back, when closed)."""
        entry = Entry(list(src_ids), search, deadline, source=source)
        with self._cond:
            if reserved:
                self._reserved -= 1
                if not self._accepting:
                    raise QueueFull("the batcher is shutting down")
            else:
                self.check_room()
            self._queue.append(entry)
            self._cond.notify()
        return entry

    def cancel(self, entry: Entry) -> None:
        entry.cancel()
        with self._cond:
            self._cond.notify()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def _refusal(self) -> str | None:
        """Why `submit` would raise QueueFull now, or None."""
        if not self._accepting:
            return "the batcher is shutting down"
        if len(self._queue) + self._reserved >= self.queue_size:
            return f"the waiting queue is full ({self.queue_size} entries)"
        return None

    @property
    def full(self) -> bool:
        """Whether `submit` would raise QueueFull now (read without the lock: a hint, not a promise)."""
        return self._refusal() is not None

    def check_room(self) -> None:
        """Raise QueueFull, saying why, when `submit` would."""
        if why := self._refusal():
            raise QueueFull(why)

    def reserve(self) -> None:
        """Take a place in the waiting queue for a request still being prepared (encoded), or
        raise QueueFull: what waits to be encoded counts against the bound like what waits to
        be decoded. Used up by `submit(..., reserved=True)`, or given back with `unreserve`."""
        with self._cond:
            self.check_room()
            self._reserved += 1

    def unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1

    def stats(self) -> dict[str, Any]:
        with self._cond:
            active = list(self._active)
            depth = len(self._queue) + self._reserved
        return {
            "mode": self.mode,
            "queue_depth": depth,
            "active_entries": len(active),
            "active_rows": sum(e.search.rows for e in active),
            **self.counters,
        }

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, let accepted entries finish for up to drain_timeout seconds, then
        fail the rest with QueueFull and stop the thread."""
        with self._cond:
            self._accepting = False
            self._cond.notify()
        end = time.monotonic() + drain_timeout
        while time.monotonic() < end and self._thread.is_alive():
            with self._cond:
                if not self._queue and not self._active and not self._starting:
                    break
            time.sleep(0.005)
        with self._cond:
            self._abort = True
            self._cond.notify()
        self._thread.join()

    # The scheduler thread.

    def _loop(self) -> None:
        lower_priority(self.nice)
        while True:
            admitted, dropped, stop = self._next()
            for entry, reason in dropped:
                entry.search.stop(reason)
                self._done(entry)
            if stop:
                break
            try:
                if admitted:
                    self._start(admitted)
                self._interrupt_running()
                if self._active:
                    self._step()
            except Exception as exc:  # a bug or an engine failure: fail this step's entries only
                log.exception("batcher step failed; failing %d entries", len(self._active) + len(self._starting))
                self._fail(self._active + self._starting, exc)
        self._fail(list(self._queue) + self._active, QueueFull("the service is shutting down"))
        self._queue.clear()

    def _next(self) -> tuple[list[Entry], list[tuple[Entry, str]], bool]:
        """Wait for work; return the entries to admit, the waiting ones to drop and whether
        to stop."""
        with self._cond:
            while True:
                if self._abort:
                    return [], [], True
                now = time.monotonic()
                dropped = []
                for entry in list(self._queue):
                    reason = entry.interruption(now)
                    if reason:
                        self._queue.remove(entry)
                        dropped.append((entry, reason))
                admitted, wait = self._admit(now)
                self._starting = admitted
                if admitted or dropped or self._active:
                    return admitted, dropped, False
                self._cond.wait(timeout=wait)

    def _admit(self, now: float) -> tuple[list[Entry], float | None]:
        """Pop the waiting entries that may join now, by the mode's rule; also how long to
        wait before asking again when none may (None: until notified)."""
        if not self._queue or (self.mode != "continuous" and self._active):
            return [], None
        limit = len(self._queue)
        if self.mode == "none":
            limit = 1
        elif self.mode == "request":
            waited = now - self._queue[0].queued_at
            if len(self._queue) < self.max_requests and waited < self.wait_s:
                return [], self.wait_s - waited
            limit = self.max_requests
        rows = sum(e.search.reserved_rows for e in self._active)
        longest = max((len(e.src_ids) for e in self._active), default=0)
        admitted: list[Entry] = []
        while self._queue and len(admitted) < limit:
            entry = self._queue[0]
            r, s = rows + entry.search.reserved_rows, max(longest, len(entry.src_ids))
            if (self._active or admitted) and (r > self.max_rows or r * s > self.max_tokens):
                break
            admitted.append(self._queue.popleft())
            rows, longest = r, s
        return admitted, None

    def _start(self, entries: list[Entry]) -> None:
        """Encode the admitted entries that are not encoded yet, together, and add them all to
        the running batch."""
        todo = [e for e in entries if e.source is None]
        try:
            sources = self.engine.encode([e.src_ids for e in todo]) if todo else []
        except Exception as exc:
            log.exception("encoding %d entries failed", len(todo))
            self._fail(entries, exc)
            return
        for entry, source in zip(todo, sources, strict=True):
            entry.source = source
        now = time.monotonic()
        for entry in entries:
            entry.started_at = now
            entry.origin = np.full(entry.search.rows, -1, dtype=np.int64)
            self._layout.place(entry)
        with self._cond:
            self._active.extend(entries)
            self._starting = []

    def _interrupt_running(self) -> None:
        now = time.monotonic()
        for entry in list(self._active):
            reason = entry.interruption(now)
            if reason:
                entry.search.stop(reason)
                self._remove(entry)
                self._done(entry)

    def _step(self) -> None:
        """One decoder step: every running entry's live rows, in its block of the layout."""
        self._layout.compact()
        R = len(self._layout.owners)
        tokens = np.zeros(R, dtype=np.int64)  # (R,) free rows read PAD
        origin = np.full(R, -1, dtype=np.int64)  # (R,)
        sources: list[EncodedSource | None] = [None] * R
        active = list(self._active)
        for e in active:
            first, n = e.first_row, e.search.rows
            sources[first : first + e.search.reserved_rows] = [e.source] * e.search.reserved_rows
            tokens[first : first + n] = e.search.prev_tokens()
            origin[first : first + n] = e.origin
        candidates = max(e.search.candidates for e in active)
        out = self.engine.decode_step(DecoderState(tokens, sources, origin, self._last, candidates))
        self._last = out
        self.counters["steps"] += 1
        self.counters["rows_per_step"] = R
        self.counters["tokens_generated"] += sum(e.search.rows for e in active)
        for entry in active:
            first, n = entry.first_row, entry.search.rows
            rows = slice(first, first + n)
            length = entry.source.length  # type: ignore[union-attr]
            try:
                parents = entry.search.advance(
                    out.topk_log_probs[rows], out.topk_ids[rows], np.ascontiguousarray(out.attention[rows, :length])
                )
            except Exception as exc:
                log.exception("search failed")
                self._fail([entry], exc)
                continue
            if entry.search.done:
                self._remove(entry)
                self._done(entry)
            else:
                entry.origin = parents + first

    def _remove(self, entry: Entry) -> None:
        with self._cond:
            if entry in self._active:
                self._active.remove(entry)
            if entry in self._starting:
                self._starting.remove(entry)
            if entry.first_row < len(self._layout.owners) and self._layout.owners[entry.first_row] is entry:
                self._layout.release(entry)
            if not self._active:
                self._last = None

    def _done(self, entry: Entry) -> None:
        self.counters["entries_done"] += 1
        _resolve(entry)

    def _fail(self, entries: list[Entry], exc: BaseException) -> None:
        for entry in list(entries):
            self._remove(entry)
            self.counters["errors"] += 1
            _resolve(entry, error=exc)
