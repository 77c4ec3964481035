"""PyTorch reference decoding: the yardstick the ONNX engine is checked against."""

from __future__ import annotations

import torch

from model.model import Seq2Seq
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID


def pad_batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> (B, S) right-padded ids and (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def max_target_len(src_len: int, ratio: float = 1.5, extra: int = 10, cap: int = 256) -> int:
    """Decoding stops at ratio * source length + extra tokens, never past cap."""
    return min(cap, int(ratio * src_len) + extra)


@torch.no_grad()
def greedy(model: Seq2Seq, srcs: list[list[int]]) -> list[tuple[list[int], torch.Tensor]]:
    """Greedy decoding of a padded batch. Returns, per sentence, its output ids (EOS included
    when reached) and its attention rows (T, S_i) over its own source positions."""
    model.eval()
    src, lengths = pad_batch(srcs)
    memory, keys, mask, hidden = model.encode(src, lengths)
    B = src.size(0)
    prev = torch.full((B, 1), BOS_ID, dtype=torch.long)
    limits = [max_target_len(len(s)) for s in srcs]
    done = torch.zeros(B, dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(B)]
    rows: list[list[torch.Tensor]] = [[] for _ in range(B)]
    for t in range(max(limits)):
        logits, hidden, weights = model.decoder(prev, hidden, memory, keys, mask)
        nxt = logits[:, -1].argmax(-1)  # (B,)
        for i in range(B):
            if not done[i]:
                tokens[i].append(int(nxt[i]))
                rows[i].append(weights[i, -1, : len(srcs[i])])
                if nxt[i] == EOS_ID or t + 1 >= limits[i]:
                    done[i] = True
        if bool(done.all()):
            break
        prev = nxt.unsqueeze(1)
    return [(tok, torch.stack(r)) for tok, r in zip(tokens, rows)]
