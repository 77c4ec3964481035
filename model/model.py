"""The attention seq2seq model: bidirectional RNN encoder, attention, GRU decoder.

Shapes: B batch, S source length, T target length, E embedding, H encoder hidden per
direction (memory is 2H), D decoder hidden, L decoder layers, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.tokenizer import PAD_ID

ATTENTION_KINDS = ("dot", "general", "additive")


@dataclass
class Seq2SeqConfig:
    """Every hyperparameter of the model, passed whole."""

    src_vocab: int
    tgt_vocab: int
    emb_dim: int = 256
    enc_hidden: int = 256  # per direction; the memory is 2 * enc_hidden wide
    dec_hidden: int = 512
    enc_layers: int = 1
    dec_layers: int = 1
    rnn: str = "gru"  # encoder cell: "gru" or "lstm"
    attention: str = "general"  # "dot", "general" (Luong) or "additive" (Bahdanau)
    attn_dim: int = 256  # width of the additive attention's hidden layer
    dropout: float = 0.3
    tie_embeddings: bool = True  # W_o = E_tgt @ P, the output layer shares the target embedding

    def to_dict(self) -> dict:
        return asdict(self)


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, S) bool, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Encoder(nn.Module):
    """Embedding + bidirectional RNN over packed sequences; a bridge makes the decoder's h0."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.src_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cfg.rnn]
        self.rnn = rnn_cls(
            cfg.emb_dim,
            cfg.enc_hidden,
            num_layers=cfg.enc_layers,
            bidirectional=True,
            batch_first=True,
            dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.bridge = nn.Linear(2 * cfg.enc_hidden, cfg.dec_layers * cfg.dec_hidden)
        self.dec_layers, self.dec_hidden = cfg.dec_layers, cfg.dec_hidden

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: src (B, S) ids, lengths (B,). Returns memory (B, S, 2H), zero past each length,
        and the decoder's initial hidden state (L, B, D)."""
        x = self.drop(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2H)
        h = final[0] if isinstance(final, tuple) else final  # (2 * layers, B, H)
        last = torch.cat([h[-2], h[-1]], dim=-1)  # top layer, forward and backward: (B, 2H)
        h0 = torch.tanh(self.bridge(last))  # (B, L * D)
        h0 = h0.view(-1, self.dec_layers, self.dec_hidden).transpose(0, 1).contiguous()  # (L, B, D)
        return memory, h0


class Attention(nn.Module):
    """Scores of decoder states against encoder states, masked softmax, context vectors.

    dot:      score(s, h) = s . h                  (needs D == 2H)
    general:  score(s, h) = s . (W_a h)            (Luong)
    additive: score(s, h) = v . tanh(W_q s + W_k h) (Bahdanau)
    The parts that depend on h only (the keys W_a h, W_k h) are computed once per source by
    `keys`, not at every decoder step.
    """

    def __init__(self, kind: str, dec_hidden: int, mem_dim: int, attn_dim: int = 256):
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        if kind == "dot" and dec_hidden != mem_dim:
            raise ValueError(f"dot attention needs dec_hidden == 2 * enc_hidden ({dec_hidden} != {mem_dim})")
        self.kind = kind
        if kind == "general":
            self.W_a = nn.Linear(mem_dim, dec_hidden, bias=False)
        elif kind == "additive":
            self.W_k = nn.Linear(mem_dim, attn_dim, bias=False)
            self.W_q = nn.Linear(dec_hidden, attn_dim, bias=True)
            self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, 2H) -> (B, S, K): K = 2H (dot), D (general), attn_dim (additive)."""
        if self.kind == "general":
            return self.W_a(memory)
        if self.kind == "additive":
            return self.W_k(memory)
        return memory

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: query (B, T, D), keys (B, S, K), memory (B, S, 2H), mask (B, S) True at real
        positions. Returns context (B, T, 2H) and weights (B, T, S), exactly 0 on padding."""
        if self.kind == "additive":
            hidden = torch.tanh(self.W_q(query).unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, A)
            scores = self.v(hidden).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, memory), weights


class Decoder(nn.Module):
    """GRU decoder with attention after the RNN (Luong): s_t = GRU(y_{t-1}, s_{t-1}),
    c_t = attention(s_t, h), p(y_t) = softmax(W_o [s_t; c_t] + b_o)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        mem_dim = 2 * cfg.enc_hidden
        self.embed = nn.Embedding(cfg.tgt_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        self.rnn = nn.GRU(
            cfg.emb_dim,
            cfg.dec_hidden,
            num_layers=cfg.dec_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0,
        )
        self.attention = Attention(cfg.attention, cfg.dec_hidden, mem_dim, cfg.attn_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.tie = cfg.tie_embeddings
        if self.tie:
            # W_o = E_tgt @ P: a projection to the embedding width, then the shared embedding.
            self.proj = nn.Linear(cfg.dec_hidden + mem_dim, cfg.emb_dim, bias=False)
            self.out_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab))
        else:
            self.out = nn.Linear(cfg.dec_hidden + mem_dim, cfg.tgt_vocab)

    def logits(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """W_o [s_t; c_t] + b_o: (B, T, D), (B, T, 2H) -> (B, T, V)."""
        x = self.drop(torch.cat([states, context], dim=-1))
        if self.tie:
            return F.linear(self.proj(x), self.embed.weight, self.out_bias)
        return self.out(x)

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: inputs (B, T) previous tokens, hidden (L, B, D). Returns logits (B, T, V), the new
        hidden (L, B, D) and attention weights (B, T, S). T = 1 is one decoder step."""
        x = self.drop(self.embed(inputs))  # (B, T, E)
        states, hidden = self.rnn(x, hidden)  # (B, T, D)
        context, weights = self.attention(states, keys, memory, mask)
        return self.logits(states, context), hidden, weights


class Seq2Seq(nn.Module):
    """Encoder + decoder. `forward` is the teacher-forced pass used in training."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.tie_embeddings:
            nn.init.normal_(self.decoder.embed.weight, std=cfg.emb_dim**-0.5)
            with torch.no_grad():
                self.decoder.embed.weight[PAD_ID].zero_()

    def encode(
        self, src: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S), (B,) -> memory (B, S, 2H), keys (B, S, K), mask (B, S), h0 (L, B, D)."""
        memory, h0 = self.encoder(src, lengths)
        return memory, self.decoder.attention.keys(memory), padding_mask(lengths, src.size(1)), h0

    def forward(
        self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: tgt_in (B, T) starts with BOS. Returns logits (B, T, V), weights (B, T, S)."""
        memory, keys, mask, h0 = self.encode(src, lengths)
        logits, _, weights = self.decoder(tgt_in, h0, memory, keys, mask)
        return logits, weights


def load_checkpoint(path: str | Path) -> tuple[Seq2Seq, Tokenizer, Tokenizer, dict]:
    """A training checkpoint (model/train.py, export/recover.py): the model in eval mode, the
    source and target tokenizers, and the whole saved state."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = Seq2Seq(Seq2SeqConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, Tokenizer.from_str(state["src_tokenizer"]), Tokenizer.from_str(state["tgt_tokenizer"]), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
