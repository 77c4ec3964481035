import pytest
import torch

from model.decode import greedy
from model.model import Attention, Seq2Seq, Seq2SeqConfig


def test_luong_general_attention_reproduces_the_worked_example():
    # W_a = I, s_t = [1, 2, 1], h1 = [2, 0, 1], h2 = [1, 1, 2]
    att = Attention("general", dec_hidden=3, mem_dim=3)
    with torch.no_grad():
        att.W_a.weight.copy_(torch.eye(3))
    memory = torch.tensor([[[2.0, 0.0, 1.0], [1.0, 1.0, 2.0]]])  # (1, 2, 3)
    query = torch.tensor([[[1.0, 2.0, 1.0]]])  # (1, 1, 3)
    keys = att.keys(memory)
    scores = torch.bmm(query, keys.transpose(1, 2))
    assert scores.flatten().tolist() == [3.0, 5.0]
    context, weights = att(query, keys, memory, torch.ones(1, 2, dtype=torch.bool))
    assert weights.flatten().tolist() == pytest.approx([0.119, 0.881], abs=5e-4)
    assert context.flatten().tolist() == pytest.approx([1.119, 0.881, 1.881], abs=5e-4)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_every_attention_kind_gives_rows_that_sum_to_one_and_zero_on_padding(kind):
    torch.manual_seed(0)
    att = Attention(kind, dec_hidden=8, mem_dim=8, attn_dim=6)
    memory = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    _, weights = att(torch.randn(2, 3, 8), att.keys(memory), memory, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3))
    assert weights[1, :, 2:].abs().max().item() == 0.0


def test_dot_attention_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="dot attention needs dec_hidden == 2 \\* enc_hidden"):
        Attention("dot", dec_hidden=8, mem_dim=16)


@pytest.mark.parametrize("rnn,attention", [("gru", "general"), ("lstm", "additive"), ("gru", "dot")])
def test_padding_changes_neither_tokens_nor_attention(rnn, attention):
    torch.manual_seed(3)
    cfg = Seq2SeqConfig(
        src_vocab=40, tgt_vocab=30, emb_dim=16, enc_hidden=16, dec_hidden=32, rnn=rnn, attention=attention
    )
    model = Seq2Seq(cfg).eval()
    sentence = [5, 9, 7, 11, 3]
    longer, shorter = [6, 8, 10, 12, 14, 16, 18, 20, 3], [4, 3]
    ((alone_tokens, alone_attn),) = greedy(model, [sentence])
    batch = greedy(model, [longer, sentence, shorter])
    tokens, attn = batch[1]
    assert tokens == alone_tokens
    assert torch.allclose(attn, alone_attn, atol=1e-6)
    # inside the batch the sentence's row has padded positions: their weight is exactly 0
    from model.decode import pad_batch

    src, lengths = pad_batch([longer, sentence, shorter])
    memory, keys, mask, hidden = model.encode(src, lengths)
    prev = torch.full((3, 1), 2)
    _, _, weights = model.decoder(prev, hidden, memory, keys, mask)
    assert weights[1, 0, len(sentence) :].abs().max().item() == 0.0
    assert weights[2, 0, len(shorter) :].abs().max().item() == 0.0
