"""Decoding strategies for one sentence: greedy and beam search behind one interface.

A search never runs the model. Whoever drives it (the batcher, or a test with a table of
log-probs) asks it for the previous token of each live row, runs a decoder step for those
rows, and hands back the step's top-k and attention rows; the search answers which row of
that step each of its next rows continues (its back-pointers, `parents`):

    while not search.done:
        out = step(search.prev_tokens())                   # (rows,) -> top-k and attention
        parents = search.advance(out.topk_log_probs, out.topk_ids, out.attention)
        # ... reorder the decoder state by parents ...
    best = search.results()[0]

The beam rules are those of the PyTorch reference `model.decode.beam`, so both give the same
hypotheses: every live hypothesis offers its top 2k continuations; the 2k best overall,
ordered by (-log-prob, row, rank), are walked in order: an EOS among the first k finishes its
hypothesis, other tokens fill the k live slots. The search stops with k finished hypotheses,
when the n-best finished cannot be beaten (best live log-prob / lp(max_length) bounds every
live one), or at the maximum length, where the live ones finish with "max_length".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

STOP_REASONS = ("eos", "max_length", "deadline", "cancelled")


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha; |Y| counts EOS."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """A finished output: ids (EOS included when reached), the sum of its log-probs, that sum
    divided by the length penalty, why it ended, and its attention rows (T, S), one per id."""

    tokens: list[int]
    logprob: float
    score: float
    stop_reason: str
    attention: np.ndarray


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


class Search(ABC):
    """One sentence's search. `rows` live rows take part in the next step; `reserved_rows` is
    the most it will ever use (what a batch budget counts)."""

    reserved_rows: int
    candidates: int  # the top-k width `advance` reads per row

    def __init__(self, *, bos_id: int, eos_id: int, max_length: int, length_penalty: float) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.bos_id, self.eos_id = bos_id, eos_id
        self.max_length = max_length
        self.alpha = length_penalty
        self.done = False
        self.interrupted: str | None = None  # "deadline" or "cancelled" when stopped from outside
        self.steps = 0

    @property
    @abstractmethod
    def rows(self) -> int:
        """Live rows for the next step (0 once done)."""

    @abstractmethod
    def prev_tokens(self) -> np.ndarray:
        """(rows,) int64 the last token of each live row, BOS at the first step."""

    @abstractmethod
    def advance(self, topk_log_probs: np.ndarray, topk_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        """Take one step's outputs for the live rows: topk_log_probs (rows, k) best first,
        topk_ids (rows, k), attention (rows, S). Returns (rows',) int64: for each row of the
        next step, the row of this step it continues (empty once done)."""

    @abstractmethod
    def _interrupt(self, reason: str) -> None:
        """Finish the live hypotheses with `reason`."""

    @abstractmethod
    def results(self) -> list[Hypothesis]:
        """The finished hypotheses to return, best first."""

    def stop(self, reason: str) -> None:
        """Stop from outside (deadline, cancelled): live hypotheses finish with `reason`."""
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}")
        if not self.done:
            self.interrupted = reason
            self._interrupt(reason)
            self.done = True

    @property
    def stop_reason(self) -> str:
        """Why the search ended: the interruption, else the best hypothesis's reason."""
        if self.interrupted:
            return self.interrupted
        best = self.results()
        return best[0].stop_reason if best else "max_length"

    def _hypothesis(self, tokens: list[int], logprob: float, reason: str, rows: list[np.ndarray]) -> Hypothesis:
        score = logprob / length_penalty(len(tokens), self.alpha)
        return Hypothesis(tokens, logprob, score, reason, _stack(rows))


class GreedySearch(Search):
    """The most likely next token at each step; one row."""

    reserved_rows = 1
    candidates = 1

    def __init__(self, *, bos_id: int, eos_id: int, max_length: int, length_penalty: float = 0.6) -> None:
        super().__init__(bos_id=bos_id, eos_id=eos_id, max_length=max_length, length_penalty=length_penalty)
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.attention: list[np.ndarray] = []
        self.result: Hypothesis | None = None

    @property
    def rows(self) -> int:
        return 0 if self.done else 1

    def prev_tokens(self) -> np.ndarray:
        return np.array([self.tokens[-1] if self.tokens else self.bos_id], dtype=np.int64)

    def advance(self, topk_log_probs: np.ndarray, topk_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        token = int(topk_ids[0, 0])
        self.tokens.append(token)
        self.logprob += float(topk_log_probs[0, 0])
        self.attention.append(attention[0])
        self.steps += 1
        if token == self.eos_id:
            self._finish("eos")
        elif self.steps >= self.max_length:
            self._finish("max_length")
        return np.empty(0, dtype=np.int64) if self.done else np.zeros(1, dtype=np.int64)

    def _finish(self, reason: str) -> None:
        self.result = self._hypothesis(self.tokens, self.logprob, reason, self.attention)
        self.done = True

    def _interrupt(self, reason: str) -> None:
        self._finish(reason)

    def results(self) -> list[Hypothesis]:
        return [self.result] if self.result else []


class BeamSearch(Search):
    """Beam search with GNMT length normalization and back-pointers.

    Args:
        beam_size: k, live hypotheses per step (1-16 with the graph's top-32).
        n_best: how many finished hypotheses `results` returns (<= beam_size).
        length_penalty: alpha of ((5 + |Y|) / 6) ** alpha.

    Per step t it keeps the attention rows of its live rows (n_t, S) and, for each row of
    step t + 1, its token and its parent row at step t; a hypothesis's tokens and attention
    rows are read back along those pointers when it finishes.
    """

    def __init__(
        self,
        *,
        bos_id: int,
        eos_id: int,
        max_length: int,
        beam_size: int,
        n_best: int = 1,
        length_penalty: float = 0.6,
    ) -> None:
        super().__init__(bos_id=bos_id, eos_id=eos_id, max_length=max_length, length_penalty=length_penalty)
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
        self.k, self.n_best = beam_size, n_best
        self.reserved_rows = beam_size
        self.candidates = 2 * beam_size
        self._scores = np.zeros(1)  # (n,) float64 log-prob of each live hypothesis
        self._last = np.array([bos_id], dtype=np.int64)  # (n,) its last token
        self._attn: list[np.ndarray] = []  # step t: (n_t, S)
        self._parent: list[np.ndarray] = []  # step t: (n_{t+1},) row at step t of each row of t + 1
        self._token: list[np.ndarray] = []  # step t: (n_{t+1},) token each row of t + 1 ends with
        self.finished: list[Hypothesis] = []  # in finishing order

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self._scores)

    def prev_tokens(self) -> np.ndarray:
        return self._last

    def _path(self, t: int, row: int) -> tuple[list[int], list[np.ndarray]]:
        """Tokens and attention rows of live row `row` at step t (t of each)."""
        tokens, rows = [], []
        for s in range(t - 1, -1, -1):
            tokens.append(int(self._token[s][row]))
            row = int(self._parent[s][row])
            rows.append(self._attn[s][row])
        return tokens[::-1], rows[::-1]

    def _finish(self, row: int, token: int, logprob: float, reason: str) -> None:
        t = len(self._attn) - 1
        tokens, rows = self._path(t, row)
        self.finished.append(self._hypothesis(tokens + [token], logprob, reason, rows + [self._attn[t][row]]))

    def advance(self, topk_log_probs: np.ndarray, topk_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        k = self.k
        width = min(2 * k, topk_log_probs.shape[1])
        cand = self._scores[:, None] + topk_log_probs[:, :width].astype(np.float64)  # (n, 2k)
        flat = cand.ravel()
        order = np.argsort(-flat, kind="stable")[: 2 * k]  # ties: lower row, then lower rank
        rows, ranks = np.divmod(order, width)
        tokens = topk_ids[rows, ranks]
        self._attn.append(attention)
        self.steps += 1
        parents: list[int] = []
        next_tokens: list[int] = []
        next_scores: list[float] = []
        for rank, (row, token, score) in enumerate(
            zip(rows.tolist(), tokens.tolist(), flat[order].tolist(), strict=True)
        ):
            if token == self.eos_id:
                if rank < k:
                    self._finish(row, token, score, "eos")
            elif len(parents) < k:
                parents.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if self.steps >= self.max_length:
            for row, token, score in zip(parents, next_tokens, next_scores, strict=True):
                self._finish(row, token, score, "max_length")
            parents = []
        if not parents or len(self.finished) >= k or self._cannot_improve(max(next_scores)):
            self.done = True
            return np.empty(0, dtype=np.int64)
        self._parent.append(np.array(parents, dtype=np.int64))
        self._token.append(np.array(next_tokens, dtype=np.int64))
        self._scores = np.array(next_scores)
        self._last = self._token[-1]
        return self._parent[-1]

    def _cannot_improve(self, best_live: float) -> bool:
        """The n-best finished scores beat any live hypothesis's best possible score."""
        if len(self.finished) < self.n_best:
            return False
        best = sorted((h.score for h in self.finished), reverse=True)
        return best[self.n_best - 1] >= best_live / length_penalty(self.max_length, self.alpha)

    def _interrupt(self, reason: str) -> None:
        t = len(self._attn)
        for row, score in enumerate(self._scores.tolist()):
            tokens, rows = self._path(t, row)
            self.finished.append(self._hypothesis(tokens, score, reason, rows))

    def results(self) -> list[Hypothesis]:
        order = sorted(range(len(self.finished)), key=lambda i: (-self.finished[i].score, i))
        return [self.finished[i] for i in order[: self.n_best]]
