"""The side-by-side HTTP benchmark (loadtest/bench_http.py) in its --dry-run form: every server
started, measured over HTTP at every level and stopped, on the tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from loadtest.bench_http import main as bench
from tests.conftest import ROOT, TINY_CORPUS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_dry_run_measures_every_server_at_every_level_and_draws_the_plot(tiny_checkpoint, tiny_bundle, tmp_path):
    report, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = [sys.executable, "-m", "loadtest.bench_http", "--dry-run", "--bundle", str(tiny_bundle)]
    argv += ["--checkpoint", str(tiny_checkpoint), "--test", str(TINY_CORPUS / "test.tsv")]
    done = subprocess.run(
        [*argv, "--json", str(report), "--plot", str(png)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert list(found["servers"]) == ["a", "b", "c", "d"] and not found["skipped"]
    for key, server in found["servers"].items():
        assert [r["clients"] for r in server["levels"]] == [1, 2], key
        for r in server["levels"]:
            assert r["errors"] == 0 and r["cached"] == 0, (key, r)
            assert min(r["sentences_per_s"], r["tokens_per_s"], r["p50_ms"], r["p99_ms"], r["peak_rss_mib"]) > 0, r
        assert server["single"]["p50_ms"] > 0, (key, server)
        # Stopped by its SIGTERM, not killed: uvicorn.run re-raises the signal after its graceful shutdown.
        assert server["exit_code"] in (0, -signal.SIGTERM), (key, server["exit_code"])
    assert [t["target"] for t in found["targets"]] == [
        "(d)/(a) sentences/s",
        "(d)/(b) sentences/s",
        "(d)/(c) sentences/s at equal or lower p99",
        "(d) single greedy p50 ms",
    ]
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "| server | clients | sentences/s |" in done.stdout


def test_without_a_checkpoint_the_baseline_is_skipped_and_said_so(tmp_path, capsys):
    report = bench(
        ["--dry-run", "--servers", "a", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")]
    )
    assert report["servers"] == {} and report["skipped"] == {"a": "no --checkpoint given"}
    assert "(a) skipped: no --checkpoint given" in capsys.readouterr().err
