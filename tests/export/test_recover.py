"""export.recover reads a bundle's graphs back into the PyTorch model that was exported."""

from __future__ import annotations

import json

import pytest
import torch

from export.convert import export_graphs
from export.convert import main as convert
from export.recover import RecoverError, recover
from export.recover import main as recover_main
from model.model import Seq2Seq, Seq2SeqConfig

VARIANTS = {
    "gru-general-tied": {},
    "lstm-additive-untied-2-layers": {
        "rnn": "lstm",
        "attention": "additive",
        "tie_embeddings": False,
        "enc_layers": 2,
        "dec_layers": 2,
    },
    "gru-dot": {"attention": "dot", "dec_hidden": 32},
}


def graphs_only_bundle(model: Seq2Seq, folder) -> None:
    """The two graphs and the part of model.json that recover reads."""
    export_graphs(model, folder)
    files = {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
    (folder / "model.json").write_text(json.dumps({"model": model.cfg.to_dict(), "files": files}))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_comes_back_exactly_for_each_model_variant(variant, tmp_path):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab=50, tgt_vocab=60, emb_dim=8, enc_hidden=16, dec_hidden=24, attn_dim=12)
    for name, value in VARIANTS[variant].items():
        setattr(cfg, name, value)
    model = Seq2Seq(cfg).eval()
    graphs_only_bundle(model, tmp_path)

    recovered, _ = recover(tmp_path)

    want, got = model.state_dict(), recovered.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_recovered_checkpoint_converts_to_the_same_bundle_weights(tiny_checkpoint, tiny_bundle, tmp_path):
    check = recover_main([str(tiny_bundle), str(tmp_path / "recovered.pt")])
    assert check["greedy_mismatches"] == 0 and check["max_abs_logprob_diff"] < 1e-4

    original = torch.load(tiny_checkpoint, weights_only=False)
    recovered = torch.load(tmp_path / "recovered.pt", weights_only=False)
    assert recovered["model_config"] == original["model_config"]
    assert recovered["src_tokenizer"] == (tiny_bundle / "src_tokenizer.json").read_text()
    for key, value in original["model"].items():
        assert torch.equal(recovered["model"][key], value), key
    convert([str(tmp_path / "recovered.pt"), str(tmp_path / "again"), "--check-sentences", "4"])
    assert (
        json.loads((tmp_path / "again" / "model.json").read_text())["version"]
        == json.loads((tiny_bundle / "model.json").read_text())["version"]
    )


def test_quantized_bundle_is_refused_with_the_reason(tiny_bundle, tmp_path):
    manifest = json.loads((tiny_bundle / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**manifest, "quantization": "dynamic int8"}))
    with pytest.raises(RecoverError, match="quantized"):
        recover(tmp_path)
