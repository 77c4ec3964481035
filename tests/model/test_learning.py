"""The model learns: a toy translation is mastered in well under a minute on this CPU."""

import random

import torch

from model.corpus import read_tsv
from model.train import main as train
from model.train import translate

EN = ["one", "two", "three", "four", "five", "red", "green", "blue", "cat", "dog", "house", "tree"]
ES = ["uno", "dos", "tres", "cuatro", "cinco", "rojo", "verde", "azul", "gato", "perro", "casa", "árbol"]
LEXICON = dict(zip(EN, ES, strict=True))


def toy_pair(rng: random.Random) -> tuple[str, str]:
    """Word-for-word translation with the word order reversed: attention must find each word."""
    words = [rng.choice(EN) for _ in range(rng.randint(2, 6))]
    return " ".join(words), " ".join(LEXICON[w] for w in reversed(words))


def write_split(path, rng, n):
    path.write_text("".join(f"{s}\t{t}\n" for s, t in (toy_pair(rng) for _ in range(n))), encoding="utf-8")


def test_model_masters_a_toy_translation_task(tmp_path):
    rng = random.Random(7)
    data = tmp_path / "toy"
    data.mkdir()
    for split, n in (("train", 2000), ("dev", 50), ("test", 100)):
        write_split(data / f"{split}.tsv", rng, n)
    summary = train(
        [
            "--data", str(data), "--out", str(tmp_path / "run"), "--vocab-size", "60", "--epochs", "5",
            "--token-budget", "600", "--lr", "0.005", "--warmup-steps", "30", "--tf-schedule", "constant",
            "--emb-dim", "32", "--enc-hidden", "32", "--dec-hidden", "64", "--attn-dim", "32",
            "--dropout", "0.0", "--label-smoothing", "0.0", "--patience", "6", "--curriculum-epochs", "0",
        ]
    )  # fmt: skip
    assert summary["best_dev_bleu"] > 50
    from model.model import load_checkpoint

    model, src_tok, tgt_tok, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    from model.tokenizer import encode

    test = read_tsv(data / "test.tsv")
    with torch.no_grad():
        hyps = translate(model, tgt_tok, [encode(src_tok, p.src) for p in test])
    exact = sum(h == p.tgt for h, p in zip(hyps, test, strict=True)) / len(test)
    assert exact >= 0.9, f"exact match {exact:.2f}"
