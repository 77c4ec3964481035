"""PNG plots written at the end of training: learning curves and attention heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.decode import greedy  # noqa: E402
from model.tokenizer import encode  # noqa: E402


def plot_curves(history: list[dict], path: Path) -> None:
    """Train loss, dev perplexity and dev BLEU against the epoch."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set_title("train loss (label-smoothed)")
    axes[1].plot(epochs, [h["dev_ppl"] for h in history], marker="o", color="tab:orange")
    axes[1].set_title("dev perplexity")
    axes[2].plot(epochs, [h["dev_bleu"] for h in history], marker="o", color="tab:green")
    axes[2].set_title("dev BLEU (greedy)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(model, src_tok, tgt_tok, sentences: list[str], path: Path) -> None:
    """One heatmap per sentence: target subwords (rows) x source subwords (columns)."""
    if not sentences:
        return
    srcs = [encode(src_tok, s) for s in sentences]
    results = greedy(model, srcs)
    fig, axes = plt.subplots(len(sentences), 1, figsize=(10, 4.5 * len(sentences)))
    for ax, src, (tokens, attn) in zip(axes if len(sentences) > 1 else [axes], srcs, results, strict=True):
        ax.imshow(attn.numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(src)), [src_tok.id_to_token(i) for i in src], rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), [tgt_tok.id_to_token(i) for i in tokens], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
