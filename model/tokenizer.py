"""Subword tokenizers (Hugging Face `tokenizers`, BPE) with PAD/UNK/BOS/EOS at fixed ids.

One tokenizer per language, trained on the train split only and saved as a JSON file that
the service loads with `tokenizers` alone (no torch). Metaspace pre-tokenization keeps the
spaces in the tokens, so decoding restores the text exactly (punctuation, accents).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a BPE tokenizer; the four special tokens get ids 0-3."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} must have id {i}"
    return tok


def encode(tok: Tokenizer, text: str, max_len: int | None = None) -> list[int]:
    """Text -> subword ids followed by EOS (truncated to max_len ids, EOS included)."""
    ids = tok.encode(text).ids
    if max_len is not None:
        ids = ids[: max_len - 1]
    return ids + [EOS_ID]


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Subword ids -> text, stopping at EOS and leaving out the special tokens."""
    out = []
    for i in ids:
        if i == EOS_ID:
            break
        out.append(int(i))
    return tok.decode(out, skip_special_tokens=True)
