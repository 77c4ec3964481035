"""The long runs (loadtest/reliability.py overload and soak) in their --dry-run form: the same code
at a size of seconds, through the whole topology, judged on the hard promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.reliability import Load
from tests.conftest import ROOT


@pytest.mark.parametrize("mode", ["overload", "soak"])
def test_the_dry_run_stops_by_itself_and_its_hard_promises_hold(mode, tiny_bundle, tmp_path):
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "loadtest.reliability", mode, "--bundle", str(tiny_bundle), "--dry-run"]
    done = subprocess.run([*argv, "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert found["ok"] and found["conditions"]["dry_run"]
    assert found["figures"]["requests"] > 0
    assert all(v["held"] for v in found["verdicts"] if v["hard"])
    assert "| promise | figure | held |" in done.stdout


def test_load_is_only_offered_to_the_loopback():
    with pytest.raises(ValueError, match="only offered to 127.0.0.1"):
        Load("http://example.com", lambda n: {"q": "x"}, clients=1)
