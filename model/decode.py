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
    return [(tok, torch.stack(r)) for tok, r in zip(tokens, rows, strict=True)]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha; |Y| counts EOS."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam(model: Seq2Seq, src_ids: list[int], beam_size: int = 5, n_best: int = 1, alpha: float = 0.6) -> list[dict]:
    """Beam search for one sentence, with the same rules as the service's BeamSearch.

    At each step every live hypothesis offers its top 2k continuations; the 2k best overall are
    walked in order: an EOS among the first k finishes that hypothesis, other tokens fill the
    k live slots. Search stops at k finished hypotheses, when the n-best finished cannot be
    beaten by any live one (score / lp(max_len) bounds them), or at the maximum length.
    Returns the n-best as dicts: tokens, score (length-normalized), logprob, attention (T, S).
    """
    model.eval()
    k = beam_size
    src, lengths = pad_batch([src_ids])
    memory, keys, mask, hidden = model.encode(src, lengths)
    max_len = max_target_len(len(src_ids))
    live = [([], 0.0, [])]  # (tokens, log-prob, attention rows)
    finished: list[tuple[float, int, list[int], float, list[torch.Tensor], str]] = []
    for t in range(max_len):
        n = len(live)
        prev = torch.tensor([[h[0][-1] if h[0] else BOS_ID] for h in live])
        logits, new_hidden, weights = model.decoder(
            prev, hidden, memory.expand(n, -1, -1), keys.expand(n, -1, -1), mask.expand(n, -1)
        )
        logp = torch.log_softmax(logits[:, -1], dim=-1)  # (n, V)
        top_lp, top_id = logp.topk(min(2 * k, logp.size(-1)), dim=-1)
        cands = sorted(
            ((live[i][1] + float(top_lp[i, j]), i, j) for i in range(n) for j in range(top_lp.size(1))),
            key=lambda c: (-c[0], c[1], c[2]),
        )[: 2 * k]
        nxt, parents = [], []
        for rank, (score, i, j) in enumerate(cands):
            tok = int(top_id[i, j])
            toks, rows = live[i][0] + [tok], live[i][2] + [weights[i, -1]]
            if tok == EOS_ID:
                if rank < k:
                    norm = score / length_penalty(len(toks), alpha)
                    finished.append((norm, len(finished), toks, score, rows, "eos"))
            elif len(nxt) < k:
                nxt.append((toks, score, rows))
                parents.append(i)
        if t + 1 >= max_len:
            for toks, score, rows in nxt:
                norm = score / length_penalty(len(toks), alpha)
                finished.append((norm, len(finished), toks, score, rows, "max_length"))
            nxt = []
        live = nxt
        if not live or len(finished) >= k:
            break
        best = sorted(f[0] for f in finished)[::-1]
        bound = max(h[1] for h in live) / length_penalty(max_len, alpha)
        if len(best) >= n_best and best[n_best - 1] >= bound:
            break
        hidden = new_hidden[:, parents]
    finished.sort(key=lambda f: (-f[0], f[1]))
    return [
        {"tokens": f[2], "score": f[0], "logprob": f[3], "attention": torch.stack(f[4]), "stop": f[5]}
        for f in finished[:n_best]
    ]
