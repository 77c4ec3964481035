"""The shipped English->Spanish bundle: valid, measured, and it translates."""

import json

from service.config import Settings
from service.translator import DecodeOptions, Translator


def test_shipped_bundle_meets_its_quality_bar(default_bundle):
    manifest = json.loads((default_bundle / "model.json").read_text())
    engine = manifest["metrics"]["onnxruntime"]
    assert engine["greedy"]["bleu"] >= 24
    assert engine["beam5"]["bleu"] > engine["greedy"]["bleu"]
    assert manifest["export_check"]["max_abs_logprob_diff"] <= 1e-4
    assert sum(p.stat().st_size for p in default_bundle.iterdir()) < 40 * 2**20


def test_shipped_bundle_translates_english_to_spanish(default_bundle):
    translator = Translator(Settings(bundle_dir=default_bundle, intra_op_threads=1))
    try:
        greedy = translator.translate_sync("In the beginning, God created the heavens and the earth.", DecodeOptions())
        beam = translator.translate_sync(
            "God said, “Let there be light,” and there was light.", DecodeOptions(strategy="beam", beam_size=5)
        )
    finally:
        translator.close()
    assert "Dios" in greedy.text and "tierra" in greedy.text
    assert "luz" in beam.text and beam.stop_reason == "eos"
    assert len(greedy.attention) == len(greedy.tokens)
