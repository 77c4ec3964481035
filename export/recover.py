"""Recover a PyTorch checkpoint from a bundle: export/convert.py run backwards.

    python -m export.recover bundles/en-es runs/en-es/recovered.pt

A bundle is what ships; a training run's checkpoint usually does not. This reads the weights
back out of encoder.onnx and decoder_step.onnx into the model that model.json describes, checks
the result against the bundle's own graphs (the converter's check: the same greedy tokens and
log-probs within 1e-4 on real sentences), and writes a checkpoint that `export.convert` and
everything else that loads checkpoints reads. It is how the PyTorch eager baselines of the
benchmarks run the very model the service serves, on a fresh clone, without the training run.

How each graph initializer finds its parameter:
- by name: the exporter keeps the names of parameters used as they are (embeddings, biases,
  the bridge), prefixed by the export wrapper (`model.` in the encoder graph);
- RNN nodes (GRU, LSTM): inputs W, R, B are the layer's weight_ih, weight_hh and both biases,
  one slice per direction, with the gates in ONNX order (GRU z r h, LSTM i o f c) put back in
  PyTorch's (GRU r z n, LSTM i f g o); the nodes come in layer order;
- the rest are Linear weights folded by the exporter: a MatMul's right operand is W^T, a Gemm's
  is W (transB=1) or W^T, matched to the one parameter not yet found whose shape fits. A copy of
  a parameter already found (the tied output embedding, E^T) must equal it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer

from export.convert import check_against_torch  # the converter's own check, run backwards
from model.corpus import read_tsv
from model.model import Seq2Seq, Seq2SeqConfig
from model.tokenizer import encode

GATES = {"GRU": [1, 0, 2], "LSTM": [0, 2, 3, 1]}  # ONNX gate blocks in PyTorch's order
PREFIXES = ("model.",)  # what the export wrappers put before parameter names


class RecoverError(Exception):
    """The bundle's graphs cannot be mapped back onto the model its manifest describes."""


def reorder_gates(w: np.ndarray, op: str) -> np.ndarray:
    """(G*H, ...) in ONNX gate order -> PyTorch gate order."""
    blocks = np.split(w, len(GATES[op]), axis=0)
    return np.concatenate([blocks[i] for i in GATES[op]], axis=0)


def rnn_parameters(node: onnx.NodeProto, init: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """The parameters of one RNN layer node, by PyTorch suffix (weight_ih_l0, bias_hh_l0_reverse, ...)."""
    W, R, B = (init[name] for name in node.input[1:4])  # (dirs, G*H, in), (dirs, G*H, H), (dirs, 2*G*H)
    found = {}
    for d in range(W.shape[0]):
        suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
        wb, rb = np.split(B[d], 2)
        found[f"weight_ih{suffix}"] = reorder_gates(W[d], node.op_type)
        found[f"weight_hh{suffix}"] = reorder_gates(R[d], node.op_type)
        found[f"bias_ih{suffix}"] = reorder_gates(wb, node.op_type)
        found[f"bias_hh{suffix}"] = reorder_gates(rb, node.op_type)
    return found


def linear_operands(graph: onnx.GraphProto) -> dict[str, bool]:
    """Initializer name -> whether it holds W^T (MatMul, Gemm without transB) rather than W."""
    transposed = {}
    for node in graph.node:
        if node.op_type == "MatMul":
            transposed[node.input[1]] = True
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            transposed[node.input[1]] = not trans_b
    return transposed


def recover_graph(path: Path, rnn_module: str, state: dict[str, torch.Tensor], found: dict[str, np.ndarray]) -> None:
    """Fill `found` (PyTorch name -> array) from one graph; `rnn_module` is where its RNN lives."""
    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    used: set[str] = set()
    rnns = [n for n in graph.node if n.op_type in GATES]
    for layer, node in enumerate(rnns):
        for suffix, value in rnn_parameters(node, init, layer).items():
            found[f"{rnn_module}.rnn.{suffix}"] = value
        used.update(node.input[1:4])
    for name, value in init.items():
        key = next((name[len(p) :] for p in PREFIXES if name.startswith(p)), name)
        if key in state:
            found[key] = value
            used.add(name)
    transposed = linear_operands(graph)
    for name, value in init.items():
        if name in used or name not in transposed or value.ndim != 2:
            continue
        weight = value.T if transposed[name] else value
        copies = [k for k, v in found.items() if v.shape == weight.shape and np.array_equal(v, weight)]
        if copies:
            continue  # a parameter used twice (tied embeddings): the same numbers
        fits = [k for k, p in state.items() if k not in found and tuple(p.shape) == weight.shape]
        if len(fits) != 1:
            raise RecoverError(f"{path.name}: {name} {list(value.shape)} fits {fits or 'no parameter'}; expected one")
        found[fits[0]] = weight


def recover(bundle: Path) -> tuple[Seq2Seq, dict]:
    """The PyTorch model whose export is `bundle`, and the bundle's manifest."""
    manifest = json.loads((bundle / "model.json").read_text())
    if manifest.get("quantization"):
        raise RecoverError(
            f"{bundle} is quantized ({manifest['quantization']}); its weights are rounded. "
            "Recover from the float32 bundle it was made from."
        )
    model = Seq2Seq(Seq2SeqConfig(**manifest["model"]))
    state = model.state_dict()
    found: dict[str, np.ndarray] = {}
    recover_graph(bundle / manifest["files"]["encoder"], "encoder", state, found)
    recover_graph(bundle / manifest["files"]["decoder_step"], "decoder", state, found)
    missing = sorted(set(state) - set(found))
    if missing:
        raise RecoverError(f"no weights in {bundle} for {missing}")
    for key, value in found.items():
        if tuple(state[key].shape) != value.shape:
            raise RecoverError(f"{key}: the graph holds {list(value.shape)}, the model needs {list(state[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in found.items()})
    model.eval()
    return model, manifest


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("checkpoint", type=Path, help="the .pt file to write")
    ap.add_argument("--test", type=Path, help="TSV of pairs to check on; default the tiny fixture's test split")
    ap.add_argument("--check-sentences", type=int, default=64)
    args = ap.parse_args(argv)

    model, manifest = recover(args.bundle)
    src_json = (args.bundle / manifest["files"]["src_tokenizer"]).read_text()
    tgt_json = (args.bundle / manifest["files"]["tgt_tokenizer"]).read_text()
    test = args.test or Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny" / "test.tsv"
    src_tok = Tokenizer.from_str(src_json)
    srcs = [encode(src_tok, p.src) for p in read_tsv(test)[: args.check_sentences]]
    check = check_against_torch(model, args.bundle, srcs)
    print(f"check: {check}", file=sys.stderr)
    training = manifest.get("training") or {}
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": manifest["model"],
            "src_tokenizer": src_json,
            "tgt_tokenizer": tgt_json,
            # What the manifest kept of the training run, so a bundle made from this one keeps it too.
            "train_config": training.get("config"),
            "epochs": training.get("epochs"),
            "step": training.get("steps"),
            "best_bleu": training.get("best_dev_bleu"),
            "seconds": 60 * (training.get("minutes") or 0.0),
            "recovered_from": {"bundle": str(args.bundle), "version": manifest["version"], "check": check},
        },
        args.checkpoint,
    )
    print(f"wrote {args.checkpoint} from {args.bundle} (version {manifest['version']})", file=sys.stderr)
    return check


if __name__ == "__main__":
    main()
