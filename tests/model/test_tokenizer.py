from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, decode, encode, train_tokenizer

TEXTS = [
    "In the beginning, God created the heavens and the earth.",
    "Y dijo Dios: Sea la luz; y fué la luz.",
    "¿Qué es esto? «Él» respondió.",
] * 20


def test_special_tokens_have_fixed_ids():
    tok = train_tokenizer(TEXTS, vocab_size=120, min_frequency=1)
    assert [tok.token_to_id(t) for t in ("<pad>", "<unk>", "<s>", "</s>")] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]


def test_decoding_restores_spaces_punctuation_and_accents():
    tok = train_tokenizer(TEXTS, vocab_size=120, min_frequency=1)
    for text in set(TEXTS):
        ids = encode(tok, text)
        assert ids[-1] == EOS_ID
        assert decode(tok, ids) == text


def test_encode_truncates_but_keeps_eos():
    tok = train_tokenizer(TEXTS, vocab_size=120, min_frequency=1)
    ids = encode(tok, TEXTS[0], max_len=4)
    assert len(ids) == 4 and ids[-1] == EOS_ID
