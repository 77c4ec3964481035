"""Subword attention merged to words, and a hard word alignment.

Words come from the Metaspace marker: a subword that starts with "▁" begins a word, one
without continues the word before it; a special token ("</s>") is a word of its own.
A target word's row is the mean of its subwords' rows and a source word's column the sum of
its subwords' columns, so word rows still sum to 1. Each target word is aligned to the
source word it attends to most; special tokens take no part in the hard alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARK = "▁"


@dataclass
class WordAttention:
    source_words: list[str]
    target_words: list[str]
    attention: np.ndarray  # (target words, source words)
    alignment: list[tuple[int, int]]  # (target word, source word)


def group_words(tokens: list[str], specials: frozenset[str] | set[str]) -> tuple[list[str], np.ndarray]:
    """Subwords -> words and, for each subword, the index of its word (T,)."""
    words: list[str] = []
    index = np.zeros(len(tokens), dtype=np.int64)
    starts_word = True
    for i, tok in enumerate(tokens):
        special = tok in specials
        if special or starts_word or tok.startswith(MARK) or not words:
            words.append(tok if special else tok.replace(MARK, ""))
        else:
            words[-1] += tok.replace(MARK, "")
        index[i] = len(words) - 1
        starts_word = special
    return words, index


def merge_to_words(
    attention: np.ndarray, target_tokens: list[str], source_tokens: list[str], specials: frozenset[str] | set[str]
) -> WordAttention:
    """Args: attention (T, S) over source subwords, one row per target subword."""
    src_words, src_index = group_words(source_tokens, specials)
    tgt_words, tgt_index = group_words(target_tokens, specials)
    attention = np.asarray(attention, dtype=np.float64).reshape(len(target_tokens), len(source_tokens))
    src_onehot = np.eye(len(src_words))[src_index]  # (S, Ws)
    tgt_onehot = np.eye(len(tgt_words))[tgt_index]  # (T, Wt)
    columns = attention @ src_onehot  # (T, Ws): source columns summed
    words = (tgt_onehot.T @ columns) / np.maximum(tgt_onehot.sum(0), 1)[:, None]  # (Wt, Ws): rows averaged
    real_src = np.array([w not in specials for w in src_words], dtype=bool)
    alignment = []
    if real_src.any():
        masked = np.where(real_src[None, :], words, -np.inf)
        for t, word in enumerate(tgt_words):
            if word not in specials:
                alignment.append((t, int(masked[t].argmax())))
    return WordAttention(src_words, tgt_words, words, alignment)
