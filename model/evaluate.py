"""sacreBLEU evaluation (BLEU and chrF, default tokenization, detokenized text).

python -m model.evaluate runs/en-es/best.pt --test data/bible/test.tsv
python -m model.evaluate runs/en-es/best.pt --dry-run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sacrebleu

from model.corpus import Pair, read_tsv
from model.decode import beam
from model.tokenizer import decode, encode


def scores(hyps: list[str], refs: list[str]) -> dict:
    return {
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def evaluate_torch(model, src_tok, tgt_tok, pairs: list[Pair], beam_size: int = 5, alpha: float = 0.6) -> dict:
    """Greedy and beam BLEU/chrF of the PyTorch reference decoder on pairs."""
    from model.train import translate

    refs = [p.tgt for p in pairs]
    srcs = [encode(src_tok, p.src) for p in pairs]
    t0 = time.time()
    greedy_hyps = translate(model, tgt_tok, srcs)
    t1 = time.time()
    beam_hyps = [decode(tgt_tok, beam(model, s, beam_size=beam_size, alpha=alpha)[0]["tokens"]) for s in srcs]
    t2 = time.time()
    return {
        "split": f"test ({len(pairs)} sentences)",
        "decoder": "pytorch reference",
        "greedy": {**scores(greedy_hyps, refs), "seconds": round(t1 - t0, 1)},
        f"beam{beam_size}": {**scores(beam_hyps, refs), "length_penalty": alpha, "seconds": round(t2 - t1, 1)},
        "sacrebleu": sacrebleu.__version__,
    }


def evaluate_bundle(folder: Path, pairs: list[Pair], beam_size: int = 5, alpha: float = 0.6) -> dict:
    """Greedy and beam BLEU/chrF of the service's onnxruntime engine on a bundle, all sentences
    submitted at once to the continuous batcher."""
    from service.config import Settings
    from service.translator import DecodeOptions, Translator

    settings = Settings(bundle_dir=folder, request_timeout_s=0, queue_size=max(256, len(pairs)), warmup=False)
    translator = Translator(settings)
    refs = [p.tgt for p in pairs]
    result: dict = {"split": f"test ({len(pairs)} sentences)", "decoder": "onnxruntime engine"}
    try:
        for name, options in (
            ("greedy", DecodeOptions(strategy="greedy")),
            (f"beam{beam_size}", DecodeOptions(strategy="beam", beam_size=beam_size, length_penalty=alpha)),
        ):
            t0 = time.time()
            entries = [translator.submit(p.src, options) for p in pairs]
            hyps = [translator.finish(ids, entry.future.result()).text for ids, entry in entries]
            result[name] = {**scores(hyps, refs), "seconds": round(time.time() - t0, 1)}
    finally:
        translator.close()
    result["sacrebleu"] = sacrebleu.__version__
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="a training checkpoint (.pt) or a bundle folder")
    ap.add_argument("--test", type=Path, default=Path("data/bible/test.tsv"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--dry-run", action="store_true", help="ten sentences of the tiny fixture")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.test, args.limit = Path(__file__).resolve().parent.parent / "tests/fixtures/tiny/test.tsv", 10
    pairs = read_tsv(args.test)
    if args.limit:
        pairs = pairs[: args.limit]
    if args.checkpoint.is_dir():
        result = evaluate_bundle(args.checkpoint, pairs, beam_size=args.beam_size)
    else:
        from model.model import load_checkpoint

        model, src_tok, tgt_tok, _ = load_checkpoint(args.checkpoint)
        result = evaluate_torch(model, src_tok, tgt_tok, pairs, beam_size=args.beam_size)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
