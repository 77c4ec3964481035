"""Greedy and beam search driven directly with hand-made log-prob tables (no model)."""

import math

import numpy as np
import pytest

from service.decoding import BeamSearch, GreedySearch, length_penalty

BOS, EOS, A, B, C, D = 2, 3, 4, 5, 6, 7
V = 8


def markov_table(rows: dict[int, dict[int, float]], floor: float = 1e-6) -> np.ndarray:
    """(V, V) log-probs of the next token given the previous one."""
    table = np.full((V, V), floor)
    for prev, probs in rows.items():
        for token, p in probs.items():
            table[prev, token] = p
    table /= table.sum(1, keepdims=True)
    return np.log(table)


def drive(search, table: np.ndarray, topk: int = V):
    """The decoding loop with a table in place of the model. The attention row of a step is
    one-hot at the row's previous token, so a hypothesis's rows spell out its own path."""
    while not search.done:
        prev = search.prev_tokens()
        log_probs = table[prev]  # (rows, V)
        ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :topk]
        top = np.take_along_axis(log_probs, ids, 1).astype(np.float32)
        search.advance(top, ids, np.eye(V, dtype=np.float32)[prev])
    return search.results()


# Greedy takes A (0.6) and then ends (0.35): 0.21. B (0.4) then EOS (0.95) is 0.38.
TRAP = markov_table(
    {
        BOS: {A: 0.6, B: 0.4},
        A: {EOS: 0.35, C: 0.33, D: 0.32},
        B: {EOS: 0.95, C: 0.05},
        C: {EOS: 0.5, C: 0.3, D: 0.2},
        D: {EOS: 0.5, D: 0.3, C: 0.2},
    }
)


def greedy(table, max_length=10, alpha=0.6):
    return drive(GreedySearch(bos_id=BOS, eos_id=EOS, max_length=max_length, length_penalty=alpha), table)


def beam(table, k, n_best=1, max_length=10, alpha=0.6):
    search = BeamSearch(bos_id=BOS, eos_id=EOS, max_length=max_length, beam_size=k, n_best=n_best, length_penalty=alpha)
    return drive(search, table)


def test_greedy_follows_the_most_likely_token_into_the_trap():
    (hyp,) = greedy(TRAP)
    assert hyp.tokens == [A, EOS]
    assert hyp.logprob == pytest.approx(math.log(0.6 * 0.35), abs=1e-4)
    assert hyp.stop_reason == "eos"


def test_beam_finds_the_path_greedy_misses():
    best, second = beam(TRAP, k=2, n_best=2)
    assert best.tokens == [B, EOS]
    assert best.logprob == pytest.approx(math.log(0.4 * 0.95), abs=1e-4)
    assert best.score == pytest.approx(best.logprob / length_penalty(2, 0.6))
    assert second.tokens == [A, EOS]


def test_beam_returns_the_chosen_hypothesis_attention_through_back_pointers():
    best, second = beam(TRAP, k=2, n_best=2)
    # B was the second live row at step 1: its rows are BOS's and B's, not A's.
    assert best.attention.argmax(1).tolist() == [BOS, B]
    assert second.attention.argmax(1).tolist() == [BOS, A]


@pytest.mark.parametrize("seed", range(6))
def test_every_hypothesis_carries_the_attention_rows_of_its_own_path(seed):
    table = np.log(np.random.default_rng(seed).dirichlet(np.full(V, 0.3), size=V))
    for hyp in beam(table, k=3, n_best=3, max_length=12):
        assert hyp.attention.argmax(1).tolist() == [BOS, *hyp.tokens[:-1]]


@pytest.mark.parametrize("seed", range(6))
def test_beam_of_one_is_exactly_greedy(seed):
    table = np.log(np.random.default_rng(seed).dirichlet(np.full(V, 0.5), size=V))
    (g,) = greedy(table, max_length=9)
    (b,) = beam(table, k=1, max_length=9)
    assert (b.tokens, b.logprob, b.score, b.stop_reason) == (g.tokens, g.logprob, g.score, g.stop_reason)
    assert np.array_equal(b.attention, g.attention)


@pytest.mark.parametrize("seed", range(6))
def test_n_best_comes_sorted_by_normalized_score(seed):
    table = np.log(np.random.default_rng(seed).dirichlet(np.full(V, 0.5), size=V))
    hyps = beam(table, k=4, n_best=4, max_length=8)
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert all(h.score == pytest.approx(h.logprob / length_penalty(len(h.tokens), 0.6)) for h in hyps)


def test_search_stops_at_max_length_when_eos_never_wins():
    table = markov_table({BOS: {A: 0.9}, A: {A: 0.9}})
    (g,) = greedy(table, max_length=5)
    assert (g.tokens, g.stop_reason) == ([A] * 5, "max_length")
    hyps = beam(table, k=2, n_best=2, max_length=5)
    assert all(len(h.tokens) == 5 and h.stop_reason == "max_length" for h in hyps)


def test_finished_hypotheses_that_cannot_be_beaten_end_the_search():
    table = markov_table({BOS: {EOS: 0.9, A: 0.1}, A: {A: 0.9}})
    search = BeamSearch(bos_id=BOS, eos_id=EOS, max_length=20, beam_size=2, n_best=1)
    (best,) = drive(search, table)
    assert best.tokens == [EOS]
    assert search.steps == 1


@pytest.mark.parametrize("reason", ["deadline", "cancelled"])
def test_a_stopped_search_reports_why_and_keeps_what_it_has(reason):
    table = markov_table({BOS: {A: 0.9}, A: {A: 0.9}})
    for search in (
        GreedySearch(bos_id=BOS, eos_id=EOS, max_length=50),
        BeamSearch(bos_id=BOS, eos_id=EOS, max_length=50, beam_size=3, n_best=2),
    ):
        for _ in range(3):
            prev = search.prev_tokens()
            ids = np.argsort(-table[prev], axis=1, kind="stable")
            search.advance(np.take_along_axis(table[prev], ids, 1), ids, np.eye(V)[prev])
        search.stop(reason)
        assert search.done and search.rows == 0 and search.stop_reason == reason
        best = search.results()[0]
        assert best.tokens[:3] == [A, A, A] and len(best.attention) == 3


def test_beam_rejects_more_best_than_beams():
    with pytest.raises(ValueError, match="n_best must be between 1 and beam_size"):
        BeamSearch(bos_id=BOS, eos_id=EOS, max_length=5, beam_size=2, n_best=3)


def test_a_search_needs_room_for_one_token():
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        GreedySearch(bos_id=BOS, eos_id=EOS, max_length=0)
