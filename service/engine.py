"""The onnxruntime engine: owns the two sessions and offers exactly two calls.

    sources = engine.encode([[ids...], [ids...]])       # one EncodedSource per sentence
    out = engine.decode_step(DecoderState(...))          # one decoder step for a set of rows

The caller (the batcher) describes each step row by row: the previous token of each row, the
source it reads (None for a free row, whose output nobody reads) and which row of the previous
step's output it continues (`origin`). Rows keep their place from step to step, so the engine
keeps the source tensors (memory, keys, mask) in buffers and rewrites only the rows whose
source changed; the hidden state is passed on as it is when every row continues itself, and
gathered by `origin` otherwise (beam back-pointers, rows joining).

Providers: CUDA when the settings ask for it (auto or cuda) and onnxruntime offers it, CPU
otherwise. On CUDA the decoder runs with IO binding: the source tensors stay on the device
until a row's source changes, the hidden state stays there while rows continue themselves, and
the (rows, V) log-probs never leave it; only the top-k and the attention rows come to the host.
A gather of the small (L, R, D) hidden state goes through the host.

Shapes: R rows, S source length (the longest in the step, rounded up), 2H memory width,
K keys width, L decoder layers, D decoder hidden, V target vocabulary, k top-k width.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from service.bundle import Bundle, check_graph

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# what a CPU step fetches: the (R, V) log-probs are computed for the top-k but not copied out
STEP_OUTPUTS = ["hidden_out", "attention", "topk_log_probs", "topk_ids"]


@dataclass(eq=False)
class EncodedSource:
    """One encoded sentence, on the host. Rows of a beam share one of these."""

    memory: np.ndarray  # (S, 2H)
    keys: np.ndarray  # (S, K)
    hidden: np.ndarray  # (L, D) decoder's initial state

    @property
    def length(self) -> int:
        return self.memory.shape[0]


@dataclass(eq=False)
class DecoderState:
    """One decoder step, described row by row.

    Args:
        tokens: (R,) int64 previous token of each row (BOS for a fresh row, any id for a free one).
        sources: the source each row reads; None for a free row (its outputs are junk).
        origin: (R,) int64 the row of `previous` whose hidden state each row continues;
            -1 for a fresh row, which starts from its source's initial state.
        previous: the output of the step before, None at the first.
        candidates: the top-k width any row needs (greedy 1, a beam of b 2b); 0 for the
            widest the graph gives. A graph exported without the "k" input always gives its widest.
    """

    tokens: np.ndarray
    sources: list[EncodedSource | None]
    origin: np.ndarray
    previous: StepOutput | None = None
    candidates: int = 0


class SourceRows:
    """Host buffers (capacity, S, .) with each row's source, zero-padded; a row is rewritten
    only when a different source moves into it. Free rows keep whatever they held."""

    def __init__(self, capacity: int, length: int, memory_dim: int, keys_dim: int) -> None:
        self.memory = np.zeros((capacity, length, memory_dim), dtype=np.float32)  # (C, S, 2H)
        self.keys = np.zeros((capacity, length, keys_dim), dtype=np.float32)  # (C, S, K)
        self.mask = np.zeros((capacity, length), dtype=bool)  # (C, S)
        self.mask[:, 0] = True  # a row that never held a source still attends somewhere
        self.content: list[EncodedSource | None] = [None] * capacity
        self.device: dict[str, Any] | None = None  # views on the device, while unchanged

    def fits(self, rows: int, length: int) -> bool:
        S = self.mask.shape[1]
        return rows <= len(self.content) and length <= S and S <= max(2 * length, length + 32)

    def write(self, sources: list[EncodedSource | None]) -> bool:
        """Put each row's source in place; True when a row changed."""
        changed = False
        for i, src in enumerate(sources):
            if src is not None and self.content[i] is not src:
                n = src.length
                self.memory[i, :n], self.memory[i, n:] = src.memory, 0.0
                self.keys[i, :n], self.keys[i, n:] = src.keys, 0.0
                self.mask[i, :n], self.mask[i, n:] = True, False
                self.content[i] = src
                changed = True
        return changed

    def views(self, rows: int) -> dict[str, np.ndarray]:
        """The first `rows` rows, contiguous."""
        return {"memory": self.memory[:rows], "keys": self.keys[:rows], "src_mask": self.mask[:rows]}


@dataclass(eq=False)
class StepOutput:
    """What one step returns. `hidden` stays wherever the engine keeps it (numpy on CPU, an
    OrtValue on the device with IO binding); callers read only the top-k and the attention,
    and hand the whole object back as `previous`."""

    topk_log_probs: np.ndarray  # (R, k) float32, best first
    topk_ids: np.ndarray  # (R, k) int64
    attention: np.ndarray  # (R, S) float32, rows sum to 1, exactly 0 past each row's source
    hidden: Any  # (L, R, D)
    source_rows: SourceRows | None = field(default=None, repr=False)


def choose_providers(device: str, available: list[str], device_id: int = 0) -> list[Any]:
    """The providers to ask onnxruntime for: CUDA first when asked for and available."""
    if device in ("auto", "cuda") and CUDA in available:
        return [(CUDA, {"device_id": device_id}), CPU]
    if device == "cuda":
        log.warning("CUDA was asked for but onnxruntime offers only %s; running on CPU", available)
    return [CPU]


def auto_threads(cores: int | None = None) -> int:
    """Intra-op threads when the settings say 0: one per core but one, which the event loop,
    the batcher's Python and the HTTP work need (at least 1). Measured on 2 cores over HTTP at
    64 clients: 1 thread 137.9 sentences/s, 2 threads 111.9 (docs/PERFORMANCE.md)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """The engine's session options: all graph optimizations, sequential, `threads` intra-op
    threads that spin between runs or sleep (see Engine)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


# one encoder run: sentences at most, and its padded ids over its real ids at most
ENCODE_GROUP = 32
ENCODE_PADDING = 1.25


def length_groups(lengths: list[int], most: int = ENCODE_GROUP, padding: float = ENCODE_PADDING) -> list[list[int]]:
    """Indices of `lengths` in groups to encode together: by length, shortest first, each group
    of at most `most` whose padding to its longest adds at most `padding` - 1 to its ids.

    The encoder's cost follows the padded length of its run: with one onnxruntime thread, a test
    sentence cost 1.58 to 1.61 ms alone, 1.62 to 1.86 in runs of 64 as they came, and 0.93 to
    0.98 when those 64 ran by length (docs/PERFORMANCE.md, fourth session).
    """
    groups: list[list[int]] = []
    group: list[int] = []
    ids = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = lengths[i]  # the longest of the group so far
        if group and (len(group) == most or (len(group) + 1) * n > padding * (ids + n)):
            groups.append(group)
            group, ids = [], 0
        group.append(i)
        ids += n
    if group:
        groups.append(group)
    return groups


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Engine:
    """ORT sessions for one bundle; `encode` and `decode_step` are its whole interface.

    Args:
        bundle: a validated bundle.
        device: "auto", "cpu" or "cuda" (Settings.device).
        threads: intra-op threads of the decoder, 0 for `auto_threads()`.
        encoder_threads: intra-op threads of the encoder; 0 for the same as the decoder's. When
            encoding runs on a thread of its own beside the decoder (the service), 1: two pools
            that together want more threads than there are cores stall each other (on 2 cores,
            2 + 2 threads encoded ahead 70 greedy sentences/s against 604 for 2 + 1 in the
            engine benchmark; docs/PERFORMANCE.md).
        spinning: let idle intra-op threads busy-wait for the next run (onnxruntime's default).
            Off, they sleep, and the batcher's Python between steps gets the cores they would
            burn: faster on 2 cores, batch 1 and continuous (docs/PERFORMANCE.md).
        device_id: the CUDA device.
        io_binding: run the decoder with IO binding; None means on CUDA only. Forcing it on
            CPU runs the device code path with host memory (the tests do).
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        threads: int = 0,
        encoder_threads: int = 0,
        spinning: bool = False,
        device_id: int = 0,
        io_binding: bool | None = None,
    ) -> None:
        self.bundle = bundle
        threads = threads or auto_threads()
        encoder_threads = encoder_threads or threads
        providers = choose_providers(device, ort.get_available_providers(), device_id)

        def session(key: str, intra_op: int) -> ort.InferenceSession:
            opts = session_options(intra_op, spinning)
            return ort.InferenceSession(str(bundle.file(key)), opts, providers=providers)

        self.encoder = session("encoder", encoder_threads)
        self.decoder = session("decoder_step", threads)
        for key, sess in (("encoder", self.encoder), ("decoder_step", self.decoder)):
            check_graph(bundle, key, sess.get_inputs(), sess.get_outputs())
        self.provider = self.decoder.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.device_id = device_id
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        self.topk = int(bundle.sizes["topk"])  # the widest top-k of the graph
        self.topk_input = "k" in bundle.graph_io("decoder_step", "inputs")
        log.info(
            "onnxruntime %s: %s%s, intra-op threads %s decoder, %s encoder (%s), IO binding %s",
            ort.__version__,
            self.provider,
            f" (device {device_id})" if self.device == "cuda" else "",
            threads,
            encoder_threads,
            "spinning" if spinning else "not spinning",
            "on" if self.io_binding else "off",
        )

    def encode(self, batch: list[list[int]]) -> list[EncodedSource]:
        """Encode source id lists (each ending in EOS); one EncodedSource each, in order. The
        encoder runs once per group of `length_groups`, so that a batch of mixed lengths is not
        padded to its longest."""
        found: dict[int, EncodedSource] = {}
        for group in length_groups([len(s) for s in batch]):
            found.update(zip(group, self._encode_run([batch[i] for i in group]), strict=True))
        return [found[i] for i in range(len(batch))]

    def _encode_run(self, batch: list[list[int]]) -> list[EncodedSource]:
        """One run of the encoder graph over `batch`, padded to its longest."""
        lengths = np.array([len(s) for s in batch], dtype=np.int64)  # (B,)
        ids = np.full((len(batch), int(lengths.max())), self.bundle.pad_id, dtype=np.int64)  # (B, S)
        for i, s in enumerate(batch):
            ids[i, : len(s)] = s
        memory, keys, _, hidden = self.encoder.run(None, {"src_ids": ids, "src_lengths": lengths})
        return [
            EncodedSource(memory[i, :n].copy(), keys[i, :n].copy(), hidden[:, i].copy())
            for i, n in enumerate(lengths.tolist())
        ]

    def decode_step(self, state: DecoderState) -> StepOutput:
        """Run one decoder step for the rows of `state`."""
        rows = self._source_rows(state)
        hidden = self._hidden(state)
        tokens = np.ascontiguousarray(state.tokens, dtype=np.int64)
        R = len(tokens)
        width = self.topk_feed(state.candidates)
        if self.io_binding:
            return self._run_bound(tokens, hidden, rows, R, width)
        feeds = {"prev_tokens": tokens, "hidden": hidden, **rows.views(R), **width}
        hidden_out, attention, top_lp, top_ids = self.decoder.run(STEP_OUTPUTS, feeds)
        return StepOutput(top_lp, top_ids, attention, hidden_out, rows)

    def topk_feed(self, candidates: int) -> dict[str, np.ndarray]:
        """The "k" feed: the candidates asked for, within 1..topk; none for a graph without it."""
        if not self.topk_input:
            return {}
        k = self.topk if candidates <= 0 else min(candidates, self.topk)
        return {"k": np.array([k], dtype=np.int64)}

    def _source_rows(self, state: DecoderState) -> SourceRows:
        """The previous step's buffers with the changed rows rewritten, or new buffers when
        the rows no longer fit (more rows, a longer source, a much shorter longest one)."""
        live = [s for s in state.sources if s is not None]
        R, S = len(state.sources), max(s.length for s in live)
        prev = state.previous.source_rows if state.previous is not None else None
        if prev is None or not prev.fits(R, S):
            first = live[0]
            capacity = max(_round_up(R, 16), len(prev.content) if prev is not None else 0)
            prev = SourceRows(capacity, _round_up(S, 8), first.memory.shape[1], first.keys.shape[1])
        if prev.write(state.sources):
            prev.device = None
        return prev

    def _hidden(self, state: DecoderState) -> Any:
        """(L, R, D) hidden state of the rows: the previous output as it is when every row
        continues itself (free rows may hold anything), else gathered by origin with fresh
        rows from their sources and free rows zero."""
        prev, origin = state.previous, np.asarray(state.origin, dtype=np.int64)
        free = np.array([s is None for s in state.sources])
        R = len(origin)
        if prev is not None and R == len(prev.topk_ids) and ((origin == np.arange(R)) | (free & (origin < 0))).all():
            return prev.hidden
        fresh = (origin < 0) & ~free
        kept = origin >= 0
        L, D = next(s for s in state.sources if s is not None).hidden.shape
        hidden = np.zeros((L, R, D), dtype=np.float32)
        if kept.any():
            assert prev is not None, "rows continue a previous step that was not given"
            before = prev.hidden.numpy() if isinstance(prev.hidden, ort.OrtValue) else prev.hidden
            hidden[:, kept] = before[:, origin[kept]]
        if fresh.any():
            hidden[:, fresh] = np.stack(
                [s.hidden for s, f in zip(state.sources, fresh, strict=True) if f and s], axis=1
            )
        return self._to_device(hidden) if self.io_binding else hidden

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)

    def _run_bound(
        self, tokens: np.ndarray, hidden: Any, rows: SourceRows, R: int, width: dict[str, np.ndarray]
    ) -> StepOutput:
        """The decoder step with IO binding: the source tensors are uploaded only when a row
        changed, the hidden state and the log-probs stay on the device, top-k and attention
        come back."""
        if rows.device is None or rows.device["memory"].shape()[0] != R:
            rows.device = {name: self._to_device(view) for name, view in rows.views(R).items()}
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("prev_tokens", tokens)
        for name, value in width.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_input("hidden", hidden)
        for name, value in rows.device.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("log_probs", self.device, self.device_id)
        binding.bind_output("hidden_out", self.device, self.device_id)
        for name in ("attention", "topk_log_probs", "topk_ids"):
            binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        _, hidden_out, attention, top_lp, top_ids = binding.get_outputs()
        return StepOutput(top_lp.numpy(), top_ids.numpy(), attention.numpy(), hidden_out, rows)
