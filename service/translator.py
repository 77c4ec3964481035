"""The facade the HTTP layer uses: text in, a `Translation` out.

It loads and validates the bundle, opens the engine, starts the batcher thread, and turns a
request into an entry (source ids + a search) and the entry's result into a `Translation`
(detokenized text, subword tokens, scores, attention per output subword and merged to words).

`translate` tokenizes and encodes each text on an encoder thread of its own before queueing it,
so the batcher's thread spends its time on decoder steps while the encoder runs beside it (the
encoder was a quarter of that thread's time under load, measured with py-spy). Encoding is per
text, so that each text joins the decoder as soon as it is encoded. Encoding the texts that wait
for the encoder together, by length (`Engine.encode`), spends less encoder time on each but holds
the first back until the last is done; over HTTP it gained nothing measurable here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.alignment import merge_to_words
from service.batcher import Batcher, Entry, QueueFull, Result, lower_priority
from service.bundle import check_version, load_bundle
from service.config import Settings
from service.decoding import BeamSearch, GreedySearch, Hypothesis, Search
from service.engine import EncodedSource, Engine

__all__ = ["DecodeOptions", "DeadlineExceeded", "QueueFull", "Translation", "Translator"]

log = logging.getLogger(__name__)

UNK = "<unk>"  # the surface of an id the tokenizer does not know (never, in a valid bundle)
WARMUP_TEXT = "In the beginning God created the heavens and the earth."


@dataclass
class DecodeOptions:
    strategy: Literal["greedy", "beam"] = "greedy"
    beam_size: int = 4  # ignored for greedy
    n_best: int = 1  # ignored for greedy
    length_penalty: float = 0.6
    max_length: int | None = None  # output subwords; None = the bundle's rule, always capped by settings


@dataclass
class Translation:
    text: str
    tokens: list[str]  # target subwords (surface strings, "▁" kept), "</s>" last when reached
    source_tokens: list[str]  # source subwords incl. "</s>"
    score: float  # length-normalized log-prob
    logprob: float
    stop_reason: str  # "eos" | "max_length" | "deadline" | "cancelled"
    alternatives: list[Translation] = field(default_factory=list)  # the other n-best, best first
    attention: list[list[float]] = field(default_factory=list)  # one row per output subword over source subwords
    source_words: list[str] = field(default_factory=list)
    target_words: list[str] = field(default_factory=list)
    word_attention: list[list[float]] = field(default_factory=list)  # target words x source words
    alignment: list[tuple[int, int]] = field(default_factory=list)  # (target word, source word)
    queue_ms: float = 0.0
    decode_ms: float = 0.0


class DeadlineExceeded(Exception):
    """The request's deadline passed before its translation finished."""


class Translator:
    """Bundle + engine + batcher behind `translate`.

    Args:
        settings: bundle_dir, device, threads, batching and queue policy, decoding caps.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bundle = load_bundle(settings.bundle_dir)
        check_version(self.bundle)
        self.engine = Engine(
            self.bundle,
            device=settings.device,
            threads=settings.intra_op_threads,
            encoder_threads=settings.encoder_threads,
            spinning=settings.intra_op_spinning,
            device_id=settings.cuda_device_id,
        )
        self.batcher = Batcher(
            self.engine,
            mode=settings.batching_mode,
            max_rows=settings.max_batch_rows,
            max_tokens=settings.max_batch_tokens,
            max_requests=settings.max_batch_requests,
            wait_ms=settings.batch_wait_ms,
            queue_size=settings.queue_size,
            nice=settings.worker_nice,
        )
        self.manifest: dict[str, Any] = self.bundle.manifest
        self.model_id: str = self.manifest["id"]
        self.version: str = self.manifest["version"]
        self.source_lang: str = self.manifest["source_lang"]
        self.target_lang: str = self.manifest["target_lang"]
        self._specials = frozenset(self.manifest["special_tokens"]["names"])
        self._encoder = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder", initializer=lower_priority, initargs=(settings.worker_nice,)
        )

    @property
    def accepting(self) -> bool:
        return self.batcher.accepting

    def saturated(self) -> bool:
        """The waiting queue is full: a new text would be refused."""
        return self.batcher.full

    def make_search(self, src_len: int, options: DecodeOptions) -> Search:
        """The search for a source of src_len ids (EOS included); ValueError on bad options."""
        cap = self.bundle.max_target_len(src_len)
        if options.max_length is not None:
            if options.max_length < 1:
                raise ValueError(f"max_length must be at least 1, got {options.max_length}")
            cap = min(cap, options.max_length)
        cap = min(cap, self.settings.max_output_tokens)
        common = {"bos_id": self.bundle.bos_id, "eos_id": self.bundle.eos_id, "max_length": cap}
        if options.strategy == "greedy":
            return GreedySearch(**common, length_penalty=options.length_penalty)
        if options.strategy != "beam":
            raise ValueError(f"strategy must be 'greedy' or 'beam', got {options.strategy!r}")
        largest = min(self.settings.max_beam_size, int(self.bundle.sizes["topk"]) // 2)
        if not 1 <= options.beam_size <= largest:
            raise ValueError(f"beam_size must be between 1 and {largest}, got {options.beam_size}")
        if not 1 <= options.n_best <= min(options.beam_size, self.settings.max_n_best):
            raise ValueError(f"n_best must be between 1 and beam_size ({options.beam_size}), got {options.n_best}")
        return BeamSearch(
            **common, beam_size=options.beam_size, n_best=options.n_best, length_penalty=options.length_penalty
        )

    def submit(self, text: str, options: DecodeOptions, deadline: float | None = None) -> tuple[list[int], Entry]:
        """Queue a text; the deadline defaults to settings.request_timeout_s from now."""
        src_ids = self.bundle.encode(text)
        search = self.make_search(len(src_ids), options)
        return src_ids, self.batcher.submit(src_ids, search, self._deadline(deadline))

    def _deadline(self, deadline: float | None) -> float | None:
        """The deadline given, else settings.request_timeout_s from now (none when that is 0)."""
        if deadline is None and self.settings.request_timeout_s > 0:
            return time.monotonic() + self.settings.request_timeout_s
        return deadline

    async def translate(self, text: str, options: DecodeOptions, *, deadline: float | None = None) -> Translation:
        """Translate one text. Raises QueueFull (queue full or shutting down), DeadlineExceeded
        and ValueError (bad options). A cancelled await cancels the entry."""
        self.batcher.reserve()  # a place in the queue before the encoder is spent on it
        try:
            src_ids, source = await asyncio.get_running_loop().run_in_executor(self._encoder, self._encode, text)
            search = self.make_search(len(src_ids), options)
        except BaseException:
            self.batcher.unreserve()
            raise
        entry = self.batcher.submit(src_ids, search, self._deadline(deadline), source=source, reserved=True)
        try:
            result = await asyncio.wrap_future(entry.future)
        except asyncio.CancelledError:
            self.batcher.cancel(entry)
            raise
        return self.finish(src_ids, result)

    def _encode(self, text: str) -> tuple[list[int], EncodedSource]:
        """Source ids and their encoding (the encoder thread)."""
        src_ids = self.bundle.encode(text)
        return src_ids, self.engine.encode([src_ids])[0]

    def translate_sync(self, text: str, options: DecodeOptions, *, deadline: float | None = None) -> Translation:
        """`translate` for callers outside an event loop (warmup, scripts)."""
        src_ids, entry = self.submit(text, options, deadline)
        return self.finish(src_ids, entry.future.result())

    def finish(self, src_ids: list[int], result: Result) -> Translation:
        if result.stop_reason == "deadline":
            raise DeadlineExceeded(f"deadline passed after {result.queue_ms + result.decode_ms:.0f} ms")
        source_tokens = [self.bundle.src_tokenizer.id_to_token(i) or UNK for i in src_ids]
        found = [self._translation(h, source_tokens, result) for h in result.hypotheses]
        if not found:  # stopped before the first step
            empty = Hypothesis([], 0.0, 0.0, result.stop_reason, np.zeros((0, len(src_ids)), dtype=np.float32))
            found = [self._translation(empty, source_tokens, result)]
        best = found[0]
        best.stop_reason = result.stop_reason
        best.alternatives = found[1:]
        return best

    def _translation(self, hyp: Hypothesis, source_tokens: list[str], result: Result) -> Translation:
        tokens = [self.bundle.tgt_tokenizer.id_to_token(i) or UNK for i in hyp.tokens]
        words = merge_to_words(hyp.attention, tokens, source_tokens, self._specials)
        return Translation(
            text=self.bundle.decode(hyp.tokens),
            tokens=tokens,
            source_tokens=source_tokens,
            score=hyp.score,
            logprob=hyp.logprob,
            stop_reason=hyp.stop_reason,
            attention=hyp.attention.tolist(),
            source_words=words.source_words,
            target_words=words.target_words,
            word_attention=words.attention.tolist(),
            alignment=words.alignment,
            queue_ms=result.queue_ms,
            decode_ms=result.decode_ms,
        )

    def warmup(self) -> None:
        """Decode a sentence greedily and with a small beam, so the first request is not slow."""
        started = time.perf_counter()
        self.translate_sync(WARMUP_TEXT, DecodeOptions())
        self.translate_sync(WARMUP_TEXT, DecodeOptions(strategy="beam", beam_size=2))
        log.info("warmup done in %.0f ms", (time.perf_counter() - started) * 1e3)

    def stats(self) -> dict[str, Any]:
        return {
            **self.batcher.stats(),
            "provider": self.engine.provider,
            "model_id": self.model_id,
            "version": self.version,
        }

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting (translate raises QueueFull), let in-flight work finish for up to
        drain_timeout seconds, fail what remains with QueueFull, stop the thread."""
        self.batcher.close(drain_timeout)
        # Texts still being encoded finish (milliseconds each) and are then refused by the closed
        # batcher with QueueFull, a clean 503; cancelling them would surface as a cancellation.
        self._encoder.shutdown(wait=False)
