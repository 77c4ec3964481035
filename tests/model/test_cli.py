"""The long jobs' --dry-run modes, as CI runs them."""

from model.evaluate import main as evaluate


def test_training_dry_run_writes_checkpoints_curves_and_heatmaps(tiny_checkpoint):
    run = tiny_checkpoint.parent
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "attention.png"):
        assert (run / name).exists(), name


def test_training_resumes_from_its_last_checkpoint(tiny_checkpoint, tmp_path):
    import shutil

    import torch

    from model.train import main as train

    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent, run)
    before = torch.load(run / "last.pt", weights_only=False)
    summary = train(["--dry-run", "--out", str(run), "--resume", "--epochs", "3"])
    after = torch.load(run / "last.pt", weights_only=False)
    assert after["step"] > before["step"]
    assert [h["epoch"] for h in after["history"]] == [1, 2, 3]
    assert summary["epochs"] == 3


def test_evaluation_dry_run_reports_bleu_and_chrf_for_greedy_and_beam(tiny_checkpoint):
    result = evaluate([str(tiny_checkpoint), "--dry-run"])
    for decoder in ("greedy", "beam5"):
        assert set(result[decoder]) >= {"bleu", "chrf"}
