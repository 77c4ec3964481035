import json

import numpy as np
import onnx
import pytest

from export.convert import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, main, ort_greedy
from tests.conftest import TINY_CORPUS


def test_bundle_holds_graphs_tokenizers_and_manifest(tiny_bundle):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert {"encoder.onnx", "decoder_step.onnx", "src_tokenizer.json", "tgt_tokenizer.json", "model.json"} <= names
    manifest = json.loads((tiny_bundle / "model.json").read_text())
    assert manifest["source_lang"] == "en" and manifest["target_lang"] == "es"
    assert manifest["special_tokens"]["eos"] == 3
    assert manifest["graphs"]["opset"] >= 17
    assert manifest["export_check"]["max_abs_logprob_diff"] <= 1e-4
    assert manifest["export_check"]["greedy_mismatches"] == 0
    enc = onnx.load(tiny_bundle / "encoder.onnx")
    dec = onnx.load(tiny_bundle / "decoder_step.onnx")
    assert [i.name for i in enc.graph.input] == ENCODER_INPUTS
    assert [o.name for o in enc.graph.output] == ENCODER_OUTPUTS
    assert [i.name for i in dec.graph.input] == DECODER_INPUTS
    assert [o.name for o in dec.graph.output] == DECODER_OUTPUTS


def test_graphs_take_any_batch_and_source_length(tiny_bundle):
    one, _ = ort_greedy(tiny_bundle, [[5, 6, 3]])
    many, _ = ort_greedy(tiny_bundle, [[5, 6, 3], [7, 8, 9, 10, 11, 12, 13, 3], [4, 3]])
    assert many[0] == one[0]


def test_converter_refuses_to_overwrite_without_force(tiny_checkpoint, tiny_bundle):
    with pytest.raises(SystemExit, match="exists; pass --force"):
        main([str(tiny_checkpoint), str(tiny_bundle)])


def test_int8_bundle_is_smaller_and_still_decodes(tiny_checkpoint, tmp_path):
    folder = tmp_path / "int8"
    manifest = main([str(tiny_checkpoint), str(folder), "--int8", "--test", str(TINY_CORPUS / "test.tsv")])
    assert manifest["quantization"] == "int8-dynamic"
    tokens, logps = ort_greedy(folder, [[5, 6, 7, 3]])
    assert len(tokens[0]) >= 1
    assert np.allclose(np.exp(logps[0]).sum(-1), 1.0, atol=1e-3)


def test_the_decoder_step_copies_no_logits_to_drop_the_time_axis(tiny_bundle):
    graph = onnx.load(tiny_bundle / "decoder_step.onnx").graph
    tables = {t.name for t in graph.initializer}
    assert "Squeeze" in {n.op_type for n in graph.node}
    assert all(n.input[0] in tables for n in graph.node if n.op_type == "Gather")  # lookups in tables only
