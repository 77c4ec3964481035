"""Shared fixtures: a tiny real bundle, trained and exported by the project's own code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_CORPUS = ROOT / "tests" / "fixtures" / "tiny"
DEFAULT_BUNDLE = ROOT / "bundles" / "en-es"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for a few batches on the tiny corpus (seconds)."""
    pytest.importorskip("torch")
    from model.train import main as train

    out = tmp_path_factory.mktemp("tiny-run")
    train(["--dry-run", "--out", str(out)])
    return out / "best.pt"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real bundle (ONNX graphs, tokenizers, model.json) made by export.convert."""
    from export.convert import main as convert

    folder = tmp_path_factory.mktemp("bundles") / "tiny-en-es"
    convert([str(tiny_checkpoint), str(folder), "--test", str(TINY_CORPUS / "test.tsv"), "--check-sentences", "8"])
    return folder


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    """The shipped English->Spanish bundle."""
    if not (DEFAULT_BUNDLE / "model.json").exists():
        pytest.fail(f"the shipped bundle is missing at {DEFAULT_BUNDLE}")
    return DEFAULT_BUNDLE


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
