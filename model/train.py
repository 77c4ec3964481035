"""Train the attention seq2seq model.

    python -m model.train --data data/bible --out runs/en-es
    python -m model.train --dry-run          # seconds, on the committed tiny corpus

Length-bucketed batches under a token budget, packed source sequences, a loss that ignores
PAD (with label smoothing), teacher forcing with scheduled sampling, optional curriculum,
dropout, gradient-norm clipping, Adam with warmup then inverse-square-root decay, early
stopping on dev BLEU, and checkpoints that resume (`last.pt` each epoch and on a time limit;
`best.pt` at the best dev BLEU).

Scheduled sampling is done in two passes, which keeps the decoder parallel over time: a
first teacher-forced pass (no gradient) predicts every position, then each decoder input
y_{t-1} is the gold token with probability `tf_ratio` and the model's own prediction
otherwise, and the second pass learns from those inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.corpus import Pair, read_tsv
from model.decode import greedy, pad_batch
from model.model import Seq2Seq, Seq2SeqConfig, count_parameters
from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, train_tokenizer

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny"


@dataclass
class TrainConfig:
    """Everything about a training run but the model's own shape."""

    data: str = "data/bible"
    out: str = "runs/en-es"
    vocab_size: int = 8000
    max_len: int = 128  # subword ids per side, longer pairs are left out of training
    token_budget: int = 4000  # padded target tokens per batch
    epochs: int = 30
    lr: float = 2e-3
    warmup_steps: int = 800
    clip: float = 1.0
    label_smoothing: float = 0.1
    tf_schedule: str = "linear"  # constant | linear | inverse_sigmoid
    tf_start: float = 1.0
    tf_end: float = 0.75
    tf_decay_steps: int = 20000  # linear: steps from tf_start to tf_end
    tf_k: float = 3000.0  # inverse sigmoid: k / (k + exp(step / k))
    curriculum_epochs: int = 1  # epochs that see short sentences first
    patience: int = 4  # epochs without a better dev BLEU before stopping
    max_minutes: float = 0.0  # stop (with a checkpoint) after this long; 0 = no limit
    seed: int = 1
    threads: int = 2
    dev_limit: int = 0  # 0 = the whole dev split
    dry_run: bool = False
    model: dict = field(default_factory=dict)


def teacher_forcing_ratio(cfg: TrainConfig, step: int) -> float:
    """Probability of feeding the gold previous token at a given optimizer step."""
    if cfg.tf_schedule == "constant":
        return cfg.tf_start
    if cfg.tf_schedule == "linear":
        frac = min(1.0, step / max(1, cfg.tf_decay_steps))
        return cfg.tf_start + (cfg.tf_end - cfg.tf_start) * frac
    if cfg.tf_schedule == "inverse_sigmoid":
        ratio = cfg.tf_k / (cfg.tf_k + math.exp(min(step / cfg.tf_k, 50.0)))
        return max(cfg.tf_end, cfg.tf_start * ratio)
    raise ValueError(f"unknown teacher-forcing schedule {cfg.tf_schedule!r}")


def lr_factor(step: int, warmup: int) -> float:
    """Linear warmup to 1, then inverse-square-root decay."""
    step = max(1, step)
    return min(step / warmup, math.sqrt(warmup / step))


def make_batches(
    data: list[tuple[list[int], list[int]]], budget: int, rng: random.Random, shortest_first: bool = False
) -> list[list[int]]:
    """Indices grouped by length so that (batch size x longest target) stays under budget."""
    noisy = sorted(range(len(data)), key=lambda i: (len(data[i][0]) + rng.random() * 2, len(data[i][1])))
    batches, cur, longest = [], [], 0
    for i in noisy:
        n = max(len(data[i][0]), len(data[i][1]) + 1)
        if cur and max(longest, n) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    if not shortest_first:
        rng.shuffle(batches)
    return batches


def collate(items: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
    src, lengths = pad_batch([s for s, _ in items])
    tgt_in, _ = pad_batch([[BOS_ID] + t for _, t in items])
    tgt_out, _ = pad_batch([t + [EOS_ID] for _, t in items])
    return src, lengths, tgt_in, tgt_out


def train_step(
    model: Seq2Seq, batch: tuple[torch.Tensor, ...], tf_ratio: float, cfg: TrainConfig
) -> tuple[torch.Tensor, int]:
    src, lengths, tgt_in, tgt_out = batch
    if tf_ratio < 1.0:
        with torch.no_grad():
            logits, _ = model(src, lengths, tgt_in)
        predicted = logits.argmax(-1)  # (B, T): prediction for position t, fed at t + 1
        use_model = torch.rand(tgt_in.shape) >= tf_ratio
        use_model[:, 0] = False  # BOS stays
        mixed = tgt_in.clone()
        mixed[:, 1:] = torch.where(use_model[:, 1:], predicted[:, :-1], tgt_in[:, 1:])
        tgt_in = mixed.masked_fill(tgt_out == PAD_ID, PAD_ID)
    logits, _ = model(src, lengths, tgt_in)
    n_tokens = int((tgt_out != PAD_ID).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        tgt_out.reshape(-1),
        ignore_index=PAD_ID,
        label_smoothing=cfg.label_smoothing,
        reduction="sum",
    )
    return loss / n_tokens, n_tokens


@torch.no_grad()
def dev_loss(model: Seq2Seq, data: list[tuple[list[int], list[int]]], budget: int) -> float:
    """Mean per-token negative log-likelihood (no smoothing), teacher forced."""
    model.eval()
    total, count = 0.0, 0
    for idx in make_batches(data, budget, random.Random(0), shortest_first=True):
        src, lengths, tgt_in, tgt_out = collate([data[i] for i in idx])
        logits, _ = model(src, lengths, tgt_in)
        total += float(F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD_ID, reduction="sum"))
        count += int((tgt_out != PAD_ID).sum())
    return total / max(1, count)


def translate(model: Seq2Seq, tgt_tok, srcs: list[list[int]], batch_size: int = 64) -> list[str]:
    """Greedy translations in source order, batched by length."""
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    out = [""] * len(srcs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, (tokens, _) in zip(idx, greedy(model, [srcs[i] for i in idx]), strict=True):
            out[i] = decode(tgt_tok, tokens)
    return out


def load_split(cfg: TrainConfig, split: str) -> list[Pair]:
    return read_tsv(Path(cfg.data) / f"{split}.tsv")


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, Seq2SeqConfig | None, bool]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name in ("model", "dry_run"):
            continue
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--dry-run", action="store_true", help="a few batches of a tiny model on the tiny corpus")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    model_defaults = Seq2SeqConfig(0, 0)
    for name in ("emb_dim", "enc_hidden", "dec_hidden", "enc_layers", "dec_layers", "attn_dim", "dropout"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(model_defaults, name)))
    ap.add_argument("--rnn", choices=["gru", "lstm"])
    ap.add_argument("--attention", choices=["dot", "general", "additive"])
    ap.add_argument("--no-tie", action="store_true")
    args = vars(ap.parse_args(argv))
    resume = args.pop("resume")
    model_args = {k: args.pop(k) for k in list(args) if k in Seq2SeqConfig.__dataclass_fields__}
    if args.pop("no_tie"):
        model_args["tie_embeddings"] = False
    cfg = TrainConfig(**{k: v for k, v in args.items()})
    cfg.model = {k: v for k, v in model_args.items() if v is not None}
    if cfg.dry_run:  # small settings, except where given on the command line
        tiny = {"data": str(FIXTURE), "out": "runs/dry-run", "vocab_size": 200, "epochs": 2, "token_budget": 600}
        for name, value in {**tiny, "warmup_steps": 10, "patience": 2}.items():
            if getattr(cfg, name) == getattr(defaults, name):
                setattr(cfg, name, value)
        cfg.model = {"emb_dim": 32, "enc_hidden": 32, "dec_hidden": 64, "attn_dim": 32, **cfg.model}
    return cfg, None, resume


def main(argv: list[str] | None = None) -> dict:
    cfg, _, resume = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.pt"
    state = torch.load(ckpt_path, weights_only=False) if resume and ckpt_path.exists() else None
    if state is not None:
        cfg = TrainConfig(**{**state["train_config"], "max_minutes": cfg.max_minutes, "epochs": cfg.epochs})

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_pairs, dev_pairs = load_split(cfg, "train"), load_split(cfg, "dev")
    if cfg.dev_limit:
        dev_pairs = dev_pairs[: cfg.dev_limit]

    from tokenizers import Tokenizer

    if state is not None:
        src_tok, tgt_tok = Tokenizer.from_str(state["src_tokenizer"]), Tokenizer.from_str(state["tgt_tokenizer"])
    else:
        src_tok = train_tokenizer((p.src for p in train_pairs), cfg.vocab_size)
        tgt_tok = train_tokenizer((p.tgt for p in train_pairs), cfg.vocab_size)

    def ids(pairs: list[Pair]) -> list[tuple[list[int], list[int]]]:
        return [(encode(src_tok, p.src, cfg.max_len), encode(tgt_tok, p.tgt)[:-1]) for p in pairs]

    train_data = [d for d in ids(train_pairs) if len(d[1]) < cfg.max_len]
    dev_data = ids(dev_pairs)
    dev_data = [(s, t[: cfg.max_len]) for s, t in dev_data]

    mcfg = Seq2SeqConfig(src_vocab=src_tok.get_vocab_size(), tgt_vocab=tgt_tok.get_vocab_size(), **cfg.model)
    if state is not None:
        mcfg = Seq2SeqConfig(**state["model_config"])
    model = Seq2Seq(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps))
    history: list[dict] = []
    step, start_epoch, best_bleu, bad_epochs, spent = 0, 1, -1.0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, step, best_bleu = state["history"], state["step"], state["best_bleu"]
        bad_epochs, spent = state["bad_epochs"], state["seconds"]
        start_epoch = state["epoch"] + (1 if state["epoch_done"] else 0)
        random.setstate(state["py_rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {ckpt_path}: epoch {start_epoch}, step {step}, best dev BLEU {best_bleu:.2f}")
    print(
        f"{len(train_data)} train pairs, {len(dev_data)} dev pairs, "
        f"vocab {mcfg.src_vocab}/{mcfg.tgt_vocab}, {count_parameters(model) / 1e6:.2f}M parameters",
        flush=True,
    )

    def checkpoint(path: Path, epoch: int, epoch_done: bool) -> None:
        save_checkpoint(
            path,
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            model_config=mcfg.to_dict(),
            train_config=asdict(cfg),
            src_tokenizer=src_tok.to_str(),
            tgt_tokenizer=tgt_tok.to_str(),
            history=history,
            step=step,
            epoch=epoch,
            epoch_done=epoch_done,
            best_bleu=best_bleu,
            bad_epochs=bad_epochs,
            seconds=spent + time.time() - t0,
            py_rng=random.getstate(),
            torch_rng=torch.get_rng_state(),
        )

    t0 = time.time()
    stopped = "epochs"
    rng = random.Random(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs + 1):
        rng.seed(cfg.seed * 1000 + epoch)
        batches = make_batches(train_data, cfg.token_budget, rng, shortest_first=epoch <= cfg.curriculum_epochs)
        if cfg.dry_run:
            batches = batches[:8]
        model.train()
        total, count = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", file=sys.stderr, disable=not sys.stderr.isatty(), mininterval=2)
        timed_out = False
        for idx in bar:
            tf_ratio = teacher_forcing_ratio(cfg, step)
            loss, n = train_step(model, collate([train_data[i] for i in idx]), tf_ratio, cfg)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            total, count = total + float(loss.detach()) * n, count + n
            bar.set_postfix(loss=f"{total / count:.3f}", tf=f"{tf_ratio:.2f}", lr=f"{sched.get_last_lr()[0]:.1e}")
            if bar.disable and step % 100 == 0:  # no terminal: a progress line in the log instead
                print(f"  step {step}: loss {total / count:.3f}, tf {tf_ratio:.2f}, {count} tokens", flush=True)
            if cfg.max_minutes and (spent + time.time() - t0) > cfg.max_minutes * 60:
                timed_out = True
                break
        if timed_out:
            checkpoint(ckpt_path, epoch, epoch_done=False)
            stopped = "time limit"
            print(f"time limit reached in epoch {epoch}; resume with --resume", flush=True)
            break
        hyps = translate(model, tgt_tok, [s for s, _ in dev_data])
        bleu = sacrebleu.corpus_bleu(hyps, [[p.tgt for p in dev_pairs]]).score
        nll = dev_loss(model, dev_data, cfg.token_budget)
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": total / max(1, count),
            "dev_nll": nll,
            "dev_ppl": math.exp(min(nll, 50)),
            "dev_bleu": bleu,
            "tf_ratio": teacher_forcing_ratio(cfg, step),
            "lr": sched.get_last_lr()[0],
            "minutes": (spent + time.time() - t0) / 60,
        }
        history.append(row)
        print(
            f"epoch {epoch}: train loss {row['train_loss']:.3f}, dev ppl {row['dev_ppl']:.2f}, "
            f"dev BLEU {bleu:.2f}, tf {row['tf_ratio']:.2f}, {row['minutes']:.1f} min",
            flush=True,
        )
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if bleu > best_bleu:
            best_bleu, bad_epochs = bleu, 0
            checkpoint(out / "best.pt", epoch, epoch_done=True)
        else:
            bad_epochs += 1
        checkpoint(ckpt_path, epoch, epoch_done=True)
        if bad_epochs >= cfg.patience:
            stopped = "early stopping"
            break

    from model.plots import plot_attention, plot_curves

    plot_curves(history, out / "curves.png")
    best = torch.load(out / "best.pt", weights_only=False) if (out / "best.pt").exists() else None
    if best is not None:
        model.load_state_dict(best["model"])
    plot_attention(model, src_tok, tgt_tok, [p.src for p in dev_pairs[:4]], out / "attention.png")
    summary = {"stopped": stopped, "best_dev_bleu": best_bleu, "epochs": len(history), "out": str(out)}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
