"""Convert a training checkpoint into a servable bundle.

    python -m export.convert runs/en-es/best.pt bundles/en-es --test data/bible/test.tsv

load -> export encoder.onnx and decoder_step.onnx (dynamic batch and source length) ->
check (onnx.checker; log-probs within 1e-4 of PyTorch and the same greedy output on real
sentences) -> optionally quantize to int8 -> write the bundle folder with the tokenizers and
model.json. An existing bundle is only replaced with --force.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from model.corpus import read_tsv
from model.decode import greedy, max_target_len, pad_batch
from model.model import Seq2Seq, load_checkpoint
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID, encode
from service.bundle import (  # the service reads bundles by the same names and digest
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FORMAT_VERSION,
    file_digest,
)

OPSET = 17
TOPK = 32  # the widest top-k the graph gives: 2 x the largest beam (16)


class EncoderGraph(nn.Module):
    """(B, S) ids, (B,) lengths -> memory (B, S, 2H), keys (B, S, K), mask (B, S), hidden (L, B, D)."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor):
        return self.model.encode(src_ids, src_lengths)


class DecoderStepGraph(nn.Module):
    """One decoder step for B rows, with log-softmax and top-k done in the graph."""

    def __init__(self, model: Seq2Seq, topk: int):
        super().__init__()
        self.decoder = model.decoder
        self.topk = topk

    def forward(self, prev_tokens, hidden, memory, keys, src_mask):
        logits, hidden_out, weights = self.decoder(prev_tokens.unsqueeze(1), hidden, memory, keys, src_mask)
        # squeeze, not [:, 0]: a Squeeze is free in onnxruntime, a Gather copies the (B, V) logits
        log_probs = torch.log_softmax(logits.squeeze(1), dim=-1)  # (B, V)
        top_lp, top_id = torch.topk(log_probs, self.topk, dim=-1)  # (B, K)
        return log_probs, hidden_out, weights.squeeze(1), top_lp, top_id


def export_graphs(model: Seq2Seq, folder: Path) -> None:
    """Write encoder.onnx and decoder_step.onnx into folder."""
    src, lengths = pad_batch([[5, 6, 7, EOS_ID], [8, EOS_ID]])
    with torch.no_grad():
        memory, keys, mask, hidden = model.encode(src, lengths)
    torch.onnx.export(
        EncoderGraph(model),
        (src, lengths),
        str(folder / "encoder.onnx"),
        input_names=ENCODER_INPUTS,
        output_names=ENCODER_OUTPUTS,
        dynamic_axes={
            "src_ids": {0: "batch", 1: "src_len"},
            "src_lengths": {0: "batch"},
            "memory": {0: "batch", 1: "src_len"},
            "keys": {0: "batch", 1: "src_len"},
            "src_mask": {0: "batch", 1: "src_len"},
            "hidden": {1: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    prev = torch.tensor([BOS_ID, BOS_ID])
    topk = min(TOPK, model.cfg.tgt_vocab)
    torch.onnx.export(
        DecoderStepGraph(model, topk),
        (prev, hidden, memory, keys, mask),
        str(folder / "decoder_step.onnx"),
        input_names=DECODER_INPUTS[:-1],  # "k" is added below
        output_names=DECODER_OUTPUTS,
        dynamic_axes={
            "prev_tokens": {0: "rows"},
            "hidden": {1: "rows"},
            "memory": {0: "rows", 1: "src_len"},
            "keys": {0: "rows", 1: "src_len"},
            "src_mask": {0: "rows", 1: "src_len"},
            "log_probs": {0: "rows"},
            "hidden_out": {1: "rows"},
            "attention": {0: "rows", 1: "src_len"},
            "topk_log_probs": {0: "rows"},
            "topk_ids": {0: "rows"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    topk_from_input(folder / "decoder_step.onnx")
    for name in ("encoder.onnx", "decoder_step.onnx"):
        onnx.checker.check_model(str(folder / name), full_check=True)


def topk_from_input(path: Path) -> None:
    """Make the decoder graph's top-k width an input, "k" (int64, shape (1,), 1 to sizes.topk), in
    place of the constant the exporter wrote: a greedy step asks for 1 candidate per row, a
    beam of b for 2b, and the graph does no more than that (docs/PERFORMANCE.md measures it)."""
    model = onnx.load(str(path))
    graph = model.graph
    (node,) = [n for n in graph.node if n.op_type == "TopK"]
    constant, node.input[1] = node.input[1], "k"
    graph.input.append(onnx.helper.make_tensor_value_info("k", onnx.TensorProto.INT64, [1]))
    for out in graph.output:
        if out.name.startswith("topk_"):
            out.type.tensor_type.shape.dim[1].dim_param = "k"
    if all(constant not in n.input for n in graph.node):  # the old width, now unused
        kept = [n for n in graph.node if constant not in n.output]
        del graph.node[:]
        graph.node.extend(kept)
        kept_init = [t for t in graph.initializer if t.name != constant]
        del graph.initializer[:]
        graph.initializer.extend(kept_init)
    onnx.save(model, str(path))


def ort_greedy(folder: Path, srcs: list[list[int]]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy decoding of a padded batch with the exported graphs; returns tokens and the
    log-prob rows (T, V) of each sentence, for comparison with PyTorch."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    enc = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(folder / "decoder_step.onnx"), opts, providers=["CPUExecutionProvider"])
    src, lengths = pad_batch(srcs)
    memory, keys, mask, hidden = enc.run(None, {"src_ids": src.numpy(), "src_lengths": lengths.numpy()})
    B = len(srcs)
    prev = np.full(B, BOS_ID, dtype=np.int64)
    limits = [max_target_len(len(s)) for s in srcs]
    tokens: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[np.ndarray]] = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    width = {"k": np.array([1])} if "k" in [i.name for i in dec.get_inputs()] else {}  # older graphs: fixed
    for t in range(max(limits)):
        log_probs, hidden, _, _, top_ids = dec.run(
            None, {"prev_tokens": prev, "hidden": hidden, "memory": memory, "keys": keys, "src_mask": mask, **width}
        )
        nxt = top_ids[:, 0]
        for i in range(B):
            if not done[i]:
                tokens[i].append(int(nxt[i]))
                logps[i].append(log_probs[i])
                done[i] = nxt[i] == EOS_ID or t + 1 >= limits[i]
        if done.all():
            break
        prev = nxt.astype(np.int64)
    return tokens, [np.stack(r) for r in logps]


@torch.no_grad()
def torch_logprobs(model: Seq2Seq, src: list[int], tokens: list[int]) -> np.ndarray:
    """Teacher-forced log-probs (T, V) of a token sequence, one sentence."""
    s, lengths = pad_batch([src])
    tgt_in = torch.tensor([[BOS_ID] + tokens[:-1]])
    logits, _ = model(s, lengths, tgt_in)
    return torch.log_softmax(logits[0], dim=-1).numpy()


def check_against_torch(model: Seq2Seq, folder: Path, srcs: list[list[int]], atol: float = 1e-4) -> dict:
    """Same greedy tokens and log-probs within atol, on a padded batch of real sentences."""
    ort_tokens, ort_logps = ort_greedy(folder, srcs)
    ref = greedy(model, srcs)
    max_diff, mismatches = 0.0, []
    for i, (src, (ref_tokens, _)) in enumerate(zip(srcs, ref, strict=True)):
        if ort_tokens[i] != ref_tokens:
            mismatches.append(i)
        tl = torch_logprobs(model, src, ort_tokens[i])
        max_diff = max(max_diff, float(np.abs(tl - ort_logps[i]).max()))
    report = {"sentences": len(srcs), "max_abs_logprob_diff": max_diff, "greedy_mismatches": len(mismatches)}
    if max_diff > atol or mismatches:
        raise SystemExit(f"exported graphs disagree with PyTorch: {report}")
    return report


def quantize(folder: Path) -> None:
    """Dynamic int8 quantization of both graphs, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder.onnx", "decoder_step.onnx"):
        path = folder / name
        tmp = folder / f"{name}.fp32"
        path.rename(tmp)
        quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8)
        tmp.unlink()


def write_manifest(
    folder: Path, model: Seq2Seq, state: dict, args: argparse.Namespace, check: dict, metrics: dict | None
) -> dict:
    cfg = model.cfg
    files = {
        "encoder": "encoder.onnx",
        "decoder_step": "decoder_step.onnx",
        "src_tokenizer": "src_tokenizer.json",
        "tgt_tokenizer": "tgt_tokenizer.json",
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "id": f"{args.source}-{args.target}",
        "version": file_digest(folder, list(files.values())),
        "source_lang": args.source,
        "target_lang": args.target,
        "files": files,
        "special_tokens": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "names": SPECIALS},
        "model": cfg.to_dict(),
        "sizes": {
            "src_vocab": cfg.src_vocab,
            "tgt_vocab": cfg.tgt_vocab,
            "memory_dim": 2 * cfg.enc_hidden,
            "keys_dim": {"dot": 2 * cfg.enc_hidden, "general": cfg.dec_hidden, "additive": cfg.attn_dim}[cfg.attention],
            "dec_hidden": cfg.dec_hidden,
            "dec_layers": cfg.dec_layers,
            "topk": min(TOPK, cfg.tgt_vocab),
        },
        "attention": cfg.attention,
        "max_length": {"ratio": 1.5, "extra": 10, "cap": 256},
        "graphs": {
            "opset": OPSET,
            "encoder": {"inputs": ENCODER_INPUTS, "outputs": ENCODER_OUTPUTS},
            "decoder_step": {"inputs": DECODER_INPUTS, "outputs": DECODER_OUTPUTS},
        },
        "quantization": "int8-dynamic" if args.int8 else None,
        "training": {
            "corpus": args.corpus,
            "checkpoint": str(args.checkpoint),
            "epochs": state.get("epochs") or len(state.get("history", [])),  # a recovered checkpoint has no history
            "steps": state.get("step"),
            "minutes": round(state.get("seconds", 0.0) / 60, 1),
            "best_dev_bleu": state.get("best_bleu"),
            "config": state.get("train_config"),
        },
        "export_check": check,
        "metrics": metrics,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def training_command(cfg: dict) -> str:
    """The `python -m model.train` command line that reproduces a run's settings."""
    from model.train import TrainConfig

    defaults = TrainConfig().__dict__
    args = [
        f"--{k.replace('_', '-')} {v}"
        for k, v in cfg.items()
        if k not in ("model", "dry_run", "max_minutes") and v != defaults.get(k)
    ]
    args += [f"--{k.replace('_', '-')} {v}" for k, v in (cfg.get("model") or {}).items()]
    return " ".join(["python -m model.train", *args])


def write_card(folder: Path, manifest: dict, run_dir: Path) -> None:
    """README.md of the bundle: what it is, how it was trained, its curves and its scores."""
    for plot in ("curves.png", "attention.png"):
        if (run_dir / plot).exists():
            shutil.copy(run_dir / plot, folder / plot)
    train = manifest["training"]
    cfg = train.get("config") or {}
    lines = [
        f"# {manifest['id']} — {manifest['source_lang']}→{manifest['target_lang']} attention seq2seq",
        "",
        f"Version `{manifest['version']}`, exported {manifest['exported_at']}"
        + (f", quantized ({manifest['quantization']})" if manifest["quantization"] else "")
        + ".",
        "",
        f"- Corpus: {train['corpus']}; split by crc32 of the verse reference (test = 0-1, dev = 2).",
        f"- Model: {json.dumps(manifest['model'])}",
        f"- Training: {train['epochs']} epochs, {train['steps']} steps, {train['minutes']} minutes on CPU; "
        "best dev BLEU (greedy) "
        + ("not recorded" if train["best_dev_bleu"] is None else f"{train['best_dev_bleu']:.2f}")
        + ".",
        f"- Training command: `{training_command(cfg)}`",
        f"- Export check: {json.dumps(manifest['export_check'])}",
        "",
        "## Test scores (sacreBLEU, default tokenization, detokenized)",
        "",
        "| decoder | search | BLEU | chrF |",
        "|---|---|---|---|",
    ]
    for decoder, result in (manifest.get("metrics") or {}).items():
        for search in ("greedy", "beam5"):
            if search in result:
                r = result[search]
                lines.append(f"| {decoder} | {search} | {r['bleu']} | {r['chrf']} |")
    lines += ["", "![learning curves](curves.png)", "", "![attention on dev sentences](attention.png)", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("bundle", type=Path, help="output folder")
    ap.add_argument("--source", default="en")
    ap.add_argument("--target", default="es")
    ap.add_argument("--corpus", default="English (World English Bible) -> Spanish (Reina-Valera 1909), SWORD")
    ap.add_argument("--test", type=Path, help="TSV of test pairs: check sentences, and BLEU/chrF with --evaluate")
    ap.add_argument("--check-sentences", type=int, default=64)
    ap.add_argument("--evaluate", action="store_true", help="measure BLEU/chrF greedy and beam 5 on --test")
    ap.add_argument("--int8", action="store_true", help="dynamic int8 quantization of both graphs")
    ap.add_argument("--force", action="store_true", help="replace an existing bundle")
    args = ap.parse_args(argv)

    if args.bundle.exists() and any(args.bundle.iterdir()) and not args.force:
        raise SystemExit(f"{args.bundle} exists; pass --force to replace it")
    model, src_tok, tgt_tok, state = load_checkpoint(args.checkpoint)
    if args.test:
        pairs = read_tsv(args.test)
    else:
        pairs = read_tsv(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny" / "test.tsv")
    srcs = [encode(src_tok, p.src) for p in pairs[: args.check_sentences]]

    with tempfile.TemporaryDirectory(dir=args.bundle.parent if args.bundle.parent.exists() else None) as tmp:
        folder = Path(tmp)
        export_graphs(model, folder)
        check = check_against_torch(model, folder, srcs)
        print(f"check: {check}", file=sys.stderr)
        if args.int8:
            quantize(folder)
        src_tok.save(str(folder / "src_tokenizer.json"))
        tgt_tok.save(str(folder / "tgt_tokenizer.json"))
        metrics = None
        if args.evaluate and args.test:
            from model.evaluate import evaluate_bundle, evaluate_torch

            write_manifest(folder, model, state, args, check, None)  # the engine reads it
            metrics = {"onnxruntime": evaluate_bundle(folder, pairs)}
            if not args.int8:
                metrics["pytorch"] = evaluate_torch(model, src_tok, tgt_tok, pairs)
        manifest = write_manifest(folder, model, state, args, check, metrics)
        write_card(folder, manifest, args.checkpoint.parent)
        if args.bundle.exists():
            shutil.rmtree(args.bundle)
        args.bundle.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, args.bundle)
    print(f"wrote {args.bundle} (version {manifest['version']})", file=sys.stderr)
    return manifest


if __name__ == "__main__":
    main()
